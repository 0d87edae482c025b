//! The scenarios the lab knows (upstream e2e numbers and ours), their titles, and `--scenarios` parsing.

/// A scenario the lab can run after its default steps; the number is upstream's (§8.1) or ours (7–10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// (2) Bring-your-own public IP prefix; deleting the configuration frees it.
    ByoPrefix = 2,
    /// (3) Ingress to an annotated pod is unaffected.
    Ingress = 3,
    /// (5) Two configurations on one pool, each pod inside its own prefix.
    TwoConfigs = 5,
    /// (6) Private mode with azureNetworking on a VM-based pool.
    Private = 6,
    /// (8) `terraform apply` of a pool and a configuration with our provider; the prefix in its outputs.
    Terraform = 8,
    /// (9) A gateway node dies: traffic moves to the other gateway (measured).
    Failover = 9,
    /// (10) Deleting everything leaves Azure and the namespaces clean.
    Cleanup = 10,
}

impl Scenario {
    /// Every scenario, in the order they run (cleanup last: it deletes everything).
    pub const ALL: [Scenario; 7] = [
        Scenario::ByoPrefix,
        Scenario::Ingress,
        Scenario::TwoConfigs,
        Scenario::Private,
        Scenario::Terraform,
        Scenario::Failover,
        Scenario::Cleanup,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Scenario::ByoPrefix => {
                "scenario 2: bring-your-own public IP prefix; deleting the configuration frees it"
            }
            Scenario::Ingress => "scenario 3: ingress to an annotated pod is unaffected",
            Scenario::TwoConfigs => {
                "scenario 5: two configurations on one pool, each pod inside its own prefix"
            }
            Scenario::Private => "scenario 6: private egress (azureNetworking) on a VM-based pool",
            Scenario::Terraform => {
                "scenario 8: terraform apply of a pool and a configuration; the egress prefix in its outputs"
            }
            Scenario::Failover => "scenario 9: a gateway dies; traffic moves to the other gateway (measured)",
            Scenario::Cleanup => "scenario 10: deleting everything leaves Azure and the namespaces clean",
        }
    }
}

/// Parses `--scenarios`: `all`, `none`, or a comma-separated list of numbers (any order; run in the order of
/// [`Scenario::ALL`]).
pub fn parse(text: &str) -> Result<Vec<Scenario>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("all") {
        return Ok(Scenario::ALL.to_vec());
    }
    if text.is_empty() || text.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let n: u32 = part
            .parse()
            .map_err(|_| format!("{part:?} is not a scenario number (use all, or e.g. 2,3,9)"))?;
        let s = match n {
            2 => Scenario::ByoPrefix,
            3 => Scenario::Ingress,
            5 => Scenario::TwoConfigs,
            6 => Scenario::Private,
            8 => Scenario::Terraform,
            9 => Scenario::Failover,
            10 => Scenario::Cleanup,
            1 | 4 | 7 => {
                return Err(format!(
                    "scenario {n} is part of every lab run (steps 3 and 8); choose from 2,3,5,6,8,9,10"
                ));
            }
            _ => return Err(format!("no scenario {n}; choose from 2,3,5,6,8,9,10 or all")),
        };
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_all_none_and_lists_in_run_order() {
        assert_eq!(parse("all"), Ok(Scenario::ALL.to_vec()));
        assert_eq!(parse("none"), Ok(vec![]));
        assert_eq!(parse(""), Ok(vec![]));
        assert_eq!(
            parse("10, 3,2,3"),
            Ok(vec![Scenario::ByoPrefix, Scenario::Ingress, Scenario::Cleanup])
        );
        // Cleanup deletes everything, so it runs last even when listed first.
        assert_eq!(parse("10,9"), Ok(vec![Scenario::Failover, Scenario::Cleanup]));
        // Terraform runs before failover and cleanup.
        assert_eq!(
            parse("10,8,2"),
            Ok(vec![Scenario::ByoPrefix, Scenario::Terraform, Scenario::Cleanup])
        );
    }

    #[test]
    fn parse_names_why_a_number_is_refused() {
        assert!(parse("1").expect_err("refused").contains("part of every lab run"));
        assert!(parse("7").expect_err("refused").contains("part of every lab run"));
        assert!(parse("12").expect_err("refused").contains("no scenario 12"));
        assert!(
            parse("2;3")
                .expect_err("refused")
                .contains("not a scenario number")
        );
    }
}
