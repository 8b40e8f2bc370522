//! Waiting on conditions, never on the clock: [`wait_until`] / [`wait_for`] poll a
//! condition up to a generous deadline, and [`assert_unchanged`] checks "nothing
//! happened" only after a barrier proved the system processed past the point under
//! test.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// The default bound for anything asynchronous: generous because the machine running
/// the tests may be loaded; reached only when a test fails, never a performance
/// threshold.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// How often the waits poll.
pub const POLL: Duration = Duration::from_millis(50);

/// Polls the async `check` until it returns `Ok`, and returns that value; panics after
/// `limit`, naming `what` and the last `Err` (a description of the state seen).
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(state) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last state: {state}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Polls the async `check` until it holds; panics after `limit` naming `what`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, limit, || {
        let fut = check();
        async move { fut.await.then_some(()).ok_or_else(|| "false".to_owned()) }
    })
    .await
}

/// Polls the synchronous `check` (a device's stats, a flag set by a callback) from
/// async code every 10 ms until it holds; panics after `limit` naming `what`. Returns
/// the time it took (for printing; never a verdict).
pub async fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// [`wait_for`] for synchronous checks (threads, child processes, files).
pub fn wait_for_sync<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(v) => return v,
            Err(state) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last state: {state}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// [`wait_until`] for synchronous checks.
pub fn wait_until_sync(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    wait_for_sync(what, limit, || {
        check().then_some(()).ok_or_else(|| "false".to_owned())
    })
}

/// Polls the async `observe` until `done` accepts its value or `limit` passes, and
/// returns the last value either way (for callers that report rather than panic).
pub async fn poll_value<T, F, Fut>(limit: Duration, observe: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    poll_value_every(limit, POLL, observe, done).await
}

/// [`poll_value`] polling every `every` (an observation that costs the system under
/// test, such as the stub's summary over every stored event, is polled less often).
pub async fn poll_value_every<T, F, Fut>(
    limit: Duration,
    every: Duration,
    mut observe: F,
    done: impl Fn(&T) -> bool,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + limit;
    loop {
        let v = observe().await;
        if done(&v) || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(every).await;
    }
}

/// Asserts that nothing happened, without sleeping: first awaits `barrier` — an
/// operation whose completion proves the system has processed everything the action
/// under test could have caused (a later request on the same path whose own effect is
/// awaited, a counter that reached a known value) — then reads `observe` once and
/// asserts it equals `expected`. Returns the value read.
///
/// A barrier that completes before the system got to the action under test would make
/// the check vacuous, so pick one that is ordered after it (same connection, same
/// queue, or a counter that counts the action under test itself).
pub async fn assert_unchanged<T, B, O, Fut>(what: &str, expected: T, barrier: B, observe: O) -> T
where
    T: PartialEq + Debug,
    B: Future,
    O: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    barrier.await;
    let seen = observe().await;
    assert_eq!(seen, expected, "{what} changed (read after the barrier)");
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn wait_for_returns_the_first_ok_value() {
        let n = AtomicU32::new(0);
        let v = wait_for("three polls", DEADLINE, || {
            let k = n.fetch_add(1, Ordering::SeqCst);
            async move {
                if k >= 2 {
                    Ok(k)
                } else {
                    Err(format!("at {k}"))
                }
            }
        })
        .await;
        assert_eq!(v, 2);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after")]
    async fn wait_until_panics_at_the_limit() {
        wait_until("never", Duration::from_millis(120), || async { false }).await;
    }

    #[test]
    #[should_panic(expected = "last state: still 7")]
    fn wait_for_sync_names_the_last_state() {
        wait_for_sync::<()>(
            "never",
            Duration::from_millis(120),
            || Err("still 7".into()),
        );
    }

    #[tokio::test]
    async fn poll_value_returns_the_last_value_at_the_limit() {
        let v = poll_value(Duration::from_millis(120), || async { 3 }, |v| *v > 5).await;
        assert_eq!(v, 3);
    }

    #[tokio::test]
    async fn assert_unchanged_reads_after_the_barrier() {
        // A change made before the barrier completes is seen: the check can fail.
        let count = Arc::new(AtomicU32::new(0));
        let c = count.clone();
        let result = tokio::spawn(async move {
            assert_unchanged(
                "count",
                0,
                async move { c.store(1, Ordering::SeqCst) },
                || {
                    let count = count.clone();
                    async move { count.load(Ordering::SeqCst) }
                },
            )
            .await
        })
        .await;
        assert!(
            result.is_err(),
            "a change before the barrier must fail the check"
        );
    }
}
