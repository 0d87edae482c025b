# A complete AKS set-up, applied as is with `terraform init && terraform apply`: a cluster on its own virtual
# network, a regular (User) gateway node pool labelled and tainted for the chart's gateway agent, the roles the
# operator needs, the kube-egress-gateway chart, a GatewayPool describing the gateway node pool and a
# StaticGatewayConfiguration for the namespace `app`, whose egress prefix is exported.
# README.md beside this file explains each choice. tests/chart/test_examples.py pins it to the chart.
#
# The Kubernetes-side providers (helm, kubernetes, egressgateway) plan offline while the cluster's credentials
# are unknown, and contact the cluster only at apply.

terraform {
  required_version = ">= 1.5"
  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 4.0"
    }
    helm = {
      source  = "hashicorp/helm"
      version = "~> 3.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.30"
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

variable "gateway_node_count" {
  description = "Gateway nodes: at least 2, at most the addresses of one prefix (2^(32 - gateway_prefix_size))."
  type        = number
  default     = 2
}

variable "gateway_vm_size" {
  type    = string
  default = "Standard_D2s_v5"
}

variable "chart_repository" {
  description = "Repository of the chart: the release's OCI registry, or \"\" when `chart` is a local path."
  type        = string
  default     = "oci://ghcr.io/kube-egress-gateway-rs/charts"
}

variable "chart" {
  description = "Chart name in chart_repository, or a path such as ../../../charts/kube-egress-gateway."
  type        = string
  default     = "kube-egress-gateway"
}

variable "chart_version" {
  description = "Chart version (= the release version); \"\" for a local path."
  type        = string
  default     = "0.1.0"
}

variable "app_namespace" {
  description = "Namespace of the workloads whose egress goes through the gateway."
  type        = string
  default     = "app"
}

data "azurerm_client_config" "current" {}

resource "azurerm_resource_group" "rg" {
  name     = "rg-egress-demo"
  location = var.location
}

# The nodes' network, ours rather than AKS's, so its name is known to the operator's cloud configuration.
resource "azurerm_virtual_network" "vnet" {
  name                = "vnet-egress-demo"
  location            = azurerm_resource_group.rg.location
  resource_group_name = azurerm_resource_group.rg.name
  address_space       = ["10.224.0.0/12"]
}

resource "azurerm_subnet" "nodes" {
  name                 = "nodes"
  resource_group_name  = azurerm_resource_group.rg.name
  virtual_network_name = azurerm_virtual_network.vnet.name
  address_prefixes     = ["10.224.0.0/16"]
}

# The cluster's control-plane identity joins node pools and load balancers to our subnet: it needs the role
# before the cluster exists, hence a user-assigned identity.
resource "azurerm_user_assigned_identity" "aks" {
  name                = "id-aks-egress-demo"
  location            = azurerm_resource_group.rg.location
  resource_group_name = azurerm_resource_group.rg.name
}

resource "azurerm_role_assignment" "aks_network" {
  scope                = azurerm_virtual_network.vnet.id
  role_definition_name = "Network Contributor"
  principal_id         = azurerm_user_assigned_identity.aks.principal_id
}

resource "azurerm_kubernetes_cluster" "aks" {
  name                = "aks-egress-demo"
  location            = azurerm_resource_group.rg.location
  resource_group_name = azurerm_resource_group.rg.name
  dns_prefix          = "aksegress"

  default_node_pool {
    name           = "system"
    node_count     = 2
    vm_size        = "Standard_D4s_v5"
    vnet_subnet_id = azurerm_subnet.nodes.id
  }

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.aks.id]
  }

  # No `static_egress_gateway_profile_enabled`: that is AKS's own managed static egress gateway, whose
  # controllers serve the same StaticGatewayConfiguration kind as this chart and would fight over it.
  network_profile {
    network_plugin      = "azure"
    network_plugin_mode = "overlay"
  }

  depends_on = [azurerm_role_assignment.aks_network]
}

# The gateway nodes: a regular User pool (not `mode = "Gateway"`, which belongs to AKS's managed gateway).
# The label is what the chart's gateway agent selects and the taint keeps every other pod off (values
# gatewayDaemonManager.nodeSelector and tolerations). Fixed size: each node takes one address of every
# configuration's prefix, so no autoscaler. The prefix size comes from the GatewayPool below, so the node pool
# needs no `aks-managed-gatewayIPPrefixSize` tag.
resource "azurerm_kubernetes_cluster_node_pool" "gw" {
  name                  = "gwpool"
  kubernetes_cluster_id = azurerm_kubernetes_cluster.aks.id
  mode                  = "User"
  os_type               = "Linux"
  vm_size               = var.gateway_vm_size
  node_count            = var.gateway_node_count
  auto_scaling_enabled  = false
  vnet_subnet_id        = azurerm_subnet.nodes.id
  node_labels = {
    "kubeegressgateway.azure.com/mode" = "true"
  }
  node_taints = ["kubeegressgateway.azure.com/mode=true:NoSchedule"]
}

