//! Scenario 9: a gateway dies (agent killed, node gone, SIGTERM drain); traffic moves to the other gateway,
//! measured.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::lab::harness::checks::{azure, echo};
use crate::lab::harness::{Lab, Options, PODS};
use crate::lab::report::{info, ok};
use crate::lab::{fabric, runtime};

// ------------------------------------------------------------------------------------------ scenario 9

/// Packets per second of the failover stream.
const STREAM_PPS: u64 = 200;

/// A UDP stream from a pod to the echo host with sequence numbers; the echo host's answers say which source
/// address it saw for each.
struct Stream {
    start: Instant,
    /// Send time of each sequence number.
    sent: Arc<Mutex<Vec<Duration>>>,
    /// (receive time, sequence number, source the echo host saw).
    got: Arc<Mutex<Vec<(Duration, u64, Ipv4Addr)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Stream {
    fn start(ns: &str) -> anyhow::Result<Stream> {
        let sock = crate::lab::dataplane::in_netns(ns, || {
            let s = std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })?;
        let sock = Arc::new(tokio::net::UdpSocket::from_std(sock).context("tokio UDP socket")?);
        let start = Instant::now();
        let sent: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let got: Arc<Mutex<Vec<(Duration, u64, Ipv4Addr)>>> = Arc::default();
        let (s2, sent2) = (sock.clone(), sent.clone());
        let sender = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / STREAM_PPS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for seq in 0u64.. {
                tick.tick().await;
                if let Ok(mut g) = sent2.lock() {
                    g.push(start.elapsed());
                }
                let _ = s2.send_to(format!("seq:{seq}").as_bytes(), echo()).await;
            }
        });
        let got2 = got.clone();
        let receiver = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                // A failed receive (e.g. an ICMP error queued while the path changes) is not the end.
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                if from != echo() {
                    continue;
                }
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let Some((src, payload)) = text.split_once(' ') else {
                    continue;
                };
                let (Ok(src), Some(Ok(seq))) = (
                    src.parse::<Ipv4Addr>(),
                    payload.strip_prefix("seq:").map(str::parse::<u64>),
                ) else {
                    continue;
                };
                if let Ok(mut g) = got2.lock() {
                    g.push((start.elapsed(), seq, src));
                }
            }
        });
        Ok(Stream {
            start,
            sent,
            got,
            tasks: vec![sender, receiver],
        })
    }

    fn got(&self) -> Vec<(Duration, u64, Ipv4Addr)> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// The source of the last `n` answers when they all agree.
    fn steady(&self, n: usize) -> Option<Ipv4Addr> {
        let got = self.got();
        if got.len() < n {
            return None;
        }
        let last = &got[got.len() - n..];
        let src = last[0].2;
        last.iter().all(|g| g.2 == src).then_some(src)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// How the gateway fails in one measured run of scenario 9.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// SIGKILL of the gateway agent; the node's data plane (its `wireguard-go`, routes, nft) lives on.
    AgentKilled,
    /// The node is gone: its VM is cut off the network (every packet in or out dropped) and its agent
    /// SIGKILLed; brought back as it was afterwards.
    NodeGone,
    /// SIGTERM of the gateway agent (planned drain): the probe answers 503 while the node keeps forwarding
    /// until its pods have moved.
    Drain,
}

impl Outage {
    /// The kinds, in the order each round runs them.
    pub const ALL: [Outage; 3] = [Outage::AgentKilled, Outage::NodeGone, Outage::Drain];

    /// The label printed in the scenario's lines (`failover <label>: ...`).
    pub fn label(self) -> &'static str {
        match self {
            Outage::AgentKilled => "agent-SIGKILL",
            Outage::NodeGone => "node-gone",
            Outage::Drain => "SIGTERM-drain",
        }
    }
}

/// Rounds of scenario 9 (one run of each kind per round): `LAB_FAILOVER_RUNS`, default 1 (CI). The benchmark
/// in docs/performance.md uses 5 or more.
fn failover_rounds() -> anyhow::Result<usize> {
    match std::env::var("LAB_FAILOVER_RUNS") {
        Err(_) => Ok(1),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => Ok(n),
            _ => bail!("LAB_FAILOVER_RUNS={v:?}: must be a number of rounds from 1 to 100"),
        },
    }
}

/// The longest drain the gateway agents get for scenario 9 (the lab's chart values give 1 s, which is
/// shorter than the fabric's probe interval, so a SIGTERM could not be a drain).
const FAILOVER_DRAIN_SECONDS: &str = "30";

