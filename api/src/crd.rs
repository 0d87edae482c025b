//! CRD manifests generated from the types: the chart's `crds/` directory is written from here and a test
//! fails when the committed files differ.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{GatewayPool, GatewayStatus, PodEndpoint, StaticGatewayConfiguration};

/// Directory of the chart's CRDs, relative to the workspace root.
pub const CHART_CRD_DIR: &str = "charts/kube-egress-gateway/crds";

/// Every CRD of the product, in install order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        StaticGatewayConfiguration::crd(),
        GatewayPool::crd(),
        PodEndpoint::crd(),
        GatewayStatus::crd(),
    ]
}

/// `(file name, YAML)` for each CRD, as committed to the chart.
pub fn manifests() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    all()
        .into_iter()
        .map(|crd| {
            let file = format!("{}.yaml", crd.spec.names.plural);
            let body = serde_yaml::to_string(&crd)?;
            Ok((
                file,
                format!("# Generated from api/ by `cargo run -p api --bin crdgen`. Do not edit.\n{body}"),
            ))
        })
        .collect()
}

/// The `openAPIV3Schema` of a CRD, as JSON.
pub fn openapi_schema(crd: &CustomResourceDefinition) -> Option<serde_json::Value> {
    let schema = crd
        .spec
        .versions
        .first()?
        .schema
        .as_ref()?
        .open_api_v3_schema
        .as_ref()?;
    serde_json::to_value(schema).ok()
}
