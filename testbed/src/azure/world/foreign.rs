//! Properties no client model knows, as newer API versions, AKS and other controllers add them: seeding them,
//! finding them, and telling what a PUT body dropped of the object it replaced.

use serde_json::{Value, json};

use super::{LB_TYPE, NIC_TYPE, VMSS_TYPE, VMSS_VM_TYPE, World};

/// Properties no model of the operator knows, as newer API versions, AKS and other controllers add them:
/// every key starting with [`FOREIGN_PREFIX`] in a resource. A client that reads a resource and writes it back
/// must keep them all.
pub const FOREIGN_PREFIX: &str = "future";

/// JSON pointers of every [`FOREIGN_PREFIX`] key in `v` (array entries named by their `name`).
pub fn foreign_fields(v: &Value) -> Vec<String> {
    fn walk(v: &Value, at: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    let here = format!("{at}/{k}");
                    if k.starts_with(FOREIGN_PREFIX) {
                        out.push(here.clone());
                    }
                    walk(c, &here, out);
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    let name = c
                        .get("name")
                        .and_then(Value::as_str)
                        .map_or(i.to_string(), str::to_owned);
                    walk(c, &format!("{at}[{name}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, "", &mut out);
    out
}

/// What a PUT body lacks of the object it replaces: the pointer of every field `before` has and `body` does
/// not. Array entries are matched by `name`, else by `id` (references), else by position, and shown as
/// `…[<name, or the id's last segment, or the position>]`; an entry missing altogether is reported once.
pub fn dropped_fields(before: &Value, body: &Value) -> Vec<String> {
    fn key<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
        v.get(field).and_then(Value::as_str)
    }
    fn walk(before: &Value, body: &Value, at: &str, out: &mut Vec<String>) {
        match (before, body) {
            (Value::Object(b), Value::Object(n)) => {
                for (k, v) in b {
                    let here = format!("{at}/{k}");
                    match n.get(k) {
                        Some(nv) => walk(v, nv, &here, out),
                        None => out.push(here),
                    }
                }
            }
            (Value::Array(b), Value::Array(n)) => {
                for (i, v) in b.iter().enumerate() {
                    let same = |field: &str, want: &str| {
                        n.iter()
                            .find(|c| key(c, field).is_some_and(|k| k.eq_ignore_ascii_case(want)))
                    };
                    let (label, found) = match (key(v, "name"), key(v, "id")) {
                        (Some(name), _) => (name.to_owned(), same("name", name)),
                        (None, Some(id)) => (id.rsplit('/').next().unwrap_or(id).to_owned(), same("id", id)),
                        (None, None) => (i.to_string(), n.get(i)),
                    };
                    let here = format!("{at}[{label}]");
                    match found {
                        Some(c) => walk(v, c, &here, out),
                        None => out.push(here),
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(before, body, "", &mut out);
    out
}

impl World {
    /// Writes [`FOREIGN_PREFIX`] properties into every scale set (top level, `properties`, the VM profile,
    /// its network profile, each NIC configuration and ipConfiguration), every scale-set instance (top level
    /// and its NIC configurations) and every network interface (top level and each ipConfiguration).
    pub fn seed_foreign_fields(&mut self) {
        fn mark(v: &mut Value, ptr: &str, what: &str) {
            if let Some(Value::Object(o)) = v.pointer_mut(ptr) {
                o.insert(
                    format!("{FOREIGN_PREFIX}{what}"),
                    json!({"setBy": "another controller", "nested": {"kept": true}}),
                );
            }
        }
        fn mark_each(v: &mut Value, ptr: &str, inner: &str, what: &str) {
            let n = v.pointer(ptr).and_then(Value::as_array).map_or(0, Vec::len);
            for i in 0..n {
                mark(v, &format!("{ptr}/{i}{inner}"), what);
            }
        }
        /// Each NIC configuration at `ptr` and each of its ipConfigurations.
        fn mark_nic_configs(v: &mut Value, ptr: &str) {
            mark_each(v, ptr, "/properties", "NicConfigProperty");
            let n = v.pointer(ptr).and_then(Value::as_array).map_or(0, Vec::len);
            for i in 0..n {
                mark_each(
                    v,
                    &format!("{ptr}/{i}/properties/ipConfigurations"),
                    "/properties",
                    "IpConfigProperty",
                );
            }
        }
        for v in self.resources.values_mut() {
            let ty = v["type"].as_str().unwrap_or_default().to_owned();
            if ty.eq_ignore_ascii_case(VMSS_TYPE) {
                mark(v, "", "TopLevel");
                mark(v, "/properties", "ScaleSetProperty");
                mark(v, "/properties/virtualMachineProfile", "ProfileProperty");
                mark(
                    v,
                    "/properties/virtualMachineProfile/networkProfile",
                    "NetworkProfileProperty",
                );
                mark_nic_configs(
                    v,
                    "/properties/virtualMachineProfile/networkProfile/networkInterfaceConfigurations",
                );
            } else if ty.eq_ignore_ascii_case(VMSS_VM_TYPE) {
                mark(v, "", "TopLevel");
                mark(v, "/properties", "InstanceProperty");
                mark_nic_configs(
                    v,
                    "/properties/networkProfileConfiguration/networkInterfaceConfigurations",
                );
            } else if ty.eq_ignore_ascii_case(NIC_TYPE) {
                mark(v, "", "TopLevel");
                mark(v, "/properties", "NicProperty");
                mark_each(
                    v,
                    "/properties/ipConfigurations",
                    "/properties",
                    "IpConfigProperty",
                );
            } else if ty.eq_ignore_ascii_case(LB_TYPE) {
                mark(v, "", "TopLevel");
                mark(v, "/properties", "LoadBalancerProperty");
                for coll in [
                    "frontendIPConfigurations",
                    "backendAddressPools",
                    "loadBalancingRules",
                    "probes",
                ] {
                    mark_each(v, &format!("/properties/{coll}"), "/properties", "EntryProperty");
                }
            }
        }
    }
}
