//! The real webhook server for tests against an API server (real or kube-sim), and its registration
//! exactly as the chart's `templates/webhook.yaml` writes it: the same webhooks, rules, selectors, failure
//! policies and timeouts, reached by Service (the chart's form: the webhook behind a Service's endpoint) or by
//! `clientConfig.url` (a loopback process). Shared by `admission_on_apiserver.rs`, `e2e_kubectl.rs` and the
//! Terraform provider's acceptance tests (`tf-provider/tests/support`).

#![allow(dead_code)] // each test binary uses its own subset

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};
use testbed::cluster::{EndpointAddress, TestCluster};
use testbed::wait::eventually;
use webhook::facts::ClusterFacts as _;

/// The name of both webhook configurations (the chart's `keg.name`).
pub const CONFIGURATION: &str = "kube-egress-gateway";
const GROUP: &str = api::names::GROUP;

/// How the API server reaches the webhook.
pub enum Reach<'a> {
    /// `clientConfig.url` to a loopback port (certificate for `127.0.0.1`).
    Url,
    /// `clientConfig.service` `namespace/name` port 443 (certificate for `<name>.<namespace>.svc`), the
    /// Service leading to the webhook ([`TestCluster::route_service`]).
    Service {
        cluster: &'a TestCluster,
        namespace: &'a str,
        name: &'a str,
    },
}

enum Client {
    Url(String),
    Service { namespace: String, name: String },
}

