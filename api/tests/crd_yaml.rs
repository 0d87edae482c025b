//! The committed CRD manifests are exactly what the types generate.

use std::path::PathBuf;

#[test]
fn committed_crds_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(api::crd::CHART_CRD_DIR);
    let manifests = api::crd::manifests().expect("serialise");
    assert_eq!(manifests.len(), 4);
    for (file, body) in manifests {
        let committed = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
        assert!(
            committed == body,
            "{file} is stale or missing: run `cargo run -p api --bin crdgen` and commit the result"
        );
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("crd dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    on_disk.sort();
    assert_eq!(
        on_disk,
        [
            "gatewaypools.yaml",
            "gatewaystatuses.yaml",
            "podendpoints.yaml",
            "staticgatewayconfigurations.yaml"
        ]
    );
}

#[test]
fn kubectl_friendly_crds() {
    for crd in api::crd::all() {
        let names = &crd.spec.names;
        let version = &crd.spec.versions[0];
        assert_eq!(crd.spec.group, "egressgateway.kubernetes.azure.com");
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{} has /status",
            names.kind
        );
        assert_eq!(
            names.categories.as_deref(),
            Some(&["egressgateway".to_string()][..])
        );
        let schema = api::crd::openapi_schema(&crd).expect("schema");
        assert_every_field_described(&schema, &names.kind);
    }
    let sgc = api::crd::all().remove(0);
    assert_eq!(
        sgc.spec.names.short_names.as_deref(),
        Some(&["sgc".to_string()][..])
    );
    let columns: Vec<String> = sgc.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .expect("columns")
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(columns, ["Pool", "VMSS", "Egress Prefix", "Ready", "Age"]);
    let pool = api::crd::all().remove(1);
    assert_eq!(pool.spec.scope, "Cluster");
    assert_eq!(
        pool.spec.names.short_names.as_deref(),
        Some(&["gwp".to_string()][..])
    );
}

/// `kubectl explain` reads well only if every property has a description.
fn assert_every_field_described(schema: &serde_json::Value, at: &str) {
    if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
        for (name, prop) in props {
            let path = format!("{at}.{name}");
            if !matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
                assert!(
                    prop.get("description")
                        .and_then(|d| d.as_str())
                        .is_some_and(|d| !d.is_empty()),
                    "{path} has no description"
                );
            }
            assert_every_field_described(prop, &path);
        }
    }
    if let Some(items) = schema.get("items") {
        assert_every_field_described(items, &format!("{at}[]"));
    }
}
