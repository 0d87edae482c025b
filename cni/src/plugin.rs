//! ADD / DEL / CHECK / VERSION, and STATUS / GC (CNI 1.1.0).
//!
//! Safety properties:
//! * A pod without the annotation is passed through untouched. When the runtime hands over pod annotations
//!   (capability `io.kubernetes.cri.pod-annotations`), the agent is not even contacted, so plain pods never
//!   depend on our agent being up.
//! * An annotated pod either gets its tunnel and routes, or ADD fails and everything done so far is undone:
//!   it never silently egresses via the node.
//! * DEL is idempotent and succeeds when nothing is left to remove.
//! * ADD and DEL tell the agent their sandbox (CNI_CONTAINERID, and K8S_POD_UID when the runtime gives it):
//!   a DEL removes only the PodEndpoint its own sandbox made, never that of a newer pod of the same name.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use api::names::{POD_GATEWAY_ANNOTATION, POD_INGRESS_MARK, POD_INGRESS_TABLE, POD_WG_INTERFACE, fnv1a64};
use api::sgc::RouteType;
use serde_json::{Value, json};

use crate::conf::{self, CniError, K8sArgs, NetConf, SUPPORTED_VERSIONS};
use crate::routes::{self, PodPlanInput};
use dataplane::client::DEFAULT_SOCKET;
use dataplane::netlink::delete_link_if_present;
use dataplane::netns::Netns;
use dataplane::proto::{
    self, DefaultRoute, NicAddRequest, NicDelRequest, PodInfo, PodRetrieveRequest, SandboxInfo,
};
use dataplane::wg::{BackendKind, DeviceChange, PeerSpec, PrivateKey, WireGuard};

/// The CNI environment.
#[derive(Debug, Clone, Default)]
pub struct CniEnv {
    /// CNI_COMMAND.
    pub command: String,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_NETNS.
    pub netns: String,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_ARGS.
    pub args: String,
}

impl CniEnv {
    /// Reads the process environment.
    pub fn from_env() -> Self {
        let v = |k: &str| std::env::var(k).unwrap_or_default();
        CniEnv {
            command: v("CNI_COMMAND"),
            container_id: v("CNI_CONTAINERID"),
            netns: v("CNI_NETNS"),
            ifname: v("CNI_IFNAME"),
            args: v("CNI_ARGS"),
        }
    }
}

/// Runs one invocation; returns what to print on stdout, or the error to print.
pub async fn run(env: &CniEnv, stdin: &[u8]) -> Result<Value, (CniError, String)> {
    if env.command == "VERSION" {
        return Ok(json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS}));
    }
    let conf = NetConf::parse(stdin).map_err(|e| (e, "1.0.0".to_string()))?;
    let version = conf.cni_version.clone();
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err((
            CniError::new(
                CniError::INCOMPATIBLE_VERSION,
                "incompatible CNI version",
                format!("cniVersion {version:?} is not one of {SUPPORTED_VERSIONS:?}"),
            ),
            version,
        ));
    }
    let r = match env.command.as_str() {
        "ADD" => add(env, &conf).await,
        "DEL" => del(env, &conf).await,
        "CHECK" => check(env, &conf).await,
        "STATUS" => since_1_1("STATUS", &conf).and_then(|()| status()),
        "GC" => since_1_1("GC", &conf).and_then(|()| gc(&conf)),
        other => Err(CniError::new(
            CniError::INVALID_CONFIG,
            "unknown CNI_COMMAND",
            format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
        )),
    };
    r.map_err(|e| (e, version))
}

fn socket(conf: &NetConf) -> PathBuf {
    if conf.socket_path.is_empty() {
        PathBuf::from(DEFAULT_SOCKET)
    } else {
        PathBuf::from(&conf.socket_path)
    }
}

fn pod_info(k8s: &K8sArgs) -> PodInfo {
    PodInfo {
        pod_name: k8s.pod_name.clone(),
        pod_namespace: k8s.pod_namespace.clone(),
    }
}

/// The sandbox this invocation is about: the agent records it at ADD and deletes at DEL only what it made.
fn sandbox_info(env: &CniEnv, k8s: &K8sArgs) -> SandboxInfo {
    SandboxInfo {
        container_id: env.container_id.clone(),
        pod_uid: k8s.pod_uid.clone(),
    }
}

fn agent_err(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(CniError::AGENT, format!("node agent: {what}"), e.to_string())
}

fn dp_err(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(CniError::DATAPLANE, what.to_string(), e.to_string())
}

