//! HTTP over loopback and the pod addresses: a minimal GET, the sidecar's metrics and readiness.

use std::time::{Duration, Instant};

use testbed::Sidecar;

/// One GET with the shared client (http-get/): status code and body; None on any failure or
/// timeout.
pub async fn http_get(
    addr: &str,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Option<(u16, String)> {
    let answer = ::http_get::get(addr, host, path, timeout).await.ok()?;
    Some((answer.status, answer.body))
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
