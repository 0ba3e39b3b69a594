//! The accept loop's one rule, shared by the sidecar's two listeners (its HTTP endpoints and the
//! pod scope's proxy): an accept that fails (out of file descriptors, say) backs off a little
//! and goes on; the listener never exits for it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The next connection, or `None` once cancelled. `what` names the listener in the warning.
pub(crate) async fn next(
    listener: &TcpListener,
    cancel: &CancellationToken,
    what: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    warn!(error = %e, "{what} accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}
