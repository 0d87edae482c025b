//! The simulator through kube-rs: CRUD, selectors, paging, CRD schema behaviour, status subresource,
//! server-side apply, watches, finalizers, garbage collection, authentication and authorization.

mod kube_common;

use std::collections::BTreeMap;

use api::{GatewayPool, StaticGatewayConfiguration};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Api, Error};
use kube_common::{eventually, sim_with_crds};
use serde_json::json;
use testbed::asserts::assert_contains;
use testbed::kube::{KubeSim, KubeSimConfig};

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Default::default()
    }
}

/// Creates Secret `name` with `owner` as its owner reference.
async fn create_owned_secret(secrets: &Api<Secret>, name: &str, owner: OwnerReference) {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("dependent");
}

/// The API's refusal of creating `body` (panics naming `what` when it is created).
async fn refused_create(
    api: &Api<kube::api::DynamicObject>,
    body: serde_json::Value,
    what: &str,
) -> kube::core::Status {
    let obj = serde_json::from_value(body).expect("dynamic");
    api_err(api.create(&PostParams::default(), &obj).await.expect_err(what))
}

/// Server-side apply of `body` to object `name` with `params` (manager, force).
async fn apply<K>(
    api: &Api<K>,
    name: &str,
    params: &PatchParams,
    body: &serde_json::Value,
) -> Result<K, Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, params, &Patch::Apply(body)).await
}

/// Asserts that reading `name` through `api` answers 404; `what` says why it is gone.
async fn assert_gone<K>(api: &Api<K>, name: &str, what: &str)
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    assert_eq!(api_err(api.get(name).await.expect_err(what)).code, 404, "{what}");
}

/// The first event of a raw watch of `cms` from resourceVersion `rv`.
async fn first_event_since(cms: &Api<ConfigMap>, rv: &str) -> Option<WatchEvent<ConfigMap>> {
    let mut events = cms
        .watch(&WatchParams::default().timeout(5), rv)
        .await
        .expect("watch")
        .boxed();
    events.try_next().await.expect("event")
}

/// A simulator with ConfigMap `c` created in `default`: the simulator (keep it alive while testing),
/// the `default` ConfigMaps and `c` as stored.
async fn sim_with_configmap_c() -> (testbed::kube::KubeSim, Api<ConfigMap>, ConfigMap) {
    let sim = sim_with_crds().await;
    let configmaps: Api<ConfigMap> = Api::namespaced(sim.client("admin").expect("client"), "default");
    let live = configmaps
        .create(&PostParams::default(), &cm("c", &[]))
        .await
        .expect("create");
    (sim, configmaps, live)
}

