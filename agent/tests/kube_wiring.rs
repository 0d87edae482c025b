//! The agent's Kubernetes wiring against the API simulator (no root: the gateway loop applies into a
//! recorder instead of the kernel; the kernel applier is covered by the cni crate's netns tests).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::gateway::apply::{ApplyError, ApplyReport, LinkError};
use agent::gateway::plan::{GatewayPlan, ObservedGateway};
use agent::gateway::probe::ProbeState;
use agent::gateway::run::{GatewayLoop, PlanApplier};
use agent::gateway::select::NodeSettings;
use agent::imds::NodeIdentity;
use agent::metrics::Metrics;
use agent::node::kube_cluster::{KubeCluster, remove_cni_taint, uninstall_setting, watch_gateway_keys};
use agent::node::rekey::GatewayKeys;
use agent::node::{Cluster as _, Deletion, NicServer, ownership};
use agent::object::NamespacedName;
use api::{GatewayStatus, PodEndpoint, StaticGatewayConfiguration};
use axum::http::StatusCode;
use dataplane::proto::nic_service_server::NicService as _;
use dataplane::proto::{NicAddRequest, NicDelRequest, PodInfo, SandboxInfo};
use dataplane::wg::WgError;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use testbed::kube::{KubeSim, KubeSimConfig};
use testbed::wait::eventually;

async fn sim() -> (KubeSim, Client) {
    let sim = KubeSim::start(KubeSimConfig::default())
        .await
        .expect("simulator starts");
    let client = sim.client("admin").expect("client");
    sim.install_crds().await.expect("CRDs install");
    (sim, client)
}

fn pubkey() -> String {
    wireguard_control::Key::generate_private()
        .get_public()
        .to_base64()
}

async fn create<K>(client: &Client, ns: Option<&str>, v: serde_json::Value) -> K
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
{
    let obj: K = serde_json::from_value(v).expect("object JSON");
    let api: Api<K> = Api::namespaced(client.clone(), ns.expect("namespaced"));
    api.create(&PostParams::default(), &obj).await.expect("create")
}

async fn create_node(client: &Client, v: serde_json::Value) {
    let node: Node = serde_json::from_value(v).expect("node JSON");
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
}

/// A ready configuration on node pool `gwpool` whose VM profile names `gw-vmss000001`.
async fn ready_sgc(client: &Client, name: &str, port: i32) -> StaticGatewayConfiguration {
    let sgc: StaticGatewayConfiguration = create(
        client,
        Some("default"),
        json!({"apiVersion":"egressgateway.kubernetes.azure.com/v1alpha1","kind":"StaticGatewayConfiguration",
               "metadata":{"name":name,"namespace":"default"},
               "spec":{"gatewayNodepoolName":"gwpool","excludeCidrs":["1.2.3.0/24"]}}),
    )
    .await;
    Api::<StaticGatewayConfiguration>::namespaced(client.clone(), "default")
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status":{
                "egressIpPrefix":"20.0.0.0/31",
                "gatewayServerProfile":{"ip":"10.0.0.100","port":port,"publicKey":pubkey(),
                    "privateKeySecretRef":{"namespace":"kube-system","name":format!("sgw-{name}")}},
                "gatewayVMProfiles":[{"nodeName":"gw-vmss000001","primaryIP":"10.0.0.4","secondaryIP":"10.0.0.6"}]}})),
        )
        .await
        .expect("status");
    sgc
}

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<GatewayPlan>>);

impl PlanApplier for Recorder {
    fn apply_plan(&self, plan: &GatewayPlan) -> Result<ApplyReport, ApplyError> {
        self.0.lock().expect("lock").push(plan.clone());
        Ok(ApplyReport::default())
    }
    fn observe_gateway(&self) -> Result<ObservedGateway, ApplyError> {
        // Applies nothing: the node has nothing.
        Ok(ObservedGateway::default())
    }
}

