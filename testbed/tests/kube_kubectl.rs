//! The simulator through the real `kubectl` binary, including admission webhooks served over TLS by the test.

mod kube_common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::routing::post;
use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube_common::sim_with_crds;
use serde_json::{Value, json};
use testbed::asserts::assert_contains;
use testbed::kube::{KubeSim, TestCa, spawn_https};

/// A kubectl bound to one simulator user, with its own kubeconfig, discovery cache and manifest directory.
struct Kubectl {
    dir: tempfile::TempDir,
    kubectl: testbed::cluster::Kubectl,
}

impl Kubectl {
    fn new(sim: &KubeSim, user: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig, user).expect("kubeconfig");
        let kubectl = testbed::cluster::Kubectl::new("kubectl", kubeconfig, dir.path().join("cache"));
        Self { dir, kubectl }
    }

    fn file(&self, name: &str, yaml: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, yaml).expect("manifest");
        p
    }

    async fn run(&self, args: &[&str]) -> testbed::cluster::KubectlOutput {
        self.kubectl.run(args).await
    }

    async fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args).await;
        assert!(o.ok, "kubectl {args:?} failed: {}", o.stderr);
        o.stdout
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

const SGC: &str = r#"
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata:
  name: sgc1
  namespace: default
spec:
  gatewayNodepoolName: POOL
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_get_jsonpath_delete() {
    let sim = sim_with_crds().await;
    let k = Kubectl::new(&sim, "admin");
    let f = k.file("sgc.yaml", &SGC.replace("POOL", "gw1"));
    assert!(
        k.ok(&["apply", "-f", path_str(&f)])
            .await
            .contains("staticgatewayconfiguration.egressgateway.kubernetes.azure.com/sgc1 created")
    );
    assert!(
        k.ok(&["apply", "-f", path_str(&f)])
            .await
            .contains("sgc1 unchanged")
    );
    let table = k.ok(&["get", "sgc"]).await;
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("NAME") && header.contains("POOL") && header.contains("AGE"),
        "{table}"
    );
    assert!(
        table.lines().nth(1).unwrap_or_default().contains("gw1"),
        "{table}"
    );
    assert_eq!(
        k.ok(&["get", "sgc", "sgc1", "-o", "jsonpath={.spec.defaultRoute}"])
            .await,
        "staticEgressGateway"
    );

    let f2 = k.file(
        "sgc2.yaml",
        &format!("{}  excludeCidrs: [10.0.0.0/8]\n", SGC.replace("POOL", "gw1")),
    );
    assert!(
        k.ok(&["apply", "-f", path_str(&f2)])
            .await
            .contains("sgc1 configured")
    );
    assert_eq!(
        k.ok(&[
            "get",
            "sgc",
            "sgc1",
            "-o",
            "jsonpath={.spec.excludeCidrs[0]} {.metadata.generation}"
        ])
        .await,
        "10.0.0.0/8 2"
    );
    // The CRD's CEL transition rule keeps the pool immutable, as kube-apiserver would.
    let renamed = k.file("sgc3.yaml", &SGC.replace("POOL", "gw2"));
    let o = k.run(&["apply", "-f", path_str(&renamed)]).await;
    assert!(
        !o.ok
            && o.stderr.contains(
                "spec.gatewayNodepoolName: Invalid value: \"object\": gatewayNodepoolName is immutable"
            ),
        "{}",
        o.stderr
    );

    // Server-side apply conflicts with a field another writer changed, unless forced.
    k.ok(&[
        "patch",
        "sgc",
        "sgc1",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"excludeCidrs":["1.0.0.0/8"]}}"#,
    ])
    .await;
    let o = k.run(&["apply", "--server-side", "-f", path_str(&f2)]).await;
    assert!(
        !o.ok
            && o.stderr.contains(
                "Apply failed with 1 conflict: conflict with \"kubectl-patch\": .spec.excludeCidrs"
            ),
        "{}",
        o.stderr
    );
    k.ok(&["apply", "--server-side", "--force-conflicts", "-f", path_str(&f2)])
        .await;
    assert_eq!(
        k.ok(&["get", "sgc", "sgc1", "-o", "jsonpath={.spec.excludeCidrs[0]}"])
            .await,
        "10.0.0.0/8"
    );

    // Unknown fields are refused by strict server-side field validation, as kubectl requests it.
    let bogus = k.file(
        "bogus.yaml",
        &format!("{}  bogus: 1\n", SGC.replace("POOL", "gw1")),
    );
    let o = k.run(&["apply", "-f", path_str(&bogus)]).await;
    assert!(
        !o.ok
            && o.stderr
                .contains("strict decoding error: unknown field \"spec.bogus\""),
        "{}",
        o.stderr
    );

    // Core kinds go through strategic merge patch.
    let cm = k.file(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c1\ndata:\n  a: '1'\n",
    );
    k.ok(&["apply", "-f", path_str(&cm)]).await;
    let cm2 = k.file(
        "cm2.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c1\ndata:\n  b: '2'\n",
    );
    assert!(
        k.ok(&["apply", "-f", path_str(&cm2)])
            .await
            .contains("configmap/c1 configured")
    );
    assert_eq!(
        k.ok(&["get", "cm", "c1", "-o", "jsonpath={.data}"]).await,
        r#"{"b":"2"}"#
    );

    assert!(
        k.ok(&["delete", "-f", path_str(&f)])
            .await
            .contains("\"sgc1\" deleted")
    );
    let o = k.run(&["get", "sgc", "sgc1"]).await;
    assert!(!o.ok);
    assert_contains(
        &o.stderr,
        "staticgatewayconfigurations.egressgateway.kubernetes.azure.com \"sgc1\" not found",
    );

    // A read-only user gets kube-apiserver's Forbidden.
    let viewer = Kubectl::new(&sim, "viewer");
    let o = viewer.run(&["delete", "configmap", "c1"]).await;
    assert!(!o.ok);
    assert_contains(
        &o.stderr,
        "configmaps \"c1\" is forbidden: User \"viewer\" cannot delete resource \"configmaps\"",
    );
}