/// The configuration the pod names, from the runtime's annotations or else from the agent.
async fn gateway_of(conf: &NetConf, k8s: &K8sArgs) -> Result<Option<String>, CniError> {
    let annotations: BTreeMap<String, String> = match conf.runtime_annotations() {
        Some(a) => a,
        None => {
            let mut c = dataplane::client::connect(socket(conf), Duration::from_secs(3))
                .await
                .map_err(|e| agent_err("cannot read pod annotations (runtime did not provide them)", e))?;
            c.pod_retrieve(PodRetrieveRequest {
                pod_config: Some(pod_info(k8s)),
            })
            .await
            .map_err(|e| agent_err("PodRetrieve", e.message()))?
            .into_inner()
            .annotations
            .into_iter()
            .collect()
        }
    };
    Ok(annotations
        .get(POD_GATEWAY_ANNOTATION)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty()))
}

/// Name the pod's WireGuard link is created with (and its UAPI socket name), for the sandbox `container_id`
/// attached to the network `network` (the configuration's `name`): [`network_prefix`] of the network, then a
/// hash of the sandbox, so one sandbox on two networks chaining the plugin has two names. GC of one network
/// touches only the names it recorded ([`owned_dir`]).
pub fn control_name(network: &str, container_id: &str) -> String {
    format!(
        "{}{:08x}",
        network_prefix(network),
        fnv1a64(container_id.as_bytes()) & 0xffff_ffff
    )
}

/// The first 7 characters of every [`control_name`] of the network `network`: `wgp` and 4 hex digits of a
/// hash of its name.
pub fn network_prefix(network: &str) -> String {
    format!("wgp{:04x}", fnv1a64(network.as_bytes()) & 0xffff)
}

/// The name versions before [`control_name`] carried its network gave the pod link of the sandbox
/// `container_id` (and its UAPI socket): `wgp` and 12 hex digits of a hash of the sandbox, whatever the
/// network. GC leaves such names alone (they do not carry a network); DEL of that sandbox removes them.
pub fn pre_upgrade_control_name(container_id: &str) -> String {
    format!("wgp{:012x}", fnv1a64(container_id.as_bytes()) & 0xffff_ffff_ffff)
}

/// The pod link's [`control_name`] of this invocation.
fn pod_control_name(env: &CniEnv, conf: &NetConf) -> String {
    control_name(&conf.name, &env.container_id)
}

/// Where ADD records that it is creating a pod link, before it creates it: an empty file named after the
/// link ([`control_name`]), whose modification time says when. GC leaves a link whose record is younger than
/// [`GC_GRACE`] (its ADD may still be running); ADD removes the record when it is done.
pub const ADDING_DIR: &str = "/run/kube-egress-cni/adding";

/// Where the plugin records the pod link names the network `network` owns: an empty file per name, written by
/// ADD before it creates the link and removed by DEL, or by GC once what the name stands for is gone. Under
/// `/run/kube-egress-cni/` in a directory named by the full 64-bit hash of the network's name: GC of one
/// network touches only the names recorded there, never another network's (the 16-bit [`network_prefix`]
/// of two networks may be the same).
pub fn owned_dir(network: &str) -> PathBuf {
    PathBuf::from(RECORDS_ROOT).join(format!("{:016x}", fnv1a64(network.as_bytes())))
}

/// The directory of the plugin's records (ADD records and each network's owned names).
pub const RECORDS_ROOT: &str = "/run/kube-egress-cni";

/// Records in [`owned_dir`] that the network `network` owns link `name` (best effort: without it GC leaves
/// that name's leftovers to the DEL of its sandbox).
fn record_owned(network: &str, name: &str) {
    let dir = owned_dir(network);
    if let Err(e) = write_record(&dir, name) {
        eprintln!("kube-egress-cni: recording {name} in {}: {e}", dir.display());
    }
}

/// Records in [`ADDING_DIR`] that ADD is creating link `name`; the record's path, when it could be written
/// (best effort: without it only a GC racing this ADD could take its link).
fn record_adding(name: &str) -> Option<PathBuf> {
    match write_record(std::path::Path::new(ADDING_DIR), name) {
        Ok(path) => Some(path),
        Err(e) => {
            eprintln!("kube-egress-cni: recording {name} in {ADDING_DIR}: {e}");
            None
        }
    }
}

/// Writes the empty record `dir/name` (its modification time now) and returns its path. `dir` and any missing
/// parent are created 0700 (only root, as the plugin runs, writes there); the record is opened without
/// following a symbolic link, so one planted in its place cannot make the plugin truncate another file.
fn write_record(dir: &std::path::Path, name: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&path)?;
    Ok(path)
}

