//! Node mode: the CNI plugin's server (gRPC over a 0600 unix socket) and CNI configuration installation.
//!
//! The Kubernetes side is behind [`Cluster`] so the data-plane logic is testable without an API server.

pub mod kube_cluster;
pub mod ownership;
pub mod peer_watch;
pub mod rekey;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use api::internal::{PodEndpoint, PodEndpointSpec};
use api::names::{CNI_PLUGIN_TYPE, POD_GATEWAY_ANNOTATION};
use api::sgc::{RouteType, StaticGatewayConfiguration};
use dataplane::proto::nic_service_server::{NicService, NicServiceServer};
use dataplane::proto::{
    DefaultRoute, NicAddRequest, NicAddResponse, NicDelRequest, NicDelResponse, PodInfo, PodRetrieveRequest,
    PodRetrieveResponse,
};
use kube::api::Preconditions;
use serde_json::{Value, json};
use tonic::{Request, Response, Status};

use crate::error::{ClusterError, CniConfigError, FileError, ServeError};
use crate::object::NamespacedName;
use ownership::Sandbox;

/// What node mode needs from Kubernetes.
#[tonic::async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// A pod's annotations; `None` when the pod does not exist.
    async fn pod_annotations(
        &self,
        pod: &NamespacedName,
    ) -> Result<Option<BTreeMap<String, String>>, ClusterError>;
    /// A configuration; `None` when absent.
    async fn sgc(&self, config: &NamespacedName) -> Result<Option<StaticGatewayConfiguration>, ClusterError>;
    /// Creates or updates the pod's PodEndpoint (owned by the pod), recording the sandbox that wrote it. A
    /// sandbox naming another pod uid than the live pod's is refused ([`ClusterError::PodReplaced`]).
    async fn upsert_pod_endpoint(&self, registration: &Registration) -> Result<(), ClusterError>;
    /// The pod's PodEndpoint; `None` when absent.
    async fn pod_endpoint(&self, pod: &NamespacedName) -> Result<Option<PodEndpoint>, ClusterError>;
    /// Deletes the pod's PodEndpoint, only if it still is the version `expected` names (when given).
    async fn delete_pod_endpoint(
        &self,
        pod: &NamespacedName,
        expected: Option<&Preconditions>,
    ) -> Result<Deletion, ClusterError>;
}

/// What a NicAdd registers: the pod's WireGuard peer (its PodEndpoint's spec), and from which sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The pod, whose name the PodEndpoint takes.
    pub pod: NamespacedName,
    /// The peer: configuration, pod IP, public key.
    pub spec: PodEndpointSpec,
    /// The sandbox whose CNI ADD asks.
    pub sandbox: Sandbox,
}

/// What a conditional delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// Deleted.
    Deleted,
    /// There was nothing to delete.
    Absent,
    /// The object is no longer the version the precondition named (re-created or rewritten); kept.
    Changed,
}

/// In-memory cluster (tests, simulations).
#[derive(Debug, Default, Clone)]
pub struct MemoryCluster {
    inner: Arc<Mutex<MemoryState>>,
}

/// Contents of a [`MemoryCluster`].
#[derive(Debug, Default)]
pub struct MemoryState {
    /// Pod → its annotations.
    pub pods: BTreeMap<NamespacedName, BTreeMap<String, String>>,
    /// Configurations.
    pub sgcs: BTreeMap<NamespacedName, StaticGatewayConfiguration>,
    /// Pod → its PodEndpoint (owned by the sandbox's pod uid when the plugin gave it; uid and resourceVersion
    /// assigned as the API server does).
    pub pod_endpoints: BTreeMap<NamespacedName, PodEndpoint>,
    /// Writes so far: the source of uids and resourceVersions.
    pub writes: u64,
    /// Runs once right after the next PodEndpoint read, before the reader acts on it: where tests make a
    /// concurrent writer's change land.
    pub after_next_read: Option<fn(&mut MemoryState, &NamespacedName)>,
}

