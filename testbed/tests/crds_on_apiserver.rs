//! The product's CRDs on the real kube-apiserver (no webhook registered in this test binary): what
//! `kubectl explain` and `kubectl get` show, every CEL rule enforced by the apiserver alone, server-side apply
//! by two managers, the status subresource, and one refusal listing every schema violation. The rules that
//! the simulator must enforce the same way run against kube-sim too.

use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use testbed::cluster::{Backend, Kubectl, TestCluster};

const API_VERSION: &str = "egressgateway.kubernetes.azure.com/v1alpha1";

/// One API server under test: the real one (shared by this binary) or a fresh kube-sim.
struct Server {
    client: kube::Client,
    kubectl: Kubectl,
    namespace: String,
    name: &'static str,
    _dir: tempfile::TempDir,
    _cluster: TestCluster,
}

impl Server {
    /// The `backend` with the CRDs, a fresh namespace `<prefix>-<random>` and an admin `kubectl`.
    async fn start(backend: Backend, prefix: &str) -> Self {
        let cluster = TestCluster::start(backend).await.expect("API server");
        cluster.install_crds().await.expect("CRDs");
        let dir = tempfile::tempdir().expect("tmp");
        Self {
            client: cluster.client().expect("client"),
            kubectl: cluster.admin_kubectl(dir.path()).expect("kubeconfig"),
            namespace: cluster.namespace(prefix, &[]).await.expect("namespace"),
            name: match backend {
                Backend::Real => "kube-apiserver",
                Backend::Sim => "kube-sim",
            },
            _dir: dir,
            _cluster: cluster,
        }
    }

    async fn real(prefix: &str) -> Self {
        Self::start(Backend::Real, prefix).await
    }
    fn sgcs(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &resource("StaticGatewayConfiguration"),
        )
    }

    /// Creates configuration `name` on node pool `gwpool`, which must be accepted.
    async fn create_sgc(&self, name: &str) -> DynamicObject {
        self.sgcs()
            .create(
                &PostParams::default(),
                &object(
                    "StaticGatewayConfiguration",
                    name,
                    json!({"gatewayNodepoolName": "gwpool"}),
                ),
            )
            .await
            .expect("create")
    }

    fn pools(&self) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), &resource("GatewayPool"))
    }

    /// `got` has no `spec.excludeCidrs`; `why` says what should have removed or ignored it.
    #[track_caller]
    fn assert_no_exclude_cidrs(&self, got: &DynamicObject, why: &str) {
        assert!(
            got.data["spec"].get("excludeCidrs").is_none(),
            "{}: {why}: {}",
            self.name,
            got.data
        );
    }
}

fn resource(kind: &str) -> kube::api::ApiResource {
    let gvk = kube::api::GroupVersionKind::gvk("egressgateway.kubernetes.azure.com", "v1alpha1", kind);
    let plural = format!("{}s", kind.to_lowercase());
    kube::api::ApiResource::from_gvk_with_plural(&gvk, &plural)
}