fn api_err(e: Error) -> kube::core::Status {
    match e {
        Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn core_crud_conflicts_selectors_and_paging() {
    let sim = KubeSim::start(KubeSimConfig::default()).await.expect("start");
    let cms: Api<ConfigMap> = Api::namespaced(sim.client("admin").expect("client"), "default");
    let pp = PostParams::default();
    let a = cms
        .create(&pp, &cm("a", &[("app", "web")]))
        .await
        .expect("create a");
    assert!(
        a.metadata.uid.is_some()
            && a.metadata.resource_version.is_some()
            && a.metadata.creation_timestamp.is_some()
    );
    cms.create(&pp, &cm("b", &[("app", "db")]))
        .await
        .expect("create b");
    cms.create(&pp, &cm("c", &[("app", "web")]))
        .await
        .expect("create c");

    let dup = api_err(cms.create(&pp, &cm("a", &[])).await.expect_err("duplicate"));
    assert_eq!((dup.code, dup.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(dup.message, "configmaps \"a\" already exists");

    let mut stale = a.clone();
    stale.data = Some(BTreeMap::from([("k".to_string(), "new".to_string())]));
    cms.replace("a", &pp, &stale)
        .await
        .expect("first update with current resourceVersion");
    let conflict = api_err(cms.replace("a", &pp, &stale).await.expect_err("stale update"));
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert_contains(&conflict.message, "the object has been modified");

    let web = cms
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list");
    let names: Vec<_> = web.items.iter().filter_map(|c| c.metadata.name.clone()).collect();
    assert_eq!(names, ["a", "c"]);
    let by_name = cms
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .expect("field selector");
    assert_eq!(by_name.items.len(), 1);

    let page1 = cms.list(&ListParams::default().limit(2)).await.expect("page 1");
    assert_eq!(page1.items.len(), 2);
    let token = page1.metadata.continue_.clone().expect("continue token");
    let page2 = cms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .expect("page 2");
    assert_eq!(
        page2
            .items
            .iter()
            .filter_map(|c| c.metadata.name.clone())
            .collect::<Vec<_>>(),
        ["c"]
    );
    assert!(page2.metadata.continue_.is_none());

    // Metadata-only representations (as kube-rs metadata watchers request them).
    let meta = cms.get_metadata("b").await.expect("get_metadata");
    assert_eq!(
        meta.types.map(|t| t.kind).as_deref(),
        Some("PartialObjectMetadata")
    );
    let metas = cms
        .list_metadata(&ListParams::default())
        .await
        .expect("list_metadata");
    assert_eq!(metas.items.len(), 3);

    cms.delete("a", &DeleteParams::default()).await.expect("delete");
    let gone = api_err(cms.get("a").await.expect_err("deleted"));
    assert_eq!((gone.code, gone.reason.as_str()), (404, "NotFound"));

    let missing_ns: Api<ConfigMap> = Api::namespaced(sim.client("admin").expect("client"), "nope");
    let e = api_err(
        missing_ns
            .create(&pp, &cm("x", &[]))
            .await
            .expect_err("namespace missing"),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (404, "namespaces \"nope\" not found")
    );
}

#[tokio::test]
async fn crd_objects_are_defaulted_pruned_validated_and_track_generation() {
    let sim = sim_with_crds().await;
    let client = sim.client("admin").expect("client");
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(client.clone(), "default");
    let raw = json!({
        "apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "StaticGatewayConfiguration",
        "metadata": {"name": "s1"}, "spec": {"gatewayNodepoolName": "gw", "unknownField": 1}
    });
    let obj: StaticGatewayConfiguration = serde_json::from_value(raw.clone()).expect("typed");
    let created = sgcs.create(&PostParams::default(), &obj).await.expect("create");
    assert_eq!(created.metadata.generation, Some(1));
    // Defaults from the schema were applied.
    let dynamic: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &kube::api::ApiResource::erase::<StaticGatewayConfiguration>(&()),
    );
    let got = dynamic.get("s1").await.expect("get");
    assert_eq!(got.data["spec"]["defaultRoute"], "staticEgressGateway");
    assert!(
        got.data["spec"].get("unknownField").is_none(),
        "unknown fields are pruned"
    );

    // Schema validation: wrong type.
    let bad = json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "StaticGatewayConfiguration",
        "metadata": {"name": "bad"}, "spec": {"gatewayNodepoolName": "gw", "defaultRoute": "sideways"}});
    let e = refused_create(&dynamic, bad, "invalid").await;
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert!(
        e.message.starts_with("StaticGatewayConfiguration.egressgateway.kubernetes.azure.com \"bad\" is invalid: spec.defaultRoute: Unsupported value: \"sideways\""),
        "{}",
        e.message
    );

    // CEL rules of the schema (x-kubernetes-validations), including transition rules with oldSelf.
    let no_pool = json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "StaticGatewayConfiguration",
        "metadata": {"name": "nopool"}, "spec": {}});
    let e = refused_create(&dynamic, no_pool, "rule 1").await;
    assert_eq!(e.code, 422);
    assert_contains(
        &e.message,
        "spec: Invalid value: \"object\": rule 1 (one gateway pool)",
    );
    let rename = json!({"spec": {"gatewayNodepoolName": "other"}});
    let e = api_err(
        sgcs.patch("s1", &PatchParams::default(), &Patch::Merge(&rename))
            .await
            .expect_err("immutable pool"),
    );
    assert_eq!(e.code, 422, "{}", e.message);

    // Spec change bumps generation, status update does not, and main-resource writes ignore status.
    let spec_patch = json!({"spec": {"excludeCidrs": ["10.0.0.0/8"]}});
    let p = sgcs
        .patch("s1", &PatchParams::default(), &Patch::Merge(&spec_patch))
        .await
        .expect("merge patch");
    assert_eq!(p.metadata.generation, Some(2));
    let status = json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "StaticGatewayConfiguration",
        "status": {"egressIpPrefix": "20.1.2.4/31"}});
    let s = sgcs
        .patch_status(
            "s1",
            &PatchParams::apply("operator").force(),
            &Patch::Apply(&status),
        )
        .await
        .expect("status apply");
    assert_eq!(s.metadata.generation, Some(2));
    assert_eq!(
        s.status
            .as_ref()
            .and_then(|st| st.egress_ip_prefix.clone())
            .as_deref(),
        Some("20.1.2.4/31")
    );
    let wipe = json!({"status": {"egressIpPrefix": "1.1.1.1/32"}, "metadata": {"labels": {"x": "y"}}});
    let after = sgcs
        .patch("s1", &PatchParams::default(), &Patch::Merge(&wipe))
        .await
        .expect("main patch");
    assert_eq!(
        after.status.and_then(|st| st.egress_ip_prefix).as_deref(),
        Some("20.1.2.4/31"),
        "main resource ignores status"
    );
    assert_eq!(
        after.metadata.generation,
        Some(2),
        "label change is not a spec change"
    );
}

