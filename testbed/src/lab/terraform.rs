//! Scenario 8: the Terraform provider on the lab, as a user would run it. `terraform apply` of
//! `examples/terraform/lab/main.tf` (a GatewayPool for the seed's second gateway pool `tfpool` and a
//! StaticGatewayConfiguration on it, the egress prefix as an output) with the provider installed as users
//! install it: the lab's provider binary packaged as a signed release, verified and mirrored, and installed by
//! `terraform init` from that mirror with checksum verification ([`crate::provider_release`]); pointed at the
//! lab's kubeconfig; then the output is compared with
//! the API server and azure-sim, the plan must be empty, a pod annotated with the new configuration must egress
//! from inside the output prefix through tfpool's gateways, and `terraform destroy` must leave nothing of
//! the pool and the configuration in Kubernetes, Azure or the gateways' data plane.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use api::StaticGatewayConfiguration;
use kube::Api;

use crate::lab::fabric;
use crate::lab::harness::checks;
use crate::lab::harness::{DEMO_NS, Lab, Options, TF_POOL};
use crate::lab::report::{info, ok};
use crate::provider_release::{ProviderMirror, provider_source};

/// The configuration the scenario applies, as shipped for users.
const MAIN_TF: &str = include_str!("../../../examples/terraform/lab/main.tf");
/// Where it lives in the repository (for the messages).
const MAIN_TF_PATH: &str = "examples/terraform/lab/main.tf";
/// The provider's binary.
const PROVIDER_BINARY: &str = "terraform-provider-egressgateway";
/// The workspace's CLI configuration file (TF_CLI_CONFIG_FILE): the provider from the mirror only.
const CLI_CONFIG: &str = "mirror.tfrc";
/// The field manager the provider applies with (tf-provider's `cluster::FIELD_MANAGER`).
const PROVIDER_FIELD_MANAGER: &str = "terraform-provider-egressgateway";
/// The configuration `main.tf` declares (in the demo namespace) and the pod that uses it.
const TF_SGC: &str = "tf-egress";
const TF_POD: &str = "tf-client";
/// The longest any one terraform command may take: apply and destroy wait (up to main.tf's 2 minute
/// timeouts) for the operator.
const COMMAND_LIMIT: Duration = Duration::from_secs(300);

/// One terraform command's outcome.
struct Run {
    /// The command as typed (for messages).
    command: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Fails with the command, its exit status and terraform's diagnostics (stderr) unless it exited 0.
    fn success(self) -> anyhow::Result<Run> {
        if self.code == Some(0) {
            return Ok(self);
        }
        bail!("{} failed", self.describe())
    }

    fn describe(&self) -> String {
        let status = self
            .code
            .map(|c| format!("exit status {c}"))
            .unwrap_or_else(|| "killed by a signal".into());
        let diag = self.stderr.trim();
        let diag = if diag.is_empty() { self.stdout.trim() } else { diag };
        format!("`{}` ({status}); terraform said:\n{}", self.command, indent(diag))
    }

    /// Terraform's one-line summary (`Apply complete! ...`, `No changes. ...`, `Destroy complete! ...`).
    fn summary(&self) -> String {
        self.stdout
            .lines()
            .map(str::trim)
            .rfind(|l| {
                l.starts_with("Apply complete!")
                    || l.starts_with("Destroy complete!")
                    || l.starts_with("No changes.")
                    || l.starts_with("Plan:")
            })
            .unwrap_or_default()
            .to_string()
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A private Terraform working directory under the lab's work dir with its own CLI configuration.
struct Workspace {
    dir: PathBuf,
    /// `TF_VAR_*` for `main.tf`'s variables.
    vars: Vec<(String, String)>,
}

impl Workspace {
    /// Writes `main.tf`, then the mirror's CLI configuration and lock file, and runs `terraform init`.
    fn create(dir: &Path, mirror: &ProviderMirror, kubeconfig: &Path) -> anyhow::Result<Workspace> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("main.tf"), MAIN_TF).context("writing main.tf")?;
        mirror.init_workspace(dir, CLI_CONFIG)?;
        Ok(Workspace {
            dir: dir.to_path_buf(),
            vars: vec![("TF_VAR_kubeconfig".into(), kubeconfig.display().to_string())],
        })
    }

