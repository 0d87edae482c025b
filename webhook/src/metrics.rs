//! Prometheus metrics: admission counts by kind/operation/result and a latency histogram.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of an admission decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// Kind reviewed (StaticGatewayConfiguration, GatewayPool, Pod, PodEndpoint).
    pub kind: String,
    /// CREATE, UPDATE, ...
    pub operation: String,
    /// allowed, patched, denied, error.
    pub result: String,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Kind reviewed.
    pub kind: String,
}

/// The webhook's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `admission_requests_total`.
    pub requests: Family<ReviewLabels, Counter>,
    /// `admission_request_duration_seconds`.
    pub latency: Family<KindLabels, Histogram>,
    /// `admission_certificate_reloads_total`.
    pub cert_reloads: Counter,
    /// `admission_certificate_expiry_timestamp_seconds` (self-generated certificates; 0 otherwise).
    pub cert_not_after: Gauge,
    /// `admission_certificate_renewal_failures_total` (self-generated certificates).
    pub cert_renewal_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission reviews by kind, operation and result",
            requests.clone(),
        );
        let latency = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            // 25 µs .. ~0.8 s
            Histogram::new(exponential_buckets(0.000_025, 2.0, 16))
        });
        registry.register(
            "admission_request_duration_seconds",
            "Time to decide an admission review",
            latency.clone(),
        );
        let cert_reloads = Counter::default();
        registry.register(
            "admission_certificate_reloads",
            "Serving certificate reloads",
            cert_reloads.clone(),
        );
        let cert_not_after = Gauge::default();
        registry.register(
            "admission_certificate_expiry_timestamp_seconds",
            "When the self-generated serving certificate expires (Unix time; 0: certificate files are served)",
            cert_not_after.clone(),
        );
        let cert_renewal_failures = Counter::default();
        registry.register(
            "admission_certificate_renewal_failures",
            "Failed attempts to renew the self-generated serving certificate",
            cert_renewal_failures.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            cert_reloads,
            cert_not_after,
            cert_renewal_failures,
        }
    }
}

impl Metrics {
    /// Text exposition format.
    pub fn encode(&self) -> String {
        daemon::http::openmetrics_text(&self.registry)
    }
}
