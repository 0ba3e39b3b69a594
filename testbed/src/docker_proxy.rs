//! A unix-socket proxy in front of a runner pod's dockerd that can hold back the event stream:
//! every request goes through (listings, inspects, the version negotiation), but on a
//! connection that asked for `/events` nothing more comes from the daemon while the events are
//! held. A sidecar behind it misses its Docker events, as one did when a `start` event reached
//! it only with the next composition's (BENCHMARKS.md's findings), without stopping dockerd.
//!
//! The proxy runs on a thread and runtime of its own, as [`crate::ApiProxy`] does: a test's
//! blocking calls (Compose) must not freeze it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, watch};

pub struct DockerEventsProxy {
    socket: PathBuf,
    held: watch::Sender<bool>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DockerEventsProxy {
    /// A proxy listening on `socket` (a path in the pod's directory), forwarding to the daemon
    /// at `upstream` (a socket path); not holding anything.
    pub fn start(upstream: &Path, socket: PathBuf) -> DockerEventsProxy {
        let _ = std::fs::remove_file(&socket);
        let listener =
            std::os::unix::net::UnixListener::bind(&socket).expect("bind the Docker proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking Docker proxy listener");
        let upstream = upstream.to_path_buf();
        let (held, held_rx) = watch::channel(false);
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("Docker proxy runtime");
            runtime.block_on(async move {
                let listener = UnixListener::from_std(listener).expect("Docker proxy listener");
                tokio::select! {
                    _ = serve(listener, upstream, held_rx) => {}
                    _ = stop_rx => {}
                }
            });
        });
        DockerEventsProxy {
            socket,
            held,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The `--docker-host` of a sidecar behind the proxy.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// From now on no byte of an event stream reaches its client (the stream stays open, the
    /// events wait in the socket buffers); every other request still goes through.
    pub fn hold_events(&self) {
        self.held.send_replace(true);
    }

    /// What the event streams held is delivered, and they flow again.
    pub fn release_events(&self) {
        self.held.send_replace(false);
    }
}

impl Drop for DockerEventsProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn serve(listener: UnixListener, upstream: PathBuf, held: watch::Receiver<bool>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (upstream, held) = (upstream.clone(), held.clone());
        tokio::spawn(async move {
            let Ok(daemon) = UnixStream::connect(&upstream).await else {
                return; // dockerd is down: the client sees its connection closed
            };
            // Set once the client asked this connection for the event stream (a pooled
            // connection may have served the version negotiation first); nothing follows an
            // event stream on its connection.
            let events = Arc::new(AtomicBool::new(false));
            let (client_read, client_write) = client.into_split();
            let (daemon_read, daemon_write) = daemon.into_split();
            tokio::join!(
                requests(client_read, daemon_write, events.clone()),
                answers(daemon_read, client_write, events, held),
            );
        });
    }
}

/// Client to daemon, never held; marks the connection when a request asks for `/events`.
async fn requests(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, events: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if buf[..n]
            .windows(8)
            .any(|w| w == b"/events?" || w == b"/events ")
        {
            events.store(true, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Daemon to client; on an event stream's connection, nothing is read or written while held.
async fn answers(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    events: Arc<AtomicBool>,
    mut held: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        // A chunk read just before the hold waits for the release too.
        if events.load(Ordering::SeqCst) && held.wait_for(|h| !*h).await.is_err() {
            return;
        }
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
