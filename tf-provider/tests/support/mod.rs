//! A Terraform acceptance-test harness: the Kubernetes API server of [`TestCluster`] (the real control plane,
//! or kube-sim with `TESTBED_KUBE=sim`) with the real admission webhook registered as the chart registers it,
//! optionally the real operator against the Azure simulator, and Terraform
//! working directories that run the real `terraform` CLI with the provider configured for a user.
//! The provider is installed as users install it: the cargo-built binary packaged as a signed registry
//! release, mirrored, and installed by `terraform init` with checksum verification
//! ([`testbed::provider_release`]). Everything started here stops when dropped, also when a test
//! fails half-way: the webhook and its endpoint address, the Azure simulator and the operator task, `terraform`
//! processes through `kill_on_drop`, working directories through `TempDir`.

#![allow(dead_code)] // each test binary uses its own subset

#[path = "../../../operator/tests/common/mod.rs"]
mod operator_common;
#[path = "../../../webhook/tests/support/mod.rs"]
mod webhook_support;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde_json::{Value, json};
use testbed::azure::{AzureSim, Seed};
use testbed::cluster::{Exclusive, TestCluster};
use testbed::wait::eventually_within;
use webhook::facts::ClusterFacts as _;
use webhook_support::{Reach, Webhook};

/// Namespace of the webhook Service and the operator's key Secrets.
pub const SYSTEM_NS: &str = "kube-egress-gateway-system";
/// Namespace the configurations go to.
pub const APP_NS: &str = "app";
/// The gateway node pool of `Seed::aks_like` (a VMSS with two instances, /31 prefixes).
pub const NODEPOOL: &str = "gateway";
/// Resource group and name of that VMSS.
pub const VMSS: (&str, &str) = ("node-rg", "aks-gateway-12345678-vmss");
const WEBHOOK_SVC: &str = "kube-egress-gateway-webhook";
/// Namespace of the ServiceAccounts the tests use as users other than the admin.
const USERS_NS: &str = "tf-users";
/// The ClusterRole of the `viewer` user: read our kinds, nothing else.
const VIEWER_ROLE: &str = "tf-acceptance-viewer";

/// The API server of this test binary ([`TestCluster`]: the real control plane, or kube-sim with
/// `TESTBED_KUBE=sim`) with CRDs, namespaces and the real webhook registered as the chart does (by Service).
/// The tests of a binary share it and run one at a time: GatewayPools are cluster-wide, and so are the
/// operator's watches and the webhook configurations.
pub struct Cluster {
    pub cluster: Arc<TestCluster>,
    pub admin: kube::Client,
    webhook: Webhook,
    operator: Option<Operator>,
    _exclusive: Exclusive,
}

/// The real operator's work loop (`operator::run::run_operator`) against the Azure simulator.
struct Operator {
    azure: AzureSim,
    baseline: Vec<String>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}