#[tokio::test]
async fn server_side_apply_owns_fields_per_manager() {
    let sim = sim_with_crds().await;
    let pools: Api<GatewayPool> = Api::all(sim.client("admin").expect("client"));
    let cfg = json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "GatewayPool",
        "metadata": {"name": "p1", "labels": {"team": "a", "tier": "gw"}},
        "spec": {"gatewayNodepoolName": "gw", "publicIpPrefixSize": 31}});
    let created = apply(&pools, "p1", &PatchParams::apply("tf"), &cfg)
        .await
        .expect("apply creates");
    assert_eq!(created.metadata.generation, Some(1));
    let mf = created.metadata.managed_fields.clone().unwrap_or_default();
    assert_eq!(mf.len(), 1);
    assert_eq!(mf[0].manager.as_deref(), Some("tf"));

    // Dropping a label from the applied config removes it.
    let cfg2 = json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "GatewayPool",
        "metadata": {"name": "p1", "labels": {"team": "a"}},
        "spec": {"gatewayNodepoolName": "gw", "publicIpPrefixSize": 31}});
    let applied = apply(&pools, "p1", &PatchParams::apply("tf"), &cfg2)
        .await
        .expect("re-apply");
    assert_eq!(
        applied
            .metadata
            .labels
            .unwrap_or_default()
            .keys()
            .collect::<Vec<_>>(),
        ["team"]
    );

    // Another manager changing an owned field conflicts unless forced.
    let other = json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "GatewayPool",
        "metadata": {"name": "p1", "labels": {"team": "b"}}});
    let e = api_err(
        apply(&pools, "p1", &PatchParams::apply("intruder"), &other)
            .await
            .expect_err("conflict"),
    );
    assert_eq!(e.code, 409);
    assert_contains(&e.message, "conflict with \"tf\"");
    let forced = apply(&pools, "p1", &PatchParams::apply("intruder").force(), &other)
        .await
        .expect("forced");
    assert_eq!(
        forced
            .metadata
            .labels
            .unwrap_or_default()
            .get("team")
            .map(String::as_str),
        Some("b")
    );

    // A no-op apply does not bump resourceVersion.
    let rv = forced.metadata.resource_version.clone();
    let again = apply(&pools, "p1", &PatchParams::apply("intruder").force(), &other)
        .await
        .expect("no-op");
    assert_eq!(again.metadata.resource_version, rv);
}

