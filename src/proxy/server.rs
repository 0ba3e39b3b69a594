//! The proxy's listener: HTTP/1.1 and HTTP/2 with prior knowledge on one port (the ingress
//! controller picks by the pod Service's port), with bounds on everything a client controls:
//! connections in total, header size, the time to send a request's head, and idle time (no
//! byte either way and no request in flight).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::connection::{Activity, Held, Peer, Watched};
use super::handler::{Context, handle};

/// The bounds of the listener (flags `--proxy-*`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerLimits {
    pub(crate) max_connections: usize,
    /// Request line and headers larger than this are refused (431 on HTTP/1.1).
    pub(crate) max_header_bytes: usize,
    /// A request's head must arrive within this; on HTTP/1.1 it also bounds the wait for the
    /// next request on a kept-alive connection.
    pub(crate) header_timeout: Duration,
    /// A connection with no byte either way and no request in flight for this long is closed.
    pub(crate) idle_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr} for the proxy: {source} (check --proxy-listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Bind { addr, source })
}

/// Serves the proxy until cancelled; connections being answered get a graceful shutdown then.
pub(crate) async fn serve(
    listener: TcpListener,
    ctx: Arc<Context>,
    limits: ServerLimits,
    cancel: CancellationToken,
) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(listen = %addr, max_connections = limits.max_connections, "proxy serving the pod's compositions");
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    while let Some((stream, peer)) = crate::accept::next(&listener, &cancel, "proxy").await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "the proxy holds its most connections; closing this one");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (ctx, builder, cancel) = (ctx.clone(), builder.clone(), cancel.clone());
        tokio::spawn(serve_connection(
            stream,
            peer,
            Arc::new(Held::new(slot, ctx.status.clone())),
            ctx,
            builder,
            limits.idle_timeout,
            cancel,
        ));
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<Held>,
    ctx: Arc<Context>,
    builder: auto::Builder<TokioExecutor>,
    idle: Duration,
    cancel: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let who = Peer {
        ip: peer.ip(),
        activity: activity.clone(),
        slot,
    };
    let service = service_fn(move |req| {
        let (ctx, who) = (ctx.clone(), who.clone());
        async move {
            who.activity.in_flight.fetch_add(1, Ordering::AcqRel);
            let answer = handle(&ctx, &who, req).await;
            who.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
            Ok::<_, Infallible>(answer)
        }
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    debug!(%peer, error = %e, "proxy connection ended with an error");
                }
                break;
            }
            _ = activity.idle(idle), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = cancel.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
