//! What the operator reports, computed without I/O: conditions, a configuration's status and the Events its
//! change deserves, a GatewayPool's status. `kube/` writes what this computes.

use api::names::{
    REASON_ACCEPTED, REASON_AS_EXPECTED, REASON_BLOCKED, REASON_INSTANCES_NOT_READY, REASON_INSTANCES_READY,
    REASON_INSTANCES_WITHOUT_EGRESS_IP, REASON_INVALID_SPEC, REASON_POOL_EXCEEDS_PREFIX,
    REASON_POOL_NOT_FOUND, REASON_PREFIX_SIZE_MISMATCH, REASON_PROVISIONED, REASON_PROVISIONING,
    REASON_SOME_INSTANCES_NOT_READY,
};
use api::{GatewayServerProfile, StaticGatewayConfigurationStatus};
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::json;

use crate::desired::ConfigFacts;

/// Condition types (defined in `api`, where the provider and kubectl columns read them too).
pub use api::names::{
    CONDITION_ACCEPTED as ACCEPTED, CONDITION_DEGRADED as DEGRADED, CONDITION_READY as READY,
};

/// How an Event reads: normal progress, or something to look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Progress.
    Normal,
    /// A problem.
    Warning,
}

/// One condition as the operator sets it (`lastTransitionTime` and `observedGeneration` are the setter's).
#[derive(Clone, Copy, Debug)]
pub struct Cond<'a> {
    /// `type`, e.g. `Ready`.
    pub type_: &'a str,
    /// True or False.
    pub status: bool,
    /// CamelCase reason.
    pub reason: &'a str,
    /// For people.
    pub message: &'a str,
}

impl Cond<'_> {
    /// The Event of this condition's transition: `(kind, reason, "<type>=<status>: <message>")`.
    fn event(&self, kind: EventKind) -> (EventKind, String, String) {
        (
            kind,
            self.reason.to_string(),
            format!("{}={}: {}", self.type_, self.status, self.message),
        )
    }
}

/// Sets a condition; keeps `lastTransitionTime` when the status does not change. Returns whether it made a
/// transition (its status or reason changed; a new message alone is no news).
pub fn set_condition(conditions: &mut Vec<Condition>, c: Cond<'_>, generation: Option<i64>) -> bool {
    let status = if c.status { "True" } else { "False" };
    match conditions.iter_mut().find(|old| old.type_ == c.type_) {
        Some(old)
            if old.status == status
                && old.reason == c.reason
                && old.message == c.message
                && old.observed_generation == generation =>
        {
            false
        }
        Some(old) => {
            let transition = old.status != status || old.reason != c.reason;
            if old.status != status {
                old.last_transition_time = Time(k8s_openapi::jiff::Timestamp::now());
            }
            old.status = status.into();
            old.reason = c.reason.into();
            old.message = c.message.into();
            old.observed_generation = generation;
            transition
        }
        None => {
            conditions.push(Condition {
                type_: c.type_.into(),
                status: status.into(),
                reason: c.reason.into(),
                message: c.message.into(),
                observed_generation: generation,
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
            });
            true
        }
    }
}

/// Sets a condition like [`set_condition`] and returns the Event of its transition, if it made one.
pub fn transition(
    conditions: &mut Vec<Condition>,
    c: Cond<'_>,
    generation: Option<i64>,
    kind: EventKind,
) -> Option<(EventKind, String, String)> {
    set_condition(conditions, c, generation).then(|| c.event(kind))
}

/// What happened to one configuration in a pool reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The spec breaks a rule.
    Invalid(String),
    /// No scale set or VM pool matches.
    PoolNotFound(String),
    /// A prefix of the wrong length (BYO or existing managed).
    PrefixSizeMismatch(String),
    /// Azure failed (message carries the ARM code).
    AzureFailed {
        /// `AzureThrottled` or `AzureError`.
        reason: &'static str,
        /// Message.
        message: String,
    },
    /// Another problem that blocks this configuration only.
    Blocked(String),
    /// Azure is provisioned as far as known.
    Provisioned(ConfigFacts),
}