/// One measured failover.
#[derive(Debug, Clone)]
struct Failover {
    outage: Outage,
    /// From the outage until the fabric's probe took the gateway out of the rule.
    detect: Option<Duration>,
    /// The last answer through the old gateway and the first through the new one, after the outage.
    last_old: Option<Duration>,
    first_new: Duration,
    /// Packets sent after the outage and before the first answer through the new gateway that got no answer.
    lost: usize,
    /// Answers through the old gateway after the outage (its data plane outlives the agent).
    old_after: usize,
    /// SIGTERM: when the agent exited (its drain ended), from the signal.
    exited: Option<Duration>,
    /// Failback: packets sent after the gateway came back that got no answer before the stream was steady
    /// again, and the longest time without answers.
    failback_lost: usize,
    failback_gap: Duration,
    /// Session restarts the node agent made for the pod during the run (forced handshakes).
    restarts: Option<u64>,
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// What azure-sim holds for the demo pool's gateways (None before it runs).
fn gateways_view(lab: &Lab) -> Option<fabric::AzureView> {
    let names: Vec<String> = lab.gateway_vms.iter().map(|g| g.0.clone()).collect();
    Some(
        lab.azure
            .as_ref()?
            .handle()
            .with_state(|s| fabric::read_view(&s.world, &names)),
    )
}

/// The gateway (index in `lab.gateway_vms`) whose secondary IP has public address `public`.
fn gateway_of(lab: &Lab, public: Ipv4Addr) -> Option<(usize, Ipv4Addr)> {
    let view = gateways_view(lab)?;
    let vm = view
        .vms
        .iter()
        .find(|v| v.secondaries.iter().any(|(_, p)| *p == Some(public)))?;
    let i = lab.gateway_vms.iter().position(|g| g.0 == vm.vm)?;
    Some((i, vm.primary))
}

/// The other gateway's public address inside `prefix`.
fn other_public(lab: &Lab, not: usize, prefix: ipnet::Ipv4Net) -> Option<Ipv4Addr> {
    let view = gateways_view(lab)?;
    let other = lab.gateway_vms.iter().enumerate().find(|(i, _)| *i != not)?.1;
    view.vms
        .iter()
        .find(|v| v.vm == other.0)?
        .secondaries
        .iter()
        .find_map(|(_, p)| p.filter(|p| prefix.contains(p)))
}

/// Waits until every gateway answers the fabric's probe and is behind the demo rule again.
async fn all_gateways_serving(lab: &mut Lab, opts: &Options) -> anyhow::Result<()> {
    let mut status = lab.fabric.as_ref().context("fabric not running")?.status.clone();
    let all: Vec<Ipv4Addr> = lab.gateway_vms.iter().map(|g| g.1).collect();
    lab.wait(
        "the fabric's probes put every gateway behind the rule again",
        opts,
        || {
            let s = status.borrow_and_update().clone();
            let all = all.clone();
            async move {
                Ok(!s.desired.serving.is_empty()
                    && s.desired
                        .serving
                        .values()
                        .all(|b| all.iter().all(|a| b.contains(a))))
            }
        },
    )
    .await
}

/// Whether process `pid` has exited (gone, or a zombie not yet reaped).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// The node agent's `pod_tunnel_session_restarts_total` for pod `<ns>/<name>` on node `node` (its metrics
/// port in the node's namespace), or None when it does not answer.
async fn session_restarts(lab: &Lab, node: usize, pod: &str) -> Option<u64> {
    let ns = &lab.nodes.get(node)?.netns;
    let (code, body) =
        crate::lab::dataplane::get_from(ns, Ipv4Addr::LOCALHOST, NODE_AGENT_METRICS_PORT, "/metrics").await?;
    if code != 200 {
        return None;
    }
    let needle = format!("pod=\"{pod}\"");
    Some(
        body.lines()
            .filter(|l| l.starts_with("pod_tunnel_session_restarts_total{") && l.contains(&needle))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>() as u64,
    )
}

/// The node agent's metrics port (the chart's `gatewayCNIManager.metricsBindPort`).
const NODE_AGENT_METRICS_PORT: u16 = 8083;

/// Answers after `from`: packets sent at or after `from` (and before `until`) without an answer, and the
/// longest time without an answer from `from` on (until the last answer).
fn gaps_after(
    sent: &[Duration],
    got: &[(Duration, u64, Ipv4Addr)],
    from: Duration,
    until: Duration,
) -> (usize, Duration) {
    let answered: std::collections::BTreeSet<u64> = got.iter().map(|g| g.1).collect();
    let lost = sent
        .iter()
        .enumerate()
        .filter(|(seq, at)| **at >= from && **at < until && !answered.contains(&(*seq as u64)))
        .count();
    let mut times: Vec<Duration> = got.iter().map(|g| g.0).filter(|t| *t >= from).collect();
    times.sort();
    let mut prev = from;
    let mut gap = Duration::ZERO;
    for t in times {
        gap = gap.max(t.saturating_sub(prev));
        prev = t;
    }
    (lost, gap)
}

async fn measure(
    lab: &mut Lab,
    opts: &Options,
    node: usize,
    sb: &runtime::Sandbox,
    prefix: ipnet::Ipv4Net,
    outage: Outage,
    long_drain: &mut std::collections::BTreeMap<String, crate::lab::procs::Stopped>,
) -> anyhow::Result<Failover> {
    use nix::sys::signal::{Signal, kill};
    let stream = Stream::start(&sb.netns)?;
    let deadline = Instant::now() + opts.step_timeout;
    info("waiting: 100 answers in a row through one gateway");
    let old = loop {
        if let Some(a) = stream.steady(100) {
            break a;
        }
        if Instant::now() >= deadline {
            bail!(
                "the stream never settled on one gateway: {:?}",
                stream.got().last()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (idx, old_primary) =
        gateway_of(lab, old).with_context(|| format!("{old} is no gateway's public IP (prefix {prefix})"))?;
    if !prefix.contains(&old) {
        bail!("the stream leaves from {old}, outside {prefix}");
    }
    let new = other_public(lab, idx, prefix).context("no other gateway in the prefix")?;
    let agent = format!("gateway-agent-{idx}");
    let vm_ns = lab.gateway_vms[idx].2.clone();
    let pod = format!("{}/{}", sb.namespace, sb.name);
    let restarts_before = session_restarts(lab, node, &pod).await;
    info(&format!(
        "{} pps from {pod} to {}: answered through {} ({old}); {}",
        STREAM_PPS,
        echo(),
        lab.gateway_vms[idx].0,
        match outage {
            Outage::AgentKilled => format!("SIGKILL to {agent}"),
            Outage::NodeGone => format!(
                "cutting {} off the network and SIGKILL to {agent}",
                lab.gateway_vms[idx].0
            ),
            Outage::Drain => format!("SIGTERM to {agent} (drain up to {FAILOVER_DRAIN_SECONDS} s)"),
        }
    ));
    let pid = lab
        .children
        .pid(&agent)
        .with_context(|| format!("{agent} is not running"))?;
    let raw = nix::unistd::Pid::from_raw(i32::try_from(pid).context("pid")?);
    let mut status = lab.fabric.as_ref().context("fabric not running")?.status.clone();
    let t0 = stream.start.elapsed();
    match outage {
        Outage::AgentKilled => kill(raw, Signal::SIGKILL)?,
        Outage::NodeGone => {
            crate::lab::dataplane::cut_off(&vm_ns)?;
            kill(raw, Signal::SIGKILL)?;
        }
        Outage::Drain => kill(raw, Signal::SIGTERM)?,
    }
    let mut detect = None;
    let mut exit_at = None;
    let limit = opts.step_timeout.max(Duration::from_secs(60));
    let deadline = Instant::now() + limit;
    loop {
        if detect.is_none() {
            let s = status.borrow_and_update().clone();
            if s.desired.serving.values().all(|b| !b.contains(&old_primary)) {
                detect = Some(stream.start.elapsed().saturating_sub(t0));
            }
        }
        if exit_at.is_none() && exited(pid) {
            exit_at = Some(stream.start.elapsed().saturating_sub(t0));
        }
        if stream.steady(40) == Some(new) && exit_at.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let s = status.borrow().clone();
            bail!(
                "after {} of {agent}, the echo host did not see {new} within {}s (last answer {:?}; agent exited: {exit_at:?}); the fabric took the gateway out after {detect:?}, serves {:?}",
                outage.label(),
                limit.as_secs(),
                stream.got().last(),
                s.desired.serving,
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped = lab
        .children
        .stop_one(&agent, Signal::SIGKILL, Duration::from_secs(5))
        .await?;
    let got = stream.got();
    let sent = stream.sent.lock().map(|g| g.clone()).unwrap_or_default();
    let after: Vec<&(Duration, u64, Ipv4Addr)> = got.iter().filter(|g| g.0 >= t0).collect();
    let first = after
        .iter()
        .find(|g| g.2 == new)
        .context("no answer through the new gateway")?;
    let last_old = after.iter().filter(|g| g.2 == old).map(|g| g.0 - t0).max();
    let old_after = after.iter().filter(|g| g.2 == old).count();
    let answered: std::collections::BTreeSet<u64> = got.iter().map(|g| g.1).collect();
    let lost = sent
        .iter()
        .enumerate()
        .filter(|(seq, at)| **at >= t0 && (*seq as u64) < first.1 && !answered.contains(&(*seq as u64)))
        .count();
    let first_new = first.0 - t0;
    ok(&format!(
        "{} of {agent}: the echo host sees {new} (the other gateway) {} after it; the probe took {} out after {}; last answer through {old} at {} ({} answers after it); {} packets lost ({} pps){}",
        outage.label(),
        fmt_ms(first_new),
        lab.gateway_vms[idx].0,
        detect.map(fmt_ms).unwrap_or_else(|| "(not seen)".into()),
        last_old.map(fmt_ms).unwrap_or_else(|| "-".into()),
        old_after,
        lost,
        STREAM_PPS,
        match (outage, exit_at) {
            (Outage::Drain, Some(e)) => format!("; the agent drained for {}", fmt_ms(e)),
            _ => String::new(),
        }
    ));
    // Bring the node back, as its replacement would be (the stream keeps running: failback is measured).
    if outage == Outage::NodeGone {
        crate::lab::dataplane::reconnect(&vm_ns)?;
    }
    let again = long_drain
        .entry(agent.clone())
        .or_insert_with(|| stopped.with_flag("lb-probe-drain-delay-seconds", FAILOVER_DRAIN_SECONDS))
        .clone();
    let back = stream.start.elapsed();
    lab.children.restart(&again, &opts.work_dir)?;
    all_gateways_serving(lab, opts).await?;
    let serving = stream.start.elapsed();
    let deadline = Instant::now() + opts.step_timeout;
    let steady_from = loop {
        let got = stream.got();
        if got.len() >= 100 && got[got.len() - 100].0 > serving && stream.steady(100).is_some() {
            break got[got.len() - 100].0;
        }
        if Instant::now() >= deadline {
            bail!(
                "after {agent} came back, the stream did not settle (last answer {:?})",
                got.last()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let got = stream.got();
    let sent = stream.sent.lock().map(|g| g.clone()).unwrap_or_default();
    drop(stream);
    let (failback_lost, failback_gap) = gaps_after(&sent, &got, back, steady_from);
    let restarts_after = session_restarts(lab, node, &pod).await;
    let restarts = restarts_before
        .zip(restarts_after)
        .map(|(b, a)| a.saturating_sub(b));
    // Slower than the node agent should make it (the probe interval plus a few seconds): show what it saw.
    if first_new > limit_hint() || failback_gap > limit_hint() {
        let log = lab
            .children
            .logs()
            .into_iter()
            .find(|(n, _)| *n == format!("node-agent-{node}"))
            .map(|(_, p)| crate::lab::procs::tail(&p, 25))
            .unwrap_or_default();
        info(&format!("slow run: node-agent-{node}'s last log lines:\n{log}"));
    }
    info(&format!(
        "{agent} back; both gateways behind the rule {} after the restart; failback: {failback_lost} packets lost, longest gap {}; the node agent restarted the pod's session {} times in this run",
        fmt_ms(serving.saturating_sub(back)),
        fmt_ms(failback_gap),
        restarts
            .map(|n| n.to_string())
            .unwrap_or_else(|| "(metrics unreadable)".into())
    ));
    Ok(Failover {
        outage,
        detect,
        last_old,
        first_new,
        lost,
        old_after,
        exited: exit_at,
        failback_lost,
        failback_gap,
        restarts,
    })
}

/// A failover or failback slower than this is shown with the node agent's log (diagnosis, not a check).
fn limit_hint() -> Duration {
    Duration::from_secs(8)
}

/// p50 and max of `v` (sorted copy; nearest rank).
fn p50_max<T: Copy + Ord>(v: &[T]) -> Option<(T, T)> {
    let mut v = v.to_vec();
    v.sort();
    Some((*v.get((v.len().saturating_sub(1)) / 2)?, *v.last()?))
}

pub(super) async fn failover(lab: &mut Lab, opts: &Options) -> anyhow::Result<()> {
    use nix::sys::signal::Signal;
    let prefix = lab.prefix.context("no egress prefix")?;
    let (node, sb) = lab
        .pods
        .iter()
        .find(|(_, sb)| sb.name == PODS[0].0)
        .map(|(n, sb)| (*n, sb.clone()))
        .context("no annotated demo pod")?;
    let names: Vec<String> = lab.gateway_vms.iter().map(|g| g.0.clone()).collect();
    let view = azure(lab)?.with_state(|s| fabric::read_view(&s.world, &names));
    let limit = view
        .probes
        .first()
        .map(|p| p.interval * p.threshold)
        .unwrap_or_default();
    let rounds = failover_rounds()?;
    // The gateway agents get a drain longer than the fabric's probe interval (restarted with it once, before
    // the first run; the chart's own arguments are restored at the end).
    let mut original = Vec::new();
    let mut long_drain = std::collections::BTreeMap::new();
    for i in 0..lab.gateway_vms.len() {
        let agent = format!("gateway-agent-{i}");
        let stopped = lab
            .children
            .stop_one(&agent, Signal::SIGTERM, Duration::from_secs(10))
            .await?;
        let again = stopped.with_flag("lb-probe-drain-delay-seconds", FAILOVER_DRAIN_SECONDS);
        lab.children.restart(&again, &opts.work_dir)?;
        long_drain.insert(agent, again);
        original.push(stopped);
    }
    all_gateways_serving(lab, opts).await?;
    info(&format!(
        "gateway agents restarted with --lb-probe-drain-delay-seconds={FAILOVER_DRAIN_SECONDS}; {rounds} round(s) of {}",
        Outage::ALL.map(Outage::label).join(", ")
    ));
    let mut results = Vec::new();
    for round in 1..=rounds {
        for outage in Outage::ALL {
            info(&format!("round {round}/{rounds}: {}", outage.label()));
            results.push(measure(lab, opts, node, &sb, prefix, outage, &mut long_drain).await?);
        }
    }
    for stopped in original {
        lab.children
            .stop_one(&stopped.name, Signal::SIGTERM, Duration::from_secs(40))
            .await?;
        lab.children.restart(&stopped, &opts.work_dir)?;
    }
    all_gateways_serving(lab, opts).await?;
    for f in &results {
        info(&format!(
            "failover {}: {} (probe detection {}, physical limit: probe interval x threshold = {} + one WireGuard handshake); lost {}; failback lost {}, gap {}; session restarts {}",
            f.outage.label(),
            fmt_ms(f.first_new),
            f.detect.map(fmt_ms).unwrap_or_else(|| "-".into()),
            fmt_ms(limit),
            f.lost,
            f.failback_lost,
            fmt_ms(f.failback_gap),
            f.restarts.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
        ));
    }
    for outage in Outage::ALL {
        let of: Vec<&Failover> = results.iter().filter(|f| f.outage == outage).collect();
        let first: Vec<Duration> = of.iter().map(|f| f.first_new).collect();
        let lost: Vec<usize> = of.iter().map(|f| f.lost).collect();
        let back: Vec<usize> = of.iter().map(|f| f.failback_lost).collect();
        let detect: Vec<Duration> = of.iter().filter_map(|f| f.detect).collect();
        let (Some((f50, fmax)), Some((l50, lmax)), Some((b50, bmax))) =
            (p50_max(&first), p50_max(&lost), p50_max(&back))
        else {
            continue;
        };
        let d = p50_max(&detect)
            .map(|(a, b)| format!("{} / {}", fmt_ms(a), fmt_ms(b)))
            .unwrap_or_else(|| "-".into());
        let last_old: Vec<Duration> = of.iter().filter_map(|f| f.last_old).collect();
        let lo = p50_max(&last_old)
            .map(|(a, b)| format!("{} / {}", fmt_ms(a), fmt_ms(b)))
            .unwrap_or_else(|| "-".into());
        let old_after: usize = of.iter().map(|f| f.old_after).sum();
        let drained: Vec<Duration> = of.iter().filter_map(|f| f.exited).collect();
        let drained = match (outage, p50_max(&drained)) {
            (Outage::Drain, Some((a, b))) => format!("; the agent drained for {} / {}", fmt_ms(a), fmt_ms(b)),
            _ => String::new(),
        };
        ok(&format!(
            "failover summary {} over {} run(s), p50 / max: first answer via the other gateway {} / {}; packets lost {l50} / {lmax}; probe detection {d}; last answer via the old gateway {lo} ({old_after} answers after the outage in all); failback packets lost {b50} / {bmax}{drained}",
            outage.label(),
            of.len(),
            fmt_ms(f50),
            fmt_ms(fmax),
        ));
    }
    Ok(())
}
