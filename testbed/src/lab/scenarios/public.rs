//! Scenarios 2 (bring-your-own public IP prefix), 3 (ingress to an annotated pod) and 5 (two
//! configurations on one pool): public egress on the demo pool.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde_json::json;

use crate::lab::harness::checks::{
    apply, azure, check_egress, delete_sgc, prefix_of, ready_sgc, remove_pod, sgc_yaml, uid_of,
};
use crate::lab::harness::{DEMO_NS, Lab, Options, lab_seed};
use crate::lab::report::ok;

// ------------------------------------------------------------------------------------------ scenario 2

pub(super) async fn byo_prefix(lab: &mut Lab, opts: &Options) -> anyhow::Result<()> {
    const RG: &str = "node-rg";
    const NAME: &str = "byo-egress-prefix";
    let az = azure(lab)?;
    let location = lab_seed().location;
    let put = az
        .with_state(|s| {
            s.world.put_public_ip_prefix(
                RG,
                NAME,
                json!({"location": location, "sku": {"name": "Standard", "tier": "Regional"},
                    "properties": {"prefixLength": 31, "publicIPAddressVersion": "IPv4"}}),
            )
        })
        .map_err(|e| anyhow!("creating the public IP prefix: {} {}", e.code, e.message))?;
    let id = put.resource["id"].as_str().unwrap_or_default().to_string();
    let cidr: ipnet::Ipv4Net = put
        .resource
        .pointer("/properties/ipPrefix")
        .and_then(|v| v.as_str())
        .and_then(|v| v.parse().ok())
        .context("the new prefix has no ipPrefix")?;
    ok(&format!(
        "the user's public IP prefix {NAME} = {cidr} (Standard, Regional, IPv4 /31) in azure-sim"
    ));
    apply(
        lab,
        opts,
        "byo-sgc.yaml",
        &sgc_yaml("byo", &format!("  publicIpPrefixId: {id}\n")),
    )
    .await?;
    let s = ready_sgc(lab, opts, "byo").await?;
    let (got, uid) = (prefix_of(&s)?, uid_of(&s));
    if got != cidr {
        bail!("status.egressIpPrefix is {got}, not the BYO prefix {cidr}");
    }
    ok(&format!(
        "{DEMO_NS}/byo is Ready; status.egressIpPrefix = {got}, the BYO prefix's CIDR"
    ));
    let sb = lab.add_pod(opts, "byo-client", 0, Some("byo")).await?;
    let demo = lab.prefix.into_iter().collect::<Vec<_>>();
    check_egress(opts, &sb, cidr, &demo).await?;
    match az.with_state(|s| s.world.delete_public_ip_prefix(RG, NAME)) {
        Err(e) => ok(&format!(
            "deleting the prefix while the configuration uses it is refused: {} ({})",
            e.code, e.message
        )),
        Ok(_) => bail!("azure-sim deleted the prefix while the configuration used it"),
    }
    remove_pod(lab, opts, "byo-client").await?;
    delete_sgc(lab, opts, "byo", &uid).await?;
    let exists = az.with_state(|s| {
        let id = s.world.resource_id(RG, crate::azure::world::PREFIX_TYPE, NAME);
        s.world.get(&id).is_some()
    });
    if !exists {
        bail!("the operator deleted the user's own prefix (it must only release it)");
    }
    match az.with_state(|s| s.world.delete_public_ip_prefix(RG, NAME)) {
        Ok(true) => {}
        Ok(false) => bail!("the prefix vanished before it was deleted"),
        Err(e) => bail!(
            "the prefix is still not deletable after the configuration was deleted: {} ({})",
            e.code,
            e.message
        ),
    }
    let blocks = lab
        .azure
        .as_ref()
        .map(|a| a.inventory()["publicBlocks"].to_string())
        .unwrap_or_default();
    if blocks.contains(&cidr.to_string()) {
        bail!("{cidr} is still allocated after the prefix was deleted: {blocks}");
    }
    ok(&format!(
        "the operator left the user's prefix in place and released it: deleting {NAME} succeeded, {cidr} is free again"
    ));
    Ok(())
}

// ------------------------------------------------------------------------------------------ scenario 3

/// A TCP service in pod namespace `ns` on `port`: answers `hello from <pod>, you are <peer address>\n`.
fn serve_hello(ns: &str, pod: &str, port: u16) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let l = crate::lab::dataplane::tcp_listener_in(ns, SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
    let pod = pod.to_string();
    Ok(tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        while let Ok((mut s, from)) = l.accept().await {
            let msg = format!("hello from {pod}, you are {}\n", from.ip());
            tokio::spawn(async move {
                let _ = s.write_all(msg.as_bytes()).await;
            });
        }
    }))
}

