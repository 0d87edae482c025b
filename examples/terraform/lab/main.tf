# Scenario 8 of the lab (docs/testbed.md): a gateway pool and a configuration declared with Terraform
# against the lab's simulated cluster. The lab applies this file as it is; by hand, against a lab started
# with `scripts/lab.sh --keep` (which prints the kubeconfig), with the provider built by cargo:
#
#   terraform init && terraform apply -var kubeconfig=/tmp/kube-egress-lab-<pid>/kubeconfig
#
# with the provider installed from a release mirror (docs/install.md, "Terraform provider"; the lab itself
# packages its provider binary with scripts/package-provider.sh and mirrors it with scripts/provider-mirror.sh),
# or, while editing the provider, with TF_CLI_CONFIG_FILE naming a CLI configuration whose dev_overrides point
# "kube-egress-gateway-rs/egressgateway" at the directory of terraform-provider-egressgateway (no init then).
#
# The lab's Azure seed has a second gateway node pool `tfpool` (a VMSS with 2 instances, tagged for /31
# prefixes) that nothing uses until this configuration declares a GatewayPool for it.

terraform {
  required_providers {
    egressgateway = {
      source = "kube-egress-gateway-rs/egressgateway"
    }
  }
}

variable "kubeconfig" {
  description = "Path of the lab's kubeconfig (printed by `scripts/lab.sh --keep`)."
  type        = string
}

provider "egressgateway" {
  config_path = var.kubeconfig
}

resource "egressgateway_gateway_pool" "tf" {
  name                  = "tfpool"
  gateway_nodepool_name = "tfpool"
  public_ip_prefix_size = 31
  instance_count        = 2

  timeouts {
    create = "2m"
    delete = "2m"
  }
}

resource "egressgateway_static_gateway_configuration" "tf" {
  namespace             = "demo"
  name                  = "tf-egress"
  gateway_nodepool_name = egressgateway_gateway_pool.tf.gateway_nodepool_name
  exclude_cidrs         = ["10.0.0.0/8"]

  timeouts {
    create = "2m"
    delete = "2m"
  }

  # Replaced with its pool: a pool's new name or prefix size replaces the pool, and the operator does not let a
  # pool go while configurations use it (docs/tf-provider/resources/static_gateway_configuration.md).
  lifecycle {
    replace_triggered_by = [egressgateway_gateway_pool.tf.uid]
  }
}

output "egress_ip_prefix" {
  description = "Source prefix of the egress traffic of pods annotated with demo/tf-egress."
  value       = egressgateway_static_gateway_configuration.tf.egress_ip_prefix
}
