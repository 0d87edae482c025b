//! The real `kube-egress-gateway-agent --mode node` process against the API simulator (no root): installs
//! the chained conflist, removes the cni-not-ready taint, serves the CNI socket with mode 0600, exposes
//! metrics/health, and on SIGTERM removes the conflist as the `cni-uninstall` ConfigMap says.

mod agent_process;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use agent_process::{RunningAgent, agent_bin, agent_command};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use testbed::kube::{KubeSim, KubeSimConfig};
use testbed::wait::eventually;

/// The node agent's arguments for node `n1`: its ports, CNI configuration directory and socket.
fn node_agent_args(
    metrics_port: u16,
    health_port: u16,
    conf_dir: &std::path::Path,
    socket: &std::path::Path,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = [
        "--mode",
        "node",
        "--node-name",
        "n1",
        "--namespace",
        "kube-system",
    ]
    .into_iter()
    .map(Into::into)
    .collect();
    args.extend([
        "--metrics-bind-address".into(),
        format!("127.0.0.1:{metrics_port}").into(),
        "--health-probe-bind-address".into(),
        format!("127.0.0.1:{health_port}").into(),
        "--cni-conf-dir".into(),
        conf_dir.into(),
        "--cni-socket".into(),
        socket.into(),
        // This test has no pods; the host's /var/run/wireguard may hold other tests' pod tunnels, which a
        // node agent here must not touch.
        "--pod-tunnel-watch=false".into(),
    ]);
    args
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).await.ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    Some((status, out))
}

#[tokio::test]
async fn node_agent_installs_untaints_serves_and_uninstalls() {
    let sim = KubeSim::start(KubeSimConfig::default()).await.expect("simulator");
    let client = sim.client("admin").expect("client");
    let node: Node = serde_json::from_value(json!({"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"},
        "spec":{"taints":[{"key":"egressgateway.kubernetes.azure.com/cni-not-ready","effect":"NoSchedule"}]}}))
    .expect("node");
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .expect("node");
    let cm: ConfigMap = serde_json::from_value(json!({"apiVersion":"v1","kind":"ConfigMap",
        "metadata":{"name":"cni-uninstall","namespace":"kube-system"},"data":{"uninstall":"true"}}))
    .expect("cm");
    Api::<ConfigMap>::namespaced(client.clone(), "kube-system")
        .create(&PostParams::default(), &cm)
        .await
        .expect("cm");

    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, "admin").expect("kubeconfig");
    let netd = dir.path().join("net.d");
    std::fs::create_dir(&netd).expect("net.d");
    std::fs::write(
        netd.join("10-bridge.conflist"),
        json!({"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"},{"type":"portmap"}]})
            .to_string(),
    )
    .expect("primary");
    let socket = dir.path().join("run/cni.sock");
    let (metrics_port, health_port) = (free_port(), free_port());
    let agent = RunningAgent::spawn(
        agent_command(agent_bin(), &kubeconfig)
            .args(node_agent_args(metrics_port, health_port, &netd, &socket))
            .args(["--cni-conf-poll-ms", "50", "--log-format", "json"]),
    );

    let ours = netd.join(api::names::CNI_CONF_FILE);
    eventually("conflist installed", || async { ours.exists() }).await;
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&ours).expect("read")).expect("json");
    assert_eq!(v["plugins"][1]["type"], "kube-egress-cni");
    assert_eq!(v["plugins"][1]["socketPath"], socket.display().to_string());
    eventually("taint removed", || async {
        Api::<Node>::all(client.clone())
            .get("n1")
            .await
            .is_ok_and(|n| n.spec.and_then(|s| s.taints).unwrap_or_default().is_empty())
    })
    .await;
    eventually("readyz 200", || async {
        http_get(health_port, "/readyz")
            .await
            .is_some_and(|(s, _)| s == 200)
    })
    .await;
    let (_, metrics) = http_get(metrics_port, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains("cnimanager_cni_config_operation_failures"),
        "{metrics}"
    );
    assert!(socket.exists());
    let mode = std::fs::metadata(&socket).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // The primary changes: our file follows.
    std::fs::write(
        netd.join("10-bridge.conflist"),
        json!({"cniVersion":"1.0.0","name":"renamed","plugins":[{"type":"bridge"}]}).to_string(),
    )
    .expect("primary change");
    eventually("regenerated", || async {
        std::fs::read(&ours)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["name"] == "renamed")
    })
    .await;

    // SIGTERM: clean exit, conflist removed (ConfigMap says uninstall).
    agent.terminate();
    let status = tokio::task::spawn_blocking(move || agent.wait())
        .await
        .expect("join");
    assert!(status.success(), "agent exit status {status:?}");
    assert!(!Path::new(&ours).exists(), "conflist uninstalled on shutdown");
}

/// A CNI socket the agent cannot serve (its directory is a file) stops the agent with a non-zero exit that
/// names the socket, instead of an agent that reports ready while every CNI ADD fails.
#[tokio::test]
async fn node_agent_exits_when_it_cannot_serve_the_cni_socket() {
    let sim = KubeSim::start(KubeSimConfig::default()).await.expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, "admin").expect("kubeconfig");
    let not_a_dir = dir.path().join("run");
    std::fs::write(&not_a_dir, "a file where the socket's directory should be").expect("file");
    let socket = not_a_dir.join("cni.sock");
    let (metrics_port, health_port) = (free_port(), free_port());
    let mut cmd = agent_command(agent_bin(), &kubeconfig);
    cmd.args(node_agent_args(
        metrics_port,
        health_port,
        &dir.path().join("net.d"),
        &socket,
    ))
    .stderr(Stdio::piped());
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .expect("agent starts");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the agent stops by itself")
        .expect("wait");
    assert!(!out.status.success(), "exit status {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CNI socket server") && stderr.contains(&not_a_dir.display().to_string()),
        "{stderr}"
    );
}