async fn add(env: &CniEnv, conf: &NetConf) -> Result<Value, CniError> {
    let Some(prev) = conf.prev_result.as_ref() else {
        return Err(CniError::new(
            CniError::INVALID_CONFIG,
            "missing prevResult",
            "kube-egress-cni is a chained plugin: list it after the primary plugin in a .conflist",
        ));
    };
    let k8s = K8sArgs::parse(&env.args);
    if !k8s.is_pod() {
        return Ok(conf::passthrough(Some(prev), &conf.cni_version));
    }
    let Some(gateway) = gateway_of(conf, &k8s).await? else {
        return Ok(conf::passthrough(Some(prev), &conf.cni_version));
    };
    check_host_tools()?;
    // The ADD record first: a GC that finds the owned name must also find it young, or it would take the link
    // this ADD is making.
    let record = record_adding(&pod_control_name(env, conf));
    record_owned(&conf.name, &pod_control_name(env, conf));
    let mut undo = Undo::new(env, conf, &k8s);
    let added = match add_annotated(env, conf, &k8s, &gateway, prev, &mut undo).await {
        Ok(v) => {
            undo.disarm();
            Ok(v)
        }
        Err(e) => {
            undo.run().await;
            Err(e)
        }
    };
    // Done: the link has left the node's namespace, or it is deleted.
    if let Some(path) = record {
        let _ = std::fs::remove_file(path);
    }
    added
}

async fn add_annotated(
    env: &CniEnv,
    conf: &NetConf,
    k8s: &K8sArgs,
    gateway: &str,
    prev: &Value,
    undo: &mut Undo,
) -> Result<Value, CniError> {
    let eth = if env.ifname.is_empty() {
        "eth0"
    } else {
        env.ifname.as_str()
    };
    let pod_ip = conf::pod_ipv4(prev, eth)?.pod_ipv4;
    let cni_excluded = routes::parse_cidrs("excludedCIDRs (CNI config)", &conf.excluded_cidrs)
        .map_err(|e| CniError::new(CniError::INVALID_CONFIG, "invalid network configuration", e))?;
    let podns = Netns::Path(PathBuf::from(&env.netns));
    if !podns.exists() {
        return Err(dp_err(
            "pod network namespace",
            format!("CNI_NETNS {:?} does not exist", env.netns),
        ));
    }
    let eth_gw = default_gateway(&podns, eth)?;
    undo.eth_routes = Some(
        podns
            .ip_json(&["-4", "route", "show", "dev", eth])
            .map_err(|e| dp_err("read routes", e))?,
    );
    let addr6 = link_local_of(&podns, eth, pod_ip);

    let kind = match conf.wireguard_backend.as_deref() {
        Some(s) => BackendKind::parse(s)
            .map_err(|e| CniError::new(CniError::INVALID_CONFIG, "invalid network configuration", e))?,
        None => BackendKind::detect(),
    };
    let wg = WireGuard::new(kind);
    let key = PrivateKey::generate();
    let handle = wg
        .create_and_move(
            &Netns::Current,
            &pod_control_name(env, conf),
            &podns,
            POD_WG_INTERFACE,
        )
        .map_err(|e| dp_err("create wg0", e))?;
    undo.wg_created = true;

    let mut client = dataplane::client::connect(socket(conf), Duration::from_secs(3))
        .await
        .map_err(|e| agent_err("unreachable", e))?;
    undo.nic_added = true;
    let resp = client
        .nic_add(NicAddRequest {
            pod_config: Some(pod_info(k8s)),
            listen_port: 0,
            allowed_ip: format!("{pod_ip}/32"),
            public_key: key.public_base64(),
            gateway_name: gateway.to_string(),
            sandbox: Some(sandbox_info(env, k8s)),
        })
        .await
        .map_err(|e| agent_err("NicAdd", e.message()))?
        .into_inner();
    let sgc = format!("{}/{gateway}", k8s.pod_namespace);
    let endpoint_ip: IpAddr = resp.endpoint_ip.parse().map_err(|_| {
        agent_err(
            "NicAdd",
            format!("gateway {sgc}: endpoint_ip {:?} is not an IP", resp.endpoint_ip),
        )
    })?;
    let port = u16::try_from(resp.listen_port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            agent_err(
                "NicAdd",
                format!("gateway {sgc}: listen_port {} out of range", resp.listen_port),
            )
        })?;
    let sgc_cidrs = routes::parse_cidrs(&format!("excludeCidrs of {sgc}"), &resp.exception_cidrs)
        .map_err(|e| CniError::new(CniError::INVALID_CONFIG, "invalid StaticGatewayConfiguration", e))?;
    let mode = match proto::DefaultRoute::try_from(resp.default_route) {
        Ok(DefaultRoute::AzureNetworking) => RouteType::AzureNetworking,
        _ => RouteType::StaticEgressGateway,
    };

    wg.apply(
        &handle,
        &DeviceChange {
            private_key: Some(key),
            upsert_peers: vec![PeerSpec {
                public_key: resp.public_key.clone(),
                endpoint: Some(dataplane::wg::endpoint(endpoint_ip, port)),
                allowed_ips: vec![
                    "0.0.0.0/0".parse().map_err(|e| dp_err("cidr", e))?,
                    "::/0".parse().map_err(|e| dp_err("cidr", e))?,
                ],
            }],
            ..Default::default()
        },
    )
    .map_err(|e| dp_err("configure wg0", e))?;
    let dp = |e| dp_err("configure pod network", e);
    podns
        .ip(&[
            "-6",
            "addr",
            "replace",
            &format!("{addr6}/64"),
            "dev",
            POD_WG_INTERFACE,
            "nodad",
        ])
        .map_err(dp)?;
    podns.ip(&["link", "set", POD_WG_INTERFACE, "up"]).map_err(dp)?;

    let plan = routes::pod_plan(&PodPlanInput {
        default_route: mode,
        sgc_exception_cidrs: &sgc_cidrs,
        cni_excluded_cidrs: &cni_excluded,
        eth,
        eth_gateway: eth_gw,
    });
    undo.pod_rules = true;
    podns.nft(&plan.nft).map_err(dp)?;
    for (k, v) in &plan.sysctls {
        podns.sysctl(k, v).map_err(dp)?;
    }
    podns
        .ip(&["-4", "route", "replace"]
            .iter()
            .map(|s| s.to_string())
            .chain(plan.ingress_default.ip_args())
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>())
        .map_err(dp)?;
    ensure_ingress_rule(&podns).map_err(dp)?;
    if plan.flush_eth0_routes {
        podns
            .ip(&["-4", "route", "flush", "dev", eth, "table", "main"])
            .map_err(dp)?;
    }
    for r in &plan.routes {
        let mut a: Vec<String> = vec!["-4".into(), "route".into(), "replace".into()];
        a.extend(r.ip_args());
        podns
            .ip(&a.iter().map(String::as_str).collect::<Vec<_>>())
            .map_err(dp)?;
    }
    Ok(conf::add_wg_to_result(
        prev,
        &conf.cni_version,
        POD_WG_INTERFACE,
        &env.netns,
        &format!("{addr6}/64"),
    ))
}

