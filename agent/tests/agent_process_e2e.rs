//! The real gateway agent process (root): it reads its identity from a fake IMDS and its configuration
//! from the API simulator (both served inside the gateway node's namespace), builds the gateway, answers
//! the LB probe; on SIGTERM the probe turns 503 for the drain delay; a *new* agent process then takes
//! over, and a steady UDP stream from an annotated pod loses no packet across the whole restart.
//!
//! Uses this package's agent binary (or the one `KEG_AGENT_BIN` names, see `agent_process::agent_bin`) and
//! the CNI plugin next to it (see `netlab::cni_bin`).

mod agent_process;
mod netlab;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use agent::object::NamespacedName;
use agent_process::{RunningAgent, agent_bin, agent_command};
use api::sgc::RouteType;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use netlab::{FRONTEND, INET, Lab, in_netns, probe_status, wait_until};
use serde_json::json;

const SECONDARY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 6);

#[test]
fn agent_process_restart_drains_the_probe_and_loses_no_packet() {
    let bin = agent_bin();
    let mut lab = Lab::new();
    let gw = lab.add_gateway();
    lab.route(&format!("{FRONTEND}/32"), gw.ip);
    lab.route(&format!("{SECONDARY}/32"), gw.ip);
    let cfg = lab.add_config("gw1", 6000, RouteType::StaticEgressGateway, &[]);
    lab.add_pod("pa", Some("gw1"));
    let pe = lab
        .cluster
        .with(|s| {
            s.pod_endpoints
                .get(&NamespacedName::new("default", "pa"))
                .map(|pe| pe.spec.clone())
        })
        .expect("PodEndpoint written by the node agent");

    // Control plane inside the gateway node's namespace: API simulator + fake IMDS.
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubeconfig = tmp.path().join("kubeconfig");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (kc, key, gw_ip) = (kubeconfig.clone(), cfg.key.clone(), gw.ip);
    let control = in_netns(PathBuf::from("/var/run/netns").join(&gw.ns), move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let sim = testbed::kube::KubeSim::start(Default::default()).await.expect("sim");
            sim.write_kubeconfig(&kc, "admin").expect("kubeconfig");
            let client = sim.client("admin").expect("client");
            sim.install_crds().await.expect("CRDs");
            let node: Node = serde_json::from_value(json!({"apiVersion":"v1","kind":"Node","metadata":{"name":"gw-node"}}))
                .expect("node");
            Api::<Node>::all(client.clone()).create(&PostParams::default(), &node).await.expect("node");
            let mut secret = Secret::default();
            secret.metadata.name = Some("sgw-gw1".into());
            // Labelled with its configuration, as the operator writes it (the agent watches only those).
            secret.metadata.labels = Some(std::collections::BTreeMap::from([
                (api::names::SECRET_OWNER_NAMESPACE_LABEL.to_string(), "default".to_string()),
                (api::names::SECRET_OWNER_NAME_LABEL.to_string(), "gw1".to_string()),
            ]));
            secret.data = Some(std::collections::BTreeMap::from([(
                "PrivateKey".to_string(),
                k8s_openapi::ByteString(key.0.to_base64().into_bytes()),
            )]));
            Api::<Secret>::namespaced(client.clone(), "kube-system")
                .create(&PostParams::default(), &secret)
                .await
                .expect("secret");
            let sgcs: Api<api::StaticGatewayConfiguration> = Api::namespaced(client.clone(), "default");
            let sgc: api::StaticGatewayConfiguration = serde_json::from_value(json!({
                "apiVersion":"egressgateway.kubernetes.azure.com/v1alpha1","kind":"StaticGatewayConfiguration",
                "metadata":{"name":"gw1","namespace":"default"},"spec":{"gatewayNodepoolName":"gwpool"}}))
            .expect("sgc");
            let sgc = sgcs.create(&PostParams::default(), &sgc).await.expect("sgc");
            sgcs.patch_status("gw1", &PatchParams::default(), &Patch::Merge(json!({"status":{
                "egressIpPrefix":"20.0.0.0/31",
                "gatewayServerProfile":{"ip":FRONTEND.to_string(),"port":6000,"publicKey":key.public_base64(),
                    "privateKeySecretRef":{"namespace":"kube-system","name":"sgw-gw1"}},
                "gatewayVMProfiles":[{"nodeName":"gw-vmss000001","primaryIP":gw_ip.to_string(),"secondaryIP":SECONDARY.to_string()}]}})))
                .await
                .expect("status");
            let pe_obj: api::PodEndpoint = serde_json::from_value(json!({
                "apiVersion":"egressgateway.kubernetes.azure.com/v1alpha1","kind":"PodEndpoint",
                "metadata":{"name":"pa","namespace":"default"},"spec":pe})).expect("pe");
            Api::<api::PodEndpoint>::namespaced(client.clone(), "default")
                .create(&PostParams::default(), &pe_obj)
                .await
                .expect("pe");
            let imds = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("imds");
            let imds_port = imds.local_addr().expect("addr").port();
            let doc = json!({"compute":{"osProfile":{"computerName":"gw-vmss000001"},"vmScaleSetName":"gw-vmss",
                "resourceGroupName":"mc_rg","tags":"aks-managed-poolName:gwpool"}});
            let app = axum::Router::new().route(
                "/metadata/instance",
                axum::routing::get(move || {
                    let doc = doc.clone();
                    async move { axum::Json(doc) }
                }),
            );
            tokio::spawn(async move { axum::serve(imds, app).await });
            ready_tx
                .send((imds_port, sgc.metadata.uid.clone().expect("uid")))
                .expect("ready");
            let _ = stop_rx.await;
            drop(sim);
        });
    });
    let (imds_port, uid) = ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("control plane up");
    let start_agent = || {
        let mut cmd = agent_command("nsenter", &kubeconfig);
        cmd.arg(format!("--net=/var/run/netns/{}", gw.ns))
            .arg("--")
            .arg(&bin)
            .args([
                "--mode",
                "gateway",
                "--node-name",
                "gw-node",
                "--namespace",
                "kube-system",
            ])
            .args(["--netns-name", &gw.egw, "--host-interface", "eth0"])
            .arg("--imds-endpoint")
            .arg(format!("http://127.0.0.1:{imds_port}"))
            .args([
                "--metrics-bind-address",
                "127.0.0.1:0",
                "--health-probe-bind-address",
                "127.0.0.1:0",
            ])
            .args(["--lb-probe-drain-delay-seconds", "3", "--apply-debounce-ms", "50"]);
        RunningAgent::spawn(&mut cmd)
    };
    let rt_ns = lab.path("rt");
    let path = api::names::lb_probe_path(&uid);
    let probe = || probe_status(rt_ns.clone(), gw.ip, path.clone());

    let first = start_agent();
    wait_until("probe 200 from the first agent", Duration::from_secs(20), || {
        probe() == Some(200)
    });
    assert_eq!(
        lab.source_seen("pa", INET),
        Some(SECONDARY),
        "egress through the agent-built gateway"
    );
    let stream = lab.flowing_stream("pa");

    // SIGTERM: the probe drains (503) while the process is still alive, then it exits cleanly.
    first.terminate();
    wait_until("probe 503 while draining", Duration::from_secs(3), || {
        probe() == Some(503)
    });
    let status = first.wait();
    assert!(status.success(), "agent exit {status:?}");

    // A new process takes over; the data plane was never torn down.
    let _second = start_agent();
    wait_until("probe 200 from the new agent", Duration::from_secs(20), || {
        probe() == Some(200)
    });
    let seen = stream.answered();
    wait_until("stream continues", Duration::from_secs(5), || {
        stream.answered() >= seen + 100
    });
    let (sent, lost, sources) = stream.finish();
    assert!(
        lost.is_empty(),
        "lost {} of {sent}: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert_eq!(sources.into_iter().collect::<Vec<_>>(), vec![SECONDARY]);
    let _ = stop_tx.send(());
    let _ = control.join();
}
