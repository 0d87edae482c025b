//! The lab's run: the default steps, then the chosen scenarios, then (unless `--keep`) teardown.

use anyhow::{Context as _, anyhow};

use crate::lab::harness::{DEMO_NS, ECHO_IP, ECHO_PORT, Lab, Options};
use crate::lab::steps::{self, Reached};
use crate::lab::{fabric, scenarios};

/// Runs the lab: steps 1–8 and the chosen scenarios, then (unless `--keep`) teardown with a check that
/// nothing is left.
/// Ctrl-C or SIGTERM at any point jumps to teardown.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.work_dir)
        .with_context(|| format!("creating {}", opts.work_dir.display()))?;
    let mut lab = Lab::new(&opts);
    let outcome = tokio::select! {
        r = job(&mut lab, &opts) => r,
        s = interrupted() => Err(anyhow!("interrupted by {s}")),
    };
    let outcome = match outcome {
        Ok(()) if opts.keep => {
            keep_summary(&lab, &opts);
            let s = interrupted().await;
            println!("\n{s} received");
            Ok(())
        }
        Ok(()) => Ok(()),
        Err(e) => {
            let (n, name) = lab.current;
            println!("\n\u{2718} FAILED at step {n} ({name}): {e:#}");
            Err(e.context(format!("step {n} ({name})")))
        }
    };
    let clean = lab.teardown(&opts).await;
    match (outcome, clean) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(e.context("teardown")),
    }
}

/// The default steps, the scenarios when the data plane runs, then the check that every component's
/// requests were its service account's and allowed.
async fn job(lab: &mut Lab, opts: &Options) -> anyhow::Result<()> {
    if steps::run(lab, opts).await? == Reached::ControlPlaneOnly {
        return Ok(());
    }
    if !opts.scenarios.is_empty() {
        scenarios::run(lab, opts).await?;
    }
    lab.check_accounts()
}

/// Waits for Ctrl-C or SIGTERM and names it.
async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "Ctrl-C";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
    }
}

fn keep_summary(lab: &Lab, opts: &Options) {
    println!("\n==> --keep: everything stays up until Ctrl-C");
    println!("    export KUBECONFIG={}", lab.kubeconfig.display());
    println!("    kubectl get gatewaypools,sgc -A");
    if let Some(k) = &lab.kube {
        println!("    Kubernetes API: {}", k.describe());
    }
    if let Some(a) = &lab.azure {
        println!(
            "    Azure simulator: {} (inventory: {}/_sim/inventory)",
            a.url(),
            a.url()
        );
    }
    for (_, sb) in &lab.pods {
        println!(
            "    pod {DEMO_NS}/{}: ip netns exec {} bash -c 'echo hi > /dev/udp/{ECHO_IP}/{ECHO_PORT}'   (or curl/nc the echo host)",
            sb.name, sb.netns
        );
    }
    for n in &lab.nodes {
        println!("    node {}: nsenter {} bash", n.name, n.enter_args().join(" "));
    }
    if !lab.fabric_ns.is_empty() {
        println!(
            "    Azure fabric: ip -n {f} route; ip -n {f} rule; ip netns exec {f} nft list table ip {}",
            fabric::NFT_TABLE,
            f = lab.fabric_ns
        );
    }
    println!(
        "    the installed chart: {} (rendered by scripts/render-chart.py; holds the secrets, mode 0600)",
        opts.work_dir.join("chart.yaml").display()
    );
    for (name, log) in lab.children.logs() {
        println!("    {name} log: {}", log.display());
    }
    println!("    work dir: {}", opts.work_dir.display());
}
