//! Admin HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (process alive), `/readyz` (caches synced
//! and, in gateway mode, first apply done; 503 while draining).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use axum::Router;

use crate::metrics::Metrics;

/// State behind the admin endpoints.
#[derive(Debug, Clone, Default)]
pub struct AdminState {
    /// Metrics to expose.
    pub metrics: Arc<Metrics>,
    /// Ready to serve.
    pub ready: Arc<AtomicBool>,
    /// Shutting down.
    pub draining: Arc<AtomicBool>,
    /// Problems that keep the agent not ready whatever else it has done.
    pub not_ready: NotReady,
}

/// Problems that keep the agent not ready, each under the name of what found it (set again with a new
/// message, cleared when solved). `/readyz` answers 503 with their messages while any is set. Kept in a
/// `watch` channel so that a change can be awaited ([`NotReady::changed_to`]).
#[derive(Debug, Clone)]
pub struct NotReady(Arc<watch::Sender<BTreeMap<&'static str, String>>>);

impl Default for NotReady {
    fn default() -> Self {
        NotReady(Arc::new(watch::Sender::new(BTreeMap::new())))
    }
}

impl NotReady {
    /// Records (or replaces) `source`'s problem.
    pub fn set(&self, source: &'static str, message: impl Into<String>) {
        let message = message.into();
        self.0.send_modify(|m| {
            m.insert(source, message);
        });
    }

    /// Clears `source`'s problem, if any.
    pub fn clear(&self, source: &'static str) {
        self.0.send_if_modified(|m| m.remove(source).is_some());
    }

    /// The messages of every problem, joined; `None` when there is none.
    pub fn reasons(&self) -> Option<String> {
        reasons_of(&self.0.borrow())
    }

    /// Waits until the reasons satisfy `done` (checked now, then at each change); returns them.
    pub async fn changed_to(&self, mut done: impl FnMut(Option<&str>) -> bool) -> Option<String> {
        let mut rx = self.0.subscribe();
        let seen = rx
            .wait_for(|m| done(reasons_of(m).as_deref()))
            .await
            .map(|m| reasons_of(&m));
        // The sender lives as long as `self`, so the channel cannot close while we wait.
        seen.unwrap_or_else(|_| self.reasons())
    }
}

fn reasons_of(m: &BTreeMap<&'static str, String>) -> Option<String> {
    (!m.is_empty()).then(|| m.values().cloned().collect::<Vec<_>>().join("; "))
}

impl AdminState {
    /// What `/readyz` answers: ready once started (and, in gateway mode, after the first apply), not while
    /// draining nor while a problem is recorded in [`AdminState::not_ready`] (the reason names it).
    pub fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Acquire) {
            Err("draining".into())
        } else if let Some(reasons) = self.not_ready.reasons() {
            Err(format!("not ready: {reasons}"))
        } else if !self.ready.load(Ordering::Acquire) {
            Err("not ready".into())
        } else {
            Ok(())
        }
    }
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    let metrics = state.metrics.clone();
    daemon::http::probe_router_explained(move || state.readiness())
        .merge(daemon::http::metrics_router(move || metrics.encode()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use daemon::http::get_in_process as get;

    #[tokio::test]
    async fn readiness_follows_state_and_drain() {
        let s = AdminState::default();
        let r = router(s.clone());
        assert_eq!(get(&r, "/healthz").await.0, StatusCode::OK);
        assert_eq!(get(&r, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        s.ready.store(true, Ordering::Release);
        assert_eq!(get(&r, "/readyz").await.0, StatusCode::OK);
        s.not_ready.set("cni_config", "00-a.conflist shadows ours");
        let (st, _, body) = get(&r, "/readyz").await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: 00-a.conflist shadows ours");
        s.not_ready.clear("cni_config");
        assert_eq!(get(&r, "/readyz").await.0, StatusCode::OK);
        s.draining.store(true, Ordering::Release);
        assert_eq!(get(&r, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        let (st, _, body) = get(&r, "/metrics").await;
        assert_eq!(st, StatusCode::OK);
        assert!(body.contains("gateway_apply_duration_seconds"), "{body}");
    }
}
