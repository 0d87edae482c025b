//! The tasks a daemon runs until it is told to stop (its servers, its work loop). One of them ending earlier is
//! a failure the process must not hide: a server that lost its port, or a loop that ended, leaves a process
//! that still looks alive. [`Essential::until`] returns at the signal or at the first such end, whose reason
//! then ends the process non-zero.

use std::collections::HashMap;

use tokio::task::{Id, JoinSet};

/// Tasks that must run until the daemon stops, each named for the log and the exit reason.
#[derive(Default)]
pub struct Essential {
    set: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, &'static str>,
}

impl std::fmt::Debug for Essential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Essential")
            .field("tasks", &self.names.values().collect::<Vec<_>>())
            .finish()
    }
}

impl Essential {
    /// Runs `task` (named `what`, e.g. "metrics server"); it is to run until the caller tells it to stop.
    pub fn spawn(
        &mut self,
        what: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let id = self.set.spawn(task).id();
        self.names.insert(id, what);
    }

    /// Waits for `signal` (`Ok`), or for the first task to end before it: then the error names the task and
    /// why it ended (its error with every cause, a panic, or an end without error), and is logged.
    pub async fn until(&mut self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            _ = signal => Ok(()),
            Some(ended) = self.set.join_next_with_id() => {
                let reason = self.reason(ended);
                tracing::error!(reason = %reason, "stopping: an essential task ended");
                Err(anyhow::anyhow!(reason))
            }
        }
    }

    /// Waits for every task to end (once the caller told them to stop), logging each failure.
    pub async fn join(mut self) {
        while let Some(ended) = self.set.join_next_with_id().await {
            if let Ok((_, Ok(()))) = ended {
                continue;
            }
            let reason = self.reason(ended);
            tracing::warn!(reason = %reason, "a task failed while stopping");
        }
    }

    fn reason(&self, ended: Result<(Id, anyhow::Result<()>), tokio::task::JoinError>) -> String {
        let (id, why) = match ended {
            Ok((id, Ok(()))) => (id, "ended".to_string()),
            Ok((id, Err(e))) => (id, format!("failed: {e:#}")),
            Err(e) if e.is_panic() => (e.id(), "panicked".to_string()),
            Err(e) => (e.id(), "was cancelled".to_string()),
        };
        let what = self.names.get(&id).copied().unwrap_or("a task");
        format!("{what} {why}")
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use anyhow::Context as _;

    use super::*;

    #[tokio::test]
    async fn the_first_task_to_end_is_the_reason_with_its_causes() {
        let taken = crate::http::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let addr = taken.local_addr().expect("addr");
        let (_stop, stopping) = tokio::sync::watch::channel(false);
        let mut tasks = Essential::default();
        tasks.spawn("forever", std::future::pending());
        tasks.spawn(
            "health server",
            crate::http::serve(addr, crate::http::probe_router(|| Ok(())), stopping),
        );
        let err = tasks
            .until(std::future::pending())
            .await
            .expect_err("the server cannot bind");
        let reason = format!("{err:#}");
        assert!(reason.starts_with("health server failed: binding "), "{reason}");
        assert!(reason.contains(&addr.to_string()), "{reason}");

        let mut tasks = Essential::default();
        tasks.spawn("loop", async { Ok(()) });
        let err = tasks.until(std::future::pending()).await.expect_err("it ended");
        assert_eq!(err.to_string(), "loop ended");

        let mut tasks = Essential::default();
        tasks.spawn("loop", async { Err(anyhow::anyhow!("root")).context("outer") });
        let err = tasks.until(std::future::pending()).await.expect_err("failed");
        assert_eq!(err.to_string(), "loop failed: outer: root");
    }

    #[tokio::test]
    async fn the_signal_stops_waiting_and_join_waits_for_every_task() {
        let (stop, mut stopping) = tokio::sync::watch::channel(false);
        let mut tasks = Essential::default();
        tasks.spawn("server", async move {
            let _ = stopping.wait_for(|s| *s).await;
            Ok(())
        });
        tasks.until(async {}).await.expect("the signal");
        stop.send_replace(true);
        tasks.join().await;
        assert!(stop.is_closed(), "the task ended");
    }
}