/// Computes the new status from the old one; returns (status, events to emit as (type, reason, note)).
pub fn next_status(
    old: &StaticGatewayConfigurationStatus,
    generation: Option<i64>,
    outcome: &Outcome,
    key: Option<(&str, ObjectReference)>,
) -> (StaticGatewayConfigurationStatus, Vec<(EventKind, String, String)>) {
    let mut st = old.clone();
    st.observed_generation = generation;
    let mut events = Vec::new();
    let mut cond = |st: &mut StaticGatewayConfigurationStatus, t: &str, ok: bool, reason: &str, msg: &str| {
        // Accepted and Ready: True is progress, and so is Provisioning; any other False is a problem.
        let kind = if ok || reason == REASON_PROVISIONING {
            EventKind::Normal
        } else {
            EventKind::Warning
        };
        let c = Cond {
            type_: t,
            status: ok,
            reason,
            message: msg,
        };
        events.extend(transition(&mut st.conditions, c, generation, kind));
    };
    if let Some((public, secret_ref)) = &key {
        let p = st
            .gateway_server_profile
            .get_or_insert_with(GatewayServerProfile::default);
        p.public_key = public.to_string();
        p.private_key_secret_ref = Some(secret_ref.clone());
    }
    // Not accepted: Accepted=False says why, Ready=False mirrors its reason.
    let rejected = match outcome {
        Outcome::Invalid(m) => Some((REASON_INVALID_SPEC, m, "the spec breaks a rule; see Accepted")),
        Outcome::PoolNotFound(m) => Some((
            REASON_POOL_NOT_FOUND,
            m,
            "the gateway pool does not exist in Azure",
        )),
        Outcome::PrefixSizeMismatch(m) => Some((
            REASON_PREFIX_SIZE_MISMATCH,
            m,
            "the public IP prefix does not fit the pool",
        )),
        _ => None,
    };
    if let Some((reason, accepted_msg, ready_msg)) = rejected {
        cond(&mut st, ACCEPTED, false, reason, accepted_msg);
        cond(&mut st, READY, false, reason, ready_msg);
    }
    const VALID: &str = "the spec is valid and the pool exists";
    let mut degraded_events = Vec::new();
    match outcome {
        Outcome::Invalid(_) | Outcome::PoolNotFound(_) | Outcome::PrefixSizeMismatch(_) => {}
        Outcome::AzureFailed { reason, message } => {
            cond(&mut st, READY, false, reason, message);
        }
        Outcome::Blocked(m) => {
            cond(&mut st, ACCEPTED, true, REASON_ACCEPTED, VALID);
            cond(&mut st, READY, false, REASON_BLOCKED, m);
        }
        Outcome::Provisioned(f) => {
            cond(&mut st, ACCEPTED, true, REASON_ACCEPTED, VALID);
            let p = st
                .gateway_server_profile
                .get_or_insert_with(GatewayServerProfile::default);
            p.ip = f.frontend_ip.clone().unwrap_or_default();
            p.port = f.port.map(i32::from).unwrap_or_default();
            st.egress_ip_prefix = f.egress_ip_prefix.clone();
            st.gateway_vm_profiles = f.vm_profiles.clone();
            degraded(&mut st, f, generation, &mut degraded_events);
            if f.is_complete() && st.is_ready_for_pods() {
                let prefix = f.egress_ip_prefix.clone().unwrap_or_default();
                cond(
                    &mut st,
                    READY,
                    true,
                    REASON_PROVISIONED,
                    &format!("egress prefix {prefix}"),
                );
            } else {
                cond(
                    &mut st,
                    READY,
                    false,
                    REASON_PROVISIONING,
                    "waiting for Azure to allocate addresses",
                );
            }
        }
    }
    events.extend(degraded_events);
    (st, events)
}

