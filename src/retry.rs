//! Retry delays: exponential backoff with jitter, never giving up (the sidecar retries until it
//! is stopped). `backon` is what kube-runtime uses; the `backoff` crate is unmaintained.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays from `min`, doubling with jitter, capped at `max`, endless.
pub fn backoff(min: Duration, max: Duration) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap_forever() {
        let max = Duration::from_secs(2);
        let delays: Vec<Duration> = backoff(Duration::from_millis(100), max).take(50).collect();
        assert_eq!(delays.len(), 50, "never gives up");
        // Jitter adds up to one more delay on top; the cap bounds the base delay.
        assert!(delays.iter().all(|d| *d <= max * 2), "{delays:?}");
        assert!(delays[10] >= Duration::from_millis(100));
    }
}
