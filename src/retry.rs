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

/// The retry delays of one thing that fails and is retried (a project, the full resync): they
/// grow while the failures go on and start from `min` again after a success, so that one old
/// failure does not slow down the retry of the next one.
#[derive(Debug)]
pub(crate) struct Retry {
    min: Duration,
    max: Duration,
    /// `None` until the first failure since the last success.
    current: Option<ExponentialBackoff>,
}

impl Retry {
    pub(crate) const fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            current: None,
        }
    }

    /// The delay before the next attempt, after one more failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let (min, max) = (self.min, self.max);
        self.current
            .get_or_insert_with(|| backoff(min, max))
            .next()
            // Never reached (the backoff is endless), but a retry must never become "never".
            .unwrap_or(max)
    }

    /// A success: the next failure starts from `min` again.
    pub(crate) fn reset(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (That the delays grow is `retry_delays_grow_as_a_whole_and_are_capped`.)
    #[test]
    fn delays_never_give_up_and_stay_under_the_cap() {
        let max = Duration::from_secs(2);
        let delays: Vec<Duration> = backoff(Duration::from_millis(100), max).take(50).collect();
        assert_eq!(delays.len(), 50, "never gives up");
        // Jitter adds up to one more delay on top; the cap bounds the base delay.
        assert!(delays.iter().all(|d| *d <= max * 2), "{delays:?}");
    }

    const MIN: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(60);

    #[test]
    fn retry_delays_grow_as_a_whole_and_are_capped() {
        // Repeated, so that a lucky jitter cannot make a broken growth pass.
        for _ in 0..100 {
            let mut retry = Retry::new(MIN, MAX);
            let delays: Vec<Duration> = (0..20).map(|_| retry.next_delay()).collect();
            // The base doubles from MIN; jitter adds less than one more base on top. So every
            // delay of the first three is under 4 s, and every one from the 9th on is at least
            // the cap: the later delays are larger, not only their minimum.
            let early_max = delays[..3].iter().max().copied().unwrap_or_default();
            let late_min = delays[8..].iter().min().copied().unwrap_or_default();
            assert!(early_max < Duration::from_secs(4), "{delays:?}");
            assert!(late_min >= MAX, "{delays:?}");
            assert!(late_min > early_max, "{delays:?}");
            // Each delay is at least its base and under twice its base.
            for (i, d) in delays.iter().enumerate() {
                let base = MIN.saturating_mul(1 << i.min(16)).min(MAX);
                assert!(
                    *d >= base && *d < base * 2,
                    "delay {i} = {d:?} ({delays:?})"
                );
            }
        }
    }

    #[test]
    fn a_success_resets_the_delays() {
        let mut retry = Retry::new(MIN, MAX);
        for _ in 0..10 {
            retry.next_delay();
        }
        assert!(retry.next_delay() >= MAX);
        retry.reset();
        let first = retry.next_delay();
        assert!(first >= MIN && first < MIN * 2, "{first:?}");
    }
}
