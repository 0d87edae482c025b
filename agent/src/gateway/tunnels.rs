//! Gateway mode: what the tunnels carry (metrics) and when a draining gateway's pods have moved (shutdown).
//!
//! The readings are taken by [`read`] (WireGuard counters of each `wg-<port>`, the links' packet counters)
//! and [`read_flows`] (the gateway namespace's connection tracking, per configuration by the conntrack mark
//! its link sets); [`summarize`], [`count_flows_by_mark`] and [`DrainWatch`] are pure.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use dataplane::netns::Netns;
use dataplane::wg::{PeerStats, WgHandle, WireGuard, link_alias};

/// A handshake older than this has no session left (WireGuard's REJECT_AFTER_TIME, 180 s).
pub const SESSION_LIFETIME: Duration = Duration::from_secs(180);

/// One applied tunnel link, as the last successful apply left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelLink {
    /// `wg-<port>`.
    pub ifname: String,
    /// Control name it was created with (userspace socket), used when the link has no alias.
    pub control_name: String,
    /// `<namespace>/<name>` of the configuration.
    pub configuration: String,
    /// Its port.
    pub port: u16,
}

/// The links of the last successful apply, shared between the apply loop and the readers.
#[derive(Debug, Clone, Default)]
pub struct TunnelView {
    links: Arc<RwLock<Vec<TunnelLink>>>,
}

impl TunnelView {
    /// Replaces the links (after a successful apply).
    pub fn set(&self, links: Vec<TunnelLink>) {
        *self.links.write().unwrap_or_else(|p| p.into_inner()) = links;
    }
    /// The links now.
    pub fn get(&self) -> Vec<TunnelLink> {
        self.links.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One link's reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkReading {
    /// The link.
    pub link: TunnelLink,
    /// Its peers with their counters.
    pub peers: Vec<PeerStats>,
    /// Packets received on the link (decrypted, from pods), when readable.
    pub rx_packets: Option<u64>,
    /// Packets sent on the link (to pods), when readable.
    pub tx_packets: Option<u64>,
}

/// Everything read in one pass.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reading {
    /// Per link.
    pub links: Vec<LinkReading>,
}

/// The gateway namespace's tracked connections (its flows are the pods' SNATed flows).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlowReading {
    /// All entries in the namespace (`nf_conntrack_count`), when readable.
    pub total: Option<u64>,
    /// Entries per conntrack mark (the configuration's port, set on its link's ingress), when the kernel
    /// lists its table (`/proc/net/nf_conntrack`).
    pub by_mark: Option<BTreeMap<u32, u64>>,
}

/// Counts `/proc/net/nf_conntrack` lines by their `mark=` field. Lines without one (kernels built without
/// CONFIG_NF_CONNTRACK_MARK print none) are not counted.
pub fn count_flows_by_mark(table: impl std::io::BufRead) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for line in table.lines().map_while(Result::ok) {
        let mark = line
            .split_ascii_whitespace()
            .find_map(|f| f.strip_prefix("mark="))
            .and_then(|m| m.parse::<u32>().ok());
        if let Some(m) = mark {
            *out.entry(m).or_insert(0) += 1;
        }
    }
    out
}

/// Reads the connection tracking of `netns` (blocking). The table is streamed, not held: a busy gateway
/// tracks hundreds of thousands of flows.
pub fn read_flows(netns: &Netns) -> FlowReading {
    let total = netns
        .run("cat", &["/proc/sys/net/netfilter/nf_conntrack_count"])
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let by_mark = netns
        .command("cat")
        .arg("/proc/net/nf_conntrack")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()
        .and_then(|mut child| {
            let counts = child
                .stdout
                .take()
                .map(|out| count_flows_by_mark(std::io::BufReader::new(out)));
            let ok = child.wait().is_ok_and(|s| s.success());
            counts.filter(|_| ok)
        });
    FlowReading { total, by_mark }
}

