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

/// Labels of `gateway_configurations_skipped`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct SkippedLabels {
    /// `<namespace>/<name>` of the StaticGatewayConfiguration.
    pub configuration: String,
    /// Why it (or some of its PodEndpoints) cannot be served here: a short fixed label.
    pub reason: String,
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

/// Declares the agent's metrics once: each field's doc, type, Prometheus name and help (and its constructor,
/// where `Default` is not it). The struct and its registering `Default` are generated from the same list, so a
/// metric cannot be declared without being registered or registered under another type.
macro_rules! agent_metrics {
    ($($(#[doc = $doc:expr])* $field:ident: $ty:ty $(= $new:expr)? => ($name:literal, $help:literal),)*) => {
        /// The agent's metrics and their registry.
        #[derive(Debug)]
        pub struct Metrics {
            registry: Registry,
            $($(#[doc = $doc])* pub $field: $ty,)*
        }

        impl Default for Metrics {
            fn default() -> Self {
                let mut registry = Registry::default();
                $(
                    let $field: $ty = agent_metrics!(@new $ty $(, $new)?);
                    registry.register($name, $help, $field.clone());
                )*
                Metrics { registry, $($field,)* }
            }
        }
    };
    (@new $ty:ty) => { <$ty>::default() };
    (@new $ty:ty, $new:expr) => { $new };
}

agent_metrics! {
    /// `cnimanager_podendpoint_operation_failures_total`.
    podendpoint_failures: Family<PodEndpointLabels, Counter>
        => ("cnimanager_podendpoint_operation_failures", "PodEndpoint create/update/delete failures"),
    /// `cnimanager_cni_config_operation_failures_total`.
    cni_config_failures: Family<OperationLabels, Counter>
        => ("cnimanager_cni_config_operation_failures", "CNI configuration install/regenerate/uninstall failures"),
    /// `cnimanager_node_taint_operation_failures_total`.
    node_taint_failures: Family<NodeLabels, Counter>
        => ("cnimanager_node_taint_operation_failures", "Failures removing the cni-not-ready taint from the node"),
    /// `gateway_apply_total` (successful applies).
    gateway_applies: Counter
        => ("gateway_apply", "Successful gateway applies"),
    /// `gateway_apply_failures_total`: applies that failed in whole or in part (some configuration's link).
    gateway_apply_failures: Counter
        => ("gateway_apply_failures", "Failed gateway applies, in whole or in part (retried with backoff)"),
    /// `gateway_configuration_apply_failures_total{configuration}`: applies that left the configuration out
    /// because its WireGuard link could not be applied (the other configurations were applied).
    gateway_configuration_apply_failures: Family<ConfigurationLabels, Counter>
        => ("gateway_configuration_apply_failures", "Applies that left the configuration out because its WireGuard link failed (the others were applied)"),
    /// `gateway_apply_duration_seconds`.
    gateway_apply_duration: Histogram = Histogram::new(exponential_buckets(0.001, 2.0, 16)) // 1 ms .. ~32 s
        => ("gateway_apply_duration_seconds", "Time to apply the gateway's desired state"),
    /// `gateway_peers`: peers configured after the last apply.
    gateway_peers: Gauge
        => ("gateway_peers", "Pod peers configured"),
    /// `gateway_configurations`: active configurations after the last apply.
    gateway_configurations: Gauge
        => ("gateway_configurations", "Configurations active on this gateway"),
    /// `gateway_configurations_skipped{configuration,reason}`: configurations (or their PodEndpoints, counted
    /// one each) this gateway node cannot serve, by reason, after the last plan.
    gateway_configurations_skipped: Family<SkippedLabels, Gauge>
        => ("gateway_configurations_skipped", "Configurations, or PodEndpoints of them, this gateway cannot serve, by reason (see the agent's warnings)"),
    /// `gateway_status_update_failures_total{reason}`: failed writes of this gateway's GatewayStatus.
    gateway_status_update_failures: Family<ReasonLabels, Counter>
        => ("gateway_status_update_failures", "Failed writes of this gateway's GatewayStatus, by reason (retried with backoff)"),
    /// `gateway_tunnel_peers{configuration}`: peers configured on the configuration's link.
    tunnel_peers: Family<ConfigurationLabels, Gauge>
        => ("gateway_tunnel_peers", "Pod peers configured on the configuration's WireGuard link"),
    /// `gateway_tunnel_active_peers{configuration}`: peers with a live session (handshake within 180 s).
    tunnel_active_peers: Family<ConfigurationLabels, Gauge>
        => ("gateway_tunnel_active_peers", "Pod peers with a live session (last handshake within 180 s)"),
    /// `gateway_tunnel_newest_handshake_age_seconds{configuration}`.
    tunnel_newest_handshake_age: Family<ConfigurationLabels, FloatGauge>
        => ("gateway_tunnel_newest_handshake_age_seconds", "Age of the most recent handshake of any pod peer"),
    /// `gateway_tunnel_oldest_active_handshake_age_seconds{configuration}`.
    tunnel_oldest_active_handshake_age: Family<ConfigurationLabels, FloatGauge>
        => ("gateway_tunnel_oldest_active_handshake_age_seconds", "Age of the oldest handshake among the peers with a live session"),
    /// `gateway_tunnel_receive_bytes_total{configuration}`: from pods.
    tunnel_rx_bytes: Family<ConfigurationLabels, Counter>
        => ("gateway_tunnel_receive_bytes", "Bytes received from pods (WireGuard, handshakes included)"),
    /// `gateway_tunnel_transmit_bytes_total{configuration}`: to pods.
    tunnel_tx_bytes: Family<ConfigurationLabels, Counter>
        => ("gateway_tunnel_transmit_bytes", "Bytes sent to pods (WireGuard, handshakes included)"),
    /// `gateway_tunnel_receive_packets_total{configuration}`.
    tunnel_rx_packets: Family<ConfigurationLabels, Counter>
        => ("gateway_tunnel_receive_packets", "Packets received from pods on the configuration's link (decrypted)"),
    /// `gateway_tunnel_transmit_packets_total{configuration}`.
    tunnel_tx_packets: Family<ConfigurationLabels, Counter>
        => ("gateway_tunnel_transmit_packets", "Packets sent to pods on the configuration's link"),
    /// `gateway_tunnel_sessions_started_total{configuration}`: pods arriving (new or expired session), e.g.
    /// after their gateway failed.
    tunnel_sessions_started: Family<ConfigurationLabels, Counter>
        => ("gateway_tunnel_sessions_started", "Pod sessions started here (no or an expired session before): pods arriving, e.g. after a failover"),
    /// `gateway_snat_flows{configuration}`: the configuration's tracked flows (conntrack mark = its port).
    snat_flows: Family<ConfigurationLabels, Gauge>
        => ("gateway_snat_flows", "The configuration's flows tracked in the gateway namespace (SNATed to its egress IP)"),
    /// `gateway_conntrack_entries`: all conntrack entries in the gateway namespace.
    conntrack_entries: Gauge
        => ("gateway_conntrack_entries", "Connection-tracking entries in the gateway namespace, all configurations"),
    /// `gateway_draining`: 1 while the agent drains on shutdown.
    gateway_draining: Gauge
        => ("gateway_draining", "1 while the agent drains on shutdown (probe answers 503, data plane forwarding)"),
    /// `pod_tunnel_state{pod,link,state}`: 1 for the pod tunnel's current state.
    pod_tunnel_state: Family<PodTunnelStateLabels, Gauge>
        => ("pod_tunnel_state", "1 for the state of the pod's tunnel: idle, answered, unanswered or restarted"),
    /// `pod_tunnel_handshake_age_seconds{pod,link}`.
    pod_tunnel_handshake_age: Family<PodTunnelLabels, FloatGauge>
        => ("pod_tunnel_handshake_age_seconds", "Age of the pod tunnel's last handshake"),
    /// `pod_tunnel_receive_bytes_total{pod,link}`.
    pod_tunnel_rx_bytes: Family<PodTunnelLabels, Counter>
        => ("pod_tunnel_receive_bytes", "Bytes the pod's tunnel received from its gateway"),
    /// `pod_tunnel_transmit_bytes_total{pod,link}`.
    pod_tunnel_tx_bytes: Family<PodTunnelLabels, Counter>
        => ("pod_tunnel_transmit_bytes", "Bytes the pod's tunnel sent to its gateway"),
    /// `pod_tunnel_session_restarts_total{pod,link}`: sessions the node agent restarted (forced handshakes).
    pod_tunnel_session_restarts: Family<PodTunnelLabels, Counter>
        => ("pod_tunnel_session_restarts", "Sessions the node agent restarted because the pod sent without hearing back (forced handshakes)"),
    /// `pod_tunnel_session_restart_failures_total`.
    pod_tunnel_session_restart_failures: Counter
        => ("pod_tunnel_session_restart_failures", "Session restarts that failed"),
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

    /// Counts an apply that left `configuration` out (its link failed); a leftover link of no configuration
    /// (empty name) is counted only in `gateway_apply_failures_total`.
    pub fn gateway_configuration_apply_failed(&self, configuration: &str) {
        if configuration.is_empty() {
            return;
        }
        self.gateway_configuration_apply_failures
            .get_or_create(&ConfigurationLabels {
                configuration: configuration.into(),
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
