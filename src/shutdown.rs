//! The shutdown's one deadline: from SIGTERM to exit, `--shutdown-timeout`, whatever is in
//! flight. Each Kubernetes API request is bounded by `--api-timeout`, but a clean-up of many
//! objects is many requests, and the kubelet's SIGKILL comes at terminationGracePeriodSeconds
//! anyway: past the deadline the caller logs what was still running and exits.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

/// A task the shutdown waits for, with the name the warning gives it.
pub type Task = (&'static str, JoinHandle<()>);

/// What of the clean-up at exit is under way (set by the clean-up, read when the deadline
/// passes); `None` when nothing is.
pub type Step = Cell<Option<&'static str>>;

/// Waits, under one deadline `timeout` from now, for the tasks that could still write (`first`:
/// the reconciler, the Docker watcher; so that the clean-up comes after their last write), then
/// for `cleanup`, then for the rest (`last`: the Event poster, the HTTP server). `Err` names
/// what was still running when the deadline passed, in that order: the unfinished tasks, and
/// the clean-up's `step` if it was under way.
pub async fn bounded(
    timeout: Duration,
    mut first: Vec<Task>,
    cleanup: impl Future<Output = ()>,
    step: &Step,
    mut last: Vec<Task>,
) -> Result<(), Vec<&'static str>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let finished = tokio::time::timeout_at(deadline, async {
        for (_, task) in first.iter_mut() {
            let _ = task.await;
        }
        cleanup.await;
        for (_, task) in last.iter_mut() {
            let _ = task.await;
        }
    })
    .await;
    if finished.is_ok() {
        return Ok(());
    }
    let unfinished = |tasks: &[Task]| -> Vec<&'static str> {
        tasks
            .iter()
            .filter(|(_, task)| !task.is_finished())
            .map(|(name, _)| *name)
            .collect()
    };
    let mut running = unfinished(&first);
    running.extend(step.get());
    running.extend(unfinished(&last));
    Err(running)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_millis(300);
    /// Far more than the limit and far less than "forever": a bound that failed shows as this.
    const HANG: Duration = Duration::from_secs(3600);

    fn quick(name: &'static str) -> Task {
        (name, tokio::spawn(async {}))
    }

    fn hanging(name: &'static str) -> Task {
        (name, tokio::spawn(tokio::time::sleep(HANG)))
    }

    #[tokio::test]
    async fn a_shutdown_that_finishes_in_time_is_ok() {
        let step = Step::default();
        let cleanup = async {
            step.set(Some("clean-up"));
            tokio::time::sleep(Duration::from_millis(10)).await;
            step.set(None);
        };
        let done = bounded(
            LIMIT,
            vec![quick("reconciler")],
            cleanup,
            &step,
            vec![quick("http-server")],
        )
        .await;
        assert_eq!(done, Ok(()));
    }

    /// A hanging clean-up (an apiserver that does not answer) ends at the deadline, and the
    /// answer names it and the tasks it kept waiting.
    #[tokio::test]
    async fn a_hanging_clean_up_is_cut_at_the_deadline_and_named() {
        let step = Step::default();
        let cleanup = async {
            step.set(Some("clean-up at exit: deleting this pod's objects"));
            tokio::time::sleep(HANG).await;
        };
        let started = std::time::Instant::now();
        let done = bounded(
            LIMIT,
            vec![quick("reconciler"), quick("docker-watcher")],
            cleanup,
            &step,
            vec![hanging("event-poster"), quick("http-server")],
        )
        .await;
        let took = started.elapsed();
        assert!(took >= LIMIT, "{took:?}");
        assert!(took < Duration::from_secs(10), "not bounded: {took:?}");
        assert_eq!(
            done,
            Err(vec![
                "clean-up at exit: deleting this pod's objects",
                "event-poster"
            ])
        );
    }

    /// A task stuck before the clean-up (the reconciler in a request) is cut too; the clean-up
    /// that never started is not named.
    #[tokio::test]
    async fn a_hanging_task_is_cut_at_the_deadline_and_named() {
        let step = Step::default();
        let started = std::time::Instant::now();
        let done = bounded(
            LIMIT,
            vec![hanging("reconciler"), quick("docker-watcher")],
            async { step.set(Some("clean-up")) },
            &step,
            vec![quick("http-server")],
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(10), "not bounded");
        assert_eq!(done, Err(vec!["reconciler"]));
    }
}