fn object(kind: &str, name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(
        json!({"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}),
    )
    .expect("object")
}

/// The apiserver's refusal text, or a panic when it accepted.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            s.message.clone()
        }
        other => panic!("expected a 422 refusal, got {other:?}"),
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_shows_reflowed_descriptions_of_both_kinds() {
    let server = Server::real("explain").await;
    for (what, want) in [
        (
            "staticgatewayconfiguration.spec",
            api::crd::reflow(
                "Which traffic of annotated pods goes through the gateway. staticEgressGateway (default): all traffic
                except excludeCidrs.",
            ),
        ),
        ("gatewaypool.spec", "Length of the public IP prefix each configuration on this pool gets: 28 to 31.".into()),
        ("sgc.spec.excludeCidrs", "IPv4 CIDRs that bypass the gateway (staticEgressGateway)".into()),
    ] {
        let out = server.kubectl.run(&["explain", what]).await;
        let stdout = out.stdout;
        assert!(out.ok, "kubectl explain {what}: {}", out.stderr);
        // kubectl wraps long lines itself; a description keeps no line break of its own (the source's
        // wrapping would show as a line ending mid-sentence before kubectl's width).
        let flat = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains(&want), "kubectl explain {what} lacks {want:?}:\n{stdout}");
        println!("kubectl explain {what}:\n{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printer_columns_and_short_names() {
    let server = Server::real("columns").await;
    let out = server
        .kubectl
        .run(&[
            "api-resources",
            "--api-group",
            "egressgateway.kubernetes.azure.com",
            "--no-headers",
        ])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let stdout = out.stdout;
    let short: Vec<(String, String)> = stdout
        .lines()
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (
                cols[0].to_string(),
                if cols.len() == 5 {
                    cols[1].to_string()
                } else {
                    String::new()
                },
            )
        })
        .collect();
    assert!(
        short.contains(&("staticgatewayconfigurations".into(), "sgc".into())),
        "{stdout}"
    );
    assert!(short.contains(&("gatewaypools".into(), "gwp".into())), "{stdout}");

    let name = unique("cols");
    server.create_sgc(&name).await;
    let out = server.kubectl.run(&["get", "sgc", "-n", &server.namespace]).await;
    assert!(out.ok, "{}", out.stderr);
    let stdout = out.stdout;
    let header: Vec<&str> = stdout
        .lines()
        .next()
        .unwrap_or_default()
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        header,
        ["NAME", "POOL", "VMSS", "EGRESS PREFIX", "READY", "AGE"],
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with(&name) && l.contains("gwpool")),
        "{stdout}"
    );
    let out = server.kubectl.run(&["get", "gwp"]).await;
    assert!(out.ok, "{}", out.stderr);
    println!("{}", out.stdout);
}

/// One way to break a CEL rule: create a `kind` object with `spec` (refused), or, with `change`, create it
/// (accepted) and merge-patch `change` into its spec (refused by a transition rule on `oldSelf`).
struct BrokenRule {
    kind: &'static str,
    spec: Value,
    change: Option<Value>,
    /// Text the refusal must contain.
    want: &'static str,
}

const SGC: &str = "StaticGatewayConfiguration";
const POOL: &str = "GatewayPool";

