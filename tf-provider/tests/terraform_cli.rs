//! End-to-end tests with the real `terraform` CLI (1.11 on PATH), using dev_overrides and no `terraform
//! init` (the edit loop: the binary cargo just built, unpackaged; terraform_cluster.rs installs the provider
//! from a verified release mirror, as users do). These cover what needs no cluster: validate and plan (offline planning, plan-time rules with
//! attribute paths, unknown provider configuration), the formatting of the shipped examples, and that the
//! offline example validates and plans (the AKS example needs the azurerm provider, hence `init`).
//! Every run goes through the real go-plugin handshake with AutoMTLS.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary Terraform working directory with its own CLI configuration; removed on drop.
struct Workspace {
    dir: PathBuf,
}

impl Workspace {
    /// A workspace whose `main.tf` is `main_tf` after a `required_providers` header.
    fn new(name: &str, main_tf: &str) -> Self {
        let header = "terraform {\n  required_providers {\n    egressgateway = { source = \"kube-egress-gateway-rs/egressgateway\" }\n  }\n}\n";
        Self::with_main_tf(name, &format!("{header}{main_tf}"))
    }

    /// A workspace whose `main.tf` is exactly `main_tf`.
    fn with_main_tf(name: &str, main_tf: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tfp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create workspace");
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_terraform-provider-egressgateway"));
        let bin_dir = bin.parent().expect("binary directory");
        std::fs::write(
            dir.join("dev.tfrc"),
            format!(
                "provider_installation {{\n  dev_overrides {{\n    \"kube-egress-gateway-rs/egressgateway\" = \"{}\"\n  }}\n  direct {{}}\n}}\n",
                bin_dir.display()
            ),
        )
        .expect("write dev.tfrc");
        std::fs::write(dir.join("main.tf"), main_tf).expect("write main.tf");
        Workspace { dir }
    }

