//! Pods as kubelet and the container runtime create them, and the egress each one gets (steps 7 and 8).

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context as _, bail};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use super::{
    DEMO_NS, ECHO_EXCLUDED_IP, ECHO_IP, ECHO_PORT, Lab, NODE_AGENT, Options, PODS, SGC, SYSTEM_NS, lab_tag,
};
use crate::lab::report::{info, ok};
use crate::lab::{fabric, runtime};

impl Lab {
    /// Creates a pod as kubelet would (Pod object, netns, CNI ADD on node `node_idx`, status.podIP) and, when
    /// annotated, waits for its PodEndpoint. The lab tears it down like the default pods unless removed before.
    pub(in crate::lab) async fn add_pod(
        &mut self,
        opts: &Options,
        name: &'static str,
        node_idx: usize,
        gateway: Option<&str>,
    ) -> anyhow::Result<runtime::Sandbox> {
        use k8s_openapi::api::core::v1::Pod;
        let pods: Api<Pod> = Api::namespaced(self.client()?, DEMO_NS);
        let node = self
            .nodes
            .get(node_idx)
            .cloned()
            .with_context(|| format!("no regular node {node_idx}"))?;
        let annotations: std::collections::BTreeMap<String, String> = gateway
            .map(|g| [(api::names::POD_GATEWAY_ANNOTATION.to_string(), g.to_string())].into())
            .unwrap_or_default();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": DEMO_NS, "annotations": annotations},
            "spec": {"nodeName": node.name, "containers": [{"name": "app",
                "image": "registry.k8s.io/e2e-test-images/agnhost:2.36"}]}
        }))?;
        let created = pods
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating Pod {DEMO_NS}/{name}"))?;
        let uid = created.metadata.uid.unwrap_or_default();
        let netns = format!("{}pod-{name}", lab_tag());
        self.add_netns(&netns)?;
        let cid = format!("{:0>64}", uid.replace('-', ""));
        let (n2, nn, ann) = (node.clone(), netns.clone(), annotations);
        let sandbox = tokio::task::spawn_blocking(move || n2.add(DEMO_NS, name, &uid, &cid, &nn, &ann))
            .await
            .context("CNI ADD thread")?
            .with_context(|| format!("CNI ADD for pod {DEMO_NS}/{name} on {}", node.name))?;
        self.pods.push((node_idx, sandbox.clone()));
        let pod_ip = sandbox
            .ipv4()
            .with_context(|| format!("the CNI result has no IPv4: {}", sandbox.result))?;
        // The node's primary IP, as kubelet reports it.
        let host_ip = self
            .azure
            .as_ref()
            .context("azure-sim not started")?
            .handle()
            .with_state(|s| fabric::read_view(&s.world, [&node.name]))
            .vms
            .first()
            .map(|v| v.primary.to_string())
            .unwrap_or_default();
        pods.patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"phase": "Running", "podIP": pod_ip.to_string(),
                "podIPs": [{"ip": pod_ip.to_string()}], "hostIP": host_ip}})),
        )
        .await
        .with_context(|| format!("writing status.podIP of {DEMO_NS}/{name}"))?;
        let has_wg = sandbox.interfaces().iter().any(|i| i == "wg0");
        if has_wg != gateway.is_some() {
            bail!(
                "pod {name}: wg0 {} but the pod is {}annotated",
                if has_wg { "present" } else { "missing" },
                if gateway.is_some() { "" } else { "not " }
            );
        }
        if gateway.is_some() {
            let pes: Api<api::PodEndpoint> = Api::namespaced(self.client()?, DEMO_NS);
            self.wait(
                &format!("the node agent's PodEndpoint {DEMO_NS}/{name}"),
                opts,
                || {
                    let pes = pes.clone();
                    async move { Ok(pes.get_opt(name).await?.is_some()) }
                },
            )
            .await?;
            // The node agent deletes it at CNI DEL only for this sandbox of this pod, so a late DEL of an older
            // sandbox cannot take a live pod's peer away: it must have recorded both.
            let pe = pes.get(name).await?;
            let (recorded, owner_uid) = (pe.recorded_sandbox(), pe.controller_pod_uid());
            if recorded != Some(sandbox.container_id.as_str()) || owner_uid != Some(sandbox.pod_uid.as_str())
            {
                bail!(
                    "PodEndpoint {DEMO_NS}/{name}: sandbox {recorded:?} and owner Pod uid {owner_uid:?}, expected \
                     sandbox {} of Pod uid {}",
                    sandbox.container_id,
                    sandbox.pod_uid
                );
            }
        }
        info(&format!(
            "$ (kubelet) pod {DEMO_NS}/{name} on {}{}: netns {}, CNI ADD -> interfaces [{}], status.podIP = {pod_ip}",
            node.name,
            gateway
                .map(|g| format!(" (annotation {}={g})", api::names::POD_GATEWAY_ANNOTATION))
                .unwrap_or_default(),
            sandbox.netns,
            sandbox.interfaces().join(", ")
        ));
        Ok(sandbox)
    }

    /// An annotated and a plain pod: Pod object, network namespace, CNI ADD of the node's chain, status.podIP.
    pub(in crate::lab) async fn pods(&mut self, opts: &Options) -> anyhow::Result<()> {
        for (name, node_idx, annotated) in PODS {
            self.add_pod(opts, name, node_idx, annotated.then_some(SGC))
                .await?;
            if annotated {
                ok(&format!(
                    "{DEMO_NS}/{name} (annotation {}={SGC}): wg0 tunnel to the gateways' frontend, PodEndpoint {DEMO_NS}/{name} created by the node agent as system:serviceaccount:{SYSTEM_NS}:{NODE_AGENT} (the only writer the chart's webhook admits), owned by the Pod and recording its sandbox (only that sandbox's CNI DEL removes it)",
                    api::names::POD_GATEWAY_ANNOTATION
                ));
            } else {
                ok(&format!(
                    "{DEMO_NS}/{name} (no annotation): eth0 only, the node's normal path"
                ));
            }
        }
        let columns =
            "custom-columns=NAME:.metadata.name,NODE:.spec.nodeName,POD-IP:.status.podIP,PHASE:.status.phase";
        let out = self
            .kubectl(opts, &["get", "pods", "-n", DEMO_NS, "-o", columns])
            .await?;
        if out.ok {
            info(&format!("$ kubectl get pods -n {DEMO_NS} -o {columns}"));
            for l in out.stdout.lines() {
                info(&format!("  {l}"));
            }
        }
        Ok(())
    }

    /// Each pod asks the echo host which address it came from; the annotated pod's must be inside
    /// status.egressIpPrefix and the plain pod's outside it.
    pub(in crate::lab) async fn egress(&mut self, opts: &Options) -> anyhow::Result<()> {
        use crate::lab::dataplane::{tcp_source_seen, udp_source_seen};
        let prefix = self.prefix.context("no egress prefix")?;
        // Whose public address is it: a gateway's secondary IP, or the cluster's outbound IP.
        let names: Vec<String> = self.wiring.nics.keys().cloned().collect();
        let view = self
            .azure
            .as_ref()
            .map(|a| a.handle().with_state(|s| fabric::read_view(&s.world, &names)))
            .unwrap_or_default();
        let outbound = self.outbound;
        let owner = move |a: Ipv4Addr| -> String {
            if Some(a) == outbound {
                return " (the cluster's outbound IP)".into();
            }
            view.vms
                .iter()
                .find_map(|v| {
                    v.secondaries
                        .iter()
                        .find(|(_, p)| *p == Some(a))
                        .map(|(s, _)| format!(" (public IP of {}'s secondary IP {s})", v.vm))
                })
                .unwrap_or_default()
        };
        // (pod, echo address, expect inside the prefix, what the check is).
        let mut checks = Vec::new();
        for (_, sb) in self.pods.clone() {
            let annotated = !sb.annotations.is_empty();
            let kind = if annotated { "annotated" } else { "plain" };
            checks.push((
                sb.clone(),
                ECHO_IP,
                annotated,
                format!("{DEMO_NS}/{} ({kind})", sb.name),
            ));
            if annotated {
                // Upstream e2e scenario (4): a destination in spec.excludeCidrs bypasses the gateway.
                checks.push((
                    sb.clone(),
                    ECHO_EXCLUDED_IP,
                    false,
                    format!(
                        "{DEMO_NS}/{} to {ECHO_EXCLUDED_IP} (in spec.excludeCidrs)",
                        sb.name
                    ),
                ));
            }
        }
        let mut failures = Vec::new();
        for (sb, to, want_inside, what) in checks {
            let echo = SocketAddr::from((to, ECHO_PORT));
            let udp = udp_source_seen(&sb.netns, echo, opts.step_timeout).await;
            let tcp = tcp_source_seen(&sb.netns, echo, opts.step_timeout).await;
            let seen = |a: Option<Ipv4Addr>| {
                a.map(|a| a.to_string())
                    .unwrap_or_else(|| "nothing (no answer)".into())
            };
            let whose = udp.map(&owner).unwrap_or_default();
            let good = [udp, tcp]
                .iter()
                .all(|a| a.is_some_and(|a| prefix.contains(&a) == want_inside));
            let want = format!(
                "{} status.egressIpPrefix {prefix}",
                if want_inside { "inside" } else { "outside" }
            );
            let line = format!(
                "{what}: the echo host saw UDP from {}, TCP from {}{whose} -> {want}",
                seen(udp),
                seen(tcp)
            );
            if good {
                ok(&line);
            } else {
                println!("    \u{2718} {line}: NO");
                failures.push(what);
            }
        }
        if !failures.is_empty() {
            bail!("wrong egress address for {}", failures.join(", "));
        }
        Ok(())
    }
}