fn ensure_ingress_rule(ns: &Netns) -> Result<(), dataplane::netns::CmdError> {
    let rules = ns.ip_json(&["-4", "rule", "show"])?;
    let present = rules.as_array().is_some_and(|a| {
        a.iter().any(|r| {
            r["table"].as_str() == Some(&POD_INGRESS_TABLE.to_string())
                && r["fwmark"].as_str() == Some(&format!("{POD_INGRESS_MARK:#x}"))
        })
    });
    if !present {
        ns.ip(&[
            "-4",
            "rule",
            "add",
            "fwmark",
            &format!("{POD_INGRESS_MARK:#x}"),
            "lookup",
            &POD_INGRESS_TABLE.to_string(),
        ])?;
    }
    Ok(())
}

fn default_gateway(ns: &Netns, eth: &str) -> Result<Ipv4Addr, CniError> {
    let routes = ns
        .ip_json(&["-4", "route", "show", "default", "dev", eth])
        .map_err(|e| dp_err("read routes", e))?;
    routes
        .as_array()
        .and_then(|a| a.iter().find_map(|r| r["gateway"].as_str()?.parse().ok()))
        .ok_or_else(|| {
            dp_err(
                "failed to find default route",
                format!("no IPv4 default route via a gateway on {eth}"),
            )
        })
}

/// eth0's IPv6 link-local address, as upstream's IPAM assigns it to wg0; derived from the pod IP if absent.
fn link_local_of(ns: &Netns, eth: &str, pod_ip: Ipv4Addr) -> Ipv6Addr {
    let found = ns
        .ip_json(&["-6", "addr", "show", "dev", eth, "scope", "link"])
        .ok()
        .and_then(|v| {
            v.as_array()?.iter().find_map(|l| {
                l["addr_info"]
                    .as_array()?
                    .iter()
                    .find_map(|a| a["local"].as_str()?.parse::<Ipv6Addr>().ok())
            })
        });
    found.unwrap_or_else(|| {
        let o = pod_ip.octets();
        Ipv6Addr::new(
            0xfe80,
            0,
            0,
            0,
            0,
            0x0a,
            u16::from_be_bytes([o[0], o[1]]),
            u16::from_be_bytes([o[2], o[3]]),
        )
    })
}

