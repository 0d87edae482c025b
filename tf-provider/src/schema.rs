//! Schema model: what Terraform is told (`GetProviderSchema`) and how untyped wire values are made whole
//! (every attribute and block key present, numbers typed).

use std::collections::BTreeMap;

use crate::proto::tfplugin6 as pb;
use crate::value::{Number, Value};

/// A cty type.
#[derive(Clone, Debug, PartialEq)]
pub enum Type {
    /// `string`
    String,
    /// `number`
    Number,
    /// `bool`
    Bool,
    /// `["list", T]`
    List(Box<Type>),
    /// `["map", T]`
    Map(Box<Type>),
    /// `["object", {...}]`
    Object(Vec<(&'static str, Type)>),
}

impl Type {
    /// The JSON type constraint Terraform expects in `Schema.Attribute.type`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Type::String => json!("string"),
            Type::Number => json!("number"),
            Type::Bool => json!("bool"),
            Type::List(t) => json!(["list", t.to_json()]),
            Type::Map(t) => json!(["map", t.to_json()]),
            Type::Object(attrs) => {
                let m: serde_json::Map<String, serde_json::Value> =
                    attrs.iter().map(|(k, t)| (k.to_string(), t.to_json())).collect();
                json!(["object", m])
            }
        }
    }

    /// Makes a value conform: numbers typed, object keys complete. Unknown and null pass through.
    pub fn normalise(&self, v: Value) -> Value {
        match (self, v) {
            (_, v @ (Value::Null | Value::Unknown(_))) => v,
            (Type::Number, Value::String(s)) => Value::Number(Number::Text(s)),
            (Type::List(t), Value::List(items)) => {
                Value::List(items.into_iter().map(|i| t.normalise(i)).collect())
            }
            (Type::Map(t), Value::Map(m)) => {
                Value::Map(m.into_iter().map(|(k, v)| (k, t.normalise(v))).collect())
            }
            (Type::Object(attrs), Value::Map(mut m)) => Value::Map(
                attrs
                    .iter()
                    .map(|(k, t)| (k.to_string(), t.normalise(m.remove(*k).unwrap_or(Value::Null))))
                    .collect(),
            ),
            (_, v) => v,
        }
    }
}

/// One attribute of a block.
#[derive(Clone, Debug)]
pub struct Attribute {
    /// Attribute name.
    pub name: &'static str,
    /// Its type.
    pub ty: Type,
    /// Markdown description (also used for the docs).
    pub description: &'static str,
    /// Must be set in configuration.
    pub required: bool,
    /// May be set in configuration.
    pub optional: bool,
    /// The provider may set it.
    pub computed: bool,
    /// Hidden in plan output.
    pub sensitive: bool,
    /// Changing it replaces the object.
    pub force_new: bool,
    /// An Azure name or ID: a change of letter case alone is no change (plan keeps the prior spelling).
    pub case_insensitive: bool,
}

impl Attribute {
    /// A required attribute.
    pub fn required(name: &'static str, ty: Type, description: &'static str) -> Self {
        Attribute {
            name,
            ty,
            description,
            required: true,
            optional: false,
            computed: false,
            sensitive: false,
            force_new: false,
            case_insensitive: false,
        }
    }
    /// An optional attribute.
    pub fn optional(name: &'static str, ty: Type, description: &'static str) -> Self {
        Attribute {
            required: false,
            optional: true,
            ..Attribute::required(name, ty, description)
        }
    }
    /// A read-only attribute.
    pub fn computed(name: &'static str, ty: Type, description: &'static str) -> Self {
        Attribute {
            required: false,
            computed: true,
            ..Attribute::required(name, ty, description)
        }
    }
    /// Optional, with a provider default when unset.
    pub fn optional_computed(name: &'static str, ty: Type, description: &'static str) -> Self {
        Attribute {
            computed: true,
            ..Attribute::optional(name, ty, description)
        }
    }
    /// Marks the attribute sensitive.
    pub fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }
    /// Marks the attribute as forcing replacement when it changes.
    pub fn force_new(mut self) -> Self {
        self.force_new = true;
        self
    }
    /// Marks the attribute as an Azure name or ID, compared without regard to letter case.
    pub fn case_insensitive(mut self) -> Self {
        self.case_insensitive = true;
        self
    }
}

