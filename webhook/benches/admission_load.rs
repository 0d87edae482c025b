//! Load benchmark: the real webhook binary (standalone mode) under HTTPS keep-alive load with realistic
//! AdmissionReviews. Reports requests/s, p50/p99 latency per scenario, and the server's peak RSS.
//!
//! `cargo bench -p webhook --bench admission_load [-- --seconds 5 --connections 4]`; `--smoke` runs each
//! scenario for a moment on one connection, with the same checks (scripts/test.sh does).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls_pki_types::ServerName;
use serde_json::{Value, json};

struct Scenario {
    name: &'static str,
    path: &'static str,
    body: Value,
    /// The verdict the webhook must give (checked on each connection's first answer).
    allowed: bool,
    /// Whether its answer carries a JSON patch (defaults).
    patched: bool,
}

const REVIEW_UID: &str = "0df28fbd-5f5f-11e8-bc74-36e6bb280816";

fn review(kind: (&str, &str, &str), object: Value) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": REVIEW_UID,
        "kind": {"group": kind.0, "version": kind.1, "kind": kind.2},
        "resource": {"group": kind.0, "version": kind.1, "resource": "x"},
        "namespace": "team-a", "name": "obj", "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:team-a:deployer", "groups": ["system:serviceaccounts", "system:authenticated"]},
        "object": object, "dryRun": false}})
}

/// A pod as a Deployment's ReplicaSet creates it: a realistic size for the "no change needed" path.
fn pod(annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-7d4b9c8f6-", "namespace": "team-a",
        "labels": {"app": "web", "pod-template-hash": "7d4b9c8f6"}, "annotations": annotations,
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c8f6", "uid": "6c7e0a4e-1b0c-4f0e-9d2a-8a7c5d1e2f3a", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"containers": [{"name": "web", "image": "mcr.microsoft.com/azurelinux/base/nginx:1.25", "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            "env": [{"name": "MODE", "value": "prod"}, {"name": "LOG_LEVEL", "value": "info"}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 5},
            "volumeMounts": [{"name": "kube-api-access-abcde", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]}],
            "serviceAccountName": "default", "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "volumes": [{"name": "kube-api-access-abcde", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}]}})
}

