//! TLS as a user checks it on the bed: a self-signed certificate made with openssl (as
//! tests/testbed/deploy.sh makes the wildcard), stored as a `kubernetes.io/tls` Secret, and the
//! certificate Traefik's websecure entry point (127.0.0.1:443) serves for a host's SNI.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};

use crate::bed::bed;

/// A self-signed certificate and its key, as files.
pub struct SelfSigned {
    pub crt: PathBuf,
    pub key: PathBuf,
}

/// Makes a self-signed certificate `name` in `dir` with subject `CN=cn` and one DNS SAN per
/// entry of `sans` (openssl's `req -x509`, a CA certificate: curl's `--cacert` takes it).
pub fn self_signed(dir: &Path, name: &str, cn: &str, sans: &[&str]) -> SelfSigned {
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let names: Vec<String> = sans.iter().map(|s| format!("DNS:{s}")).collect();
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-subj")
        .arg(format!("/CN={cn}"))
        .arg("-addext")
        .arg(format!("subjectAltName={}", names.join(",")))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("run openssl req");
    assert!(
        out.status.success(),
        "openssl req for {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    SelfSigned { crt, key }
}

/// Stores `cert` as the `kubernetes.io/tls` Secret `name` of `ns`, as
/// `kubectl create secret tls` does.
pub async fn create_tls_secret(admin: &kube::Client, ns: &str, name: &str, cert: &SelfSigned) {
    let read = |p: &Path| {
        std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    };
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": read(&cert.crt), "tls.key": read(&cert.key)},
    }))
    .expect("a Secret");
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("create Secret {ns}/{name}: {e}"));
}

/// The subject and SANs of the certificate Traefik's websecure entry point serves for SNI
/// `host` (openssl s_client, then x509), one line each; empty when no TLS handshake succeeded.
pub fn served_certificate(host: &str) -> String {
    let addr = bed()
        .get("TRAEFIK_WEBSECURE")
        .trim_start_matches("https://")
        .to_string();
    let hello = Command::new("openssl")
        .args(["s_client", "-connect", &addr, "-servername", host])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-ext", "subjectAltName"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl x509");
    if let Some(mut input) = x509.stdin.take() {
        use std::io::Write;
        // s_client prints the peer certificate's PEM; x509 reads the first one.
        let _ = input.write_all(&hello.stdout);
    }
    let out = x509.wait_with_output().expect("openssl x509");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// GET https://HOST/PATH through Traefik's websecure entry point (SNI = `host`): (status,
/// body); status 0 when the handshake or the verification failed. `trust`: the only certificate
/// accepted (the one the host must be served); None: any (curl -k), to see a route answer
/// whatever certificate it gets.
pub fn https_get(host: &str, path: &str, trust: Option<&Path>) -> (u16, String) {
    let port = bed()
        .get("TRAEFIK_WEBSECURE")
        .rsplit_once(':')
        .map(|(_, p)| p.to_string())
        .expect("TRAEFIK_WEBSECURE has a port");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"]);
    match trust {
        Some(ca) => cmd.arg("--cacert").arg(ca),
        None => cmd.arg("-k"),
    };
    let out = cmd
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}