/// One TCP connection from inside `ns` to `to`: what the server wrote.
async fn tcp_get(ns: &str, to: SocketAddr) -> Option<String> {
    let ns = ns.to_string();
    tokio::task::spawn_blocking(move || {
        crate::lab::dataplane::in_netns(&ns, move || {
            use std::io::Read as _;
            let mut c = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut out = String::new();
            c.read_to_string(&mut out)?;
            Ok(out)
        })
        .ok()
    })
    .await
    .ok()
    .flatten()
}

pub(super) async fn ingress(lab: &mut Lab, opts: &Options) -> anyhow::Result<()> {
    // No excludeCidrs: everything the pod starts goes to wg0, so a reply to the client (another pod) only takes
    // eth0 because the connection came in there.
    apply(lab, opts, "ingress-sgc.yaml", &sgc_yaml("ingress", "")).await?;
    let s = ready_sgc(lab, opts, "ingress").await?;
    let (prefix, uid) = (prefix_of(&s)?, uid_of(&s));
    let server = lab.add_pod(opts, "web", 0, Some("ingress")).await?;
    check_egress(opts, &server, prefix, &[]).await?;
    let web_ip = server.ipv4().context("web has no IPv4")?;
    let client = lab
        .pods
        .iter()
        .find(|(_, sb)| sb.annotations.is_empty())
        .map(|(_, sb)| sb.clone())
        .context("no plain pod")?;
    let client_ip = client.ipv4().context("the plain pod has no IPv4")?;
    let handle = serve_hello(&server.netns, "web", 8080)?;
    let to = SocketAddr::from((web_ip, 8080));
    let answer = tcp_get(&client.netns, to).await;
    handle.abort();
    let want = format!("hello from web, you are {client_ip}");
    match answer {
        Some(a) if a.trim() == want => ok(&format!(
            "plain pod {DEMO_NS}/{} ({client_ip}) -> annotated pod {DEMO_NS}/web {to}: {:?} (served, no NAT, the reply left by eth0 although web's default route is wg0)",
            client.name,
            a.trim()
        )),
        other => bail!(
            "ingress to the annotated pod failed: {} -> {to} answered {other:?}, want {want:?}",
            client.name
        ),
    }
    remove_pod(lab, opts, "web").await?;
    delete_sgc(lab, opts, "ingress", &uid).await
}

// ------------------------------------------------------------------------------------------ scenario 5

pub(super) async fn two_configs(lab: &mut Lab, opts: &Options) -> anyhow::Result<()> {
    let mut made = Vec::new();
    for name in ["team-a", "team-b"] {
        apply(lab, opts, &format!("{name}-sgc.yaml"), &sgc_yaml(name, "")).await?;
    }
    for name in ["team-a", "team-b"] {
        let s = ready_sgc(lab, opts, name).await?;
        let port = s
            .status
            .as_ref()
            .and_then(|st| st.gateway_server_profile.as_ref())
            .map(|p| format!("{}:{}", p.ip, p.port))
            .unwrap_or_default();
        made.push((name, prefix_of(&s)?, uid_of(&s), port));
    }
    let (a, b) = (made[0].1, made[1].1);
    if a == b || a.contains(&b.network()) || b.contains(&a.network()) {
        bail!("the two configurations share a prefix: {a} and {b}");
    }
    ok(&format!(
        "{DEMO_NS}/team-a egressIpPrefix {a} (tunnel {}), {DEMO_NS}/team-b {b} (tunnel {}): one pool, two prefixes, two LB rules",
        made[0].3, made[1].3
    ));
    let pa = lab.add_pod(opts, "client-a", 0, Some("team-a")).await?;
    let pb = lab.add_pod(opts, "client-b", 1, Some("team-b")).await?;
    let demo: Vec<ipnet::Ipv4Net> = lab.prefix.into_iter().collect();
    check_egress(opts, &pa, a, &[vec![b], demo.clone()].concat()).await?;
    check_egress(opts, &pb, b, &[vec![a], demo].concat()).await?;
    remove_pod(lab, opts, "client-a").await?;
    remove_pod(lab, opts, "client-b").await?;
    for (name, _, uid, _) in made {
        delete_sgc(lab, opts, name, &uid).await?;
    }
    Ok(())
}
