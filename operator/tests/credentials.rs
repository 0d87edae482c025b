//! The operator's own credentials (user-assigned managed identity through IMDS, workload identity from a
//! rotating projected token file), built from cloud config exactly as in production and used for real ARM
//! calls against the Azure simulator.

use std::time::Duration;

use operator::azure::{Arm, RetryBudget, Timeouts};
use operator::config::CloudConfig;
use operator::metrics::Metrics;
use serde_json::json;
use testbed::azure::{AzureSim, Seed};

fn retry() -> RetryBudget {
    RetryBudget {
        initial: Duration::from_millis(5),
        max_delay: Duration::from_millis(200),
        max_retries: 2,
    }
}

async fn list_vmss_with(cfg: &CloudConfig) -> usize {
    let metrics = Metrics::new();
    let timeouts = Timeouts::default();
    let cred = operator::azure::credential(cfg, &timeouts).expect("credential");
    let arm = Arm::new(cfg, cred, retry(), &timeouts, &metrics).expect("clients");
    arm.list_vmss("node-rg")
        .await
        .expect("ARM call authorised by the credential")
        .len()
}

#[tokio::test]
async fn user_assigned_managed_identity_through_imds() {
    let seed = Seed::aks_like(2);
    let sim = AzureSim::start(&seed).await.expect("simulator");
    let mut cfg = seed.cloud_config(sim.url());
    if let Some(o) = cfg.as_object_mut() {
        o.remove("aadClientId");
        o.remove("aadClientSecret");
    }
    cfg["useManagedIdentityExtension"] = json!(true);
    cfg["userAssignedIdentityID"] = json!("kubelet-identity-client-id");
    cfg["imdsEndpoint"] = json!(format!("{}/metadata/identity/oauth2/token", sim.url()));
    let text = cfg.to_string();
    let cfg = CloudConfig::parse(&text, |_| None).expect("config");
    assert!(list_vmss_with(&cfg).await >= 1);

    // Without the Metadata header IMDS refuses; the credential always sends it, and reports failures.
    let broken = CloudConfig::parse(
        &text.replace(
            "/metadata/identity/oauth2/token",
            "/metadata/identity/oauth2/nothing-here",
        ),
        |_| None,
    )
    .expect("config");
    let cred = operator::azure::credential(&broken, &Timeouts::default()).expect("credential");
    let err = cred
        .get_token(&[&format!("{}/.default", sim.url())])
        .await
        .expect_err("no token from a wrong endpoint");
    assert!(err.to_string().contains("IMDS token request failed"), "{err}");
}

#[tokio::test]
async fn workload_identity_rereads_the_rotated_token_file() {
    let seed = Seed::aks_like(1);
    let sim = AzureSim::start(&seed).await.expect("simulator");
    let dir = tempfile::tempdir().expect("tmp");
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, "projected-service-account-jwt-1\n").expect("token file");
    let mut cfg = seed.cloud_config(sim.url());
    if let Some(o) = cfg.as_object_mut() {
        o.remove("aadClientSecret");
    }
    cfg["useFederatedWorkloadIdentityExtension"] = json!(true);
    cfg["aadFederatedTokenFile"] = json!(token_file.to_string_lossy());
    let text = cfg.to_string();
    let cfg = CloudConfig::parse(&text, |_| None).expect("config");
    assert!(list_vmss_with(&cfg).await >= 1);

    // The kubelet rotates the projected token; the credential reads the new one instead of failing later.
    let cred = operator::azure::credential(&cfg, &Timeouts::default()).expect("credential");
    let scope = format!("{}/.default", sim.url());
    cred.get_token(&[&scope])
        .await
        .expect("token with the first projected token");
    std::fs::write(&token_file, "projected-service-account-jwt-2\n").expect("rotate");
    cred.clear_cache().await.expect("clear");
    cred.get_token(&[&scope]).await.expect("token after rotation");
    std::fs::remove_file(&token_file).expect("remove");
    cred.clear_cache().await.expect("clear");
    let err = cred
        .get_token(&[&scope])
        .await
        .expect_err("a missing token file is an error");
    assert!(
        err.to_string().contains("reading the federated token file"),
        "{err}"
    );
}