impl MemoryState {
    /// Stores a PodEndpoint as the API server would: a new resourceVersion, its uid kept across updates.
    pub fn put_pod_endpoint(&mut self, mut pe: PodEndpoint) {
        let id = NamespacedName::of(&pe.metadata);
        self.writes += 1;
        pe.metadata.resource_version = Some(self.writes.to_string());
        pe.metadata.uid = Some(match self.pod_endpoints.get(&id) {
            Some(old) => old.metadata.uid.clone().unwrap_or_default(),
            None => format!("memory-{}", self.writes),
        });
        self.pod_endpoints.insert(id, pe);
    }
}

impl MemoryCluster {
    /// Runs `f` with the state locked.
    pub fn with<T>(&self, f: impl FnOnce(&mut MemoryState) -> T) -> T {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }
}

#[tonic::async_trait]
impl Cluster for MemoryCluster {
    async fn pod_annotations(
        &self,
        pod: &NamespacedName,
    ) -> Result<Option<BTreeMap<String, String>>, ClusterError> {
        Ok(self.with(|s| s.pods.get(pod).cloned()))
    }
    async fn sgc(&self, config: &NamespacedName) -> Result<Option<StaticGatewayConfiguration>, ClusterError> {
        Ok(self.with(|s| s.sgcs.get(config).cloned()))
    }
    async fn upsert_pod_endpoint(&self, r: &Registration) -> Result<(), ClusterError> {
        let owner = (!r.sandbox.pod_uid.is_empty()).then_some(r.sandbox.pod_uid.as_str());
        let pe = ownership::pod_endpoint(&r.pod, owner, r.spec.clone(), &r.sandbox);
        self.with(|s| s.put_pod_endpoint(pe));
        Ok(())
    }
    async fn pod_endpoint(&self, pod: &NamespacedName) -> Result<Option<PodEndpoint>, ClusterError> {
        Ok(self.with(|s| {
            let read = s.pod_endpoints.get(pod).cloned();
            if let Some(concurrently) = s.after_next_read.take() {
                concurrently(s, pod);
            }
            read
        }))
    }
    async fn delete_pod_endpoint(
        &self,
        pod: &NamespacedName,
        expected: Option<&Preconditions>,
    ) -> Result<Deletion, ClusterError> {
        Ok(self.with(|s| {
            let Some(live) = s.pod_endpoints.get(pod) else {
                return Deletion::Absent;
            };
            if let Some(p) = expected {
                let differs = |want: &Option<String>, have: &Option<String>| want.is_some() && want != have;
                if differs(&p.uid, &live.metadata.uid)
                    || differs(&p.resource_version, &live.metadata.resource_version)
                {
                    return Deletion::Changed;
                }
            }
            s.pod_endpoints.remove(pod);
            Deletion::Deleted
        }))
    }
}

/// Reads and conditional deletes a NicDel tries while the PodEndpoint keeps changing under it.
const DELETE_ATTEMPTS: u32 = 5;

/// The NicService implementation.
#[derive(Debug)]
pub struct NicServer<C> {
    cluster: C,
}

impl<C: Cluster> NicServer<C> {
    /// A server over `cluster`.
    pub fn new(cluster: C) -> Self {
        NicServer { cluster }
    }
}

/// The pod a request is about.
fn pod_of(p: Option<PodInfo>) -> Result<NamespacedName, Status> {
    let p = p.ok_or_else(|| Status::invalid_argument("pod_config: required"))?;
    if p.pod_name.is_empty() || p.pod_namespace.is_empty() {
        return Err(Status::invalid_argument(
            "pod_config: pod_name and pod_namespace are required",
        ));
    }
    Ok(NamespacedName::new(p.pod_namespace, p.pod_name))
}