/// Every `x-kubernetes-validations` rule of every CRD, each broken once (the count is checked, so a new
/// rule needs a case here), refused by the apiserver with its message while no webhook is registered.
async fn every_cel_rule_is_enforced(server: &Server) {
    let create = |kind, spec, want| BrokenRule {
        kind,
        spec,
        change: None,
        want,
    };
    let update = |kind, spec, change, want| BrokenRule {
        kind,
        spec,
        change: Some(change),
        want,
    };
    let vmss = json!({"vmssResourceGroup": "rg", "vmssName": "v", "publicIpPrefixSize": 31});
    let cases = [
        create(
            SGC,
            json!({}),
            "spec: Invalid value: \"object\": rule 1 (one gateway pool)",
        ),
        create(
            SGC,
            json!({"gatewayNodepoolName": "a", "gatewayVmssProfile": vmss}),
            "rule 1 (one gateway pool)",
        ),
        create(
            SGC,
            json!({"provisionPublicIps": false, "gatewayVmssProfile": vmss}),
            "spec.gatewayVmssProfile: Invalid value: \"object\": rule 5 (private IPs need a VM-based pool)",
        ),
        create(
            SGC,
            json!({"provisionPublicIps": false, "gatewayNodepoolName": "a", "publicIpPrefixId": "/x"}),
            "spec.publicIpPrefixId: Invalid value: \"object\": rule 6 (public IP prefix ID)",
        ),
        create(
            SGC,
            json!({"gatewayNodepoolName": "a", "excludeCidrs": ["10.0.0.0/8", "1.2.3.4"]}),
            "spec.excludeCidrs[1]: Invalid value: \"string\": rule 7 (valid excludeCidrs)",
        ),
        update(
            SGC,
            json!({"gatewayNodepoolName": "a"}),
            json!({"gatewayNodepoolName": "b"}),
            "spec.gatewayNodepoolName: Invalid value: \"object\": gatewayNodepoolName is immutable",
        ),
        update(
            SGC,
            json!({"gatewayVmssProfile": vmss}),
            json!({"gatewayVmssProfile": {"vmssName": "w"}}),
            "spec.gatewayVmssProfile: Invalid value: \"object\": gatewayVmssProfile is immutable",
        ),
        create(
            POOL,
            json!({"publicIpPrefixSize": 31}),
            "rule 1 (one pool identity)",
        ),
        create(
            POOL,
            json!({"gatewayNodepoolName": "a", "publicIpPrefixSize": 31, "instanceCount": 3}),
            "spec.instanceCount: Invalid value: \"object\": rule 4 (instances fit the prefix)",
        ),
        update(
            POOL,
            json!({"gatewayNodepoolName": "a", "publicIpPrefixSize": 31}),
            json!({"gatewayNodepoolName": "b"}),
            "gatewayNodepoolName is immutable: a GatewayPool always describes the same nodes",
        ),
        update(
            POOL,
            json!({"gatewayNodepoolName": "a", "publicIpPrefixSize": 31}),
            json!({"publicIpPrefixSize": 30}),
            "spec.publicIpPrefixSize: Invalid value: \"object\": publicIpPrefixSize is immutable",
        ),
        update(
            POOL,
            json!({"gatewayVmssProfile": {"vmssResourceGroup": "rg", "vmssName": "v"}, "publicIpPrefixSize": 31}),
            json!({"gatewayVmssProfile": {"vmssName": "w"}}),
            "gatewayVmssProfile is immutable: a GatewayPool always describes the same nodes",
        ),
    ];
    let checked = cases.len();
    for case in cases {
        let api = if case.kind == POOL {
            server.pools()
        } else {
            server.sgcs()
        };
        let name = unique("cel");
        let created = api
            .create(
                &PostParams::default(),
                &object(case.kind, &name, case.spec.clone()),
            )
            .await;
        let result = match &case.change {
            None => created,
            Some(change) => {
                created.expect("create");
                api.patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "spec": change })),
                )
                .await
            }
        };
        let msg = refusal(result);
        assert!(
            msg.contains(case.want),
            "{}: {} {} then {:?}: {msg}",
            server.name,
            case.kind,
            case.spec,
            case.change
        );
    }

    // Rule 1 has two ways to fail (neither, both) and one entry; everything else is one case per rule.
    let rules = api::crd::all()
        .iter()
        .map(|crd| count_rules(&api::crd::openapi_schema(crd).expect("schema")))
        .sum::<usize>();
    assert_eq!(checked - 1, rules, "one case per x-kubernetes-validations rule");
}

fn count_rules(schema: &Value) -> usize {
    match schema {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                if k == "x-kubernetes-validations" {
                    v.as_array().map_or(0, Vec::len)
                } else {
                    count_rules(v)
                }
            })
            .sum(),
        Value::Array(items) => items.iter().map(count_rules).sum(),
        _ => 0,
    }
}

/// Node pool names are case-insensitive (Azure, the webhook, the pool lookups): re-casing
/// `gatewayNodepoolName` is accepted by the immutability rules of both kinds, renaming it is not.
async fn recasing_the_nodepool_name_is_no_change(server: &Server) {
    for kind in [SGC, POOL] {
        let api = if kind == POOL {
            server.pools()
        } else {
            server.sgcs()
        };
        let name = unique("recase");
        let spec = json!({"gatewayNodepoolName": "GwPool", "publicIpPrefixSize": 31});
        let spec = if kind == POOL {
            spec
        } else {
            json!({"gatewayNodepoolName": "GwPool"})
        };
        api.create(&PostParams::default(), &object(kind, &name, spec))
            .await
            .expect("create");
        let rename = |to: &str| Patch::Merge(json!({"spec": {"gatewayNodepoolName": to}}));
        for recased in ["gwpool", "GWPOOL"] {
            if let Err(e) = api.patch(&name, &PatchParams::default(), &rename(recased)).await {
                panic!("{}: {kind} GwPool re-cased to {recased}: {e}", server.name);
            }
        }
        let msg = refusal(api.patch(&name, &PatchParams::default(), &rename("other")).await);
        assert!(
            msg.contains("gatewayNodepoolName is immutable"),
            "{}: {kind}: {msg}",
            server.name
        );
    }
}

