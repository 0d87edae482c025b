//! Prometheus metrics: upstream's controller metrics (same names and labels, so dashboards keep working) plus
//! ARM call counters by operation and status.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upstream's latency buckets in seconds.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.1, 0.2, 0.5, 1.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 100.0, 200.0, 300.0, 600.0, 1200.0,
];

/// Labels of `controller_reconcile_fail_count`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailLabels {
    /// The operator's namespace.
    pub namespace: String,
    /// `reconcile_static_gateway_configuration`, `reconcile_gateway_pool`, ...
    pub operation: String,
    /// Subscription or `n/a`.
    pub subscription_id: String,
    /// Resource group or `n/a`.
    pub resource_group: String,
    /// lower(`ns/name`).
    pub resource: String,
}

/// Labels of `controller_reconcile_latency`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    /// The operator's namespace.
    pub namespace: String,
    /// Operation.
    pub operation: String,
    /// Subscription or `n/a`.
    pub subscription_id: String,
    /// Resource group or `n/a`.
    pub resource_group: String,
}

/// Labels of `arm_calls_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ArmCallLabels {
    /// `GET loadBalancers`, `PUT virtualMachineScaleSets`, ...; `POLL <type written>` (`POLL loadBalancers`) for
    /// a poll of a write's long-running operation, whatever URL it reads.
    pub operation: String,
    /// HTTP status, or `error` when no response arrived.
    pub status: String,
}

/// A counter exposed under its exact name (no `_total` suffix): upstream's Go client exported
/// `controller_reconcile_fail_count`, and dashboards and alerts query that name.
#[derive(Debug, Clone, Default)]
pub struct PlainCounter(Counter);

impl PlainCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.inc();
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl prometheus_client::encoding::EncodeMetric for PlainCounter {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        let v = i64::try_from(self.0.get()).unwrap_or(i64::MAX);
        encoder.encode_gauge(&v)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Unknown
    }
}

impl prometheus_client::metrics::TypedMetric for PlainCounter {
    const TYPE: prometheus_client::metrics::MetricType = prometheus_client::metrics::MetricType::Unknown;
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// All metrics of the operator.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry served on /metrics.
    pub registry: Arc<Registry>,
    /// `controller_reconcile_fail_count`.
    pub reconcile_fail: Family<FailLabels, PlainCounter>,
    /// `controller_reconcile_latency`.
    pub reconcile_latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    /// `arm_calls_total`.
    pub arm_calls: Family<ArmCallLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconcile_fail = Family::<FailLabels, PlainCounter>::default();
        let reconcile_latency =
            Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let arm_calls = Family::<ArmCallLabels, Counter>::default();
        registry.register(
            "controller_reconcile_fail_count",
            "Number of failed reconciles",
            reconcile_fail.clone(),
        );
        registry.register(
            "controller_reconcile_latency",
            "Reconcile latency in seconds",
            reconcile_latency.clone(),
        );
        registry.register(
            "arm_calls",
            "Azure Resource Manager HTTP calls by operation and status",
            arm_calls.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            reconcile_fail,
            reconcile_latency,
            arm_calls,
        }
    }

    /// Text exposition of every metric.
    pub fn encode(&self) -> String {
        daemon::http::openmetrics_text(&self.registry)
    }

    /// Total ARM calls whose operation starts with one of `methods` (e.g. PUT, DELETE, PATCH, POST = writes).
    pub fn arm_call_total(&self, methods: &[&str]) -> u64 {
        // prometheus-client has no iteration over a family; the text form is the public interface.
        self.encode()
            .lines()
            .filter(|l| l.starts_with("arm_calls_total{"))
            .filter(|l| methods.iter().any(|m| l.contains(&format!("operation=\"{m} "))))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_metric_names_are_exposed() {
        let m = Metrics::new();
        m.reconcile_fail
            .get_or_create(&FailLabels {
                namespace: "kube-egress-gateway-system".into(),
                operation: "reconcile_gateway_pool".into(),
                subscription_id: "n/a".into(),
                resource_group: "n/a".into(),
                resource: "gwpool".into(),
            })
            .inc();
        m.reconcile_latency
            .get_or_create(&LatencyLabels {
                namespace: "ns".into(),
                operation: "reconcile_gateway_pool".into(),
                subscription_id: "s".into(),
                resource_group: "rg".into(),
            })
            .observe(0.3);
        for (op, n) in [
            ("PUT loadBalancers", 2),
            ("GET loadBalancers", 5),
            ("DELETE publicIPPrefixes", 1),
            ("POLL loadBalancers", 4),
        ] {
            m.arm_calls
                .get_or_create(&ArmCallLabels {
                    operation: op.into(),
                    status: "200".into(),
                })
                .inc_by(n);
        }
        let text = m.encode();
        assert!(text.contains("\ncontroller_reconcile_fail_count{"), "{text}");
        assert!(text.contains("controller_reconcile_latency_bucket{"), "{text}");
        assert_eq!(m.arm_call_total(&["PUT", "DELETE"]), 3);
        assert_eq!(m.arm_call_total(&["GET"]), 5, "polls are no reads");
        assert_eq!(m.arm_call_total(&["POLL"]), 4);
    }
}