/// What the test webhook saw.
type Seen = Arc<Mutex<Vec<Value>>>;

fn review_response(req: &Value, allowed: bool, extra: Value) -> Json<Value> {
    let mut resp = json!({"uid": req["request"]["uid"], "allowed": allowed});
    if let (Some(r), Some(e)) = (resp.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    Json(json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp}))
}

/// Starts a TLS webhook: `/validate` denies pools named "invalid", `/mutate` adds a label and a warning.
async fn start_webhook(ca: &TestCa, seen: Seen) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let leaf = ca.issue(&["127.0.0.1", "webhook.egress.svc"]).expect("leaf");
    let s1 = seen.clone();
    let app = axum::Router::new()
        .route(
            "/validate",
            post(move |Json(req): Json<Value>| {
                let seen = s1.clone();
                async move {
                    seen.lock().expect("lock").push(req.clone());
                    let pool = req["request"]["object"]["spec"]["gatewayNodepoolName"].as_str().unwrap_or_default();
                    if pool == "invalid" {
                        review_response(&req, false, json!({"status": {"code": 422, "message": "rule 1 (one gateway pool): spec.gatewayNodepoolName is invalid"}}))
                    } else {
                        review_response(&req, true, json!({"warnings": ["pool names are case-sensitive"]}))
                    }
                }
            }),
        )
        .route(
            "/deny",
            post(|Json(req): Json<Value>| async move { review_response(&req, false, json!({})) }),
        )
        .route(
            "/slow",
            post(|Json(req): Json<Value>| async move {
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                review_response(&req, true, json!({}))
            }),
        )
        .route(
            "/mutate",
            post(move |Json(req): Json<Value>| async move {
                let has_labels = req["request"]["object"]["metadata"]["labels"].is_object();
                let patch = if has_labels {
                    json!([{"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}])
                } else {
                    json!([{"op": "add", "path": "/metadata/labels", "value": {"mutated": "yes"}}])
                };
                let b64 = base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&patch).expect("patch"));
                review_response(&req, true, json!({"patchType": "JSONPatch", "patch": b64}))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (
        addr,
        spawn_https(listener, leaf.server_config(&[b"http/1.1"]).expect("tls"), app),
    )
}

fn webhook_rules() -> Value {
    json!([{"operations": ["CREATE", "UPDATE"], "apiGroups": ["egressgateway.kubernetes.azure.com"], "apiVersions": ["*"],
        "resources": ["staticgatewayconfigurations"], "scope": "Namespaced"}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_denies_and_mutates_through_kubectl() {
    let sim = sim_with_crds().await;
    let ca = TestCa::new("webhook-ca").expect("ca");
    let seen: Seen = Arc::default();
    let (addr, _server) = start_webhook(&ca, seen.clone()).await;
    sim.map_service("egress", "webhook", addr);
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca.cert_pem());
    let admin = sim.client("admin").expect("client");
    let vwc: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "sgc-validate"},
        "webhooks": [{"name": "validate.sgc.test", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Fail", "rules": webhook_rules(),
            "clientConfig": {"url": format!("https://127.0.0.1:{}/validate", addr.port()), "caBundle": bundle}}]
    }))
    .expect("vwc");
    Api::<ValidatingWebhookConfiguration>::all(admin.clone())
        .create(&PostParams::default(), &vwc)
        .await
        .expect("vwc");
    let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "sgc-mutate"},
        "webhooks": [{"name": "mutate.sgc.test", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "rules": webhook_rules(), "objectSelector": {"matchExpressions": [{"key": "skip-mutation", "operator": "DoesNotExist"}]},
            "clientConfig": {"service": {"namespace": "egress", "name": "webhook", "path": "/mutate", "port": 443}, "caBundle": bundle}}]
    }))
    .expect("mwc");
    Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .create(&PostParams::default(), &mwc)
        .await
        .expect("mwc");

    let k = Kubectl::new(&sim, "admin");
    let bad = k.file("bad.yaml", &SGC.replace("POOL", "invalid"));
    let o = k.run(&["apply", "-f", path_str(&bad)]).await;
    assert!(!o.ok);
    assert_contains(
        &o.stderr,
        "admission webhook \"validate.sgc.test\" denied the request: rule 1 (one gateway pool): spec.gatewayNodepoolName is invalid",
    );

    let good = k.file("good.yaml", &SGC.replace("POOL", "gw"));
    let o = k.run(&["apply", "-f", path_str(&good)]).await;
    assert!(o.ok, "{}", o.stderr);
    assert_contains(&o.stderr, "Warning: pool names are case-sensitive");
    assert_eq!(
        k.ok(&["get", "sgc", "sgc1", "-o", "jsonpath={.metadata.labels.mutated}"])
            .await,
        "yes"
    );

    let reviews = seen.lock().expect("lock").clone();
    let last = &reviews.last().expect("a review")["request"];
    assert_eq!(last["operation"], "CREATE");
    assert_eq!(last["userInfo"]["username"], "admin");
    assert_eq!(
        last["kind"],
        json!({"group": "egressgateway.kubernetes.azure.com", "version": "v1alpha1", "kind": "StaticGatewayConfiguration"})
    );
    assert_eq!(last["resource"]["resource"], "staticgatewayconfigurations");
    assert_eq!(last["namespace"], "default");
    assert_eq!(last["dryRun"], false);
    assert_eq!(
        last["object"]["metadata"]["labels"]["mutated"], "yes",
        "validation sees the mutated object"
    );
    assert_eq!(
        last["object"]["spec"]["defaultRoute"], "staticEgressGateway",
        "validation sees defaulted fields"
    );

    // Updates carry oldObject.
    let sgcs: Api<api::StaticGatewayConfiguration> = Api::namespaced(admin, "default");
    sgcs.patch(
        "sgc1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"excludeCidrs": ["10.0.0.0/8"]}})),
    )
    .await
    .expect("update admitted");
    let reviews = seen.lock().expect("lock").clone();
    let upd = &reviews.last().expect("review")["request"];
    assert_eq!(upd["operation"], "UPDATE");
    assert_eq!(upd["oldObject"]["spec"]["gatewayNodepoolName"], "gw");
    assert_eq!(upd["options"]["kind"], "PatchOptions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_policy_decides_when_webhook_is_unreachable_or_untrusted() {
    let sim = sim_with_crds().await;
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let ca = TestCa::new("webhook-ca").expect("ca");
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca.cert_pem());
    let admin = sim.client("admin").expect("client");
    let vwcs = Api::<ValidatingWebhookConfiguration>::all(admin.clone());
    let config = |policy: &str, url: String, bundle: &str| -> ValidatingWebhookConfiguration {
        serde_json::from_value(json!({
            "metadata": {"name": "down"},
            "webhooks": [{"name": "down.sgc.test", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": policy, "timeoutSeconds": 2, "rules": webhook_rules(),
                "clientConfig": {"url": url, "caBundle": bundle}}]
        }))
        .expect("vwc")
    };
    vwcs.create(
        &PostParams::default(),
        &config("Fail", format!("https://127.0.0.1:{dead_port}/validate"), &bundle),
    )
    .await
    .expect("create");
    let k = Kubectl::new(&sim, "admin");
    let f = k.file("sgc.yaml", &SGC.replace("POOL", "gw"));
    let o = k.run(&["apply", "-f", path_str(&f)]).await;
    assert!(!o.ok);
    assert_contains(
        &o.stderr,
        "Internal error occurred: failed calling webhook \"down.sgc.test\"",
    );

    // A webhook whose certificate is not signed by the caBundle is as good as down.
    let seen: Seen = Arc::default();
    let (addr, _server) = start_webhook(&TestCa::new("other-ca").expect("ca"), seen.clone()).await;
    let mut untrusted = config(
        "Fail",
        format!("https://127.0.0.1:{}/validate", addr.port()),
        &bundle,
    );
    untrusted.metadata.resource_version = vwcs.get("down").await.expect("get").metadata.resource_version;
    vwcs.replace("down", &PostParams::default(), &untrusted)
        .await
        .expect("replace");
    let o = k.run(&["apply", "-f", path_str(&f)]).await;
    assert!(
        !o.ok && o.stderr.contains("failed calling webhook"),
        "{}",
        o.stderr
    );
    assert!(
        seen.lock().expect("lock").is_empty(),
        "TLS must fail before the request is sent"
    );

    // failurePolicy Ignore lets the request through.
    vwcs.patch(
        "down",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}
            ]))
            .expect("patch"),
        ),
    )
    .await
    .expect("patch policy");
    let o = k.run(&["apply", "-f", path_str(&f)]).await;
    assert!(o.ok, "{}", o.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_sim_binary_serves_kubectl_with_preloaded_crds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/kube-egress-gateway/crds");
    let _child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kube-sim"))
        .args(["--listen", "127.0.0.1:0", "--crds", crds, "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("kube-sim starts");
    let run = |args: Vec<String>| {
        let kubeconfig = kubeconfig.clone();
        let cache = dir.path().join("cache");
        async move {
            tokio::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .arg("--cache-dir")
                .arg(cache)
                .args(args)
                .output()
                .await
                .expect("kubectl runs")
        }
    };
    let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
    kube_common::eventually("the binary serves all four CRDs", || {
        let kubeconfig = kubeconfig.clone();
        let args = args("get crd -o name");
        async move {
            if !kubeconfig.exists() {
                return false;
            }
            let out = run(args).await;
            String::from_utf8_lossy(&out.stdout).lines().count() == 4
        }
    })
    .await;
    let out = run(args("get ns default -o jsonpath={.status.phase}")).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Active");
    let viewer = dir.path().join("kubeconfig.viewer");
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(viewer)
        .args(["create", "namespace", "x"])
        .output()
        .await
        .expect("kubectl runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is forbidden: User \"viewer\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_selectors_operations_and_timeouts() {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
    let sim = sim_with_crds().await;
    let ca = TestCa::new("webhook-ca").expect("ca");
    let (addr, _server) = start_webhook(&ca, Arc::default()).await;
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca.cert_pem());
    let admin = sim.client("admin").expect("client");
    let hook = |name: &str, path: &str, resource: &str, ops: Value, extra: Value| {
        let mut h = json!({"name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "rules": [{"operations": ops, "apiGroups": [""], "apiVersions": ["v1"], "resources": [resource]}],
            "clientConfig": {"url": format!("https://127.0.0.1:{}{path}", addr.port()), "caBundle": bundle}});
        if let (Some(h), Some(e)) = (h.as_object_mut(), extra.as_object()) {
            h.extend(e.clone());
        }
        h
    };
    let vwc: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "guards"},
        "webhooks": [
            hook("deny.test", "/deny", "configmaps", json!(["CREATE", "DELETE"]),
                json!({"namespaceSelector": {"matchLabels": {"guarded": "yes"}}})),
            hook("slow.test", "/slow", "secrets", json!(["CREATE"]), json!({"timeoutSeconds": 1})),
        ]
    }))
    .expect("vwc");
    Api::<ValidatingWebhookConfiguration>::all(admin.clone())
        .create(&PostParams::default(), &vwc)
        .await
        .expect("vwc");

    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");
    let cm = |name: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("cm")
    };
    cms.create(&PostParams::default(), &cm("before"))
        .await
        .expect("namespace not selected yet");
    Api::<Namespace>::all(admin.clone())
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"guarded": "yes"}}})),
        )
        .await
        .expect("label namespace");
    let err = cms
        .create(&PostParams::default(), &cm("after"))
        .await
        .expect_err("denied");
    let kube::Error::Api(status) = err else {
        panic!("expected API error, got {err:?}")
    };
    assert_eq!(status.code, 400);
    assert_eq!(
        status.message,
        "admission webhook \"deny.test\" denied the request without explanation"
    );
    let err = cms
        .delete("before", &Default::default())
        .await
        .expect_err("DELETE is guarded too");
    assert!(err.to_string().contains("deny.test"), "{err}");

    let secrets: Api<Secret> = Api::namespaced(admin, "default");
    let err = secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "s"}})).expect("secret"),
        )
        .await
        .expect_err(
            "webhook slower than timeoutSeconds (1s < its 3s; the 10s default would have let it answer)",
        );
    let kube::Error::Api(status) = err else {
        panic!("expected API error, got {err:?}")
    };
    assert_eq!(status.code, 500);
    assert_contains(&status.message, "failed calling webhook \"slow.test\"");
    assert_contains(&status.message, "context deadline exceeded");
}