#[tonic::async_trait]
impl<C: Cluster> NicService for NicServer<C> {
    async fn nic_add(&self, req: Request<NicAddRequest>) -> Result<Response<NicAddResponse>, Status> {
        let r = req.into_inner();
        let pod = pod_of(r.pod_config)?;
        let sandbox = Sandbox::from_request(r.sandbox);
        let gw = r.gateway_name.trim();
        if gw.contains('/') {
            return Err(Status::permission_denied(format!(
                "pod {pod}: annotation {POD_GATEWAY_ANNOTATION}={gw:?} names a configuration of another \
                 namespace; a pod can only use configurations of its own namespace"
            )));
        }
        if !api::rules::is_dns1123_subdomain(gw) {
            return Err(Status::invalid_argument(format!(
                "pod {pod}: annotation {POD_GATEWAY_ANNOTATION}={gw:?} is not a valid object name"
            )));
        }
        let allowed: ipnet::Ipv4Net = r.allowed_ip.parse().map_err(|_| {
            Status::invalid_argument(format!("allowed_ip: {:?} is not an IPv4 /32", r.allowed_ip))
        })?;
        if allowed.prefix_len() != 32 {
            return Err(Status::invalid_argument(format!(
                "allowed_ip: {:?} must be a /32",
                r.allowed_ip
            )));
        }
        if wireguard_control::Key::from_base64(&r.public_key).is_err() {
            return Err(Status::invalid_argument("public_key: not a base64 WireGuard key"));
        }
        // A pod can only use configurations of its own namespace.
        let config = NamespacedName::new(pod.namespace.as_str(), gw);
        let sgc = self
            .cluster
            .sgc(&config)
            .await
            .map_err(|e| {
                Status::unknown(format!(
                    "failed to retrieve StaticGatewayConfiguration {config}: {e}"
                ))
            })?
            .ok_or_else(|| Status::not_found(format!("StaticGatewayConfiguration {config} not found")))?;
        let Some(profile) = sgc
            .status
            .as_ref()
            .filter(|st| st.is_ready_for_pods())
            .and_then(|st| st.gateway_server_profile.clone())
        else {
            return Err(Status::failed_precondition(format!(
                "StaticGatewayConfiguration {config}: the egress IP prefix is not ready yet"
            )));
        };
        let registration = Registration {
            pod: pod.clone(),
            spec: PodEndpointSpec {
                static_gateway_configuration: gw.to_string(),
                pod_ip_address: allowed.to_string(),
                pod_public_key: r.public_key.clone(),
            },
            sandbox,
        };
        self.cluster
            .upsert_pod_endpoint(&registration)
            .await
            .map_err(|e| {
                let msg = format!("failed to update PodEndpoint {pod}: {e}");
                match e {
                    ClusterError::PodReplaced { .. } => Status::failed_precondition(msg),
                    _ => Status::unknown(msg),
                }
            })?;
        peer_watch::pod_names().remember(&r.public_key, &pod);
        Ok(Response::new(NicAddResponse {
            endpoint_ip: profile.ip,
            listen_port: profile.port,
            public_key: profile.public_key,
            exception_cidrs: sgc.spec.exclude_cidrs.clone(),
            default_route: match sgc.spec.default_route {
                RouteType::AzureNetworking => DefaultRoute::AzureNetworking as i32,
                RouteType::StaticEgressGateway => DefaultRoute::StaticEgressGateway as i32,
            },
        }))
    }

    /// Deletes the PodEndpoint only when the DEL's sandbox and pod made it ([`ownership::may_delete`]), and
    /// only the version judged: re-created or rewritten in between, it is read and judged again.
    async fn nic_del(&self, req: Request<NicDelRequest>) -> Result<Response<NicDelResponse>, Status> {
        let r = req.into_inner();
        let pod = pod_of(r.pod_config)?;
        let sandbox = Sandbox::from_request(r.sandbox);
        let failed = |e: ClusterError| Status::unknown(format!("failed to delete PodEndpoint {pod}: {e}"));
        if sandbox.is_unknown() {
            // An older plugin: by name, as it always did.
            self.cluster
                .delete_pod_endpoint(&pod, None)
                .await
                .map_err(failed)?;
            return Ok(Response::new(NicDelResponse {}));
        }
        for _ in 0..DELETE_ATTEMPTS {
            let Some(pe) = self.cluster.pod_endpoint(&pod).await.map_err(failed)? else {
                return Ok(Response::new(NicDelResponse {}));
            };
            if let Err(keep) = ownership::may_delete(&pe, &sandbox) {
                tracing::info!(pod = %pod, sandbox = %sandbox.container_id, reason = %keep, "CNI DEL left the PodEndpoint in place");
                return Ok(Response::new(NicDelResponse {}));
            }
            let expected = ownership::precondition(&pe);
            match self
                .cluster
                .delete_pod_endpoint(&pod, Some(&expected))
                .await
                .map_err(failed)?
            {
                Deletion::Deleted | Deletion::Absent => return Ok(Response::new(NicDelResponse {})),
                Deletion::Changed => continue,
            }
        }
        Err(failed(ClusterError::Conflicts {
            what: format!("delete PodEndpoint {pod}"),
            attempts: DELETE_ATTEMPTS,
        }))
    }

