//! Node mode: a pod's tunnel follows its flow to another gateway without waiting for WireGuard's timers.
//!
//! When the load balancer moves a pod's flow to another gateway (the old one died or drains), the new gateway
//! shares the configuration's key but not the pod's session, and drops its packets. WireGuard on the pod only
//! starts a new handshake after "data sent, nothing received for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT" (15 s).
//! The node agent watches each pod's peer (transmit and receive counters) and, when the pod keeps sending
//! without hearing back for longer than it usually waits for an answer, restarts the peer's session
//! ([`dataplane::wg::WireGuard::restart_session`]): the pod's next packet starts a handshake, which the load balancer
//! delivers to the gateway that now has the flow. Only pods start handshakes; gateways still never do (see
//! docs/performance.md, bug 2).
//!
//! [`PeerTrack::observe`] is the whole decision, as data; [`run`] reads the devices and applies it. [`run`]
//! also gives pods their gateway's current key after a key rotation ([`super::rekey`]).
//! Bounds, so that one-way streams and quiet pods cause no handshake storm:
//! * a pod that sends nothing is never touched;
//! * the silence that counts is relative to how long this pod usually waits for answers
//!   ([`WatchSettings::slow_answer_factor`] × its measured answer delay, at least [`WatchSettings::silence`]); a
//!   pod whose answers usually take so long that the threshold reaches [`WatchSettings::give_up`] (a one-way
//!   stream hears only the gateway's keepalive, every 10 s) is left to WireGuard;
//! * after a restart whose handshake was answered but whose data still is not (the gateway is reachable; the
//!   pod's traffic is one-way or its server is silent), the next restart waits [`WatchSettings::min_interval`]
//!   doubled per such restart (up to [`WatchSettings::max_interval`]);
//! * after a restart whose handshake got no answer (the load balancer still sends the flow to the dead
//!   gateway), the next one waits [`WatchSettings::retry_interval`], so the tunnel moves within about that
//!   time of the load balancer moving the flow;
//! * at most [`WatchSettings::max_per_minute`] restarts of one peer in any 60 s that did not bring answers
//!   back; restarts that did (traffic flows again) are spaced by [`WatchSettings::min_interval`] at least, so a
//!   peer gets at most 60 s / `min_interval` restarts per minute whatever happens.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use dataplane::netns::Netns;
use dataplane::wg::{BackendKind, PeerStats, WgHandle, WireGuard};
use tokio::sync::watch;

use super::rekey::{self, GatewayKeys, Replacement};
use crate::metrics::{Metrics, PodTunnelLabels, PodTunnelStateLabels};
use crate::object::NamespacedName;

/// Thresholds of the watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSettings {
    /// How often the devices are read.
    pub poll: Duration,
    /// Shortest unanswered sending that restarts a session (pods that are usually answered at once).
    pub silence: Duration,
    /// The threshold for a pod whose answer delay is not known yet.
    pub silence_unknown: Duration,
    /// The threshold is this many times the pod's usual answer delay (when longer than `silence`).
    pub slow_answer_factor: u32,
    /// A pod whose threshold reaches this is left to WireGuard's own timers.
    pub give_up: Duration,
    /// Time between two restarts of one peer when the first one's handshake was answered, doubled per
    /// restart that did not bring data answers back.
    pub min_interval: Duration,
    /// Time between two restarts of one peer when the first one's handshake got no answer.
    pub retry_interval: Duration,
    /// Longest time between two restarts of one peer (the doubling stops here).
    pub max_interval: Duration,
    /// Most restarts of one peer in any 60 s that did not bring answers back (restarts that did are spaced
    /// by `min_interval` at least, so at most 60 s / `min_interval` of them).
    pub max_per_minute: usize,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            poll: Duration::from_millis(100),
            silence: Duration::from_millis(400),
            silence_unknown: Duration::from_secs(2),
            slow_answer_factor: 4,
            give_up: Duration::from_secs(10),
            min_interval: Duration::from_secs(2),
            retry_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(60),
            max_per_minute: 10,
        }
    }
}

/// One reading of a pod's peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Bytes sent to the gateway (handshakes included).
    pub tx: u64,
    /// Bytes received from the gateway (handshakes included).
    pub rx: u64,
    /// Last completed handshake.
    pub handshake: Option<SystemTime>,
}

/// What the pod's tunnel is doing (the `state` label of the node agent's per-pod metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TunnelState {
    /// Nothing sent since the last reading.
    Idle,
    /// Sending and hearing back.
    Answered,
    /// Sending without hearing back (not yet long enough to act, or left to WireGuard).
    Unanswered,
    /// Its session was restarted and it has not been answered since.
    Restarted,
}

impl TunnelState {
    /// Every state, for one-hot metrics.
    pub const ALL: [TunnelState; 4] = [
        TunnelState::Idle,
        TunnelState::Answered,
        TunnelState::Unanswered,
        TunnelState::Restarted,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelState::Idle => "idle",
            TunnelState::Answered => "answered",
            TunnelState::Unanswered => "unanswered",
            TunnelState::Restarted => "restarted",
        }
    }
}

/// What to do with a peer after a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Leave it.
    Keep,
    /// Restart its session: it has sent without an answer for `unanswered`.
    RestartSession {
        /// How long it had been sending without an answer.
        unanswered: Duration,
    },
}