    /// Runs `terraform <args>` in the workspace: only the workspace's CLI configuration and variables (no
    /// `TF_*` from the lab's environment, so no `TF_LOG` either), output captured and also kept in
    /// `<first arg>.log` next to the state.
    async fn run(&self, args: &[&str]) -> anyhow::Result<Run> {
        let command = format!("terraform {}", args.join(" "));
        let mut cmd = tokio::process::Command::new("terraform");
        cmd.args(args).current_dir(&self.dir);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TF_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("TF_CLI_CONFIG_FILE", self.dir.join(CLI_CONFIG))
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .env_remove("KUBECONFIG")
            .envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(COMMAND_LIMIT, cmd.output()).await {
            Err(_) => bail!(
                "`{command}` did not finish within {}s (killed)",
                COMMAND_LIMIT.as_secs()
            ),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "`{command}`: terraform is not on PATH; scenario 8 runs the Terraform CLI (1.11.4, what the provider is tested with; scripts/install-deps.sh installs it)"
            ),
            Ok(r) => r.with_context(|| format!("running `{command}`"))?,
        };
        let run = Run {
            command,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        let log = self
            .dir
            .join(format!("{}.log", args.first().unwrap_or(&"terraform")));
        let text = format!("$ {}\n{}\n--- stderr\n{}\n", run.command, run.stdout, run.stderr);
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", log.display()))?;
        Ok(run)
    }

    /// `terraform <verb> -auto-approve` (apply or destroy), which must succeed; says what it did.
    async fn auto_approve(&self, verb: &str) -> anyhow::Result<()> {
        let run = self
            .run(&[verb, "-auto-approve", "-no-color", "-input=false"])
            .await?
            .success()?;
        ok(&format!("$ terraform {verb} -auto-approve   # {}", run.summary()));
        Ok(())
    }
}