/// Degraded on a provisioned configuration: True (with a Warning Event when it turns so, or its reason changes)
/// while the pool outgrew its prefix or some instances are still without their address (in either mode: such
/// a node's gateway cannot serve the configuration; in private-IP mode its address is also not listed);
/// False once that is over. A configuration that was never degraded gets no Degraded condition.
fn degraded(
    st: &mut StaticGatewayConfigurationStatus,
    f: &ConfigFacts,
    generation: Option<i64>,
    events: &mut Vec<(EventKind, String, String)>,
) {
    // Instances without an address matter once the configuration is usable; before, Ready=False says more.
    let missing = (f.egress_ip_prefix.is_some() && !f.without_address.is_empty()).then(|| {
        let mut m = format!(
            "instances without this configuration's address: {}",
            f.without_address.join(", ")
        );
        if !f.refused_updates.is_empty() {
            m.push_str(&format!(" (Azure refused: {})", f.refused_updates.join("; ")));
        }
        m
    });
    let problem = match (&f.pool_exceeds_prefix, missing) {
        (Some(m), None) => Some((REASON_POOL_EXCEEDS_PREFIX, m.clone())),
        (Some(m), Some(missing)) => Some((REASON_POOL_EXCEEDS_PREFIX, format!("{m}; {missing}"))),
        (None, Some(missing)) => Some((
            REASON_INSTANCES_WITHOUT_EGRESS_IP,
            format!("{missing}; the gateways with theirs serve it"),
        )),
        (None, None) => None,
    };
    let was_degraded = st
        .conditions
        .iter()
        .find(|c| c.type_ == DEGRADED)
        .map(|c| c.status == "True");
    let event = match (problem, was_degraded) {
        (Some((reason, message)), _) => {
            let c = Cond {
                type_: DEGRADED,
                status: true,
                reason,
                message: &message,
            };
            transition(&mut st.conditions, c, generation, EventKind::Warning)
        }
        // Once degraded, the condition stays and says it is over; never degraded, none at all.
        (None, Some(_)) => {
            let c = Cond {
                type_: DEGRADED,
                status: false,
                reason: REASON_AS_EXPECTED,
                message: "the pool fits its prefix and every instance has its egress address",
            };
            transition(&mut st.conditions, c, generation, EventKind::Normal)
        }
        (None, None) => None,
    };
    events.extend(event);
}

/// What Degraded says when `pool` has more gateway nodes than its public prefixes (of length `prefix_len`) have
/// addresses: rule 4 fails because of the cluster's state, not a spec, so the configurations on the pool keep
/// what they have (an AKS surge upgrade adds a node for a while). None while the nodes fit.
pub fn pool_exceeds_prefix(pool: &api::PoolRef, nodes: u32, prefix_len: i32) -> Option<String> {
    use api::rules::{Rule, prefix_capacity};
    let capacity = prefix_capacity(prefix_len);
    (u64::from(nodes) > capacity).then(|| {
        let rule = Rule::InstancesFitPrefix;
        format!(
            "gateway {pool} has {nodes} gateway nodes but its /{prefix_len} public IP prefix holds {capacity} \
             addresses (rule {} ({}) fails): the configuration stays provisioned as it was and the surplus \
             nodes get no egress IP; bring the pool back to {capacity} nodes (a surge upgrade does when it ends)",
            rule.number().unwrap_or_default(),
            rule.title()
        )
    })
}

/// A Node as pool status needs it: its name and `spec.providerID`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    /// `metadata.name`.
    pub name: String,
    /// `spec.providerID`, e.g. `azure:///subscriptions/…/virtualMachines/<vm>`.
    pub provider_id: Option<String>,
}

impl NodeIdentity {
    /// Of a Node object.
    pub fn of(n: &Node) -> Self {
        NodeIdentity {
            name: n.metadata.name.clone().unwrap_or_default(),
            provider_id: n.spec.as_ref().and_then(|s| s.provider_id.clone()),
        }
    }
}

