//! The Terraform registry docs (`docs/tf-provider`) are written by hand; this checks their schema sections
//! against the schema the provider serves: every attribute and block listed in the right section
//! (Required, Optional, Read-Only), sensitive ones marked, and "forces replacement" exactly where a change
//! replaces the object.

use std::collections::BTreeMap;
use std::path::Path;

use tf_provider::provider::provider_schema;
use tf_provider::resources::Kind;
use tf_provider::schema::Block;

/// One documented entry: section and its line.
type Entries = BTreeMap<String, (String, String)>;

fn doc(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/tf-provider")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The "- `name` (...)" entries under `### Required|Optional|Read-Only` (top level) or `Required:|Optional:`
/// (nested schema `nested`), keyed by name.
fn entries(text: &str, nested: Option<&str>) -> Entries {
    let mut out = Entries::new();
    let mut in_scope = nested.is_none();
    let mut section: Option<String> = None;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("### ") {
            section = None;
            match nested {
                None => {
                    in_scope = !h.starts_with("Nested Schema");
                    if in_scope && ["Required", "Optional", "Read-Only"].contains(&h) {
                        section = Some(h.to_string());
                    }
                }
                Some(n) => in_scope = h == format!("Nested Schema for `{n}`"),
            }
            continue;
        }
        if line.starts_with("## ") {
            section = None;
            in_scope = nested.is_none();
            continue;
        }
        if nested.is_some()
            && in_scope
            && let Some(s) = line
                .strip_suffix(':')
                .filter(|s| ["Required", "Optional", "Read-Only"].contains(s))
        {
            section = Some(s.to_string());
            continue;
        }
        let (Some(sec), true) = (&section, in_scope) else {
            continue;
        };
        if let Some(rest) = line.strip_prefix("- `")
            && let Some((name, _)) = rest.split_once('`')
        {
            out.insert(name.to_string(), (sec.clone(), line.to_string()));
        }
    }
    out
}

/// What the docs should say for each attribute and block of `block`.
fn expected(block: &Block) -> BTreeMap<String, (&'static str, bool, bool)> {
    let mut out = BTreeMap::new();
    for a in &block.attributes {
        let section = if a.required {
            "Required"
        } else if a.optional {
            "Optional"
        } else {
            "Read-Only"
        };
        out.insert(a.name.to_string(), (section, a.sensitive, a.force_new));
    }
    for b in &block.blocks {
        let section = if b.min_items > 0 { "Required" } else { "Optional" };
        out.insert(b.name.to_string(), (section, false, b.force_new));
    }
    out
}

fn check(page: &str, documented: &Entries, block: &Block) {
    let want = expected(block);
    assert_eq!(
        documented.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{page}: documented names differ from the schema"
    );
    for (name, (section, sensitive, force_new)) in want {
        let (doc_section, line) = &documented[&name];
        assert_eq!(
            doc_section, section,
            "{page}: `{name}` is listed under the wrong section"
        );
        assert_eq!(
            line.contains("Sensitive"),
            sensitive,
            "{page}: `{name}` sensitivity: {line}"
        );
        assert_eq!(
            line.contains("forces replacement"),
            force_new,
            "{page}: `{name}` replacement: {line}"
        );
    }
}

#[test]
fn provider_page_matches_the_provider_schema() {
    check("index.md", &entries(&doc("index.md"), None), &provider_schema());
}

#[test]
fn resource_pages_match_the_resource_schemas() {
    for kind in Kind::ALL {
        let page = format!(
            "resources/{}.md",
            kind.type_name().trim_start_matches("egressgateway_")
        );
        let text = doc(&page);
        let schema = kind.resource_schema();
        check(&page, &entries(&text, None), &schema);
        for b in &schema.blocks {
            let nested = entries(&text, Some(b.name));
            // A block documented inline (no nested section) must still name each of its attributes.
            if nested.is_empty() {
                let (_, line) = &entries(&text, None)[b.name];
                for a in &b.block.attributes {
                    assert!(
                        line.contains(&format!("`{}`", a.name)),
                        "{page}: `{}.{}`: {line}",
                        b.name,
                        a.name
                    );
                }
            } else {
                check(&format!("{page} ({})", b.name), &nested, &b.block);
            }
        }
    }
}

#[test]
fn data_source_pages_match_the_data_source_schemas() {
    for kind in Kind::ALL {
        let page = format!(
            "data-sources/{}.md",
            kind.type_name().trim_start_matches("egressgateway_")
        );
        let text = doc(&page);
        let schema = kind.data_source_schema();
        let required: Vec<String> = entries(&text, None)
            .into_iter()
            .filter(|(_, (section, _))| section == "Required")
            .map(|(name, _)| name)
            .collect();
        let want: Vec<String> = schema
            .attributes
            .iter()
            .filter(|a| a.required)
            .map(|a| a.name.to_string())
            .collect();
        assert_eq!(
            required.iter().collect::<std::collections::BTreeSet<_>>(),
            want.iter().collect(),
            "{page}"
        );
        let read_only = text
            .split("### Read-Only")
            .nth(1)
            .unwrap_or_else(|| panic!("{page}: no Read-Only"));
        for a in schema.attributes.iter().filter(|a| !a.required) {
            assert!(
                read_only.contains(&format!("`{}`", a.name)),
                "{page}: `{}` is not documented",
                a.name
            );
        }
    }
}