/// What the watch remembers about one pod's peer. Times are offsets from the watch's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTrack {
    last: Sample,
    /// First reading since the last answer at which the pod had sent more.
    unanswered_since: Option<Duration>,
    /// How long this pod usually waits for an answer (smoothed), once measured.
    answer_delay: Option<Duration>,
    /// Times of the restarts of the last minute that did not bring answers back (or not yet).
    restarts: VecDeque<Duration>,
    /// Time of the last restart, confirmed or not.
    last_restart: Option<Duration>,
    /// The last restart, while it is not yet confirmed by answers.
    pending_restart: Option<Duration>,
    /// The peer's last handshake when it was restarted (a later one means the restart's handshake was answered).
    handshake_at_restart: Option<SystemTime>,
    /// Readings with answers since the pending restart.
    answered_since_restart: u32,
    /// Restarts in a row that did not bring answers back.
    strikes: u32,
    state: TunnelState,
}

impl PeerTrack {
    /// A peer first seen with `sample` (nothing is judged on a first reading).
    pub fn new(sample: Sample) -> Self {
        PeerTrack {
            last: sample,
            unanswered_since: None,
            answer_delay: None,
            restarts: VecDeque::new(),
            last_restart: None,
            pending_restart: None,
            handshake_at_restart: None,
            answered_since_restart: 0,
            strikes: 0,
            state: TunnelState::Idle,
        }
    }

    /// The state after the last reading.
    pub fn state(&self) -> TunnelState {
        self.state
    }

    /// The last reading.
    pub fn last(&self) -> Sample {
        self.last
    }

    /// How long the pod has been sending without an answer at `now`, if it is.
    pub fn unanswered_for(&self, now: Duration) -> Option<Duration> {
        self.unanswered_since.map(|t| now.saturating_sub(t))
    }

    /// The pod's usual answer delay, once measured.
    pub fn answer_delay(&self) -> Option<Duration> {
        self.answer_delay
    }

    /// The silence that restarts this peer's session, or `None` when it is left to WireGuard.
    pub fn threshold(&self, s: &WatchSettings) -> Option<Duration> {
        let t = match self.answer_delay {
            Some(d) => (d * s.slow_answer_factor).max(s.silence),
            None => s.silence_unknown,
        };
        (t < s.give_up).then_some(t)
    }

    /// Whether the pending restart's handshake has been answered (the gateway is reachable).
    fn restart_shook_hands(&self, handshake_now: Option<SystemTime>) -> bool {
        self.pending_restart.is_some()
            && handshake_now.is_some()
            && handshake_now != self.handshake_at_restart
    }

    /// The earliest time the next restart is allowed.
    fn next_restart_allowed(&self, handshake_now: Option<SystemTime>, s: &WatchSettings) -> Duration {
        let Some(last) = self.last_restart else {
            return Duration::ZERO;
        };
        let spacing = if self.pending_restart.is_none() {
            s.min_interval
        } else if self.restart_shook_hands(handshake_now) {
            s.min_interval
                .saturating_mul(1u32 << (self.strikes + 1).min(16))
                .min(s.max_interval)
        } else {
            s.retry_interval
        };
        let by_spacing = last + spacing;
        let by_rate = if self.restarts.len() >= s.max_per_minute {
            self.restarts[self.restarts.len() - s.max_per_minute] + Duration::from_secs(60)
        } else {
            Duration::ZERO
        };
        by_spacing.max(by_rate)
    }

    /// Takes a reading at `now` and decides.
    pub fn observe(&mut self, now: Duration, sample: Sample, s: &WatchSettings) -> Verdict {
        if sample.tx < self.last.tx || sample.rx < self.last.rx {
            // Counters went back: the peer was re-created. After a restart of ours the pod is still waiting:
            // its packets are queued (not counted) until the new handshake completes, so the silence keeps
            // counting from the restart. Re-created by someone else: start counting afresh. Either way what
            // was learnt about the pod is kept.
            self.last = sample;
            if self.pending_restart.is_none() {
                self.unanswered_since = None;
            }
            return Verdict::Keep;
        }
        let sent = sample.tx > self.last.tx;
        let heard = sample.rx > self.last.rx;
        self.last = sample;
        while self
            .restarts
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= Duration::from_secs(60))
        {
            self.restarts.pop_front();
        }
        if heard {
            // How long the pod waited for this answer: since its first unanswered reading, or nothing when it
            // was answered within the same reading. Answers after a restart of ours say nothing about the pod.
            let waited = match self.unanswered_since.take() {
                Some(since) if self.pending_restart.is_some_and(|r| r >= since) => None,
                Some(since) => Some(now.saturating_sub(since)),
                None => sent.then_some(Duration::ZERO),
            };
            if let Some(d) = waited {
                self.answer_delay = Some(match self.answer_delay {
                    None => d,
                    Some(a) => (a * 3 + d) / 4,
                });
            }
            if self.pending_restart.is_some() {
                // One answer may be the handshake response alone; two readings with answers mean traffic
                // flows again.
                self.answered_since_restart += 1;
                if self.answered_since_restart >= 2 {
                    // It worked: it no longer counts towards the per-minute cap, which is there against
                    // restarts that change nothing (a gateway that does not answer, a one-way stream).
                    if let Some(r) = self.pending_restart.take()
                        && let Some(i) = self.restarts.iter().rposition(|t| *t == r)
                    {
                        self.restarts.remove(i);
                    }
                    self.strikes = 0;
                }
            }
            self.state = if self.pending_restart.is_some() {
                TunnelState::Restarted
            } else if sent || self.state != TunnelState::Idle {
                TunnelState::Answered
            } else {
                TunnelState::Idle
            };
            return Verdict::Keep;
        }
        if !sent {
            if self.unanswered_since.is_none() {
                self.state = match self.state {
                    TunnelState::Restarted => TunnelState::Restarted,
                    _ => TunnelState::Idle,
                };
            }
            // Still waiting for the answer to what was sent before: keep the clock running.
        } else if self.unanswered_since.is_none() {
            self.unanswered_since = Some(now);
        }
        let Some(since) = self.unanswered_since else {
            return Verdict::Keep;
        };
        if self.state != TunnelState::Restarted {
            self.state = TunnelState::Unanswered;
        }
        let unanswered = now.saturating_sub(since);
        let Some(threshold) = self.threshold(s) else {
            return Verdict::Keep;
        };
        if unanswered < threshold || now < self.next_restart_allowed(sample.handshake, s) {
            return Verdict::Keep;
        }
        if self.restart_shook_hands(sample.handshake) {
            self.strikes += 1;
        }
        self.pending_restart = Some(now);
        self.handshake_at_restart = sample.handshake;
        self.answered_since_restart = 0;
        self.restarts.push_back(now);
        self.last_restart = Some(now);
        self.unanswered_since = Some(now);
        self.state = TunnelState::Restarted;
        Verdict::RestartSession { unanswered }
    }
}

