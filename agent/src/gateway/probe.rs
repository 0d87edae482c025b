//! Load-balancer health probe: `GET /gw/<uid>` is 200 while the configuration is active here, 503 when it
//! is not or while the agent drains on shutdown (so the load balancer moves flows before we stop), 400 for
//! any other path.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;

/// Shared probe state.
#[derive(Debug, Clone, Default)]
pub struct ProbeState {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    active: BTreeSet<String>,
    draining: bool,
    /// Probes of active configurations answered 503 because of the drain: once one was, the load balancer
    /// knows and moves the flows.
    refused_while_draining: std::sync::atomic::AtomicU64,
}

impl ProbeState {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
    /// Replaces the set of active configuration UIDs.
    pub fn set_active(&self, uids: impl IntoIterator<Item = String>) {
        self.write().active = uids.into_iter().collect();
    }
    /// Starts draining: every probe answers 503 from now on.
    pub fn drain(&self) {
        self.write().draining = true;
    }
    /// Whether a probe of an active configuration has been answered 503 since the drain started.
    pub fn drain_seen(&self) -> bool {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.refused_while_draining
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
    }
    /// Whether any configuration is active here.
    pub fn any_active(&self) -> bool {
        !self
            .inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .active
            .is_empty()
    }
    /// The status for a path.
    pub fn status_for(&self, path: &str) -> StatusCode {
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() != 3 || !parts[0].is_empty() || parts[1] != "gw" || parts[2].is_empty() {
            return StatusCode::BAD_REQUEST;
        }
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let active = g.active.contains(parts[2]);
        if g.draining && active {
            g.refused_while_draining
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        if !g.draining && active {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// The probe router.
pub fn router(state: ProbeState) -> Router {
    async fn probe(State(s): State<ProbeState>, uri: axum::http::Uri) -> StatusCode {
        s.status_for(uri.path())
    }
    async fn uid(State(s): State<ProbeState>, Path(uid): Path<String>) -> StatusCode {
        s.status_for(&format!("/gw/{uid}"))
    }
    Router::new()
        .route("/gw/{uid}", get(uid))
        .fallback(probe)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let s = ProbeState::default();
        for bad in ["", "/gw", "/gw/", "/gw/1/2", "/x/1"] {
            assert_eq!(s.status_for(bad), StatusCode::BAD_REQUEST, "{bad}");
        }
        assert_eq!(s.status_for("/gw/u1"), StatusCode::SERVICE_UNAVAILABLE);
        s.set_active(["u1".to_string()]);
        assert_eq!(s.status_for("/gw/u1"), StatusCode::OK);
        assert_eq!(s.status_for("/gw/u2"), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!s.drain_seen());
        s.drain();
        assert!(!s.drain_seen(), "no probe answered since");
        assert_eq!(s.status_for("/gw/u2"), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            !s.drain_seen(),
            "u2 is not active here: not our load balancer's probe"
        );
        assert_eq!(s.status_for("/gw/u1"), StatusCode::SERVICE_UNAVAILABLE);
        assert!(s.drain_seen());
        assert!(s.any_active());
    }

    #[tokio::test]
    async fn http_server_answers_probe_paths() {
        let s = ProbeState::default();
        s.set_active(["abc".to_string()]);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = l.local_addr().expect("addr");
        let srv = tokio::spawn(async move { axum::serve(l, router(s)).await });
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut out = String::new();
            c.read_to_string(&mut out).await.expect("read");
            out.split(' ').nth(1).unwrap_or("").to_string()
        };
        assert_eq!(get("/gw/abc").await, "200");
        assert_eq!(get("/gw/nope").await, "503");
        assert_eq!(get("/gw/a/b").await, "400");
        srv.abort();
    }
}
