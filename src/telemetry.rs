//! The HTTP endpoints: `/metrics`, `/healthz`, `/readyz`, `/exposures`.

// GET or HEAD only; anything else is refused with a proper status. Hyper directly, with small
// limits: this server must survive any input.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::conn_limits::ConnLimits;
use crate::routable::{self, Probe};
use crate::status::{CompositionState, Status};

/// Request line + headers larger than this get `431 Request Header Fields Too Large`.
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;
/// More headers than this get `431` too.
pub(crate) const MAX_HEADERS: usize = 64;
/// A client must send its request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection lives longer than this (scrapes and probes take milliseconds).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "cannot listen on {addr} for /metrics, /healthz, /readyz and /exposures: {source} (check --listen)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Who this sidecar is, for `/exposures`.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub namespace: String,
    pub pod: String,
    /// `/healthz` fails when the reconciler made no progress for this long (`--heartbeat-stale`).
    pub heartbeat_stale: Duration,
    /// The ingress controller to verify routability through (`--probe-url`).
    pub probe: Option<Probe>,
    /// The node's address (`HOST_IP`): the kubelet's probes come from it, and it has connection
    /// slots of its own (src/conn_limits.rs).
    pub node_ip: Option<std::net::IpAddr>,
}

/// A connection slot of `peer`, given back when the connection ends.
struct Slot {
    limits: Arc<std::sync::Mutex<ConnLimits>>,
    peer: std::net::IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut l) = self.limits.lock() {
            l.release(self.peer);
        }
    }
}

/// Binds the listener (at start-up, so that a taken port fails fast with one clear line).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, TelemetryError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::Bind { addr, source })
}

/// Serves the endpoints until cancelled.
pub async fn serve(
    listener: TcpListener,
    status: Arc<Status>,
    info: ServerInfo,
    cancel: CancellationToken,
) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(listen = %addr, "serving /metrics, /healthz, /readyz and /exposures");
    let info = Arc::new(info);
    let limits = Arc::new(std::sync::Mutex::new(ConnLimits::new(info.node_ip)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    while let Some((stream, peer)) = crate::accept::next(&listener, &cancel, "HTTP").await {
        let admitted = limits.lock().is_ok_and(|mut l| l.admit(peer.ip()));
        if !admitted {
            debug!(%peer, "too many HTTP connections from this address, or from all; closing this one");
            drop(stream);
            continue;
        }
        let permit = Slot {
            limits: limits.clone(),
            peer: peer.ip(),
        };
        let status = status.clone();
        let info = info.clone();
        let cancel = cancel.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (status, info) = (status.clone(), info.clone());
                async move {
                    let response = if req.uri().path().starts_with(COMPOSITIONS) {
                        compositions(&req, &status, &info).await
                    } else {
                        respond(&req, &status, &info)
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(Duration::from_secs(2), conn.as_mut()).await.unwrap_or(Ok(()))
                }
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => Ok(()),
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
}

const ENDPOINTS: [&str; 5] = [
    "/metrics",
    "/healthz",
    "/readyz",
    "/exposures",
    "/v1/compositions/{project}",
];
const COMPOSITIONS: &str = "/v1/compositions/";

/// `GET /v1/compositions/{project}[?service=S][&wait=routable][&timeout=60s]` (see
/// [`crate::routable`]): 200 routable (or, without `wait`, whatever the state is), 422 refused,
/// 504 when the wait timed out (the document says what is missing).
async fn compositions<B>(
    req: &Request<B>,
    status: &Status,
    info: &ServerInfo,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {} not allowed: use GET\n", req.method()),
        );
    }
    let name = req.uri().path().trim_start_matches(COMPOSITIONS);
    if name.is_empty()
        || name.len() > crate::plan::MAX_PROJECT_NAME
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return text(
            StatusCode::BAD_REQUEST,
            "the path is /v1/compositions/<compose project name>\n".to_string(),
        );
    }
    let (mut service, mut wait, mut timeout) = (None, false, routable::MAX_WAIT);
    for pair in req.uri().query().unwrap_or_default().split('&') {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("", _) => {}
            ("service", s) if !s.is_empty() && s.len() <= 253 => service = Some(s.to_string()),
            ("wait", "routable") => wait = true,
            ("timeout", t) => match crate::config::parse_duration(t) {
                Ok(d) => timeout = d,
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("timeout: {e}\n")),
            },
            (k, _) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown query parameter {k:?}: use service=S, wait=routable, timeout=60s\n"
                    ),
                );
            }
        }
    }
    let probe = info.probe.as_ref();
    let doc = if wait {
        routable::wait(status, probe, name, service.as_deref(), timeout).await
    } else {
        routable::check(
            status,
            probe,
            name,
            service.as_deref(),
            routable::look_deadline(),
        )
        .await
    };
    let code = match doc.state {
        "refused" => StatusCode::UNPROCESSABLE_ENTITY,
        "expired" => StatusCode::GONE,
        "pending" if wait => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::OK,
    };
    match serde_json::to_vec_pretty(&doc) {
        Ok(mut body) => {
            body.push(b'\n');
            with_type(code, body, "application/json")
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode: {e}\n"),
        ),
    }
}

