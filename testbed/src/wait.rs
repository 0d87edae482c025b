//! Waiting for a condition in tests: poll until it holds or a deadline passes (never a bare `sleep`).

use std::future::Future;
use std::time::Duration;

/// How long [`eventually`] waits: generous, because CI machines have two cores and run tests in parallel.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// Polls `cond` every 20 ms until it returns true; panics naming `what` after [`DEFAULT_TIMEOUT`].
pub async fn eventually<F, Fut>(what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(what, DEFAULT_TIMEOUT, cond).await;
}

/// As [`eventually`], with an explicit deadline.
pub async fn eventually_within<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
