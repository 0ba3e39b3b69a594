//! How late a Docker event reaches the sidecar. The daemon stamps each event when it logs it
//! (`timeNano`); one that arrives seconds later means the sidecar's view of Docker lagged, and a
//! composition whose `start` event came late stayed unexposed that long (BENCHMARKS.md's
//! findings: a bench sample exposed 120 s late, its log silent in between). The passes re-read
//! Docker, so a late event loses nothing but time; this makes the lag visible in the log.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An event this late is logged at info level (the debug line of every event carries its lag).
pub(super) const LATE_EVENT: Duration = Duration::from_secs(5);

/// How long after the daemon logged it (`time_nano`) an event arrived at `now`. `None` without a
/// timestamp, and for an event logged before `subscribed`: the subscription replays the last
/// seconds on purpose (so that nothing between the resync's listing and the subscription is
/// missed), and a replayed event is old by design, not late.
pub(super) fn lag(
    time_nano: Option<i64>,
    subscribed: SystemTime,
    now: SystemTime,
) -> Option<Duration> {
    let logged = UNIX_EPOCH + Duration::from_nanos(u64::try_from(time_nano?).ok()?);
    if logged < subscribed {
        return None;
    }
    // A daemon clock a little ahead of ours: on time.
    Some(now.duration_since(logged).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nanos(t: SystemTime) -> Option<i64> {
        let d = t.duration_since(UNIX_EPOCH).expect("after the epoch");
        i64::try_from(d.as_nanos()).ok()
    }

    /// Seen failing with the replay rule reversed (every live event `None`) and with the lag
    /// measured from the subscription instead of the event.
    #[test]
    fn a_live_event_lags_from_its_own_timestamp_and_a_replayed_one_does_not_count() {
        let subscribed = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let logged = subscribed + Duration::from_secs(30);
        let now = logged + Duration::from_secs(120);
        assert_eq!(
            lag(nanos(logged), subscribed, now),
            Some(Duration::from_secs(120))
        );
        let replayed = subscribed - Duration::from_secs(2);
        assert_eq!(lag(nanos(replayed), subscribed, now), None);
        assert_eq!(lag(None, subscribed, now), None);
        assert_eq!(lag(Some(-1), subscribed, now), None, "before the epoch");
        // The daemon's clock ahead of ours.
        assert_eq!(
            lag(nanos(now + Duration::from_millis(3)), subscribed, now),
            Some(Duration::ZERO)
        );
    }
}