/// Private mode with a prefix ID and two bad excludeCidrs entries: one refusal names all three.
async fn one_refusal_lists_every_violation(server: &Server) {
    let spec = json!({"gatewayNodepoolName": "gwpool", "provisionPublicIps": false, "publicIpPrefixId": "/subscriptions/x",
        "excludeCidrs": ["10.0.0.0/8", "1.2.3.4", "fd00::/8"]});
    let msg = refusal(
        server
            .sgcs()
            .create(
                &PostParams::default(),
                &object("StaticGatewayConfiguration", "several", spec),
            )
            .await,
    );
    for want in [
        "spec.publicIpPrefixId: Invalid value: \"object\": rule 6 (public IP prefix ID)",
        "spec.excludeCidrs[1]: Invalid value: \"string\": rule 7 (valid excludeCidrs)",
        "spec.excludeCidrs[2]: Invalid value: \"string\": rule 7 (valid excludeCidrs)",
    ] {
        assert!(msg.contains(want), "{}: missing {want:?} in {msg}", server.name);
    }
    assert!(!msg.contains("excludeCidrs[0]"), "{}: {msg}", server.name);
    println!("{}: {msg}", server.name);
}

/// Two field managers: a field the other manager set survives an apply that leaves it out; applying a field
/// another manager owns is a conflict unless forced.
async fn server_side_apply_by_two_managers(server: &Server) {
    let sgcs = server.sgcs();
    let name = unique("ssa");
    let apply = |manager: &str, force: bool, spec: Value, labels: Value| {
        let sgcs = sgcs.clone();
        let name = name.clone();
        let params = if force {
            PatchParams::apply(manager).force()
        } else {
            PatchParams::apply(manager)
        };
        async move {
            let mut body = json!({"apiVersion": API_VERSION, "kind": "StaticGatewayConfiguration",
                "metadata": {"name": name}, "spec": spec});
            // An applied empty map claims the whole map (see the end of this test): `{}` means no labels.
            if labels != json!({}) {
                body["metadata"]["labels"] = labels;
            }
            sgcs.patch(&name, &params, &Patch::Apply(body)).await
        }
    };
    apply(
        "alice",
        false,
        json!({"gatewayNodepoolName": "gwpool", "excludeCidrs": ["10.0.0.0/8"]}),
        json!({}),
    )
    .await
    .expect("alice");
    apply("bob", false, json!({}), json!({"team": "b"}))
        .await
        .expect("bob");
    // Alice stops managing excludeCidrs: it goes; Bob's label stays.
    let got = apply(
        "alice",
        false,
        json!({"gatewayNodepoolName": "gwpool"}),
        json!({}),
    )
    .await
    .expect("alice again");
    assert_eq!(
        got.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("team"))
            .map(String::as_str),
        Some("b"),
        "{}",
        server.name
    );
    server.assert_no_exclude_cidrs(&got, "dropped with its last manager");
    // The same value of a field Alice owns is shared ownership; another value is a conflict naming her,
    // unless forced.
    apply(
        "bob",
        false,
        json!({"gatewayNodepoolName": "gwpool"}),
        json!({"team": "b"}),
    )
    .await
    .unwrap_or_else(|e| panic!("{}: shared ownership: {e}", server.name));
    let err = apply(
        "bob",
        false,
        json!({"gatewayNodepoolName": "otherpool"}),
        json!({"team": "b"}),
    )
    .await;
    match err {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 409, "{}: {s:?}", server.name);
            assert!(
                s.message.contains("conflict with \"alice\"")
                    && s.message.contains(".spec.gatewayNodepoolName"),
                "{}: {}",
                server.name,
                s.message
            );
        }
        other => panic!("{}: expected a conflict, got {other:?}", server.name),
    }

    // An applied empty map is owned as a whole: another manager adding a key to it conflicts on the map.
    let name = unique("ssa-empty");
    let body = |labels: Value| {
        json!({"apiVersion": API_VERSION, "kind": "StaticGatewayConfiguration",
            "metadata": {"name": name, "labels": labels}, "spec": {"gatewayNodepoolName": "gwpool"}})
    };
    sgcs.patch(
        &name,
        &PatchParams::apply("carol"),
        &Patch::Apply(body(json!({}))),
    )
    .await
    .expect("carol");
    match sgcs
        .patch(
            &name,
            &PatchParams::apply("dave"),
            &Patch::Apply(body(json!({"team": "d"}))),
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert!(
            s.code == 409 && s.message.contains("conflict with \"carol\": .metadata.labels"),
            "{}: {s:?}",
            server.name
        ),
        other => panic!(
            "{}: expected a conflict on the labels, got {other:?}",
            server.name
        ),
    }
}

