//! Prometheus metrics of the agent. Node-mode names are upstream's (dashboards and alerts keep working);
//! gateway-mode metrics are new and prefixed `gateway_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `cnimanager_podendpoint_operation_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodEndpointLabels {
    /// Pod namespace.
    pub namespace: String,
    /// `create_or_update` or `delete`.
    pub operation: String,
    /// Pod name.
    pub pod: String,
}

/// Labels of `cnimanager_cni_config_operation_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// `install`, `regenerate` or `uninstall`.
    pub operation: String,
}

/// Labels of `cnimanager_node_taint_operation_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// Node name.
    pub node: String,
}

/// Labels of a failure counted by its kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The error's `reason()`: a short fixed label such as `not_found` or `unreachable`.
    pub reason: String,
}

/// Labels of the gateway's per-configuration tunnel metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ConfigurationLabels {
    /// `<namespace>/<name>` of the StaticGatewayConfiguration.
    pub configuration: String,
}

/// Labels of the node agent's per-pod tunnel metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PodTunnelLabels {
    /// `<namespace>/<name>` of the pod (empty when the agent has not seen the pod's CNI ADD, e.g. after a
    /// restart).
    pub pod: String,
    /// The pod's WireGuard control name (`wgp…`, the node-side socket and the link's alias).
    pub link: String,
}

/// Labels of `pod_tunnel_state`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PodTunnelStateLabels {
    /// As [`PodTunnelLabels::pod`].
    pub pod: String,
    /// As [`PodTunnelLabels::link`].
    pub link: String,
    /// `idle`, `answered`, `unanswered` or `restarted`.
    pub state: String,
}

