//! A closed-loop HTTP/1.1 load client (the proxy phase): C keep-alive connections, each sending
//! one GET after another for a fixed time, every request's latency recorded. Its own few lines
//! rather than the shared http-get client, which opens a connection per request: the proxy's
//! cost on a kept-alive connection is what users' clients see.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one run of the client saw.
#[derive(Debug, Default)]
pub struct LoadRun {
    pub latencies_ms: Vec<f64>,
    pub errors: usize,
    pub secs: f64,
}

/// `concurrency` connections to `addr`, each GET / with `Host: host` in a loop for `duration`;
/// a failed connection is counted and opened again.
pub async fn run(addr: &str, host: &str, concurrency: usize, duration: Duration) -> LoadRun {
    let start = Instant::now();
    let deadline = start + duration;
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench\r\n\r\n");
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (addr, request) = (addr.to_string(), request.clone());
            tokio::spawn(async move { one_connection(&addr, request.as_bytes(), deadline).await })
        })
        .collect();
    let mut out = LoadRun::default();
    for t in tasks {
        if let Ok((lat, errors)) = t.await {
            out.latencies_ms.extend(lat);
            out.errors += errors;
        }
    }
    out.secs = start.elapsed().as_secs_f64();
    out
}

async fn one_connection(addr: &str, request: &[u8], deadline: Instant) -> (Vec<f64>, usize) {
    let (mut lat, mut errors) = (Vec::new(), 0);
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(4096);
    while Instant::now() < deadline {
        if conn.is_none() {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    conn = Some(s);
                }
                Err(_) => {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(stream) = conn.as_mut() else {
            continue;
        };
        let t = Instant::now();
        let left = deadline.saturating_duration_since(t) + Duration::from_secs(5);
        match tokio::time::timeout(left, exchange(stream, request, &mut buf)).await {
            Ok(Ok(keep)) => {
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                if !keep {
                    conn = None;
                }
            }
            _ => {
                errors += 1;
                conn = None;
            }
        }
    }
    (lat, errors)
}

/// One request and its whole 200 answer (by its Content-Length); whether the connection stays
/// open. Any other status or form is an error.
async fn exchange(s: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let bad = |what: &str| std::io::Error::other(what.to_string());
    s.write_all(request).await?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("closed before the answer"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(bad("answer head too long"));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(bad("not a 200"));
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| bad("no Content-Length"))?;
    let mut have = buf.len() - head_end;
    while have < length {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("closed in the body"));
        }
        have += n;
    }
    Ok(!head.contains("connection: close"))
}

/// A connection to `addr` that has carried one GET with `Host: host` and is kept alive (the
/// proxy holds it, idle, as a browser's or a CI client's); None if the exchange failed.
pub async fn kept_alive(addr: &str, host: &str) -> Option<TcpStream> {
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench\r\n\r\n");
    let mut s = TcpStream::connect(addr).await.ok()?;
    let mut buf = Vec::new();
    let keep = tokio::time::timeout(
        Duration::from_secs(10),
        exchange(&mut s, request.as_bytes(), &mut buf),
    )
    .await
    .ok()?
    .ok()?;
    keep.then_some(s)
}

/// A WebSocket to `addr` with `Host: host` on `path` (the bed's protoecho echoes on /ws) that has
/// echoed one message; None if the upgrade or the echo failed.
pub async fn websocket(addr: &str, host: &str, path: &str) -> Option<TcpStream> {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let upgrade = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Origin: http://{host}\r\n\r\n"
        );
        s.write_all(upgrade.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.ok()? == 0 || buf.len() > 16 * 1024 {
                return None;
            }
            buf.push(byte[0]);
        }
        if !buf.starts_with(b"HTTP/1.1 101") {
            return None;
        }
        // One masked text frame (clients must mask), and its echo (servers do not mask).
        let payload = b"bench";
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        s.write_all(&frame).await.ok()?;
        let mut head = [0u8; 2];
        s.read_exact(&mut head).await.ok()?;
        let len = (head[1] & 0x7f) as usize;
        if head[0] != 0x81 || len >= 126 {
            return None;
        }
        let mut echo = vec![0u8; len];
        s.read_exact(&mut echo).await.ok()?;
        Some(s)
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .ok()
        .flatten()
}