#[tokio::test]
async fn watcher_and_reflector_follow_changes_and_old_versions_are_gone() {
    let sim = KubeSim::start(KubeSimConfig::default()).await.expect("start");
    let cms: Api<ConfigMap> = Api::namespaced(sim.client("admin").expect("client"), "default");
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(cms.clone(), watcher::Config::default().labels("app=web")),
    )
    .applied_objects();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while stream.try_next().await.is_ok() {}
    });
    cms.create(&PostParams::default(), &cm("w1", &[("app", "web")]))
        .await
        .expect("create");
    cms.create(&PostParams::default(), &cm("other", &[("app", "db")]))
        .await
        .expect("create");
    eventually("reflector sees w1", || {
        let r = reader.clone();
        async move { r.state().iter().any(|c| c.metadata.name.as_deref() == Some("w1")) }
    })
    .await;
    assert!(
        reader
            .state()
            .iter()
            .all(|c| c.metadata.name.as_deref() != Some("other")),
        "label selector filters"
    );
    // Relabelling out of the selector looks like a deletion to the watcher.
    cms.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})),
    )
    .await
    .expect("relabel");
    eventually("w1 leaves the store", || {
        let r = reader.clone();
        async move { r.state().is_empty() }
    })
    .await;
    task.abort();

    // Raw watch from a known resourceVersion replays later events.
    let list = cms.list(&ListParams::default()).await.expect("list");
    let rv = list.metadata.resource_version.clone().expect("list rv");
    cms.delete("other", &DeleteParams::default())
        .await
        .expect("delete");
    match first_event_since(&cms, &rv).await {
        Some(WatchEvent::Deleted(c)) => assert_eq!(c.metadata.name.as_deref(), Some("other")),
        other => panic!("expected DELETED, got {other:?}"),
    }
    // After compaction the old version is gone.
    sim.compact();
    match first_event_since(&cms, &rv).await {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_bookmarks_are_sent_when_allowed() {
    let cfg = KubeSimConfig {
        bookmark_interval: std::time::Duration::from_millis(100),
        ..KubeSimConfig::default()
    };
    let sim = KubeSim::start(cfg).await.expect("start");
    let cms: Api<ConfigMap> = Api::namespaced(sim.client("admin").expect("client"), "default");
    let mut w = cms
        .watch(
            &WatchParams {
                bookmarks: true,
                ..WatchParams::default()
            }
            .timeout(5),
            "0",
        )
        .await
        .expect("watch")
        .boxed();
    match w.try_next().await.expect("event") {
        Some(WatchEvent::Bookmark(b)) => assert!(!b.metadata.resource_version.is_empty()),
        other => panic!("expected BOOKMARK, got {other:?}"),
    }
}

#[tokio::test]
async fn finalizer_helper_delays_deletion_until_cleanup() {
    let sim = KubeSim::start(KubeSimConfig::default()).await.expect("start");
    let cms: Api<ConfigMap> = Api::namespaced(sim.client("admin").expect("client"), "default");
    cms.create(&PostParams::default(), &cm("f", &[]))
        .await
        .expect("create");
    let fin = "test.example.com/cleanup";
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<&'static str>::new()));
    let run = |obj: ConfigMap| {
        let cms = cms.clone();
        let seen = seen.clone();
        async move {
            finalizer(&cms, fin, std::sync::Arc::new(obj), |ev| async move {
                let what = match ev {
                    FinalizerEvent::Apply(_) => "applied",
                    FinalizerEvent::Cleanup(_) => "cleaned",
                };
                seen.lock().expect("lock").push(what);
                Ok::<_, std::convert::Infallible>(kube::runtime::controller::Action::await_change())
            })
            .await
            .map(|_| ())
        }
    };
    // First reconcile adds the finalizer (and returns without running apply).
    run(cms.get("f").await.expect("get"))
        .await
        .expect("adds finalizer");
    let with_fin = cms.get("f").await.expect("get");
    assert_eq!(with_fin.metadata.finalizers.clone().unwrap_or_default(), [fin]);
    run(with_fin).await.expect("apply");
    assert_eq!(*seen.lock().expect("lock"), ["applied"]);

    cms.delete("f", &DeleteParams::default()).await.expect("delete");
    let terminating = cms.get("f").await.expect("still there");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    let add = json!({"metadata": {"finalizers": [fin, "another/one"]}});
    let e = api_err(
        cms.patch("f", &PatchParams::default(), &Patch::Merge(&add))
            .await
            .expect_err("no new finalizers"),
    );
    assert_eq!(e.code, 422);
    run(terminating).await.expect("cleanup");
    assert_eq!(*seen.lock().expect("lock"), ["applied", "cleaned"]);
    assert_gone(&cms, "f", "removed after finalizer cleared").await;
}

#[tokio::test]
async fn garbage_collection_follows_owner_references() {
    let sim = KubeSim::start(KubeSimConfig::default()).await.expect("start");
    let client = sim.client("admin").expect("client");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let owner = cms
        .create(&PostParams::default(), &cm("owner", &[]))
        .await
        .expect("owner");
    let oref = OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.clone().expect("uid"),
        ..Default::default()
    };
    for name in ["dep1", "dep2"] {
        create_owned_secret(&secrets, name, oref.clone()).await;
    }
    cms.delete("owner", &DeleteParams::background())
        .await
        .expect("delete owner");
    assert_gone(&secrets, "dep1", "collected").await;

    let owner2 = cms
        .create(&PostParams::default(), &cm("owner", &[]))
        .await
        .expect("owner again");
    let owned_by_owner2 = OwnerReference {
        uid: owner2.metadata.uid.clone().expect("uid"),
        ..oref
    };
    create_owned_secret(&secrets, "orphan", owned_by_owner2).await;
    cms.delete("owner", &DeleteParams::orphan())
        .await
        .expect("orphaning delete");
    let orphan = secrets.get("orphan").await.expect("orphan survives");
    assert!(orphan.metadata.owner_references.unwrap_or_default().is_empty());

    // Deleting a namespace deletes its contents.
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &Namespace {
            metadata: ObjectMeta {
                name: Some("tmp".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .expect("ns");
    let tmp: Api<ConfigMap> = Api::namespaced(client, "tmp");
    tmp.create(&PostParams::default(), &cm("x", &[]))
        .await
        .expect("cm in ns");
    nss.delete("tmp", &DeleteParams::default())
        .await
        .expect("delete ns");
    assert_gone(&nss, "tmp", "ns gone").await;
    assert_gone(&tmp, "x", "content gone").await;
}

#[tokio::test]
async fn authentication_and_authorization() {
    let mut cfg = KubeSimConfig::default();
    cfg.users.push(testbed::kube::User::service_account(
        "egress",
        "operator",
        "sa-token-for-tests",
    ));
    let sim = KubeSim::start(cfg).await.expect("start");
    // No token: 401.
    let mut cfg = sim.client_config("admin").expect("config");
    cfg.auth_info.token = None;
    let anon: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(cfg).expect("client"), "default");
    let e = api_err(
        anon.list(&ListParams::default())
            .await
            .expect_err("unauthenticated"),
    );
    assert_eq!((e.code, e.reason.as_str()), (401, "Unauthorized"));

    // Read-only user: reads pass, writes get kube-apiserver's Forbidden wording.
    let viewer: Api<ConfigMap> = Api::namespaced(sim.client("viewer").expect("client"), "default");
    viewer
        .list(&ListParams::default())
        .await
        .expect("viewer can list");
    let e = api_err(
        viewer
            .create(&PostParams::default(), &cm("v", &[]))
            .await
            .expect_err("forbidden"),
    );
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        "configmaps is forbidden: User \"viewer\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"default\""
    );

    // RBAC user: nothing until a Role and RoleBinding grant it.
    let nobody: Api<ConfigMap> = Api::namespaced(sim.client("nobody").expect("client"), "default");
    assert_eq!(api_err(nobody.get("x").await.expect_err("forbidden")).code, 403);
    let admin = sim.client("admin").expect("client");
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(admin.clone(), "default");
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "cm-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]}))
            .expect("role"),
        )
        .await
        .expect("role");
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::namespaced(admin, "default");
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "nobody-reads"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
            "subjects": [{"kind": "User", "name": "nobody"}]}))
            .expect("binding"),
        )
        .await
        .expect("binding");
    nobody
        .list(&ListParams::default())
        .await
        .expect("granted by RBAC");
    assert_eq!(
        api_err(
            nobody
                .delete("x", &DeleteParams::default())
                .await
                .expect_err("still no delete")
        )
        .code,
        403
    );
    // Who did what: requests are counted per authenticated user (the lab checks components' identities so).
    let by = |user: &str, method: &str, code: u16| {
        sim.requests_by(user)
            .get(&(method.to_string(), code))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(by("nobody", "GET", 403), 1);
    assert_eq!(by("nobody", "GET", 200), 1);
    assert_eq!(by("nobody", "DELETE", 403), 1);
    assert_eq!(by("viewer", "POST", 403), 1);
    assert_eq!(by("viewer", "GET", 200), 1);
    assert_eq!(by("admin", "POST", 201), 2);
    assert!(sim.requests_by("no-such-user").is_empty());
    // A method the resource has no handler for: refused by authorization first, as kube-apiserver does.
    let status_url = "/api/v1/namespaces/default/pods/x/status";
    let viewer_client = sim.client("viewer").expect("client");
    let e = api_err(
        delete_raw(&viewer_client, status_url)
            .await
            .expect_err("forbidden"),
    );
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"), "{e:?}");
    assert_eq!(by("viewer", "DELETE", 403), 1);
}