/// A GatewayPool's status from the pool's Azure state: its instances, the shared frontend, Ready.
pub fn pool_status(
    old: &api::GatewayPoolStatus,
    generation: Option<i64>,
    pool: &crate::desired::Pool,
    state: &crate::desired::AzureState,
    wanted_ip_configs: &[String],
    nodes: &[NodeIdentity],
) -> api::GatewayPoolStatus {
    use api::pool::{LoadBalancerFrontend, PoolInstance, PoolType};
    let ready = |prov: &str, a: &crate::desired::NicAddresses| {
        prov.eq_ignore_ascii_case("Succeeded")
            && a.primary_ip.is_some()
            && wanted_ip_configs
                .iter()
                .all(|n| a.by_ip_config.contains_key(&n.to_ascii_lowercase()))
    };
    let node = |name: &str| {
        nodes
            .iter()
            .find(|n| n.name.eq_ignore_ascii_case(name))
            .map(|n| n.name.clone())
    };
    // A VM-based pool's NIC names no node: its VM does. The Node whose providerID is that VM is the one
    // (what the cloud provider sets: `azure://<VM resource ID>`); AKS names that Node after the VM.
    let vm_node = |vm_id: Option<&str>| {
        let vm_id = vm_id?;
        nodes
            .iter()
            .find(|n| {
                n.provider_id.as_deref().is_some_and(|p| {
                    p.strip_prefix("azure://")
                        .is_some_and(|id| id.eq_ignore_ascii_case(vm_id))
                })
            })
            .map(|n| n.name.clone())
            .or_else(|| node(crate::desired::last_segment(vm_id)))
    };
    let instances: Vec<PoolInstance> = match pool.kind {
        crate::desired::PoolKind::Vmss => state
            .instances
            .iter()
            .map(|i| PoolInstance {
                name: i.computer_name.clone(),
                node_name: node(&i.computer_name),
                primary_ip: i.addresses.primary_ip.clone().unwrap_or_default(),
                provisioning_state: i.provisioning_state.clone(),
                ready: ready(&i.provisioning_state, &i.addresses),
            })
            .collect(),
        crate::desired::PoolKind::Vm => state
            .vm_nics
            .iter()
            .map(|n| PoolInstance {
                name: n.name.clone(),
                node_name: vm_node(n.vm_id.as_deref()),
                primary_ip: n.addresses.primary_ip.clone().unwrap_or_default(),
                provisioning_state: n.provisioning_state.clone(),
                ready: ready(&n.provisioning_state, &n.addresses),
            })
            .collect(),
    };
    let ready_instances = i32::try_from(instances.iter().filter(|i| i.ready).count()).unwrap_or(i32::MAX);
    let frontend = state
        .lb
        .as_ref()
        .and_then(|lb| {
            lb.frontends
                .iter()
                .find(|f| f.name.eq_ignore_ascii_case(&pool.uid))
        })
        .map(|f| LoadBalancerFrontend {
            name: f.name.clone(),
            ip: f.private_ip.clone().unwrap_or_default(),
        });
    let mut st = old.clone();
    st.pool_type = Some(match pool.kind {
        crate::desired::PoolKind::Vmss => PoolType::VirtualMachineScaleSet,
        crate::desired::PoolKind::Vm => PoolType::VirtualMachines,
    });
    st.pool_uid = Some(pool.uid.clone());
    st.ready_instances = ready_instances;
    let total = instances.len();
    st.instances = instances;
    st.load_balancer_frontend = frontend;
    st.observed_generation = generation;
    let all_ready = total > 0 && usize::try_from(ready_instances).unwrap_or(0) == total;
    let msg = format!("{ready_instances} of {total} instances ready");
    let some_not_ready = !all_ready && ready_instances > 0;
    let ready = Cond {
        type_: READY,
        status: all_ready,
        reason: if all_ready {
            REASON_INSTANCES_READY
        } else {
            REASON_INSTANCES_NOT_READY
        },
        message: &msg,
    };
    let degraded = Cond {
        type_: DEGRADED,
        status: some_not_ready,
        reason: if some_not_ready {
            REASON_SOME_INSTANCES_NOT_READY
        } else {
            REASON_AS_EXPECTED
        },
        message: &msg,
    };
    set_condition(&mut st.conditions, ready, generation);
    set_condition(&mut st.conditions, degraded, generation);
    st
}