impl Cluster {
    /// The shared API server with the webhook serving and registered; no operator yet.
    pub async fn start() -> Cluster {
        let exclusive = TestCluster::exclusive().await;
        let cluster = TestCluster::shared().await;
        let admin = cluster.client().expect("client");
        for ns in [SYSTEM_NS, APP_NS, USERS_NS] {
            cluster.ensure_namespace(ns, &[]).await.expect("namespace");
        }
        let webhook = Webhook::start(
            admin.clone(),
            vec![],
            Reach::Service {
                cluster: &cluster,
                namespace: SYSTEM_NS,
                name: WEBHOOK_SVC,
            },
        )
        .await;
        webhook.register(&admin, SYSTEM_NS).await;
        // The `viewer` user may read our kinds; `nobody` has no grant.
        let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": VIEWER_ROLE},
            "rules": [{"apiGroups": [api::names::GROUP], "resources": ["*"], "verbs": ["get", "list", "watch"]}]});
        let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": VIEWER_ROLE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": VIEWER_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": USERS_NS}]});
        let params = kube::api::PatchParams::apply("tf-acceptance").force();
        Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(admin.clone())
            .patch(VIEWER_ROLE, &params, &kube::api::Patch::Apply(role))
            .await
            .expect("viewer ClusterRole");
        Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(admin.clone())
            .patch(VIEWER_ROLE, &params, &kube::api::Patch::Apply(binding))
            .await
            .expect("viewer ClusterRoleBinding");
        Cluster {
            cluster,
            admin,
            webhook,
            operator: None,
            _exclusive: exclusive,
        }
    }

    /// Starts the real operator (its watch loop, leading) against a fresh Azure simulator seeded with an
    /// AKS-like cluster whose `gateway` node pool has two instances.
    pub async fn start_operator(&mut self) {
        let seed = Seed::aks_like(2);
        let azure = AzureSim::start(&seed).await.expect("azure-sim");
        // Long-running operations as Azure answers them (202 and polling), but finished by the next request:
        // the operator's converging re-check comes 10 s later, which only slows the tests down.
        azure.set_lro(testbed::azure::LroConfig {
            in_progress_polls: 0,
            max_duration_ms: 0,
            ..Default::default()
        });
        let op = Arc::new(operator_common::operator(
            &self.admin,
            &operator_common::cloud_config(&seed, &azure),
            SYSTEM_NS,
        ));
        let (_leading_tx, leading) = tokio::sync::watch::channel(true);
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let _keep_leading = _leading_tx;
            operator::run::run_operator(op, leading, Default::default(), shutdown_rx).await
        });
        let baseline = operator_common::resources(&azure);
        self.operator = Some(Operator {
            azure,
            baseline,
            shutdown,
            task,
        });
    }

    /// Asserts that no GatewayPool, configuration or key Secret is left, and (with an operator) that the
    /// Azure simulator holds exactly what it held before the operator started.
    pub async fn assert_empty(&self) {
        let pools: Api<api::GatewayPool> = Api::all(self.admin.clone());
        let sgcs: Api<api::StaticGatewayConfiguration> = Api::all(self.admin.clone());
        let secrets: Api<Secret> = Api::namespaced(self.admin.clone(), SYSTEM_NS);
        let names = |v: Vec<String>| v.join(", ");
        let left_pools = pools.list(&Default::default()).await.expect("list pools");
        let left_sgcs = sgcs.list(&Default::default()).await.expect("list configurations");
        let left_secrets = secrets.list(&Default::default()).await.expect("list secrets");
        assert!(
            left_pools.items.is_empty(),
            "GatewayPools left: {}",
            names(left_pools.items.iter().map(kube::ResourceExt::name_any).collect())
        );
        assert!(
            left_sgcs.items.is_empty(),
            "configurations left: {}",
            names(left_sgcs.items.iter().map(kube::ResourceExt::name_any).collect())
        );
        assert!(
            left_secrets.items.is_empty(),
            "key Secrets left: {}",
            names(
                left_secrets
                    .items
                    .iter()
                    .map(kube::ResourceExt::name_any)
                    .collect()
            )
        );
        if let Some(op) = &self.operator {
            assert_eq!(
                operator_common::resources(&op.azure),
                op.baseline,
                "Azure resources leaked"
            );
        }
    }

    /// Waits until the webhook's cache knows the GatewayPool of a VMSS (its rule 4 check reads it).
    pub async fn await_webhook_sees_vmss_pool(&self, resource_group: &str, name: &str) {
        let pool = api::PoolRef::Vmss {
            resource_group: resource_group.into(),
            name: name.into(),
        };
        let facts = self.webhook.facts.clone();
        eventually_within("the webhook saw the GatewayPool", Duration::from_secs(10), || {
            let f = facts.clone();
            let p = pool.clone();
            async move { f.gateway_pool(&p).is_some() }
        })
        .await;
    }

    /// The user name the API server sees for one of the tests' users (`viewer`, `nobody`: ServiceAccounts).
    pub fn user_name(&self, user: &str) -> String {
        format!("system:serviceaccount:{USERS_NS}:{user}")
    }

    /// Terraform variables that configure the provider for a user (`host`, `token`,
    /// `cluster_ca_certificate`): `admin`, or `viewer` / `nobody` (ServiceAccount tokens).
    pub async fn credentials(&self, user: &str) -> Vec<(String, String)> {
        let token = match user {
            "admin" => self.cluster.admin_token().expect("admin token"),
            other => self
                .cluster
                .service_account_token(USERS_NS, other)
                .await
                .expect("ServiceAccount token"),
        };
        vec![
            ("TF_VAR_host".into(), self.cluster.url()),
            ("TF_VAR_token".into(), token),
            ("TF_VAR_cluster_ca_certificate".into(), self.cluster.ca_pem()),
        ]
    }
}

/// The provider block and its variables: credentials come from `TF_VAR_*` (see [`Cluster::credentials`]).
pub const PROVIDER_TF: &str = r#"terraform {
  required_providers {
    egressgateway = { source = "kube-egress-gateway-rs/egressgateway" }
  }
}

variable "host" {
  type = string
}

variable "token" {
  type      = string
  sensitive = true
}

variable "cluster_ca_certificate" {
  type = string
}

provider "egressgateway" {
  host                   = var.host
  token                  = var.token
  cluster_ca_certificate = var.cluster_ca_certificate
}
"#;