/// Reads every link of `view` in `netns` (blocking: run it off the async threads). A link that cannot be
/// read is left out (it is being changed by an apply) and logged at debug level.
pub fn read(wg: &WireGuard, netns: &Netns, links: &[TunnelLink]) -> Reading {
    let packets: BTreeMap<String, (Option<u64>, Option<u64>)> = netns
        .ip_json(&["-s", "link", "show"])
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|l| {
            let name = l["ifname"].as_str()?.to_string();
            let stats = &l["stats64"];
            Some((
                name,
                (stats["rx"]["packets"].as_u64(), stats["tx"]["packets"].as_u64()),
            ))
        })
        .collect();
    let mut out = Reading::default();
    for link in links {
        let control = link_alias(netns, &link.ifname)
            .ok()
            .flatten()
            .unwrap_or_else(|| link.control_name.clone());
        let h = WgHandle {
            netns: netns.clone(),
            ifname: link.ifname.clone(),
            control_name: control,
        };
        match wg.peer_stats(&h) {
            Ok(peers) => {
                let (rx_packets, tx_packets) = packets.get(&link.ifname).copied().unwrap_or((None, None));
                out.links.push(LinkReading {
                    link: link.clone(),
                    peers,
                    rx_packets,
                    tx_packets,
                });
            }
            Err(e) => tracing::debug!(link = %link.ifname, error = %e, "reading tunnel counters"),
        }
    }
    out
}

/// One configuration's figures for the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigSummary {
    /// `<namespace>/<name>`.
    pub configuration: String,
    /// Peers configured.
    pub peers: u64,
    /// Peers with a session (handshake within [`SESSION_LIFETIME`]).
    pub active_peers: u64,
    /// Age of the most recent handshake of any peer (none: no peer ever shook hands).
    pub newest_handshake_age: Option<Duration>,
    /// Age of the oldest handshake among the active peers (how long until some session needs a rekey).
    pub oldest_active_handshake_age: Option<Duration>,
    /// Bytes from pods (sum over the peers present).
    pub rx_bytes: u64,
    /// Bytes to pods.
    pub tx_bytes: u64,
    /// Packets from pods (link counter).
    pub rx_packets: Option<u64>,
    /// Packets to pods.
    pub tx_packets: Option<u64>,
    /// Peers whose session started since the previous reading (no handshake before, or an expired one):
    /// pods arriving, e.g. after their gateway failed.
    pub sessions_started: u64,
}

/// Turns a reading into per-configuration figures; `previous` (the last reading) tells which sessions are new.
pub fn summarize(now: SystemTime, reading: &Reading, previous: Option<&Reading>) -> Vec<ConfigSummary> {
    let age = |t: SystemTime| now.duration_since(t).unwrap_or_default();
    let active = |h: Option<SystemTime>| h.is_some_and(|t| age(t) < SESSION_LIFETIME);
    reading
        .links
        .iter()
        .map(|l| {
            let before: BTreeMap<&str, Option<SystemTime>> = previous
                .and_then(|p| p.links.iter().find(|pl| pl.link.ifname == l.link.ifname))
                .map(|pl| {
                    pl.peers
                        .iter()
                        .map(|p| (p.peer.public_key.as_str(), p.last_handshake))
                        .collect()
                })
                .unwrap_or_default();
            let sessions_started = l
                .peers
                .iter()
                .filter(
                    |p| match (p.last_handshake, before.get(p.peer.public_key.as_str())) {
                        (Some(now_h), Some(Some(prev_h))) => {
                            now_h != *prev_h
                                && now.duration_since(*prev_h).unwrap_or_default() >= SESSION_LIFETIME
                        }
                        (Some(_), Some(None)) => true,
                        // First reading of this peer: its session is not new to us.
                        _ => false,
                    },
                )
                .count() as u64;
            ConfigSummary {
                configuration: l.link.configuration.clone(),
                peers: l.peers.len() as u64,
                active_peers: l.peers.iter().filter(|p| active(p.last_handshake)).count() as u64,
                newest_handshake_age: l.peers.iter().filter_map(|p| p.last_handshake).max().map(age),
                oldest_active_handshake_age: l
                    .peers
                    .iter()
                    .filter_map(|p| p.last_handshake)
                    .filter(|t| age(*t) < SESSION_LIFETIME)
                    .min()
                    .map(age),
                rx_bytes: l.peers.iter().map(|p| p.rx_bytes).sum(),
                tx_bytes: l.peers.iter().map(|p| p.tx_bytes).sum(),
                rx_packets: l.rx_packets,
                tx_packets: l.tx_packets,
                sessions_started,
            }
        })
        .collect()
}