/// A gauge holding a float (seconds).
pub type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The agent's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `cnimanager_podendpoint_operation_failures_total`.
    pub podendpoint_failures: Family<PodEndpointLabels, Counter>,
    /// `cnimanager_cni_config_operation_failures_total`.
    pub cni_config_failures: Family<OperationLabels, Counter>,
    /// `cnimanager_node_taint_operation_failures_total`.
    pub node_taint_failures: Family<NodeLabels, Counter>,
    /// `gateway_apply_total` (successful applies).
    pub gateway_applies: Counter,
    /// `gateway_apply_failures_total`.
    pub gateway_apply_failures: Counter,
    /// `gateway_apply_duration_seconds`.
    pub gateway_apply_duration: Histogram,
    /// `gateway_peers`: peers configured after the last apply.
    pub gateway_peers: Gauge,
    /// `gateway_configurations`: active configurations after the last apply.
    pub gateway_configurations: Gauge,
    /// `gateway_status_update_failures_total{reason}`: failed writes of this gateway's GatewayStatus.
    pub gateway_status_update_failures: Family<ReasonLabels, Counter>,
    /// `gateway_tunnel_peers{configuration}`: peers configured on the configuration's link.
    pub tunnel_peers: Family<ConfigurationLabels, Gauge>,
    /// `gateway_tunnel_active_peers{configuration}`: peers with a live session (handshake within 180 s).
    pub tunnel_active_peers: Family<ConfigurationLabels, Gauge>,
    /// `gateway_tunnel_newest_handshake_age_seconds{configuration}`.
    pub tunnel_newest_handshake_age: Family<ConfigurationLabels, FloatGauge>,
    /// `gateway_tunnel_oldest_active_handshake_age_seconds{configuration}`.
    pub tunnel_oldest_active_handshake_age: Family<ConfigurationLabels, FloatGauge>,
    /// `gateway_tunnel_receive_bytes_total{configuration}`: from pods.
    pub tunnel_rx_bytes: Family<ConfigurationLabels, Counter>,
    /// `gateway_tunnel_transmit_bytes_total{configuration}`: to pods.
    pub tunnel_tx_bytes: Family<ConfigurationLabels, Counter>,
    /// `gateway_tunnel_receive_packets_total{configuration}`.
    pub tunnel_rx_packets: Family<ConfigurationLabels, Counter>,
    /// `gateway_tunnel_transmit_packets_total{configuration}`.
    pub tunnel_tx_packets: Family<ConfigurationLabels, Counter>,
    /// `gateway_tunnel_sessions_started_total{configuration}`: pods arriving (new or expired session), e.g.
    /// after their gateway failed.
    pub tunnel_sessions_started: Family<ConfigurationLabels, Counter>,
    /// `gateway_snat_flows{configuration}`: the configuration's tracked flows (conntrack mark = its port).
    pub snat_flows: Family<ConfigurationLabels, Gauge>,
    /// `gateway_conntrack_entries`: all conntrack entries in the gateway namespace.
    pub conntrack_entries: Gauge,
    /// `gateway_draining`: 1 while the agent drains on shutdown.
    pub gateway_draining: Gauge,
    /// `pod_tunnel_state{pod,link,state}`: 1 for the pod tunnel's current state.
    pub pod_tunnel_state: Family<PodTunnelStateLabels, Gauge>,
    /// `pod_tunnel_handshake_age_seconds{pod,link}`.
    pub pod_tunnel_handshake_age: Family<PodTunnelLabels, FloatGauge>,
    /// `pod_tunnel_receive_bytes_total{pod,link}`.
    pub pod_tunnel_rx_bytes: Family<PodTunnelLabels, Counter>,
    /// `pod_tunnel_transmit_bytes_total{pod,link}`.
    pub pod_tunnel_tx_bytes: Family<PodTunnelLabels, Counter>,
    /// `pod_tunnel_session_restarts_total{pod,link}`: sessions the node agent restarted (forced handshakes).
    pub pod_tunnel_session_restarts: Family<PodTunnelLabels, Counter>,
    /// `pod_tunnel_session_restart_failures_total`.
    pub pod_tunnel_session_restart_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        /// Registers a metric of type `$ty` (built by `$new`, default `Default`) and returns a handle to it.
        macro_rules! reg {
            ($name:literal, $help:literal, $ty:ty) => {
                reg!($name, $help, $ty, <$ty>::default())
            };
            ($name:literal, $help:literal, $ty:ty, $new:expr) => {{
                let m: $ty = $new;
                registry.register($name, $help, m.clone());
                m
            }};
        }
        let podendpoint_failures = reg!(
            "cnimanager_podendpoint_operation_failures",
            "PodEndpoint create/update/delete failures",
            Family<PodEndpointLabels, Counter>
        );
        let cni_config_failures = reg!(
            "cnimanager_cni_config_operation_failures",
            "CNI configuration install/regenerate/uninstall failures",
            Family<OperationLabels, Counter>
        );
        let node_taint_failures = reg!(
            "cnimanager_node_taint_operation_failures",
            "Failures removing the cni-not-ready taint from the node",
            Family<NodeLabels, Counter>
        );
        let gateway_applies = reg!("gateway_apply", "Successful gateway applies", Counter);
        let gateway_apply_failures = reg!("gateway_apply_failures", "Failed gateway applies", Counter);
        let gateway_apply_duration = reg!(
            "gateway_apply_duration_seconds",
            "Time to apply the gateway's desired state",
            Histogram,
            // 1 ms .. ~32 s
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        );
        let gateway_peers = reg!("gateway_peers", "Pod peers configured", Gauge);
        let gateway_configurations = reg!(
            "gateway_configurations",
            "Configurations active on this gateway",
            Gauge
        );
        let gateway_status_update_failures = reg!(
            "gateway_status_update_failures",
            "Failed writes of this gateway's GatewayStatus, by reason (retried with backoff)",
            Family<ReasonLabels, Counter>
        );
        let tunnel_peers = reg!(
            "gateway_tunnel_peers",
            "Pod peers configured on the configuration's WireGuard link",
            Family<ConfigurationLabels, Gauge>
        );
        let tunnel_active_peers = reg!(
            "gateway_tunnel_active_peers",
            "Pod peers with a live session (last handshake within 180 s)",
            Family<ConfigurationLabels, Gauge>
        );
        let tunnel_newest_handshake_age = reg!(
            "gateway_tunnel_newest_handshake_age_seconds",
            "Age of the most recent handshake of any pod peer",
            Family<ConfigurationLabels, FloatGauge>
        );
        let tunnel_oldest_active_handshake_age = reg!(
            "gateway_tunnel_oldest_active_handshake_age_seconds",
            "Age of the oldest handshake among the peers with a live session",
            Family<ConfigurationLabels, FloatGauge>
        );
        let tunnel_rx_bytes = reg!(
            "gateway_tunnel_receive_bytes",
            "Bytes received from pods (WireGuard, handshakes included)",
            Family<ConfigurationLabels, Counter>
        );
        let tunnel_tx_bytes = reg!(
            "gateway_tunnel_transmit_bytes",
            "Bytes sent to pods (WireGuard, handshakes included)",
            Family<ConfigurationLabels, Counter>
        );
        let tunnel_rx_packets = reg!(
            "gateway_tunnel_receive_packets",
            "Packets received from pods on the configuration's link (decrypted)",
            Family<ConfigurationLabels, Counter>
        );
        let tunnel_tx_packets = reg!(
            "gateway_tunnel_transmit_packets",
            "Packets sent to pods on the configuration's link",
            Family<ConfigurationLabels, Counter>
        );
        let tunnel_sessions_started = reg!(
            "gateway_tunnel_sessions_started",
            "Pod sessions started here (no or an expired session before): pods arriving, e.g. after a failover",
            Family<ConfigurationLabels, Counter>
        );
        let snat_flows = reg!(
            "gateway_snat_flows",
            "The configuration's flows tracked in the gateway namespace (SNATed to its egress IP)",
            Family<ConfigurationLabels, Gauge>
        );
        let conntrack_entries = reg!(
            "gateway_conntrack_entries",
            "Connection-tracking entries in the gateway namespace, all configurations",
            Gauge
        );
        let gateway_draining = reg!(
            "gateway_draining",
            "1 while the agent drains on shutdown (probe answers 503, data plane forwarding)",
            Gauge
        );
        let pod_tunnel_state = reg!(
            "pod_tunnel_state",
            "1 for the state of the pod's tunnel: idle, answered, unanswered or restarted",
            Family<PodTunnelStateLabels, Gauge>
        );
        let pod_tunnel_handshake_age = reg!(
            "pod_tunnel_handshake_age_seconds",
            "Age of the pod tunnel's last handshake",
            Family<PodTunnelLabels, FloatGauge>
        );
        let pod_tunnel_rx_bytes = reg!(
            "pod_tunnel_receive_bytes",
            "Bytes the pod's tunnel received from its gateway",
            Family<PodTunnelLabels, Counter>
        );
        let pod_tunnel_tx_bytes = reg!(
            "pod_tunnel_transmit_bytes",
            "Bytes the pod's tunnel sent to its gateway",
            Family<PodTunnelLabels, Counter>
        );
        let pod_tunnel_session_restarts = reg!(
            "pod_tunnel_session_restarts",
            "Sessions the node agent restarted because the pod sent without hearing back (forced handshakes)",
            Family<PodTunnelLabels, Counter>
        );
        let pod_tunnel_session_restart_failures = reg!(
            "pod_tunnel_session_restart_failures",
            "Session restarts that failed",
            Counter
        );
        Metrics {
            tunnel_peers,
            tunnel_active_peers,
            tunnel_newest_handshake_age,
            tunnel_oldest_active_handshake_age,
            tunnel_rx_bytes,
            tunnel_tx_bytes,
            tunnel_rx_packets,
            tunnel_tx_packets,
            tunnel_sessions_started,
            snat_flows,
            conntrack_entries,
            gateway_draining,
            pod_tunnel_state,
            pod_tunnel_handshake_age,
            pod_tunnel_rx_bytes,
            pod_tunnel_tx_bytes,
            pod_tunnel_session_restarts,
            pod_tunnel_session_restart_failures,
            registry,
            podendpoint_failures,
            cni_config_failures,
            node_taint_failures,
            gateway_applies,
            gateway_apply_failures,
            gateway_apply_duration,
            gateway_peers,
            gateway_configurations,
            gateway_status_update_failures,
        }
    }
}