/// How a nested block repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nesting {
    /// At most one, as an object or null.
    Single,
    /// A list (with `max_items` 1 for "at most one", addressed as `[0]`).
    List,
}

/// A nested block.
#[derive(Clone, Debug)]
pub struct NestedBlock {
    /// Block type name.
    pub name: &'static str,
    /// Its contents.
    pub block: Block,
    /// Repetition.
    pub nesting: Nesting,
    /// Minimum count (lists).
    pub min_items: i64,
    /// Maximum count (lists; 0 = unbounded).
    pub max_items: i64,
    /// Changing it replaces the object.
    pub force_new: bool,
}

impl NestedBlock {
    /// The value type of the block as an attribute: a list of objects, or one object.
    pub fn value_type(&self) -> Type {
        match self.nesting {
            Nesting::List => Type::List(Box::new(self.block.object_type())),
            Nesting::Single => self.block.object_type(),
        }
    }
}

/// A block: attributes and nested blocks.
#[derive(Clone, Debug, Default)]
pub struct Block {
    /// Description.
    pub description: &'static str,
    /// Attributes.
    pub attributes: Vec<Attribute>,
    /// Nested blocks.
    pub blocks: Vec<NestedBlock>,
}

impl Block {
    /// Makes an object value complete: every attribute and block key present (null when unset), numbers
    /// typed, keys the schema does not know dropped.
    pub fn normalise(&self, v: Value) -> Value {
        let mut m = match v {
            Value::Map(m) => m,
            other => return other,
        };
        let mut out = BTreeMap::new();
        for a in &self.attributes {
            out.insert(
                a.name.to_string(),
                a.ty.normalise(m.remove(a.name).unwrap_or(Value::Null)),
            );
        }
        for b in &self.blocks {
            let v = m.remove(b.name).unwrap_or(Value::Null);
            let v = match (b.nesting, v) {
                (_, v @ Value::Unknown(_)) => v,
                (Nesting::List, Value::Null) => Value::List(Vec::new()),
                (Nesting::List, Value::List(items)) => {
                    Value::List(items.into_iter().map(|i| b.block.normalise(i)).collect())
                }
                (Nesting::Single, v) => b.block.normalise(v),
                (_, v) => v,
            };
            out.insert(b.name.to_string(), v);
        }
        Value::Map(out)
    }

    /// The type of one object of this block (attributes and nested blocks as object attributes).
    pub fn object_type(&self) -> Type {
        Type::Object(
            self.attributes
                .iter()
                .map(|a| (a.name, a.ty.clone()))
                .chain(self.blocks.iter().map(|b| (b.name, b.value_type())))
                .collect(),
        )
    }