#[tokio::test]
async fn kubeconfig_file_works_with_kube_rs() {
    let sim = sim_with_crds().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&path, "admin").expect("write");
    let kc = kube::config::Kubeconfig::read_from(&path).expect("read kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("config");
    let client = kube::Client::try_from(cfg).expect("client");
    let v = client.apiserver_version().await.expect("version");
    assert_eq!(v.major, "1");
    let nss: Api<Namespace> = Api::all(client);
    let names: Vec<_> = nss
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"default".to_string()), "{names:?}");
    let discovery = kube::discovery::Discovery::new(sim.client("admin").expect("client"))
        .run()
        .await
        .expect("discovery");
    let (ar, caps) = discovery
        .resolve_gvk(&kube::api::GroupVersionKind::gvk(
            "egressgateway.kubernetes.azure.com",
            "v1alpha1",
            "StaticGatewayConfiguration",
        ))
        .expect("CRD kind is discoverable");
    assert_eq!(ar.plural, "staticgatewayconfigurations");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(discovery.has_group("coordination.k8s.io"));

    let client = sim.client("admin").expect("client");
    let metrics = client
        .request_text(http::Request::get("/metrics").body(vec![]).expect("request"))
        .await
        .expect("metrics");
    assert!(
        metrics.contains("kubesim_requests_total{method=\"GET\",code=\"200\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kubesim_requests_by_user_total{user=\"admin\",method=\"GET\",code=\"200\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kubesim_objects{resource=\"customresourcedefinitions.apiextensions.k8s.io\"} 4"),
        "{metrics}"
    );
}

#[tokio::test]
async fn event_recorder_and_lease_round_trip() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kube::Resource as _;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};

    let sim = KubeSim::start(KubeSimConfig::default()).await.expect("start");
    let client = sim.client("admin").expect("client");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let obj = cms
        .create(&PostParams::default(), &cm("evented", &[]))
        .await
        .expect("create");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "test-ctrl".into(),
            instance: None,
        },
    );
    let ev = Event {
        type_: EventType::Normal,
        reason: "Synced".into(),
        note: Some("all good".into()),
        action: "Sync".into(),
        secondary: None,
    };
    let reference = obj.object_ref(&());
    recorder.publish(&ev, &reference).await.expect("publish");
    recorder
        .publish(&ev, &reference)
        .await
        .expect("publish again (series patch)");
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), "default");
    let list = events.list(&ListParams::default()).await.expect("events");
    assert_eq!(
        list.items.len(),
        1,
        "the repeat becomes a series on the same Event"
    );
    assert_eq!(list.items[0].reason.as_deref(), Some("Synced"));
    assert_eq!(list.items[0].series.as_ref().map(|s| s.count), Some(2));
    // A note over 1 KiB is refused as kube-apiserver refuses it (field `message`, the internal name).
    let long = Event {
        reason: "Long".into(),
        note: Some("x".repeat(1025)),
        ..ev
    };
    let refused = api_err(recorder.publish(&long, &reference).await.expect_err("over 1 KiB"));
    assert_eq!(refused.code, 422);
    assert_contains(
        &refused.message,
        "message: Invalid value: \"\": can have at most 1024 characters",
    );
    let exact = Event {
        reason: "Exact".into(),
        note: Some("x".repeat(1024)),
        ..long
    };
    recorder
        .publish(&exact, &reference)
        .await
        .expect("1 KiB is allowed");

    let leases: Api<Lease> = Api::namespaced(client, "kube-system");
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": "leader"}, "spec": {"holderIdentity": "a"}}))
            .expect("lease");
    let created = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("lease");
    let mut taken = created.clone();
    taken.spec.get_or_insert_default().holder_identity = Some("b".into());
    leases
        .replace("leader", &PostParams::default(), &taken)
        .await
        .expect("b takes over");
    let mut late = created;
    late.spec.get_or_insert_default().holder_identity = Some("c".into());
    assert_eq!(
        api_err(
            leases
                .replace("leader", &PostParams::default(), &late)
                .await
                .expect_err("stale")
        )
        .code,
        409
    );
}

