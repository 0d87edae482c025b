//! CRD manifests generated from the types: the chart's `crds/` directory is written from here and a test
//! fails when the committed files differ.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{GatewayPool, GatewayStatus, PodEndpoint, StaticGatewayConfiguration};

/// Directory of the chart's CRDs, relative to the workspace root.
pub const CHART_CRD_DIR: &str = "charts/kube-egress-gateway/crds";

/// Every CRD of the product, in install order, with descriptions reflowed (see [`reflow`]).
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        StaticGatewayConfiguration::crd(),
        GatewayPool::crd(),
        PodEndpoint::crd(),
        GatewayStatus::crd(),
    ]
    .into_iter()
    .map(reflow_descriptions)
    .collect()
}

/// Doc comments wrap at the source's line width; `kubectl explain` wraps descriptions itself, so the source's
/// line breaks would show as ragged lines mid-sentence. Lines of a paragraph are joined with a space; blank
/// lines (paragraph breaks) stay.
pub fn reflow(text: &str) -> String {
    text.split("\n\n")
        .map(|para| {
            para.split('\n')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn reflow_descriptions(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (key, value) in map.iter_mut() {
                    match value {
                        serde_json::Value::String(text) if key == "description" => *text = reflow(text),
                        _ => walk(value),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let Ok(mut json) = serde_json::to_value(&crd) else {
        return crd;
    };
    walk(&mut json);
    serde_json::from_value(json).unwrap_or(crd)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflow_joins_wrapped_lines_and_keeps_paragraphs() {
        assert_eq!(reflow("one line"), "one line");
        assert_eq!(
            reflow("wrapped\nsentence  \n goes on."),
            "wrapped sentence goes on."
        );
        assert_eq!(
            reflow("first\nparagraph.\n\nsecond\none."),
            "first paragraph.\n\nsecond one."
        );
    }

    #[test]
    fn no_description_keeps_a_source_line_break() {
        for (file, yaml) in manifests().expect("serialise") {
            let doc: serde_json::Value = serde_yaml::from_str(&yaml).expect("yaml");
            let mut stack = vec![doc];
            while let Some(v) = stack.pop() {
                match v {
                    serde_json::Value::Object(map) => {
                        for (key, value) in map {
                            if key == "description" {
                                let text = value.as_str().unwrap_or_default();
                                assert!(!text.replace("\n\n", "").contains('\n'), "{file}: {text:?}");
                            } else {
                                stack.push(value);
                            }
                        }
                    }
                    serde_json::Value::Array(items) => stack.extend(items),
                    _ => {}
                }
            }
        }
    }
}