/// Bytes received from pods over all links, per peer (what [`DrainWatch`] watches).
pub fn received_by_peer(reading: &Reading) -> BTreeMap<(String, String), u64> {
    reading
        .links
        .iter()
        .flat_map(|l| {
            l.peers
                .iter()
                .map(|p| ((l.link.ifname.clone(), p.peer.public_key.clone()), p.rx_bytes))
        })
        .collect()
}

/// Why a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// The load balancer was told (a probe answered 503) and no pod has sent anything for the quiet time.
    PodsMoved,
    /// Nothing to drain: no configuration is active here.
    NothingActive,
    /// The longest drain passed.
    TimedOut,
}

/// Decides when a draining gateway may stop: once the load balancer has seen its probe fail (then it moves
/// the flows, existing ones included) and its pods' traffic has stopped arriving for `quiet` (they
/// re-handshook with another gateway), or after `max` at the latest. Until then the data plane forwards
/// as before, so pods lose nothing while they move.
#[derive(Debug, Clone)]
pub struct DrainWatch {
    /// Quiet time that means the pods have moved.
    pub quiet: Duration,
    /// Longest drain.
    pub max: Duration,
    last_rx: Option<BTreeMap<(String, String), u64>>,
    /// The last reading at which something had arrived.
    last_arrival: Duration,
}

impl DrainWatch {
    /// A drain that ends after `quiet` without traffic or `max`.
    pub fn new(quiet: Duration, max: Duration) -> Self {
        DrainWatch {
            quiet,
            max,
            last_rx: None,
            last_arrival: Duration::ZERO,
        }
    }

    /// One reading, `elapsed` after the drain started: `refused` is whether a probe of an active configuration
    /// has been answered 503 since, `active` whether any configuration is active, `rx` the bytes received per
    /// peer. Returns why to stop, or `None` to keep forwarding.
    pub fn observe(
        &mut self,
        elapsed: Duration,
        active: bool,
        refused: bool,
        rx: BTreeMap<(String, String), u64>,
    ) -> Option<DrainEnd> {
        if !active {
            return Some(DrainEnd::NothingActive);
        }
        if elapsed >= self.max {
            return Some(DrainEnd::TimedOut);
        }
        let arrived = match &self.last_rx {
            None => true,
            Some(prev) => rx.iter().any(|(k, v)| prev.get(k).is_none_or(|p| v > p)),
        };
        self.last_rx = Some(rx);
        if arrived {
            self.last_arrival = elapsed;
        }
        (refused && elapsed.saturating_sub(self.last_arrival) >= self.quiet).then_some(DrainEnd::PodsMoved)
    }
}

/// Where the gateway's tunnels are read.
#[derive(Debug, Clone)]
pub struct TunnelReader {
    /// The WireGuard backend of the links.
    pub wg: WireGuard,
    /// The gateway namespace.
    pub netns: Netns,
    /// The applied links.
    pub view: TunnelView,
}

impl TunnelReader {
    async fn read(&self) -> Option<Reading> {
        let r = self.clone();
        tokio::task::spawn_blocking(move || read(&r.wg, &r.netns, &r.view.get()))
            .await
            .ok()
    }

    async fn read_flows(&self) -> Option<FlowReading> {
        let netns = self.netns.clone();
        tokio::task::spawn_blocking(move || read_flows(&netns)).await.ok()
    }
}

