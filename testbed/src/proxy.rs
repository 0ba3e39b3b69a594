//! A TCP proxy in front of the bed's apiserver that can freeze: an apiserver that accepts
//! connections and never answers (a brownout, a half-dead load balancer), for one sidecar only,
//! without disturbing the shared bed. Plain TCP forwarding: TLS goes end to end, and the
//! apiserver's certificate names 127.0.0.1 (tests/testbed/up.sh), so a kubeconfig whose server is
//! `https://127.0.0.1:<proxy port>` verifies as the direct one does.
//!
//! The proxy runs on a thread and runtime of its own: a test's blocking calls (Compose, a wait
//! for the sidecar's exit) must not freeze it by accident.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use crate::bed::Bed;

pub struct ApiProxy {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiProxy {
    /// A proxy on a free loopback port, forwarding to the bed's apiserver; not frozen.
    pub fn start(bed: &Bed) -> ApiProxy {
        let apiserver = bed.get("APISERVER");
        let upstream = apiserver
            .strip_prefix("https://")
            .unwrap_or(apiserver)
            .trim_end_matches('/')
            .to_string();
        Self::start_to(upstream)
    }

    /// A proxy on a free loopback port, forwarding to `upstream` (`host:port`); not frozen.
    pub fn start_to(upstream: String) -> ApiProxy {
        Self::start_at("127.0.0.1", upstream)
    }

    /// A proxy on a free port of `ip` (one of the bed's own addresses: the host's end of a
    /// runner pod's veth makes a loopback-only service, the bed's Traefik, reachable from inside
    /// the pod), forwarding to `upstream`; not frozen.
    pub fn start_at(ip: &str, upstream: String) -> ApiProxy {
        let listener = std::net::TcpListener::bind(format!("{ip}:0")).expect("bind the API proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking API proxy listener");
        let addr = listener.local_addr().expect("API proxy address");
        let (frozen, frozen_rx) = watch::channel(false);
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("API proxy runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("API proxy listener");
                tokio::select! {
                    _ = serve(listener, upstream, frozen_rx) => {}
                    _ = stop_rx => {}
                }
            });
            // Dropping the runtime drops every connection's task, and with it the sockets.
        });
        ApiProxy {
            addr,
            frozen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The apiserver's URL through the proxy, for a kubeconfig.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// From now on no byte goes through, either way, on open connections and new ones alike;
    /// every connection stays open (new ones are still accepted), as with an apiserver that
    /// hangs. A chunk read just before waits for the thaw.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwarding resumes (what waited is delivered, like TCP after a partition).
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(listener: TcpListener, upstream: String, frozen: watch::Receiver<bool>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (upstream, frozen) = (upstream.clone(), frozen.clone());
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                return; // the apiserver is down: the client sees its connection closed
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                pipe(client_read, server_write, frozen.clone()),
                pipe(server_read, client_write, frozen),
            );
        });
    }
}

/// Copies one direction, holding every chunk (and the end of the stream) while frozen.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut frozen: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Nothing is read while frozen: the peer's bytes wait in the socket buffers.
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = from.read(&mut buf).await.unwrap_or(0);
        if frozen.wait_for(|f| !*f).await.is_err() {
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

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpStream;

    use super::*;

    /// An echo server on loopback (one thread per connection).
    fn echo_server() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind echo");
        let addr = listener.local_addr().expect("echo address");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn read_some(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        stream.set_read_timeout(Some(within)).expect("read timeout");
        let mut buf = [0u8; 1024];
        match stream.read(&mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("read: {e}"),
        }
    }

    #[test]
    fn forwards_holds_everything_while_frozen_and_delivers_after_the_thaw() {
        let proxy = ApiProxy::start_to(echo_server().to_string());
        let mut open = TcpStream::connect(proxy.addr()).expect("connect");
        open.write_all(b"ping").expect("write");
        assert_eq!(
            read_some(&mut open, Duration::from_secs(5)).as_deref(),
            Some(&b"ping"[..])
        );

        proxy.freeze();
        open.write_all(b"held").expect("write");
        // A connection opened during the freeze is accepted, and gets nothing either.
        let mut new = TcpStream::connect(proxy.addr()).expect("connect while frozen");
        new.write_all(b"new").expect("write");
        assert_eq!(read_some(&mut open, Duration::from_millis(500)), None);
        assert_eq!(read_some(&mut new, Duration::from_millis(500)), None);

        proxy.thaw();
        assert_eq!(
            read_some(&mut open, Duration::from_secs(5)).as_deref(),
            Some(&b"held"[..])
        );
        assert_eq!(
            read_some(&mut new, Duration::from_secs(5)).as_deref(),
            Some(&b"new"[..])
        );
    }
}