/// Everything ADD did, undone in reverse on failure.
#[derive(Debug)]
struct Undo {
    env: CniEnv,
    /// The pod link's [`control_name`].
    control_name: String,
    socket: PathBuf,
    k8s: K8sArgs,
    armed: bool,
    wg_created: bool,
    nic_added: bool,
    pod_rules: bool,
    eth_routes: Option<Value>,
}

impl Undo {
    fn new(env: &CniEnv, conf: &NetConf, k8s: &K8sArgs) -> Self {
        Undo {
            env: env.clone(),
            control_name: pod_control_name(env, conf),
            socket: socket(conf),
            k8s: k8s.clone(),
            armed: true,
            wg_created: false,
            nic_added: false,
            pod_rules: false,
            eth_routes: None,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }

    async fn run(&mut self) {
        if !self.armed {
            return;
        }
        let podns = Netns::Path(PathBuf::from(&self.env.netns));
        if self.pod_rules {
            remove_pod_rules(&podns);
            if let Some(routes) = self.eth_routes.take().and_then(|v| v.as_array().cloned()) {
                restore_routes(&podns, &routes);
            }
        }
        if self.wg_created {
            let _ = podns.ip(&["link", "del", POD_WG_INTERFACE]);
            let _ = Netns::Current.ip(&["link", "del", &self.control_name]);
        }
        if self.nic_added {
            nic_del(&self.socket, &self.k8s, sandbox_info(&self.env, &self.k8s)).await;
        }
    }
}

fn restore_routes(ns: &Netns, routes: &[Value]) {
    // Routes without a gateway first, so routes via a gateway find it reachable.
    let mut sorted: Vec<&Value> = routes.iter().collect();
    sorted.sort_by_key(|r| r.get("gateway").is_some());
    for r in sorted {
        let (Some(dst), Some(dev)) = (r["dst"].as_str(), r["dev"].as_str()) else {
            continue;
        };
        let dst = if dst == "default" { "0.0.0.0/0" } else { dst };
        let mut a = vec!["-4", "route", "replace", dst, "dev", dev];
        if let Some(g) = r["gateway"].as_str() {
            a.extend(["via", g]);
        }
        if let Some(s) = r["prefsrc"].as_str() {
            a.extend(["src", s]);
        }
        if let Some(s) = r["scope"].as_str() {
            a.extend(["scope", s]);
        }
        let _ = ns.ip(&a);
    }
}

fn remove_pod_rules(ns: &Netns) {
    let _ = ns.nft(&dataplane::nft::delete_table_script());
    let _ = ns.ip(&["-4", "route", "flush", "table", &POD_INGRESS_TABLE.to_string()]);
    let _ = ns.ip(&[
        "-4",
        "rule",
        "del",
        "fwmark",
        &format!("{POD_INGRESS_MARK:#x}"),
        "lookup",
        &POD_INGRESS_TABLE.to_string(),
    ]);
}

async fn nic_del(socket: &std::path::Path, k8s: &K8sArgs, sandbox: SandboxInfo) {
    match dataplane::client::connect(socket.to_path_buf(), Duration::from_secs(2)).await {
        Ok(mut c) => {
            if let Err(e) = c
                .nic_del(NicDelRequest {
                    pod_config: Some(pod_info(k8s)),
                    sandbox: Some(sandbox),
                })
                .await
            {
                eprintln!(
                    "kube-egress-cni: NicDel {}/{}: {}",
                    k8s.pod_namespace,
                    k8s.pod_name,
                    e.message()
                );
            }
        }
        Err(e) => eprintln!("kube-egress-cni: NicDel skipped: {e}"),
    }
}

async fn del(env: &CniEnv, conf: &NetConf) -> Result<Value, CniError> {
    let k8s = K8sArgs::parse(&env.args);
    let podns = Netns::Path(PathBuf::from(&env.netns));
    // Both look-ups are netlink requests, not `ip` processes: for a plain pod they find nothing, and DEL
    // costs little more than the plugin's own process start.
    let mut had_tunnel = false;
    if !env.netns.is_empty() && podns.exists() {
        had_tunnel = match delete_link_if_present(&podns, POD_WG_INTERFACE).await {
            Ok(removed) => removed,
            Err(e) => {
                // Unknown: clean up as if there were a tunnel (every step is idempotent).
                eprintln!("kube-egress-cni: DEL {POD_WG_INTERFACE}: {e}");
                true
            }
        };
        if had_tunnel {
            remove_pod_rules(&podns);
        }
    }
    // A link left in the host namespace by an interrupted ADD, of this version or of one before the upgrade
    // (whose names GC does not know), and that earlier ADD's userspace tunnel.
    let earlier = pre_upgrade_control_name(&env.container_id);
    let mut failed = Vec::new();
    for ctl in [pod_control_name(env, conf), earlier.clone()] {
        if let Err(e) = delete_link_if_present(&Netns::Current, &ctl).await {
            failed.push(format!("{ctl}: {e}"));
        }
    }
    remove_if_present(
        &dataplane::wg::userspace_socket_dir().join(format!("{earlier}.sock")),
        &mut failed,
    );
    // The ADD record of an ADD that was killed (a runtime's timeout) or failed before removing it: GC, which
    // looks only at owned names, would not find it once the owned record below is gone.
    remove_if_present(
        &std::path::Path::new(ADDING_DIR).join(pod_control_name(env, conf)),
        &mut failed,
    );
    // This network's record that it owns the name, once what it stands for is gone (else GC retries).
    if failed.is_empty() {
        remove_if_present(
            &owned_dir(&conf.name).join(pod_control_name(env, conf)),
            &mut failed,
        );
    }
    for f in failed {
        eprintln!("kube-egress-cni: DEL {f}");
    }
    let annotated = match conf.runtime_annotations() {
        Some(a) => a.contains_key(POD_GATEWAY_ANNOTATION),
        None => true, // unknown: ask the agent to delete (idempotent there)
    };
    // Sent even when the namespace is gone (its tunnel with it): the agent deletes the PodEndpoint only if
    // this sandbox made it, so a late DEL of a stale sandbox leaves a newer pod of the same name alone.
    if k8s.is_pod() && (had_tunnel || annotated) {
        nic_del(&socket(conf), &k8s, sandbox_info(env, &k8s)).await;
    }
    Ok(json!({"cniVersion": conf.cni_version}))
}

async fn check(env: &CniEnv, conf: &NetConf) -> Result<Value, CniError> {
    let annotated = conf
        .runtime_annotations()
        .is_some_and(|a| a.contains_key(POD_GATEWAY_ANNOTATION));
    if annotated {
        let podns = Netns::Path(PathBuf::from(&env.netns));
        if !podns.link_exists(POD_WG_INTERFACE).unwrap_or(false) {
            return Err(dp_err(
                "check",
                format!("{POD_WG_INTERFACE} is missing in {}", env.netns),
            ));
        }
    }
    Ok(conf::passthrough(conf.prev_result.as_ref(), &conf.cni_version))
}

/// STATUS and GC exist from CNI 1.1.0 on: a runtime must not send them with an older configuration.
fn since_1_1(command: &str, conf: &NetConf) -> Result<(), CniError> {
    let older = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"].contains(&conf.cni_version.as_str());
    if older {
        return Err(CniError::new(
            CniError::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!(
                "{command} needs cniVersion 1.1.0 or later, the configuration has {:?}",
                conf.cni_version
            ),
        ));
    }
    Ok(())
}

/// The node's programs ADD and DEL run (docs/install.md lists them): found on `PATH` as the runtime runs us.
pub const HOST_TOOLS: [&str; 4] = ["ip", "nft", "nsenter", "sysctl"];

/// The [`HOST_TOOLS`] not found as executable files in the directories of `path` (a `PATH` value).
pub fn missing_tools(path: &std::ffi::OsStr) -> Vec<&'static str> {
    use std::os::unix::fs::PermissionsExt as _;
    let dirs: Vec<PathBuf> = std::env::split_paths(path).collect();
    HOST_TOOLS
        .into_iter()
        .filter(|tool| {
            !dirs.iter().any(|d| {
                std::fs::metadata(d.join(tool))
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
        })
        .collect()
}

/// The programs an annotated pod's ADD runs, checked before it changes anything: one that is missing fails the
/// ADD with error 50, "the plugin is not available", naming it, instead of failing half-way.
fn check_host_tools() -> Result<(), CniError> {
    let missing = missing_tools(&std::env::var_os("PATH").unwrap_or_default());
    if missing.is_empty() {
        return Ok(());
    }
    Err(CniError::new(
        CniError::NOT_AVAILABLE,
        "the plugin is not available",
        format!(
            "missing on the node's PATH: {} (docs/install.md lists what the plugin needs)",
            missing.join(", ")
        ),
    ))
}

/// STATUS: always ready (success prints nothing). A runtime that calls STATUS (containerd 2) reports the
/// node's whole pod network not ready while it fails, yet only annotated pods need anything beyond the plugin
/// itself: the node agent (away while it restarts, in a rolling upgrade) and the node's programs (checked by
/// their ADD, which then fails with error 50 naming what is missing). Pods without the annotation pass
/// through either way, so neither may take the node's pod network down.
fn status() -> Result<Value, CniError> {
    Ok(Value::Null)
}

/// How old what ADD made for a sandbox of no valid attachment must be before GC removes it: an ADD still
/// running when the runtime listed its attachments is not in the list yet.
const GC_GRACE: Duration = Duration::from_secs(60);

/// GC: removes what ADD made in the host namespace for a sandbox the runtime no longer has: a pod link left
/// there by an interrupted ADD (`wgp…`, [`control_name`]) and a userspace pod tunnel's UAPI socket, which ends
/// its `wireguard-go` and, with it, the pod's `wg0`. Only names this network owns ([`owned_dir`]: ADD records
/// a name there before it creates the link) are touched: `cni.dev/valid-attachments` lists this network's
/// attachments only, and what another network's chained instance of the plugin made is that network's GC's.
/// A name whose UAPI socket or ADD record ([`ADDING_DIR`]) is younger than [`GC_GRACE`] is left for the next GC
/// (its ADD may still be running). A stale name's ownership record goes once its link, socket and ADD record
/// are gone. Whatever sits in a pod's network namespace goes with that namespace. Best effort: every leftover
/// is tried, and the ones that could not be removed are reported together.
fn gc(conf: &NetConf) -> Result<Value, CniError> {
    let Some(valid) = conf.valid_attachments.as_ref() else {
        return Err(CniError::new(
            CniError::INVALID_CONFIG,
            "invalid network configuration",
            "GC needs cni.dev/valid-attachments (an empty list when no attachment is valid)",
        ));
    };
    // A name of an earlier version ([`pre_upgrade_control_name`]) is never recorded: GC ignores it, and the
    // DEL of its sandbox removes it.
    let keep: std::collections::BTreeSet<String> = valid
        .iter()
        .map(|a| control_name(&conf.name, &a.container_id))
        .collect();
    let owned = owned_dir(&conf.name);
    let dir = dataplane::wg::userspace_socket_dir();
    let adding = PathBuf::from(ADDING_DIR);
    let young_file = |path: PathBuf| {
        std::fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().map_or(true, |age| age < GC_GRACE))
    };
    let young = |name: &str| young_file(dir.join(format!("{name}.sock"))) || young_file(adding.join(name));
    let stale: Vec<String> = std::fs::read_dir(&owned)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_control_name(n) && !keep.contains(n) && !young(n))
        .collect();
    if stale.is_empty() {
        return Ok(Value::Null);
    }
    let links = Netns::Current
        .ip_json(&["link", "show"])
        .map_err(|e| dp_err("GC: list links", e))?;
    let has_link = |name: &str| {
        links
            .as_array()
            .into_iter()
            .flatten()
            .any(|l| l["ifname"].as_str() == Some(name))
    };
    let mut failed = Vec::new();
    for name in &stale {
        let before = failed.len();
        if has_link(name)
            && let Err(e) = Netns::Current.ip(&["link", "del", name])
        {
            failed.push(format!("link {name}: {e}"));
        }
        for path in [dir.join(format!("{name}.sock")), adding.join(name)] {
            remove_if_present(&path, &mut failed);
        }
        if failed.len() == before {
            remove_if_present(&owned.join(name), &mut failed);
        }
    }
    if failed.is_empty() {
        Ok(Value::Null)
    } else {
        Err(dp_err("GC: stale pod tunnels left", failed.join("; ")))
    }
}

