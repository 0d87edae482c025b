# A complete AKS example: cluster with static egress gateway enabled, a gateway node pool, the
# GatewayPool describing it, and a StaticGatewayConfiguration whose egress prefix is exported.
#
# Stage 1 creates the cluster; the egressgateway provider plans offline while the cluster's
# credentials are unknown, and contacts the cluster only at apply.
# `mode = "Gateway"` and `gateway_public_ip_prefix_size` need an azurerm release with AKS static
# egress gateway support (hashicorp/terraform-provider-azurerm#30773).

terraform {
  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 4.0"
    }
    egressgateway = {
      source  = "kube-egress-gateway-rs/egressgateway"
      version = "~> 0.1"
    }
  }
}

provider "azurerm" {
  features {}
}

variable "location" {
  type    = string
  default = "eastus"
}

variable "gateway_prefix_size" {
  description = "Public IP prefix length per configuration: 31 (2 gateway nodes) down to 28 (16)."
  type        = number
  default     = 30
}

resource "azurerm_resource_group" "rg" {
  name     = "rg-egress-demo"
  location = var.location
}

resource "azurerm_kubernetes_cluster" "aks" {
  name                = "aks-egress-demo"
  location            = azurerm_resource_group.rg.location
  resource_group_name = azurerm_resource_group.rg.name
  dns_prefix          = "aksegress"

  default_node_pool {
    name       = "system"
    node_count = 2
    vm_size    = "Standard_D4s_v5"
  }

  identity {
    type = "SystemAssigned"
  }

  network_profile {
    network_plugin                        = "azure"
    network_plugin_mode                   = "overlay"
    static_egress_gateway_profile_enabled = true
  }
}

resource "azurerm_kubernetes_cluster_node_pool" "gw" {
  name                          = "gwpool"
  kubernetes_cluster_id         = azurerm_kubernetes_cluster.aks.id
  mode                          = "Gateway"
  vm_size                       = "Standard_D2s_v5"
  node_count                    = 2
  gateway_public_ip_prefix_size = var.gateway_prefix_size
}

provider "egressgateway" {
  host                   = azurerm_kubernetes_cluster.aks.kube_config[0].host
  client_certificate     = base64decode(azurerm_kubernetes_cluster.aks.kube_config[0].client_certificate)
  client_key             = base64decode(azurerm_kubernetes_cluster.aks.kube_config[0].client_key)
  cluster_ca_certificate = base64decode(azurerm_kubernetes_cluster.aks.kube_config[0].cluster_ca_certificate)
}

resource "egressgateway_gateway_pool" "gw" {
  name                  = azurerm_kubernetes_cluster_node_pool.gw.name
  gateway_nodepool_name = azurerm_kubernetes_cluster_node_pool.gw.name
  public_ip_prefix_size = var.gateway_prefix_size
  instance_count        = azurerm_kubernetes_cluster_node_pool.gw.node_count
}

resource "egressgateway_static_gateway_configuration" "app" {
  namespace             = "app"
  name                  = "egress"
  gateway_nodepool_name = egressgateway_gateway_pool.gw.gateway_nodepool_name
  exclude_cidrs         = ["10.0.0.0/8", "172.16.0.0/12"]

  timeouts {
    create = "15m"
    delete = "10m"
  }
}

output "egress_ip_prefix" {
  description = "Source prefix of the app namespace's egress traffic; add it to partner firewall allowlists."
  value       = egressgateway_static_gateway_configuration.app.egress_ip_prefix
}
