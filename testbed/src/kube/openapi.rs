//! A minimal OpenAPI v3 index: just enough for kubectl to see that the server supports server-side field
//! validation (a `fieldValidation` query parameter on each kind's PATCH), so it skips client-side schema
//! validation and lets the server validate. No schemas are published (`kubectl explain` does not work).

use serde_json::{Map, Value, json};

use super::registry::ResourceType;

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `GET /openapi/v3`.
pub fn root(types: &[ResourceType]) -> Value {
    let mut paths = Map::new();
    for t in types {
        for v in &t.versions {
            let p = gv_path(&t.group, &v.name);
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=kubesim")}),
            );
        }
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/<api/v1 | apis/g/v>`.
pub fn group_version(types: &[ResourceType], gv: &str) -> Option<Value> {
    let mut paths = Map::new();
    for t in types {
        for v in &t.versions {
            if gv_path(&t.group, &v.name) != gv {
                continue;
            }
            let base = format!("/{gv}");
            let item = if t.namespaced {
                format!("{base}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
            } else {
                format!("{base}/{}/{{name}}", t.plural)
            };
            let gvk = json!({"group": t.group, "version": v.name, "kind": t.kind});
            let params = json!([
                {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                {"name": "force", "in": "query", "schema": {"type": "boolean"}},
            ]);
            paths.insert(
                item,
                json!({
                    "patch": {"operationId": format!("patch{}", t.kind), "x-kubernetes-group-version-kind": gvk,
                        "x-kubernetes-action": "patch", "parameters": params,
                        "responses": {"200": {"description": "OK"}}},
                }),
            );
        }
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0-kubesim"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