impl Recorder {
    fn last_peers(&self, link: &str) -> Option<usize> {
        self.0
            .lock()
            .expect("lock")
            .last()
            .map(|p| p.links.get(link).map_or(0, |l| l.peers.len()))
    }
    fn applies(&self) -> usize {
        self.0.lock().expect("lock").len()
    }
    /// The links of every plan applied so far, in order.
    fn links(&self) -> Vec<Vec<String>> {
        let plans = self.0.lock().expect("lock");
        plans.iter().map(|p| p.links.keys().cloned().collect()).collect()
    }
}

/// The WireGuard key Secret `kube-system/sgw-<configuration>` that [`ready_sgc`] refers to, labelled with its
/// configuration as the operator writes it; unlabelled, it stands for any other Secret of the namespace.
async fn key_secret(client: &Client, configuration: &str, labelled: bool) {
    let mut secret = Secret::default();
    secret.metadata.name = Some(format!("sgw-{configuration}"));
    if labelled {
        secret.metadata.labels = Some(BTreeMap::from([
            (
                api::names::SECRET_OWNER_NAMESPACE_LABEL.to_string(),
                "default".to_string(),
            ),
            (
                api::names::SECRET_OWNER_NAME_LABEL.to_string(),
                configuration.to_string(),
            ),
        ]));
    }
    // `data`, not `stringData`: the simulator does not fold stringData into data (kube-apiserver does).
    secret.data = Some(BTreeMap::from([(
        "PrivateKey".to_string(),
        k8s_openapi::ByteString(
            wireguard_control::Key::generate_private()
                .to_base64()
                .into_bytes(),
        ),
    )]));
    Api::<Secret>::namespaced(client.clone(), "kube-system")
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
}

/// Stops a gateway loop the test started, which must end on shutdown.
async fn stop(stop: tokio::sync::watch::Sender<bool>, task: tokio::task::JoinHandle<()>) {
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("loop stops on shutdown")
        .expect("join");
}

/// A gateway loop for node `gw-node-1` (VM `gw-vmss000001` of pool `gwpool`) applying into `recorder`.
fn gateway_loop(recorder: Arc<dyn PlanApplier>) -> GatewayLoop {
    GatewayLoop {
        node_name: "gw-node-1".into(),
        agent_namespace: "kube-system".into(),
        secret_namespace: "kube-system".into(),
        settings: NodeSettings {
            identity: NodeIdentity {
                computer_name: "gw-vmss000001".into(),
                vmss_name: "gw-vmss".into(),
                resource_group: "mc_rg".into(),
                tags: BTreeMap::from([("aks-managed-poolName".to_string(), "gwpool".to_string())]),
                primary_ip: None,
            },
            netns_name: "ns-static-egress-gateway".into(),
        },
        applier: recorder,
        probe: ProbeState::default(),
        tunnels: Default::default(),
        metrics: Arc::new(Metrics::default()),
        ready: Arc::new(AtomicBool::new(false)),
        debounce: Duration::from_millis(150),
        // Far longer than the test: only watch events can explain timely changes.
        resync: Duration::from_secs(3600),
    }
}