/// kubectl's typed commands (`create namespace`, `create secret`, ...) send protobuf, which the simulator does
/// not decode: they get kube-apiserver's 415 with the media types that work, and `apply` of the same object
/// (JSON) succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_kubectl_create_gets_a_clear_unsupported_media_type() {
    let sim = sim_with_crds().await;
    let k = Kubectl::new(&sim, "admin");
    let o = k.run(&["create", "namespace", "team-a"]).await;
    assert!(!o.ok);
    assert_eq!(
        o.stderr.trim(),
        "Error from server (UnsupportedMediaType): the body of the request was in an unknown format - accepted media types include: application/json, application/yaml"
    );
    let f = k.file(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n",
    );
    assert!(
        k.ok(&["apply", "-f", path_str(&f)])
            .await
            .contains("namespace/team-a created")
    );
    assert_eq!(
        k.ok(&["get", "namespace", "team-a", "-o", "jsonpath={.status.phase}"])
            .await,
        "Active"
    );
}

/// `kubectl delete --cascade=foreground`: dependents go first; an owner whose dependent is held by a
/// finalizer waits with `foregroundDeletion` and goes once that dependent is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_deletion_waits_for_dependents() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let sim = sim_with_crds().await;
    let admin = sim.client("admin").expect("client");
    let cms: Api<ConfigMap> = Api::namespaced(admin, "default");
    let owner: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "owner"}})).expect("owner");
    let owner = cms.create(&PostParams::default(), &owner).await.expect("owner");
    let owner_uid = owner.metadata.uid.clone().expect("uid");
    for (name, finalizers) in [("held", json!(["example.com/hold"])), ("free", json!([]))] {
        let dep: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name,
            "finalizers": finalizers,
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid,
                "blockOwnerDeletion": true}]}}))
        .expect("dependent");
        cms.create(&PostParams::default(), &dep).await.expect("dependent");
    }
    let k = Kubectl::new(&sim, "admin");
    k.ok(&[
        "delete",
        "configmap",
        "owner",
        "--cascade=foreground",
        "--wait=false",
    ])
    .await;
    assert!(
        cms.get_opt("free").await.expect("get").is_none(),
        "a dependent without finalizers is deleted first"
    );
    let held = cms.get("held").await.expect("held dependent is terminating");
    assert!(held.metadata.deletion_timestamp.is_some());
    let waiting = cms.get("owner").await.expect("owner waits for its dependent");
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert_eq!(
        waiting.metadata.finalizers.unwrap_or_default(),
        vec!["foregroundDeletion".to_string()]
    );
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("release the dependent");
    assert!(cms.get_opt("held").await.expect("get").is_none());
    assert!(
        cms.get_opt("owner").await.expect("get").is_none(),
        "the owner goes with its last dependent"
    );
}

