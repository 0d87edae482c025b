//! The self-generated pair kept in a Secret, on the real kube-apiserver, with the webhook's own identity: a
//! ServiceAccount holding exactly the chart's `webhookGenerated` grants (`charts/kube-egress-gateway/templates/
//! webhook.yaml`). A restart serves the stored pair without touching the caBundle, replicas started together
//! agree on one CA, a renewal written by one replica is served by the others once the bundle trusts it, and a
//! Secret whose content cannot be served is replaced, saying why, without its key in any log.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::json;
use testbed::control_plane::ControlPlane;
use testbed::wait::eventually;
use webhook::pair_secret::{Origin, PREVIOUS_CA_CRT, SharedPair, Started, secret_for};
use webhook::renew::CertExpiry;
use webhook::tls::{self, CertStore};

const DNS: &str = "webhook.test.svc";
const SECRET: &str = "webhook-tls";
const SA: &str = "webhook";

/// One test's world: a namespace, webhook configurations of its own name, and a client of the webhook's
/// ServiceAccount bound to the chart's grants.
struct World {
    cp: Arc<ControlPlane>,
    admin: kube::Client,
    namespace: String,
    config: String,
    token: String,
}

impl World {
    async fn new(test: &str) -> World {
        let cp = ControlPlane::shared().await;
        let admin = cp.client().expect("admin");
        let namespace = cp.namespace(test, &[]).await.expect("namespace");
        let config = format!("keg-{namespace}");
        // Webhooks that never take part in a request (a resource nobody has), as the chart registers them
        // without caBundle in this mode.
        let hook = |name: &str| {
            json!({"name": format!("{name}.webhook.test"), "admissionReviewVersions": ["v1"],
                "sideEffects": "None", "failurePolicy": "Ignore",
                "clientConfig": {"url": format!("https://{DNS}/{name}")},
                "rules": [{"apiGroups": ["example.invalid"], "apiVersions": ["v1"], "resources": ["nothings"],
                    "operations": ["CREATE"]}]})
        };
        let webhooks = json!({"metadata": {"name": config}, "webhooks": [hook("one"), hook("two")]});
        Api::<MutatingWebhookConfiguration>::all(admin.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(webhooks.clone()).expect("mutating"),
            )
            .await
            .expect("mutating configuration");
        Api::<ValidatingWebhookConfiguration>::all(admin.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(webhooks).expect("validating"),
            )
            .await
            .expect("validating configuration");
        let token = cp.service_account_token(&namespace, SA).await.expect("token");
        // The chart's grants of the webhook in webhookGenerated mode.
        let rbac = |kind: &str, body: serde_json::Value| {
            let mut object = body;
            object["apiVersion"] = json!("rbac.authorization.k8s.io/v1");
            object["kind"] = json!(kind);
            object
        };
        let role = rbac(
            "Role",
            json!({"metadata": {"name": "webhook", "namespace": namespace}, "rules": [
                {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [SECRET], "verbs": ["get", "watch", "update"]},
            ]}),
        );
        let binding = rbac(
            "RoleBinding",
            json!({"metadata": {"name": "webhook", "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "webhook"},
                "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": namespace}]}),
        );
        let cluster_role = rbac(
            "ClusterRole",
            json!({"metadata": {"name": config}, "rules": [
                {"apiGroups": ["admissionregistration.k8s.io"],
                 "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
                 "resourceNames": [config], "verbs": ["get", "patch"]}]}),
        );
        let cluster_binding = rbac(
            "ClusterRoleBinding",
            json!({"metadata": {"name": config},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": config},
                "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": namespace}]}),
        );
        for object in [role, binding, cluster_role, cluster_binding] {
            apply(&admin, &object).await;
        }
        // The chart's Secret: Opaque, no data, Helm's metadata.
        Api::<Secret>::namespaced(admin.clone(), &namespace)
            .create(&PostParams::default(), &charts_secret())
            .await
            .expect("the chart's Secret");
        let world = World {
            cp,
            admin,
            namespace,
            config,
            token,
        };
        // RBAC is served from the authorizer's cache: wait until the account may read its Secret.
        let secrets: Api<Secret> = Api::namespaced(world.webhook_client(), &world.namespace);
        eventually("the webhook's grants apply", || async {
            !matches!(secrets.get_opt(SECRET).await, Err(kube::Error::Api(s)) if s.code == 403)
        })
        .await;
        world
    }

    /// Replaces the Secret with `secret` (as an admin).
    async fn put(&self, secret: &Secret) {
        let secrets = Api::<Secret>::namespaced(self.admin.clone(), &self.namespace);
        secrets.delete(SECRET, &Default::default()).await.expect("delete");
        secrets
            .create(&PostParams::default(), secret)
            .await
            .expect("the Secret");
    }

    /// Grants the webhook `create` on Secrets too (the chart does not).
    async fn grant_create(&self) {
        let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "create", "namespace": self.namespace},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]});
        let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "create", "namespace": self.namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "create"},
            "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": self.namespace}]});
        apply(&self.admin, &role).await;
        apply(&self.admin, &binding).await;
    }

    fn webhook_client(&self) -> kube::Client {
        self.cp.client_for(&self.token).expect("webhook client")
    }

    /// A replica's settings, with `propagation` for the wait before a renewed certificate is served.
    fn replica(&self, propagation: time::Duration) -> SharedPair {
        self.replica_with(self.webhook_client(), propagation)
    }

    /// A replica whose client holds its first answer (the Secret's read, the first request a replica makes)
    /// until every replica sharing `gate` has had its own: all of them read the Secret before any writes it.
    fn racing_replica(&self, gate: Arc<tokio::sync::Barrier>) -> SharedPair {
        let config = self.cp.client_config_for(&self.token).expect("client config");
        let client = kube::client::ClientBuilder::try_from(config)
            .expect("client builder")
            .with_layer(&tower::util::AndThenLayer::new(first_answer_waits_for(gate)))
            .build();
        self.replica_with(client, time::Duration::minutes(5))
    }

    fn replica_with(&self, client: kube::Client, propagation: time::Duration) -> SharedPair {
        SharedPair {
            client,
            namespace: self.namespace.clone(),
            secret: SECRET.to_string(),
            dns_names: vec![DNS.to_string()],
            mutating: Some(self.config.clone()),
            validating: Some(self.config.clone()),
            lifetime: tls::SELF_SIGNED_LIFETIME,
            propagation,
            retry: time::Duration::seconds(1),
        }
    }

    /// The caBundles of every webhook, and the configurations' resourceVersions.
    async fn bundles(&self) -> (Vec<String>, Vec<String>) {
        let mutating = Api::<MutatingWebhookConfiguration>::all(self.admin.clone())
            .get(&self.config)
            .await
            .expect("mutating");
        let validating = Api::<ValidatingWebhookConfiguration>::all(self.admin.clone())
            .get(&self.config)
            .await
            .expect("validating");
        let text = |b: Option<&k8s_openapi::ByteString>| {
            b.map(|b| String::from_utf8(b.0.clone()).expect("PEM"))
                .unwrap_or_default()
        };
        let mut bundles: Vec<String> = mutating
            .webhooks
            .iter()
            .flatten()
            .map(|w| text(w.client_config.ca_bundle.as_ref()))
            .collect();
        bundles.extend(
            validating
                .webhooks
                .iter()
                .flatten()
                .map(|w| text(w.client_config.ca_bundle.as_ref())),
        );
        let versions = vec![
            mutating.metadata.resource_version.unwrap_or_default(),
            validating.metadata.resource_version.unwrap_or_default(),
        ];
        (bundles, versions)
    }

    async fn secret(&self) -> Secret {
        Api::<Secret>::namespaced(self.admin.clone(), &self.namespace)
            .get(SECRET)
            .await
            .expect("the Secret")
    }
}