impl Metrics {
    /// Text exposition format.
    pub fn encode(&self) -> String {
        daemon::http::openmetrics_text(&self.registry)
    }

    /// Counts a failed GatewayStatus write; `reason` is the error's `reason()`.
    pub fn gateway_status_update_failed(&self, reason: &str) {
        self.gateway_status_update_failures
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a CNI configuration failure (`install`, `regenerate`, `uninstall`).
    pub fn cni_config_failed(&self, operation: &str) {
        self.cni_config_failures
            .get_or_create(&OperationLabels {
                operation: operation.into(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_metric_names_are_exposed() {
        let m = Metrics::default();
        m.podendpoint_failures
            .get_or_create(&PodEndpointLabels {
                namespace: "ns".into(),
                operation: "delete".into(),
                pod: "p".into(),
            })
            .inc();
        m.cni_config_failed("install");
        m.node_taint_failures
            .get_or_create(&NodeLabels { node: "n1".into() })
            .inc();
        let text = m.encode();
        assert!(text.contains(
            "cnimanager_podendpoint_operation_failures_total{namespace=\"ns\",operation=\"delete\",pod=\"p\"} 1"
        ));
        assert!(text.contains("cnimanager_cni_config_operation_failures_total{operation=\"install\"} 1"));
        assert!(text.contains("cnimanager_node_taint_operation_failures_total{node=\"n1\"} 1"));
        assert!(text.contains("gateway_apply_duration_seconds_bucket"));
        m.gateway_status_update_failed("not_found");
        assert!(
            m.encode()
                .contains("gateway_status_update_failures_total{reason=\"not_found\"} 1")
        );
    }

    #[test]
    fn data_plane_metrics_follow_prometheus_naming() {
        let m = Metrics::default();
        let c = ConfigurationLabels {
            configuration: "demo/egress".into(),
        };
        m.tunnel_rx_bytes.get_or_create(&c).inc_by(10);
        m.tunnel_newest_handshake_age.get_or_create(&c).set(1.5);
        m.snat_flows.get_or_create(&c).set(3);
        m.conntrack_entries.set(4);
        let p = PodTunnelLabels {
            pod: "demo/client".into(),
            link: "wgp0123".into(),
        };
        m.pod_tunnel_session_restarts.get_or_create(&p).inc();
        m.pod_tunnel_state
            .get_or_create(&PodTunnelStateLabels {
                pod: p.pod.clone(),
                link: p.link.clone(),
                state: "answered".into(),
            })
            .set(1);
        let text = m.encode();
        for line in [
            "gateway_tunnel_receive_bytes_total{configuration=\"demo/egress\"} 10",
            "gateway_tunnel_newest_handshake_age_seconds{configuration=\"demo/egress\"} 1.5",
            "gateway_snat_flows{configuration=\"demo/egress\"} 3",
            "gateway_conntrack_entries 4",
            "pod_tunnel_session_restarts_total{pod=\"demo/client\",link=\"wgp0123\"} 1",
            "pod_tunnel_state{pod=\"demo/client\",link=\"wgp0123\",state=\"answered\"} 1",
            "# TYPE pod_tunnel_receive_bytes counter",
            "# TYPE gateway_tunnel_sessions_started counter",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