#[tokio::test]
async fn deleting_a_crd_deletes_its_objects_after_their_finalizers() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let sim = sim_with_crds().await;
    let client = sim.client("admin").expect("client");
    let pools: Api<GatewayPool> = Api::all(client.clone());
    for (name, finalizers) in [("plain", json!([])), ("held", json!(["test/hold"]))] {
        let p = json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "GatewayPool",
            "metadata": {"name": name, "finalizers": finalizers},
            "spec": {"gatewayNodepoolName": "gw", "publicIpPrefixSize": 31}});
        pools
            .create(&PostParams::default(), &serde_json::from_value(p).expect("pool"))
            .await
            .expect("create");
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let crd_name = "gatewaypools.egressgateway.kubernetes.azure.com";
    crds.delete(crd_name, &DeleteParams::default())
        .await
        .expect("delete CRD");
    assert_gone(&pools, "plain", "deleted with the CRD").await;
    let held = pools
        .get("held")
        .await
        .expect("held by its finalizer, still served");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(
        crds.get(crd_name)
            .await
            .expect("CRD terminating")
            .metadata
            .deletion_timestamp
            .is_some()
    );
    pools
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("release");
    assert_gone(&crds, crd_name, "CRD gone").await;
    assert_eq!(
        api_err(
            pools
                .list(&ListParams::default())
                .await
                .expect_err("kind no longer served")
        )
        .code,
        404
    );
}

#[tokio::test]
async fn secret_string_data_is_folded_into_data() {
    let sim = sim_with_crds().await;
    let secrets: Api<Secret> = Api::namespaced(sim.client("admin").expect("client"), "default");
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "s"},
        "data": {"a": "b2xk", "keep": "eA=="},
        "stringData": {"a": "new", "b": "plain text"}
    }))
    .expect("secret");
    let created = secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create");
    assert!(created.string_data.is_none(), "stringData is write-only");
    let data = created.data.expect("data");
    let text = |k: &str| String::from_utf8(data[k].0.clone()).expect("utf-8");
    assert_eq!(
        (text("a"), text("b"), text("keep")),
        ("new".into(), "plain text".into(), "x".into())
    );
    let read = secrets.get("s").await.expect("get");
    assert!(read.string_data.is_none());
    assert_eq!(read.data.expect("data").len(), 3);
}

