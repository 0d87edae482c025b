//! End to end: the webhook registered as the chart registers it (by Service, the Service's endpoint leading to
//! the webhook process) in the API server of [`TestCluster`] (the real control plane, or kube-sim with
//! `TESTBED_KUBE=sim`), driven by the real `kubectl`. What a user sees for each sample manifest (upstream's
//! and broken ones), defaults, rule 4 from the cluster's Nodes and GatewayPools, pod defaults and warnings,
//! PodEndpoint protection, and failurePolicy. The tests share one API server and run one at a time (the
//! webhook configurations are cluster-wide); each uses its own namespaces and cluster-scoped names, but for
//! the samples, whose manifests name theirs.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use support::{Reach, Webhook};
use testbed::cluster::{Exclusive, Kubectl, KubectlOutput, TestCluster};
use testbed::wait::eventually;
use webhook::facts::ClusterFacts;

const NS: &str = "kube-egress-gateway-system";
const SVC: &str = "kube-egress-gateway-webhook";
const AGENT_SA: &str = "kube-egress-gateway-node-agent";

struct Env {
    cluster: Arc<TestCluster>,
    dir: tempfile::TempDir,
    kubectl: Kubectl,
    webhook: Webhook,
    _exclusive: Exclusive,
}

impl Env {
    async fn kubectl(&self, args: &[&str]) -> KubectlOutput {
        self.kubectl.run(args).await
    }

    async fn apply(&self, file: &Path) -> KubectlOutput {
        self.kubectl(&["apply", "-f", file.to_str().expect("utf-8")])
            .await
    }

    /// Applies manifest `name` (`yaml`), which must be refused with every one of `needles` in the message.
    async fn assert_refused_naming_all(&self, name: &str, yaml: &str, needles: &[&str]) {
        let out = self.apply(&self.write(name, yaml)).await;
        assert!(!out.ok, "{name} was accepted: {}", out.stdout);
        for needle in needles {
            assert!(
                out.stderr.contains(needle),
                "missing {needle:?} in {}",
                out.stderr
            );
        }
        println!("{name}:\n{}", out.stderr);
    }

    fn write(&self, name: &str, yaml: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, yaml).expect("write manifest");
        p
    }

    fn admin(&self) -> kube::Client {
        self.cluster.client().expect("admin client")
    }

    /// A fresh namespace `<prefix>-<random>`.
    async fn namespace(&self, prefix: &str) -> String {
        self.cluster.namespace(prefix, &[]).await.expect("namespace")
    }
}

fn manifest(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../api/tests/manifests")
        .join(name)
}

/// The cluster of this binary with the real webhook behind the chart's Service and the chart's
/// registrations, held by this test until it ends.
async fn start() -> Env {
    let exclusive = TestCluster::exclusive().await;
    let cluster = TestCluster::shared().await;
    let admin = cluster.client().expect("client");
    cluster.ensure_namespace(NS, &[]).await.expect("namespace");
    let webhook = Webhook::start(
        admin.clone(),
        vec![format!("system:serviceaccount:{NS}:{AGENT_SA}")],
        Reach::Service {
            cluster: &cluster,
            namespace: NS,
            name: SVC,
        },
    )
    .await;
    webhook.register(&admin, NS).await;
    let dir = tempfile::tempdir().expect("tmp");
    let kubectl = cluster.admin_kubectl(dir.path()).expect("kubeconfig");
    Env {
        cluster,
        dir,
        kubectl,
        webhook,
        _exclusive: exclusive,
    }
}