/// Keeps the per-configuration tunnel metrics, reading every `every` until `stop`.
pub async fn run_metrics(
    reader: TunnelReader,
    metrics: Arc<crate::metrics::Metrics>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use crate::metrics::ConfigurationLabels;
    let mut previous: Option<Reading> = None;
    let mut shown: std::collections::BTreeSet<String> = Default::default();
    loop {
        let Some(reading) = reader.read().await else {
            return;
        };
        let summaries = summarize(SystemTime::now(), &reading, previous.as_ref());
        let before: BTreeMap<String, ConfigSummary> = previous
            .as_ref()
            .map(|p| summarize(SystemTime::now(), p, None))
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.configuration.clone(), s))
            .collect();
        let mut now_shown = std::collections::BTreeSet::new();
        for s in &summaries {
            let l = ConfigurationLabels {
                configuration: s.configuration.clone(),
            };
            now_shown.insert(s.configuration.clone());
            let was = before.get(&s.configuration);
            // Counters grow by what the device counters grew; a peer or link that went away lowers the sums,
            // which is not a negative increase.
            let grow = |now: u64, was: Option<u64>| was.map_or(0, |w| now.saturating_sub(w));
            metrics.tunnel_peers.get_or_create(&l).set(s.peers as i64);
            metrics
                .tunnel_active_peers
                .get_or_create(&l)
                .set(s.active_peers as i64);
            metrics
                .tunnel_rx_bytes
                .get_or_create(&l)
                .inc_by(grow(s.rx_bytes, was.map(|w| w.rx_bytes)));
            metrics
                .tunnel_tx_bytes
                .get_or_create(&l)
                .inc_by(grow(s.tx_bytes, was.map(|w| w.tx_bytes)));
            if let Some(p) = s.rx_packets {
                metrics
                    .tunnel_rx_packets
                    .get_or_create(&l)
                    .inc_by(grow(p, was.and_then(|w| w.rx_packets)));
            }
            if let Some(p) = s.tx_packets {
                metrics
                    .tunnel_tx_packets
                    .get_or_create(&l)
                    .inc_by(grow(p, was.and_then(|w| w.tx_packets)));
            }
            metrics
                .tunnel_sessions_started
                .get_or_create(&l)
                .inc_by(s.sessions_started);
            let set_age = |f: &prometheus_client::metrics::family::Family<
                ConfigurationLabels,
                crate::metrics::FloatGauge,
            >,
                           v: Option<Duration>| match v {
                Some(d) => {
                    f.get_or_create(&l).set(d.as_secs_f64());
                }
                None => {
                    f.remove(&l);
                }
            };
            set_age(&metrics.tunnel_newest_handshake_age, s.newest_handshake_age);
            set_age(
                &metrics.tunnel_oldest_active_handshake_age,
                s.oldest_active_handshake_age,
            );
        }
        for gone in shown.difference(&now_shown) {
            let l = ConfigurationLabels {
                configuration: gone.clone(),
            };
            metrics.tunnel_peers.remove(&l);
            metrics.tunnel_active_peers.remove(&l);
            metrics.tunnel_rx_bytes.remove(&l);
            metrics.tunnel_tx_bytes.remove(&l);
            metrics.tunnel_rx_packets.remove(&l);
            metrics.tunnel_tx_packets.remove(&l);
            metrics.tunnel_sessions_started.remove(&l);
            metrics.snat_flows.remove(&l);
            metrics.tunnel_newest_handshake_age.remove(&l);
            metrics.tunnel_oldest_active_handshake_age.remove(&l);
        }
        shown = now_shown;
        if let Some(flows) = reader.read_flows().await {
            if let Some(n) = flows.total {
                metrics.conntrack_entries.set(n as i64);
            }
            if let Some(by_mark) = &flows.by_mark {
                for l in &reading.links {
                    let n = by_mark.get(&u32::from(l.link.port)).copied().unwrap_or(0);
                    metrics
                        .snat_flows
                        .get_or_create(&ConfigurationLabels {
                            configuration: l.link.configuration.clone(),
                        })
                        .set(n as i64);
                }
            }
        }
        previous = Some(reading);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
    }
}