fn scenarios() -> Vec<Scenario> {
    let sgc = |spec: Value| {
        json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "StaticGatewayConfiguration",
        "metadata": {"name": "team-a", "namespace": "team-a"}, "spec": spec})
    };
    let sgc_kind = (
        "egressgateway.kubernetes.azure.com",
        "v1alpha1",
        "StaticGatewayConfiguration",
    );
    vec![
        Scenario {
            name: "SGC validate (valid)",
            path: "/validate-staticgatewayconfiguration",
            body: review(
                sgc_kind,
                sgc(json!({
            "gatewayVmssProfile": {"vmssResourceGroup": "rg-gw", "vmssName": "gw-vmss", "publicIpPrefixSize": 30},
            "provisionPublicIps": true, "defaultRoute": "staticEgressGateway",
            "publicIpPrefixId": "/subscriptions/3fa85f64-5717-4562-b3fc-2c963f66afa6/resourceGroups/rg/providers/Microsoft.Network/publicIPPrefixes/p",
            "excludeCidrs": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]})),
            ),
            allowed: true,
            patched: false,
        },
        Scenario {
            name: "SGC validate (denied, 4 violations)",
            path: "/validate-staticgatewayconfiguration",
            body: review(
                sgc_kind,
                sgc(json!({
            "gatewayVmssProfile": {"vmssResourceGroup": "", "vmssName": "gw", "publicIpPrefixSize": 27},
            "provisionPublicIps": false, "excludeCidrs": ["10.0.0.0/8", "bad"]})),
            ),
            allowed: false,
            patched: false,
        },
        Scenario {
            name: "SGC mutate (defaults)",
            path: "/mutate-staticgatewayconfiguration",
            body: review(sgc_kind, sgc(json!({"gatewayNodepoolName": "gwpool"}))),
            allowed: true,
            patched: true,
        },
        Scenario {
            name: "Pod mutate (plain, no change)",
            path: "/mutate-pod",
            body: review(("", "v1", "Pod"), pod(json!({"kubernetes.io/psp": "restricted"}))),
            allowed: true,
            patched: false,
        },
        Scenario {
            name: "Pod validate (plain, no change)",
            path: "/validate-pod",
            body: review(("", "v1", "Pod"), pod(json!({"kubernetes.io/psp": "restricted"}))),
            allowed: true,
            patched: false,
        },
        Scenario {
            name: "Pod validate (annotated)",
            path: "/validate-pod",
            body: review(
                ("", "v1", "Pod"),
                pod(json!({"kubernetes.azure.com/static-gateway-configuration": "team-a"})),
            ),
            allowed: true,
            patched: false,
        },
    ]
}

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") || std::env::args().any(|a| a == "--test") {
        return; // `cargo test --benches` probes benches; nothing to do.
    }
    let (window, connections) = if std::env::args().any(|a| a == "--smoke") {
        (Duration::from_millis(200), 1)
    } else {
        (
            Duration::from_secs(arg("--seconds", 5)),
            arg("--connections", 4) as usize,
        )
    };

    // Serving certificate signed by a CA the load generator trusts.
    let dir = tempfile::tempdir().expect("tmp");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["webhook.bench".to_string()])
        .expect("p")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    std::fs::write(dir.path().join("tls.crt"), leaf.pem()).expect("write");
    std::fs::write(dir.path().join("tls.key"), leaf_key.serialize_pem()).expect("write");

    let port = free_port();
    let metrics_port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_kube-egress-gateway-webhook"))
        .args([
            "--standalone",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ])
        .arg("--tls-cert-file")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key-file")
        .arg(dir.path().join("tls.key"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start webhook");
    let server = Guard(child);
    let pid = server.0.id();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "webhook did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("idle RSS: {} KiB", rss_kib(pid, "VmRSS:"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root");
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );

    println!("\n| scenario | requests/s | p50 | p99 | requests |\n|---|---:|---:|---:|---:|");
    for sc in scenarios() {
        let body = Bytes::from(serde_json::to_vec(&sc.body).expect("json"));
        let stop = Instant::now() + window;
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let tls = tls.clone();
            let body = body.clone();
            let path = sc.path;
            let (allowed, patched, name) = (sc.allowed, sc.patched, sc.name);
            tasks.push(tokio::spawn(async move {
                let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
                tcp.set_nodelay(true).expect("nodelay");
                let stream = tokio_rustls::TlsConnector::from(tls)
                    .connect(ServerName::try_from("webhook.bench").expect("name"), tcp)
                    .await
                    .expect("tls");
                let (mut send, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .expect("handshake");
                tokio::spawn(conn);
                let mut latencies = Vec::new();
                // At least one request, however short the window.
                while latencies.is_empty() || Instant::now() < stop {
                    let req = hyper::Request::post(path)
                        .header("host", "webhook.bench")
                        .header("content-type", "application/json")
                        .body(Full::new(body.clone()))
                        .expect("request");
                    let t = Instant::now();
                    let resp = send.send_request(req).await.expect("response");
                    assert_eq!(resp.status(), 200);
                    let answer = resp.into_body().collect().await.expect("body").to_bytes();
                    latencies.push(t.elapsed());
                    if latencies.len() == 1 {
                        // The path measured is the one meant: this review's verdict, not an error's.
                        let review: Value = serde_json::from_slice(&answer).expect("an AdmissionReview");
                        let r = &review["response"];
                        assert_eq!(r["uid"], REVIEW_UID, "{name}: {review}");
                        assert_eq!(r["allowed"], allowed, "{name}: {review}");
                        assert_eq!(r.get("patch").is_some(), patched, "{name}: {review}");
                    }
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all.sort();
        let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        println!(
            "| {} | {:.0} | {:.0} µs | {:.0} µs | {} |",
            sc.name,
            all.len() as f64 / window.as_secs_f64(),
            q(0.50).as_secs_f64() * 1e6,
            q(0.99).as_secs_f64() * 1e6,
            all.len()
        );
    }
    println!(
        "\npeak RSS (VmHWM): {} KiB; RSS now: {} KiB",
        rss_kib(pid, "VmHWM:"),
        rss_kib(pid, "VmRSS:")
    );
}
