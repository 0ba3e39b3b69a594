//! When each composition is due: a small delay queue, one deadline per key, in which the earlier
//! deadline wins (kube-runtime's `scheduler` idea: delay and dedupe). A burst of hints for one
//! composition is one pass; a hint never delays a pass that is already due sooner.
//!
//! Pure: time comes in as `now` (`tokio::time::Instant`, the clock of the reconciler's timers),
//! so tests state their instants and run in no time.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use tokio::time::Instant;

#[derive(Debug)]
pub struct DelayQueue<K> {
    due: BTreeMap<K, Instant>,
}

impl<K: Ord> Default for DelayQueue<K> {
    fn default() -> Self {
        Self {
            due: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> DelayQueue<K> {
    /// Makes `key` due at `at`, or keeps its deadline if that is earlier.
    pub fn schedule(&mut self, key: K, at: Instant) {
        self.due
            .entry(key)
            .and_modify(|t| *t = (*t).min(at))
            .or_insert(at);
    }

    /// Forgets `key`'s deadline (it is being handled another way, e.g. by a full resync).
    pub fn remove<Q>(&mut self, key: &Q) -> Option<Instant>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.due.remove(key)
    }

    /// The earliest deadline, if any key is queued.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    /// Takes out every key due at `now` (deadline reached), in key order.
    pub fn pop_due(&mut self, now: Instant) -> Vec<K> {
        let due: Vec<K> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &due {
            self.due.remove(k);
        }
        due
    }

    /// `key`'s deadline, if it is queued (the reconciler only needs the earliest of all).
    #[cfg(test)]
    pub fn deadline<Q>(&self, key: &Q) -> Option<Instant>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.due.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::lifecycle::{HintContext, Lifecycle, PlanShape, hint_due};
    use super::*;
    use crate::config::Timings;

    const DEBOUNCE: Duration = Duration::from_millis(300);

    fn timings(settle: Duration) -> Timings {
        Timings {
            resync_interval: Duration::from_secs(300),
            debounce: DEBOUNCE,
            settle_time: settle,
            delete_grace: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(5),
        }
    }

    fn ctx(expecting_start: bool) -> HintContext {
        HintContext {
            expecting_start,
            health_of_exposed: false,
        }
    }

    #[test]
    fn a_health_change_of_an_exposed_composition_is_due_at_once() {
        let t = timings(ms(500));
        let t0 = Instant::now();
        let health = HintContext {
            expecting_start: false,
            health_of_exposed: true,
        };
        assert_eq!(hint_due(&t, health, t0), t0);
        assert_eq!(
            hint_due(&t, ctx(false), t0),
            t0 + DEBOUNCE,
            "any other hint waits"
        );
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn earliest_deadline_wins() {
        let t0 = Instant::now();
        let mut q = DelayQueue::default();
        q.schedule("a", t0 + ms(500));
        q.schedule("a", t0 + ms(900));
        assert_eq!(
            q.deadline("a"),
            Some(t0 + ms(500)),
            "a later one is ignored"
        );
        q.schedule("a", t0 + ms(100));
        assert_eq!(q.deadline("a"), Some(t0 + ms(100)), "an earlier one wins");
    }

    #[test]
    fn pop_due_takes_only_what_is_due_and_next_due_is_the_earliest() {
        let t0 = Instant::now();
        let mut q = DelayQueue::default();
        assert_eq!(q.next_due(), None);
        q.schedule("b", t0 + ms(200));
        q.schedule("a", t0 + ms(100));
        q.schedule("c", t0 + ms(300));
        assert_eq!(q.next_due(), Some(t0 + ms(100)));
        assert!(q.pop_due(t0 + ms(99)).is_empty());
        assert_eq!(
            q.pop_due(t0 + ms(200)),
            vec!["a", "b"],
            "deadline reached counts"
        );
        assert_eq!(q.next_due(), Some(t0 + ms(300)));
        assert!(q.pop_due(t0 + ms(200)).is_empty(), "popped keys are gone");
        assert_eq!(q.remove("c"), Some(t0 + ms(300)));
        assert_eq!(q.next_due(), None);
        assert!(q.pop_due(t0 + ms(1000)).is_empty());
    }

    #[test]
    fn a_hint_is_due_after_the_debounce() {
        let t = timings(Duration::from_secs(10));
        let t0 = Instant::now();
        let mut q = DelayQueue::default();
        q.schedule("p", hint_due(&t, ctx(false), t0));
        assert!(
            q.pop_due(t0 + DEBOUNCE - ms(1)).is_empty(),
            "not before the debounce"
        );
        assert_eq!(q.pop_due(t0 + DEBOUNCE), vec!["p"]);
    }

    #[test]
    fn a_second_hint_does_not_push_the_pass_later() {
        let t = timings(Duration::from_secs(10));
        let t0 = Instant::now();
        let mut q = DelayQueue::default();
        q.schedule("p", hint_due(&t, ctx(false), t0));
        q.schedule("p", hint_due(&t, ctx(false), t0 + ms(200)));
        assert_eq!(q.next_due(), Some(t0 + DEBOUNCE));
        assert_eq!(
            q.pop_due(t0 + DEBOUNCE),
            vec!["p"],
            "due 300 ms after the first hint"
        );
    }

    /// A pass at `now` that saw services created and not started: the lifecycle it leaves.
    fn after_a_waiting_pass(t: &Timings, now: Instant) -> Lifecycle {
        let mut l = Lifecycle::default();
        l.settle(
            PlanShape {
                exposable: true,
                awaiting_start: true,
            },
            t.settle_time,
            now,
        );
        l
    }

    #[test]
    fn a_start_hint_while_a_start_is_expected_is_due_at_once() {
        let t = timings(Duration::from_secs(10));
        let t0 = Instant::now();
        let lifecycle = after_a_waiting_pass(&t, t0);
        assert!(lifecycle.expecting_start);
        let mut q = DelayQueue::default();
        // The waiting pass's own deadline (the end of the settle time) is already queued.
        q.schedule("p", t0 + t.settle_time);
        let start = t0 + ms(50);
        q.schedule("p", hint_due(&t, ctx(lifecycle.expecting_start), start));
        assert_eq!(q.pop_due(start), vec!["p"], "no debounce");
    }

    #[test]
    fn with_settle_time_zero_the_debounce_is_never_skipped() {
        let t = timings(Duration::ZERO);
        let t0 = Instant::now();
        let lifecycle = after_a_waiting_pass(&t, t0);
        assert!(
            !lifecycle.expecting_start,
            "settle time 0: nothing is waited for"
        );
        let mut q = DelayQueue::default();
        q.schedule("p", hint_due(&t, ctx(lifecycle.expecting_start), t0));
        assert!(q.pop_due(t0).is_empty());
        // Even a stale "expecting" flag does not skip it.
        assert_eq!(hint_due(&t, ctx(true), t0), t0 + DEBOUNCE);
        assert_eq!(q.pop_due(t0 + DEBOUNCE), vec!["p"]);
    }
}