/// The Secret as the chart renders it in webhookGenerated mode.
fn charts_secret() -> Secret {
    serde_json::from_value(json!({"metadata": {"name": SECRET,
        "labels": {"app.kubernetes.io/managed-by": "Helm"},
        "annotations": {"meta.helm.sh/release-name": "keg", "meta.helm.sh/release-namespace": "keg"}},
        "type": "Opaque"}))
    .expect("the chart's Secret")
}

async fn apply(client: &kube::Client, object: &serde_json::Value) {
    let kind = object["kind"].as_str().expect("kind");
    let resource = kube::discovery::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", kind),
        &format!("{}s", kind.to_lowercase()),
    );
    let api: Api<kube::api::DynamicObject> = match object["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let name = object["metadata"]["name"].as_str().expect("name");
    api.patch(
        name,
        &PatchParams::apply("pair-secret-test"),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("{kind} {name}: {e}"));
}

/// A running replica: its start result, metrics, and a stop on drop.
struct Replica {
    started: Started,
    expiry: Arc<CertExpiry>,
    reloads: prometheus_client::metrics::counter::Counter,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// For a client's answers: the first waits at `gate`, the others pass.
fn first_answer_waits_for<R: Send + 'static>(
    gate: Arc<tokio::sync::Barrier>,
) -> impl FnOnce(R) -> futures::future::BoxFuture<'static, Result<R, tower::BoxError>> + Clone {
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    move |answer| {
        Box::pin(async move {
            if first.swap(false, std::sync::atomic::Ordering::AcqRel) {
                gate.wait().await;
            }
            Ok(answer)
        })
    }
}

