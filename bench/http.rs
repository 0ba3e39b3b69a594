//! HTTP over loopback and the pod addresses: a minimal GET, the sidecar's metrics and readiness.

use std::time::{Duration, Instant};

use testbed::Sidecar;

/// A minimal HTTP/1.0 GET (status code and body); None on connect/read failure or timeout.
/// The answer is complete when its Content-Length is read, not when the server closes: Envoy
/// keeps a connection open after its answer until the client closes it (its delayed close, 1 s
/// by default), and waiting for EOF would add that second to every request through it.
pub async fn http_get(
    addr: &str,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if complete(&buf) {
                break;
            }
        }
        let text = String::from_utf8_lossy(&buf).to_string();
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((code, body))
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

/// Whether `buf` holds a whole answer: its headers and as many body bytes as Content-Length
/// says (an answer without one ends when the server closes).
fn complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|len| buf.len() >= end + 4 + len)
}

pub async fn metric(listen: &str, name_and_labels: &str) -> f64 {
    let Some((_, body)) = http_get(listen, "localhost", "/metrics", Duration::from_secs(5)).await
    else {
        return f64::NAN;
    };
    body.lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn wait_ready(p: &Sidecar, deadline: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if let Some((200, _)) =
            http_get(&p.listen, "localhost", "/readyz", Duration::from_secs(2)).await
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < deadline,
            "sidecar not ready within {deadline:?} (log {})",
            p.log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `addr` with Host `host` every 10 ms until HTTP 200; the time it took, or None.
pub async fn until_200(addr: &str, host: &str, start: Instant, limit: Duration) -> Option<f64> {
    while start.elapsed() < limit {
        if let Some((200, _)) = http_get(addr, host, "/", Duration::from_secs(2)).await {
            return Some(start.elapsed().as_secs_f64() * 1e3);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}