/// A write to `/status` changes only status (and not the generation); a write to the object keeps status.
async fn status_subresource_ignores_spec(server: &Server) {
    let sgcs = server.sgcs();
    let name = unique("status");
    let created = server.create_sgc(&name).await;
    assert!(created.data.get("status").is_none(), "{}", server.name);
    let generation = created.metadata.generation;
    let patched = sgcs
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"excludeCidrs": ["10.0.0.0/8"]}, "status": {"egressIpPrefix": "20.0.0.0/31"}})),
        )
        .await
        .expect("status patch");
    assert_eq!(
        patched.data["status"]["egressIpPrefix"], "20.0.0.0/31",
        "{}",
        server.name
    );
    server.assert_no_exclude_cidrs(&patched, "spec ignored");
    assert_eq!(patched.metadata.generation, generation, "{}", server.name);
    let main = sgcs
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"egressIpPrefix": "1.1.1.1/32"}, "spec": {"excludeCidrs": ["10.0.0.0/8"]}}),
            ),
        )
        .await
        .expect("main patch");
    assert_eq!(
        main.data["status"]["egressIpPrefix"], "20.0.0.0/31",
        "{}: status kept",
        server.name
    );
    assert_eq!(
        main.metadata.generation,
        generation.map(|g| g + 1),
        "{}",
        server.name
    );
}

/// One test per row, `test name: check(backend, "namespace prefix");`: the check against a [`Server`] of that
/// backend (the binary's real apiserver, or a kube-sim of the test's own). Each check runs on both, to hold
/// the simulator to the apiserver's answers.
macro_rules! on_servers {
    ($($test:ident: $check:ident($backend:ident, $prefix:literal);)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            $check(&Server::start(Backend::$backend, $prefix).await).await;
        }
    )*};
}

on_servers! {
    every_cel_rule_is_enforced_without_the_webhook: every_cel_rule_is_enforced(Real, "cel");
    kube_sim_enforces_every_cel_rule_as_the_apiserver_does: every_cel_rule_is_enforced(Sim, "cel");
    recasing_the_nodepool_name_is_no_change_on_the_apiserver: recasing_the_nodepool_name_is_no_change(Real, "recase");
    recasing_the_nodepool_name_is_no_change_on_kube_sim: recasing_the_nodepool_name_is_no_change(Sim, "recase");
    one_refusal_lists_every_violation_on_the_apiserver: one_refusal_lists_every_violation(Real, "several");
    one_refusal_lists_every_violation_on_kube_sim: one_refusal_lists_every_violation(Sim, "several");
    server_side_apply_by_two_managers_on_the_apiserver: server_side_apply_by_two_managers(Real, "ssa");
    server_side_apply_by_two_managers_on_kube_sim: server_side_apply_by_two_managers(Sim, "ssa");
    status_subresource_ignores_spec_on_the_apiserver: status_subresource_ignores_spec(Real, "status");
    status_subresource_ignores_spec_on_kube_sim: status_subresource_ignores_spec(Sim, "status");
}
