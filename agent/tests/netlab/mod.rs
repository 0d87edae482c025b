//! The data-plane lab of the agent's tests: `testbed::netlab`'s namespaces plus what runs in them: the node
//! agent serving an in-memory cluster, gateway appliers, and the CNI chain with our plugin (bridge +
//! host-local, then kube-egress-cni). Needs root (see `testbed::netlab`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::gateway::apply::GatewayApplier;
use agent::gateway::plan::{ConfigInput, GatewayInput, PeerInput};
use agent::node::MemoryCluster;
use agent::object::NamespacedName;
use api::sgc::{
    GatewayServerProfile, RouteType, StaticGatewayConfiguration, StaticGatewayConfigurationSpec,
    StaticGatewayConfigurationStatus,
};
use dataplane::netns::Netns;
use dataplane::wg::{BackendKind, PrivateKey, WireGuard};
use serde_json::{Value, json};
#[allow(unused_imports)]
pub use testbed::netlab::{
    CNI_DIR, FRONTEND, GatewayNode, INET, INET2, Network, Stream, in_netns, probe_status, run_plugin, sh,
    wait_until,
};

/// The CNI plugin binary: `KEG_CNI_BIN` (the benchmark uses a release build), else the one next to the agent
/// binary, built from the current source first (the cni crate is not a dependency of this one, so nothing
/// else rebuilds it when it changes).
pub fn cni_bin() -> PathBuf {
    let p = std::env::var_os("KEG_CNI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let agent = Path::new(env!("CARGO_BIN_EXE_kube-egress-gateway-agent"));
            testbed::workspace_bins::built_in(agent.parent().expect("agent binary has a directory"))
                .join("kube-egress-cni")
        });
    assert!(p.exists(), "{} missing (KEG_CNI_BIN names no file?)", p.display());
    p
}

/// The agent's view of a lab gateway node.
pub trait NodeApplier {
    /// An applier for this node (a fresh one is what a restarted agent has).
    fn applier(&self) -> GatewayApplier;
}

impl NodeApplier for GatewayNode {
    fn applier(&self) -> GatewayApplier {
        GatewayApplier {
            host: Netns::named(&self.ns),
            netns_name: self.egw.clone(),
            host_interface: "eth0".into(),
            wg: WireGuard::new(BackendKind::detect()),
        }
    }
}

/// One configuration as the lab sets it up.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// SGC name (namespace `default`).
    pub name: String,
    /// UID.
    pub uid: String,
    /// Port.
    pub port: u16,
    /// Gateway private key.
    pub key: PrivateKey,
}

/// The lab: its network, and the node agent serving `cluster`. Drop stops the agent, then the network
/// removes its namespaces.
pub struct Lab {
    net: Network,
    /// The cluster the node agent serves from.
    pub cluster: MemoryCluster,
    runtime: Option<tokio::runtime::Runtime>,
    agent_stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Agent socket.
    pub socket: PathBuf,
}

impl Deref for Lab {
    type Target = Network;
    fn deref(&self) -> &Network {
        &self.net
    }
}