#[tokio::test]
async fn gateway_loop_follows_configurations_and_pod_endpoints() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("agent=debug")
        .with_test_writer()
        .try_init();
    let (_sim, client) = sim().await;
    create_node(
        &client,
        json!({"apiVersion":"v1","kind":"Node","metadata":{"name":"gw-node-1"}}),
    )
    .await;
    let sgc = ready_sgc(&client, "gw1", 6000).await;
    let uid = sgc.metadata.uid.clone().expect("uid");
    key_secret(&client, "gw1", true).await;
    let pes: Api<PodEndpoint> = Api::namespaced(client.clone(), "default");
    for (i, name) in ["p1", "p2"].iter().enumerate() {
        create::<PodEndpoint>(
            &client,
            Some("default"),
            json!({"apiVersion":"egressgateway.kubernetes.azure.com/v1alpha1","kind":"PodEndpoint",
                   "metadata":{"name":name,"namespace":"default"},
                   "spec":{"staticGatewayConfiguration":"gw1","podIpAddress":format!("10.244.0.{}/32", i + 5),
                           "podPublicKey":pubkey()}}),
        )
        .await;
    }
    let recorder = Arc::new(Recorder::default());
    let lp = gateway_loop(recorder.clone());
    let (probe, ready) = (lp.probe.clone(), lp.ready.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(lp.run(client.clone(), stop_rx));

    eventually("both peers applied", || async {
        recorder.last_peers("wg-6000") == Some(2)
    })
    .await;
    // The recorder sees the plan while it is applied; readiness and the probe follow once the apply
    // returns, so await them too.
    eventually("ready after the first apply", || async {
        ready.load(Ordering::Acquire)
    })
    .await;
    eventually("the probe answers 200 for the configuration", || async {
        probe.status_for(&format!("/gw/{uid}")) == StatusCode::OK
    })
    .await;
    let statuses: Api<GatewayStatus> = Api::namespaced(client.clone(), "kube-system");
    eventually("GatewayStatus lists both peers", || async {
        statuses
            .get_opt("gw-node-1")
            .await
            .ok()
            .flatten()
            .is_some_and(|g| g.spec.ready_peer_configurations.len() == 2)
    })
    .await;
    let gs = statuses.get("gw-node-1").await.expect("status");
    let owner = &gs.metadata.owner_references.expect("owner")[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Node", "gw-node-1"));
    assert_eq!(
        gs.spec.ready_gateway_configurations[0].static_gateway_configuration,
        "default/gw1"
    );

    // Deleting a PodEndpoint removes its peer at once (watch DELETE), and the status shrinks.
    pes.delete("p1", &DeleteParams::default())
        .await
        .expect("delete p1");
    eventually("peer removed after PodEndpoint deletion", || async {
        recorder.last_peers("wg-6000") == Some(1)
    })
    .await;
    eventually("GatewayStatus shrinks", || async {
        statuses
            .get("gw-node-1")
            .await
            .is_ok_and(|g| g.spec.ready_peer_configurations.len() == 1)
    })
    .await;

    // A burst of events becomes few applies (debounce), not one per event.
    let before = recorder.applies();
    for i in 0..20 {
        create::<PodEndpoint>(
            &client,
            Some("default"),
            json!({"apiVersion":"egressgateway.kubernetes.azure.com/v1alpha1","kind":"PodEndpoint",
                   "metadata":{"name":format!("burst{i}"),"namespace":"default"},
                   "spec":{"staticGatewayConfiguration":"gw1","podIpAddress":format!("10.244.1.{}/32", i + 1),
                           "podPublicKey":pubkey()}}),
        )
        .await;
    }
    eventually("burst applied", || async {
        recorder.last_peers("wg-6000") == Some(21)
    })
    .await;
    let burst_applies = recorder.applies() - before;
    assert!(burst_applies < 20, "20 events took {burst_applies} applies");

    // Deleting the configuration deactivates it: no link, probe 503.
    Api::<StaticGatewayConfiguration>::namespaced(client.clone(), "default")
        .delete("gw1", &DeleteParams::default())
        .await
        .expect("delete sgc");
    eventually("configuration removed", || async {
        recorder.last_peers("wg-6000") == Some(0)
    })
    .await;
    eventually("the probe answers 503 for the removed configuration", || async {
        probe.status_for(&format!("/gw/{uid}")) == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    stop(stop_tx, task).await;
}

#[tokio::test]
async fn gateway_loop_reads_only_the_key_secrets_the_operator_labels() {
    let (_sim, client) = sim().await;
    create_node(
        &client,
        json!({"apiVersion":"v1","kind":"Node","metadata":{"name":"gw-node-1"}}),
    )
    .await;
    ready_sgc(&client, "labelled", 6000).await;
    ready_sgc(&client, "unlabelled", 6001).await;
    key_secret(&client, "labelled", true).await;
    // Same namespace, a valid key, referenced by a ready configuration: only the label is missing.
    key_secret(&client, "unlabelled", false).await;
    let recorder = Arc::new(Recorder::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(gateway_loop(recorder.clone()).run(client.clone(), stop_rx));

    // The first apply comes after every cache has its first full list, so a cached unlabelled Secret would
    // give the first plan a link for its configuration.
    eventually("the labelled Secret's configuration applied", || async {
        recorder.links().last() == Some(&vec!["wg-6000".to_string()])
    })
    .await;
    let plans = recorder.links();
    assert!(
        plans.iter().all(|links| !links.contains(&"wg-6001".to_string())),
        "the unlabelled Secret reached the plan: {plans:?}"
    );

    // Labelled as the operator does, the same Secret is watched and its configuration applied.
    Api::<Secret>::namespaced(client.clone(), "kube-system")
        .patch(
            "sgw-unlabelled",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                (api::names::SECRET_OWNER_NAMESPACE_LABEL): "default",
                (api::names::SECRET_OWNER_NAME_LABEL): "unlabelled"}}})),
        )
        .await
        .expect("label the Secret");
    eventually("both configurations applied once labelled", || async {
        recorder.links().last() == Some(&vec!["wg-6000".to_string(), "wg-6001".to_string()])
    })
    .await;
    stop(stop_tx, task).await;
}