async fn start(pair: SharedPair) -> Replica {
    let expiry = Arc::new(CertExpiry::default());
    let reloads = prometheus_client::metrics::counter::Counter::default();
    let (shutdown, rx) = tokio::sync::watch::channel(false);
    let started = pair
        .start(expiry.clone(), reloads.clone(), rx)
        .await
        .expect("the replica starts");
    Replica {
        started,
        expiry,
        reloads,
        shutdown,
    }
}

/// The certificate `store` serves.
fn served(store: &CertStore) -> CertificateDer<'static> {
    store.current().expect("a certificate").cert[0].clone()
}

/// Whether a client trusting every CA of `bundle` (the API server, with a webhook's caBundle) completes a TLS
/// handshake with a server of `store` for [`DNS`].
async fn trusted(bundle: &str, store: Arc<CertStore>) -> bool {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(store).expect("server config")));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        acceptor.accept(tcp).await.is_ok()
    });
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(ca.expect("CA PEM")).expect("CA");
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let client = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(rustls_pki_types::ServerName::try_from(DNS).expect("name"), tcp)
        .await
        .is_ok();
    let server = server.await.expect("join");
    client && server
}

/// The CA certificates of a PEM bundle.
fn cas(bundle: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(bundle.as_bytes())
        .map(|c| c.expect("CA PEM"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_the_stored_pair_without_patching_the_bundle() {
    let world = World::new("restart").await;
    let first = start(world.replica(time::Duration::minutes(5))).await;
    assert_eq!(first.started.origin, Origin::Created);
    assert_eq!(first.started.bundled.patched, 2, "{:?}", first.started.bundled);
    let (bundles, versions) = world.bundles().await;
    assert_eq!(bundles.len(), 4);
    for bundle in &bundles {
        assert!(trusted(bundle, first.started.store.clone()).await);
    }
    let ca = first.started.serving.ca_pem.clone();
    let cert = served(&first.started.store);
    drop(first);

    // The restart (or the next pod of a rolling update): the same CA and certificate, the bundle untouched.
    let second = start(world.replica(time::Duration::minutes(5))).await;
    assert_eq!(second.started.origin, Origin::Reused);
    assert_eq!(second.started.bundled.patched, 0, "{:?}", second.started.bundled);
    assert_eq!(second.started.serving.ca_pem, ca);
    assert_eq!(served(&second.started.store), cert);
    assert_eq!(world.bundles().await, (bundles.clone(), versions));
    for bundle in &bundles {
        assert!(trusted(bundle, second.started.store.clone()).await);
    }
    assert_eq!(second.expiry.check(time::OffsetDateTime::now_utc()), Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_together_serve_one_ca() {
    let world = World::new("together").await;
    // Every replica reads the (chart's, empty) Secret before any writes it, so all three write: one wins.
    let gate = Arc::new(tokio::sync::Barrier::new(3));
    let replicas = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        futures::future::join_all((0..3).map(|_| start(world.racing_replica(gate.clone())))),
    )
    .await
    .expect("the replicas start (each one's first request answered)");
    let origins: Vec<&Origin> = replicas.iter().map(|r| &r.started.origin).collect();
    assert_eq!(
        origins.iter().filter(|o| ***o == Origin::Created).count(),
        1,
        "one replica wrote the pair: {origins:?}"
    );
    assert_eq!(
        origins.iter().filter(|o| ***o == Origin::Joined).count(),
        2,
        "the others lost the write and joined the winner's pair: {origins:?}"
    );
    let secret_ca = world.secret().await.data.expect("data")["ca.crt"].0.clone();
    let cert = served(&replicas[0].started.store);
    let (bundles, _) = world.bundles().await;
    for replica in &replicas {
        assert_eq!(replica.started.serving.ca_pem.as_bytes(), secret_ca.as_slice());
        assert_eq!(served(&replica.started.store), cert);
        for bundle in &bundles {
            assert_eq!(cas(bundle), cas(&replica.started.serving.ca_pem));
            assert!(trusted(bundle, replica.started.store.clone()).await);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_written_by_one_replica_is_served_by_all_once_the_bundle_trusts_it() {
    let world = World::new("renewal").await;
    // The Secret holds a pair 300 days into its year, due for renewal (at two-thirds), trusted by the bundle.
    let old = tls::self_signed_at(
        &[DNS.to_string()],
        time::OffsetDateTime::now_utc() - time::Duration::days(300),
        tls::SELF_SIGNED_LIFETIME,
    )
    .expect("pair");
    world.put(&secret_for(SECRET, &old, None)).await;
    webhook::cabundle::patch_ca_bundle(
        world.admin.clone(),
        &old.ca_pem,
        Some(&world.config),
        Some(&world.config),
    )
    .await
    .expect("the old CA in the bundle");

    // Both start on the stored pair and both find it due: one's renewal wins, the other follows it.
    let propagation = time::Duration::seconds(2);
    let replicas = futures::future::join_all((0..2).map(|_| start(world.replica(propagation)))).await;
    for replica in &replicas {
        assert_eq!(replica.started.origin, Origin::Reused);
        assert_eq!(replica.started.serving.ca_pem, old.ca_pem);
    }
    let first = old.key.cert[0].clone();
    let renewed = |r: &Replica| served(&r.started.store) != first;
    eventually("both replicas serve the renewed certificate", || async {
        // Read the stores before the bundles: a store serving a renewed certificate must already be trusted by
        // every bundle the API server holds.
        let serving: Vec<bool> = replicas.iter().map(renewed).collect();
        let (bundles, _) = world.bundles().await;
        for (replica, renewed) in replicas.iter().zip(&serving) {
            if *renewed {
                for bundle in &bundles {
                    assert!(
                        trusted(bundle, replica.started.store.clone()).await,
                        "a renewed certificate served before the bundle trusts it"
                    );
                }
            }
        }
        serving.iter().all(|s| *s)
    })
    .await;

    let cert = served(&replicas[0].started.store);
    assert_eq!(served(&replicas[1].started.store), cert, "one renewed pair");
    let secret = world.secret().await;
    let data = secret.data.expect("data");
    assert_eq!(
        data[PREVIOUS_CA_CRT].0,
        old.ca_pem.as_bytes(),
        "the replaced CA is kept for the bundle"
    );
    let new_ca = String::from_utf8(data["ca.crt"].0.clone()).expect("PEM");
    for bundle in world.bundles().await.0 {
        let bundle = cas(&bundle);
        assert!(bundle.contains(&cas(&old.ca_pem)[0]) && bundle.contains(&cas(&new_ca)[0]));
    }
    for replica in &replicas {
        assert_eq!(replica.reloads.get(), 1);
        assert_eq!(
            replica.expiry.renewal_failures(),
            0,
            "losing the race is no failure"
        );
    }
}

/// Log lines written while the guard lives on this thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures this thread's log (a `current_thread` test's) until the guard drops.
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_secret_that_cannot_be_served_is_replaced_saying_why() {
    let (logs, _guard) = Logs::capture();
    let world = World::new("foreign").await;
    let secrets = Api::<Secret>::namespaced(world.admin.clone(), &world.namespace);

    // Another service's pair: valid, but not for our name.
    let foreign = tls::self_signed(&["other.example.svc".to_string()]).expect("pair");
    world.put(&secret_for(SECRET, &foreign, None)).await;
    let replica = start(world.replica(time::Duration::minutes(5))).await;
    let Origin::Replaced { why } = &replica.started.origin else {
        panic!("{:?}", replica.started.origin)
    };
    assert!(why.contains(&format!("does not verify for {DNS}")), "{why}");
    assert_ne!(replica.started.serving.ca_pem, foreign.ca_pem);
    let log = logs.text();
    assert!(
        log.contains("the Secret's certificate cannot be served; replacing it") && log.contains(why.as_str()),
        "{log}"
    );
    let data = world.secret().await.data.expect("data");
    assert_eq!(data["ca.crt"].0, replica.started.serving.ca_pem.as_bytes());
    let key = String::from_utf8(data["tls.key"].0.clone()).expect("PEM");
    drop(replica);

    // Garbage where the certificate should be.
    let mut broken = world.secret().await;
    broken.data.as_mut().expect("data").insert(
        "tls.crt".into(),
        k8s_openapi::ByteString(b"not a certificate".to_vec()),
    );
    secrets
        .replace(SECRET, &PostParams::default(), &broken)
        .await
        .expect("broken");
    let replica = start(world.replica(time::Duration::minutes(5))).await;
    let Origin::Replaced { why } = &replica.started.origin else {
        panic!("{:?}", replica.started.origin)
    };
    assert!(why.contains("no PEM certificate found"), "{why}");

    // The key is in the Secret only: not in the log, nor in what Debug shows.
    let log = logs.text();
    let key_body = key.lines().nth(1).expect("a key line");
    let debug = format!("{:?}", replica.started);
    assert!(!log.contains(key_body) && !log.contains("PRIVATE KEY"), "{log}");
    assert!(
        !debug.contains("PRIVATE KEY") && !debug.contains(replica.started.serving.key_pem.expose()),
        "{debug}"
    );
    drop(replica);

    // An Opaque Secret with other data is replaced, and stays Opaque (a Secret's type cannot change).
    let opaque: Secret = serde_json::from_value(json!({"metadata": {"name": SECRET}, "type": "Opaque",
        "data": {"x": base64::engine::general_purpose::STANDARD.encode("y")}}))
    .expect("opaque");
    world.put(&opaque).await;
    let replica = start(world.replica(time::Duration::minutes(5))).await;
    let Origin::Replaced { why } = &replica.started.origin else {
        panic!("{:?}", replica.started.origin)
    };
    assert!(why.contains("no ca.crt"), "{why}");
    let secret = world.secret().await;
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(
        secret.data.expect("data")["ca.crt"].0,
        replica.started.serving.ca_pem.as_bytes()
    );
    drop(replica);

    // A Secret of another type is not ours to replace (its type cannot change): a start-up error saying so.
    let other: Secret =
        serde_json::from_value(json!({"metadata": {"name": SECRET}, "type": "example.com/other",
        "data": {"x": base64::engine::general_purpose::STANDARD.encode("y")}}))
        .expect("other");
    world.put(&other).await;
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let error = world
        .replica(time::Duration::minutes(5))
        .start(Arc::default(), Default::default(), rx)
        .await
        .expect_err("not our Secret");
    assert!(
        error
            .to_string()
            .contains("is of type \"example.com/other\", not Opaque or kubernetes.io/tls"),
        "{error}"
    );
}

#[test]
fn a_stored_pair_for_the_charts_names_is_served_as_it_is() {
    // The names templates/webhook.yaml passes: one without a dot among them.
    let names: Vec<String> = [
        "kube-egress-gateway-webhook",
        "kube-egress-gateway-webhook.kube-egress-gateway",
        "kube-egress-gateway-webhook.kube-egress-gateway.svc",
        "kube-egress-gateway-webhook.kube-egress-gateway.svc.cluster.local",
    ]
    .map(String::from)
    .to_vec();
    let now = time::OffsetDateTime::now_utc();
    let made = tls::self_signed_at(&names, now, tls::SELF_SIGNED_LIFETIME).expect("pair");
    let secret = secret_for(SECRET, &made, None);
    let stored = webhook::pair_secret::pair_of(&secret, &names, now).expect("served as it is");
    assert!(stored.same_certificate(&made));
    assert_eq!(stored.not_after.unix_timestamp(), made.not_after.unix_timestamp());
    assert_eq!(stored.issued.unix_timestamp(), made.issued.unix_timestamp());
    // Not for a name it lacks; not once expired.
    assert!(webhook::pair_secret::pair_of(&secret, &["other.svc".to_string()], now).is_err());
    assert!(
        webhook::pair_secret::pair_of(&secret, &names, made.not_after + time::Duration::seconds(1)).is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_deleted_under_a_running_replica_is_written_anew_as_a_renewal() {
    let world = World::new("deleted").await;
    // Where the webhook may create Secrets (the chart grants no create; it renders the Secret anew).
    world.grant_create().await;
    let replica = start(world.replica(time::Duration::seconds(1))).await;
    let first = replica.started.serving.clone();
    let secrets = Api::<Secret>::namespaced(world.admin.clone(), &world.namespace);
    secrets.delete(SECRET, &Default::default()).await.expect("delete");
    // A new pair, its CA trusted next to the served one before it is served.
    eventually("the replica serves a new pair from a new Secret", || async {
        let renewed = served(&replica.started.store) != first.key.cert[0];
        let Ok(Some(secret)) = secrets.get_opt(SECRET).await else {
            return false;
        };
        let data = secret.data.unwrap_or_default();
        if renewed {
            assert_eq!(data[PREVIOUS_CA_CRT].0, first.ca_pem.as_bytes());
            for bundle in world.bundles().await.0 {
                assert!(trusted(&bundle, replica.started.store.clone()).await);
            }
        }
        renewed
    })
    .await;
    assert_eq!(replica.reloads.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_replacing_the_pair_keeps_the_running_replicas_ca_trusted() {
    let world = World::new("replacing").await;
    let a = start(world.replica(time::Duration::minutes(5))).await;
    // A chart change adds a DNS name: the next pod finds the stored pair unusable and writes a new one, while
    // replica A still serves the old pair.
    let mut changed = world.replica(time::Duration::minutes(5));
    changed
        .dns_names
        .push("webhook.test.svc.cluster.local".to_string());
    let b = start(changed).await;
    assert!(
        matches!(b.started.origin, Origin::Replaced { .. }),
        "{:?}",
        b.started.origin
    );
    assert_ne!(b.started.serving.ca_pem, a.started.serving.ca_pem);
    let data = world.secret().await.data.expect("data");
    assert_eq!(data[PREVIOUS_CA_CRT].0, a.started.serving.ca_pem.as_bytes());
    let (bundles, _) = world.bundles().await;
    assert_eq!(bundles.len(), 4);
    for bundle in &bundles {
        assert!(
            trusted(bundle, a.started.store.clone()).await,
            "A's certificate: {bundle}"
        );
        assert!(
            trusted(bundle, b.started.store.clone()).await,
            "B's certificate: {bundle}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_adding_cas_together_lose_none() {
    let world = World::new("writers").await;
    let cas_added: Vec<String> = (0..6)
        .map(|i| {
            tls::self_signed(&[format!("writer{i}.test.svc")])
                .expect("pair")
                .ca_pem
        })
        .collect();
    let writes = cas_added.iter().map(|ca| {
        let client = world.webhook_client();
        let config = world.config.clone();
        async move {
            webhook::cabundle::ensure_ca_bundle(client, ca, "", Some(&config), Some(&config))
                .await
                .expect("the caBundle is patched")
        }
    });
    futures::future::join_all(writes).await;
    for bundle in world.bundles().await.0 {
        let held = cas(&bundle);
        for ca in &cas_added {
            assert!(held.contains(&cas(ca)[0]), "a CA was lost: {bundle}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_secret_is_filled_keeping_its_metadata_and_an_absent_one_is_named_at_start() {
    let world = World::new("charts").await;
    let replica = start(world.replica(time::Duration::minutes(5))).await;
    // Rendered without data: filled, no warning-worthy replacement.
    assert_eq!(replica.started.origin, Origin::Created);
    let secret = world.secret().await;
    let chart = charts_secret();
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(secret.metadata.annotations, chart.metadata.annotations);
    assert_eq!(secret.metadata.labels, chart.metadata.labels);
    assert_eq!(
        secret.data.expect("data")["ca.crt"].0,
        replica.started.serving.ca_pem.as_bytes()
    );
    drop(replica);

    // Absent, and the chart's grants allow no create: start-up fails naming the Secret to create.
    Api::<Secret>::namespaced(world.admin.clone(), &world.namespace)
        .delete(SECRET, &Default::default())
        .await
        .expect("delete");
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let error = world
        .replica(time::Duration::minutes(5))
        .start(Arc::default(), Default::default(), rx)
        .await
        .expect_err("may not create the Secret");
    let text = error.to_string();
    assert!(
        text.contains(&format!(
            "Secret {SECRET} does not exist in namespace {}",
            world.namespace
        )) && text.contains("create it"),
        "{text}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_secret_turned_to_another_type_under_a_running_replica_is_reported_once_and_left_alone() {
    let (logs, _guard) = Logs::capture();
    let world = World::new("othertype").await;
    let replica = start(world.replica(time::Duration::seconds(1))).await;
    let first = replica.started.serving.clone();
    let other = |label: &str| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": SECRET, "labels": {"edit": label}},
            "type": "example.com/other", "data": {"x": base64::engine::general_purpose::STANDARD.encode("y")}}))
        .expect("other")
    };
    world.put(&other("one")).await;
    // A second change in that state, then a usable pair: the replica sees them in this order.
    let secrets = Api::<Secret>::namespaced(world.admin.clone(), &world.namespace);
    eventually("the replica reports the Secret's type", || async {
        logs.text().contains("is of a type that cannot hold the pair")
    })
    .await;
    let mut relabelled = world.secret().await;
    relabelled.metadata.labels = other("two").metadata.labels;
    secrets
        .replace(SECRET, &PostParams::default(), &relabelled)
        .await
        .expect("relabelled");
    // The deletion, seen after the relabelling, ends that state.
    secrets.delete(SECRET, &Default::default()).await.expect("delete");
    let reported = "is of a type that cannot hold the pair";
    let deleted = "the Secret was deleted";
    eventually("the replica sees the deletion", || async {
        let log = logs.text();
        log.rfind(deleted) > log.find(reported)
    })
    .await;
    let log = logs.text();
    let (from, to) = (
        log.find(reported).expect("reported"),
        log.rfind(deleted).expect("deleted"),
    );
    let between = &log[from..to];
    assert_eq!(log.matches(reported).count(), 1, "reported once: {log}");
    assert!(
        !between.contains("cannot publish") && !between.contains("replacing it"),
        "nothing written while the Secret is of another type: {between}"
    );
    assert_eq!(served(&replica.started.store), first.key.cert[0], "still served");
}
