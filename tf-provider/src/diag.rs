//! Diagnostics and attribute paths, including the translation of the rules' JSON paths
//! (`spec.gatewayVmssProfile.publicIpPrefixSize`) into Terraform paths
//! (`gateway_vmss_profile[0].public_ip_prefix_size`).

use std::fmt;

use crate::proto::tfplugin6 as pb;
use pb::attribute_path::step::Selector;

/// One step of a Terraform attribute path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `.name`
    Attr(String),
    /// `[3]`
    Index(i64),
}

/// A Terraform attribute path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Path(pub Vec<Step>);

impl Path {
    /// A path of one attribute.
    pub fn attr(name: &str) -> Self {
        Path(vec![Step::Attr(name.to_string())])
    }

    /// The protocol form.
    pub fn to_proto(&self) -> pb::AttributePath {
        pb::AttributePath {
            steps: self
                .0
                .iter()
                .map(|s| pb::attribute_path::Step {
                    selector: Some(match s {
                        Step::Attr(a) => Selector::AttributeName(a.clone()),
                        Step::Index(i) => Selector::ElementKeyInt(*i),
                    }),
                })
                .collect(),
        }
    }

    /// True when `self` equals `other` or lies inside it.
    pub fn starts_with(&self, other: &Path) -> bool {
        self.0.len() >= other.0.len() && self.0[..other.0.len()] == other.0[..]
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Step::Attr(a) if i == 0 => write!(f, "{a}")?,
                Step::Attr(a) => write!(f, ".{a}")?,
                Step::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// `publicIpPrefixSize` → `public_ip_prefix_size`.
pub fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `public_ip_prefix_size` → `publicIpPrefixSize`: the CRD's spelling of a Terraform attribute name.
pub fn camel_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Translates a rule's JSON path into the Terraform path of the same field. `block_lists` names the JSON
/// fields that are Terraform list blocks of at most one element (addressed with `[0]`). The `spec`
/// prefix is dropped (spec fields are top-level attributes); a path of `spec` alone is the whole resource.
pub fn terraform_path(json_path: &str, block_lists: &[impl AsRef<str>]) -> Path {
    let rest = json_path.strip_prefix("spec").unwrap_or(json_path);
    let rest = rest.strip_prefix('.').unwrap_or(rest);
    let mut steps = Vec::new();
    for segment in rest.split('.').filter(|s| !s.is_empty()) {
        let (name, mut indexes) = match segment.split_once('[') {
            Some((name, idx)) => (name, Some(idx)),
            None => (segment, None),
        };
        steps.push(Step::Attr(snake_case(name)));
        if block_lists.iter().any(|b| b.as_ref() == name) {
            steps.push(Step::Index(0));
        }
        while let Some(idx) = indexes {
            let (n, after) = idx.split_once(']').unwrap_or((idx, ""));
            if let Ok(n) = n.parse() {
                steps.push(Step::Index(n));
            }
            indexes = after.strip_prefix('[');
        }
    }
    Path(steps)
}

/// Rewrites the CRD field names a rule message mentions into the Terraform attribute `names` they stand
/// for, so that the message matches what the user wrote.
pub fn terraform_wording(message: &str, names: &[&str]) -> String {
    let mut out = message.to_string();
    for n in names {
        out = out.replace(&camel_case(n), n);
    }
    out.replace(": false", " = false").replace(": true", " = true")
}

/// An error diagnostic.
pub fn error(summary: impl Into<String>, detail: impl Into<String>, path: Option<&Path>) -> pb::Diagnostic {
    diagnostic(pb::diagnostic::Severity::Error, summary, detail, path)
}

/// A warning diagnostic.
pub fn warning(summary: impl Into<String>, detail: impl Into<String>, path: Option<&Path>) -> pb::Diagnostic {
    diagnostic(pb::diagnostic::Severity::Warning, summary, detail, path)
}

fn diagnostic(
    severity: pb::diagnostic::Severity,
    summary: impl Into<String>,
    detail: impl Into<String>,
    path: Option<&Path>,
) -> pb::Diagnostic {
    pb::Diagnostic {
        severity: severity as i32,
        summary: summary.into(),
        detail: detail.into(),
        attribute: path.filter(|p| !p.0.is_empty()).map(Path::to_proto),
    }
}

/// True when any diagnostic is an error.
pub fn has_errors(diags: &[pb::Diagnostic]) -> bool {
    diags
        .iter()
        .any(|d| d.severity == pb::diagnostic::Severity::Error as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCKS: &[&str] = &["gatewayVmssProfile"];

    #[test]
    fn rule_paths_become_terraform_paths() {
        let cases = [
            (
                "spec.gatewayVmssProfile.publicIpPrefixSize",
                "gateway_vmss_profile[0].public_ip_prefix_size",
            ),
            ("spec.gatewayVmssProfile", "gateway_vmss_profile[0]"),
            ("spec.excludeCidrs[2]", "exclude_cidrs[2]"),
            ("spec.gatewayNodepoolName", "gateway_nodepool_name"),
            ("spec.publicIpPrefixSize", "public_ip_prefix_size"),
            ("spec", ""),
        ];
        for (json, tf) in cases {
            assert_eq!(terraform_path(json, BLOCKS).to_string(), tf, "{json}");
        }
    }

    #[test]
    fn camel_case_inverts_snake_case() {
        for tf in [
            "public_ip_prefix_size",
            "gateway_vmss_profile",
            "exclude_cidrs",
            "name",
        ] {
            assert_eq!(snake_case(&camel_case(tf)), tf);
        }
        assert_eq!(camel_case("provision_public_ips"), "provisionPublicIps");
    }

    #[test]
    fn proto_path_steps() {
        let p = terraform_path("spec.excludeCidrs[1]", BLOCKS).to_proto();
        assert_eq!(
            p.steps.iter().map(|s| s.selector.clone()).collect::<Vec<_>>(),
            vec![
                Some(Selector::AttributeName("exclude_cidrs".into())),
                Some(Selector::ElementKeyInt(1))
            ]
        );
    }

    #[test]
    fn messages_use_terraform_names() {
        assert_eq!(
            terraform_wording(
                "provisionPublicIps: false requires gatewayNodepoolName",
                &["provision_public_ips", "gateway_nodepool_name"]
            ),
            "provision_public_ips = false requires gateway_nodepool_name"
        );
    }
}
