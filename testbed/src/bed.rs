//! Attach to (or start) the test bed once per run and hand out clients for it. A bed that
//! cannot start fails the caller with the component and the tail of its log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// The repository's root: this crate lives in its `testbed/` folder (the bed's scripts stay in
/// tests/testbed/, its state in .testbed/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testbed crate lives in a folder of the repository")
        .to_path_buf()
}
/// The running test bed, as described by `.testbed/env`.
pub struct Bed {
    pub env: BTreeMap<String, String>,
    pub dir: PathBuf,
}

static BED: OnceLock<Bed> = OnceLock::new();

/// Starts the bed if it is not up (up.sh is idempotent and locked), then reads its env file.
pub fn bed() -> &'static Bed {
    BED.get_or_init(|| {
        let dir = std::env::var("TESTBED_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join(".testbed"));
        let up = Command::new(repo_root().join("tests/testbed/up.sh"))
            .env("TESTBED_DIR", &dir)
            .output()
            .expect("cannot run tests/testbed/up.sh");
        if !up.status.success() {
            panic!(
                "the test bed did not start (tests/testbed/up.sh failed):\n{}",
                String::from_utf8_lossy(&up.stderr)
            );
        }
        let text = std::fs::read_to_string(dir.join("env"))
            .unwrap_or_else(|e| panic!("test bed env file {}: {e}", dir.join("env").display()));
        Bed {
            env: parse_env(&text),
            dir,
        }
    })
}

thread_local! {
    /// The engine of a test that runs on a chosen one ([`on_engine`]); None: the default.
    static ENGINE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// The Docker Engine of the runner pods this test creates: the one [`on_engine`] chose for the
/// test, else `TESTBED_ENGINE`, else Docker 29 (the bed's default, what users run).
pub fn engine() -> String {
    ENGINE
        .with(|e| e.borrow().clone())
        .or_else(|| std::env::var("TESTBED_ENGINE").ok())
        .unwrap_or_else(|| "29".to_string())
}

/// Runs a test body with its runner pods on Docker Engine `engine` ("29" or "20.10"): the
/// engine is a test parameter like the Compose version. Every test runs on its own thread (and
/// `#[tokio::test]` on a current-thread runtime), so the choice stays with this test.
pub async fn on_engine<F: std::future::Future<Output = ()>>(engine: &str, body: F) {
    ENGINE.with(|e| *e.borrow_mut() = Some(engine.to_string()));
    body.await;
    ENGINE.with(|e| *e.borrow_mut() = None);
}

pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

impl Bed {
    pub fn get(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("test bed env has no {key}"))
    }

    /// The bed's Gateway as the sidecar's `--gateway` takes it: `namespace/name`.
    pub fn gateway(&self) -> String {
        format!(
            "{}/{}",
            self.get("GATEWAY_NAMESPACE"),
            self.get("GATEWAY_NAME")
        )
    }

    pub fn kubeconfig(&self) -> &str {
        self.get("KUBECONFIG")
    }

    /// An admin client (system:masters) for test set-up and assertions.
    pub async fn admin(&self) -> kube::Client {
        let kubeconfig =
            Kubeconfig::read_from(self.kubeconfig()).expect("read test bed kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("test bed kubeconfig");
        kube::Client::try_from(config).expect("kube client")
    }

    /// A client that authenticates with a bearer token (e.g. the sidecar's ServiceAccount).
    pub async fn client_with_token(&self, token: &str) -> kube::Client {
        let mut config = kube::Config::new(self.get("APISERVER").parse().expect("apiserver url"));
        let ca_pem = std::fs::read(self.get("CA_CRT")).expect("read test bed CA");
        config.root_cert = Some(pem_certs(&ca_pem));
        config.auth_info.token = Some(token.to_string().into());
        kube::Client::try_from(config).expect("kube client with token")
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(Path::new(self.get("BIN")).join("kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .expect("run kubectl")
    }
}

/// The stdout of a command that must have succeeded; else a panic with its status and output
/// (`what` names it).
pub fn stdout_ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// PEM bundle -> DER certificates (kube::Config wants DER).
fn pem_certs(pem: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    let mut certs = Vec::new();
    let mut current = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE-----") {
            inside = true;
            current.clear();
        } else if line.starts_with("-----END CERTIFICATE-----") {
            inside = false;
            certs.push(base64_decode(&current));
        } else if inside {
            current.push_str(line.trim());
        }
    }
    certs
}

fn base64_decode(input: &str) -> Vec<u8> {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in input.bytes().filter(|c| *c != b'=') {
        let v = TABLE
            .iter()
            .position(|t| *t == c)
            .expect("base64 character") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