/// The output `name` of `terraform output -json`.
fn output_value(json_text: &str, name: &str) -> anyhow::Result<String> {
    let doc: serde_json::Value =
        serde_json::from_str(json_text).context("`terraform output -json` is not JSON")?;
    doc.get(name)
        .and_then(|o| o.get("value"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .with_context(|| format!("`terraform output -json` has no string output {name:?}: {doc}"))
}

/// Scenario 8 (steps 9, 10, ...: see [`crate::lab::scenarios`]).
pub(in crate::lab) async fn scenario(lab: &mut Lab, opts: &Options) -> anyhow::Result<()> {
    // Preflight: the CLI and the provider binary.
    let provider = opts.bin_dir.join(PROVIDER_BINARY);
    if !provider.exists() {
        bail!(
            "no {} (scripts/lab.sh builds it: cargo build -p tf-provider)",
            provider.display()
        );
    }
    let gateways = lab
        .other_pool_vms
        .get(TF_POOL)
        .cloned()
        .with_context(|| format!("the lab runs no gateway VMs of pool {TF_POOL}"))?;
    let tf_dir = opts.work_dir.join("terraform");
    let mirror_dir = opts.work_dir.join("provider-release");
    let mirror = tokio::task::spawn_blocking(move || ProviderMirror::build(&provider, &mirror_dir))
        .await
        .context("packaging the provider")??;
    ok(&format!(
        "provider release in {}: zip, SHA256SUMS signed by a key generated for this run, protocol-6 manifest; signature and checksums verified, mirrored in {}",
        mirror.release.display(),
        mirror.mirror.display()
    ));
    let ws = {
        let (mirror, kubeconfig) = (mirror.clone(), lab.kubeconfig.clone());
        tokio::task::spawn_blocking(move || Workspace::create(&tf_dir, &mirror, &kubeconfig))
            .await
            .context("terraform init")??
    };
    let version = ws.run(&["version", "-json"]).await?.success()?;
    let version: serde_json::Value =
        serde_json::from_str(&version.stdout).context("`terraform version -json` is not JSON")?;
    info(&format!(
        "Terraform {} ({}); working dir {} with {MAIN_TF_PATH}; $ terraform init   # installed {} from the mirror, checked against the lock file's verified checksums; TF_VAR_kubeconfig = the lab's kubeconfig",
        version["terraform_version"].as_str().unwrap_or("?"),
        version["platform"].as_str().unwrap_or("?"),
        ws.dir.display(),
        provider_source(),
    ));

    // Apply.
    ws.auto_approve("apply").await?;
    let out = ws.run(&["output", "-json", "-no-color"]).await?.success()?;
    let text = output_value(&out.stdout, "egress_ip_prefix")?;
    let prefix: ipnet::Ipv4Net = text
        .parse()
        .with_context(|| format!("output egress_ip_prefix {text:?} is not an IPv4 CIDR"))?;
    ok(&format!(
        "$ terraform output -json   # egress_ip_prefix = {prefix}"
    ));

    // What Terraform made, as Kubernetes and Azure hold it.
    let client = lab.client()?;
    let sgc = Api::<StaticGatewayConfiguration>::namespaced(client.clone(), DEMO_NS)
        .get_opt(TF_SGC)
        .await?
        .with_context(|| format!("terraform apply succeeded but the API server has no {DEMO_NS}/{TF_SGC}"))?;
    let pool = Api::<api::GatewayPool>::all(client.clone())
        .get_opt(TF_POOL)
        .await?
        .with_context(|| {
            format!("terraform apply succeeded but the API server has no GatewayPool {TF_POOL}")
        })?;
    let in_kube = checks::prefix_of(&sgc)?;
    if in_kube != prefix {
        bail!(
            "terraform's output {prefix} differs from {DEMO_NS}/{TF_SGC}'s status.egressIpPrefix {in_kube}"
        );
    }
    for (what, fields) in [
        (format!("{DEMO_NS}/{TF_SGC}"), &sgc.metadata.managed_fields),
        (format!("GatewayPool {TF_POOL}"), &pool.metadata.managed_fields),
    ] {
        let by_provider = fields.iter().flatten().any(|f| {
            f.manager.as_deref() == Some(PROVIDER_FIELD_MANAGER) && f.operation.as_deref() == Some("Apply")
        });
        if !by_provider {
            bail!(
                "{what} was not applied by the provider (no Apply entry of field manager {PROVIDER_FIELD_MANAGER})"
            );
        }
    }
    let uid = checks::uid_of(&sgc);
    // The pool was Ready before the configuration was created; while the operator adds the configuration's
    // IP configurations to the instances they are updating, so wait for them as step 3 does for gwpool.
    let want = gateways.len();
    let pools: Api<api::GatewayPool> = Api::all(client.clone());
    lab.wait(
        &format!("GatewayPool {TF_POOL} reports {want} ready instances"),
        opts,
        || {
            let pools = pools.clone();
            async move {
                let p = pools.get(TF_POOL).await?;
                Ok(p.status
                    .is_some_and(|s| usize::try_from(s.ready_instances).ok() == Some(want)))
            }
        },
    )
    .await?;
    ok(&format!(
        "the API server: {DEMO_NS}/{TF_SGC} status.egressIpPrefix = {in_kube} (= the output), GatewayPool {TF_POOL} with {want} ready instances; both applied by field manager {PROVIDER_FIELD_MANAGER}"
    ));
    let az = checks::azure(lab)?;
    let prefixes: Vec<(String, String)> = az.with_state(|s| {
        s.world
            .resource_ids()
            .iter()
            .filter(|id| id.to_ascii_lowercase().contains("/publicipprefixes/"))
            .filter_map(|id| {
                let v = s.world.get(id)?;
                let cidr = v.pointer("/properties/ipPrefix")?.as_str()?.to_string();
                Some((id.clone(), cidr))
            })
            .collect()
    });
    let Some((prefix_id, _)) = prefixes.iter().find(|(_, c)| c.parse() == Ok(prefix)) else {
        bail!("azure-sim has no public IP prefix {prefix}; it has {prefixes:?}");
    };
    ok(&format!(
        "azure-sim: public IP prefix {} is {prefix}",
        prefix_id.rsplit('/').next().unwrap_or(prefix_id)
    ));
    if let Some(demo) = lab.prefix
        && (demo.contains(&prefix.network()) || prefix.contains(&demo.network()))
    {
        bail!("the Terraform configuration's prefix {prefix} overlaps the demo configuration's {demo}");
    }

    // The plan after apply is empty.
    let plan = ws
        .run(&["plan", "-detailed-exitcode", "-no-color", "-input=false"])
        .await?;
    match plan.code {
        Some(0) => ok(&format!(
            "$ terraform plan -detailed-exitcode   # exit 0: {}",
            plan.summary()
        )),
        Some(2) => bail!(
            "`terraform plan -detailed-exitcode` after apply proposes changes (exit 2):\n{}",
            indent(plan.stdout.trim())
        ),
        _ => bail!("{} failed", plan.describe()),
    }

    // The data plane: tfpool's gateways serve the configuration; an annotated pod egresses from the prefix.
    let frontend = sgc
        .status
        .as_ref()
        .and_then(|s| s.gateway_server_profile.as_ref())
        .map(|p| (p.ip.clone(), p.port))
        .context("the configuration has no gateway server profile")?;
    let primaries: Vec<std::net::Ipv4Addr> = gateways.iter().map(|g| g.1).collect();
    let mut status = lab.fabric.as_ref().context("fabric not running")?.status.clone();
    let names: Vec<String> = gateways.iter().map(|g| g.0.clone()).collect();
    let seen_rule = Arc::new(Mutex::new(String::new()));
    {
        let (az, seen_rule) = (az.clone(), seen_rule.clone());
        lab.wait(
            &format!(
                "the fabric's probes put {TF_POOL}'s gateways behind the rule of {}:{}",
                frontend.0, frontend.1
            ),
            opts,
            move || {
                let s = status.borrow_and_update().clone();
                let view = az.with_state(|w| fabric::read_view(&w.world, &names));
                let rule = view
                    .rules
                    .iter()
                    .find(|r| r.frontend.to_string() == frontend.0 && i32::from(r.port) == frontend.1)
                    .map(|r| r.name.clone());
                let serving = rule
                    .as_ref()
                    .and_then(|r| s.desired.serving.get(r))
                    .is_some_and(|b| primaries.iter().all(|p| b.contains(p)));
                if let (Some(r), Ok(mut g)) = (rule, seen_rule.lock()) {
                    *g = r;
                }
                async move { Ok(serving) }
            },
        )
        .await?;
    }
    ok(&format!(
        "the fabric load-balances {} to {TF_POOL}'s gateways {}",
        seen_rule.lock().map(|g| g.clone()).unwrap_or_default(),
        gateways
            .iter()
            .map(|g| format!("{} ({})", g.0, g.1))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let sb = lab.add_pod(opts, TF_POD, 0, Some(TF_SGC)).await?;
    let demo: Vec<ipnet::Ipv4Net> = lab.prefix.into_iter().collect();
    checks::check_egress(opts, &sb, prefix, &demo).await?;
    checks::remove_pod(lab, opts, TF_POD).await?;

    // Destroy: the provider waits until both objects are gone.
    ws.auto_approve("destroy").await?;
    let sgc_left = Api::<StaticGatewayConfiguration>::namespaced(client.clone(), DEMO_NS)
        .get_opt(TF_SGC)
        .await?;
    let pool_left = Api::<api::GatewayPool>::all(client).get_opt(TF_POOL).await?;
    if sgc_left.is_some() || pool_left.is_some() {
        bail!(
            "terraform destroy returned but the API server still has{}{}",
            if sgc_left.is_some() {
                format!(" {DEMO_NS}/{TF_SGC}")
            } else {
                String::new()
            },
            if pool_left.is_some() {
                format!(" GatewayPool {TF_POOL}")
            } else {
                String::new()
            }
        );
    }
    ok(&format!(
        "the API server: {DEMO_NS}/{TF_SGC} and GatewayPool {TF_POOL} are gone"
    ));
    let uid_lc = uid.to_ascii_lowercase();
    let live = lab.azure.as_ref().context("azure-sim")?.handle();
    let cidr = prefix.to_string();
    lab.wait_until_none(
        &format!("nothing in azure-sim mentions {TF_SGC}'s UID and {prefix} is released"),
        opts,
        "azure-sim",
        "; ",
        || {
            let mut l = Vec::new();
            if !uid_lc.is_empty() && checks::azure_text(&live).contains(&uid_lc) {
                l.push(format!("a resource mentions UID {uid_lc}"));
            }
            let blocks = live.with_state(|s| s.inventory())["publicBlocks"].to_string();
            if blocks.contains(&cidr) {
                l.push(format!("{cidr} is still allocated: {blocks}"));
            }
            l
        },
    )
    .await?;
    lab.wait_until_none(
        &format!("{TF_POOL}'s gateways drop the frontend address, wg link and wireguard-go"),
        opts,
        "the data plane",
        "; ",
        || checks::dataplane_leftovers(&gateways, &[]),
    )
    .await?;
    ok(&format!(
        "after terraform destroy nothing of {DEMO_NS}/{TF_SGC} is left: no Azure resource mentions its UID {uid}, {prefix} is released, {TF_POOL}'s gateways hold no frontend address, wg link or wireguard-go"
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_configuration_is_what_the_scenario_checks() {
        // The names the scenario looks up in the API server and the output it reads are the ones main.tf declares.
        // The released provider (release.env), in the short form of `required_providers`.
        let source = provider_source()
            .strip_prefix("registry.terraform.io/")
            .expect("a registry.terraform.io address");
        assert!(MAIN_TF.contains(&format!("source = \"{source}\"")));
        assert!(MAIN_TF.contains(&format!("name                  = \"{TF_SGC}\"")));
        assert!(MAIN_TF.contains(&format!("namespace             = \"{DEMO_NS}\"")));
        assert!(MAIN_TF.contains(&format!("gateway_nodepool_name = \"{TF_POOL}\"")));
        assert!(MAIN_TF.contains("output \"egress_ip_prefix\""));
        assert!(MAIN_TF.contains("config_path = var.kubeconfig"));
    }

    #[test]
    fn output_value_reads_a_string_output_and_names_a_missing_one() {
        let json = r#"{"egress_ip_prefix": {"sensitive": false, "type": "string", "value": "20.10.0.2/31"}}"#;
        assert_eq!(
            output_value(json, "egress_ip_prefix").expect("present"),
            "20.10.0.2/31"
        );
        let e = output_value("{}", "egress_ip_prefix").expect_err("absent");
        assert!(format!("{e:#}").contains("no string output \"egress_ip_prefix\""));
        assert!(output_value("not json", "x").is_err());
    }

    #[test]
    fn a_failed_command_names_itself_and_shows_terraforms_diagnostics() {
        let run = Run {
            command: "terraform apply -auto-approve".into(),
            code: Some(1),
            stdout: "egressgateway_gateway_pool.tf: Creating...\n".into(),
            stderr: "Error: GatewayPool tfpool is not ready\n".into(),
        };
        let e = format!("{:#}", run.success().err().expect("exit 1 fails"));
        assert!(
            e.contains("`terraform apply -auto-approve` (exit status 1)"),
            "{e}"
        );
        assert!(e.contains("Error: GatewayPool tfpool is not ready"), "{e}");
        let run = Run {
            command: "terraform plan".into(),
            code: Some(0),
            stdout: "x\nNo changes. Your infrastructure matches the configuration.\n".into(),
            stderr: String::new(),
        };
        assert_eq!(
            run.summary(),
            "No changes. Your infrastructure matches the configuration."
        );
    }
}