/// The Node `gw-node-1` and, for each `(name, port)`, a ready configuration on its pool with its key Secret.
async fn gateway_node_serving(
    client: &Client,
    configurations: &[(&str, i32)],
) -> Vec<StaticGatewayConfiguration> {
    create_node(
        client,
        json!({"apiVersion":"v1","kind":"Node","metadata":{"name":"gw-node-1"}}),
    )
    .await;
    let mut out = vec![];
    for (name, port) in configurations {
        out.push(ready_sgc(client, name, *port).await);
        key_secret(client, name, true).await;
    }
    out
}

/// The GatewayStatus of `gw-node-1`, when there is one (and it can be read).
async fn node_gateway_status(client: &Client) -> Option<GatewayStatus> {
    Api::<GatewayStatus>::namespaced(client.clone(), "kube-system")
        .get_opt("gw-node-1")
        .await
        .ok()
        .flatten()
}

/// Applies every link but those on `failing_port`, which it reports failed as the kernel applier does (the
/// rest of the plan applied without them).
#[derive(Debug)]
struct FailingPort {
    failing_port: u16,
    recorder: Recorder,
}

impl PlanApplier for FailingPort {
    fn apply_plan(&self, plan: &GatewayPlan) -> Result<ApplyReport, ApplyError> {
        self.recorder.apply_plan(plan)?;
        let failed = plan
            .links
            .values()
            .filter(|l| l.port == self.failing_port)
            .map(|l| LinkError {
                configuration: l.configuration.clone(),
                ifname: l.ifname.clone(),
                source: ApplyError::Wg(WgError::Control {
                    op: "configure",
                    link: l.ifname.clone(),
                    msg: "Address already in use".into(),
                }),
                left_behind: None,
            })
            .collect();
        Ok(ApplyReport {
            changes: vec![],
            failed,
        })
    }
    fn observe_gateway(&self) -> Result<ObservedGateway, ApplyError> {
        self.recorder.observe_gateway()
    }
}

/// Applies every plan until `failing` is set; from then on every apply fails as a whole after losing the link
/// `lost`, as the kernel applier does when its link fails and then the nftables rules are refused. Its node
/// has the links of the last plan it was given, but `lost` once it fails.
#[derive(Debug)]
struct FailsLosingLink {
    lost: &'static str,
    failing: AtomicBool,
    recorder: Recorder,
}

impl PlanApplier for FailsLosingLink {
    fn apply_plan(&self, plan: &GatewayPlan) -> Result<ApplyReport, ApplyError> {
        self.recorder.apply_plan(plan)?;
        if self.failing.load(Ordering::SeqCst) {
            return Err(ApplyError::Cmd(dataplane::netns::CmdError {
                cmd: "nft -f -".into(),
                msg: "Error: Could not process rule".into(),
            }));
        }
        Ok(ApplyReport::default())
    }
    fn observe_gateway(&self) -> Result<ObservedGateway, ApplyError> {
        let plans = self.recorder.0.lock().expect("lock");
        let Some(last) = plans.last() else {
            return Ok(ObservedGateway::default());
        };
        let mut found = ObservedGateway::at_plan(last);
        if self.failing.load(Ordering::SeqCst) {
            found.links.remove(self.lost);
        }
        Ok(found)
    }
}