#[tokio::test]
async fn secret_type_and_immutable_contents_cannot_change() {
    let sim = sim_with_crds().await;
    let client = sim.client("admin").expect("client");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let typed: Secret = serde_json::from_value(json!({
        "metadata": {"name": "tls"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": "eA==", "tls.key": "eA=="}
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &typed)
        .await
        .expect("create");
    // Like the operator's forced apply of its key Secret over one that has another type.
    let opaque: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "tls"},
        "type": "Opaque",
        "data": {"PrivateKey": "eA=="}
    }))
    .expect("secret");
    let s = api_err(
        secrets
            .patch("tls", &PatchParams::apply("op").force(), &Patch::Apply(&opaque))
            .await
            .expect_err("type is immutable"),
    );
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        s.message,
        "Secret \"tls\" is invalid: type: Invalid value: \"Opaque\": field is immutable"
    );
    // A Secret created without a type is Opaque.
    let untyped = secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "plain"}})).expect("secret"),
        )
        .await
        .expect("create");
    assert_eq!(untyped.type_.as_deref(), Some("Opaque"));

    // `immutable: true` freezes the contents and cannot be undone; other metadata can still change.
    let configmaps: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut frozen = cm("frozen", &[]);
    frozen.immutable = Some(true);
    configmaps
        .create(&PostParams::default(), &frozen)
        .await
        .expect("create");
    for (patch, field) in [
        (json!({"data": {"k": "changed"}}), "data"),
        (json!({"immutable": false}), "immutable"),
    ] {
        let s = api_err(
            configmaps
                .patch("frozen", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect_err("immutable"),
        );
        assert_eq!(s.code, 422, "{patch}");
        assert_eq!(
            s.message,
            format!(
                "ConfigMap \"frozen\" is invalid: {field}: Forbidden: field is immutable when `immutable` is set"
            ),
        );
    }
    let labelled = configmaps
        .patch(
            "frozen",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .expect("labels of an immutable ConfigMap can change");
    assert_eq!(labelled.data, frozen.data);
}

#[tokio::test]
async fn writes_naming_another_object_are_refused() {
    let (_sim, configmaps, live) = sim_with_configmap_c().await;
    let mut other_ns = live.clone();
    other_ns.metadata.namespace = Some("kube-system".into());
    let mut other_uid = live.clone();
    other_uid.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
    let live_uid = live.metadata.uid.clone().unwrap_or_default();
    /// A PUT of a whole object or a merge patch.
    enum Write {
        Replace(Box<ConfigMap>),
        Merge(serde_json::Value),
    }
    let refused = [
        (
            "namespace mismatch",
            Write::Replace(Box::new(other_ns)),
            400,
            "the namespace of the provided object does not match the namespace sent on the request".to_string(),
        ),
        (
            "rename",
            Write::Merge(json!({"metadata": {"name": "renamed"}})),
            400,
            "the name of the object (renamed) does not match the name on the URL (c)".to_string(),
        ),
        (
            "a PUT's uid is a precondition",
            Write::Replace(Box::new(other_uid)),
            409,
            format!(
                "Operation cannot be fulfilled on configmaps \"c\": Precondition failed: UID in precondition: 00000000-0000-0000-0000-000000000000, UID in object meta: {live_uid}"
            ),
        ),
        (
            "uid is immutable",
            Write::Merge(json!({"metadata": {"uid": "00000000-0000-0000-0000-000000000000"}})),
            422,
            "ConfigMap \"c\" is invalid: metadata.uid: Invalid value: \"00000000-0000-0000-0000-000000000000\": field is immutable".to_string(),
        ),
    ];
    for (what, write, code, message) in refused {
        let result = match write {
            Write::Replace(obj) => configmaps.replace("c", &PostParams::default(), &obj).await,
            Write::Merge(patch) => {
                configmaps
                    .patch("c", &PatchParams::default(), &Patch::Merge(patch))
                    .await
            }
        };
        let s = api_err(result.expect_err(what));
        assert_eq!((s.code, s.message), (code, message), "{what}");
    }
    let after = configmaps.get("c").await.expect("get");
    assert_eq!(after.metadata.resource_version, live.metadata.resource_version);
}

#[tokio::test]
async fn delete_preconditions_are_checked() {
    let (_sim, configmaps, live) = sim_with_configmap_c().await;
    let live_uid = live.metadata.uid.clone().unwrap_or_default();
    let stale = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("00000000-0000-0000-0000-000000000000".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let s = api_err(
        configmaps
            .delete("c", &stale)
            .await
            .expect_err("uid precondition"),
    );
    assert_eq!(
        (s.code, s.message),
        (
            409,
            format!(
                "Operation cannot be fulfilled on configmaps \"c\": Precondition failed: UID in precondition: 00000000-0000-0000-0000-000000000000, UID in object meta: {live_uid}"
            )
        )
    );
    let exact = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some(live_uid),
            resource_version: live.metadata.resource_version.clone(),
        }),
        ..Default::default()
    };
    configmaps.delete("c", &exact).await.expect("delete");
    assert!(configmaps.get_opt("c").await.expect("get").is_none());
}