    async fn pod_retrieve(
        &self,
        req: Request<PodRetrieveRequest>,
    ) -> Result<Response<PodRetrieveResponse>, Status> {
        let pod = pod_of(req.into_inner().pod_config)?;
        let ann = self
            .cluster
            .pod_annotations(&pod)
            .await
            .map_err(|e| Status::unknown(format!("failed to retrieve pod {pod}: {e}")))?
            .ok_or_else(|| Status::not_found(format!("pod {pod} not found")))?;
        Ok(Response::new(PodRetrieveResponse {
            annotations: ann.into_iter().collect(),
        }))
    }
}

/// Serves the NicService on a unix socket with mode 0600 until `shutdown` resolves.
pub async fn serve_unix<C: Cluster>(
    socket: &Path,
    cluster: C,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(FileError::at("create", dir))?;
    }
    // Bind under a temporary name, restrict it, then rename it into place: the socket never exists at its
    // published path with the umask's wider mode, and whoever sees the path sees it 0600.
    let mut tmp = socket.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    for stale in [tmp.as_path(), socket] {
        match std::fs::remove_file(stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(FileError::at("remove stale", stale)(e).into()),
        }
    }
    let listener = tokio::net::UnixListener::bind(&tmp).map_err(FileError::at("bind", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(FileError::at("chmod 0600", &tmp))?;
    std::fs::rename(&tmp, socket).map_err(FileError::at("rename to", socket))?;
    tonic::transport::Server::builder()
        .add_service(NicServiceServer::new(NicServer::new(cluster)))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await?;
    Ok(())
}

/// Our plugin entry in the CNI configuration list.
pub fn plugin_entry(excluded_cidrs: &[String], socket: &Path) -> Value {
    json!({
        "type": CNI_PLUGIN_TYPE,
        "excludedCIDRs": excluded_cidrs,
        "socketPath": socket.display().to_string(),
        "capabilities": {dataplane::ANNOTATIONS_CAPABILITY: true},
    })
}

/// Builds our conflist from the primary configuration: `.conflist` gets our entry at `plugins[1]` (any
/// previous entry of ours removed), a single-plugin `.conf`/`.json` is converted to a list.
pub fn chained_conflist(file_name: &str, primary: &Value, entry: &Value) -> Result<Value, CniConfigError> {
    let file = || file_name.to_string();
    let obj = primary
        .as_object()
        .ok_or_else(|| CniConfigError::NotObject { file: file() })?;
    if file_name.ends_with(".conflist") {
        let plugins = obj
            .get("plugins")
            .ok_or_else(|| CniConfigError::NoPlugins { file: file() })?
            .as_array()
            .ok_or_else(|| CniConfigError::PluginsNotArray { file: file() })?;
        if plugins.is_empty() {
            return Err(CniConfigError::EmptyPlugins { file: file() });
        }
        let mut kept = Vec::with_capacity(plugins.len() + 1);
        for p in plugins {
            let t = p
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| CniConfigError::NoType { file: file() })?;
            if t != CNI_PLUGIN_TYPE {
                kept.push(p.clone());
            }
        }
        kept.insert(1.min(kept.len()), entry.clone());
        let mut out = primary.clone();
        out["plugins"] = Value::Array(kept);
        Ok(out)
    } else {
        if obj.get("type").and_then(Value::as_str).is_none() {
            return Err(CniConfigError::NoType { file: file() });
        }
        let mut plugin = obj.clone();
        let name = plugin.remove("name").unwrap_or(Value::from(""));
        let version = plugin.remove("cniVersion").unwrap_or(Value::from("1.0.0"));
        Ok(json!({"name": name, "cniVersion": version, "plugins": [Value::Object(plugin), entry]}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::sgc::{GatewayServerProfile, StaticGatewayConfigurationSpec, StaticGatewayConfigurationStatus};
    use dataplane::proto::SandboxInfo;

    fn entry() -> Value {
        plugin_entry(&["169.254.169.254/32".into()], Path::new("/run/keg/cni.sock"))
    }

    #[test]
    fn conflist_gets_our_plugin_second_and_drops_old_copies() {
        let primary = json!({"cniVersion":"1.0.0","name":"k8s","plugins":[
            {"type":"bridge"},{"type":"kube-egress-cni","old":true},{"type":"portmap"}]});
        let out = chained_conflist("10-bridge.conflist", &primary, &entry()).expect("valid");
        let types: Vec<&str> = out["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .map(|p| p["type"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(types, vec!["bridge", "kube-egress-cni", "portmap"]);
        assert!(out["plugins"][1].get("old").is_none());
        assert_eq!(
            out["plugins"][1]["capabilities"]["io.kubernetes.cri.pod-annotations"],
            true
        );
        assert_eq!(out["name"], "k8s");
    }

    #[test]
    fn conf_is_converted_to_a_list() {
        let primary = json!({"cniVersion":"0.4.0","name":"net","type":"bridge","bridge":"cni0"});
        let out = chained_conflist("10-bridge.conf", &primary, &entry()).expect("valid");
        assert_eq!(out["cniVersion"], "0.4.0");
        assert_eq!(out["name"], "net");
        assert_eq!(out["plugins"][0], json!({"type":"bridge","bridge":"cni0"}));
        assert_eq!(out["plugins"][1]["type"], "kube-egress-cni");
    }

    #[test]
    fn malformed_primaries_are_named_errors() {
        let e = |f: &str, v: Value| {
            chained_conflist(f, &v, &entry())
                .expect_err("invalid")
                .to_string()
        };
        assert_eq!(
            e("a.conflist", json!({})),
            "failed to find plugins in cni config file a.conflist"
        );
        assert_eq!(
            e("a.conflist", json!({"plugins": 1})),
            "plugins field is not an array in a.conflist"
        );
        assert_eq!(
            e("a.conflist", json!({"plugins": []})),
            "empty plugin list in cni config file a.conflist"
        );
        assert_eq!(
            e("a.conflist", json!({"plugins": [{}]})),
            "failed to find type in plugin conf in file a.conflist"
        );
        assert_eq!(
            e("a.conf", json!({"name": "x"})),
            "failed to find type in plugin conf in file a.conf"
        );
    }

    fn ready_sgc(mode: RouteType) -> StaticGatewayConfiguration {
        let mut s = StaticGatewayConfiguration::new(
            "gw",
            StaticGatewayConfigurationSpec {
                default_route: mode,
                exclude_cidrs: vec!["1.2.3.0/24".into()],
                ..Default::default()
            },
        );
        s.status = Some(StaticGatewayConfigurationStatus {
            egress_ip_prefix: Some("20.0.0.0/31".into()),
            gateway_server_profile: Some(GatewayServerProfile {
                ip: "10.0.0.100".into(),
                port: 6000,
                public_key: wireguard_control::Key::generate_private()
                    .get_public()
                    .to_base64(),
                private_key_secret_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                    namespace: Some("kube-egress-gateway-system".into()),
                    name: Some("sgw-uid-gw".into()),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        });
        s
    }

    fn add_req(gw: &str) -> NicAddRequest {
        NicAddRequest {
            pod_config: Some(PodInfo {
                pod_name: "p".into(),
                pod_namespace: "ns".into(),
            }),
            listen_port: 0,
            allowed_ip: "10.244.0.5/32".into(),
            public_key: wireguard_control::Key::generate_private()
                .get_public()
                .to_base64(),
            gateway_name: gw.into(),
            sandbox: None,
        }
    }

    fn sandbox(container_id: &str, pod_uid: &str) -> Option<SandboxInfo> {
        Some(SandboxInfo {
            container_id: container_id.into(),
            pod_uid: pod_uid.into(),
        })
    }

    /// NicAdd of ns/p on configuration `gw` from `sandbox`.
    fn add_from(sandbox: Option<SandboxInfo>) -> Request<NicAddRequest> {
        Request::new(NicAddRequest {
            sandbox,
            ..add_req("gw")
        })
    }

    /// NicDel of ns/p from `sandbox`.
    fn del_from(sandbox: Option<SandboxInfo>) -> Request<NicDelRequest> {
        Request::new(NicDelRequest {
            pod_config: Some(PodInfo {
                pod_name: "p".into(),
                pod_namespace: "ns".into(),
            }),
            sandbox,
        })
    }

    fn cluster_with_gw() -> MemoryCluster {
        let c = MemoryCluster::default();
        c.with(|s| {
            s.sgcs.insert(
                NamespacedName::new("ns", "gw"),
                ready_sgc(RouteType::StaticEgressGateway),
            )
        });
        c
    }

    fn recorded_sandbox_of_p(c: &MemoryCluster) -> Option<String> {
        c.with(|s| {
            let pe = s.pod_endpoints.get(&NamespacedName::new("ns", "p"))?;
            pe.recorded_sandbox().map(String::from)
        })
    }

    /// A cluster and server where sandbox B of pod uid-2 has added ns/p.
    async fn added_from_b() -> (MemoryCluster, NicServer<MemoryCluster>) {
        let c = cluster_with_gw();
        let srv = NicServer::new(c.clone());
        srv.nic_add(add_from(sandbox("sandbox-b", "uid-2")))
            .await
            .expect("NicAdd from B");
        assert_eq!(recorded_sandbox_of_p(&c).as_deref(), Some("sandbox-b"));
        (c, srv)
    }

    #[tokio::test]
    async fn a_del_from_another_sandbox_or_pod_leaves_the_pod_endpoint() {
        // ns/p now runs in sandbox B (pod uid-2); sandbox A belonged to its former incarnation (uid-1).
        let (c, srv) = added_from_b().await;
        for (from, why) in [
            (sandbox("sandbox-a", "uid-1"), "a former pod's DEL"),
            (sandbox("sandbox-a", "uid-2"), "an older sandbox of the same pod"),
            (
                sandbox("sandbox-a", ""),
                "an older sandbox, from a runtime without K8S_POD_UID",
            ),
        ] {
            srv.nic_del(del_from(from))
                .await
                .expect("a skipped DEL is no error");
            assert_eq!(recorded_sandbox_of_p(&c).as_deref(), Some("sandbox-b"), "{why}");
        }
        srv.nic_del(del_from(sandbox("sandbox-b", "uid-2")))
            .await
            .expect("own DEL");
        assert!(
            c.with(|s| s.pod_endpoints.is_empty()),
            "its own sandbox deletes it"
        );
        srv.nic_del(del_from(sandbox("sandbox-b", "uid-2")))
            .await
            .expect("idempotent");
    }

    #[tokio::test]
    async fn a_del_without_ids_deletes_by_name_as_older_plugins_expect() {
        let (c, srv) = added_from_b().await;
        srv.nic_del(del_from(None)).await.expect("older plugin's DEL");
        assert!(c.with(|s| s.pod_endpoints.is_empty()));
        // An older plugin's ADD records no sandbox; a newer DEL of any sandbox then deletes by name.
        srv.nic_add(add_from(None)).await.expect("older plugin's ADD");
        assert_eq!(recorded_sandbox_of_p(&c), None);
        srv.nic_del(del_from(sandbox("sandbox-a", "")))
            .await
            .expect("DEL");
        assert!(c.with(|s| s.pod_endpoints.is_empty()));
    }

    #[tokio::test]
    async fn a_pod_endpoint_recreated_between_read_and_delete_is_judged_again() {
        let c = cluster_with_gw();
        let srv = NicServer::new(c.clone());
        srv.nic_add(add_from(sandbox("sandbox-a", "uid-1")))
            .await
            .expect("NicAdd from A");
        // Sandbox B of the same pod re-creates it between A's read and A's delete.
        c.with(|s| {
            s.after_next_read = Some(|s, pod| {
                let spec = s.pod_endpoints.remove(pod).map(|pe| pe.spec).unwrap_or_default();
                let b = Sandbox::from_request(sandbox("sandbox-b", "uid-1"));
                s.put_pod_endpoint(ownership::pod_endpoint(pod, Some("uid-1"), spec, &b));
            })
        });
        srv.nic_del(del_from(sandbox("sandbox-a", "uid-1")))
            .await
            .expect("DEL from A");
        assert_eq!(
            recorded_sandbox_of_p(&c).as_deref(),
            Some("sandbox-b"),
            "A's DEL judged the object it read; B's re-created one fails the precondition and is kept"
        );
    }

    #[tokio::test]
    async fn nic_add_creates_pod_endpoint_and_returns_gateway() {
        let c = MemoryCluster::default();
        c.with(|s| {
            s.sgcs.insert(
                NamespacedName::new("ns", "gw"),
                ready_sgc(RouteType::AzureNetworking),
            )
        });
        let srv = NicServer::new(c.clone());
        let resp = srv
            .nic_add(Request::new(add_req("gw")))
            .await
            .expect("ok")
            .into_inner();
        assert_eq!(resp.endpoint_ip, "10.0.0.100");
        assert_eq!(resp.listen_port, 6000);
        assert_eq!(resp.exception_cidrs, vec!["1.2.3.0/24"]);
        assert_eq!(resp.default_route, DefaultRoute::AzureNetworking as i32);
        let pe = c
            .with(|s| s.pod_endpoints.get(&NamespacedName::new("ns", "p")).cloned())
            .expect("PodEndpoint");
        assert_eq!(pe.spec.pod_ip_address, "10.244.0.5/32");
        assert_eq!(pe.spec.static_gateway_configuration, "gw");
        let del = || del_from(None);
        srv.nic_del(del()).await.expect("del");
        assert!(c.with(|s| s.pod_endpoints.is_empty()));
        // deleting again is fine
        srv.nic_del(del()).await.expect("idempotent del");
    }

    #[tokio::test]
    async fn nic_add_refuses_other_namespace_missing_and_unready_configurations() {
        let c = MemoryCluster::default();
        let mut unready = ready_sgc(RouteType::StaticEgressGateway);
        unready.status = None;
        c.with(|s| s.sgcs.insert(NamespacedName::new("ns", "unready"), unready));
        c.with(|s| {
            s.sgcs.insert(
                NamespacedName::new("other", "gw"),
                ready_sgc(RouteType::StaticEgressGateway),
            )
        });
        let srv = NicServer::new(c.clone());
        let code = |r: Result<Response<NicAddResponse>, Status>| r.expect_err("refused").code();
        assert_eq!(
            code(srv.nic_add(Request::new(add_req("other/gw"))).await),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(srv.nic_add(Request::new(add_req("gw"))).await),
            tonic::Code::NotFound
        );
        assert_eq!(
            code(srv.nic_add(Request::new(add_req("unready"))).await),
            tonic::Code::FailedPrecondition
        );
        let mut bad = add_req("unready");
        bad.allowed_ip = "10.0.0.0/24".into();
        assert_eq!(
            code(srv.nic_add(Request::new(bad)).await),
            tonic::Code::InvalidArgument
        );
        assert!(c.with(|s| s.pod_endpoints.is_empty()));
    }

    #[tokio::test]
    async fn socket_is_0600_and_serves_pod_retrieve() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("cni.sock");
        let c = MemoryCluster::default();
        c.with(|s| {
            s.pods.insert(
                NamespacedName::new("ns", "p"),
                BTreeMap::from([(POD_GATEWAY_ANNOTATION.to_string(), "gw".to_string())]),
            )
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let s2 = sock.clone();
        let server = tokio::spawn(async move {
            serve_unix(&s2, c, async {
                let _ = rx.await;
            })
            .await
        });
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !sock.exists() {
            assert!(tokio::time::Instant::now() < deadline, "socket never appeared");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mode = std::fs::metadata(&sock).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut client = dataplane::client::connect(sock.clone(), std::time::Duration::from_secs(2))
            .await
            .expect("connect");
        let ann = client
            .pod_retrieve(PodRetrieveRequest {
                pod_config: Some(PodInfo {
                    pod_name: "p".into(),
                    pod_namespace: "ns".into(),
                }),
            })
            .await
            .expect("retrieve")
            .into_inner()
            .annotations;
        assert_eq!(ann[POD_GATEWAY_ANNOTATION], "gw");
        let _ = tx.send(());
        server.await.expect("join").expect("server ok");
    }
}