# The operator authenticates as the kubelet identity (managed identity on the nodes it runs on) and needs:
# the load balancer, public IP prefixes and the gateway scale set in the node resource group, and the subnet.
locals {
  operator_identity = azurerm_kubernetes_cluster.aks.kubelet_identity[0]
  operator_roles = {
    node_network = { scope = azurerm_kubernetes_cluster.aks.node_resource_group_id, role = "Network Contributor" }
    node_vms     = { scope = azurerm_kubernetes_cluster.aks.node_resource_group_id, role = "Virtual Machine Contributor" }
    subnet       = { scope = azurerm_virtual_network.vnet.id, role = "Network Contributor" }
  }
}

resource "azurerm_role_assignment" "operator" {
  for_each             = local.operator_roles
  scope                = each.value.scope
  role_definition_name = each.value.role
  principal_id         = local.operator_identity.object_id
}

locals {
  kube = azurerm_kubernetes_cluster.aks.kube_config[0]
}

provider "helm" {
  kubernetes = {
    host                   = local.kube.host
    client_certificate     = base64decode(local.kube.client_certificate)
    client_key             = base64decode(local.kube.client_key)
    cluster_ca_certificate = base64decode(local.kube.cluster_ca_certificate)
  }
}

provider "kubernetes" {
  host                   = local.kube.host
  client_certificate     = base64decode(local.kube.client_certificate)
  client_key             = base64decode(local.kube.client_key)
  cluster_ca_certificate = base64decode(local.kube.cluster_ca_certificate)
}

provider "egressgateway" {
  host                   = local.kube.host
  client_certificate     = base64decode(local.kube.client_certificate)
  client_key             = base64decode(local.kube.client_key)
  cluster_ca_certificate = base64decode(local.kube.cluster_ca_certificate)
}

# The chart: CRDs, webhook, operator and both agents. `wait` holds apply until its workloads are ready, so the
# webhook (failurePolicy Fail) and the operator serve the GatewayPool and configuration below. The gateway
# agent's placement is the chart's default (not overridden here), which the node pool above matches.
resource "helm_release" "kube_egress_gateway" {
  name             = "kube-egress-gateway"
  namespace        = "kube-egress-gateway"
  create_namespace = true
  repository       = var.chart_repository == "" ? null : var.chart_repository
  chart            = var.chart
  version          = var.chart_version == "" ? null : var.chart_version
  wait             = true
  timeout          = 600

  values = [yamlencode({
    config = {
      azureCloudConfig = {
        cloud                       = "AzurePublicCloud"
        tenantId                    = data.azurerm_client_config.current.tenant_id
        subscriptionId              = data.azurerm_client_config.current.subscription_id
        useManagedIdentityExtension = true
        userAssignedIdentityID      = local.operator_identity.client_id
        resourceGroup               = azurerm_kubernetes_cluster.aks.node_resource_group
        location                    = azurerm_resource_group.rg.location
        loadBalancerResourceGroup   = azurerm_kubernetes_cluster.aks.node_resource_group
        vnetName                    = azurerm_virtual_network.vnet.name
        vnetResourceGroup           = azurerm_resource_group.rg.name
        subnetName                  = azurerm_subnet.nodes.name
      }
    }
  })]

  # The operator's roles exist before it starts, and outlive it on destroy (its finalizers release Azure
  # resources with them).
  depends_on = [azurerm_role_assignment.operator]
}

resource "kubernetes_namespace_v1" "app" {
  metadata {
    name = var.app_namespace
  }
}

resource "egressgateway_gateway_pool" "gw" {
  name                  = azurerm_kubernetes_cluster_node_pool.gw.name
  gateway_nodepool_name = azurerm_kubernetes_cluster_node_pool.gw.name
  public_ip_prefix_size = var.gateway_prefix_size
  instance_count        = azurerm_kubernetes_cluster_node_pool.gw.node_count

  depends_on = [helm_release.kube_egress_gateway]
}

resource "egressgateway_static_gateway_configuration" "app" {
  namespace             = kubernetes_namespace_v1.app.metadata[0].name
  name                  = "egress"
  gateway_nodepool_name = egressgateway_gateway_pool.gw.gateway_nodepool_name
  exclude_cidrs         = ["10.0.0.0/8", "172.16.0.0/12"]

  timeouts {
    create = "15m"
    delete = "10m"
  }

  depends_on = [helm_release.kube_egress_gateway]

  # Replaced with its pool: a pool's new name or prefix size replaces the pool, and the operator does not let a
  # pool go while configurations use it (docs/tf-provider/resources/static_gateway_configuration.md).
  lifecycle {
    replace_triggered_by = [egressgateway_gateway_pool.gw.uid]
  }
}

output "egress_ip_prefix" {
  description = "Source prefix of the app namespace's egress traffic; add it to partner firewall allowlists."
  value       = egressgateway_static_gateway_configuration.app.egress_ip_prefix
}

output "app_namespace" {
  description = "Pods here opt in with the annotation kubernetes.azure.com/static-gateway-configuration: egress."
  value       = kubernetes_namespace_v1.app.metadata[0].name
}
