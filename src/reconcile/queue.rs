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
pub(crate) struct DelayQueue<K> {
    due: BTreeMap<K, Due>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Due {
    at: Instant,
    /// Timer-made work that nobody waits for (the deletes after a grace): taken only when no
    /// foreground key is due, so that a batch of them never holds up a composition that a
    /// Docker event made due.
    background: bool,
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
    pub(crate) fn schedule(&mut self, key: K, at: Instant) {
        self.insert(key, at, false);
    }

    /// [`DelayQueue::schedule`] for work nobody waits for: behind every foreground key that is
    /// due. A key scheduled both ways is foreground.
    pub(crate) fn schedule_background(&mut self, key: K, at: Instant) {
        self.insert(key, at, true);
    }

    fn insert(&mut self, key: K, at: Instant, background: bool) {
        self.due
            .entry(key)
            .and_modify(|d| {
                d.at = d.at.min(at);
                d.background &= background;
            })
            .or_insert(Due { at, background });
    }

    /// Forgets `key`'s deadline (it is being handled another way, e.g. by a full resync).
    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<Instant>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.due.remove(key).map(|d| d.at)
    }

    /// The earliest deadline, if any key is queued.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.due.values().map(|d| d.at).min()
    }

    /// Takes out the key to handle next at `now`: of the keys due (deadline reached), the
    /// foreground ones first, then the earliest deadline, then key order.
    pub(crate) fn pop_next_due(&mut self, now: Instant) -> Option<K> {
        let key = self
            .due
            .iter()
            .filter(|(_, d)| d.at <= now)
            .min_by_key(|(_, d)| (d.background, d.at))
            .map(|(k, _)| k.clone())?;
        self.due.remove(&key);
        Some(key)
    }

    /// Every key due at `now`, in the order [`DelayQueue::pop_next_due`] takes them.
    #[cfg(test)]
    pub(crate) fn pop_due(&mut self, now: Instant) -> Vec<K> {
        std::iter::from_fn(|| self.pop_next_due(now)).collect()
    }

    /// `key`'s deadline, if it is queued (the reconciler only needs the earliest of all).
    #[cfg(test)]
    pub(crate) fn deadline<Q>(&self, key: &Q) -> Option<Instant>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.due.get(key).map(|d| d.at)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_due_foreground_key_goes_before_every_due_background_key() {
        let t0 = Instant::now();
        let mut q = DelayQueue::default();
        // A grace ended for a and b long ago; c's hint is due only now.
        q.schedule_background("a", t0);
        q.schedule_background("b", t0 + ms(10));
        q.schedule("c", t0 + ms(300));
        assert_eq!(q.pop_next_due(t0 + ms(299)), Some("a"), "c is not due yet");
        assert_eq!(
            q.pop_due(t0 + ms(300)),
            vec!["c", "b"],
            "due: foreground first, however old the background deadline"
        );
    }

    #[test]
    fn a_hint_for_a_background_key_makes_it_foreground_keeping_the_earlier_deadline() {
        let t0 = Instant::now();
        let mut q = DelayQueue::default();
        q.schedule_background("back", t0);
        q.schedule_background("comeback", t0 + ms(100));
        q.schedule("comeback", t0 + ms(400));
        assert_eq!(q.deadline("comeback"), Some(t0 + ms(100)));
        assert_eq!(q.pop_due(t0 + ms(100)), vec!["comeback", "back"]);
        // Background twice stays background.
        q.schedule_background("x", t0);
        q.schedule_background("x", t0 + ms(5));
        q.schedule("y", t0 + ms(5));
        assert_eq!(q.pop_due(t0 + ms(5)), vec!["y", "x"]);
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
    fn a_second_hint_does_not_push_the_pass_later() {
        // Two hints 200 ms apart, each due a debounce (300 ms) after it came.
        let debounce = ms(300);
        let t0 = Instant::now();
        let mut q = DelayQueue::default();
        q.schedule("p", t0 + debounce);
        q.schedule("p", t0 + ms(200) + debounce);
        assert_eq!(q.next_due(), Some(t0 + debounce));
        assert_eq!(
            q.pop_due(t0 + debounce),
            vec!["p"],
            "due 300 ms after the first hint"
        );
    }
}