const DENIED_SGC: &str = "admission webhook \"validate.staticgatewayconfigurations.egressgateway.kubernetes.azure.com\" denied the request: ";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_through_kubectl() {
    let env = start().await;
    for ns in ["mynamespace", "demo"] {
        env.cluster.ensure_namespace(ns, &[]).await.expect("namespace");
    }

    // Refused by our rules (before the accepted samples of the same names exist): the exact text kubectl prints.
    let out = env.apply(&manifest("seed000-vmss-byo.yaml")).await;
    assert!(!out.ok);
    let expected = format!(
        "{DENIED_SGC}StaticGatewayConfiguration mynamespace/mystaticegressgateway is invalid: spec.publicIpPrefixId: rule 6 (public IP prefix ID): \
         '/subscriptions/mySubscriptionID/resourcegroups/myResourceGroup/providers/Microsoft.Network/publicipprefixes/myPIPPrefix' \
         has subscription 'mySubscriptionID', which is not a subscription ID (a GUID)"
    );
    assert!(
        out.stderr.contains(&expected),
        "got: {}\nwant: {expected}",
        out.stderr
    );
    println!("seed000-vmss-byo.yaml:\n{}", out.stderr);

    let out = env.apply(&manifest("seed002-unsubstituted.yaml")).await;
    assert!(
        !out.ok && out.stderr.contains(DENIED_SGC) && out.stderr.contains("spec.publicIpPrefixId: rule 6"),
        "{}",
        out.stderr
    );
    println!("seed002-unsubstituted.yaml:\n{}", out.stderr);

    // Accepted samples are created with the defaults filled in.
    for (file, ns, name) in [
        ("seed000-private.yaml", "mynamespace", "myprivateegressgateway"),
        (
            "seed000-vmss-byo-real-subscription.yaml",
            "demo",
            "mystaticegressgateway",
        ),
        ("seed002-nodepool-byo.yaml", "default", "my-static-egress-gateway"),
        ("seed004-private-fragment.yaml", "demo", "private"),
    ] {
        let out = env.apply(&manifest(file)).await;
        assert!(
            out.ok
                && out.stdout.contains(&format!(
                    "staticgatewayconfiguration.egressgateway.kubernetes.azure.com/{name} created"
                )),
            "{file}: {}",
            out.stderr
        );
        let route = env
            .kubectl(&[
                "get",
                "sgc",
                name,
                "-n",
                ns,
                "-o",
                "jsonpath={.spec.defaultRoute} {.spec.provisionPublicIps}",
            ])
            .await;
        assert!(route.ok, "{}", route.stderr);
    }
    let got = env
        .kubectl(&[
            "get",
            "sgc",
            "my-static-egress-gateway",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.defaultRoute} {.spec.provisionPublicIps}",
        ])
        .await;
    assert_eq!(
        got.stdout, "staticEgressGateway true",
        "defaults applied to the manifest that omitted them"
    );

    // Refused by the CRD schema before our validating webhook runs.
    for (file, needle) in [
        (
            "invalid-enum.yaml",
            "spec.defaultRoute: Unsupported value: \"internet\"",
        ),
        (
            "invalid-prefix-40.yaml",
            "spec.gatewayVmssProfile.publicIpPrefixSize",
        ),
        ("invalid-types.yaml", "spec.provisionPublicIps"),
        ("pool-invalid-size.yaml", "spec.publicIpPrefixSize"),
        // kubectl asks for strict field validation: a misspelled field is an error, not silently dropped.
        (
            "upstream-docs-sample-wrong-case.yaml",
            "unknown field \"spec.excludeCIDRs\"",
        ),
        (
            "upstream-readme-private-misplaced-size.yaml",
            "unknown field \"spec.publicIpPrefixSize\"",
        ),
    ] {
        let out = env.apply(&manifest(file)).await;
        assert!(!out.ok && out.stderr.contains(needle), "{file}: {}", out.stderr);
        println!("{file}:\n{}", out.stderr);
    }

    // Several violations at once, each with its path, in one message. Bad excludeCidrs entries are refused by
    // the CRD schema (rule 7 per entry), which answers before any validating webhook.
    env.assert_refused_naming_all(
        "bad.yaml",
        "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\nmetadata:\n  name: bad\n  namespace: demo\nspec:\n  gatewayNodepoolName: gwpool\n  provisionPublicIps: false\n  publicIpPrefixId: my-prefix\n  excludeCidrs: [10.0.0.0/8, 1.2.3.4, fd00::/8]\n",
        &[
            "spec.publicIpPrefixId: Invalid value: \"object\": rule 6",
            "spec.excludeCidrs[1]: Invalid value: \"string\": rule 7",
            "a single address is written 1.2.3.4/32",
            "spec.excludeCidrs[2]: Invalid value: \"string\": rule 7",
        ],
    )
    .await;
    // The rules only the webhook can check, several at once.
    env.assert_refused_naming_all(
        "bad-webhook.yaml",
        "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\nmetadata:\n  name: bad\n  namespace: demo\nspec:\n  gatewayVmssProfile: {vmssResourceGroup: 'bad/rg', publicIpPrefixSize: 31}\n  publicIpPrefixId: my-prefix\n",
        &[
            DENIED_SGC,
            "spec.publicIpPrefixId: rule 6",
            "spec.gatewayVmssProfile.vmssResourceGroup: rule 2",
            "spec.gatewayVmssProfile.vmssName: rule 2",
        ],
    )
    .await;

    // Warnings come back as kubectl warnings.
    let warned = env.write(
        "warned.yaml",
        "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\nmetadata:\n  name: warned\n  namespace: demo\nspec:\n  gatewayNodepoolName: gwpool\n  excludeCidrs: [10.1.2.3/16]\n",
    );
    let out = env.apply(&warned).await;
    assert!(
        out.ok
            && out.stderr.contains(
                "Warning: spec.excludeCidrs[0]: '10.1.2.3/16' has host bits set; it is treated as 10.1.0.0/16"
            ),
        "{}",
        out.stderr
    );

    // Immutable pool reference (the CRD's CEL rule answers before the webhook; both name the fix).
    let moved = env.write(
        "moved.yaml",
        "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\nmetadata:\n  name: warned\n  namespace: demo\nspec:\n  gatewayNodepoolName: otherpool\n",
    );
    let out = env.apply(&moved).await;
    assert!(
        !out.ok && out.stderr.contains("gatewayNodepoolName is immutable"),
        "{}",
        out.stderr
    );
}