    /// A data source schema from a resource schema: the `identity` attributes stay required, every other
    /// attribute is read-only, and each nested block but `timeouts` becomes a read-only attribute of the
    /// same shape, described by `block_descriptions` (or by the block's own description).
    pub fn to_data_source(
        mut self,
        description: &'static str,
        identity: &[&str],
        block_descriptions: &[(&str, &'static str)],
    ) -> Block {
        self.description = description;
        for a in &mut self.attributes {
            a.force_new = false;
            if !identity.contains(&a.name) {
                a.required = false;
                a.optional = false;
                a.computed = true;
            }
        }
        for b in std::mem::take(&mut self.blocks) {
            if b.name == "timeouts" {
                continue;
            }
            let description = block_descriptions
                .iter()
                .find(|(n, _)| *n == b.name)
                .map_or(b.block.description, |(_, d)| *d);
            self.attributes
                .push(Attribute::computed(b.name, b.value_type(), description));
        }
        self
    }

    /// Every attribute and nested block name, at any depth.
    pub fn names(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = self.attributes.iter().map(|a| a.name).collect();
        for b in &self.blocks {
            out.push(b.name);
            out.extend(b.block.names());
        }
        out
    }

    /// The protocol form.
    pub fn to_proto(&self) -> pb::schema::Block {
        pb::schema::Block {
            version: 0,
            attributes: self
                .attributes
                .iter()
                .map(|a| pb::schema::Attribute {
                    name: a.name.to_string(),
                    r#type: a.ty.to_json().to_string().into_bytes(),
                    description: a.description.to_string(),
                    required: a.required,
                    optional: a.optional,
                    computed: a.computed,
                    sensitive: a.sensitive,
                    description_kind: pb::StringKind::Markdown as i32,
                    deprecated: false,
                    write_only: false,
                })
                .collect(),
            block_types: self
                .blocks
                .iter()
                .map(|b| pb::schema::NestedBlock {
                    type_name: b.name.to_string(),
                    block: Some(b.block.to_proto()),
                    nesting: match b.nesting {
                        Nesting::Single => pb::schema::nested_block::NestingMode::Single,
                        Nesting::List => pb::schema::nested_block::NestingMode::List,
                    } as i32,
                    min_items: b.min_items,
                    max_items: b.max_items,
                })
                .collect(),
            description: self.description.to_string(),
            description_kind: pb::StringKind::Markdown as i32,
            deprecated: false,
        }
    }
}

/// The standard `timeouts` block (`create`, `update`, `delete` as Go-style durations such as "10m").
pub fn timeouts_block(defaults: &'static str) -> NestedBlock {
    NestedBlock {
        name: "timeouts",
        block: Block {
            description: defaults,
            attributes: ["create", "update", "delete"]
                .into_iter()
                .map(|op| Attribute::optional(op, Type::String, "A duration such as `30s`, `10m` or `1h`."))
                .collect(),
            blocks: vec![],
        },
        nesting: Nesting::Single,
        min_items: 0,
        max_items: 0,
        force_new: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> Block {
        Block {
            description: "",
            attributes: vec![
                Attribute::required("name", Type::String, ""),
                Attribute::optional("size", Type::Number, ""),
                Attribute::computed(
                    "profile",
                    Type::Object(vec![("ip", Type::String), ("port", Type::Number)]),
                    "",
                ),
            ],
            blocks: vec![
                NestedBlock {
                    name: "vmss",
                    block: Block {
                        description: "",
                        attributes: vec![Attribute::required("rg", Type::String, "")],
                        blocks: vec![],
                    },
                    nesting: Nesting::List,
                    min_items: 0,
                    max_items: 1,
                    force_new: true,
                },
                timeouts_block(""),
            ],
        }
    }

    #[test]
    fn normalise_fills_every_key_and_drops_unknown_keys() {
        let v = Value::Map(BTreeMap::from([
            ("name".to_string(), Value::str("a")),
            ("size".to_string(), Value::str("30")),
            ("gone".to_string(), Value::Bool(true)),
            (
                "profile".to_string(),
                Value::Map(BTreeMap::from([("ip".to_string(), Value::str("10.0.0.4"))])),
            ),
        ]));
        let n = block().normalise(v);
        let Value::Map(m) = &n else {
            panic!("object expected")
        };
        let keys: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(keys, ["name", "profile", "size", "timeouts", "vmss"]);
        assert_eq!(n.get("size").as_i64(), Some(30));
        assert_eq!(n.get("vmss"), &Value::List(vec![]));
        assert_eq!(n.get("timeouts"), &Value::Null);
        assert_eq!(n.get("profile").get("port"), &Value::Null);
        assert!(n.get("profile").as_str().is_none());
    }

    #[test]
    fn data_source_keeps_identity_and_reads_the_rest() {
        let ds = block().to_data_source("read", &["name"], &[("vmss", "the VMSS")]);
        let attr = |n: &str| ds.attributes.iter().find(|a| a.name == n).expect(n);
        assert!(attr("name").required && !attr("name").computed);
        assert!(attr("size").computed && !attr("size").optional);
        let vmss = attr("vmss");
        assert!(vmss.computed && !vmss.force_new);
        assert_eq!(vmss.description, "the VMSS");
        assert_eq!(
            vmss.ty,
            Type::List(Box::new(Type::Object(vec![("rg", Type::String)])))
        );
        assert!(
            ds.blocks.is_empty(),
            "timeouts and vmss are no blocks of a data source"
        );
        assert!(ds.attributes.iter().all(|a| a.name != "timeouts"));
    }

    #[test]
    fn schema_types_are_compact_json() {
        assert_eq!(
            Type::List(Box::new(Type::String)).to_json().to_string(),
            r#"["list","string"]"#
        );
        let p = block().to_proto();
        let profile = p
            .attributes
            .iter()
            .find(|a| a.name == "profile")
            .expect("profile");
        assert_eq!(
            String::from_utf8(profile.r#type.clone()).expect("utf8"),
            r#"["object",{"ip":"string","port":"number"}]"#
        );
        assert_eq!(p.block_types[0].max_items, 1);
    }
}