#[tokio::test]
async fn after_an_apply_that_fails_as_a_whole_a_configuration_whose_link_is_gone_is_not_served() {
    let (_sim, client) = sim().await;
    let [lost, kept] =
        <[_; 2]>::try_from(gateway_node_serving(&client, &[("lost", 6000), ("kept", 6001)]).await)
            .expect("two configurations");
    let applier = Arc::new(FailsLosingLink {
        lost: "wg-6000",
        failing: AtomicBool::new(false),
        recorder: Recorder::default(),
    });
    let lp = gateway_loop(applier.clone());
    let (probe, metrics) = (lp.probe.clone(), lp.metrics.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(lp.run(client.clone(), stop_rx));
    let path = |s: &StaticGatewayConfiguration| format!("/gw/{}", s.metadata.uid.clone().expect("uid"));
    eventually("both configurations are active", || async {
        probe.status_for(&path(&lost)) == StatusCode::OK && probe.status_for(&path(&kept)) == StatusCode::OK
    })
    .await;

    // The next apply (a new PodEndpoint) fails as a whole, and its failing link is gone.
    applier.failing.store(true, Ordering::SeqCst);
    let applies = applier.recorder.applies();
    create::<PodEndpoint>(
        &client,
        Some("default"),
        json!({"apiVersion":"egressgateway.kubernetes.azure.com/v1alpha1","kind":"PodEndpoint",
               "metadata":{"name":"pk","namespace":"default"},
               "spec":{"staticGatewayConfiguration":"kept","podIpAddress":"10.244.0.6/32","podPublicKey":pubkey()}}),
    )
    .await;
    eventually("the configuration whose link is gone is not active", || async {
        applier.recorder.applies() > applies
            && probe.status_for(&path(&lost)) == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert_eq!(
        probe.status_for(&path(&kept)),
        StatusCode::OK,
        "the configuration whose link is still there is served"
    );
    eventually(
        "GatewayStatus lists only the configuration still served",
        || async {
            node_gateway_status(&client).await.is_some_and(|g| {
                g.spec
                    .ready_gateway_configurations
                    .iter()
                    .map(|c| c.static_gateway_configuration.as_str())
                    .eq(["default/kept"])
            })
        },
    )
    .await;
    let text = metrics.encode();
    assert!(text.contains("gateway_configurations 1"), "{text}");
    stop(stop_tx, task).await;
}

#[tokio::test]
async fn a_configuration_whose_link_fails_is_left_out_and_the_others_are_served() {
    let (_sim, client) = sim().await;
    let [broken, healthy] =
        <[_; 2]>::try_from(gateway_node_serving(&client, &[("broken", 6000), ("healthy", 6001)]).await)
            .expect("two configurations");
    for (name, sgc) in [("pb", "broken"), ("ph", "healthy")] {
        create::<PodEndpoint>(
            &client,
            Some("default"),
            json!({"apiVersion":"egressgateway.kubernetes.azure.com/v1alpha1","kind":"PodEndpoint",
                   "metadata":{"name":name,"namespace":"default"},
                   "spec":{"staticGatewayConfiguration":sgc,
                           "podIpAddress":if name == "pb" { "10.244.0.5/32" } else { "10.244.0.6/32" },
                           "podPublicKey":pubkey()}}),
        )
        .await;
    }
    let applier = Arc::new(FailingPort {
        failing_port: 6000,
        recorder: Recorder::default(),
    });
    let lp = gateway_loop(applier.clone());
    let (probe, ready, metrics) = (lp.probe.clone(), lp.ready.clone(), lp.metrics.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(lp.run(client.clone(), stop_rx));

    let uid = |s: &StaticGatewayConfiguration| s.metadata.uid.clone().expect("uid");
    eventually("the healthy configuration is active", || async {
        probe.status_for(&format!("/gw/{}", uid(&healthy))) == StatusCode::OK
    })
    .await;
    assert_eq!(
        probe.status_for(&format!("/gw/{}", uid(&broken))),
        StatusCode::SERVICE_UNAVAILABLE,
        "the configuration whose link failed is not active"
    );
    assert!(
        ready.load(Ordering::Acquire),
        "a partial apply still serves: ready"
    );
    eventually(
        "GatewayStatus lists the healthy configuration and its peer",
        || async {
            node_gateway_status(&client)
                .await
                .is_some_and(|g| g.spec.ready_peer_configurations.len() == 1)
        },
    )
    .await;
    let gs = node_gateway_status(&client).await.expect("status");
    let listed: Vec<&str> = gs
        .spec
        .ready_gateway_configurations
        .iter()
        .map(|c| c.static_gateway_configuration.as_str())
        .collect();
    assert_eq!(listed, vec!["default/healthy"]);
    assert_eq!(gs.spec.ready_peer_configurations[0].pod_endpoint, "default/ph");
    // Counted under the configuration, and retried on the apply's backoff (not only at the hour's resync).
    let count = || {
        metrics
            .encode()
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "gateway_configuration_apply_failures_total{configuration=\"default/broken\"} ",
                )
            })
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    eventually("the failed configuration is counted and retried", || async {
        count() >= 2
    })
    .await;
    let text = metrics.encode();
    assert!(text.contains("gateway_configurations 1"), "{text}");
    assert!(
        !text.contains("gateway_configuration_apply_failures_total{configuration=\"default/healthy\"}"),
        "{text}"
    );
    stop(stop_tx, task).await;
}

fn pod_info(name: &str) -> Option<PodInfo> {
    Some(PodInfo {
        pod_name: name.into(),
        pod_namespace: "default".into(),
    })
}

/// Creates pod `name` in `default` with `annotations`.
async fn create_pod(client: &Client, name: &str, annotations: serde_json::Value) -> Pod {
    create(
        client,
        Some("default"),
        json!({"apiVersion":"v1","kind":"Pod",
               "metadata":{"name":name,"namespace":"default","annotations":annotations},
               "spec":{"containers":[{"name":"c","image":"busybox"}]}}),
    )
    .await
}

#[tokio::test]
async fn node_mode_writes_pod_endpoints_owned_by_the_pod() {
    let (_sim, client) = sim().await;
    ready_sgc(&client, "gw1", 6000).await;
    let pod = create_pod(
        &client,
        "p",
        json!({"kubernetes.azure.com/static-gateway-configuration":"gw1"}),
    )
    .await;
    let metrics = Arc::new(Metrics::default());
    let cluster = KubeCluster::new(client.clone(), metrics.clone());
    let ann = cluster
        .pod_annotations(&NamespacedName::new("default", "p"))
        .await
        .expect("get")
        .expect("pod exists");
    assert_eq!(ann["kubernetes.azure.com/static-gateway-configuration"], "gw1");
    assert_eq!(
        cluster
            .pod_annotations(&NamespacedName::new("default", "nope"))
            .await
            .expect("absent is no error"),
        None
    );

    let srv = NicServer::new(cluster.clone());
    let key = pubkey();
    let resp = srv
        .nic_add(tonic::Request::new(NicAddRequest {
            pod_config: pod_info("p"),
            listen_port: 0,
            allowed_ip: "10.244.0.5/32".into(),
            public_key: key.clone(),
            gateway_name: "gw1".into(),
            sandbox: None,
        }))
        .await
        .expect("NicAdd")
        .into_inner();
    assert_eq!(
        (resp.endpoint_ip.as_str(), resp.listen_port),
        ("10.0.0.100", 6000)
    );
    assert_eq!(resp.exception_cidrs, vec!["1.2.3.0/24"]);
    let pes: Api<PodEndpoint> = Api::namespaced(client.clone(), "default");
    let pe = pes.get("p").await.expect("PodEndpoint created");
    assert_eq!(pe.spec.pod_public_key, key);
    assert_eq!(pe.spec.pod_ip_address, "10.244.0.5/32");
    let owner = &pe.metadata.owner_references.expect("owner")[0];
    assert_eq!(owner.uid, pod.metadata.uid.expect("pod uid"));
    assert_eq!(owner.controller, Some(true));

    // A second ADD (runtime retry) updates in place.
    srv.nic_add(tonic::Request::new(NicAddRequest {
        pod_config: pod_info("p"),
        listen_port: 0,
        allowed_ip: "10.244.0.6/32".into(),
        public_key: key.clone(),
        gateway_name: "gw1".into(),
        sandbox: None,
    }))
    .await
    .expect("NicAdd again");
    assert_eq!(
        pes.get("p").await.expect("pe").spec.pod_ip_address,
        "10.244.0.6/32"
    );

    // A pod that does not exist cannot register (and the failure is counted).
    let err = srv
        .nic_add(tonic::Request::new(NicAddRequest {
            pod_config: pod_info("ghost"),
            listen_port: 0,
            allowed_ip: "10.244.0.7/32".into(),
            public_key: pubkey(),
            gateway_name: "gw1".into(),
            sandbox: None,
        }))
        .await
        .expect_err("no pod");
    assert!(
        err.message().contains("pod default/ghost not found"),
        "{}",
        err.message()
    );
    assert!(metrics.encode().contains(
        "cnimanager_podendpoint_operation_failures_total{namespace=\"default\",operation=\"create_or_update\",pod=\"ghost\"} 1"
    ));

    for _ in 0..2 {
        srv.nic_del(tonic::Request::new(NicDelRequest {
            pod_config: pod_info("p"),
            sandbox: None,
        }))
        .await
        .expect("NicDel is idempotent");
    }
    assert!(pes.get_opt("p").await.expect("get").is_none());
}

fn sandbox(container_id: &str, pod_uid: &str) -> Option<SandboxInfo> {
    Some(SandboxInfo {
        container_id: container_id.into(),
        pod_uid: pod_uid.into(),
    })
}

#[tokio::test]
async fn node_mode_deletes_only_the_pod_endpoint_its_sandbox_made() {
    let (_sim, client) = sim().await;
    ready_sgc(&client, "gw1", 6000).await;
    let pod = create_pod(&client, "web-0", json!({})).await;
    let uid = pod.metadata.uid.clone().expect("pod uid");
    let cluster = KubeCluster::new(client.clone(), Arc::new(Metrics::default()));
    let srv = NicServer::new(cluster.clone());
    let add = |sandbox: Option<SandboxInfo>| {
        tonic::Request::new(NicAddRequest {
            pod_config: pod_info("web-0"),
            listen_port: 0,
            allowed_ip: "10.244.0.5/32".into(),
            public_key: pubkey(),
            gateway_name: "gw1".into(),
            sandbox,
        })
    };
    let del = |sandbox: Option<SandboxInfo>| {
        tonic::Request::new(NicDelRequest {
            pod_config: pod_info("web-0"),
            sandbox,
        })
    };
    let pes: Api<PodEndpoint> = Api::namespaced(client.clone(), "default");
    srv.nic_add(add(sandbox("sandbox-b", &uid)))
        .await
        .expect("NicAdd from the live pod's sandbox");
    let pe = pes.get("web-0").await.expect("PodEndpoint");
    assert_eq!(
        pe.metadata.annotations.as_ref().expect("annotations")[api::names::POD_ENDPOINT_SANDBOX_ANNOTATION],
        "sandbox-b"
    );

    // A late ADD from a former pod of that name is refused and writes nothing.
    let err = srv
        .nic_add(add(sandbox("sandbox-a", "uid-of-a-former-pod")))
        .await
        .expect_err("a former pod's sandbox");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("former pod"), "{}", err.message());
    let unchanged = pes.get("web-0").await.expect("PodEndpoint");
    assert_eq!(unchanged.metadata.resource_version, pe.metadata.resource_version);

    // Late DELs of another sandbox or pod leave it; its own sandbox's DEL deletes it.
    srv.nic_del(del(sandbox("sandbox-a", "uid-of-a-former-pod")))
        .await
        .expect("skipped, no error");
    srv.nic_del(del(sandbox("sandbox-a", &uid)))
        .await
        .expect("skipped, no error");
    assert!(pes.get_opt("web-0").await.expect("get").is_some(), "kept");
    srv.nic_del(del(sandbox("sandbox-b", &uid)))
        .await
        .expect("own DEL");
    assert!(pes.get_opt("web-0").await.expect("get").is_none(), "deleted");

    // The delete is conditional: a PodEndpoint rewritten since it was read is kept.
    let id = NamespacedName::new("default", "web-0");
    srv.nic_add(add(sandbox("sandbox-b", &uid)))
        .await
        .expect("NicAdd");
    let read = cluster.pod_endpoint(&id).await.expect("get").expect("present");
    srv.nic_add(add(sandbox("sandbox-c", &uid)))
        .await
        .expect("rewritten");
    assert_eq!(
        cluster
            .delete_pod_endpoint(&id, Some(&ownership::precondition(&read)))
            .await
            .expect("conditional delete"),
        Deletion::Changed
    );
    let fresh = cluster.pod_endpoint(&id).await.expect("get").expect("present");
    assert_eq!(
        cluster
            .delete_pod_endpoint(&id, Some(&ownership::precondition(&fresh)))
            .await
            .expect("conditional delete"),
        Deletion::Deleted
    );
    assert_eq!(
        cluster.delete_pod_endpoint(&id, None).await.expect("delete"),
        Deletion::Absent
    );
}

/// Waits until `keys` has `key` for `endpoint`.
async fn published(
    keys: &mut tokio::sync::watch::Receiver<GatewayKeys>,
    endpoint: &std::net::SocketAddr,
    key: &str,
    what: &str,
) {
    tokio::time::timeout(
        Duration::from_secs(10),
        keys.wait_for(|k| k.get(endpoint) == Some(key)),
    )
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    .expect("the watch runs");
}

#[tokio::test]
async fn node_mode_follows_the_gateway_keys_configurations_publish() {
    let (_sim, client) = sim().await;
    let (keys_tx, mut keys) = tokio::sync::watch::channel(GatewayKeys::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(watch_gateway_keys(client.clone(), keys_tx, stop));
    let endpoint: std::net::SocketAddr = "10.0.0.100:6000".parse().expect("endpoint");
    ready_sgc(&client, "gw1", 6000).await;
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(client.clone(), "default");
    let first_key = sgcs
        .get("gw1")
        .await
        .expect("get")
        .status
        .and_then(|s| s.gateway_server_profile)
        .map(|p| p.public_key)
        .expect("published key");
    published(&mut keys, &endpoint, &first_key, "the configuration's key").await;
    // Rotation: the operator publishes a new key.
    let rotated = pubkey();
    sgcs.patch_status(
        "gw1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status":{"gatewayServerProfile":{"publicKey":rotated}}})),
    )
    .await
    .expect("status");
    published(&mut keys, &endpoint, &rotated, "the rotated key").await;
    stop_tx.send(true).expect("stop");
    task.await.expect("the watch stops");
}

