//! The pure timing decisions of a composition's life: how long a hint waits (the debounce),
//! whether a pass exposes now or waits for services still to start (the settle time), whether a
//! composition that no longer exposes anything is held (the delete grace) or deleted, and when a
//! composition's state can be forgotten. No I/O: the reconciler does what these say.

use std::time::Duration;

use tokio::time::Instant;

use super::Outcome;
use crate::config::Timings;

/// The timing state of one composition, kept between passes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Lifecycle {
    /// Until when the objects of a composition that no longer exposes anything are kept.
    pub(crate) grace_until: Option<Instant>,
    /// Since when the composition has had something to expose while opted-in services were
    /// still created and not started (the settle clock).
    pub(crate) starting_since: Option<Instant>,
    /// The last pass found opted-in services created and not started, within the settle time:
    /// their `start` is expected, so its hint needs no debounce (see `hint_due`).
    pub(crate) expecting_start: bool,
    /// When the last pass began: a health change is due no sooner than
    /// [`HEALTH_PASS_INTERVAL`] after it.
    pub(crate) last_pass: Option<Instant>,
    /// Passes in a row, past the settle wait, that found opted-in services created and not
    /// started: how far off the next re-check is (see [`Lifecycle::start_recheck`]).
    pub(crate) start_rechecks: u32,
}

/// The first look again at a composition whose services are still to start, should their
/// `start` event not come; each further one waits twice as long, up to [`START_RECHECK_MAX`].
pub(crate) const START_RECHECK_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two such looks: a composition only ever created (`compose create`)
/// costs one container listing a minute.
pub(crate) const START_RECHECK_MAX: Duration = Duration::from_secs(60);

/// The least time between two passes that health changes make due, per composition: a
/// healthcheck that flaps ten times a second is at most two EndpointSlice writes a second, not
/// ten. The routed state lags a flap by at most this (plus the pass itself); each pass reads the
/// containers' health fresh, so the last flap always wins.
pub(crate) const HEALTH_PASS_INTERVAL: Duration = Duration::from_millis(500);

/// What a pass's plan holds, as far as timing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PlanShape {
    /// The plan has something to expose.
    pub(crate) exposable: bool,
    /// Opted-in services are created and not started yet.
    pub(crate) awaiting_start: bool,
}

/// Whether a pass goes on with its plan or waits for the services still to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    Go,
    /// Write nothing; pass again at `until` at the latest (a start hint comes sooner).
    Wait {
        until: Instant,
    },
}

/// What to do with a composition's objects after its hosts are claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exposure<T> {
    /// Write the desired objects.
    Expose(T),
    /// Nothing to expose and no objects: nothing to do.
    Nothing,
    /// It just stopped exposing: keep the objects until `until`.
    StartGrace { until: Instant },
    /// Still within the grace: keep the objects until `until`.
    HoldGrace { until: Instant },
    /// The grace is over: delete the objects (then call `Lifecycle::deleted`).
    Delete,
}

/// What a hint is about, for [`hint_due`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HintContext {
    /// The last pass saw services created and not started yet.
    pub(crate) expecting_start: bool,
    /// A container's health changed (`health_status`) and the composition is exposed.
    pub(crate) health_of_exposed: bool,
    /// When the composition's last pass began ([`Lifecycle::last_pass`]).
    pub(crate) last_pass: Option<Instant>,
}

/// When a hint is due. The debounce guesses when a composition has finished coming up; when the
/// last pass saw which services are still to start, nothing is left to guess: the settle wait
/// coalesces their starts, so go at once (`--settle-time 0` turns that off, the skip included).
/// A health change of an exposed composition is due at once too: its containers are up, only an
/// endpoint's readiness changes, and health-gated routing should follow Docker without a delay,
/// but no sooner than [`HEALTH_PASS_INTERVAL`] after the last pass (the queue keeps the earliest
/// deadline, so the flaps in between are one pass).
pub(crate) fn hint_due(timings: &Timings, hint: HintContext, now: Instant) -> Instant {
    if hint.health_of_exposed {
        return hint
            .last_pass
            .map_or(now, |last| now.max(last + HEALTH_PASS_INTERVAL));
    }
    now + debounce(timings, hint.expecting_start)
}

fn debounce(timings: &Timings, expecting_start: bool) -> Duration {
    if expecting_start && !timings.settle_time.is_zero() {
        Duration::ZERO
    } else {
        timings.debounce
    }
}

