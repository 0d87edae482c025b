//! The webhook behind the real kube-apiserver, registered as the chart registers it (its webhooks, rules,
//! selectors and failure policies; `clientConfig.url` because the webhook runs as a loopback process): real
//! Pod objects get the namespace's default configuration, annotated hostNetwork Pods are refused, our rules
//! answer for configurations, and only the node agent's ServiceAccount (a TokenRequest token, authorized by
//! RBAC) writes PodEndpoints. One test: the webhook configurations are cluster-wide.

mod support;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::json;
use support::{Reach, Webhook};
use testbed::cluster::{Kubectl, KubectlOutput};
use testbed::control_plane::ControlPlane;
use testbed::wait::eventually;

const AGENT_SA: &str = "kube-egress-gateway-node-agent";
const GROUP: &str = api::names::GROUP;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_through_the_apiserver() {
    let cp = ControlPlane::shared().await;
    cp.install_crds().await.expect("CRDs");
    let admin = cp.client().expect("admin");
    let system = cp.namespace("keg-system", &[]).await.expect("namespace");
    let demo = cp.namespace("demo", &[]).await.expect("namespace");
    let team = format!("team-{}", std::process::id());
    cp.create_namespace(
        &team,
        &[],
        &[(api::names::NAMESPACE_DEFAULT_GATEWAY_ANNOTATION, "team-gw")],
    )
    .await
    .expect("namespace");
    let dir = tempfile::tempdir().expect("tmp");
    let kubeconfig = dir.path().join("admin.kubeconfig");
    cp.write_admin_kubeconfig(&kubeconfig).expect("kubeconfig");
    let kubectl = Kubectl::new(&cp.assets().kubectl, kubeconfig, dir.path().join("cache"));

    // The real webhook server with a self-generated certificate for the address the apiserver calls,
    // registered as the chart registers it but by `clientConfig.url`.
    let hook = Webhook::start(
        admin.clone(),
        vec![format!("system:serviceaccount:{system}:{AGENT_SA}")],
        Reach::Url,
    )
    .await;
    hook.register(&admin, &system).await;

    // A real Pod in a namespace with a default configuration: the apiserver defaults it, our mutating
    // webhook adds the annotation (and warns that the configuration does not exist yet).
    let KubectlOutput { ok, stderr, .. } = kubectl
        .run(&["run", "app", "-n", &team, "--image=nginx", "--restart=Never"])
        .await;
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(&format!("Warning: metadata.annotations[kubernetes.azure.com/static-gateway-configuration]: StaticGatewayConfiguration 'team-gw' does not exist in namespace '{team}'")),
        "{stderr}"
    );
    let pod = Api::<Pod>::namespaced(admin.clone(), &team)
        .get("app")
        .await
        .expect("pod");
    assert_eq!(
        pod.metadata
            .annotations
            .unwrap_or_default()
            .get(api::names::POD_GATEWAY_ANNOTATION)
            .map(String::as_str),
        Some("team-gw")
    );
    let spec = pod.spec.expect("spec");
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some("default"),
        "the apiserver's own defaulting ran"
    );
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));

    // A plain pod elsewhere is untouched.
    let KubectlOutput { ok, stderr, .. } = kubectl
        .run(&["run", "plain", "-n", &demo, "--image=nginx", "--restart=Never"])
        .await;
    assert!(ok && !stderr.contains("Warning"), "{stderr}");
    let plain = Api::<Pod>::namespaced(admin.clone(), &demo)
        .get("plain")
        .await
        .expect("pod");
    assert!(
        !plain
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(api::names::POD_GATEWAY_ANNOTATION)
    );

    // An annotated hostNetwork Pod is refused by our validating webhook, after the apiserver's validation.
    let host = dir.path().join("host.yaml");
    std::fs::write(&host, format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: host\n  namespace: {demo}\n  annotations:\n    kubernetes.azure.com/static-gateway-configuration: gw\nspec:\n  hostNetwork: true\n  containers: [{{name: c, image: nginx}}]\n")).expect("write");
    let KubectlOutput { ok, stderr, .. } = kubectl.run(&["apply", "-f", host.to_str().expect("utf-8")]).await;
    assert!(
        !ok && stderr.contains("admission webhook \"validate.pods.egressgateway.kubernetes.azure.com\" denied the request")
            && stderr.contains(&format!("Pod {demo}/host is invalid: metadata.annotations[kubernetes.azure.com/static-gateway-configuration]: hostNetwork pod")),
        "{stderr}"
    );
    println!("annotated hostNetwork pod:\n{stderr}");
    // A Pod the apiserver itself refuses never reaches the webhook: its own message answers.
    std::fs::write(&host, format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: host\n  namespace: {demo}\n  annotations:\n    kubernetes.azure.com/static-gateway-configuration: gw\nspec:\n  hostNetwork: true\n  containers: [{{name: c}}]\n")).expect("write");
    let KubectlOutput { ok, stderr, .. } = kubectl.run(&["apply", "-f", host.to_str().expect("utf-8")]).await;
    assert!(
        !ok && stderr.contains("spec.containers[0].image: Required value")
            && !stderr.contains("admission webhook"),
        "{stderr}"
    );

    // Configurations: the webhook's rules after the schema's.
    let sgc = dir.path().join("sgc.yaml");
    std::fs::write(&sgc, format!("apiVersion: {GROUP}/v1alpha1\nkind: StaticGatewayConfiguration\nmetadata:\n  name: gw\n  namespace: {demo}\nspec:\n  gatewayNodepoolName: gwpool\n  publicIpPrefixId: /subscriptions/mySubscriptionID/resourceGroups/rg/providers/Microsoft.Network/publicIPPrefixes/p\n")).expect("write");
    let KubectlOutput { ok, stderr, .. } = kubectl.run(&["apply", "-f", sgc.to_str().expect("utf-8")]).await;
    assert!(
        !ok && stderr.contains("admission webhook \"validate.staticgatewayconfigurations.egressgateway.kubernetes.azure.com\" denied the request")
            && stderr.contains("has subscription 'mySubscriptionID', which is not a subscription ID (a GUID)"),
        "{stderr}"
    );
    std::fs::write(&sgc, format!("apiVersion: {GROUP}/v1alpha1\nkind: StaticGatewayConfiguration\nmetadata:\n  name: gw\n  namespace: {demo}\nspec:\n  gatewayNodepoolName: gwpool\n")).expect("write");
    let KubectlOutput { ok, stdout, stderr } =
        kubectl.run(&["apply", "-f", sgc.to_str().expect("utf-8")]).await;
    assert!(ok && stdout.contains("created"), "{stderr}");

    // PodEndpoints: refused for the admin, written by the node agent's ServiceAccount once RBAC allows it.
    let pe = dir.path().join("pe.yaml");
    std::fs::write(&pe, format!("apiVersion: {GROUP}/v1alpha1\nkind: PodEndpoint\nmetadata:\n  name: app\n  namespace: {team}\nspec:\n  staticGatewayConfiguration: team-gw\n  podIpAddress: 10.244.0.5/32\n  podPublicKey: aGVsbG8=\n")).expect("write");
    let KubectlOutput { ok, stderr, .. } = kubectl.run(&["apply", "-f", pe.to_str().expect("utf-8")]).await;
    assert!(
        !ok && stderr.contains("written only by the node agent"),
        "{stderr}"
    );
    let token = cp.service_account_token(&system, AGENT_SA).await.expect("token");
    let agent_kubeconfig = dir.path().join("agent.kubeconfig");
    std::fs::write(
        &agent_kubeconfig,
        cp.kubeconfig_for("node-agent", &token).expect("kubeconfig"),
    )
    .expect("write");
    let KubectlOutput { ok, stderr, .. } = kubectl
        .with_kubeconfig(&agent_kubeconfig)
        .run(&["apply", "-f", pe.to_str().expect("utf-8")])
        .await;
    assert!(
        !ok && stderr.contains(&format!(
            "User \"system:serviceaccount:{system}:{AGENT_SA}\" cannot"
        )),
        "RBAC refuses before the grant: {stderr}"
    );
    let role = format!("node-agent-{system}");
    let objects = json!([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role},
         "rules": [{"apiGroups": [GROUP], "resources": ["podendpoints"], "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": role},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
         "subjects": [{"kind": "ServiceAccount", "name": AGENT_SA, "namespace": system}]},
    ]);
    let rbac = dir.path().join("rbac.json");
    std::fs::write(
        &rbac,
        json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string(),
    )
    .expect("write");
    let KubectlOutput { ok, stderr, .. } = kubectl.run(&["apply", "-f", rbac.to_str().expect("utf-8")]).await;
    assert!(ok, "{stderr}");
    let agent = kubectl.with_kubeconfig(&agent_kubeconfig);
    eventually("the node agent's account writes the PodEndpoint", || async {
        agent.run(&["apply", "-f", pe.to_str().expect("utf-8")]).await.ok
    })
    .await;

    for cleanup in [
        vec!["delete", "mutatingwebhookconfiguration", "kube-egress-gateway"],
        vec!["delete", "validatingwebhookconfiguration", "kube-egress-gateway"],
    ] {
        let KubectlOutput { ok, stderr, .. } = kubectl.run(&cleanup).await;
        assert!(ok, "{stderr}");
    }
}
