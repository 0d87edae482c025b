# Runs without Azure or init (dev_overrides): `terraform validate` and `terraform plan` work offline.
terraform {
  required_providers {
    egressgateway = {
      source = "kube-egress-gateway-rs/egressgateway"
    }
  }
}

provider "egressgateway" {
  config_path = pathexpand("~/.kube/config")
}

resource "egressgateway_gateway_pool" "gw" {
  name                  = "gwpool"
  gateway_nodepool_name = "gwpool"
  public_ip_prefix_size = 31
}

# The namespace must exist before an apply (this provider manages only the egress gateway kinds: create it with
# kubectl or the hashicorp/kubernetes provider's kubernetes_namespace_v1, as examples/terraform/aks does).
resource "egressgateway_static_gateway_configuration" "app" {
  namespace             = "app"
  name                  = "egress"
  gateway_nodepool_name = egressgateway_gateway_pool.gw.gateway_nodepool_name
  default_route         = "staticEgressGateway"
  exclude_cidrs         = ["10.0.0.0/8"]

  # Replaced with its pool: a pool's new name or prefix size replaces the pool, and the operator does not let a
  # pool go while configurations use it (docs/tf-provider/resources/static_gateway_configuration.md).
  lifecycle {
    replace_triggered_by = [egressgateway_gateway_pool.gw.uid]
  }
}

data "egressgateway_static_gateway_configuration" "app" {
  namespace = egressgateway_static_gateway_configuration.app.namespace
  name      = egressgateway_static_gateway_configuration.app.name
}

output "egress_ip_prefix" {
  value = egressgateway_static_gateway_configuration.app.egress_ip_prefix
}
