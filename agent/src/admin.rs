//! Admin HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (process alive), `/readyz` (caches synced
//! and, in gateway mode, first apply done; 503 while draining).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
}

impl AdminState {
    /// What `/readyz` answers: ready once started (and, in gateway mode, after the first apply), not while
    /// draining.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            Err("draining")
        } else if !self.ready.load(Ordering::Acquire) {
            Err("not ready")
        } else {
            Ok(())
        }
    }
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    let metrics = state.metrics.clone();
    daemon::http::probe_router(move || state.readiness())
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
        s.draining.store(true, Ordering::Release);
        assert_eq!(get(&r, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        let (st, _, body) = get(&r, "/metrics").await;
        assert_eq!(st, StatusCode::OK);
        assert!(body.contains("gateway_apply_duration_seconds"), "{body}");
    }
}