/// The GatewayPool resource `egressgateway_gateway_pool.gw` on [`NODEPOOL`] with /31 prefixes, `extra` added
/// to its block.
pub fn pool_tf(extra: &str) -> String {
    pool_tf_sized(31, extra)
}

/// [`pool_tf`] with prefixes of the given length.
pub fn pool_tf_sized(prefix_size: u8, extra: &str) -> String {
    format!(
        r#"
resource "egressgateway_gateway_pool" "gw" {{
  name                  = "{NODEPOOL}"
  gateway_nodepool_name = "{NODEPOOL}"
  public_ip_prefix_size = {prefix_size}
{extra}
}}
"#
    )
}

/// What one `terraform` run printed.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout and stderr, with line wrapping undone (for checking message text).
    pub fn flat(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The provider built by cargo as a verified release in a filesystem mirror, made once per test process under
/// cargo's per-target temporary directory and reused while the binary is unchanged.
fn provider_mirror() -> &'static testbed::provider_release::ProviderMirror {
    static MIRROR: std::sync::OnceLock<testbed::provider_release::ProviderMirror> =
        std::sync::OnceLock::new();
    MIRROR.get_or_init(|| {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_terraform-provider-egressgateway"));
        let meta = std::fs::metadata(&bin).expect("provider binary");
        let stamp = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("provider-mirror");
        let dir = base.join(format!("{}-{stamp}-{}", meta.len(), std::process::id()));
        // Older mirrors (of binaries since rebuilt, or of earlier runs) are not needed any more.
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        testbed::provider_release::ProviderMirror::build(&bin, &dir)
            .expect("packaging the provider and mirroring it (scripts/package-provider.sh, scripts/provider-mirror.sh)")
    })
}

/// The workspace's Terraform CLI configuration file.
const CLI_CONFIG: &str = "mirror.tfrc";

/// A Terraform working directory with its own CLI configuration (the provider installed by `terraform init`
/// from the mirror of [`provider_mirror`]), state file and environment; removed on drop.
pub struct Workspace {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Workspace {
    /// A workspace for the given provider credentials; `main.tf` is [`PROVIDER_TF`] plus `config`.
    pub fn new(env: Vec<(String, String)>, config: &str) -> Workspace {
        let dir = tempfile::Builder::new()
            .prefix("tfp-e2e-")
            .tempdir()
            .expect("temp dir");
        let ws = Workspace { dir, env };
        ws.write(config);
        provider_mirror()
            .init_workspace(ws.dir.path(), CLI_CONFIG)
            .expect("terraform init installs the provider from the mirror");
        ws
    }

    /// The same workspace (configuration and state) with other credentials.
    pub fn with_env(mut self, env: Vec<(String, String)>) -> Workspace {
        self.env = env;
        self
    }

    /// Replaces the configuration (after [`PROVIDER_TF`]).
    pub fn write(&self, config: &str) {
        std::fs::write(self.dir.path().join("main.tf"), format!("{PROVIDER_TF}{config}"))
            .expect("write main.tf");
    }