/// Removes the file `path` when it is there; a failure is added to `failed`.
fn remove_if_present(path: &std::path::Path, failed: &mut Vec<String>) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => failed.push(format!("{}: {e}", path.display())),
    }
}

/// Whether `name` has the shape of a [`control_name`].
fn is_control_name(name: &str) -> bool {
    name.len() == 15
        && name.starts_with("wgp")
        && name[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_written_in_a_0700_directory_and_never_through_a_symbolic_link() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("run").join("adding");
        let path = write_record(&dir, "wgp0000aaaaaaaa").expect("record");
        assert_eq!(path, dir.join("wgp0000aaaaaaaa"));
        for d in [&dir, &tmp.path().join("run")] {
            let mode = std::fs::metadata(d).expect("dir").permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        // Written again (a retried ADD): the record is renewed.
        write_record(&dir, "wgp0000aaaaaaaa").expect("record again");

        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"keep").expect("victim");
        std::os::unix::fs::symlink(&victim, dir.join("wgp0000bbbbbbbb")).expect("symlink");
        write_record(&dir, "wgp0000bbbbbbbb").expect_err("a symbolic link is not followed");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"keep");
    }

    #[test]
    fn control_names_are_valid_unique_interface_names_prefixed_by_their_network() {
        let a = control_name("k8s", "abc");
        let b = control_name("k8s", "abd");
        assert_ne!(a, b);
        assert_eq!(a.len(), 15);
        assert!(is_control_name(&a), "{a}");
        assert!(a.starts_with(&network_prefix("k8s")), "{a}");
        assert_eq!(control_name("k8s", ""), control_name("k8s", ""));
        let other = control_name("macvlan-net", "abc");
        assert_ne!(other, a, "one sandbox on two networks: two names");
        assert!(!other.starts_with(&network_prefix("k8s")), "{other}");
    }

    #[tokio::test]
    async fn version_lists_supported_versions() {
        let env = CniEnv {
            command: "VERSION".into(),
            ..Default::default()
        };
        let v = run(&env, b"").await.expect("version");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(
            v["supportedVersions"]
                .as_array()
                .expect("list")
                .iter()
                .any(|x| x == "0.4.0")
        );
    }

    #[tokio::test]
    async fn unsupported_version_is_error_code_1() {
        let env = CniEnv {
            command: "ADD".into(),
            ..Default::default()
        };
        let (e, _) = run(&env, br#"{"cniVersion":"9.9.9","type":"kube-egress-cni"}"#)
            .await
            .expect_err("bad version");
        assert_eq!(e.code, CniError::INCOMPATIBLE_VERSION);
    }

    #[tokio::test]
    async fn add_without_prev_result_is_rejected() {
        let env = CniEnv {
            command: "ADD".into(),
            args: "K8S_POD_NAME=a;K8S_POD_NAMESPACE=b".into(),
            ..Default::default()
        };
        let (e, _) = run(&env, br#"{"cniVersion":"1.0.0","type":"kube-egress-cni"}"#)
            .await
            .expect_err("not chained");
        assert_eq!(e.msg, "missing prevResult");
    }

    #[tokio::test]
    async fn plain_pod_passes_through_with_agent_down_when_runtime_gives_annotations() {
        let env = CniEnv {
            command: "ADD".into(),
            args: "K8S_POD_NAME=a;K8S_POD_NAMESPACE=b".into(),
            netns: "/nonexistent".into(),
            ifname: "eth0".into(),
            ..Default::default()
        };
        let conf = br#"{"cniVersion":"1.0.0","type":"kube-egress-cni","socketPath":"/nonexistent/agent.sock",
            "runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"other":"x"}},
            "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}}"#;
        let v = run(&env, conf).await.expect("passthrough");
        assert_eq!(v["ips"][0]["address"], "10.0.0.2/24");
    }

    #[tokio::test]
    async fn unknown_annotations_with_agent_down_fail_closed() {
        let env = CniEnv {
            command: "ADD".into(),
            args: "K8S_POD_NAME=a;K8S_POD_NAMESPACE=b".into(),
            ..Default::default()
        };
        let conf = br#"{"cniVersion":"1.0.0","type":"kube-egress-cni","socketPath":"/nonexistent/agent.sock",
            "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}}"#;
        let (e, _) = run(&env, conf).await.expect_err("must not guess");
        assert_eq!(e.code, CniError::AGENT);
    }

    #[tokio::test]
    async fn bare_address_in_excluded_cidrs_is_an_invalid_config_error_naming_the_field() {
        let env = CniEnv {
            command: "ADD".into(),
            container_id: "bare".into(),
            args: "K8S_POD_NAME=a;K8S_POD_NAMESPACE=b".into(),
            netns: "/nonexistent/ns".into(),
            ifname: "eth0".into(),
        };
        let conf = br#"{"cniVersion":"1.0.0","type":"kube-egress-cni","socketPath":"/nonexistent/agent.sock",
            "excludedCIDRs":["10.0.0.0/8","169.254.169.254"],
            "runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"kubernetes.azure.com/static-gateway-configuration":"gw"}},
            "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.0.0.2/24","interface":0}]}}"#;
        let (e, version) = run(&env, conf).await.expect_err("bare address refused");
        assert_eq!(e.code, CniError::INVALID_CONFIG);
        assert!(
            e.details.contains("excludedCIDRs") && e.details.contains("\"169.254.169.254\""),
            "{e}"
        );
        let printed = e.to_json(&version);
        assert_eq!(printed["code"], 7);
        assert_eq!(printed["cniVersion"], "1.0.0");
    }

    #[tokio::test]
    async fn del_of_nothing_succeeds_even_with_agent_down() {
        let env = CniEnv {
            command: "DEL".into(),
            container_id: "gone".into(),
            netns: "/nonexistent/ns".into(),
            args: "K8S_POD_NAME=a;K8S_POD_NAMESPACE=b".into(),
            ..Default::default()
        };
        let v = run(
            &env,
            br#"{"cniVersion":"0.4.0","type":"kube-egress-cni","socketPath":"/nonexistent/agent.sock"}"#,
        )
        .await
        .expect("idempotent DEL");
        assert_eq!(v["cniVersion"], "0.4.0");
    }
}