/// A running webhook server (stopped on drop) and how to register it.
pub struct Webhook {
    /// What the webhook knows (its watches), to wait until it has seen an object.
    pub facts: webhook::facts::ReflectorFacts,
    shutdown: tokio::sync::watch::Sender<bool>,
    ca_bundle: String,
    client: Client,
    _address: Option<EndpointAddress>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl Webhook {
    /// Starts the real webhook server (`webhook::server`, its own self-generated certificate) watching
    /// through `admin`; PodEndpoints may be written by `podendpoint_writers`. Returns once its watches have
    /// synced.
    pub async fn start(admin: kube::Client, podendpoint_writers: Vec<String>, reach: Reach<'_>) -> Webhook {
        let (dns, address) = match &reach {
            Reach::Url => ("127.0.0.1".to_string(), None),
            Reach::Service {
                cluster,
                namespace,
                name,
            } => (
                format!("{name}.{namespace}.svc"),
                Some(
                    cluster
                        .endpoint_address()
                        .expect("an address for the webhook's endpoint"),
                ),
            ),
        };
        let ip = address
            .as_ref()
            .map_or(std::net::Ipv4Addr::LOCALHOST.into(), EndpointAddress::ip);
        let generated = webhook::tls::self_signed(&[dns]).expect("certificate");
        let facts = webhook::watch::start(admin);
        let state = Arc::new(webhook::server::AppState {
            facts: Arc::new(facts.clone()),
            policy: webhook::handlers::Policy { podendpoint_writers },
            metrics: Arc::new(webhook::metrics::Metrics::default()),
            draining: Default::default(),
            client_timeout: webhook::server::DEFAULT_CLIENT_TIMEOUT,
            certificate: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
        let local = listener.local_addr().expect("addr");
        let client = match reach {
            Reach::Url => Client::Url(format!("https://{local}")),
            Reach::Service {
                cluster,
                namespace,
                name,
            } => {
                cluster
                    .route_service(namespace, name, local)
                    .await
                    .expect("the webhook's Service");
                Client::Service {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                }
            }
        };
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let tls =
            Arc::new(webhook::tls::server_config(webhook::tls::CertStore::new(generated.key)).expect("tls"));
        tokio::spawn(webhook::server::serve_tls(
            listener,
            tls,
            state,
            rx,
            Duration::from_secs(1),
        ));
        let hook = Webhook {
            facts,
            shutdown,
            ca_bundle: base64::engine::general_purpose::STANDARD.encode(&generated.ca_pem),
            client,
            _address: address,
        };
        eventually("the webhook's watches synced", || async { hook.facts.synced() }).await;
        hook
    }

    /// Stops serving (the registrations stay: the API server then applies their failure policies).
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }

    /// The chart's `keg.webhook.client` for `path`.
    fn entry(&self, name: &str, path: &str, failure: &str, rules: Value) -> Value {
        let client_config = match &self.client {
            Client::Url(base) => json!({"url": format!("{base}{path}"), "caBundle": self.ca_bundle}),
            Client::Service { namespace, name } => json!({
                "service": {"namespace": namespace, "name": name, "path": path, "port": 443},
                "caBundle": self.ca_bundle}),
        };
        json!({
            "name": name, "clientConfig": client_config, "admissionReviewVersions": ["v1"],
            "sideEffects": "None", "matchPolicy": "Equivalent", "timeoutSeconds": 10,
            "failurePolicy": failure, "rules": rules,
        })
    }

    /// The chart's two webhook configurations (default values; `system_ns` is the release namespace, whose
    /// pods the pod webhooks skip).
    pub fn configurations(
        &self,
        system_ns: &str,
    ) -> (MutatingWebhookConfiguration, ValidatingWebhookConfiguration) {
        let rule = |group: &str, version: &str, resource: &str, ops: &[&str], scope: &str| json!([{"apiGroups": [group], "apiVersions": [version], "resources": [resource], "operations": ops, "scope": scope}]);
        let sgc = || {
            rule(
                GROUP,
                "v1alpha1",
                "staticgatewayconfigurations",
                &["CREATE", "UPDATE"],
                "Namespaced",
            )
        };
        let pods = |mut w: Value| {
            w["namespaceSelector"] = json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [system_ns]}]});
            w["objectSelector"] = json!({"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "NotIn", "values": ["kube-egress-gateway"]}]});
            w
        };
        let mut mutate_pods = pods(self.entry(
            "mutate.pods.egressgateway.kubernetes.azure.com",
            "/mutate-pod",
            "Ignore",
            rule("", "v1", "pods", &["CREATE"], "Namespaced"),
        ));
        mutate_pods["reinvocationPolicy"] = json!("Never");
        let mutating = serde_json::from_value(json!({
            "metadata": {"name": CONFIGURATION},
            "webhooks": [
                self.entry("mutate.staticgatewayconfigurations.egressgateway.kubernetes.azure.com",
                    "/mutate-staticgatewayconfiguration", "Fail", sgc()),
                mutate_pods,
            ]
        }))
        .expect("mutating configuration");
        let validating = serde_json::from_value(json!({
            "metadata": {"name": CONFIGURATION},
            "webhooks": [
                self.entry("validate.staticgatewayconfigurations.egressgateway.kubernetes.azure.com",
                    "/validate-staticgatewayconfiguration", "Fail", sgc()),
                self.entry("validate.gatewaypools.egressgateway.kubernetes.azure.com", "/validate-gatewaypool", "Fail",
                    rule(GROUP, "v1alpha1", "gatewaypools", &["CREATE", "UPDATE"], "Cluster")),
                self.entry("validate.podendpoints.egressgateway.kubernetes.azure.com", "/validate-podendpoint", "Fail",
                    rule(GROUP, "v1alpha1", "podendpoints", &["CREATE", "UPDATE"], "Namespaced")),
                pods(self.entry("validate.pods.egressgateway.kubernetes.azure.com", "/validate-pod", "Ignore",
                    rule("", "v1", "pods", &["CREATE", "UPDATE"], "Namespaced"))),
            ]
        }))
        .expect("validating configuration");
        (mutating, validating)
    }

    /// Registers [`Self::configurations`], replacing any registration of an earlier test of the binary.
    pub async fn register(&self, admin: &kube::Client, system_ns: &str) {
        let (mutating, validating) = self.configurations(system_ns);
        let mwc = Api::<MutatingWebhookConfiguration>::all(admin.clone());
        let vwc = Api::<ValidatingWebhookConfiguration>::all(admin.clone());
        for deleted in [
            mwc.delete(CONFIGURATION, &DeleteParams::default())
                .await
                .map(|_| ()),
            vwc.delete(CONFIGURATION, &DeleteParams::default())
                .await
                .map(|_| ()),
        ] {
            match deleted {
                Ok(()) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => panic!("removing an earlier registration: {e}"),
            }
        }
        mwc.create(&PostParams::default(), &mutating)
            .await
            .expect("mutating webhook configuration");
        vwc.create(&PostParams::default(), &validating)
            .await
            .expect("validating webhook configuration");
    }
}