/// The watch over every pod peer of the node, keyed by device (control name) and peer key.
#[derive(Debug, Default)]
pub struct Watch {
    /// Per peer.
    pub peers: BTreeMap<(String, String), PeerTrack>,
}

impl Watch {
    /// Takes one reading of every peer present now (peers not in `readings` are forgotten) and returns the
    /// peers whose session to restart.
    pub fn observe_all(
        &mut self,
        now: Duration,
        readings: &BTreeMap<(String, String), Sample>,
        s: &WatchSettings,
    ) -> Vec<((String, String), Duration)> {
        self.observe_present(now, readings, &BTreeSet::new(), s)
    }

    /// As [`Watch::observe_all`], but the peers of devices in `unread` (present, but their reading failed
    /// this time) are kept as they were instead of being forgotten.
    pub fn observe_present(
        &mut self,
        now: Duration,
        readings: &BTreeMap<(String, String), Sample>,
        unread: &BTreeSet<String>,
        s: &WatchSettings,
    ) -> Vec<((String, String), Duration)> {
        self.peers
            .retain(|k, _| readings.contains_key(k) || unread.contains(&k.0));
        let mut out = Vec::new();
        for (k, sample) in readings {
            match self.peers.get_mut(k) {
                None => {
                    self.peers.insert(k.clone(), PeerTrack::new(*sample));
                }
                Some(t) => {
                    if let Verdict::RestartSession { unanswered } = t.observe(now, *sample, s) {
                        out.push((k.clone(), unanswered));
                    }
                }
            }
        }
        out
    }
}

/// Pods' WireGuard public keys → `<namespace>/<name>`, recorded at CNI ADD (for the metrics' `pod` label).
#[derive(Debug, Default)]
pub struct PodNames {
    by_key: Mutex<BTreeMap<String, (String, Instant)>>,
}

/// The node agent's one registry of pod names.
pub fn pod_names() -> &'static PodNames {
    static NAMES: std::sync::OnceLock<PodNames> = std::sync::OnceLock::new();
    NAMES.get_or_init(PodNames::default)
}

impl PodNames {
    /// Records a pod's key.
    pub fn remember(&self, public_key: &str, pod: &NamespacedName) {
        let mut g = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        g.insert(public_key.to_string(), (pod.to_string(), Instant::now()));
    }
    /// The pod of a key, or empty.
    fn name(&self, public_key: &str) -> String {
        let g = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        g.get(public_key).map(|(n, _)| n.clone()).unwrap_or_default()
    }
    /// Forgets keys no device has (older than a minute, so a pod being set up is kept).
    fn retain(&self, present: &BTreeSet<String>) {
        let mut g = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        g.retain(|k, (_, at)| present.contains(k) || at.elapsed() < Duration::from_secs(60));
    }
}

/// One pod device as read.
#[derive(Debug, Clone)]
struct PodDevice {
    /// Metric label and key: the control name (userspace) or `<netns file>/<ifname>` (kernel).
    link: String,
    handle: WgHandle,
    backend: BackendKind,
    own_key: Option<String>,
    peers: Vec<PeerStats>,
}

/// The pod WireGuard devices of this node: `wireguard-go` sockets `wgp…` in `socket_dir` and, when
/// `netns_dir` is given, kernel links named `wg0` in the namespaces there (containerd's pod namespaces),
/// leaving out `skip_netns` (a gateway node's own namespace, whose links are the gateway's).
/// Also returns the devices present whose reading failed (their peers are not forgotten).
fn read_devices(
    socket_dir: &Path,
    netns_dir: Option<&Path>,
    skip_netns: &str,
) -> (Vec<PodDevice>, BTreeSet<String>) {
    let mut out = Vec::new();
    let mut unread = BTreeSet::new();
    let userspace = WireGuard::new(BackendKind::Userspace);
    for name in dataplane::wg::userspace_devices(socket_dir, "wgp") {
        let handle = WgHandle {
            netns: Netns::Current,
            ifname: name.clone(),
            control_name: name.clone(),
        };
        match userspace.device_stats(&handle) {
            Ok(dataplane::wg::DeviceStats {
                public_key, peers, ..
            }) => out.push(PodDevice {
                link: name,
                handle,
                backend: BackendKind::Userspace,
                own_key: public_key,
                peers,
            }),
            Err(e) => {
                tracing::debug!(link = %name, error = %e, "reading a pod tunnel");
                unread.insert(name);
            }
        }
    }
    let Some(dir) = netns_dir else {
        return (out, unread);
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (out, unread);
    };
    let kernel = WireGuard::new(BackendKind::Kernel);
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        if file == skip_netns {
            continue;
        }
        let handle = WgHandle {
            netns: Netns::Path(e.path()),
            ifname: "wg0".into(),
            control_name: "wg0".into(),
        };
        if let Ok(dataplane::wg::DeviceStats {
            public_key, peers, ..
        }) = kernel.device_stats(&handle)
        {
            out.push(PodDevice {
                link: format!("{file}/wg0"),
                handle,
                backend: BackendKind::Kernel,
                own_key: public_key,
                peers,
            });
        }
    }
    (out, unread)
}