    /// The workspace directory.
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Runs `terraform <args>` (with `-no-color`, `-input=false` where they apply).
    pub async fn run(&self, args: &[&str]) -> Run {
        let out = tokio::process::Command::new("terraform")
            .args(args)
            .current_dir(self.dir.path())
            .env("TF_CLI_CONFIG_FILE", self.dir.path().join(CLI_CONFIG))
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            .env_remove("TF_LOG")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .expect("terraform must be on PATH (Terraform 1.11.4 is what these tests target)");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `terraform apply -auto-approve`, which must succeed.
    pub async fn apply(&self) -> Run {
        let run = self.apply_result().await;
        assert_eq!(run.code, 0, "terraform apply failed:\n{run}");
        run
    }

    /// `terraform apply -auto-approve`, whatever its outcome.
    pub async fn apply_result(&self) -> Run {
        self.run(&["apply", "-auto-approve", "-no-color", "-input=false"])
            .await
    }

    /// `terraform plan -detailed-exitcode`: 0 no changes, 2 changes, 1 error.
    pub async fn plan(&self) -> Run {
        self.run(&["plan", "-detailed-exitcode", "-no-color", "-input=false"])
            .await
    }

    /// `terraform plan -out=<file>`, which must succeed, and the saved plan as `terraform show -json <file>`
    /// prints it.
    pub async fn saved_plan(&self, file: &str) -> Value {
        self.saved_plan_with(file, &[]).await
    }

    /// [`Workspace::saved_plan`] with more `terraform plan` options (e.g. `-refresh=false`).
    pub async fn saved_plan_with(&self, file: &str, options: &[&str]) -> Value {
        let out = format!("-out={file}");
        let mut args = vec!["plan", "-no-color", "-input=false", &out];
        args.extend_from_slice(options);
        let run = self.run(&args).await;
        assert_eq!(run.code, 0, "terraform plan -out failed:\n{run}");
        let run = self.run(&["show", "-json", "-no-color", file]).await;
        assert_eq!(run.code, 0, "terraform show <plan> failed:\n{run}");
        serde_json::from_str(&run.stdout).expect("show -json is JSON")
    }

    /// `terraform apply <file>` of a saved plan, which must succeed.
    pub async fn apply_saved(&self, file: &str) -> Run {
        let run = self
            .run(&["apply", "-auto-approve", "-no-color", "-input=false", file])
            .await;
        assert_eq!(run.code, 0, "terraform apply {file} failed:\n{run}");
        run
    }

    /// Asserts that a plan (with refresh) proposes nothing.
    pub async fn assert_plan_empty(&self, when: &str) {
        let run = self.plan().await;
        assert_eq!(run.code, 0, "{when}: the plan must be empty:\n{run}");
    }

    /// `terraform show -json` of the state: `values.root_module.resources` by address, and the outputs.
    pub async fn show(&self) -> Shown {
        let run = self.run(&["show", "-json", "-no-color"]).await;
        assert_eq!(run.code, 0, "terraform show failed:\n{run}");
        let doc: Value = serde_json::from_str(&run.stdout).expect("show -json is JSON");
        Shown(doc)
    }

    /// `terraform import <address> <id>`, which must succeed.
    pub async fn import(&self, address: &str, id: &str) -> Run {
        let run = self
            .run(&["import", "-no-color", "-input=false", address, id])
            .await;
        assert_eq!(run.code, 0, "terraform import {address} {id} failed:\n{run}");
        run
    }

    /// `terraform state rm <addresses>`, which must succeed.
    pub async fn state_rm(&self, addresses: &[&str]) {
        let mut args = vec!["state", "rm"];
        args.extend_from_slice(addresses);
        let run = self.run(&args).await;
        assert_eq!(run.code, 0, "terraform state rm failed:\n{run}");
    }

    /// `terraform destroy -auto-approve`, which must succeed.
    pub async fn destroy(&self) -> Run {
        let run = self
            .run(&["destroy", "-auto-approve", "-no-color", "-input=false"])
            .await;
        assert_eq!(run.code, 0, "terraform destroy failed:\n{run}");
        run
    }

    /// Imports every given resource after forgetting it, and checks that the imported state equals the
    /// refreshed one (but `timeouts`, which lives only in configuration) and that the plan is then empty.
    pub async fn assert_import_round_trip(&self, resources: &[(&str, &str)]) {
        // Compare with the objects as they are now (the operator moves status on after apply).
        let run = self
            .run(&[
                "apply",
                "-refresh-only",
                "-auto-approve",
                "-no-color",
                "-input=false",
            ])
            .await;
        assert_eq!(run.code, 0, "terraform apply -refresh-only failed:\n{run}");
        let before = self.show().await;
        let addresses: Vec<&str> = resources.iter().map(|(a, _)| *a).collect();
        self.state_rm(&addresses).await;
        for (address, id) in resources {
            self.import(address, id).await;
        }
        let after = self.show().await;
        for (address, _) in resources {
            let mut want = before.resource(address).clone();
            let mut got = after.resource(address).clone();
            for v in [&mut want, &mut got] {
                if let Some(m) = v.as_object_mut() {
                    m.remove("timeouts");
                    // The status conditions carry messages that may move on between two reads.
                    m.remove("conditions");
                }
            }
            assert_eq!(got, want, "imported {address} differs from the applied state");
        }
        self.assert_plan_empty("after import").await;
    }
}

/// `terraform show -json` output.
#[derive(Debug)]
pub struct Shown(pub Value);

impl Shown {
    fn resources(&self) -> Vec<&Value> {
        self.0["values"]["root_module"]["resources"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    }

    /// The whole entry of a resource (`values`, `tainted`, ...); panics when absent.
    pub fn entry(&self, address: &str) -> &Value {
        self.resources()
            .into_iter()
            .find(|r| r["address"] == address)
            .unwrap_or_else(|| panic!("{address} is not in the state: {}", self.0))
    }

    /// The attribute values of a resource; panics when absent.
    pub fn resource(&self, address: &str) -> &Value {
        &self.entry(address)["values"]
    }

    /// Addresses of every resource in the state.
    pub fn addresses(&self) -> Vec<String> {
        self.resources()
            .into_iter()
            .filter_map(|r| r["address"].as_str().map(str::to_string))
            .collect()
    }

    /// An output's value.
    pub fn output(&self, name: &str) -> &Value {
        &self.0["values"]["outputs"][name]["value"]
    }
}