/// `--dry-run=server` runs admission and validation but stores nothing, for create, apply and delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_dry_run_stores_nothing() {
    let sim = sim_with_crds().await;
    let k = Kubectl::new(&sim, "admin");
    let f = k.file("sgc.yaml", &SGC.replace("POOL", "gw1"));
    let out = k.ok(&["apply", "--dry-run=server", "-f", path_str(&f)]).await;
    assert!(out.contains("sgc1 created (server dry run)"), "{out}");
    let o = k.run(&["get", "sgc", "sgc1"]).await;
    assert!(!o.ok && o.stderr.contains("NotFound"), "{}", o.stderr);
    // The schema still applies under dry run.
    let bad = k.file(
        "bad.yaml",
        &format!("{}  defaultRoute: sideways\n", SGC.replace("POOL", "gw1")),
    );
    let o = k.run(&["apply", "--dry-run=server", "-f", path_str(&bad)]).await;
    assert!(!o.ok && o.stderr.contains("spec.defaultRoute"), "{}", o.stderr);
    k.ok(&["apply", "-f", path_str(&f)]).await;
    let out = k.ok(&["delete", "sgc", "sgc1", "--dry-run=server"]).await;
    assert!(out.contains("deleted (server dry run)"), "{out}");
    assert_eq!(
        k.ok(&["get", "sgc", "sgc1", "-o", "jsonpath={.metadata.name}"])
            .await,
        "sgc1"
    );
}

/// `kubectl get -w` streams changes as they happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_streams_changes() {
    use tokio::io::AsyncBufReadExt as _;
    let sim = sim_with_crds().await;
    let k = Kubectl::new(&sim, "admin");
    let mut child = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(k.kubectl.kubeconfig())
        .args(["get", "sgc", "-w", "--output-watch-events", "--no-headers"])
        .env_remove("KUBECONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl -w");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let f = k.file("sgc.yaml", &SGC.replace("POOL", "gw1"));
    // The watch may start after the create; either way the object must appear as ADDED.
    k.ok(&["apply", "-f", path_str(&f)]).await;
    let mut next = async || {
        tokio::time::timeout(std::time::Duration::from_secs(15), lines.next_line())
            .await
            .expect("a watch line in time")
            .expect("read")
            .expect("stream open")
    };
    let added = next().await;
    assert!(added.contains("ADDED") && added.contains("sgc1"), "{added}");
    k.ok(&["delete", "sgc", "sgc1"]).await;
    let mut seen = Vec::new();
    loop {
        let line = next().await;
        let done = line.contains("DELETED");
        seen.push(line);
        if done {
            break;
        }
    }
    assert!(seen.last().is_some_and(|l| l.contains("sgc1")), "{seen:?}");
}
