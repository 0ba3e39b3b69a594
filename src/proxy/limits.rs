//! What one composition may take of the proxy: a token bucket for its rate limit and a count
//! of its open backend connections. Pure rules on an explicit clock; the guard that holds them
//! is shared by every destination of the composition and outlives table rebuilds, so a limit's
//! state is not reset by an unrelated composition's change.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::access::Access;

/// `rps` requests per second on average with a burst of one second's worth: the same bucket as
/// the Traefik Middleware of the composition scope (`average: rps, period: 1s, burst: rps`), so a
/// limit means the same in both scopes.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rps: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rps: u32, now: Instant) -> Self {
        let rps = f64::from(rps.max(1));
        Self {
            rps,
            tokens: rps,
            last: now,
        }
    }

    /// Takes one token, or says how long until one is there (the `Retry-After`).
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rps).min(self.rps);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rps))
        }
    }
}

/// Why the guard refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Over the rate limit; a token is there again after this long.
    RateLimited { rps: u32, retry_after: Duration },
    /// The composition holds its most open backend connections.
    Busy { max: usize },
}

/// One composition's limits and access policy, shared by all its destinations.
#[derive(Debug)]
pub(crate) struct Guard {
    pub(crate) rps: Option<u32>,
    bucket: Mutex<Option<TokenBucket>>,
    open: AtomicUsize,
    max_open: usize,
    /// The access policy the proxy enforces for it (`None`: public).
    pub(crate) access: Option<Arc<Access>>,
    /// The policy's name, to tell a changed policy from an unchanged one.
    pub(crate) access_name: Option<String>,
}

impl Guard {
    pub(crate) fn new(
        rps: Option<u32>,
        max_open: usize,
        access: Option<(String, Arc<Access>)>,
    ) -> Self {
        let (access_name, access) = match access {
            Some((name, a)) => (Some(name), Some(a)),
            None => (None, None),
        };
        Self {
            rps,
            bucket: Mutex::new(None),
            open: AtomicUsize::new(0),
            max_open,
            access,
            access_name,
        }
    }

    /// Whether this guard serves the same limit and policy (then it is kept across a rebuild).
    pub(crate) fn same_terms(
        &self,
        rps: Option<u32>,
        access: Option<&str>,
        max_open: usize,
    ) -> bool {
        self.rps == rps && self.access_name.as_deref() == access && self.max_open == max_open
    }

    /// One request's token from the composition's bucket.
    pub(crate) fn admit(&self, now: Instant) -> Result<(), Refused> {
        let Some(rps) = self.rps else {
            return Ok(());
        };
        // A poisoned lock only means another request panicked mid-update: the bucket's numbers
        // are still numbers, so it keeps limiting.
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        bucket
            .get_or_insert_with(|| TokenBucket::new(rps, now))
            .take(now)
            .map_err(|retry_after| Refused::RateLimited { rps, retry_after })
    }

    /// A slot for one backend connection (a request in flight or a WebSocket tunnel), given
    /// back when the returned permit is dropped.
    pub(crate) fn open(self: &Arc<Self>) -> Result<OpenPermit, Refused> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_open).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(OpenPermit {
                guard: self.clone(),
            }),
            Err(_) => Err(Refused::Busy { max: self.max_open }),
        }
    }

    #[cfg(test)]
    pub(crate) fn open_now(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// A backend connection slot of a composition (see [`Guard::open`]).
#[derive(Debug)]
pub(crate) struct OpenPermit {
    guard: Arc<Guard>,
}

impl Drop for OpenPermit {
    fn drop(&mut self) {
        self.guard.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_a_burst_of_one_second_through_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5, t0);
        for i in 0..5 {
            assert_eq!(b.take(t0), Ok(()), "burst request {i}");
        }
        let wait = b.take(t0).expect_err("the sixth at once is refused");
        assert!(
            wait > Duration::from_millis(150) && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        // 200 ms later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!(b.take(t1), Ok(()));
        assert!(b.take(t1).is_err());
        // A long pause refills to the burst, never above it.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(b.take(t2), Ok(()));
        }
        assert!(b.take(t2).is_err());
    }

    #[test]
    fn over_a_long_run_the_bucket_passes_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, t0);
        // 100 requests/s for 10 s: 10 burst + 10/s.
        let passed = (0..1000)
            .filter(|i| b.take(t0 + Duration::from_millis(i * 10)).is_ok())
            .count();
        assert!((105..=111).contains(&passed), "{passed}");
    }

    #[test]
    fn a_guard_without_a_limit_admits_everything_and_counts_open_connections() {
        let t0 = Instant::now();
        let g = Arc::new(Guard::new(None, 2, None));
        for _ in 0..100 {
            assert_eq!(g.admit(t0), Ok(()));
        }
        let a = g.open().expect("first");
        let b = g.open().expect("second");
        assert_eq!(g.open().expect_err("third"), Refused::Busy { max: 2 });
        drop(a);
        let _c = g.open().expect("a slot came back");
        assert_eq!(g.open_now(), 2);
        drop(b);
        assert_eq!(g.open_now(), 1);
    }

    #[test]
    fn a_guard_with_a_limit_says_its_rate_and_when_to_retry() {
        let t0 = Instant::now();
        let g = Guard::new(Some(2), 8, None);
        assert!(g.admit(t0).is_ok() && g.admit(t0).is_ok());
        match g.admit(t0) {
            Err(Refused::RateLimited { rps, retry_after }) => {
                assert_eq!(rps, 2);
                assert!(retry_after <= Duration::from_millis(500), "{retry_after:?}");
            }
            other => panic!("{other:?}"),
        }
    }
}
