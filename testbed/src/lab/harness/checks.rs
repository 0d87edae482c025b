//! What the steps and the scenarios check with: `kubectl apply` of a manifest, a configuration Ready with
//! its prefix, the source address the echo host sees from a pod, a pod removed, what Azure and the data plane
//! still hold.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail};
use api::StaticGatewayConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::DeleteParams;

use super::{DEMO_NS, ECHO_IP, ECHO_PORT, Lab, Options, POOL};
use crate::azure::SimHandle;
use crate::lab::report::{info, ok};
use crate::lab::runtime;

pub(in crate::lab) fn sgc_yaml(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\nmetadata:\n  name: {name}\n  namespace: {DEMO_NS}\nspec:\n  gatewayNodepoolName: {POOL}\n{extra_spec}"
    )
}

/// Writes `yaml` to the work dir and `kubectl apply`s it.
pub(in crate::lab) async fn apply(lab: &Lab, opts: &Options, file: &str, yaml: &str) -> anyhow::Result<()> {
    std::fs::write(opts.work_dir.join(file), yaml).with_context(|| format!("writing {file}"))?;
    let out = lab.kubectl(opts, &["apply", "-f", file]).await?;
    if !out.ok {
        bail!("kubectl apply -f {file} failed: {}", out.stderr.trim());
    }
    info(&format!("$ kubectl apply -f {file}   # {}", out.stdout.trim()));
    Ok(())
}

/// Waits until configuration `name` is Ready with a prefix; returns it.
pub(in crate::lab) async fn ready_sgc(
    lab: &mut Lab,
    opts: &Options,
    name: &str,
) -> anyhow::Result<StaticGatewayConfiguration> {
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(lab.client()?, DEMO_NS);
    let got = Arc::new(Mutex::new(None));
    lab.wait(
        &format!("{DEMO_NS}/{name} is Ready with status.egressIpPrefix"),
        opts,
        || {
            let (sgcs, got, name) = (sgcs.clone(), got.clone(), name.to_string());
            async move {
                let s = sgcs.get(&name).await?;
                let ready = s.status.as_ref().is_some_and(|st| {
                    st.is_ready_for_pods()
                        && st.egress_ip_prefix.is_some()
                        && st.gateway_server_profile.is_some()
                });
                if ready && let Ok(mut g) = got.lock() {
                    *g = Some(s);
                }
                Ok(ready)
            }
        },
    )
    .await?;
    let s = got.lock().ok().and_then(|mut g| g.take());
    s.context("configuration vanished")
}

pub(in crate::lab) fn prefix_of(s: &StaticGatewayConfiguration) -> anyhow::Result<ipnet::Ipv4Net> {
    let p = s
        .status
        .as_ref()
        .and_then(|st| st.egress_ip_prefix.clone())
        .unwrap_or_default();
    p.parse()
        .with_context(|| format!("status.egressIpPrefix {p:?} is not an IPv4 CIDR"))
}

pub(in crate::lab) fn uid_of(s: &StaticGatewayConfiguration) -> String {
    s.metadata.uid.clone().unwrap_or_default()
}