fn node(name: &str, pool: &str) -> Node {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"kubernetes.azure.com/agentpool": pool, "kubernetes.azure.com/mode": "gateway"}}}))
        .expect("node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_four_uses_the_clusters_nodes_and_pools() {
    let env = start().await;
    let ns = env.namespace("rule4").await;
    // Nodes and pools are cluster-wide: this test's own pool name.
    let gwpool = format!("gw{}", &ns[ns.len() - 6..]);
    let nodes: Api<Node> = Api::all(env.admin());
    for i in 0..3 {
        nodes
            .create(&PostParams::default(), &node(&format!("{gwpool}-{i}"), &gwpool))
            .await
            .expect("node");
    }
    let pool_ref = api::PoolRef::Nodepool(gwpool.clone());
    eventually("webhook sees 3 gateway nodes", || async {
        env.webhook.facts.node_count(&pool_ref) == Some(3)
    })
    .await;

    let pool = |size: u32| {
        env.write(&format!("pool{size}.yaml"), &format!(
        "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: GatewayPool\nmetadata:\n  name: {gwpool}\nspec:\n  gatewayNodepoolName: {gwpool}\n  publicIpPrefixSize: {size}\n"))
    };
    let out = env.apply(&pool(31)).await;
    assert!(!out.ok && out.stderr.contains(&format!("GatewayPool {gwpool} is invalid: spec.publicIpPrefixSize: rule 4 (instances fit the prefix): the pool has 3 gateway nodes but a /31 prefix has only 2 addresses; use publicIpPrefixSize: 30")), "{}", out.stderr);
    println!("pool /31 with 3 nodes:\n{}", out.stderr);
    let out = env.apply(&pool(30)).await;
    assert!(out.ok, "{}", out.stderr);
    eventually("webhook sees the pool", || async {
        env.webhook.facts.gateway_pool(&pool_ref).is_some()
    })
    .await;

    // The pool grows beyond /30: new configurations on it are refused with the reason.
    for i in 3..5 {
        nodes
            .create(&PostParams::default(), &node(&format!("{gwpool}-{i}"), &gwpool))
            .await
            .expect("node");
    }
    eventually("webhook sees 5 gateway nodes", || async {
        env.webhook.facts.node_count(&pool_ref) == Some(5)
    })
    .await;
    let sgc = env.write("sgc.yaml", &format!("apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\nmetadata:\n  name: gw\n  namespace: {ns}\nspec:\n  gatewayNodepoolName: {gwpool}\n"));
    let out = env.apply(&sgc).await;
    assert!(!out.ok && out.stderr.contains("spec.gatewayNodepoolName: rule 4 (instances fit the prefix): the pool has 5 gateway nodes but a /30 prefix has only 4 addresses"), "{}", out.stderr);
    println!("SGC on an overgrown pool:\n{}", out.stderr);
}

