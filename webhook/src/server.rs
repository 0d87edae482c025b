//! HTTPS serving: admission endpoints over rustls with timeouts against slow or broken clients, health and
//! metrics, graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tower::ServiceExt as _;

use crate::facts::ClusterFacts;
use crate::handlers::{Endpoint, Policy, review};
use crate::metrics::{KindLabels, Metrics, ReviewLabels};
use crate::review::{DecodeError, Denial, MAX_BODY_BYTES, Response as Review, decode};

/// How long a client may take for each of the TLS handshake, the request headers and the request body in
/// production: the webhook timeout the chart registers (`timeoutSeconds: 10`, also kube-apiserver's default),
/// after which the API server has given up on the call anyway.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared by every request.
pub struct AppState {
    /// Cluster facts from watches.
    pub facts: Arc<dyn ClusterFacts>,
    /// Who may write PodEndpoints.
    pub policy: Policy,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Set when shutting down: /readyz turns 503 so the Service stops sending reviews.
    pub draining: AtomicBool,
    /// How long a client may take for each of the TLS handshake, the request headers and the request body
    /// ([`DEFAULT_CLIENT_TIMEOUT`] in production): a slow or silent client then costs only its own connection,
    /// for that long.
    pub client_timeout: Duration,
    /// The self-generated serving certificate's expiry (untracked with certificate files): `/healthz` fails
    /// when renewing it has failed for long ([`crate::renew::CertExpiry::check`]).
    pub certificate: Arc<crate::renew::CertExpiry>,
}

impl AppState {
    /// What `/readyz` answers: ready once the cluster watches are synced, not while draining.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            Err("draining")
        } else if !self.facts.synced() {
            Err("cluster watches not synced")
        } else {
            Ok(())
        }
    }

    /// What `/healthz` answers: alive unless the self-generated certificate nears its expiry unrenewed.
    pub fn liveness(&self) -> Result<(), String> {
        self.certificate.check(time::OffsetDateTime::now_utc())
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("policy", &self.policy)
            .field("client_timeout", &self.client_timeout)
            .finish_non_exhaustive()
    }
}

/// The HTTPS router: one POST path per endpoint, plus `/healthz` and `/readyz`.
pub fn admission_router(state: Arc<AppState>) -> Router {
    let mut router = Router::new();
    for endpoint in Endpoint::ALL {
        router = router.route(
            endpoint.path(),
            post(move |State(state): State<Arc<AppState>>, req: Request| admit(state, endpoint, req)),
        );
    }
    router.with_state(state.clone()).merge(probe_router(state))
}

/// Health, readiness and metrics (also served over plain HTTP on the metrics port).
pub fn probe_router(state: Arc<AppState>) -> Router {
    let (readiness, liveness) = (state.clone(), state.clone());
    daemon::http::probe_router_with_liveness(move || readiness.readiness(), move || liveness.liveness())
        .merge(daemon::http::metrics_router(move || state.metrics.encode()))
}

async fn admit(state: Arc<AppState>, endpoint: Endpoint, req: Request) -> Response {
    let started = Instant::now();
    let kind = endpoint.kind().1;
    let body = match tokio::time::timeout(
        state.client_timeout,
        axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            count(&state, kind, "", "error");
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "AdmissionReview body exceeds {MAX_BODY_BYTES} bytes (kube-apiserver's request limit)"
                ),
            )
                .into_response();
        }
        Err(_) => {
            count(&state, kind, "", "error");
            return (StatusCode::REQUEST_TIMEOUT, "request body not received in time").into_response();
        }
    };
    let (response, operation) = match decode(&body) {
        Ok(request) => (
            review(endpoint, &request, state.facts.as_ref(), &state.policy),
            request.operation.clone(),
        ),
        Err(DecodeError::NotJson(why)) => {
            count(&state, kind, "", "error");
            tracing::warn!(path = endpoint.path(), %why, "undecodable admission request");
            return (StatusCode::BAD_REQUEST, format!("not an AdmissionReview: {why}")).into_response();
        }
        Err(DecodeError::Unreviewable { uid, message }) => {
            tracing::warn!(path = endpoint.path(), %message, "unreviewable admission request");
            let denial = Denial {
                code: 400,
                reason: "BadRequest",
                message,
                causes: Vec::new(),
            };
            (Review::deny(&uid, denial), String::new())
        }
    };
    let result = response.result_label();
    if !response.allowed {
        tracing::info!(
            kind,
            operation = %operation,
            message = response.denial.as_ref().map(|d| d.message.as_str()).unwrap_or_default(),
            "denied"
        );
    }
    count(&state, kind, &operation, result);
    state
        .metrics
        .latency
        .get_or_create(&KindLabels {
            kind: kind.to_string(),
        })
        .observe(started.elapsed().as_secs_f64());
    (
        [(header::CONTENT_TYPE, "application/json")],
        response.to_review_json(),
    )
        .into_response()
}

fn count(state: &AppState, kind: &str, operation: &str, result: &str) {
    state
        .metrics
        .requests
        .get_or_create(&ReviewLabels {
            kind: kind.to_string(),
            operation: operation.to_string(),
            result: result.to_string(),
        })
        .inc();
}

/// Serves [`admission_router`] for `state` over TLS on `listener` until `shutdown` flips, then lets in-flight
/// requests finish (up to `grace`). `state.client_timeout` bounds the TLS handshake, then the time until the
/// first request's headers are in (whether HTTP/1.1 or HTTP/2: neither hyper's protocol detection nor the
/// HTTP/2 preface has a timeout of its own), then each later HTTP/1.1 request's headers, and each body (in
/// [`admit`]). So slow, silent or garbage clients only ever cost their own connection, for that long.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let client_timeout = state.client_timeout;
    let router = admission_router(state);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let acceptor = acceptor.clone();
        let first_request = Arc::new(Notify::new());
        let service = TowerToHyperService::new(router.clone().map_request({
            let first_request = first_request.clone();
            move |req: axum::http::Request<Incoming>| {
                first_request.notify_one();
                req
            }
        }));
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(client_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(client_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(30)));
            let conn = builder.serve_connection(TokioIo::new(tls), service).into_owned();
            let no_first_request = async {
                if tokio::time::timeout(client_timeout, first_request.notified())
                    .await
                    .is_ok()
                {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                ended = watcher.watch(conn) => if let Err(error) = ended {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                },
                () = no_first_request => tracing::debug!(%peer, "no request in time; connection closed"),
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("shutdown grace period over with requests in flight");
    }
}