/// Where the node agent finds pod devices.
#[derive(Debug, Clone)]
pub struct Devices {
    /// `wireguard-go` UAPI sockets (`/var/run/wireguard`).
    pub socket_dir: PathBuf,
    /// Pod network namespaces for kernel WireGuard (`/var/run/netns`), if the node uses it.
    pub netns_dir: Option<PathBuf>,
    /// A namespace there that is not a pod's (the gateway namespace on gateway nodes).
    pub skip_netns: String,
}

/// What re-keying one pod device did.
#[derive(Debug, Clone)]
pub struct Rekeyed {
    /// The device's link (metric label).
    pub link: String,
    /// The pod, when known.
    pub pod: String,
    /// The peers replaced.
    pub replaced: Vec<Replacement>,
    /// Why the device could not be re-keyed.
    pub error: Option<String>,
}

/// The pod devices of `read` whose gateway peers are not their configurations' current keys, each with the
/// peers to replace ([`rekey::rekey`]). Pure: a comparison per device, nothing applied.
fn stale_devices(read: &[PodDevice], keys: &GatewayKeys) -> Vec<(PodDevice, Vec<Replacement>)> {
    if keys.is_empty() {
        return Vec::new();
    }
    read.iter()
        .filter_map(|dev| {
            let peers: Vec<_> = dev.peers.iter().map(|p| p.peer.clone()).collect();
            let replaced = rekey::rekey(&peers, keys);
            (!replaced.is_empty()).then(|| (dev.clone(), replaced))
        })
        .collect()
}

/// Replaces the peers [`stale_devices`] found; blocking.
fn apply_rekeys(stale: Vec<(PodDevice, Vec<Replacement>)>) -> Vec<Rekeyed> {
    stale
        .into_iter()
        .map(|(dev, replaced)| {
            let error = WireGuard::new(dev.backend)
                .apply(&dev.handle, &rekey::change(&replaced))
                .err()
                .map(|e| e.to_string());
            Rekeyed {
                pod: dev
                    .own_key
                    .as_deref()
                    .map(|k| pod_names().name(k))
                    .unwrap_or_default(),
                link: dev.link,
                replaced,
                error,
            }
        })
        .collect()
}

/// Reads the pod devices once and re-keys those whose gateway key is not current (what every reading of
/// [`run`] does); blocking.
pub fn rekey_once(devices: &Devices, keys: &GatewayKeys) -> Vec<Rekeyed> {
    let (read, _) = read_devices(
        &devices.socket_dir,
        devices.netns_dir.as_deref(),
        &devices.skip_netns,
    );
    apply_rekeys(stale_devices(&read, keys))
}

/// Logs what re-keying did. A failure is warned about once per device and new key (`warned`), not at every
/// reading while it is retried.
fn log_rekeyed(r: &Rekeyed, warned: &mut BTreeSet<(String, String)>) {
    for rep in &r.replaced {
        let endpoint = rep.peer.endpoint.map(|e| e.to_string()).unwrap_or_default();
        let attempt = (r.link.clone(), rep.peer.public_key.clone());
        match &r.error {
            None => {
                warned.remove(&attempt);
                tracing::info!(pod = %r.pod, link = %r.link, endpoint = %endpoint, old_key = %rep.old_key, new_key = %rep.peer.public_key, "the gateway's key was rotated: replaced the pod's gateway peer")
            }
            Some(e) if warned.insert(attempt) => {
                tracing::warn!(pod = %r.pod, link = %r.link, endpoint = %endpoint, error = %e, "replacing the pod's gateway peer after a key rotation (retried at every reading)")
            }
            Some(_) => {}
        }
    }
}

