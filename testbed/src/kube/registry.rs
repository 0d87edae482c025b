//! The kinds the simulator serves: built-in kinds plus one per stored CustomResourceDefinition.

use serde_json::{Value, json};

/// One served version of a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionInfo {
    pub name: String,
    /// The CRD's `openAPIV3Schema` (structural), if any.
    pub schema: Option<Value>,
    /// `additionalPrinterColumns` of a CRD version.
    pub printer_columns: Vec<Value>,
    /// Whether this version has a `status` subresource.
    pub status: bool,
}

/// A resource (group + plural) and how it is served.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    pub group: String,
    /// Served versions, the storage (preferred) version first.
    pub versions: Vec<VersionInfo>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// `metadata.generation` is bumped on changes outside metadata and status.
    pub bumps_generation: bool,
    /// Defined by a CustomResourceDefinition.
    pub crd: bool,
}

impl ResourceType {
    pub fn version(&self, v: &str) -> Option<&VersionInfo> {
        self.versions.iter().find(|x| x.name == v)
    }

    pub fn api_version(&self, v: &str) -> String {
        if self.group.is_empty() {
            v.to_string()
        } else {
            format!("{}/{v}", self.group)
        }
    }

    pub fn has_status(&self, v: &str) -> bool {
        self.version(v).is_some_and(|x| x.status)
    }

    /// Whether `name` (plural, singular, short name or kind, any case) designates this resource.
    pub fn answers_to(&self, name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        self.plural == n
            || self.singular == n
            || self.kind.to_ascii_lowercase() == n
            || self.short_names.contains(&n)
    }
}

fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
) -> ResourceType {
    ResourceType {
        group: group.to_string(),
        versions: vec![VersionInfo {
            name: version.to_string(),
            schema: None,
            printer_columns: vec![],
            status,
        }],
        plural: plural.to_string(),
        singular: kind.to_ascii_lowercase(),
        kind: kind.to_string(),
        namespaced,
        short_names: short.iter().map(|s| (*s).to_string()).collect(),
        categories: vec![],
        bumps_generation: matches!(group, "apps" | "policy"),
        crd: false,
    }
}

const ADMISSION: &str = "admissionregistration.k8s.io";
const RBAC: &str = "rbac.authorization.k8s.io";
const APIEXTENSIONS: &str = "apiextensions.k8s.io";

/// The built-in kinds the product and its chart use:
/// `(group, plural, kind, namespaced, short names, has a status subresource)`, all at version `v1`.
#[allow(clippy::type_complexity)]
#[rustfmt::skip]
const BUILTINS: &[(&str, &str, &str, bool, &[&str], bool)] = &[
    ("", "namespaces", "Namespace", false, &["ns"], true),
    ("", "nodes", "Node", false, &["no"], true),
    ("", "pods", "Pod", true, &["po"], true),
    ("", "secrets", "Secret", true, &[], false),
    ("", "configmaps", "ConfigMap", true, &["cm"], false),
    ("", "events", "Event", true, &["ev"], false),
    ("", "serviceaccounts", "ServiceAccount", true, &["sa"], false),
    ("", "services", "Service", true, &["svc"], true),
    ("events.k8s.io", "events", "Event", true, &["ev"], false),
    ("coordination.k8s.io", "leases", "Lease", true, &[], false),
    ("apps", "deployments", "Deployment", true, &["deploy"], true),
    ("apps", "daemonsets", "DaemonSet", true, &["ds"], true),
    ("policy", "poddisruptionbudgets", "PodDisruptionBudget", true, &["pdb"], true),
    (ADMISSION, "mutatingwebhookconfigurations", "MutatingWebhookConfiguration", false, &[], false),
    (ADMISSION, "validatingwebhookconfigurations", "ValidatingWebhookConfiguration", false, &[], false),
    (APIEXTENSIONS, "customresourcedefinitions", "CustomResourceDefinition", false, &["crd", "crds"], true),
    (RBAC, "roles", "Role", true, &[], false),
    (RBAC, "rolebindings", "RoleBinding", true, &[], false),
    (RBAC, "clusterroles", "ClusterRole", false, &[], false),
    (RBAC, "clusterrolebindings", "ClusterRoleBinding", false, &[], false),
];

/// The built-in kinds, as [`BUILTINS`] lists them.
pub fn builtins() -> Vec<ResourceType> {
    BUILTINS
        .iter()
        .map(|&(group, plural, kind, namespaced, short, status)| {
            builtin(group, "v1", plural, kind, namespaced, short, status)
        })
        .collect()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// The resource a stored CRD object defines (None if it is malformed). A terminating CRD is still served, so
/// controllers can clear the finalizers of its remaining objects.
pub fn from_crd(crd: &Value) -> Option<ResourceType> {
    let spec = crd.get("spec")?;
    let names = spec.get("names")?;
    let plural = names.get("plural")?.as_str()?.to_string();
    let kind = names.get("kind")?.as_str()?.to_string();
    let mut versions: Vec<(bool, VersionInfo)> = Vec::new();
    for v in spec.get("versions")?.as_array()? {
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        versions.push((
            v.get("storage").and_then(Value::as_bool).unwrap_or(false),
            VersionInfo {
                name: v.get("name")?.as_str()?.to_string(),
                schema: v.pointer("/schema/openAPIV3Schema").cloned(),
                printer_columns: v
                    .get("additionalPrinterColumns")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                status: v.pointer("/subresources/status").is_some(),
            },
        ));
    }
    versions.sort_by_key(|(storage, _)| !*storage);
    Some(ResourceType {
        group: spec.get("group")?.as_str()?.to_string(),
        versions: versions.into_iter().map(|(_, v)| v).collect(),
        singular: names
            .get("singular")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| kind.to_ascii_lowercase()),
        plural,
        kind,
        namespaced: spec.get("scope").and_then(Value::as_str) != Some("Cluster"),
        short_names: strings(names.get("shortNames")),
        categories: strings(names.get("categories")),
        bumps_generation: true,
        crd: true,
    })
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `APIResourceList` for one group/version.
pub fn resource_list(group: &str, version: &str, types: &[ResourceType]) -> Value {
    let mut resources = Vec::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.version(version).is_some())
    {
        let mut r = json!({
            "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced,
            "kind": t.kind, "verbs": VERBS,
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        if t.has_status(version) {
            resources.push(json!({
                "name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                "kind": t.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

/// `APIGroup` entries for every named group.
pub fn groups(types: &[ResourceType]) -> Vec<Value> {
    let mut order: Vec<String> = Vec::new();
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        if !order.contains(&t.group) {
            order.push(t.group.clone());
        }
    }
    order.iter().map(|g| group(g, types)).collect()
}

/// One `APIGroup`.
pub fn group(g: &str, types: &[ResourceType]) -> Value {
    let mut versions: Vec<String> = Vec::new();
    for t in types.iter().filter(|t| t.group == g) {
        for v in &t.versions {
            if !versions.contains(&v.name) {
                versions.push(v.name.clone());
            }
        }
    }
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}