/// A configuration created on a GatewayPool that is being deleted would hold the pool's deletion (its finalizer
/// waits for the configurations on it): the webhook refuses it, and still lets existing configurations change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configurations_on_a_deleting_pool_are_refused() {
    let env = start().await;
    let ns = env.namespace("deleting").await;
    let gwpool = format!("gw{}", &ns[ns.len() - 6..]);
    let pools: Api<api::GatewayPool> = Api::all(env.admin());
    let held: api::GatewayPool = serde_json::from_value(json!({
        "apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "GatewayPool",
        "metadata": {"name": gwpool, "finalizers": ["example.com/hold"]},
        "spec": {"gatewayNodepoolName": gwpool, "publicIpPrefixSize": 31}}))
    .expect("pool");
    pools.create(&PostParams::default(), &held).await.expect("pool");
    let sgc = |name: &str| {
        env.write(&format!("{name}.yaml"), &format!("apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  gatewayNodepoolName: {gwpool}\n"))
    };
    let out = env.apply(&sgc("before")).await;
    assert!(out.ok, "{}", out.stderr);

    let out = env
        .kubectl(&["delete", "gatewaypool", &gwpool, "--wait=false"])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let pool_ref = api::PoolRef::Nodepool(gwpool.clone());
    eventually("webhook sees the pool deleting", || async {
        env.webhook.facts.deleting_pool(&pool_ref).as_deref() == Some(gwpool.as_str())
    })
    .await;
    let out = env.apply(&sgc("after")).await;
    assert!(
        !out.ok
            && out.stderr.contains(&format!(
                "spec.gatewayNodepoolName: pool being deleted: GatewayPool '{gwpool}' is being deleted"
            )),
        "{}",
        out.stderr
    );
    println!("configuration on a deleting pool:\n{}", out.stderr);
    let out = env
        .kubectl(&["label", "sgc", "before", "-n", &ns, "team=a"])
        .await;
    assert!(
        out.ok,
        "an existing configuration stays updatable: {}",
        out.stderr
    );

    // Once the pool is gone, the name is free: a configuration may name it again (and waits for a new pool).
    pools
        .patch(
            &gwpool,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("release the pool");
    eventually("webhook sees the pool gone", || async {
        env.webhook.facts.deleting_pool(&pool_ref).is_none()
            && env.webhook.facts.gateway_pool(&pool_ref).is_none()
    })
    .await;
    let out = env.apply(&sgc("after")).await;
    assert!(out.ok, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_podendpoints_and_failure_policy() {
    let env = start().await;
    let demo = env.namespace("demo").await;
    let team = format!("team-{}", &demo[demo.len() - 6..]);
    env.cluster
        .ensure_namespace(
            &team,
            &[(api::names::NAMESPACE_DEFAULT_GATEWAY_ANNOTATION, "team-gw")],
        )
        .await
        .expect("namespace");
    eventually("webhook sees the namespace's default", || async {
        env.webhook
            .facts
            .namespace_annotations(&team)
            .is_some_and(|a| a.contains_key(api::names::NAMESPACE_DEFAULT_GATEWAY_ANNOTATION))
    })
    .await;
    // Namespace default injected into a new pod.
    let out = env
        .kubectl(&["run", "app", "-n", &team, "--image=nginx", "--restart=Never"])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let got = env
        .kubectl(&[
            "get",
            "pod",
            "app",
            "-n",
            &team,
            "-o",
            "jsonpath={.metadata.annotations.kubernetes\\.azure\\.com/static-gateway-configuration}",
        ])
        .await;
    assert_eq!(got.stdout, "team-gw");
    // It names a configuration that does not exist: a warning, not a denial.
    assert!(out.stderr.contains(&format!("Warning: metadata.annotations[kubernetes.azure.com/static-gateway-configuration]: StaticGatewayConfiguration 'team-gw' does not exist in namespace '{team}'")), "{}", out.stderr);

    // Plain pods elsewhere are untouched.
    let out = env
        .kubectl(&["run", "plain", "-n", &demo, "--image=nginx", "--restart=Never"])
        .await;
    assert!(out.ok && !out.stderr.contains("Warning"), "{}", out.stderr);
    let got = env
        .kubectl(&[
            "get",
            "pod",
            "plain",
            "-n",
            &demo,
            "-o",
            "jsonpath={.metadata.annotations}",
        ])
        .await;
    assert_eq!(got.stdout, "");

    // Annotated hostNetwork pods are refused (after the API server's own validation and defaulting).
    let host = env.write("host.yaml", &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: host\n  namespace: {demo}\n  annotations:\n    kubernetes.azure.com/static-gateway-configuration: gw\nspec:\n  hostNetwork: true\n  containers: [{{name: c, image: nginx}}]\n"));
    let out = env.apply(&host).await;
    assert!(
        !out.ok
            && out.stderr.contains(
                "admission webhook \"validate.pods.egressgateway.kubernetes.azure.com\" denied the request"
            )
            && out.stderr.contains(&format!(
                "Pod {demo}/host is invalid: metadata.annotations[kubernetes.azure.com/static-gateway-configuration]: \
                 hostNetwork pod: it shares its node's network and cannot use a static egress gateway; remove the \
                 annotation (it names 'gw') or set hostNetwork: false"
            )),
        "{}",
        out.stderr
    );
    println!("annotated hostNetwork pod:\n{}", out.stderr);

    // PodEndpoints: refused for users, allowed for the node agent's service account.
    let pe = env.write("pe.yaml", &format!("apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: PodEndpoint\nmetadata:\n  name: app\n  namespace: {team}\nspec:\n  staticGatewayConfiguration: team-gw\n  podIpAddress: 10.244.0.5/32\n  podPublicKey: aGVsbG8=\n"));
    let out = env.apply(&pe).await;
    assert!(!out.ok && out.stderr.contains("PodEndpoints register WireGuard peers on gateway nodes and are written only by the node agent"), "{}", out.stderr);
    println!("PodEndpoint by a user:\n{}", out.stderr);
    // The chart grants the node agent PodEndpoint writes through RBAC; the webhook is the second lock.
    let admin = env.admin();
    let role_name = format!("node-agent-{team}");
    let role: k8s_openapi::api::rbac::v1::ClusterRole = serde_json::from_value(json!({"metadata": {"name": role_name},
        "rules": [{"apiGroups": [api::names::GROUP], "resources": ["podendpoints"], "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]})).expect("role");
    let binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding =
        serde_json::from_value(json!({"metadata": {"name": role_name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
        "subjects": [{"kind": "ServiceAccount", "name": AGENT_SA, "namespace": NS}]}))
        .expect("binding");
    Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &role)
        .await
        .expect("role");
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(admin)
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");
    let token = env
        .cluster
        .service_account_token(NS, AGENT_SA)
        .await
        .expect("the node agent's token");
    let agent_kubeconfig = env.write(
        "agent.kubeconfig",
        &env.cluster
            .kubeconfig_for("node-agent", &token)
            .expect("kubeconfig"),
    );
    // RBAC caches settle within moments on the real server.
    eventually("the node agent's account writes the PodEndpoint", || async {
        env.kubectl
            .with_kubeconfig(&agent_kubeconfig)
            .run(&["apply", "-f", pe.to_str().expect("utf-8")])
            .await
            .ok
    })
    .await;

    // Webhook down: our kinds fail closed (failurePolicy Fail), pods are never blocked (Ignore).
    env.webhook.stop();
    let sgc = env.write("sgc.yaml", &format!("apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\nmetadata:\n  name: later\n  namespace: {demo}\nspec:\n  gatewayNodepoolName: gwpool\n"));
    eventually("webhook stopped answering", || async {
        !env.apply(&sgc).await.ok
    })
    .await;
    let out = env.apply(&sgc).await;
    assert!(out.stderr.contains("failed calling webhook"), "{}", out.stderr);
    let out = env
        .kubectl(&[
            "run",
            "still-fine",
            "-n",
            &team,
            "--image=nginx",
            "--restart=Never",
        ])
        .await;
    assert!(
        out.ok,
        "pods are created while the webhook is down: {}",
        out.stderr
    );
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(env.admin(), &team);
    pods.delete("still-fine", &DeleteParams::default())
        .await
        .expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_generated_ca_is_patched_into_the_webhook_configurations() {
    let env = start().await;
    let admin = env.admin();
    let generated = webhook::tls::self_signed(&[format!("{SVC}.{NS}.svc")]).expect("certificate");
    let patched = webhook::cabundle::patch_ca_bundle(
        admin.clone(),
        &generated.ca_pem,
        Some("kube-egress-gateway"),
        Some("kube-egress-gateway"),
    )
    .await
    .expect("patch");
    assert_eq!(patched, 2, "both configurations");
    let want = base64::engine::general_purpose::STANDARD.encode(&generated.ca_pem);
    let mwc = Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .get("kube-egress-gateway")
        .await
        .expect("mwc");
    let vwc = Api::<ValidatingWebhookConfiguration>::all(admin.clone())
        .get("kube-egress-gateway")
        .await
        .expect("vwc");
    let bundles: Vec<String> = mwc
        .webhooks
        .unwrap_or_default()
        .iter()
        .map(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .map(|b| base64::engine::general_purpose::STANDARD.encode(&b.0))
                .unwrap_or_default()
        })
        .chain(vwc.webhooks.unwrap_or_default().iter().map(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .map(|b| base64::engine::general_purpose::STANDARD.encode(&b.0))
                .unwrap_or_default()
        }))
        .collect();
    assert_eq!(bundles.len(), 6);
    assert!(
        bundles.iter().all(|b| *b == want),
        "every webhook trusts the new CA"
    );
    // Absent configurations are skipped, not an error, and not counted (a renewal that patched nothing must
    // not serve the new CA's certificate).
    let patched = webhook::cabundle::patch_ca_bundle(admin, &generated.ca_pem, Some("absent"), None)
        .await
        .expect("absent is fine");
    assert_eq!(patched, 0);
}