/// CNI DEL and Pod deletion of a pod the lab runs; waits for its PodEndpoint to go.
pub(in crate::lab) async fn remove_pod(lab: &mut Lab, opts: &Options, name: &str) -> anyhow::Result<()> {
    let Some(i) = lab.pods.iter().position(|(_, sb)| sb.name == name) else {
        bail!("the lab runs no pod {name}");
    };
    let (node_idx, sb) = lab.pods.remove(i);
    let node = lab
        .nodes
        .get(node_idx)
        .cloned()
        .with_context(|| format!("no regular node {node_idx}"))?;
    let netns = sb.netns.clone();
    tokio::task::spawn_blocking(move || node.del(&sb))
        .await
        .context("CNI DEL thread")?
        .with_context(|| format!("CNI DEL of pod {DEMO_NS}/{name}"))?;
    if crate::lab::dataplane::netns_inode(&netns).is_some() {
        crate::lab::dataplane::ip(&["netns", "del", &netns])?;
    }
    lab.netns.retain(|n| *n != netns);
    let pods: Api<Pod> = Api::namespaced(lab.client()?, DEMO_NS);
    pods.delete(name, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting Pod {DEMO_NS}/{name}"))?;
    // The kubelet, its sandbox gone, confirms the graceful deletion (kube-sim has deleted it already).
    crate::lab::kubelet::confirm_deleted(&pods, name).await?;
    let pes: Api<api::PodEndpoint> = Api::namespaced(lab.client()?, DEMO_NS);
    let (pes2, pods2, n) = (pes.clone(), pods.clone(), name.to_string());
    lab.wait(
        &format!("Pod and PodEndpoint {DEMO_NS}/{name} gone"),
        opts,
        move || {
            let (pes, pods, n) = (pes2.clone(), pods2.clone(), n.clone());
            async move { Ok(pes.get_opt(&n).await?.is_none() && pods.get_opt(&n).await?.is_none()) }
        },
    )
    .await?;
    info(&format!(
        "pod {DEMO_NS}/{name}: CNI DEL, Pod deleted, PodEndpoint gone"
    ));
    Ok(())
}

/// Every stored Azure resource as one lower-case JSON text (to look for a configuration's UID anywhere).
pub(in crate::lab) fn azure_text(azure: &SimHandle) -> String {
    azure
        .with_state(|s| {
            s.world
                .resource_ids()
                .iter()
                .filter_map(|id| s.world.get(id).map(|v| v.to_string()))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .to_ascii_lowercase()
}

pub(in crate::lab) fn azure(lab: &Lab) -> anyhow::Result<SimHandle> {
    Ok(lab.azure.as_ref().context("azure-sim not started")?.handle())
}

/// `kubectl delete <kind> [-n <namespace>] <name> --wait=false`, echoed as typed (without `--wait=false`).
pub(in crate::lab) async fn kubectl_delete(
    lab: &Lab,
    opts: &Options,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
) -> anyhow::Result<()> {
    let mut args = vec!["delete", kind];
    if let Some(ns) = namespace {
        args.extend(["-n", ns]);
    }
    args.push(name);
    let typed = args.join(" ");
    args.push("--wait=false");
    let out = lab.kubectl(opts, &args).await?;
    if !out.ok {
        bail!("kubectl delete {kind} {name}: {}", out.stderr.trim());
    }
    info(&format!("$ kubectl {typed}   # {}", out.stdout.trim()));
    Ok(())
}

/// `kubectl delete` of configuration `name`, then waits until it is gone and nothing in Azure mentions its UID.
pub(in crate::lab) async fn delete_sgc(
    lab: &mut Lab,
    opts: &Options,
    name: &str,
    uid: &str,
) -> anyhow::Result<()> {
    kubectl_delete(lab, opts, "sgc", Some(DEMO_NS), name).await?;
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(lab.client()?, DEMO_NS);
    let n = name.to_string();
    lab.wait(&format!("{DEMO_NS}/{name} gone (finalizer done)"), opts, || {
        let (sgcs, n) = (sgcs.clone(), n.clone());
        async move { Ok(sgcs.get_opt(&n).await?.is_none()) }
    })
    .await?;
    let az = azure(lab)?;
    let uid_lc = uid.to_ascii_lowercase();
    lab.wait(
        &format!("no Azure resource mentions {name}'s UID (LB rule, probe, ipConfigs, public IPs)"),
        opts,
        || {
            let found = !uid_lc.is_empty() && azure_text(&az).contains(&uid_lc);
            async move { Ok(!found) }
        },
    )
    .await?;
    ok(&format!(
        "{DEMO_NS}/{name} deleted: the object is gone and no Azure resource mentions its UID {uid}"
    ));
    Ok(())
}

pub(in crate::lab) fn echo() -> SocketAddr {
    SocketAddr::from((ECHO_IP, ECHO_PORT))
}

/// The source addresses (UDP, TCP) the echo host sees from pod `sb`; fails when it does not answer.
async fn seen_from(opts: &Options, sb: &runtime::Sandbox) -> anyhow::Result<(Ipv4Addr, Ipv4Addr)> {
    use crate::lab::dataplane::{tcp_source_seen, udp_source_seen};
    let udp = udp_source_seen(&sb.netns, echo(), opts.step_timeout)
        .await
        .with_context(|| format!("the echo host never answered UDP from pod {}", sb.name))?;
    let tcp = tcp_source_seen(&sb.netns, echo(), opts.step_timeout)
        .await
        .with_context(|| format!("the echo host did not answer TCP from pod {}", sb.name))?;
    Ok((udp, tcp))
}

/// Checks the echo host sees pod `sb` from inside `prefix` (UDP and TCP), and from outside every `others`.
pub(in crate::lab) async fn check_egress(
    opts: &Options,
    sb: &runtime::Sandbox,
    prefix: ipnet::Ipv4Net,
    others: &[ipnet::Ipv4Net],
) -> anyhow::Result<Ipv4Addr> {
    let (udp, tcp) = seen_from(opts, sb).await?;
    let line = format!(
        "{DEMO_NS}/{}: the echo host saw UDP from {udp}, TCP from {tcp} -> inside {prefix}{}",
        sb.name,
        others
            .iter()
            .map(|o| format!(", outside {o}"))
            .collect::<String>()
    );
    let good = [udp, tcp]
        .iter()
        .all(|a| prefix.contains(a) && !others.iter().any(|o| o.contains(a)));
    if !good {
        println!("    \u{2718} {line}: NO");
        bail!("wrong egress address for {}", sb.name);
    }
    ok(&line);
    Ok(udp)
}

/// `ip -n <ns> <args>` output; an error (with `ip`'s stderr) when it cannot run or fails, e.g. because the
/// namespace is gone: an empty answer would read as "nothing there".
pub(in crate::lab) fn ip_out(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = crate::lab::procs::run_checked(
        std::process::Command::new("ip").args(["-n", ns]).args(args),
        "running ip (iproute2)",
        format_args!("ip -n {ns} {}", args.join(" ")),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What the data plane still holds for configurations: the gateways' frontend addresses, their wg links and
/// wireguard-go processes, and pod wireguard sockets on the nodes. A place that cannot be read (a namespace
/// gone or renamed, `ip` failing) is reported as such, never taken for an empty one.
pub(in crate::lab) fn dataplane_leftovers(
    gateway_vms: &[(String, Ipv4Addr, String)],
    nodes: &[runtime::Node],
) -> Vec<String> {
    let mut left = Vec::new();
    for (node, primary, ns) in gateway_vms {
        match ip_out(ns, &["-4", "-o", "addr", "show", "dev", "eth0"]) {
            Ok(out) => {
                let addrs: Vec<String> = out
                    .lines()
                    .filter_map(|l| {
                        let mut w = l.split_whitespace();
                        w.position(|x| x == "inet")?;
                        w.next().map(str::to_string)
                    })
                    .filter(|a| *a != format!("{primary}/16"))
                    .collect();
                if !addrs.is_empty() {
                    left.push(format!("{node} eth0 still has {}", addrs.join(", ")));
                }
            }
            Err(e) => left.push(format!("{node} eth0 cannot be read: {e:#}")),
        }
        let egw = format!("{ns}-egw");
        match ip_out(&egw, &["-o", "link", "show"]) {
            Ok(out) => {
                let links: Vec<String> = out
                    .lines()
                    .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
                    .filter(|n| n.starts_with("wg"))
                    .collect();
                if !links.is_empty() {
                    left.push(format!("{egw} still has {}", links.join(", ")));
                }
            }
            Err(e) => left.push(format!("{egw}'s links cannot be read: {e:#}")),
        }
        if let Some(inode) = crate::lab::dataplane::netns_inode(&egw) {
            let procs: Vec<String> = crate::lab::dataplane::processes_in(&[inode])
                .into_iter()
                .map(|(pid, name)| format!("{name} ({pid})"))
                .collect();
            if !procs.is_empty() {
                left.push(format!("{egw} still runs {}", procs.join(", ")));
            }
        }
    }
    for n in nodes {
        match n.wireguard_sockets() {
            Ok(socks) if socks.is_empty() => {}
            Ok(socks) => left.push(format!("{} has wireguard sockets {}", n.name, socks.join(", "))),
            Err(e) => left.push(format!("{e:#}")),
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_that_cannot_be_read_is_a_leftover_not_an_empty_one() {
        // A gateway VM whose namespace does not exist (gone, or renamed), and a node without its directories.
        let ns = format!("keg-test-missing-{}", std::process::id());
        let gone = tempfile::tempdir().expect("tmp").path().join("node");
        let node = runtime::Node {
            name: "node-x".into(),
            netns: ns.clone(),
            mntns: gone.join("mnt"),
            dir: gone,
            cni_path: vec![],
        };
        let left = dataplane_leftovers(
            &[("gw-vm".into(), Ipv4Addr::new(10, 0, 0, 4), ns.clone())],
            &[node],
        );
        assert_eq!(left.len(), 3, "{left:?}");
        assert!(left[0].starts_with("gw-vm eth0 cannot be read: "), "{left:?}");
        assert!(
            left[1].starts_with(&format!("{ns}-egw's links cannot be read: ")),
            "{left:?}"
        );
        assert!(left[2].starts_with("reading node-x's /run/wireguard"), "{left:?}");
    }
}
