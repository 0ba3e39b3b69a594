//! The proxy's side toward the backends: HTTP/1.1 through a pooled client (keep-alive, and the
//! upgrades WebSockets need), HTTP/2 with prior knowledge over one multiplexed connection per
//! published port. Only addresses from the table are ever dialled.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::table::{Destination, Upstream};

/// How long a backend may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled HTTP/1.1 connections per backend, and how long they are kept.
const POOL_IDLE_PER_BACKEND: usize = 32;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a backend did not answer, in words a user of the URL can act on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UpstreamError(String);

impl UpstreamError {
    /// The innermost cause: "Connection refused (os error 111)" says more than "client error
    /// (Connect)".
    fn of(e: &(dyn std::error::Error + 'static)) -> Self {
        let mut cause = e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        UpstreamError(cause.to_string())
    }
}

pub(crate) struct Upstreams {
    http1: Client<HttpConnector, Incoming>,
    h2c: Mutex<HashMap<SocketAddr, http2::SendRequest<Incoming>>>,
}

impl Default for Upstreams {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.enforce_http(true);
        let http1 = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_IDLE_PER_BACKEND)
            .build(connector);
        Self {
            http1,
            h2c: Mutex::new(HashMap::new()),
        }
    }
}

impl Upstreams {
    /// Sends `req` (its headers already made for the backend) to `to`. `host` is the public host
    /// the request was for: the backend sees it as `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    pub(crate) async fn send(
        &self,
        to: &Destination,
        host: &str,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string();
        match to.upstream {
            Upstream::Http1 => {
                *req.uri_mut() = uri(&to.address.to_string(), &path)?;
                *req.version_mut() = Version::HTTP_11;
                let host = HeaderValue::from_str(host).map_err(|_| {
                    UpstreamError("the request's host is not a header value".into())
                })?;
                req.headers_mut().insert(header::HOST, host);
                self.http1
                    .request(req)
                    .await
                    .map_err(|e| UpstreamError::of(&e))
            }
            Upstream::H2c => {
                *req.uri_mut() = uri(host, &path)?;
                *req.version_mut() = Version::HTTP_2;
                req.headers_mut().remove(header::HOST);
                let mut sender = self.h2c_sender(to.address).await?;
                sender
                    .send_request(req)
                    .await
                    .map_err(|e| UpstreamError::of(&e))
            }
        }
    }

    /// The open HTTP/2 connection to `address`, or a new one.
    async fn h2c_sender(
        &self,
        address: SocketAddr,
    ) -> Result<http2::SendRequest<Incoming>, UpstreamError> {
        let open = self
            .h2c
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&address)
            .filter(|s| !s.is_closed())
            .cloned();
        if let Some(mut sender) = open
            && sender.ready().await.is_ok()
        {
            return Ok(sender);
        }
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
            .await
            .map_err(|_| UpstreamError(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| UpstreamError::of(&e))?;
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| UpstreamError::of(&e))?;
        tokio::spawn(async move {
            // Ends when the backend or we close it; a request on it then fails and the next
            // one dials again.
            let _ = connection.await;
        });
        self.h2c
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(address, sender.clone());
        Ok(sender)
    }
}

fn uri(authority: &str, path_and_query: &str) -> Result<Uri, UpstreamError> {
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| UpstreamError(format!("cannot address the backend: {e}")))
}
