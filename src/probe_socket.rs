//! The kubelet's own way in: `/healthz` and `/readyz` on a unix socket in the sidecar
//! container's private filesystem (`--probe-socket`, an emptyDir that only the sidecar mounts),
//! asked by `compose-ingress probe healthz|readyz` as exec probes (deploy/base).
//!
//! The TCP listener's budget for the node's address (src/conn_limits.rs) holds only when the
//! kubelet's probes come from `HOST_IP`; on CNIs where they come from a bridge or a host-side
//! interface address, a job holding connections could starve them, and the kubelet would then
//! restart a healthy sidecar. No container in dind can reach this socket on any CNI: it is not
//! on a network at all, and dind does not mount the volume it lives in.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::status::Status;
use crate::telemetry::{self, ServerInfo};

/// The paths the socket answers: the probes', nothing else (no URLs, no metrics).
const PATHS: [&str; 2] = ["/healthz", "/readyz"];
/// Connections served at once: the kubelet runs one liveness and one readiness probe at a time.
const CONNECTIONS: usize = 4;
/// A probe's request comes at once and its answer is immediate.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(5);
/// The exec probe's own bound (the kubelet's `timeoutSeconds` is 2 in deploy/base).
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ProbeSocketError {
    #[error(
        "cannot listen on the probe socket {path}: {source} (check --probe-socket and that its directory, an emptyDir in deploy/base, is mounted and writable)"
    )]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds the socket at start-up (a socket file left by the previous run of the container is
/// removed first: only this process serves there).
pub fn bind(path: &Path) -> Result<UnixListener, ProbeSocketError> {
    let bind_error = |source| ProbeSocketError::Bind {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_error(e)),
    }
    UnixListener::bind(path).map_err(bind_error)
}

/// Serves `/healthz` and `/readyz` on the socket until cancelled.
pub async fn serve(
    listener: UnixListener,
    status: Arc<Status>,
    info: Arc<ServerInfo>,
    cancel: CancellationToken,
) {
    info!(probe_socket = ?listener.local_addr().ok(), "serving /healthz and /readyz for the kubelet's probes");
    let slots = Arc::new(Semaphore::new(CONNECTIONS));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(CONNECTION_LIFETIME)
        .max_buf_size(telemetry::MAX_HEADER_BYTES)
        .max_headers(telemetry::MAX_HEADERS)
        .keep_alive(false);
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "probe socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!("more probe connections than the kubelet makes; closing this one");
            continue;
        };
        let (status, info, builder) = (status.clone(), info.clone(), builder.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (status, info) = (status.clone(), info.clone());
                async move { Ok::<_, Infallible>(answer(&req, &status, &info)) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                debug!(error = %e, "probe connection ended with an error");
            }
            drop(permit);
        });
    }
}

fn answer<B>(req: &Request<B>, status: &Status, info: &ServerInfo) -> Response<Full<Bytes>> {
    if !PATHS.contains(&req.uri().path()) {
        let mut r = Response::new(Full::new(Bytes::from(format!(
            "not found: the probe socket answers {} only\n",
            PATHS.join(", ")
        ))));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    telemetry::respond(req, status, info)
}

/// `compose-ingress probe healthz|readyz [--socket PATH]`: the exec probe. Exit status 0 when the
/// sidecar answers 200, 1 otherwise (its answer, or why it could not be asked, on stderr: the
/// kubelet shows it in the probe's failure Event).
pub async fn ask(args: &[std::ffi::OsString]) -> ExitCode {
    let usage = "usage: compose-ingress probe healthz|readyz [--socket PATH] (or COMPOSE_INGRESS_PROBE_SOCKET)";
    let args: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    let (which, socket) = match args.as_slice() {
        [which] => (*which, std::env::var("COMPOSE_INGRESS_PROBE_SOCKET").ok()),
        [which, "--socket", path] => (*which, Some(path.to_string())),
        _ => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    let (Some(path), true) = (socket, matches!(which, "healthz" | "readyz")) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    match tokio::time::timeout(ASK_TIMEOUT, get(&path, which)).await {
        Ok(Ok((200, _))) => ExitCode::SUCCESS,
        Ok(Ok((code, body))) => {
            eprintln!("compose-ingress: /{which} answered {code}: {}", body.trim());
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("compose-ingress: cannot ask the probe socket {path}: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!(
                "compose-ingress: the probe socket {path} did not answer within {ASK_TIMEOUT:?}"
            );
            ExitCode::FAILURE
        }
    }
}

/// One `GET /{which}` on the socket: the status and the body (the answers are a line).
async fn get(path: &str, which: &str) -> std::io::Result<(u16, String)> {
    let mut stream = UnixStream::connect(path).await?;
    stream
        .write_all(format!("GET /{which} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    (&mut stream).take(16 * 1024).read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> Arc<ServerInfo> {
        Arc::new(ServerInfo {
            namespace: "ci".into(),
            pod: "runner-0".into(),
            heartbeat_stale: Duration::from_secs(60),
            probe: None,
            node_ip: None,
        })
    }

    /// The TCP listener full (every slot of every peer taken, as jobs holding `wait` requests
    /// do): the probe socket still answers, and only the probes' paths (seen failing with the
    /// probes on the TCP listener: a connection over the total is closed unanswered).
    #[tokio::test]
    async fn the_probe_socket_answers_whatever_holds_the_tcp_listener() {
        let dir =
            std::env::temp_dir().join(format!("compose-ingress-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("probe.sock");
        let status = Arc::new(Status::default());
        status.heartbeat();
        let cancel = CancellationToken::new();
        let tcp = telemetry::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        tokio::spawn(telemetry::serve(
            tcp,
            status.clone(),
            (*info()).clone(),
            cancel.clone(),
        ));
        let listener = bind(&path).unwrap();
        tokio::spawn(serve(listener, status.clone(), info(), cancel.clone()));
        // Hold every connection the TCP listener gives one peer.
        let mut held = Vec::new();
        for _ in 0..crate::conn_limits::PER_PEER + 2 {
            held.push(tokio::net::TcpStream::connect(tcp_addr).await.unwrap());
        }
        let starved = http_get::get(
            &tcp_addr.to_string(),
            "localhost",
            "/healthz",
            Duration::from_secs(2),
        )
        .await;
        assert!(starved.is_err(), "the TCP listener is full: {starved:?}");
        let socket = path.display().to_string();
        assert_eq!(get(&socket, "healthz").await.unwrap().0, 200);
        assert_eq!(
            get(&socket, "readyz").await.unwrap().0,
            503,
            "no resync yet"
        );
        assert_eq!(get(&socket, "metrics").await.unwrap().0, 404);
        let argv = |w: &str| vec![w.into(), "--socket".into(), socket.clone().into()];
        assert_eq!(ask(&argv("healthz")).await, ExitCode::SUCCESS);
        assert_eq!(ask(&argv("readyz")).await, ExitCode::FAILURE);
        assert_eq!(ask(&argv("exposures")).await, ExitCode::from(2));
        // A second start of the container finds the old socket file: it binds anyway.
        cancel.cancel();
        drop(held);
        assert!(bind(&path).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