/// Watches the node's pod tunnels until `stop`, restarting sessions as [`PeerTrack::observe`] decides,
/// giving pods the current gateway keys of `keys` ([`rekey`]) and keeping the per-pod metrics.
pub async fn run(
    settings: WatchSettings,
    devices: Devices,
    keys: watch::Receiver<GatewayKeys>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let start = Instant::now();
    let mut watch = Watch::default();
    let mut shown: BTreeMap<String, PodTunnelLabels> = BTreeMap::new();
    let mut quiet_logged: BTreeSet<(String, String)> = BTreeSet::new();
    let mut rekey_warned: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(settings.poll) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
        let d = devices.clone();
        let Ok((read, unread)) = tokio::task::spawn_blocking(move || {
            read_devices(&d.socket_dir, d.netns_dir.as_deref(), &d.skip_netns)
        })
        .await
        else {
            continue;
        };
        let stale = stale_devices(&read, &keys.borrow());
        if !stale.is_empty()
            && let Ok(done) = tokio::task::spawn_blocking(move || apply_rekeys(stale)).await
        {
            done.iter().for_each(|r| log_rekeyed(r, &mut rekey_warned));
        }
        let now = start.elapsed();
        let mut readings = BTreeMap::new();
        for dev in &read {
            for p in &dev.peers {
                readings.insert(
                    (dev.link.clone(), p.peer.public_key.clone()),
                    Sample {
                        tx: p.tx_bytes,
                        rx: p.rx_bytes,
                        handshake: p.last_handshake,
                    },
                );
            }
        }
        let before: BTreeMap<(String, String), Sample> =
            watch.peers.iter().map(|(k, t)| (k.clone(), t.last())).collect();
        for k in readings.keys().filter(|k| !watch.peers.contains_key(*k)) {
            tracing::info!(link = %k.0, "watching a pod tunnel");
        }
        for k in watch
            .peers
            .keys()
            .filter(|k| !readings.contains_key(*k) && !unread.contains(&k.0))
        {
            tracing::info!(link = %k.0, "pod tunnel gone");
        }
        let restarts = watch.observe_present(now, &readings, &unread, &settings);
        // A silence WireGuard will have to end by itself is worth a line (once per silence).
        for (k, t) in &watch.peers {
            let long = t.unanswered_for(now).is_some_and(|u| u >= Duration::from_secs(3));
            if long && quiet_logged.insert(k.clone()) {
                tracing::info!(
                    link = %k.0,
                    state = t.state().as_str(),
                    threshold_ms = t.threshold(&settings).map(|d| d.as_millis() as u64),
                    answer_delay_ms = t.answer_delay().map(|d| d.as_millis() as u64),
                    "pod tunnel unanswered for 3 s"
                );
            } else if !long {
                quiet_logged.remove(k);
            }
        }
        for ((link, key), unanswered) in restarts {
            let Some(dev) = read.iter().find(|d| d.link == link) else {
                continue;
            };
            let Some(peer) = dev.peers.iter().find(|p| p.peer.public_key == key).cloned() else {
                continue;
            };
            let pod = dev
                .own_key
                .as_deref()
                .map(|k| pod_names().name(k))
                .unwrap_or_default();
            let (handle, backend) = (dev.handle.clone(), dev.backend);
            let r =
                tokio::task::spawn_blocking(move || WireGuard::new(backend).restart_session(&handle, &peer))
                    .await;
            match r {
                Ok(Ok(())) => {
                    tracing::info!(pod = %pod, link = %link, unanswered_ms = unanswered.as_millis() as u64, "pod sent without an answer: restarted its tunnel session (new handshake)");
                    metrics
                        .pod_tunnel_session_restarts
                        .get_or_create(&PodTunnelLabels { pod, link })
                        .inc();
                }
                Ok(Err(e)) => {
                    metrics.pod_tunnel_session_restart_failures.inc();
                    tracing::warn!(pod = %pod, link = %link, error = %e, "restarting a tunnel session");
                }
                Err(e) => {
                    metrics.pod_tunnel_session_restart_failures.inc();
                    tracing::warn!(link = %link, error = %e, "restart task failed");
                }
            }
        }
        // Metrics: one series set per pod device.
        let wall = SystemTime::now();
        let mut present = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for dev in &read {
            let pod = dev
                .own_key
                .as_deref()
                .map(|k| pod_names().name(k))
                .unwrap_or_default();
            if let Some(k) = &dev.own_key {
                keys.insert(k.clone());
            }
            let labels = PodTunnelLabels {
                pod,
                link: dev.link.clone(),
            };
            present.insert(dev.link.clone());
            if let Some(old) = shown.insert(dev.link.clone(), labels.clone())
                && old != labels
            {
                forget(&metrics, &old);
            }
            for p in &dev.peers {
                let k = (dev.link.clone(), p.peer.public_key.clone());
                let prev = before.get(&k);
                let grow = |now: u64, was: Option<u64>| was.map_or(0, |w| now.saturating_sub(w));
                metrics
                    .pod_tunnel_rx_bytes
                    .get_or_create(&labels)
                    .inc_by(grow(p.rx_bytes, prev.map(|s| s.rx)));
                metrics
                    .pod_tunnel_tx_bytes
                    .get_or_create(&labels)
                    .inc_by(grow(p.tx_bytes, prev.map(|s| s.tx)));
                match p.last_handshake {
                    Some(t) => {
                        metrics
                            .pod_tunnel_handshake_age
                            .get_or_create(&labels)
                            .set(wall.duration_since(t).unwrap_or_default().as_secs_f64());
                    }
                    None => {
                        metrics.pod_tunnel_handshake_age.remove(&labels);
                    }
                }
                let state = watch
                    .peers
                    .get(&k)
                    .map(PeerTrack::state)
                    .unwrap_or(TunnelState::Idle);
                for st in TunnelState::ALL {
                    metrics
                        .pod_tunnel_state
                        .get_or_create(&PodTunnelStateLabels {
                            pod: labels.pod.clone(),
                            link: labels.link.clone(),
                            state: st.as_str().into(),
                        })
                        .set(i64::from(st == state));
                }
            }
        }
        shown.retain(|link, labels| {
            let keep = present.contains(link) || unread.contains(link);
            if !keep {
                forget(&metrics, labels);
            }
            keep
        });
        pod_names().retain(&keys);
    }
}