impl Lifecycle {
    /// Whether to wait for the plan's services still to start before exposing the rest, so
    /// that a composition that comes up in steps is written once, not once per step. The clock
    /// starts at the first pass that has something to expose while services are still awaited
    /// (a composition created long ago and started now gets the whole settle time); later
    /// passes do not restart it. `Go`: nothing awaited, nothing to expose yet, or the settle
    /// time is over.
    pub(crate) fn settle(
        &mut self,
        plan: PlanShape,
        settle_time: Duration,
        now: Instant,
    ) -> Settle {
        if !plan.awaiting_start || !plan.exposable {
            self.starting_since = None;
            self.expecting_start = plan.awaiting_start && !settle_time.is_zero();
            return Settle::Go;
        }
        let since = *self.starting_since.get_or_insert(now);
        let left = settle_time
            .checked_sub(now.saturating_duration_since(since))
            .filter(|left| !left.is_zero());
        self.expecting_start = left.is_some();
        match left {
            Some(left) => Settle::Wait { until: now + left },
            None => Settle::Go,
        }
    }

    /// What to do with the objects, given what is to be exposed (after the host claims) and
    /// whether the composition has objects. A composition that comes back within the grace keeps its
    /// objects (the grace is cleared); one that stopped is deleted only after the grace, so
    /// that a restart or a recreate does not flap the route.
    pub(crate) fn exposure<T>(
        &mut self,
        desired: Option<T>,
        has_objects: bool,
        delete_grace: Duration,
        now: Instant,
    ) -> Exposure<T> {
        if let Some(desired) = desired {
            self.grace_until = None;
            return Exposure::Expose(desired);
        }
        if !has_objects {
            return Exposure::Nothing;
        }
        match self.grace_until {
            None => {
                let until = now + delete_grace;
                self.grace_until = Some(until);
                Exposure::StartGrace { until }
            }
            Some(until) if until > now => Exposure::HoldGrace { until },
            // Cleared only once the deletes succeeded (`deleted`): a failed delete is retried
            // without a new grace.
            Some(_) => Exposure::Delete,
        }
    }

    /// When to look at the composition again after a pass (past the settle wait) that found
    /// opted-in services created and not started, or `None` when it found none. Their `start`
    /// event makes the next pass due at once; this is the deadline if the event does not come
    /// (a pass is level-triggered: an event only makes it sooner). Without it, a start event
    /// that reached the sidecar late, or not at all, left the composition unexposed until some
    /// other event of it or the next full resync (a bench sample exposed 120 s late). 1 s after
    /// the first such pass, twice as long after each further one, at most a minute.
    pub(crate) fn start_recheck(&mut self, awaiting_start: bool, now: Instant) -> Option<Instant> {
        if !awaiting_start {
            self.start_rechecks = 0;
            return None;
        }
        let delay = START_RECHECK_FIRST
            .saturating_mul(1u32 << self.start_rechecks.min(16))
            .min(START_RECHECK_MAX);
        self.start_rechecks = self.start_rechecks.saturating_add(1);
        Some(now + delay)
    }

    /// The objects are deleted: the grace is done.
    pub(crate) fn deleted(&mut self) {
        self.grace_until = None;
    }

