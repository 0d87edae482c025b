//! The plain-HTTP endpoints every long-running binary serves: `/healthz` (the process answers), `/readyz`
//! (it can do its job; 503 with the reason otherwise) and `/metrics` (Prometheus/OpenMetrics text).

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Content type of the metrics text every component's `Metrics::encode` writes.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `/healthz` answers 200 while the process serves; `/readyz` answers 200 when `readiness` says so and 503
/// with its reason otherwise (not started, caches not synced, draining).
pub fn probe_router<F>(readiness: F) -> Router
where
    F: Fn() -> Result<(), &'static str> + Clone + Send + Sync + 'static,
{
    probe_router_with_liveness(readiness, || Ok(()))
}

/// [`probe_router`] whose `/healthz` answers 503 with the reason when `liveness` says the process is stuck
/// (e.g. [`crate::liveness::Heartbeat::check`]), so that kubelet restarts it.
pub fn probe_router_with_liveness<F, L>(readiness: F, liveness: L) -> Router
where
    F: Fn() -> Result<(), &'static str> + Clone + Send + Sync + 'static,
    L: Fn() -> Result<(), String> + Clone + Send + Sync + 'static,
{
    probe_routes(readiness, liveness)
}

/// [`probe_router`] whose readiness reason is built at the time of the request (e.g. naming the file or tool
/// that keeps the component from being ready).
pub fn probe_router_explained<F>(readiness: F) -> Router
where
    F: Fn() -> Result<(), String> + Clone + Send + Sync + 'static,
{
    probe_routes(readiness, || Ok(()))
}

fn probe_routes<F, L, R>(readiness: F, liveness: L) -> Router
where
    F: Fn() -> Result<(), R> + Clone + Send + Sync + 'static,
    R: Into<String> + Send + 'static,
    L: Fn() -> Result<(), String> + Clone + Send + Sync + 'static,
{
    let healthz = move || {
        let verdict = liveness();
        async move {
            match verdict {
                Ok(()) => (StatusCode::OK, "ok".to_string()),
                Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
            }
        }
    };
    Router::new().route("/healthz", get(healthz)).route(
        "/readyz",
        get(move || {
            let verdict = readiness();
            async move {
                match verdict {
                    Ok(()) => (StatusCode::OK, "ok".to_string()),
                    Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason.into()),
                }
            }
        }),
    )
}

/// The text of `registry` in the [`OPENMETRICS_CONTENT_TYPE`] format: what every component's
/// `Metrics::encode` answers `/metrics` with.
pub fn openmetrics_text(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// `/metrics`, answering with what `encode` writes.
pub fn metrics_router<F>(encode: F) -> Router
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    Router::new().route(
        "/metrics",
        get(move || {
            let text = encode();
            async move { ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text) }
        }),
    )
}

/// Binds `addr`, naming it in the error (a taken port must say which).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

/// Serves `router` on `listener` until `shutdown` turns true (or its sender is gone).
pub async fn serve_on(
    listener: TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("reading the listener's address")?;
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
        .with_context(|| format!("serving {addr}"))
}

/// What [`get_in_process`] answers: status, `Content-Type` and body (lossy UTF-8).
pub type Answer = (StatusCode, Option<String>, String);

/// GETs `path` from `router` in-process, without a socket: for the tests of every binary's endpoints.
/// Panics when the body cannot be read or is over 1 MiB, so a test never checks an empty stand-in.
pub async fn get_in_process(router: &Router, path: &str) -> Answer {
    use tower::ServiceExt as _;
    let request = axum::http::Request::get(path)
        .body(axum::body::Body::empty())
        .expect("a path is a valid request");
    let Ok(resp) = router.clone().oneshot(request).await;
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("an endpoint's body is readable and within 1 MiB");
    (status, content_type, String::from_utf8_lossy(&body).into_owned())
}

/// [`bind`], then [`serve_on`].
pub async fn serve(addr: SocketAddr, router: Router, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    serve_on(bind(addr).await?, router, shutdown).await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn readyz_follows_readiness_and_names_the_reason() {
        let ready = Arc::new(AtomicBool::new(false));
        let r = {
            let ready = ready.clone();
            probe_router(move || {
                if ready.load(Ordering::Acquire) {
                    Ok(())
                } else {
                    Err("caches not synced")
                }
            })
        };
        assert_eq!(get_in_process(&r, "/healthz").await.0, StatusCode::OK);
        let (status, _, body) = get_in_process(&r, "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
        );
        ready.store(true, Ordering::Release);
        assert_eq!(get_in_process(&r, "/readyz").await.0, StatusCode::OK);
        assert_eq!(get_in_process(&r, "/metrics").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn healthz_follows_liveness_and_names_the_reason() {
        let heartbeat = crate::liveness::Heartbeat::new("work loop", std::time::Duration::ZERO);
        let r = {
            let heartbeat = heartbeat.clone();
            probe_router_with_liveness(|| Ok(()), move || heartbeat.check())
        };
        assert_eq!(get_in_process(&r, "/healthz").await.0, StatusCode::OK);
        let busy = heartbeat.begin();
        let stuck = || async {
            let (status, _, body) = get_in_process(&r, "/healthz").await;
            (status == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
        };
        let mut body = stuck().await;
        while body.is_none() {
            // A zero bound is passed as soon as the clock moves.
            tokio::task::yield_now().await;
            body = stuck().await;
        }
        let body = body.unwrap_or_default();
        assert!(body.starts_with("work loop stuck: no progress for "), "{body}");
        assert_eq!(
            get_in_process(&r, "/readyz").await.0,
            StatusCode::OK,
            "liveness is not readiness"
        );
        drop(busy);
        assert_eq!(get_in_process(&r, "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_encoded_per_request_as_openmetrics() {
        let scrapes = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let r = {
            let scrapes = scrapes.clone();
            metrics_router(move || {
                format!("scrapes {}\n# EOF\n", scrapes.fetch_add(1, Ordering::Relaxed) + 1)
            })
        };
        let (status, content_type, body) = get_in_process(&r, "/metrics").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "scrapes 1\n# EOF\n"));
        assert_eq!(content_type.as_deref(), Some(OPENMETRICS_CONTENT_TYPE));
        assert_eq!(get_in_process(&r, "/metrics").await.2, "scrapes 2\n# EOF\n");
    }

    #[tokio::test]
    async fn serve_names_a_taken_address_and_stops_on_shutdown() {
        let taken = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        let (_tx, rx) = watch::channel(false);
        let err = serve(addr, probe_router(|| Ok(())), rx)
            .await
            .expect_err("port taken");
        assert!(format!("{err:#}").contains(&addr.to_string()), "{err:#}");

        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve_on(taken, probe_router(|| Ok(())), rx));
        tx.send_replace(true);
        server.await.expect("join").expect("graceful stop");
    }
}
