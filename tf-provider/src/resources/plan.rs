//! Planning shared by both resources: config values planned exactly as written, provider defaults for
//! unset optional+computed attributes, server-derived attributes unknown whenever the spec changes, and
//! replacement for immutable fields (Azure names compared without regard to case, as the rules do).

use crate::diag::Path;
use crate::schema::Block;
use crate::value::Value;

/// What a kind tells the planner.
#[derive(Debug)]
pub struct PlanRules<'a> {
    /// Defaults for optional+computed attributes that are unset (null) in configuration.
    pub defaults: &'a [(String, Value)],
    /// The computed `id` for the planned object (unknown when its parts are unknown).
    pub id: Value,
}

/// Plans a create (`prior` null) or update. Returns the planned state and the paths forcing replacement.
pub fn plan(block: &Block, prior: &Value, config: &Value, rules: &PlanRules<'_>) -> (Value, Vec<Path>) {
    let creating = prior.is_null();
    let mut planned = std::collections::BTreeMap::new();
    let mut spec_changed = creating;
    for a in &block.attributes {
        let cfg = config.get(a.name).clone();
        let v = if a.name == "id" {
            rules.id.clone()
        } else if a.computed && !a.optional {
            continue; // decided below, once we know whether the spec changed
        } else if a.computed && cfg.is_null() {
            rules
                .defaults
                .iter()
                .find(|(k, _)| *k == a.name)
                .map_or(Value::unknown(), |(_, d)| d.clone())
        } else {
            cfg
        };
        // A change of letter case alone in an Azure name is a normalisation: plan the prior value (which
        // Terraform accepts in place of the configured one), neither an update nor a replacement.
        let v = match (prior.get(a.name), &v) {
            (p @ Value::String(ps), Value::String(cs))
                if a.case_insensitive && ps.eq_ignore_ascii_case(cs) =>
            {
                p.clone()
            }
            _ => v,
        };
        if !creating && prior.get(a.name) != &v && a.name != "id" {
            spec_changed = true;
        }
        planned.insert(a.name.to_string(), v);
    }
    for b in &block.blocks {
        let v = config.get(b.name).clone();
        if !creating && b.name != "timeouts" && prior.get(b.name) != &v {
            spec_changed = true;
        }
        planned.insert(b.name.to_string(), v);
    }
    for a in block
        .attributes
        .iter()
        .filter(|a| a.computed && !a.optional && a.name != "id")
    {
        let v = if spec_changed {
            Value::unknown()
        } else {
            prior.get(a.name).clone()
        };
        planned.insert(a.name.to_string(), v);
    }
    let planned = Value::Map(planned);
    let mut replace = Vec::new();
    if !creating {
        for name in block
            .attributes
            .iter()
            .filter(|a| a.force_new)
            .map(|a| a.name)
            .chain(block.blocks.iter().filter(|b| b.force_new).map(|b| b.name))
        {
            if prior.get(name) != planned.get(name) {
                replace.push(Path::attr(name));
            }
        }
    }
    (planned, replace)
}