#[tokio::test]
async fn node_taint_is_removed_and_uninstall_follows_the_configmap() {
    let (_sim, client) = sim().await;
    create_node(
        &client,
        json!({"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"},
               "spec":{"taints":[{"key":"egressgateway.kubernetes.azure.com/cni-not-ready","effect":"NoSchedule"},
                                 {"key":"other","effect":"NoExecute"}]}}),
    )
    .await;
    assert!(remove_cni_taint(&client, "n1").await.expect("removes the taint"));
    let node = Api::<Node>::all(client.clone()).get("n1").await.expect("node");
    let keys: Vec<String> = node
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.key)
        .collect();
    assert_eq!(keys, vec!["other"]);
    assert!(
        !remove_cni_taint(&client, "n1").await.expect("reads the node"),
        "nothing left to remove"
    );

    assert_eq!(
        uninstall_setting(&client, "kube-system", "cni-uninstall")
            .await
            .expect("reads"),
        None
    );
    create::<ConfigMap>(
        &client,
        Some("kube-system"),
        json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cni-uninstall","namespace":"kube-system"},
               "data":{"uninstall":"false"}}),
    )
    .await;
    let setting = uninstall_setting(&client, "kube-system", "cni-uninstall")
        .await
        .expect("read");
    assert_eq!(setting, Some(Some("false".to_string())));
    assert!(!agent::cniconf::should_uninstall(
        setting.as_ref().map(|o| o.as_deref())
    ));
}
