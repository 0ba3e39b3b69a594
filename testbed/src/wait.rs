//! Waiting for convergence: poll an observable state with a generous deadline (DESIGN.md: machine
//! speed is not a test input).

use std::time::{Duration, Instant};

/// Polls `check` until it returns Some, for at most `deadline` (a generous convergence bound,
/// not a performance assertion); panics with `what` when it never converges.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("{what}: not reached within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Generous: a loaded 2-core CI machine (parallel tests, busy CPUs) must never hit it while the
/// sidecar converges; it only bounds how long a broken run takes to fail.
pub const CONVERGE: Duration = Duration::from_secs(120);