/// A GatewayPool's status when its node pool is not in Azure: Ready=False with the reason, no instances or
/// frontend.
pub fn pool_not_found_status(
    old: &api::GatewayPoolStatus,
    generation: Option<i64>,
    message: &str,
) -> api::GatewayPoolStatus {
    let mut st = old.clone();
    st.observed_generation = generation;
    st.instances.clear();
    st.ready_instances = 0;
    st.load_balancer_frontend = None;
    let not_found = Cond {
        type_: READY,
        status: false,
        reason: REASON_POOL_NOT_FOUND,
        message,
    };
    set_condition(&mut st.conditions, not_found, generation);
    st
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`: `new`, plus `null` for every field `old` has and
/// `new` lacks, recursively. Status types omit empty fields when serialised, so a plain merge patch of `new`
/// would leave a cleared field's old value on the object (and the status would differ, and be written, on every
/// pass).
pub fn merge_patch(old: &serde_json::Value, new: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = serde_json::Map::new();
            for (k, v) in n {
                patch.insert(k.clone(), merge_patch(o.get(k).unwrap_or(&Value::Null), v));
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

/// `{"status": …}` merge patch from the status read to the status wanted.
pub fn status_patch<T: serde::Serialize>(old: &T, new: &T) -> serde_json::Value {
    let (old, new) = (
        serde_json::to_value(old).unwrap_or_default(),
        serde_json::to_value(new).unwrap_or_default(),
    );
    json!({ "status": merge_patch(&old, &new) })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn secret_ref() -> ObjectReference {
        ObjectReference {
            name: Some("sgw-u".into()),
            ..ObjectReference::default()
        }
    }

    #[test]
    fn status_goes_provisioning_then_ready_with_events_only_on_transitions() {
        let old = StaticGatewayConfigurationStatus::default();
        let partial = ConfigFacts {
            frontend_ip: Some("10.1.0.4".into()),
            port: Some(6000),
            egress_ip_prefix: None,
            vm_profiles: vec![],
            ..ConfigFacts::default()
        };
        let (st, ev) = next_status(
            &old,
            Some(1),
            &Outcome::Provisioned(partial),
            Some(("pub", secret_ref())),
        );
        let ready = st.conditions.iter().find(|c| c.type_ == READY).expect("ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Provisioning")
        );
        assert_eq!(ev.len(), 2, "Accepted and Ready appeared");
        let full = ConfigFacts {
            frontend_ip: Some("10.1.0.4".into()),
            port: Some(6000),
            egress_ip_prefix: Some("20.0.0.0/31".into()),
            vm_profiles: vec![],
            ..ConfigFacts::default()
        };
        let (st2, ev2) = next_status(
            &st,
            Some(1),
            &Outcome::Provisioned(full.clone()),
            Some(("pub", secret_ref())),
        );
        assert!(st2.is_ready_for_pods());
        assert_eq!(st2.egress_ip_prefix.as_deref(), Some("20.0.0.0/31"));
        assert_eq!(st2.gateway_server_profile.as_ref().map(|p| p.port), Some(6000));
        assert_eq!(
            ev2.iter().map(|e| e.1.as_str()).collect::<Vec<_>>(),
            ["Provisioned"]
        );
        assert!(st2.conditions.iter().all(|c| c.observed_generation == Some(1)));
        let (st3, ev3) = next_status(
            &st2,
            Some(1),
            &Outcome::Provisioned(full),
            Some(("pub", secret_ref())),
        );
        assert_eq!(st3, st2, "steady state writes nothing");
        assert!(ev3.is_empty());
    }

    /// Condition `t` of `st`, which must have it.
    fn cond<'a>(st: &'a StaticGatewayConfigurationStatus, t: &str) -> &'a Condition {
        st.conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap_or_else(|| panic!("no {t} condition"))
    }

    /// The next status of a configuration provisioned with `facts` (and its key).
    fn provisioned(
        old: &StaticGatewayConfigurationStatus,
        facts: &ConfigFacts,
    ) -> (StaticGatewayConfigurationStatus, Vec<(EventKind, String, String)>) {
        next_status(
            old,
            Some(1),
            &Outcome::Provisioned(facts.clone()),
            Some(("pub", secret_ref())),
        )
    }

    #[test]
    fn degraded_appears_with_a_warning_and_clears_without_touching_ready() {
        let ready = ConfigFacts {
            frontend_ip: Some("10.1.0.4".into()),
            port: Some(6000),
            egress_ip_prefix: Some("20.0.0.0/31".into()),
            ..ConfigFacts::default()
        };
        let (st, _) = provisioned(&StaticGatewayConfigurationStatus::default(), &ready);
        assert!(
            !st.conditions.iter().any(|c| c.type_ == DEGRADED),
            "never degraded: no Degraded condition"
        );
        let pool = api::PoolRef::Nodepool("gateway".into());
        assert_eq!(pool_exceeds_prefix(&pool, 2, 31), None);
        let exceeds = pool_exceeds_prefix(&pool, 3, 31).expect("3 nodes do not fit a /31");
        assert!(
            exceeds.contains("node pool gateway")
                && exceeds.contains("3 gateway nodes")
                && exceeds.contains("holds 2"),
            "{exceeds}"
        );
        let surge = ConfigFacts {
            pool_exceeds_prefix: Some(exceeds.clone()),
            without_address: vec!["gw000002".into()],
            refused_updates: vec!["gw000002: PublicIPPrefixOutOfIpAddressesForPublicIPAddress".into()],
            ..ready.clone()
        };
        let (st, ev) = provisioned(&st, &surge);
        let d = cond(&st, DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "PoolExceedsPrefix")
        );
        assert!(
            d.message.starts_with(&exceeds) && d.message.contains("gw000002"),
            "{}",
            d.message
        );
        let warning = (
            EventKind::Warning,
            "PoolExceedsPrefix".to_string(),
            format!("Degraded=true: {}", d.message),
        );
        assert_eq!(ev, [warning]);
        let r = cond(&st, READY);
        assert_eq!((r.status.as_str(), r.reason.as_str()), ("True", "Provisioned"));
        // Still so: no new Event.
        let (st, ev) = provisioned(&st, &surge);
        assert!(ev.is_empty(), "{ev:?}");
        // Over: Degraded=False, a Normal Event.
        let (st, ev) = provisioned(&st, &ready);
        let d = cond(&st, DEGRADED);
        assert_eq!((d.status.as_str(), d.reason.as_str()), ("False", "AsExpected"));
        assert_eq!(
            ev,
            [(
                EventKind::Normal,
                "AsExpected".to_string(),
                format!("Degraded=false: {}", d.message)
            )]
        );
        // Still over: no new Event.
        let (_, ev) = provisioned(&st, &ready);
        assert!(ev.is_empty(), "{ev:?}");
    }

    #[test]
    fn failures_surface_with_their_reason() {
        let old = StaticGatewayConfigurationStatus::default();
        let (st, ev) = next_status(
            &old,
            Some(2),
            &Outcome::AzureFailed {
                reason: "AzureThrottled",
                message: "PUT loadBalancers ilb: TooManyRequests: slow down".into(),
            },
            None,
        );
        let ready = st.conditions.iter().find(|c| c.type_ == READY).expect("ready");
        assert_eq!(ready.reason, "AzureThrottled");
        assert!(ready.message.contains("TooManyRequests"));
        assert_eq!(ev[0].0, EventKind::Warning);
        let (st, _) = next_status(&st, Some(3), &Outcome::Invalid("rule 6 ...".into()), None);
        let accepted = st
            .conditions
            .iter()
            .find(|c| c.type_ == ACCEPTED)
            .expect("accepted");
        assert_eq!(
            (accepted.status.as_str(), accepted.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert_eq!(accepted.observed_generation, Some(3));
        let (st, _) = next_status(
            &st,
            Some(3),
            &Outcome::PoolNotFound("gateway VMSS not found".into()),
            None,
        );
        assert_eq!(
            st.conditions
                .iter()
                .find(|c| c.type_ == ACCEPTED)
                .map(|c| c.reason.as_str()),
            Some("PoolNotFound")
        );
    }

    #[test]
    fn status_patches_clear_what_the_new_status_no_longer_has() {
        let old = StaticGatewayConfigurationStatus {
            egress_ip_prefix: Some("10.0.0.5,10.0.0.6".into()),
            gateway_server_profile: Some(GatewayServerProfile {
                ip: "10.1.0.4".into(),
                port: 6000,
                public_key: "pub".into(),
                private_key_secret_ref: Some(secret_ref()),
            }),
            gateway_vm_profiles: vec![api::GatewayVmProfile {
                node_name: "n0".into(),
                primary_ip: "10.0.0.4".into(),
                secondary_ip: "10.0.0.5".into(),
            }],
            observed_generation: Some(1),
            conditions: vec![],
        };
        // No node has its address any more and the frontend is being re-created: those fields go away.
        let mut new = old.clone();
        new.egress_ip_prefix = None;
        new.gateway_vm_profiles.clear();
        if let Some(p) = new.gateway_server_profile.as_mut() {
            p.ip.clear();
        }
        new.observed_generation = Some(2);
        let mut object = json!({"status": old});
        json_patch::merge(&mut object, &status_patch(&old, &new));
        assert_eq!(object, json!({ "status": new }));
        let back: StaticGatewayConfigurationStatus =
            serde_json::from_value(object["status"].clone()).expect("status");
        assert_eq!(
            back, new,
            "the object now equals the wanted status: no write next pass"
        );

        // Pools: instances gone when the scale set is scaled to zero.
        let old_pool = api::GatewayPoolStatus {
            instances: vec![api::pool::PoolInstance {
                name: "vmss000000".into(),
                node_name: Some("vmss000000".into()),
                primary_ip: "10.0.0.4".into(),
                provisioning_state: "Succeeded".into(),
                ready: true,
            }],
            ready_instances: 1,
            ..Default::default()
        };
        let new_pool = api::GatewayPoolStatus {
            instances: vec![],
            ready_instances: 0,
            ..old_pool.clone()
        };
        let mut object = json!({"status": old_pool});
        json_patch::merge(&mut object, &status_patch(&old_pool, &new_pool));
        assert_eq!(object, json!({ "status": new_pool }));
    }

    #[test]
    fn vm_pool_instances_name_the_node_of_their_vm() {
        use crate::desired::{AzureState, NicAddresses, Pool, PoolKind, VmNic};
        let vm = |n: &str| {
            format!("/subscriptions/s/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachines/{n}")
        };
        let nic = |name: &str, vm_id: Option<String>| VmNic {
            name: name.into(),
            provisioning_state: "Succeeded".into(),
            nic: crate::desired::Nic::default(),
            addresses: NicAddresses {
                primary_ip: Some("10.0.0.4".into()),
                by_ip_config: BTreeMap::new(),
            },
            vm_id,
        };
        let state = AzureState {
            vm_nics: vec![
                nic("aks-gw-vm0-nic", Some(vm("aks-gw-vm0"))),
                nic("aks-gw-vm1-nic", Some(vm("aks-gw-vm1"))),
                nic("aks-gw-spare-nic", None),
            ],
            ..AzureState::default()
        };
        let nodes = [
            // The cloud provider's providerID (lower-cased resource group), Node named otherwise.
            NodeIdentity {
                name: "node-a".into(),
                provider_id: Some(format!("azure://{}", vm("aks-gw-vm0").to_ascii_lowercase())),
            },
            // No providerID yet: the Node is named after its VM, as AKS does.
            NodeIdentity {
                name: "aks-gw-vm1".into(),
                provider_id: None,
            },
        ];
        let pool = Pool {
            uid: "u".into(),
            kind: PoolKind::Vm,
            prefix_len: 31,
        };
        let st = pool_status(&Default::default(), Some(1), &pool, &state, &[], &nodes);
        let names: Vec<(&str, Option<&str>)> = st
            .instances
            .iter()
            .map(|i| (i.name.as_str(), i.node_name.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("aks-gw-vm0-nic", Some("node-a")),
                ("aks-gw-vm1-nic", Some("aks-gw-vm1")),
                ("aks-gw-spare-nic", None),
            ]
        );
    }

    #[test]
    fn a_pool_not_in_azure_clears_its_instances_and_is_not_ready() {
        let old = api::GatewayPoolStatus {
            ready_instances: 2,
            instances: vec![api::pool::PoolInstance::default()],
            load_balancer_frontend: Some(api::pool::LoadBalancerFrontend::default()),
            ..Default::default()
        };
        let st = pool_not_found_status(&old, Some(3), "no node pool 'nope'");
        assert_eq!(st.observed_generation, Some(3));
        assert!(st.instances.is_empty());
        assert_eq!(st.ready_instances, 0);
        assert!(st.load_balancer_frontend.is_none());
        let ready = st.conditions.iter().find(|c| c.type_ == READY).expect("Ready");
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            ("False", REASON_POOL_NOT_FOUND, "no node pool 'nope'")
        );
        assert_eq!(
            pool_not_found_status(&st, Some(3), "no node pool 'nope'"),
            st,
            "stable"
        );
    }
}
