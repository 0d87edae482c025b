//! Planning shared by both resources: config values planned exactly as written, provider defaults for
//! unset optional+computed attributes, replacement for immutable fields (Azure names compared without regard
//! to case, as the rules do), and server-derived attributes unknown exactly when the change can move them.

use std::collections::BTreeSet;

use crate::diag::Path;
use crate::schema::Block;
use crate::value::Value;

/// What an in-place update can do to a server-derived (computed-only) attribute. A value planned known is a
/// promise: apply must return it unchanged, so an attribute is only kept where the operator provably keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Derived {
    /// Any change may move it (status conditions, live counts): unknown on every update.
    AnyChange,
    /// Only a change of these attributes may move it: otherwise an update plans the prior value (when there
    /// is one). An empty list: fixed for the object's life (its UID), new only when the object is replaced.
    On(&'static [&'static str]),
}

/// What a kind tells the planner.
#[derive(Debug)]
pub struct PlanRules<'a> {
    /// Defaults for optional+computed attributes that are unset (null) in configuration.
    pub defaults: &'a [(String, Value)],
    /// The computed `id` for the planned object (unknown when its parts are unknown).
    pub id: Value,
    /// How updates affect the kind's server-derived attributes; one not listed is [`Derived::AnyChange`].
    pub derived: &'a [(&'a str, Derived)],
}

impl PlanRules<'_> {
    fn derived(&self, attribute: &str) -> Derived {
        self.derived
            .iter()
            .find(|(a, _)| *a == attribute)
            .map_or(Derived::AnyChange, |(_, d)| *d)
    }
}

/// Plans a create (`prior` null) or update. Returns the planned state and the paths forcing replacement.
pub fn plan(block: &Block, prior: &Value, config: &Value, rules: &PlanRules<'_>) -> (Value, Vec<Path>) {
    let creating = prior.is_null();
    let mut planned = std::collections::BTreeMap::new();
    // The configurable attributes and blocks whose planned value differs from the prior one.
    let mut changed: BTreeSet<&str> = BTreeSet::new();
    for a in block
        .attributes
        .iter()
        .filter(|a| a.name == "id" || !a.computed || a.optional)
    {
        let cfg = config.get(a.name).clone();
        let v = if a.name == "id" {
            rules.id.clone()
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
            changed.insert(a.name);
        }
        planned.insert(a.name.to_string(), v);
    }
    for b in &block.blocks {
        let v = config.get(b.name).clone();
        if !creating && b.name != "timeouts" && prior.get(b.name) != &v {
            changed.insert(b.name);
        }
        planned.insert(b.name.to_string(), v);
    }
    let mut replace = Vec::new();
    if !creating {
        for name in block
            .attributes
            .iter()
            .filter(|a| a.force_new)
            .map(|a| a.name)
            .chain(block.blocks.iter().filter(|b| b.force_new).map(|b| b.name))
        {
            if prior.get(name) != planned.get(name).unwrap_or(&Value::Null) {
                replace.push(Path::attr(name));
            }
        }
    }
    // A replacement is a new object: nothing the old one reported carries over.
    let new_object = creating || !replace.is_empty();
    for a in block
        .attributes
        .iter()
        .filter(|a| a.computed && !a.optional && a.name != "id")
    {
        let prior_value = prior.get(a.name);
        let keep = !new_object
            && (changed.is_empty()
                || match rules.derived(a.name) {
                    Derived::AnyChange => false,
                    // A prior null (the object was never Ready, or the state predates the attribute) is
                    // no value to promise.
                    Derived::On(inputs) => {
                        !prior_value.is_null() && !inputs.iter().any(|i| changed.contains(i))
                    }
                });
        let v = if keep {
            prior_value.clone()
        } else {
            Value::unknown()
        };
        planned.insert(a.name.to_string(), v);
    }
    (Value::Map(planned), replace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::object;
    use crate::schema::{Attribute, Type};

    /// A kind with a replacing `name`, a `mode` that moves `prefix`, a `note` that moves nothing derived,
    /// a fixed `uid` and a live `status`.
    fn block() -> Block {
        let computed = |name| Attribute::computed(name, Type::String, "");
        Block {
            attributes: vec![
                computed("id"),
                Attribute::required("name", Type::String, "").force_new(),
                Attribute::optional("mode", Type::String, ""),
                Attribute::optional("note", Type::String, ""),
                computed("uid"),
                computed("prefix"),
                computed("status"),
            ],
            ..Default::default()
        }
    }

    const DERIVED: &[(&str, Derived)] = &[("uid", Derived::On(&[])), ("prefix", Derived::On(&["mode"]))];

    fn plan_of(prior: &Value, pairs: Vec<(&str, Value)>) -> (Value, Vec<Path>) {
        let config = block().normalise(object(pairs));
        let rules = PlanRules {
            defaults: &[],
            id: config.get("name").clone(),
            derived: DERIVED,
        };
        plan(&block(), prior, &config, &rules)
    }

    fn applied() -> Value {
        block().normalise(object([
            ("id", Value::str("a")),
            ("name", Value::str("a")),
            ("mode", Value::str("public")),
            ("note", Value::str("x")),
            ("uid", Value::str("u-1")),
            ("prefix", Value::str("20.0.0.0/31")),
            ("status", Value::str("Ready")),
        ]))
    }

    fn config(name: &str, mode: &str, note: &str) -> Vec<(&'static str, Value)> {
        vec![
            ("name", Value::str(name)),
            ("mode", Value::str(mode)),
            ("note", Value::str(note)),
        ]
    }

    #[test]
    fn an_update_keeps_what_it_cannot_move_and_defers_the_rest() {
        let prior = applied();
        let (same, replace) = plan_of(&prior, config("a", "public", "x"));
        assert_eq!(
            (same, replace),
            (prior.clone(), vec![]),
            "no change: the prior state"
        );

        let (p, replace) = plan_of(&prior, config("a", "public", "y"));
        assert!(replace.is_empty());
        assert_eq!(p.get("uid"), &Value::str("u-1"));
        assert_eq!(
            p.get("prefix"),
            &Value::str("20.0.0.0/31"),
            "`note` cannot move it"
        );
        assert!(p.get("status").is_unknown(), "live status may move on any change");

        let (p, _) = plan_of(&prior, config("a", "private", "x"));
        assert_eq!(p.get("uid"), &Value::str("u-1"));
        assert!(p.get("prefix").is_unknown(), "`mode` decides it");
    }

    #[test]
    fn a_replacement_or_a_create_knows_nothing_derived() {
        let (p, replace) = plan_of(&applied(), config("b", "public", "x"));
        assert_eq!(replace, vec![Path::attr("name")]);
        for a in ["uid", "prefix", "status"] {
            assert!(p.get(a).is_unknown(), "{a}: {p:?}");
        }
        let (p, _) = plan_of(&Value::Null, config("a", "public", "x"));
        assert!(p.get("uid").is_unknown() && p.get("prefix").is_unknown());
    }

    #[test]
    fn a_prior_null_is_no_promise() {
        let mut prior = applied();
        if let Value::Map(m) = &mut prior {
            m.insert("prefix".into(), Value::Null);
        }
        let (p, _) = plan_of(&prior, config("a", "public", "y"));
        assert!(p.get("prefix").is_unknown(), "{p:?}");
        let (p, _) = plan_of(&prior, config("a", "public", "x"));
        assert!(
            p.get("prefix").is_null(),
            "without a change the plan is the prior state"
        );
    }
}