impl DerefMut for Lab {
    fn deref_mut(&mut self) -> &mut Network {
        &mut self.net
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(tx) = self.agent_stop.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Lab {
    /// A stream of probes every 2 ms from pod `pod` to [`INET`], returned once 100 have been answered: the
    /// path works before the test changes anything under it.
    pub fn flowing_stream(&self, pod: &str) -> Stream {
        let stream = Stream::start(
            self.path(pod),
            INET.parse().expect("addr"),
            Duration::from_millis(2),
        );
        wait_until("stream flowing", Duration::from_secs(5), || {
            stream.answered() >= 100
        });
        stream
    }

    /// The network with the node agent serving an empty cluster.
    pub fn new() -> Lab {
        let net = Network::start();
        let socket = net.tmp().join("cni.sock");
        let mut lab = Lab {
            net,
            cluster: MemoryCluster::default(),
            runtime: None,
            agent_stop: None,
            socket,
        };
        lab.start_agent();
        lab
    }

    fn start_agent(&mut self) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (c, s) = (self.cluster.clone(), self.socket.clone());
        rt.spawn(async move {
            let _ = agent::node::serve_unix(&s, c, async {
                let _ = rx.await;
            })
            .await;
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.socket.exists() {
            assert!(Instant::now() < deadline, "agent socket never appeared");
            std::thread::sleep(Duration::from_millis(5));
        }
        self.runtime = Some(rt);
        self.agent_stop = Some(tx);
    }

    /// Registers a ready configuration in the cluster.
    pub fn add_config(&self, name: &str, port: u16, mode: RouteType, exclude: &[&str]) -> LabConfig {
        let key = PrivateKey::generate();
        let mut sgc = StaticGatewayConfiguration::new(
            name,
            StaticGatewayConfigurationSpec {
                default_route: mode,
                exclude_cidrs: exclude.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        );
        sgc.status = Some(StaticGatewayConfigurationStatus {
            egress_ip_prefix: Some("20.0.0.0/31".into()),
            gateway_server_profile: Some(GatewayServerProfile {
                ip: FRONTEND.to_string(),
                port: i32::from(port),
                public_key: key.public_base64(),
                private_key_secret_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                    namespace: Some("kube-egress-gateway-system".into()),
                    name: Some(format!("sgw-{name}")),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        });
        self.cluster
            .with(|s| s.sgcs.insert(NamespacedName::new("default", name), sgc));
        LabConfig {
            name: name.into(),
            uid: format!("uid-{name}-{}", self.id),
            port,
            key,
        }
    }

    /// Runs the CNI chain (bridge + host-local, then ours) for `pod` like a runtime does.
    pub fn cni(&self, cmd: &str, pod: &str, annotations: &BTreeMap<String, String>) -> Value {
        self.cni_timed(cmd, pod, annotations).0
    }

    /// The runtime's id of `pod`'s sandbox (CNI_CONTAINERID).
    pub fn container_id(&self, pod: &str) -> String {
        format!("{}{pod}container", self.id)
    }

    /// `pod`'s uid (K8S_POD_UID, as containerd and CRI-O pass it).
    pub fn pod_uid(&self, pod: &str) -> String {
        format!("uid-{pod}-{}", self.id)
    }

    /// CNI_ARGS for the sandbox of pod `pod` with uid `uid`, as containerd writes them.
    fn cni_args(pod: &str, uid: &str, container_id: &str) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={uid}"
        )
    }

    /// Our entry exactly as the node agent writes it with its default flags, plus what a runtime adds to a
    /// list entry: the list's name and version and the enabled capability's runtimeConfig.
    fn our_conf(&self, annotations: &BTreeMap<String, String>, prev: Option<Value>) -> Value {
        let mut c = agent::node::plugin_entry(
            &api::names::DEFAULT_EXCEPTION_CIDRS.map(String::from),
            &self.socket,
        );
        c["cniVersion"] = json!("1.0.0");
        c["name"] = json!("k8s");
        c["runtimeConfig"] = json!({ dataplane::ANNOTATIONS_CAPABILITY: annotations });
        if let Some(p) = prev {
            c["prevResult"] = p;
        }
        c
    }

    /// Runs our plugin's DEL for a former sandbox of pod `pod` (another pod uid and sandbox id) whose network
    /// namespace is gone, as a node back from a partition does for a pod that moved away meanwhile.
    pub fn stale_del(&self, pod: &str, annotations: &BTreeMap<String, String>) -> Value {
        let cid = format!("{}{pod}former", self.id);
        let args = Self::cni_args(pod, &format!("uid-former-{pod}-{}", self.id), &cid);
        let gone = self.tmp().join("former-netns");
        run_plugin(
            &cni_bin(),
            &self.path("node"),
            "DEL",
            &cid,
            &gone,
            &args,
            &self.our_conf(annotations, None),
        )
    }

    /// [`Lab::cni`], also returning how long the primary plugin and ours took.
    pub fn cni_timed(
        &self,
        cmd: &str,
        pod: &str,
        annotations: &BTreeMap<String, String>,
    ) -> (Value, Duration, Duration) {
        let ours = cni_bin();
        let bridge = Path::new(CNI_DIR).join("bridge");
        let node = self.path("node");
        let podns = self.path(pod);
        let cid = self.container_id(pod);
        let args = Self::cni_args(pod, &self.pod_uid(pod), &cid);
        let primary = self.primary_plugin_conf();
        let our_conf = |prev: Option<Value>| self.our_conf(annotations, prev);
        if cmd == "ADD" {
            let t = Instant::now();
            let prev = run_plugin(&bridge, &node, "ADD", &cid, &podns, &args, &primary);
            let t_primary = t.elapsed();
            let t = Instant::now();
            let r = run_plugin(&ours, &node, "ADD", &cid, &podns, &args, &our_conf(Some(prev)));
            (r, t_primary, t.elapsed())
        } else {
            let t = Instant::now();
            let r = run_plugin(&ours, &node, "DEL", &cid, &podns, &args, &our_conf(None));
            let t_ours = t.elapsed();
            let t = Instant::now();
            run_plugin(&bridge, &node, "DEL", &cid, &podns, &args, &primary);
            (r, t.elapsed(), t_ours)
        }
    }

    /// Creates pod `role` (namespace + CNI ADD); annotated with `config` when given. Returns its IPv4.
    pub fn add_pod(&mut self, role: &str, config: Option<&str>) -> Ipv4Addr {
        self.add_ns(role);
        let ann: BTreeMap<String, String> = config
            .map(|c| BTreeMap::from([(api::names::POD_GATEWAY_ANNOTATION.to_string(), c.to_string())]))
            .unwrap_or_default();
        self.cluster
            .with(|s| s.pods.insert(NamespacedName::new("default", role), ann.clone()));
        let res = self.cni("ADD", role, &ann);
        let ip = res["ips"]
            .as_array()
            .expect("ips")
            .iter()
            .filter_map(|i| i["address"].as_str())
            .find_map(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok())
            .expect("pod IPv4");
        let has_wg = res["interfaces"]
            .as_array()
            .expect("interfaces")
            .iter()
            .any(|i| i["name"] == "wg0");
        assert_eq!(has_wg, config.is_some(), "wg0 only for annotated pods: {res}");
        ip
    }

    /// The gateway input for `configs` on `gw` with secondary IPs `secondaries`, peers from PodEndpoints.
    pub fn gateway_input(&self, gw: &GatewayNode, configs: &[(&LabConfig, Ipv4Addr)]) -> GatewayInput {
        let pes = self.cluster.with(|s| s.pod_endpoints.clone());
        GatewayInput {
            netns_name: gw.egw.clone(),
            primary_ip: gw.ip,
            frontend_ips: vec![FRONTEND],
            configs: configs
                .iter()
                .map(|(c, secondary)| ConfigInput {
                    uid: c.uid.clone(),
                    sgc: format!("default/{}", c.name),
                    port: c.port,
                    private_key: c.key.clone(),
                    secondary_ip: *secondary,
                    peers: pes
                        .iter()
                        .filter(|(_, pe)| pe.spec.static_gateway_configuration == c.name)
                        .map(|(pod, pe)| PeerInput {
                            pod_endpoint: pod.to_string(),
                            public_key: pe.spec.pod_public_key.clone(),
                            pod_ip: pe
                                .spec
                                .pod_ip_address
                                .trim_end_matches("/32")
                                .parse()
                                .expect("pod ip"),
                            created: pe.metadata.creation_timestamp.as_ref().map(|t| t.0),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}
