//! The operator binary: a port it cannot serve on ends it at once, non-zero, naming the address, instead of
//! running on without its metrics or probes.

use std::time::Duration;

use testbed::azure::Seed;
use testbed::kube::{KubeSim, KubeSimConfig};

#[tokio::test]
async fn a_taken_port_ends_the_operator_non_zero_naming_the_address() {
    let kube = KubeSim::start(KubeSimConfig::default()).await.expect("kube-sim");
    let dir = tempfile::tempdir().expect("tmp");
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, "admin").expect("kubeconfig");
    let cloud_config = dir.path().join("azure.json");
    let cfg = Seed::aks_like(1).cloud_config("http://127.0.0.1:9");
    std::fs::write(&cloud_config, cfg.to_string()).expect("cloud config");
    let taken = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();

    for (flag, other) in [
        ("--metrics-bind-port", "--health-probe-bind-port"),
        ("--health-probe-bind-port", "--metrics-bind-port"),
    ] {
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_kube-egress-gateway-operator"))
            .arg("--cloud-config")
            .arg(&cloud_config)
            .args([flag, port.as_str(), other, "0"])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("the operator kept running with {flag} taken"))
            .expect("the operator runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag}: {stderr}");
        assert!(
            stderr.contains(&format!("binding 0.0.0.0:{port}")),
            "{flag}: {stderr}"
        );
    }
}