    fn terraform(&self, args: &[&str]) -> Output {
        Command::new("terraform")
            .args(args)
            .current_dir(&self.dir)
            .env("TF_CLI_CONFIG_FILE", self.dir.join("dev.tfrc"))
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            .env_remove("TF_LOG")
            .output()
            .expect("terraform must be on PATH (Terraform 1.11.4 is what these tests target)")
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The output with line wrapping undone, for checking message text.
fn flat(out: &str) -> String {
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Asserts the output has an error whose source snippet is the given attribute line.
fn assert_error_at(out: &str, summary: &str, attribute_line: &str) {
    let found = out.split("Error: ").skip(1).any(|block| {
        block.starts_with(summary)
            && block
                .lines()
                .take(6)
                .any(|l| l.trim_start().contains(attribute_line))
    });
    assert!(
        found,
        "expected error '{summary}' pointing at `{attribute_line}`, got:\n{out}"
    );
}

#[test]
fn validate_reports_each_rule_at_its_attribute() {
    let ws = Workspace::new(
        "rules",
        r#"
resource "egressgateway_static_gateway_configuration" "cidrs" {
  namespace             = "app"
  name                  = "cidrs"
  gateway_nodepool_name = "gwpool"
  exclude_cidrs         = ["10.0.0.0/8", "10.1.0.0/33"]
}

resource "egressgateway_static_gateway_configuration" "vmss" {
  namespace = "app"
  name      = "vmss"
  gateway_vmss_profile {
    vmss_resource_group   = "rg"
    vmss_name             = "gw"
    public_ip_prefix_size = 27
  }
}

resource "egressgateway_static_gateway_configuration" "private" {
  namespace             = "app"
  name                  = "private"
  gateway_nodepool_name = "gwpool"
  provision_public_ips  = false
  public_ip_prefix_id   = "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Network/publicIPPrefixes/p"
}

resource "egressgateway_static_gateway_configuration" "route" {
  namespace             = "app"
  name                  = "route"
  gateway_nodepool_name = "gwpool"
  default_route         = "direct"
}

resource "egressgateway_gateway_pool" "small" {
  name                  = "small"
  gateway_nodepool_name = "gwpool"
  public_ip_prefix_size = 31
  instance_count        = 3
}
"#,
    );
    let out = ws.terraform(&["validate", "-no-color"]);
    let all = text(&out);
    assert!(!out.status.success(), "validate must fail:\n{all}");
    assert_error_at(
        &all,
        "Invalid static gateway configuration: valid exclude_cidrs",
        "exclude_cidrs",
    );
    assert!(flat(&all).contains("'10.1.0.0/33' is not a CIDR"), "{all}");
    assert_error_at(
        &all,
        "Invalid static gateway configuration: supported prefix size",
        "public_ip_prefix_size = 27",
    );
    assert_error_at(
        &all,
        "Invalid static gateway configuration: public IP prefix ID",
        "public_ip_prefix_id",
    );
    assert_error_at(
        &all,
        "Invalid static gateway configuration: default_route value",
        "default_route",
    );
    assert_error_at(
        &all,
        "Invalid gateway pool: instances fit the prefix",
        "instance_count",
    );
}

#[test]
fn plan_is_offline_with_unknown_credentials_and_unknown_inputs() {
    // The API server's address is only known after apply (as with a new AKS cluster): plan must still work,
    // without contacting any cluster, and values that come from other resources must not trip the rules.
    let ws = Workspace::new(
        "unknown",
        r#"
resource "terraform_data" "cluster" {
  input = "aks.example.invalid"
}

provider "egressgateway" {
  host  = "https://${terraform_data.cluster.output}"
  token = "not-used-at-plan"
}

resource "egressgateway_gateway_pool" "gw" {
  name                  = "gwpool"
  gateway_nodepool_name = "gwpool"
  public_ip_prefix_size = 30
  instance_count        = 4
}

resource "egressgateway_static_gateway_configuration" "egress" {
  namespace             = "app"
  name                  = "egress"
  gateway_nodepool_name = terraform_data.cluster.output
  exclude_cidrs         = ["10.0.0.0/8"]
}

output "egress_prefix" {
  value = egressgateway_static_gateway_configuration.egress.egress_ip_prefix
}
"#,
    );
    let out = ws.terraform(&["plan", "-no-color", "-input=false", "-lock=false"]);
    let all = text(&out);
    assert!(out.status.success(), "plan must succeed offline:\n{all}");
    assert!(
        all.contains("Plan: 3 to add, 0 to change, 0 to destroy."),
        "{all}"
    );
    assert!(
        all.contains("egress_ip_prefix       = (known after apply)"),
        "{all}"
    );
    assert!(
        all.contains(r#"default_route          = "staticEgressGateway""#),
        "{all}"
    );
    assert!(all.contains(r#"id                     = "app/egress""#), "{all}");
}

#[test]
fn data_sources_are_read_at_plan_when_their_arguments_are_known() {
    // As docs/tf-provider/index.md says: with credentials unknown, a data source with literal arguments
    // fails at plan; one whose arguments come from a resource being created is read at apply.
    let config = |namespace: &str, name: &str| {
        format!(
            r#"
resource "terraform_data" "cluster" {{
  input = "aks.example.invalid"
}}

provider "egressgateway" {{
  host  = "https://${{terraform_data.cluster.output}}"
  token = "not-used-at-plan"
}}

resource "egressgateway_static_gateway_configuration" "egress" {{
  namespace             = "app"
  name                  = "egress"
  gateway_nodepool_name = "gwpool"
}}

data "egressgateway_static_gateway_configuration" "read" {{
  namespace = {namespace}
  name      = {name}
}}
"#
        )
    };
    let ws = Workspace::new("ds-literal", &config(r#""app""#, r#""egress""#));
    let out = ws.terraform(&["plan", "-no-color", "-input=false", "-lock=false"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        flat(&all).contains("Error: Provider configuration is not known yet"),
        "{all}"
    );
    let ws = Workspace::new(
        "ds-deferred",
        &config(
            "egressgateway_static_gateway_configuration.egress.namespace",
            "egressgateway_static_gateway_configuration.egress.name",
        ),
    );
    let out = ws.terraform(&["plan", "-no-color", "-input=false", "-lock=false"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("data.egressgateway_static_gateway_configuration.read will be read during apply"),
        "{all}"
    );
}

#[test]
fn an_exec_block_validates_with_host_and_is_refused_without() {
    let config = |host: &str| {
        format!(
            r#"
provider "egressgateway" {{
{host}
  exec {{
    api_version = "client.authentication.k8s.io/v1beta1"
    command     = "kubelogin"
    args        = ["get-token", "--login", "azurecli", "--server-id", "6dae42f8-4368-4678-94ff-3960e28e3630"]
    env         = {{ AAD_LOGIN_METHOD = "azurecli" }}
  }}
}}

resource "egressgateway_gateway_pool" "gw" {{
  name                  = "gwpool"
  gateway_nodepool_name = "gwpool"
  public_ip_prefix_size = 31
}}
"#
        )
    };
    let ws = Workspace::new(
        "exec-ok",
        &config(r#"  host = "https://aks.example.invalid:443""#),
    );
    let out = ws.terraform(&["validate", "-no-color"]);
    assert!(out.status.success(), "{}", text(&out));
    let ws = Workspace::new("exec-no-host", &config(""));
    let out = ws.terraform(&["validate", "-no-color"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(flat(&all).contains("Error: exec needs host"), "{all}");
}

#[test]
fn plan_reports_rules_once_inputs_are_known() {
    // Variables are known at plan; the pool-size-vs-prefix rule needs both values.
    let ws = Workspace::new(
        "known-at-plan",
        r#"
variable "instances" {
  default = 5
}

resource "terraform_data" "cluster" {
  input = "aks.example.invalid"
}

provider "egressgateway" {
  host = "https://${terraform_data.cluster.output}"
}

resource "egressgateway_gateway_pool" "gw" {
  name                  = "gwpool"
  gateway_nodepool_name = "gwpool"
  public_ip_prefix_size = 30
  instance_count        = var.instances
}
"#,
    );
    let out = ws.terraform(&["plan", "-no-color", "-input=false", "-lock=false"]);
    let all = text(&out);
    assert!(!out.status.success(), "plan must fail:\n{all}");
    assert_error_at(
        &all,
        "Invalid gateway pool: instances fit the prefix",
        "instance_count",
    );
    assert!(
        flat(&all)
            .contains("5 instances do not fit a /30 prefix of 4 addresses; use public_ip_prefix_size: 29"),
        "{all}"
    );
}

#[test]
fn shipped_examples_are_formatted() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = "examples/terraform";
    let path = root.join(dir);
    assert!(path.is_dir(), "{} is missing", path.display());
    let out = Command::new("terraform")
        .args(["fmt", "-check", "-recursive", "-diff", "-no-color"])
        .arg(&path)
        .env("CHECKPOINT_DISABLE", "1")
        .output()
        .expect("terraform on PATH");
    assert!(
        out.status.success(),
        "terraform fmt -check {dir}:\n{}",
        text(&out)
    );
}

#[test]
fn shipped_offline_example_validates_and_plans() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/terraform/offline/main.tf");
    let main_tf = std::fs::read_to_string(&example).expect("examples/terraform/offline/main.tf");
    let ws = Workspace::with_main_tf("offline-example", &main_tf);
    let out = ws.terraform(&["validate", "-no-color"]);
    assert!(out.status.success(), "validate:\n{}", text(&out));
    // As the example says: plan needs no cluster (nothing exists yet, so nothing is refreshed).
    let out = ws.terraform(&["plan", "-no-color", "-input=false", "-lock=false"]);
    let all = text(&out);
    assert!(out.status.success(), "plan:\n{all}");
    assert!(
        all.contains("Plan: 2 to add, 0 to change, 0 to destroy."),
        "{all}"
    );
}

#[test]
fn shipped_lab_example_validates_and_plans() {
    // The configuration lab scenario 8 applies (testbed/src/lab/terraform.rs); the lab checks what apply
    // does, this only that it stays valid and plans (offline, as nothing exists yet) without the lab.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/terraform/lab/main.tf");
    let main_tf = std::fs::read_to_string(&example).expect("examples/terraform/lab/main.tf");
    let ws = Workspace::with_main_tf("lab-example", &main_tf);
    let out = ws.terraform(&["validate", "-no-color"]);
    assert!(out.status.success(), "validate:\n{}", text(&out));
    let out = ws.terraform(&[
        "plan",
        "-no-color",
        "-input=false",
        "-lock=false",
        "-var",
        "kubeconfig=/nonexistent/kubeconfig",
    ]);
    let all = text(&out);
    assert!(out.status.success(), "plan:\n{all}");
    assert!(
        all.contains("Plan: 2 to add, 0 to change, 0 to destroy."),
        "{all}"
    );
    assert!(all.contains("+ egress_ip_prefix = (known after apply)"), "{all}");
}
