//! Admin HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (process alive), `/readyz` (caches synced
//! and, in gateway mode, first apply done; 503 while draining).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
/// message, cleared when solved). `/readyz` answers 503 with their messages while any is set.
#[derive(Debug, Clone, Default)]
pub struct NotReady(Arc<Mutex<BTreeMap<&'static str, String>>>);

impl NotReady {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records (or replaces) `source`'s problem.
    pub fn set(&self, source: &'static str, message: impl Into<String>) {
        self.lock().insert(source, message.into());
    }

    /// Clears `source`'s problem, if any.
    pub fn clear(&self, source: &'static str) {
        self.lock().remove(source);
    }

    /// The messages of every problem, joined; `None` when there is none.
    pub fn reasons(&self) -> Option<String> {
        let g = self.lock();
        (!g.is_empty()).then(|| g.values().cloned().collect::<Vec<_>>().join("; "))
    }
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