/// A field manager that owned every field of a map and applies it empty: kube-apiserver v1.28 leaves the map
/// `null` (the applier still owns it), so the CRD schema refuses a required `spec` (422, `spec`, type
/// invalid) and keeps the object as it was; a map nobody owns any more goes, and a built-in kind's emptied
/// `labels` and `data` are gone. The same requests and answers on both backends.
async fn emptying_an_applied_map(backend: testbed::cluster::Backend) {
    let cluster = testbed::cluster::TestCluster::start(backend)
        .await
        .expect("cluster");
    cluster.install_crds().await.expect("CRDs");
    let ns = cluster.namespace("emptied-map", &[]).await.expect("namespace");
    let client = cluster.client().expect("client");
    let resource = kube::api::ApiResource::erase::<api::internal::GatewayStatus>(&());
    let statuses: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    let apply = PatchParams::apply("agent");
    let gateway_status = |spec: serde_json::Value| {
        Patch::Apply(
            json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1",
            "kind": "GatewayStatus", "metadata": {"name": "node-1"}, "spec": spec}),
        )
    };
    let both_lists = json!({
        "readyGatewayConfigurations": [{"staticGatewayConfiguration": "a/b", "interfaceName": "wg-1"}],
        "readyPeerConfigurations": [{"podEndpoint": "a/p", "interfaceName": "wg-1", "publicKey": "k"}]});
    let applied = statuses
        .patch("node-1", &apply, &gateway_status(both_lists.clone()))
        .await
        .expect("apply both lists");
    let refused = api_err(
        statuses
            .patch("node-1", &apply, &gateway_status(json!({})))
            .await
            .expect_err("spec: null refused"),
    );
    let what = format!("{backend}: {refused:?}");
    assert_eq!(
        (refused.code, refused.reason.as_str()),
        (422, "Invalid"),
        "{what}"
    );
    assert_eq!(
        refused.message,
        "GatewayStatus.egressgateway.kubernetes.azure.com \"node-1\" is invalid: spec: Invalid value: \"null\": spec in body must be of type object: \"null\"",
        "{what}"
    );
    let causes = refused
        .details
        .as_ref()
        .map(|d| d.causes.clone())
        .unwrap_or_default();
    assert_eq!(causes.len(), 1, "{what}");
    assert_eq!(
        (causes[0].reason.as_str(), causes[0].field.as_str()),
        ("FieldValueTypeInvalid", "spec"),
        "{what}"
    );
    let kept = statuses.get("node-1").await.expect("get");
    assert_eq!(kept.data["spec"], both_lists, "{backend}: nothing applied");
    assert_eq!(kept.metadata.resource_version, applied.metadata.resource_version);

    // An applier that owns one list: the other (defaulted, nobody's) keeps `spec` a map, and the given-up
    // list is defaulted again.
    let one_list = json!({"readyGatewayConfigurations": [{"staticGatewayConfiguration": "a/b", "interfaceName": "wg-1"}]});
    let fresh = PatchParams::apply("other-agent");
    let node2 = |spec: serde_json::Value| {
        Patch::Apply(
            json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1",
            "kind": "GatewayStatus", "metadata": {"name": "node-2"}, "spec": spec}),
        )
    };
    statuses
        .patch("node-2", &fresh, &node2(one_list))
        .await
        .expect("apply one list");
    let emptied = statuses
        .patch("node-2", &fresh, &node2(json!({})))
        .await
        .expect("spec stays a map");
    assert_eq!(
        emptied.data["spec"],
        json!({"readyGatewayConfigurations": [], "readyPeerConfigurations": []}),
        "{backend}"
    );

    let configmaps: Api<ConfigMap> = Api::namespaced(client, &ns);
    let cm_apply = |labels: serde_json::Value, data: serde_json::Value| {
        Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "labels": labels}, "data": data}))
    };
    configmaps
        .patch("c", &apply, &cm_apply(json!({"a": "b"}), json!({"k": "v"})))
        .await
        .expect("apply labels and data");
    let emptied = configmaps
        .patch("c", &apply, &cm_apply(json!({}), json!({})))
        .await
        .expect("apply them empty");
    assert_eq!(
        (emptied.metadata.labels, emptied.data),
        (None, None),
        "{backend}: emptied maps of a built-in kind are gone"
    );
}

/// `DELETE` of `path` through `client`, as kubectl or a misbehaving controller could send it.
async fn delete_raw(client: &kube::Client, path: &str) -> Result<serde_json::Value, Error> {
    let req = http::Request::delete(path).body(Vec::new()).expect("request");
    client.request::<serde_json::Value>(req).await
}

/// A subresource is only read, updated and patched: deleting `status` is refused with 405 for a user who
/// may delete it, and the object stays. The same request and answer on both backends.
async fn deleting_a_status_subresource(backend: testbed::cluster::Backend) {
    let cluster = testbed::cluster::TestCluster::start(backend)
        .await
        .expect("cluster");
    cluster.install_crds().await.expect("CRDs");
    let ns = cluster.namespace("status-delete", &[]).await.expect("namespace");
    let client = cluster.client().expect("client");
    let resource = kube::api::ApiResource::erase::<api::internal::GatewayStatus>(&());
    let statuses: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    statuses
        .patch(
            "node-1",
            &PatchParams::apply("agent"),
            &Patch::Apply(
                json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1",
                "kind": "GatewayStatus", "metadata": {"name": "node-1"},
                "spec": {"readyGatewayConfigurations": [], "readyPeerConfigurations": []}}),
            ),
        )
        .await
        .expect("create");
    let path = format!(
        "/apis/egressgateway.kubernetes.azure.com/v1alpha1/namespaces/{ns}/gatewaystatuses/node-1/status"
    );
    let e = api_err(delete_raw(&client, &path).await.expect_err("405"));
    assert_eq!(
        (e.code, e.reason.as_str()),
        (405, "MethodNotAllowed"),
        "{backend}: {e:?}"
    );
    assert!(
        statuses.get_opt("node-1").await.expect("get").is_some(),
        "{backend}: object kept"
    );
}

#[tokio::test]
async fn sim_refuses_deleting_a_status_subresource_like_the_real_server() {
    deleting_a_status_subresource(testbed::cluster::Backend::Sim).await;
}

#[tokio::test]
async fn real_refuses_deleting_a_status_subresource() {
    deleting_a_status_subresource(testbed::cluster::Backend::Real).await;
}

#[tokio::test]
async fn sim_refuses_an_applied_map_emptied_into_null_like_the_real_server() {
    emptying_an_applied_map(testbed::cluster::Backend::Sim).await;
}

#[tokio::test]
async fn real_refuses_an_applied_map_emptied_into_null() {
    emptying_an_applied_map(testbed::cluster::Backend::Real).await;
}