/// Removes a gone pod device's series.
fn forget(metrics: &Metrics, labels: &PodTunnelLabels) {
    metrics.pod_tunnel_handshake_age.remove(labels);
    metrics.pod_tunnel_rx_bytes.remove(labels);
    metrics.pod_tunnel_tx_bytes.remove(labels);
    metrics.pod_tunnel_session_restarts.remove(labels);
    for st in TunnelState::ALL {
        metrics.pod_tunnel_state.remove(&PodTunnelStateLabels {
            pod: labels.pod.clone(),
            link: labels.link.clone(),
            state: st.as_str().into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The shipped settings: every timeline below is written in their terms (readings every `poll`, a
    /// restart `silence` after the first unanswered reading, retries `retry_interval` apart, …).
    fn s() -> WatchSettings {
        WatchSettings::default()
    }

    /// When the flow stops being answered in the timelines below (after 10 s of [`streaming`]).
    const LOST: Duration = Duration::from_secs(10);

    /// The first restart of a stream that loses its answers at `lost`: the first unanswered reading is one
    /// poll later, the restart the first reading at least `silence` after it.
    fn first_restart(lost: Duration) -> Duration {
        let s = s();
        lost + s.poll + on_poll(s.silence)
    }

    /// `d` rounded up to whole polls (a reading sees only what happened by then).
    fn on_poll(d: Duration) -> Duration {
        let poll = s().poll;
        poll * u32::try_from(d.as_nanos().div_ceil(poll.as_nanos())).expect("a few polls")
    }

    #[test]
    fn the_defaults_restart_within_half_a_second_of_the_first_unanswered_reading() {
        let d = WatchSettings::default();
        let mut p = fresh();
        assert!(drive(&mut p, &d, ms(0), ms(10_000), |_, _| ANSWERED).is_empty());
        let restarts = drive(&mut p, &d, LOST, LOST + ms(2_000), |_, _| UNANSWERED);
        let first_unanswered = LOST + d.poll;
        assert_eq!(restarts[0], first_unanswered + d.silence);
        assert!(restarts[0] - LOST <= ms(500), "{restarts:?}");
        // The same bounds hold: the next restart waits the retry interval.
        assert_eq!(restarts[1] - restarts[0], d.retry_interval, "{restarts:?}");
        // A quiet pod and an answered stream are still never touched at this rate.
        let mut quiet = fresh();
        assert!(drive(&mut quiet, &d, ms(0), ms(60_000), |_, _| QUIET).is_empty());
        let mut answered = fresh();
        assert!(drive(&mut answered, &d, ms(0), ms(60_000), |_, _| ANSWERED).is_empty());
    }

    /// What happens in one poll step: bytes sent, bytes heard, whether a handshake completed.
    #[derive(Clone, Copy)]
    struct Step {
        tx: u64,
        rx: u64,
        shook: bool,
    }

    const ANSWERED: Step = Step {
        tx: 1000,
        rx: 1000,
        shook: false,
    };
    const UNANSWERED: Step = Step {
        tx: 1000,
        rx: 0,
        shook: false,
    };
    const QUIET: Step = Step {
        tx: 0,
        rx: 0,
        shook: false,
    };

    /// Reads the peer every `settings.poll` from `from` to `until`; `step(t, restarted_last_step)` says what the
    /// tunnel did in the step ending at t. Returns the times of the restarts.
    fn drive(
        track: &mut PeerTrack,
        settings: &WatchSettings,
        from: Duration,
        until: Duration,
        mut step: impl FnMut(Duration, bool) -> Step,
    ) -> Vec<Duration> {
        let mut out = Vec::new();
        let mut t = from;
        let mut restarted = false;
        while t < until {
            t += settings.poll;
            let st = step(t, restarted);
            let mut sample = track.last();
            sample.tx += st.tx;
            sample.rx += st.rx;
            if st.shook {
                sample.handshake = Some(SystemTime::UNIX_EPOCH + t);
            }
            restarted = matches!(track.observe(t, sample, settings), Verdict::RestartSession { .. });
            if restarted {
                out.push(t);
            }
        }
        out
    }

    fn fresh() -> PeerTrack {
        PeerTrack::new(Sample {
            tx: 1000,
            rx: 1000,
            handshake: Some(SystemTime::UNIX_EPOCH),
        })
    }

    /// A stream that has been answered for 10 s (its answer delay is known: at once).
    fn streaming() -> PeerTrack {
        let mut p = fresh();
        assert!(drive(&mut p, &s(), ms(0), LOST, |_, _| ANSWERED).is_empty());
        p
    }

    fn at_most_per_minute(restarts: &[Duration], n: usize) {
        for (i, t) in restarts.iter().enumerate() {
            let in_minute = restarts[i..]
                .iter()
                .filter(|u| **u - *t < Duration::from_secs(60))
                .count();
            assert!(in_minute <= n, "more than {n} restarts in a minute: {restarts:?}");
        }
    }

    #[test]
    fn a_quiet_pod_is_never_touched() {
        let mut p = fresh();
        assert!(drive(&mut p, &s(), ms(0), Duration::from_secs(600), |_, _| QUIET).is_empty());
        assert_eq!(p.state(), TunnelState::Idle);
    }

    #[test]
    fn an_answered_stream_is_never_touched() {
        let mut p = streaming();
        assert!(drive(&mut p, &s(), LOST, Duration::from_secs(600), |_, _| { ANSWERED }).is_empty());
        assert_eq!(p.state(), TunnelState::Answered);
        assert_eq!(p.threshold(&s()), Some(s().silence));
    }

    #[test]
    fn a_stream_that_loses_its_answers_is_restarted_after_the_silence_then_recovers() {
        let mut p = streaming();
        // The flow moves: nothing comes back from LOST on. Read until just before a retry would be due.
        let first = first_restart(LOST);
        let until = first + s().retry_interval - s().poll;
        let restarts = drive(&mut p, &s(), LOST, until, |_, _| UNANSWERED);
        assert_eq!(
            restarts,
            vec![first],
            "first unanswered reading one poll after LOST, + the silence"
        );
        assert_eq!(p.state(), TunnelState::Restarted);
        // Handshake response with the first answers, then answers: confirmed, no further restart.
        let restarts = drive(&mut p, &s(), until, ms(70_000), |_, restarted| Step {
            shook: restarted,
            ..ANSWERED
        });
        assert!(restarts.is_empty());
        assert_eq!(p.state(), TunnelState::Answered);
        assert_eq!(p.strikes, 0);
        assert_eq!(
            p.threshold(&s()),
            Some(s().silence),
            "the failover did not teach a longer delay"
        );
        // A second failover is as fast as the first.
        let restarts = drive(&mut p, &s(), ms(70_000), ms(71_000), |_, _| UNANSWERED);
        assert_eq!(restarts, vec![first_restart(ms(70_000))]);
    }

    #[test]
    fn an_unreachable_gateway_is_retried_every_second_at_most_max_per_minute() {
        let s = s();
        let mut p = streaming();
        // The gateway is gone and the load balancer has not moved the flow: handshakes go unanswered.
        let restarts = drive(&mut p, &s, LOST, ms(190_000), |_, _| UNANSWERED);
        let first = first_restart(LOST);
        assert_eq!(restarts[0], first);
        let gaps: Vec<Duration> = restarts.windows(2).map(|w| w[1] - w[0]).collect();
        let capped = s.max_per_minute - 1;
        assert!(gaps[..capped].iter().all(|g| *g == s.retry_interval), "{gaps:?}");
        assert_eq!(
            gaps[capped],
            Duration::from_secs(60) - s.retry_interval * capped as u32,
            "the restart after max_per_minute waits for the minute: {gaps:?}"
        );
        at_most_per_minute(&restarts, s.max_per_minute);
        // The load balancer moves the flow between the second and the third restart: the third reaches the
        // new gateway, which answers its handshake and from then on the pod's data.
        let third = first + s.retry_interval * 2;
        let moved = third - s.retry_interval / 2;
        let mut p = streaming();
        let restarts = drive(&mut p, &s, LOST, third + ms(7_000), |t, restarted| {
            if t < moved {
                UNANSWERED
            } else if restarted {
                Step {
                    shook: true,
                    ..ANSWERED
                }
            } else if t > third {
                ANSWERED
            } else {
                UNANSWERED
            }
        });
        assert_eq!(restarts, vec![first, first + s.retry_interval, third]);
    }

    #[test]
    fn after_a_restart_the_queued_pod_is_retried_although_its_counters_restart_and_stay_flat() {
        // What wireguard-go shows after a restart: a new peer (counters from 0) that sent one handshake
        // initiation (148 bytes) and queues the pod's packets until an answer; it retries the initiation
        // itself only after REKEY_TIMEOUT (5 s).
        let s = s();
        let mut p = streaming();
        let first = first_restart(LOST);
        let mut t = LOST;
        let mut restarts = Vec::new();
        let mut sample = p.last();
        // The pod keeps sending until half-way to the first retry.
        while t < first + s.retry_interval / 2 {
            t += s.poll;
            sample.tx += 1000;
            if p.observe(t, sample, &s) != Verdict::Keep {
                restarts.push(t);
                sample = Sample {
                    tx: 0,
                    rx: 0,
                    handshake: None,
                };
            }
        }
        assert_eq!(restarts, vec![first]);
        // From here on the counters show only the initiations (each restart starts a new peer at 148).
        let retries = 3;
        while t < first + s.retry_interval * retries + s.retry_interval / 2 {
            t += s.poll;
            if p.observe(t, sample, &s) != Verdict::Keep {
                restarts.push(t);
                sample.tx = 0;
            } else if sample.tx == 0 {
                sample.tx = 148;
            }
        }
        let expected: Vec<Duration> = (0..=retries).map(|k| first + s.retry_interval * k).collect();
        assert_eq!(restarts, expected);
        assert_eq!(p.state(), TunnelState::Restarted);
    }

    #[test]
    fn a_peer_recreated_by_someone_else_starts_a_new_silence() {
        let s = s();
        let mut p = streaming();
        let mut sample = p.last();
        sample.tx += 1000;
        assert_eq!(p.observe(LOST + s.poll, sample, &s), Verdict::Keep);
        // Not our restart: the counters restart and nothing is sent: nothing to judge, for longer than any
        // threshold of a pod whose answer delay is not known.
        let fresh = Sample {
            tx: 0,
            rx: 0,
            handshake: None,
        };
        let readings = u32::try_from(on_poll(s.silence_unknown).as_nanos() / s.poll.as_nanos()).expect("few");
        for i in 0..readings * 2 {
            assert_eq!(p.observe(LOST + s.poll * (i + 2), fresh, &s), Verdict::Keep);
        }
    }

    #[test]
    fn restarts_whose_handshake_is_answered_but_not_the_data_back_off_doubling() {
        let s = s();
        let mut p = streaming();
        // The gateway answers handshakes but the pod's data never gets answers (and no keepalive either).
        let restarts = drive(&mut p, &s, LOST, ms(400_000), |_, restarted| Step {
            tx: 1000,
            rx: if restarted { 92 } else { 0 },
            shook: restarted,
        });
        let gaps: Vec<Duration> = restarts.windows(2).map(|w| w[1] - w[0]).collect();
        // min_interval doubled per restart whose handshake was answered, up to max_interval (2 s: 4, 8, 16,
        // 32 s, then 60 s).
        let doubling: Vec<Duration> = (1..)
            .map(|k| s.min_interval * 2u32.pow(k))
            .take_while(|g| *g < s.max_interval)
            .collect();
        assert_eq!(doubling.len(), 4, "the shipped settings double four times");
        assert_eq!(gaps[..doubling.len()], doubling[..], "{gaps:?}");
        assert!(
            gaps[doubling.len()..].iter().all(|g| *g == s.max_interval),
            "{gaps:?}"
        );
        at_most_per_minute(&restarts, s.max_per_minute);
    }

    #[test]
    fn the_rate_cap_holds_whatever_the_traffic() {
        let settings = s();
        let mut p = streaming();
        // Worst case for the spacing: every restart is confirmed (two readings with answers right after it),
        // then the answers stop again.
        let mut after_restart = 0u32;
        let restarts = drive(&mut p, &settings, LOST, ms(250_000), |_, restarted| {
            if restarted {
                after_restart = 0;
            }
            after_restart += 1;
            Step {
                tx: 100,
                rx: if after_restart <= 2 { 100 } else { 0 },
                shook: restarted,
            }
        });
        // Restarts that work are not capped by max_per_minute, only spaced by min_interval.
        assert!(restarts.len() > settings.max_per_minute);
        at_most_per_minute(&restarts, 60_000 / settings.min_interval.as_millis() as usize);
        assert!(
            restarts.windows(2).all(|w| w[1] - w[0] >= settings.min_interval),
            "{restarts:?}"
        );
    }

    #[test]
    fn repeated_failovers_that_each_work_are_not_held_back_by_the_cap() {
        // A gateway flaps: every 5 s the flow moves and the restart brings the answers back.
        let mut p = streaming();
        let mut restarts = Vec::new();
        for k in 0..30u64 {
            let from = LOST + ms(5_000 * k);
            restarts.extend(drive(&mut p, &s(), from, from + ms(1_000), |_, _| UNANSWERED));
            drive(
                &mut p,
                &s(),
                from + ms(1_000),
                from + ms(5_000),
                |_, restarted| Step {
                    shook: restarted,
                    ..ANSWERED
                },
            );
        }
        assert_eq!(restarts.len(), 30, "one restart per failover: {restarts:?}");
        let after_move = first_restart(LOST) - LOST;
        assert!(
            restarts
                .iter()
                .all(|t| (*t - LOST).as_millis() % 5_000 == after_move.as_millis()),
            "each as fast as the first: {restarts:?}"
        );
    }

    #[test]
    fn a_one_way_stream_settles_to_no_restarts() {
        // The pod streams; the gateway answers only with its keepalive, 10 s after the last thing it sent
        // (a handshake response counts), and with a handshake response right after each restart.
        let mut p = fresh();
        let mut since_gateway_sent = Duration::ZERO;
        let restarts = drive(&mut p, &s(), ms(0), Duration::from_secs(600), |_, restarted| {
            since_gateway_sent += s().poll;
            let keepalive = since_gateway_sent >= Duration::from_secs(10);
            if restarted || keepalive {
                since_gateway_sent = Duration::ZERO;
            }
            Step {
                tx: 1000,
                rx: if restarted {
                    92
                } else if keepalive {
                    32
                } else {
                    0
                },
                shook: restarted,
            }
        });
        assert!(restarts.len() <= 4, "{restarts:?}");
        assert!(
            restarts.iter().all(|t| *t < Duration::from_secs(60)),
            "{restarts:?}"
        );
        assert_eq!(p.threshold(&s()), None, "left to WireGuard");
    }

    #[test]
    fn slow_answers_raise_the_threshold_and_are_not_restarted() {
        let s = s();
        let mut p = fresh();
        // Request/response: a request every 2 s, each answered 1 s later (both on readings).
        let (every, answer_delay) = (ms(2_000), ms(1_000));
        let restarts = drive(&mut p, &s, ms(0), ms(60_000), |t, _| {
            let phase = t.as_nanos() % every.as_nanos();
            if phase == 0 {
                Step { tx: 100, ..QUIET }
            } else if phase == answer_delay.as_nanos() {
                Step { rx: 100, ..QUIET }
            } else {
                QUIET
            }
        });
        assert!(restarts.is_empty(), "{restarts:?}");
        assert_eq!(p.threshold(&s), Some(answer_delay * s.slow_answer_factor));
        assert_eq!(p.threshold(&s), Some(ms(4_000)));
    }

    #[test]
    fn recreated_peers_restart_counting() {
        let mut p = streaming();
        let reset = Sample {
            tx: 10,
            rx: 0,
            handshake: None,
        };
        assert_eq!(p.observe(LOST + s().poll, reset, &s()), Verdict::Keep);
        assert_eq!(p.last(), reset);
    }

    #[test]
    fn the_watch_forgets_peers_that_are_gone_and_judges_only_known_ones() {
        let mut w = Watch::default();
        let key = |d: &str| (d.to_string(), "k".to_string());
        let sample = |tx, rx| Sample {
            tx,
            rx,
            handshake: None,
        };
        let s = s();
        let mut r = BTreeMap::new();
        r.insert(key("a"), sample(10, 10));
        assert!(w.observe_all(ms(0), &r, &s).is_empty());
        let (mut tx, mut out) = (10, Vec::new());
        // Answered for a while (the answer delay becomes known), then unanswered until just before a retry.
        let answered = 10;
        let to_restart = on_poll(s.silence).as_nanos() / s.poll.as_nanos();
        let readings = answered + 1 + u32::try_from(to_restart).expect("a few readings");
        for i in 1..=readings + 2 {
            tx += 100;
            let rx = if i <= answered { tx } else { 1010 };
            r.insert(key("a"), sample(tx, rx));
            out.extend(w.observe_all(s.poll * i, &r, &s));
        }
        assert_eq!(out, vec![(key("a"), on_poll(s.silence))]);
        r.clear();
        r.insert(key("b"), sample(1, 1));
        assert!(w.observe_all(s.poll * (readings + 3), &r, &s).is_empty());
        assert_eq!(w.peers.keys().cloned().collect::<Vec<_>>(), vec![key("b")]);
    }
}