/// The response to one request (pure apart from reading `status`).
pub(crate) fn respond<B>(
    req: &Request<B>,
    status: &Status,
    info: &ServerInfo,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !ENDPOINTS[..4].contains(&path) {
        return text(
            StatusCode::NOT_FOUND,
            format!("not found: {path}; try {}\n", ENDPOINTS.join(", ")),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {} not allowed on {path}: use GET\n", req.method()),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => metrics(status),
        "/healthz" => match status.alive(info.heartbeat_stale) {
            Ok(()) => text(StatusCode::OK, "ok\n".to_string()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("unhealthy: {why}\n"),
            ),
        },
        "/readyz" => match (status.readiness(), status.docker_trouble()) {
            (Ok(()), None) => text(StatusCode::OK, "ready\n".to_string()),
            (Ok(()), Some(why)) => text(
                StatusCode::OK,
                format!("ready; {why}: the routes stay as they are until Docker is back\n"),
            ),
            (Err(why), _) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => exposures(status, info),
    }
}

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(code, body.into_bytes(), "text/plain; charset=utf-8")
}

fn with_type(code: StatusCode, body: Vec<u8>, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn metrics(status: &Status) -> Response<Full<Bytes>> {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &status.metrics.registry) {
        Ok(()) => with_type(
            StatusCode::OK,
            body.into_bytes(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
        ),
    }
}

/// The `/exposures` document.
#[derive(Debug, Serialize)]
pub(crate) struct Exposures<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) pod: &'a str,
    pub(crate) ready: bool,
    pub(crate) compositions: Vec<CompositionView>,
}

#[derive(Debug, Serialize)]
pub(crate) struct CompositionView {
    pub(crate) name: String,
    #[serde(flatten)]
    pub(crate) state: CompositionState,
}

/// Builds the `/exposures` document (compositions sorted by name).
pub(crate) fn exposures_doc<'a>(status: &Status, info: &'a ServerInfo) -> Exposures<'a> {
    Exposures {
        namespace: &info.namespace,
        pod: &info.pod,
        ready: status.ready(),
        compositions: status
            .compositions()
            .into_iter()
            .map(|(name, state)| CompositionView { name, state })
            .collect(),
    }
}

fn exposures(status: &Status, info: &ServerInfo) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(&exposures_doc(status, info)) {
        Ok(mut body) => {
            body.push(b'\n');
            with_type(StatusCode::OK, body, "application/json")
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode exposures: {e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Backend;

    fn info() -> ServerInfo {
        ServerInfo {
            namespace: "ci".into(),
            pod: "runner-3".into(),
            heartbeat_stale: Duration::from_secs(180),
            probe: None,
            node_ip: None,
        }
    }

    fn body_text(r: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let body = runtime.block_on(r.into_body().collect()).unwrap();
        String::from_utf8(body.to_bytes().to_vec()).unwrap()
    }

    fn get(method: Method, path: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .expect("request")
    }

    #[test]
    fn unknown_paths_and_methods_are_refused() {
        let status = Status::default();
        let r = respond(&get(Method::GET, "/nope"), &status, &info());
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = respond(&get(Method::POST, "/metrics"), &status, &info());
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
        let r = respond(&get(Method::HEAD, "/healthz?x=1"), &status, &info());
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[test]
    fn readyz_turns_ready_after_the_initial_sync_and_stays_ready_through_docker_outages() {
        let status = Status::default();
        let readyz = |s: &Status| {
            let r = respond(&get(Method::GET, "/readyz"), s, &info());
            let code = r.status();
            (code, body_text(r))
        };
        assert_eq!(readyz(&status).0, StatusCode::SERVICE_UNAVAILABLE);
        status.set_docker_connected(true);
        assert_eq!(readyz(&status).0, StatusCode::SERVICE_UNAVAILABLE);
        status.resync_done();
        assert_eq!(readyz(&status), (StatusCode::OK, "ready\n".to_string()));
        // A Docker outage must not take the pod's URLs offline: still ready, and it says why not
        // everything is well.
        status.set_docker_connected(false);
        let (code, body) = readyz(&status);
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("Docker is not connected"), "{body}");
        status.set_docker_connected(true);
        assert!(readyz(&status).1.contains("resyncing"));
        status.resync_done();
        assert_eq!(readyz(&status), (StatusCode::OK, "ready\n".to_string()));
    }

    #[test]
    fn healthz_fails_when_a_loop_stopped() {
        let status = Status::default();
        status.heartbeat();
        let code = |s: &Status| respond(&get(Method::GET, "/healthz"), s, &info()).status();
        assert_eq!(code(&status), StatusCode::OK);
        status.loop_stopped("reconciler");
        assert_eq!(code(&status), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn exposures_document_shape() {
        let status = Status::default();
        status.set_composition(
            "demo",
            CompositionState::Exposed {
                urls: vec!["http://web-80-demo-runner-3.example.com/".into()],
                backends: vec![Backend {
                    service: "web".into(),
                    container_port: 80,
                    host_port: 32768,
                    port_name: "web-80".into(),
                    service_port: 8080,
                    host: "web-80-demo-runner-3.example.com".into(),
                    path: "/".into(),
                    chosen_host: false,
                    protocol: None,
                    ready: true,
                    health: crate::model::Health::None,
                    class: None,
                    tls_secret: None,
                }],
                refused: vec![],
            },
        );
        status.set_composition("old", CompositionState::PendingDeletion);
        let doc = serde_json::to_value(exposures_doc(&status, &info())).expect("json");
        assert_eq!(doc["pod"], "runner-3");
        assert_eq!(doc["compositions"][0]["name"], "demo");
        assert_eq!(doc["compositions"][0]["state"], "exposed");
        assert_eq!(doc["compositions"][0]["backends"][0]["host_port"], 32768);
        assert!(
            doc["compositions"][0].get("refused").is_none(),
            "no refused list when nothing was refused"
        );
        assert_eq!(doc["compositions"][1]["state"], "pending-deletion");
    }
}