    /// Whether the composition's state can be forgotten after a pass with `outcome`: nothing of it
    /// is left in the cluster, and nothing is pending (a grace, a start, a re-check whose
    /// backoff must not start over, problems to log only once).
    pub(crate) fn forgettable(&self, outcome: &Outcome, has_problems: bool) -> bool {
        matches!(outcome, Outcome::Deleted | Outcome::Nothing)
            && self.grace_until.is_none()
            && !has_problems
            && !self.expecting_start
            && self.start_rechecks == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_secs(10);
    const GRACE: Duration = Duration::from_secs(10);

    const GONE: Option<()> = None;
    const BACK: Option<()> = Some(());

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    const WAITING: PlanShape = PlanShape {
        exposable: true,
        awaiting_start: true,
    };
    const READY: PlanShape = PlanShape {
        exposable: true,
        awaiting_start: false,
    };
    const NOT_YET: PlanShape = PlanShape {
        exposable: false,
        awaiting_start: true,
    };

    #[test]
    fn settle_waits_from_the_first_such_pass() {
        let t0 = Instant::now();
        let mut l = Lifecycle::default();
        assert_eq!(
            l.settle(WAITING, SETTLE, t0),
            Settle::Wait { until: t0 + SETTLE }
        );
        assert_eq!(l.starting_since, Some(t0));
        assert!(l.expecting_start);
        // A later pass does not restart the clock.
        assert_eq!(
            l.settle(WAITING, SETTLE, t0 + s(4)),
            Settle::Wait { until: t0 + SETTLE }
        );
        assert_eq!(l.starting_since, Some(t0));
    }

    #[test]
    fn settle_exposes_once_the_settle_time_is_over() {
        let t0 = Instant::now();
        let mut l = Lifecycle::default();
        l.settle(WAITING, SETTLE, t0);
        assert_eq!(l.settle(WAITING, SETTLE, t0 + SETTLE), Settle::Go);
        assert!(!l.expecting_start, "no start is expected any more");
        assert_eq!(l.settle(WAITING, SETTLE, t0 + s(11)), Settle::Go);
    }

    #[test]
    fn nothing_awaited_exposes_at_once() {
        let t0 = Instant::now();
        let mut l = Lifecycle::default();
        l.settle(WAITING, SETTLE, t0);
        // The awaited services started.
        assert_eq!(l.settle(READY, SETTLE, t0 + s(1)), Settle::Go);
        assert_eq!(l.starting_since, None);
        assert!(!l.expecting_start);
        assert_eq!(Lifecycle::default().settle(READY, SETTLE, t0), Settle::Go);
    }

    #[test]
    fn nothing_to_expose_yet_starts_no_settle_clock() {
        let t0 = Instant::now();
        let mut l = Lifecycle::default();
        assert_eq!(l.settle(NOT_YET, SETTLE, t0), Settle::Go);
        assert_eq!(l.starting_since, None);
        assert!(l.expecting_start, "their start is expected all the same");
        // The clock starts when something can be exposed: the whole settle time from then.
        assert_eq!(
            l.settle(WAITING, SETTLE, t0 + s(30)),
            Settle::Wait {
                until: t0 + s(30) + SETTLE
            }
        );
    }

    #[test]
    fn settle_time_zero_never_waits_nor_expects() {
        let t0 = Instant::now();
        let mut l = Lifecycle::default();
        assert_eq!(l.settle(WAITING, Duration::ZERO, t0), Settle::Go);
        assert!(!l.expecting_start);
        assert_eq!(l.settle(NOT_YET, Duration::ZERO, t0), Settle::Go);
        assert!(!l.expecting_start);
    }

    #[test]
    fn a_composition_no_longer_exposed_is_held_for_the_grace() {
        let t0 = Instant::now();
        let mut l = Lifecycle::default();
        assert_eq!(
            l.exposure(GONE, true, GRACE, t0),
            Exposure::StartGrace { until: t0 + GRACE }
        );
        // Later passes within the grace hold it, with the same deadline.
        assert_eq!(
            l.exposure(GONE, true, GRACE, t0 + s(9)),
            Exposure::HoldGrace { until: t0 + GRACE }
        );
    }

    #[test]
    fn coming_back_within_the_grace_clears_it_and_keeps_the_objects() {
        let t0 = Instant::now();
        let mut l = Lifecycle::default();
        l.exposure(GONE, true, GRACE, t0);
        assert_eq!(
            l.exposure(BACK, true, GRACE, t0 + s(5)),
            Exposure::Expose(())
        );
        assert_eq!(l.grace_until, None);
        // Stopping again later starts a new, whole grace.
        assert_eq!(
            l.exposure(GONE, true, GRACE, t0 + s(20)),
            Exposure::StartGrace {
                until: t0 + s(20) + GRACE
            }
        );
    }

    #[test]
    fn the_objects_go_once_the_grace_is_over() {
        let t0 = Instant::now();
        let mut l = Lifecycle::default();
        l.exposure(GONE, true, GRACE, t0);
        assert_eq!(l.exposure(GONE, true, GRACE, t0 + GRACE), Exposure::Delete);
        // A failed delete is retried as a delete, not with a new grace.
        assert_eq!(l.exposure(GONE, true, GRACE, t0 + s(11)), Exposure::Delete);
        l.deleted();
        assert_eq!(l.grace_until, None);
    }

    #[test]
    fn no_objects_means_nothing_to_do() {
        let t0 = Instant::now();
        let mut l = Lifecycle::default();
        assert_eq!(l.exposure(GONE, false, GRACE, t0), Exposure::Nothing);
        assert_eq!(l.grace_until, None);
    }

    #[test]
    fn a_settled_project_is_forgotten_after_deleted_or_nothing() {
        let l = Lifecycle::default();
        assert!(l.forgettable(&Outcome::Deleted, false));
        assert!(l.forgettable(&Outcome::Nothing, false));
        for kept in [
            Outcome::Exposed,
            Outcome::Unchanged,
            Outcome::GracePending,
            Outcome::Waiting,
        ] {
            assert!(!l.forgettable(&kept, false), "{kept:?}");
        }
    }

    #[test]
    fn a_project_with_something_pending_is_kept() {
        let t0 = Instant::now();
        let in_grace = Lifecycle {
            grace_until: Some(t0),
            ..Lifecycle::default()
        };
        let expecting = Lifecycle {
            expecting_start: true,
            ..Lifecycle::default()
        };
        for outcome in [Outcome::Deleted, Outcome::Nothing] {
            assert!(!in_grace.forgettable(&outcome, false));
            assert!(!expecting.forgettable(&outcome, false));
            assert!(
                !Lifecycle::default().forgettable(&outcome, true),
                "problems"
            );
        }
    }

    /// A pass past the settle wait that finds services still to start sets a deadline to look
    /// again, in case their start event never reaches the sidecar: 1 s, then twice as long each
    /// time, at most a minute; a pass that finds none awaited clears it and starts over (seen
    /// failing with `start_recheck` returning `None`: the pass set no deadline at all).
    #[test]
    fn a_composition_still_to_start_is_looked_at_again_later_and_later() {
        let t0 = Instant::now();
        let mut l = Lifecycle::default();
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..9 {
            let at = l
                .start_recheck(true, now)
                .expect("a re-check while awaited");
            delays.push((at - now).as_secs());
            now = at;
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert!(
            !l.forgettable(&Outcome::Nothing, false),
            "its backoff is kept"
        );
        assert_eq!(l.start_recheck(false, now), None, "all started");
        assert!(l.forgettable(&Outcome::Nothing, false));
        assert_eq!(l.start_recheck(true, now), Some(now + START_RECHECK_FIRST));
    }

    // When a hint is due (`hint_due`).

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
            last_pass: None,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A pass at `now` that saw services created and not started: the lifecycle it leaves.
    fn after_a_waiting_pass(t: &Timings, now: Instant) -> Lifecycle {
        let mut l = Lifecycle::default();
        l.settle(WAITING, t.settle_time, now);
        l
    }

    #[test]
    fn a_health_change_of_an_exposed_composition_is_due_at_once() {
        let t = timings(ms(500));
        let t0 = Instant::now();
        let health = HintContext {
            expecting_start: false,
            health_of_exposed: true,
            last_pass: None,
        };
        assert_eq!(hint_due(&t, health, t0), t0);
        assert_eq!(
            hint_due(&t, ctx(false), t0),
            t0 + DEBOUNCE,
            "any other hint waits"
        );
    }

    /// A healthcheck flapping every 100 ms for two seconds: the passes it makes due (the queue
    /// keeps the earliest deadline, a pass clears it) are at least HEALTH_PASS_INTERVAL apart,
    /// five where every flap was one (seen failing with the interval ignored: 20 passes).
    #[test]
    fn health_flaps_make_at_most_one_pass_per_interval() {
        let t = timings(ms(500));
        let t0 = Instant::now();
        let mut queue = super::super::queue::DelayQueue::default();
        let mut lifecycle = Lifecycle::default();
        let mut passes = Vec::new();
        for tick in 0..=200u64 {
            let now = t0 + ms(tick * 10);
            if tick % 10 == 0 && tick < 200 {
                let hint = HintContext {
                    expecting_start: false,
                    health_of_exposed: true,
                    last_pass: lifecycle.last_pass,
                };
                queue.schedule("demo", hint_due(&t, hint, now));
            }
            if queue.pop_next_due(now).is_some() {
                lifecycle.last_pass = Some(now);
                passes.push(now);
            }
        }
        assert!(passes.len() <= 5, "{} passes", passes.len());
        assert!(
            passes
                .windows(2)
                .all(|w| w[1] - w[0] >= HEALTH_PASS_INTERVAL)
        );
        // The last flap (at 1.9 s) is seen within the interval.
        assert!(*passes.last().unwrap() >= t0 + ms(1900));
        assert!(*passes.last().unwrap() <= t0 + ms(1900) + HEALTH_PASS_INTERVAL);
    }

    #[test]
    fn a_hint_is_due_after_the_debounce() {
        let t = timings(s(10));
        let t0 = Instant::now();
        assert_eq!(hint_due(&t, ctx(false), t0), t0 + DEBOUNCE);
    }

    #[test]
    fn a_start_hint_while_a_start_is_expected_is_due_at_once() {
        let t = timings(s(10));
        let t0 = Instant::now();
        let lifecycle = after_a_waiting_pass(&t, t0);
        assert!(lifecycle.expecting_start);
        // Sooner than the waiting pass's own deadline (the end of the settle time), which the
        // queue then no longer waits for (the earlier deadline wins).
        let start = t0 + ms(50);
        assert_eq!(
            hint_due(&t, ctx(lifecycle.expecting_start), start),
            start,
            "no debounce"
        );
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
        assert_eq!(
            hint_due(&t, ctx(lifecycle.expecting_start), t0),
            t0 + DEBOUNCE
        );
        // Even a stale "expecting" flag does not skip it.
        assert_eq!(hint_due(&t, ctx(true), t0), t0 + DEBOUNCE);
    }
}