/// Drains on shutdown: the probe already answers 503; this keeps the agent (and its node) up, forwarding,
/// until [`DrainWatch`] says the pods have moved or `max` passed. Reads the tunnels every 200 ms.
pub async fn drain(
    reader: &TunnelReader,
    probe: &super::probe::ProbeState,
    quiet: Duration,
    max: Duration,
) -> DrainEnd {
    let started = tokio::time::Instant::now();
    let mut watch = DrainWatch::new(quiet, max);
    loop {
        let rx = reader
            .read()
            .await
            .map(|r| received_by_peer(&r))
            .unwrap_or_default();
        if let Some(end) = watch.observe(started.elapsed(), probe.any_active(), probe.drain_seen(), rx) {
            return end;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::wg::PeerSpec;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn rx(n: u64) -> BTreeMap<(String, String), u64> {
        [(("wg-6000".to_string(), "k".to_string()), n)].into()
    }

    #[test]
    fn drain_waits_for_the_load_balancer_then_for_quiet() {
        let mut d = DrainWatch::new(ms(1_000), ms(30_000));
        // Traffic keeps arriving and no probe has been refused yet.
        assert_eq!(d.observe(ms(0), true, false, rx(10)), None);
        assert_eq!(d.observe(ms(400), true, false, rx(20)), None);
        assert_eq!(
            d.observe(ms(1_600), true, false, rx(20)),
            None,
            "quiet but the LB was not told"
        );
        assert_eq!(
            d.observe(ms(1_800), true, true, rx(30)),
            None,
            "told, still arriving"
        );
        assert_eq!(d.observe(ms(2_000), true, true, rx(30)), None);
        assert_eq!(d.observe(ms(2_600), true, true, rx(30)), None, "800 ms quiet");
        assert_eq!(
            d.observe(ms(2_800), true, true, rx(30)),
            Some(DrainEnd::PodsMoved)
        );
    }

    #[test]
    fn pods_already_quiet_when_the_load_balancer_is_told_end_the_drain_at_once() {
        let mut d = DrainWatch::new(ms(1_000), ms(30_000));
        assert_eq!(d.observe(ms(0), true, false, rx(10)), None);
        assert_eq!(d.observe(ms(3_000), true, false, rx(10)), None);
        assert_eq!(
            d.observe(ms(3_200), true, true, rx(10)),
            Some(DrainEnd::PodsMoved)
        );
    }

    #[test]
    fn traffic_during_the_quiet_time_restarts_it() {
        let mut d = DrainWatch::new(ms(1_000), ms(30_000));
        d.observe(ms(0), true, true, rx(10));
        assert_eq!(d.observe(ms(200), true, true, rx(10)), None);
        assert_eq!(d.observe(ms(800), true, true, rx(11)), None, "a late packet");
        assert_eq!(d.observe(ms(1_600), true, true, rx(11)), None);
        assert_eq!(
            d.observe(ms(1_800), true, true, rx(11)),
            Some(DrainEnd::PodsMoved)
        );
    }

    #[test]
    fn a_new_peer_counts_as_traffic_and_a_removed_one_does_not() {
        let mut d = DrainWatch::new(ms(1_000), ms(30_000));
        d.observe(ms(0), true, true, rx(10));
        let mut two = rx(10);
        two.insert(("wg-6000".into(), "k2".into()), 0);
        assert_eq!(d.observe(ms(800), true, true, two), None, "new peer");
        assert_eq!(d.observe(ms(1_200), true, true, BTreeMap::new()), None);
        assert_eq!(
            d.observe(ms(1_800), true, true, BTreeMap::new()),
            Some(DrainEnd::PodsMoved)
        );
    }

    #[test]
    fn drain_ends_at_once_without_configurations_and_at_the_limit_otherwise() {
        let mut d = DrainWatch::new(ms(1_000), ms(5_000));
        assert_eq!(
            d.observe(ms(0), false, false, rx(1)),
            Some(DrainEnd::NothingActive)
        );
        let mut d = DrainWatch::new(ms(1_000), ms(5_000));
        let mut n = 0;
        for t in (0..5_000).step_by(200) {
            n += 1;
            assert_eq!(d.observe(ms(t), true, true, rx(n)), None);
        }
        assert_eq!(
            d.observe(ms(5_000), true, true, rx(n + 1)),
            Some(DrainEnd::TimedOut)
        );
    }

    #[test]
    fn flows_are_counted_per_conntrack_mark() {
        // /proc/net/nf_conntrack lines as the kernel prints them (fields vary by protocol and state).
        let table = "\
ipv4     2 tcp      6 431999 ESTABLISHED src=10.244.1.5 dst=93.184.216.34 sport=40112 dport=443 src=93.184.216.34 dst=10.0.0.6 sport=443 dport=40112 [ASSURED] mark=6000 zone=0 use=2
ipv4     2 udp      17 29 src=10.244.1.5 dst=10.0.0.53 sport=5353 dport=53 [UNREPLIED] src=10.0.0.53 dst=10.0.0.6 sport=53 dport=5353 mark=6000 zone=0 use=2
ipv4     2 icmp     1 29 src=10.244.2.7 dst=1.1.1.1 type=8 code=0 id=7 src=1.1.1.1 dst=10.0.0.7 type=0 code=0 id=7 mark=6001 zone=0 use=2
ipv4     2 udp      17 170 src=10.0.0.4 dst=10.0.0.100 sport=51820 dport=6000 src=10.0.0.100 dst=10.0.0.4 sport=6000 dport=51820 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 10 TIME_WAIT src=10.244.1.5 dst=1.2.3.4 sport=1 dport=2 src=1.2.3.4 dst=10.0.0.6 sport=2 dport=1 [ASSURED] zone=0 use=2
";
        let counts = count_flows_by_mark(table.as_bytes());
        assert_eq!(counts, BTreeMap::from([(0, 1), (6000, 2), (6001, 1)]));
        assert!(count_flows_by_mark(&b""[..]).is_empty());
    }

    fn peer(key: &str, rx: u64, tx: u64, hs: Option<SystemTime>) -> PeerStats {
        PeerStats {
            peer: PeerSpec {
                public_key: key.into(),
                endpoint: None,
                allowed_ips: vec![],
            },
            persistent_keepalive: None,
            rx_bytes: rx,
            tx_bytes: tx,
            last_handshake: hs,
        }
    }

    fn reading(peers: Vec<PeerStats>) -> Reading {
        Reading {
            links: vec![LinkReading {
                link: TunnelLink {
                    ifname: "wg-6000".into(),
                    control_name: "wgg1".into(),
                    configuration: "demo/egress".into(),
                    port: 6000,
                },
                peers,
                rx_packets: Some(7),
                tx_packets: Some(5),
            }],
        }
    }

    #[test]
    fn summary_counts_peers_sessions_and_bytes() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let ago = |s: u64| Some(now - Duration::from_secs(s));
        let prev = reading(vec![
            peer("fresh", 1, 1, ago(30)),
            peer("new", 0, 0, None),
            peer("expired", 0, 0, ago(400)),
        ]);
        let cur = reading(vec![
            peer("fresh", 100, 50, ago(20)),
            peer("new", 10, 5, ago(1)),
            peer("expired", 10, 5, ago(2)),
            peer("never", 0, 0, None),
            peer("first-seen", 0, 0, ago(3)),
        ]);
        let s = summarize(now, &cur, Some(&prev));
        assert_eq!(
            s,
            vec![ConfigSummary {
                configuration: "demo/egress".into(),
                peers: 5,
                active_peers: 4,
                newest_handshake_age: Some(Duration::from_secs(1)),
                oldest_active_handshake_age: Some(Duration::from_secs(20)),
                rx_bytes: 120,
                tx_bytes: 60,
                rx_packets: Some(7),
                tx_packets: Some(5),
                sessions_started: 2,
            }]
        );
        assert_eq!(summarize(now, &cur, None)[0].sessions_started, 0);
        assert_eq!(received_by_peer(&cur).len(), 5);
    }
}
