//! Bearer-token authentication and authorization (a static access level per user, or RBAC objects).

use serde_json::Value;

use super::store::{ResKey, State, str_at};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Everything (like `system:masters`).
    Admin,
    /// get, list and watch on every resource.
    ReadOnly,
    /// Whatever the Role/ClusterRole bindings stored in the simulator grant.
    Rbac,
}

/// A user the simulator authenticates by bearer token.
#[derive(Clone)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    pub token: String,
    pub access: Access,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("groups", &self.groups)
            .field("token", &"<redacted>")
            .field("access", &self.access)
            .finish()
    }
}

impl User {
    pub fn new(name: &str, token: &str, access: Access) -> Self {
        Self {
            name: name.to_string(),
            groups: vec![],
            token: token.to_string(),
            access,
        }
    }

    /// A service account user `system:serviceaccount:<ns>:<name>` with the usual groups, authorized by RBAC.
    pub fn service_account(namespace: &str, name: &str, token: &str) -> Self {
        Self {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
            ],
            token: token.to_string(),
            access: Access::Rbac,
        }
    }

    /// Groups including the implicit `system:authenticated`.
    pub fn all_groups(&self) -> Vec<String> {
        let mut g = self.groups.clone();
        if self.access == Access::Admin {
            g.push("system:masters".into());
        }
        g.push("system:authenticated".into());
        g
    }
}

/// The attributes of one request, as authorization sees them.
#[derive(Debug, Clone)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

impl Attributes {
    /// `User "x" cannot get resource "pods" in API group "" in the namespace "default"` and friends.
    pub fn forbidden_message(&self, user: &str) -> String {
        let res = if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        let qualified = super::status::qualified(&self.group, &self.resource);
        let subject = if self.name.is_empty() {
            qualified
        } else {
            format!("{qualified} \"{}\"", self.name)
        };
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace \"{}\"", self.namespace)
        };
        format!(
            "{subject} is forbidden: User \"{user}\" cannot {} resource \"{res}\" in API group \"{}\" {scope}",
            self.verb, self.group
        )
    }
}

fn strs(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let verbs = strs(rule.get("verbs"));
    let groups = strs(rule.get("apiGroups"));
    let resources = strs(rule.get("resources"));
    let names = strs(rule.get("resourceNames"));
    let res = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let verb_ok = verbs.iter().any(|v| *v == "*" || *v == a.verb);
    let group_ok = groups.iter().any(|g| *g == "*" || *g == a.group);
    let res_ok = resources.iter().any(|r| {
        *r == "*"
            || *r == res
            || (a.subresource.is_empty() && *r == a.resource)
            || r.strip_prefix("*/") == Some(a.subresource.as_str()) && !a.subresource.is_empty()
    });
    let name_ok = names.is_empty() || names.contains(&a.name.as_str());
    verb_ok && group_ok && res_ok && name_ok
}

fn subject_matches(subject: &Value, user: &User, groups: &[String]) -> bool {
    let name = str_at(subject, "/name").unwrap_or_default();
    match subject.get("kind").and_then(Value::as_str) {
        Some("User") => name == user.name,
        Some("Group") => groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = str_at(subject, "/namespace").unwrap_or_default();
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn role_rules(state: &State, kind: &str, namespace: &str, name: &str) -> Vec<Value> {
    let (plural, ns) = if kind == "ClusterRole" {
        ("clusterroles", "")
    } else {
        ("roles", namespace)
    };
    let key: ResKey = ("rbac.authorization.k8s.io".into(), plural.into());
    state
        .get(&key, &(ns.to_string(), name.to_string()))
        .and_then(|r| r.get("rules"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Whether `user` may perform the request.
pub fn authorize(state: &State, user: &User, a: &Attributes) -> bool {
    match user.access {
        Access::Admin => true,
        Access::ReadOnly => matches!(a.verb.as_str(), "get" | "list" | "watch"),
        Access::Rbac => {
            let groups = user.all_groups();
            let bound = |b: &Value| {
                b.get("subjects")
                    .and_then(Value::as_array)
                    .is_some_and(|s| s.iter().any(|s| subject_matches(s, user, &groups)))
            };
            let rbac = |p: &str| -> ResKey { ("rbac.authorization.k8s.io".into(), p.into()) };
            for b in state.list(&rbac("clusterrolebindings"), None) {
                if bound(b) {
                    let name = str_at(b, "/roleRef/name").unwrap_or_default();
                    if role_rules(state, "ClusterRole", "", name)
                        .iter()
                        .any(|r| rule_allows(r, a))
                    {
                        return true;
                    }
                }
            }
            if a.namespace.is_empty() {
                return false;
            }
            for b in state.list(&rbac("rolebindings"), Some(&a.namespace)) {
                if bound(b) {
                    let kind = str_at(b, "/roleRef/kind").unwrap_or("Role");
                    let name = str_at(b, "/roleRef/name").unwrap_or_default();
                    if role_rules(state, kind, &a.namespace, name)
                        .iter()
                        .any(|r| rule_allows(r, a))
                    {
                        return true;
                    }
                }
            }
            false
        }
    }
}
