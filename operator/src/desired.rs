//! The pure core of the operator: from one pool, the configurations on it and the Azure state that exists,
//! compute the ONE desired state of everything the pool shares, and the few writes that get there.
//!
//! Upstream reconciles every configuration on its own, so N configurations changing together cost N load
//! balancer PUTs, N VMSS PUTs and N updates per instance. Here every configuration's wishes are folded into one
//! desired load balancer, one VMSS network profile and one network configuration per instance, so however
//! many configurations change, a pool converges with at most one write of each — and with none in steady state
//! (`PoolPlan::is_noop`).
//!
//! Azure objects are modelled by the few fields the operator owns, with references reduced to resource names
//! (ARM compares them case-insensitively, so does this module). The appliers in `azure.rs` merge a desired
//! model back into the full ARM object, keeping every field and entry the operator does not own.

use std::collections::{BTreeMap, BTreeSet};

use api::names::{
    WIREGUARD_PORT_END, WIREGUARD_PORT_START, lb_probe_path, managed_resource_name, vm_pool_public_ip_name,
};

/// Transport protocol of the WireGuard rule (ARM spelling).
pub const RULE_PROTOCOL: &str = "Udp";
/// Protocol of the health probe (ARM spelling).
pub const PROBE_PROTOCOL: &str = "Http";
/// ARM provisioning state that forces an instance or NIC update (upstream #1011).
pub const FAILED: &str = "Failed";

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// What the operator knows about the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Names the load-balancer frontend and backend pool (VMSS uniqueId, or the VM pool's v3 UUID).
    pub uid: String,
    /// Scale set, or VM pool with pre-created NICs.
    pub kind: PoolKind,
    /// Length of every public prefix on this pool.
    pub prefix_len: i32,
}

/// How the pool's nodes exist in Azure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// Virtual machine scale set: model + instances.
    Vmss,
    /// VM-based pool: one pre-created NIC per (future) VM.
    Vm,
}

/// One configuration on the pool, reduced to what Azure needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// metadata.uid: names the rule, probe, ipConfiguration and managed prefix.
    pub uid: String,
    /// Where the egress addresses come from.
    pub egress: Egress,
    /// Being deleted (finalizer pending) or otherwise not wanted on the pool anymore.
    pub deleting: bool,
    /// Kept as it is: the configuration is on the pool, but this plan may neither provision nor remove it
    /// (its own checks failed in this pass, or it names the scale set through another pool reference, whose
    /// pass provisions it). [`plan_pool`] also keeps a configuration it finds a [`ConfigProblem`] with.
    /// Whatever it has in Azure stays exactly as it is: its ipConfigurations on the model, instances and NICs, its rule and probe with their port (no new rule takes that port), its prefixes and
    /// public IPs; nothing is created or changed for it, and it never counts as deleting (whatever
    /// `deleting` says). The pool's frontend, backend pool and the backend pool on the primary ipConfigurations
    /// stay while it may use them.
    pub kept: bool,
    /// The prefix this configuration adopted (name, in the node resource group; from its annotation, already
    /// checked), whatever its egress is now: deleted, like a managed prefix, once the configuration no longer
    /// uses it (deleted, or switched to BYO or private). With [`Egress::Adopted`] it is that prefix.
    pub adopted: Option<String>,
    /// The WireGuard port its status advertises (`gatewayServerProfile.port`), if any: pods may use it. A
    /// kept configuration's stays reserved (no new rule takes it), and one that has no rule gets it back when
    /// free.
    pub status_port: Option<u16>,
}

/// Source of a configuration's egress addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Egress {
    /// Private-IP mode: the nodes' secondary private IPs, no public prefix.
    Private,
    /// A prefix the operator creates and owns: `egressgateway-<uid>`.
    Managed,
    /// A user's prefix (already checked: same subscription, right length).
    Byo {
        /// The prefix, as parsed from the configuration.
        prefix: api::arm::PublicIpPrefixId,
    },
    /// A prefix an upstream installation created (`egressgateway-<UUID>` in the node resource group) that the
    /// configuration adopted (its annotation): referenced like a BYO prefix, deleted like a managed one.
    Adopted {
        /// The prefix's name, in the node resource group.
        name: String,
    },
}

impl Config {
    /// The names (lower-cased) of the prefixes the operator owns for this configuration: its managed prefix
    /// name, and the prefix it adopted.
    fn owned_prefix_names(&self) -> Vec<String> {
        let mut names = vec![managed_resource_name(&self.uid).to_ascii_lowercase()];
        if let Some(a) = &self.adopted {
            names.push(a.to_ascii_lowercase());
        }
        names
    }

    /// The names (lower-cased) of the prefixes the operator owns that this configuration uses now: none once
    /// deleted, all it may use while kept (its ipConfigurations, left as they are, may still reference any).
    fn used_owned_prefixes(&self) -> Vec<String> {
        if self.kept {
            return self.owned_prefix_names();
        }
        self.used_owned_prefix().into_iter().collect()
    }

    /// The names (lower-cased) of the prefixes its public IP addresses (VM pools) may be allocated from: the
    /// owned ones and a BYO prefix.
    fn public_ip_prefix_names(&self) -> Vec<String> {
        let mut names = self.owned_prefix_names();
        if let Egress::Byo { prefix } = &self.egress {
            names.push(prefix.name.to_ascii_lowercase());
        }
        names
    }

    /// The name of the prefix the operator owns that this configuration's egress uses, whether or not it is
    /// being deleted: its managed prefix, or the prefix it adopted. The one place that tells the two apart.
    pub fn egress_owned_prefix(&self) -> Option<String> {
        match &self.egress {
            Egress::Managed => Some(managed_resource_name(&self.uid)),
            Egress::Adopted { name } => Some(name.clone()),
            Egress::Private | Egress::Byo { .. } => None,
        }
    }

    /// The ARM ID of the public prefix its egress uses (None in private mode).
    fn egress_prefix_id(&self, env: &Env) -> Option<String> {
        match &self.egress {
            Egress::Byo { prefix } => Some(prefix.to_string()),
            _ => self.egress_owned_prefix().map(|name| env.prefix_id(&name)),
        }
    }

    /// Adopts the prefix `name` (in the node resource group): its egress, and a prefix it owns.
    pub fn adopt(&mut self, name: &str) {
        self.egress = Egress::Adopted {
            name: name.to_string(),
        };
        self.adopted = Some(name.to_string());
    }

    /// The name (lower-cased) of the prefix the operator owns that this configuration uses now, if any.
    fn used_owned_prefix(&self) -> Option<String> {
        if self.deleting {
            return None;
        }
        self.egress_owned_prefix().map(|n| n.to_ascii_lowercase())
    }
}

/// Where the pool's resources live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    /// ARM ID of the gateway load balancer (in `loadBalancerResourceGroup`).
    pub lb_id: String,
    /// `/subscriptions/<sub>/resourceGroups/<rg>`: managed prefixes and VM-pool public IPs live here.
    pub resource_group_id: String,
    /// Subnet of new load-balancer frontends.
    pub frontend_subnet_id: String,
    /// Port of the gateway agent's health-probe server (`--gateway-lb-probe-port`).
    pub probe_port: i32,
}

impl Env {
    /// ARM ID of the pool's backend address pool.
    pub fn backend_pool_id(&self, pool_uid: &str) -> String {
        format!("{}/backendAddressPools/{pool_uid}", self.lb_id)
    }

    /// ARM ID of a managed public IP prefix.
    pub fn prefix_id(&self, name: &str) -> String {
        format!(
            "{}/providers/Microsoft.Network/publicIPPrefixes/{name}",
            self.resource_group_id
        )
    }

    /// ARM ID of a network interface in the resource group (a VM pool's NIC).
    pub fn nic_id(&self, name: &str) -> String {
        format!(
            "{}/providers/Microsoft.Network/networkInterfaces/{name}",
            self.resource_group_id
        )
    }

    /// ARM ID of a public IP address in the resource group.
    pub fn public_ip_id(&self, name: &str) -> String {
        format!(
            "{}/providers/Microsoft.Network/publicIPAddresses/{name}",
            self.resource_group_id
        )
    }
}

/// The load balancer as far as the operator cares. References are names within the same load balancer.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Lb {
    /// Frontend IP configurations.
    pub frontends: Vec<Frontend>,
    /// Backend address pool names.
    pub backends: Vec<String>,
    /// Load-balancing rules.
    pub rules: Vec<LbRule>,
    /// Health probes.
    pub probes: Vec<Probe>,
    /// The last operation on the load balancer ended `Failed`: the plan PUTs it again even when it looks
    /// right (ARM's remedy for a failed operation).
    pub failed: bool,
}

/// A frontend IP configuration.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Frontend {
    /// Name.
    pub name: String,
    /// Allocated private IP (unknown until the PUT that creates it returns).
    pub private_ip: Option<String>,
    /// Subnet ID.
    pub subnet_id: Option<String>,
}

/// A load-balancing rule.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LbRule {
    /// Name.
    pub name: String,
    /// `Udp`, `Tcp`, `All`.
    pub protocol: String,
    /// Floating IP (direct server return): the gateway sees the frontend IP as destination.
    pub floating_ip: bool,
    /// Frontend name.
    pub frontend: Option<String>,
    /// Backend pool name.
    pub backend: Option<String>,
    /// Probe name.
    pub probe: Option<String>,
    /// Frontend port.
    pub frontend_port: Option<i32>,
    /// Backend port.
    pub backend_port: Option<i32>,
}

/// A health probe.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Probe {
    /// Name.
    pub name: String,
    /// `Http`, `Tcp`, `Https`.
    pub protocol: String,
    /// Port.
    pub port: i32,
    /// HTTP request path.
    pub path: Option<String>,
    /// Interval in seconds.
    pub interval: Option<i32>,
    /// Consecutive probes before a change.
    pub threshold: Option<i32>,
}

/// An ipConfiguration of a NIC or NIC configuration.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IpConfig {
    /// Name.
    pub name: String,
    /// Primary ipConfiguration of its NIC.
    pub primary: bool,
    /// IPv4 (the only version the operator creates).
    pub ipv4: bool,
    /// Subnet ID.
    pub subnet_id: Option<String>,
    /// VMSS: the public IP configuration's `(name, prefix ID)`.
    pub public_ip_config: Option<(String, String)>,
    /// VM NIC: the public IP address ID.
    pub public_ip_address_id: Option<String>,
    /// Backend address pool IDs.
    pub backend_pools: Vec<String>,
}

/// The primary NIC configuration of a VMSS model or instance model, or a VM pool's NIC.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Nic {
    /// ipConfigurations in ARM order.
    pub ip_configs: Vec<IpConfig>,
}

/// A VMSS instance.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Instance {
    /// instanceId.
    pub instance_id: String,
    /// osProfile.computerName: names the Kubernetes node.
    pub computer_name: String,
    /// provisioningState.
    pub provisioning_state: String,
    /// The primary NIC configuration of the instance model (None: the model has no network profile).
    pub nic: Option<Nic>,
    /// Addresses the instance's primary NIC actually has.
    pub addresses: NicAddresses,
}

/// Addresses a NIC actually has (from the NIC resource, not the model).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NicAddresses {
    /// Private IP of the primary ipConfiguration.
    pub primary_ip: Option<String>,
    /// Private IP per ipConfiguration name (lower-cased).
    pub by_ip_config: BTreeMap<String, String>,
}

/// A pre-created NIC of a VM-based pool.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct VmNic {
    /// NIC name (names the node in status).
    pub name: String,
    /// provisioningState.
    pub provisioning_state: String,
    /// The NIC's ipConfigurations.
    pub nic: Nic,
    /// Addresses.
    pub addresses: NicAddresses,
    /// ARM ID of the VM the NIC is attached to (`properties.virtualMachine.id`); None for a spare NIC.
    pub vm_id: Option<String>,
}

/// A public IP prefix the operator may own.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PrefixState {
    /// Prefix length.
    pub prefix_len: Option<i32>,
    /// Allocated CIDR.
    pub cidr: Option<String>,
    /// IDs of public IP addresses allocated from it (VM pools).
    pub public_ip_ids: Vec<String>,
    /// Its last operation ended `Failed`: created (PUT) again.
    pub failed: bool,
}

/// A public IP address allocated from a prefix (VM pools).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PublicIp {
    /// ARM ID of the prefix it is allocated from.
    pub prefix_id: String,
    /// Its [`api::names::TAG_GATEWAY_POOL_UID`] tag: the uid of the pool the operator created it for.
    pub pool: Option<String>,
    /// ARM ID of the ipConfiguration that uses it (`properties.ipConfiguration.id`), if any.
    pub used_by: Option<String>,
}

impl PublicIp {
    /// An unused public IP allocated from `prefix_id`, without the operator's tag.
    pub fn of_prefix(prefix_id: &str) -> Self {
        PublicIp {
            prefix_id: prefix_id.to_string(),
            ..PublicIp::default()
        }
    }
}

/// Everything read from Azure for one pool.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AzureState {
    /// The gateway load balancer, if it exists.
    pub lb: Option<Lb>,
    /// VMSS pools: the primary NIC configuration of the model (None: the scale set is gone or has no network
    /// profile).
    pub vmss_model: Option<Nic>,
    /// VMSS pools: the instances.
    pub instances: Vec<Instance>,
    /// VM pools: the pool's pre-created NICs.
    pub vm_nics: Vec<VmNic>,
    /// VM pools: the public IP addresses of the pool's resource group allocated from a prefix, by name
    /// (lower-cased).
    pub public_ips: BTreeMap<String, PublicIp>,
    /// Prefixes the operator owns that exist (managed and adopted), by name (lower-cased). Read for every
    /// configuration on the pool.
    pub managed_prefixes: BTreeMap<String, PrefixState>,
}

// ---------------------------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------------------------

/// What to do with the load balancer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LbWrite {
    /// Already as desired.
    Keep,
    /// PUT this load balancer (merged into the fetched object by the applier).
    Put {
        /// The desired model.
        lb: Lb,
        /// Write after the VMSS/NIC updates: it removes a backend pool they still reference.
        after_nics: bool,
    },
    /// DELETE the load balancer: no frontend remains. After the NIC updates.
    Delete,
}

/// A managed prefix to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixCreate {
    /// `egressgateway-<uid>`.
    pub name: String,
    /// The pool's prefix length.
    pub prefix_len: i32,
}

/// Why an instance or NIC is updated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum UpdateReason {
    /// Its ipConfigurations differ from the desired ones.
    Differs,
    /// Provisioning state `Failed` (an update repairs it, upstream #1011).
    Failed,
    /// The NIC lacks the primary or a wanted secondary private IP.
    MissingAddresses,
}

/// One instance / NIC write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicUpdate {
    /// instanceId (VMSS) or NIC name (VM pool).
    pub target: String,
    /// The desired primary NIC (configuration).
    pub nic: Nic,
    /// Why.
    pub reason: UpdateReason,
}

/// A public IP address to create for a VM-pool NIC.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PublicIpCreate {
    /// `<prefix name>-<fnv1a64(nic)>`.
    pub name: String,
    /// Prefix to allocate from.
    pub prefix_id: String,
}

/// A configuration's problem that keeps it from being provisioned; the others on the pool proceed. The plan
/// keeps a configuration with a problem as it is ([`Config::kept`]): a problem never removes what it has.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigProblem {
    /// 1000 configurations per pool at most.
    #[error(
        "selectPortForLBRule: No available ports: all {0} ports of the pool's load balancer rules are in use"
    )]
    NoAvailablePorts(u16),
    /// A managed prefix exists with a length other than the pool's.
    #[error(
        "public ip prefix has length {found}, the pool requires {required}; the configuration keeps its egress IPs on it: restore the pool's prefix size, or delete and recreate the configuration (new egress IPs)"
    )]
    PrefixSizeMismatch {
        /// Length found.
        found: i32,
        /// Length required.
        required: i32,
    },
    /// The prefix the configuration adopted does not exist (any more).
    #[error(
        "the public ip prefix {name} named by annotation {annotation} does not exist; remove the annotation to have the operator create the configuration's own prefix (new egress IPs)",
        annotation = api::names::ADOPTED_PREFIX_ANNOTATION
    )]
    AdoptedPrefixMissing {
        /// The adopted prefix's name.
        name: String,
    },
}

/// A problem with the pool's Azure objects that blocks every configuration on it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolProblem {
    /// The VMSS model or an instance has no primary NIC configuration.
    #[error("{0} primary network interface not found")]
    NoPrimaryNic(String),
    /// The primary NIC has no primary ipConfiguration.
    #[error("{0} primary ipConfig not found")]
    NoPrimaryIpConfig(String),
    /// The VMSS model has no network profile.
    #[error("vmss has empty network profile")]
    NoNetworkProfile,
}

/// Every write one pool needs, in the order the applier performs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolPlan {
    /// 1. Managed prefixes to create.
    pub prefixes_to_create: Vec<PrefixCreate>,
    /// 1b. VM pools: public IP addresses to create before the NICs reference them.
    pub public_ips_to_create: Vec<PublicIpCreate>,
    /// 1c. VM pools: the operator's public IPs made before it tagged them (known by their name while their NIC
    /// exists), PUT again, once, with the pool's [`api::names::TAG_GATEWAY_POOL_UID`] tag so that they are
    /// still known as the pool's once their NIC is gone.
    pub public_ips_to_tag: Vec<PublicIpCreate>,
    /// 2. (or 5.) The load balancer.
    pub lb: LbWrite,
    /// 3. VMSS pools: the model's primary NIC configuration, when it changes.
    pub vmss_model: Option<Nic>,
    /// 4. Per-instance (VMSS) or per-NIC (VM pool) updates.
    pub nic_updates: Vec<NicUpdate>,
    /// 6. Public IP addresses no longer referenced (names).
    pub public_ips_to_delete: Vec<String>,
    /// 7. Managed prefixes no longer used (names). Their public IPs are deleted first.
    pub prefixes_to_delete: Vec<String>,
    /// The WireGuard port of every provisioned configuration (uid → port).
    pub ports: BTreeMap<String, u16>,
    /// Configurations that cannot be provisioned, and why. Each is kept as it is in this plan.
    pub problems: BTreeMap<String, ConfigProblem>,
}

impl PoolPlan {
    /// True when Azure is already as desired: steady state makes no writes.
    pub fn is_noop(&self) -> bool {
        self.write_count() == 0
    }

    /// Number of ARM write calls the plan makes.
    pub fn write_count(&self) -> usize {
        self.prefixes_to_create.len()
            + self.public_ips_to_create.len()
            + self.public_ips_to_tag.len()
            + usize::from(self.lb != LbWrite::Keep)
            + usize::from(self.vmss_model.is_some())
            + self.nic_updates.len()
            + self.public_ips_to_delete.len()
            + self.prefixes_to_delete.len()
    }
}

// ---------------------------------------------------------------------------------------------
// Planning
// ---------------------------------------------------------------------------------------------

fn eq_ci(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn opt_eq_ci(a: Option<&str>, b: &str) -> bool {
    a.is_some_and(|a| eq_ci(a, b))
}

/// A prefix of another length than the pool's blocks its configuration (Azure cannot resize prefixes).
fn wrong_length(p: &PrefixState, pool: &Pool) -> Option<ConfigProblem> {
    p.prefix_len
        .filter(|l| *l != pool.prefix_len)
        .map(|found| ConfigProblem::PrefixSizeMismatch {
            found,
            required: pool.prefix_len,
        })
}

/// The configurations that want resources on the pool, in the order given (the caller sorts by creation).
fn wanted(configs: &[Config]) -> impl Iterator<Item = &Config> {
    configs.iter().filter(|c| !c.deleting && !c.kept)
}

/// The configurations whose part is kept as it is ([`Config::kept`]).
fn kept(configs: &[Config]) -> impl Iterator<Item = &Config> {
    configs.iter().filter(|c| c.kept)
}

/// Whether any NIC of the pool (the scale set's model, an instance's model, a VM pool's NIC) has one of the
/// ipConfigurations `names`.
fn carries_any(state: &AzureState, names: &[String]) -> bool {
    nics_of(state).any(|nic| {
        nic.ip_configs
            .iter()
            .any(|i| names.iter().any(|n| eq_ci(n, &i.name)))
    })
}

/// Every NIC of the pool in `state`: the scale set's model, the instances' models, a VM pool's NICs.
fn nics_of(state: &AzureState) -> impl Iterator<Item = &Nic> {
    state
        .vmss_model
        .iter()
        .chain(state.instances.iter().filter_map(|i| i.nic.as_ref()))
        .chain(state.vm_nics.iter().map(|v| &v.nic))
}

/// Whether an instance or VM NIC whose update ARM refused (`refused`: instance IDs and NIC names) still has
/// the configuration `uid`'s ipConfiguration: its deletion is not done until that update goes through.
pub fn left_on_refused<'a>(
    state: &AzureState,
    refused: impl IntoIterator<Item = &'a String>,
    uid: &str,
) -> bool {
    let name = managed_resource_name(uid);
    let has = |nic: &Nic| nic.ip_configs.iter().any(|i| eq_ci(&i.name, &name));
    refused.into_iter().any(|target| {
        state
            .instances
            .iter()
            .filter(|i| eq_ci(&i.instance_id, target))
            .filter_map(|i| i.nic.as_ref())
            .chain(
                state
                    .vm_nics
                    .iter()
                    .filter(|v| eq_ci(&v.name, target))
                    .map(|v| &v.nic),
            )
            .any(has)
    })
}

/// Computes the whole plan for a pool.
pub fn plan_pool(
    pool: &Pool,
    configs: &[Config],
    state: &AzureState,
    env: &Env,
) -> Result<PoolPlan, PoolProblem> {
    let mut problems = BTreeMap::new();

    // The prefix the operator owns for each configuration's egress. A managed one that does not exist (or whose
    // last operation failed) is created; an adopted one never is (a new one would have other addresses), so one
    // that is gone blocks its configuration. Either of another length blocks it (Azure cannot resize prefixes).
    let mut prefixes_to_create = Vec::new();
    for c in wanted(configs) {
        let Some(name) = c.egress_owned_prefix() else {
            continue;
        };
        let managed = c.egress == Egress::Managed;
        match state.managed_prefixes.get(&name.to_ascii_lowercase()) {
            None if !managed => {
                problems.insert(c.uid.clone(), ConfigProblem::AdoptedPrefixMissing { name });
            }
            Some(p) if managed && p.failed && p.prefix_len.is_none_or(|l| l == pool.prefix_len) => {
                prefixes_to_create.push(PrefixCreate {
                    name,
                    prefix_len: pool.prefix_len,
                })
            }
            None => prefixes_to_create.push(PrefixCreate {
                name,
                prefix_len: pool.prefix_len,
            }),
            Some(p) => {
                if let Some(problem) = wrong_length(p, pool) {
                    problems.insert(c.uid.clone(), problem);
                }
            }
        }
    }

    // A configuration with a problem is kept as it is (see `Config::kept`): what it has in Azure (a rule and
    // port, ipConfigurations, prefixes, public IPs) stays, nothing is added for it. Keeping one may take a port
    // another configuration had (two rules on one port), so the load balancer is planned again until every
    // configuration without a port is kept too.
    let mut configs: Vec<Config> = configs.to_vec();
    let lb_plan = loop {
        for c in configs.iter_mut().filter(|c| problems.contains_key(&c.uid)) {
            c.kept = true;
        }
        // ipConfigurations left as they are wherever they exist (kept configurations).
        let kept_ip_configs: Vec<String> = kept(&configs).map(|c| managed_resource_name(&c.uid)).collect();
        let lb_plan = plan_lb(
            &pool.uid,
            &configs,
            state.lb.as_ref(),
            env,
            carries_any(state, &kept_ip_configs),
        );
        // A configuration without a port that has nothing (no rule, probe, ipConfiguration or advertised port)
        // keeps nothing: this plan already is what keeping it plans, so the common case needs one round.
        let holds_something = |uid: &String| {
            configs.iter().any(|c| &c.uid == uid && c.status_port.is_some())
                || state.lb.as_ref().is_some_and(|lb| {
                    lb.rules.iter().any(|r| eq_ci(&r.name, uid))
                        || lb.probes.iter().any(|p| eq_ci(&p.name, uid))
                })
                || carries_any(state, &[managed_resource_name(uid)])
        };
        let again = lb_plan.problems.keys().any(holds_something);
        problems.extend(lb_plan.problems.clone());
        if !again {
            for c in configs.iter_mut().filter(|c| problems.contains_key(&c.uid)) {
                c.kept = true;
            }
            break lb_plan;
        }
    };
    let configs = configs.as_slice();
    prefixes_to_create.retain(|p| !problems.keys().any(|u| managed_resource_name(u) == p.name));
    let kept_ip_configs: Vec<String> = kept(configs).map(|c| managed_resource_name(&c.uid)).collect();

    // ipConfigurations every NIC must have: name → public prefix ID (None in private mode).
    let ip_configs: Vec<(String, Option<String>)> = wanted(configs)
        .map(|c| (managed_resource_name(&c.uid), c.egress_prefix_id(env)))
        .collect();
    let backend_id = env.backend_pool_id(&pool.uid);
    let keeping = Keeping {
        ip_configs: &kept_ip_configs,
        backend_id: &backend_id,
    };

    let mut vmss_model = None;
    let mut nic_updates = Vec::new();
    let mut public_ips_to_create = BTreeSet::new();
    let mut public_ips_to_delete = Vec::new();
    let mut public_ips_to_tag = Vec::new();
    match pool.kind {
        PoolKind::Vmss => {
            // A scale set that is gone (or has no network profile) needs nothing removed; it can only be a
            // problem when something must be added to it.
            match &state.vmss_model {
                Some(model) => {
                    let desired = desired_nic(model, &ip_configs, &keeping, NicFlavor::Vmss, "vmss")?;
                    if &desired != model {
                        vmss_model = Some(desired);
                    }
                }
                None if !ip_configs.is_empty() => return Err(PoolProblem::NoNetworkProfile),
                None => {}
            }
            for inst in &state.instances {
                let Some(nic) = &inst.nic else {
                    return Err(PoolProblem::NoPrimaryNic(format!(
                        "vmss vm({})",
                        inst.computer_name
                    )));
                };
                let desired = desired_nic(nic, &ip_configs, &keeping, NicFlavor::Vmss, "vmss vm")?;
                if let Some(reason) = update_reason(
                    &inst.provisioning_state,
                    nic,
                    &desired,
                    &inst.addresses,
                    &ip_configs,
                ) {
                    nic_updates.push(NicUpdate {
                        target: inst.instance_id.clone(),
                        nic: desired,
                        reason,
                    });
                }
            }
        }
        PoolKind::Vm => {
            let mut wanted_pips = BTreeSet::new();
            let mut still_used: BTreeSet<String> = BTreeSet::new();
            for vm_nic in &state.vm_nics {
                let flavor = NicFlavor::Vm {
                    nic_name: &vm_nic.name,
                    env,
                };
                let desired = desired_nic(&vm_nic.nic, &ip_configs, &keeping, flavor, "nic")?;
                for ipc in &desired.ip_configs {
                    // Whatever the NIC keeps using (a kept configuration's public IP too) stays.
                    if let Some(pip_id) = &ipc.public_ip_address_id {
                        still_used.insert(last_segment(pip_id).to_ascii_lowercase());
                    }
                    if let (Some(pip_id), Some((_, prefix_id))) = (
                        &ipc.public_ip_address_id,
                        ip_configs.iter().find(|(n, _)| eq_ci(n, &ipc.name)),
                    ) {
                        let name = last_segment(pip_id).to_string();
                        wanted_pips.insert(name.to_ascii_lowercase());
                        if !state.public_ips.contains_key(&name.to_ascii_lowercase())
                            && let Some(prefix_id) = prefix_id
                        {
                            public_ips_to_create.insert(PublicIpCreate {
                                name,
                                prefix_id: prefix_id.clone(),
                            });
                        }
                    }
                }
                if let Some(reason) = update_reason(
                    &vm_nic.provisioning_state,
                    &vm_nic.nic,
                    &desired,
                    &vm_nic.addresses,
                    &ip_configs,
                ) {
                    nic_updates.push(NicUpdate {
                        target: vm_nic.name.clone(),
                        nic: desired,
                        reason,
                    });
                }
            }
            // Public IPs the operator created that no NIC uses any more. The resource group holds others (the
            // user's, another VM pool's of a shared BYO prefix), so only those it can tell are its own go: tagged
            // with this pool's uid when it created them, or (created before the tag) named exactly as it names the
            // public IP of one of this pool's NICs on the prefix the IP is allocated from. That is judged from the
            // IP itself, not from the configurations, so the IPs of a prefix a configuration no longer uses
            // (switched from BYO to managed or private, or to another BYO prefix) go too, and with the tag those
            // of a NIC that is gone. Those of a prefix a kept configuration may use stay, and so does one that an
            // ipConfiguration of no NIC of this pool uses (ARM would refuse to delete it).
            let named_here = |name: &str, ip: &PublicIp| {
                state.vm_nics.iter().any(|nic| {
                    eq_ci(
                        &vm_pool_public_ip_name(last_segment(&ip.prefix_id), &nic.name),
                        name,
                    )
                })
            };
            let tagged_here = |ip: &PublicIp| ip.pool.as_deref().is_some_and(|p| eq_ci(p, &pool.uid));
            let pool_nics: BTreeSet<String> = state
                .vm_nics
                .iter()
                .map(|nic| env.nic_id(&nic.name).to_ascii_lowercase())
                .collect();
            let used_elsewhere = |ip: &PublicIp| {
                ip.used_by
                    .as_deref()
                    .is_some_and(|id| !pool_nics.contains(&nic_of(id).to_ascii_lowercase()))
            };
            let of_kept: BTreeSet<String> = kept(configs).flat_map(Config::public_ip_prefix_names).collect();
            for (name, ip) in &state.public_ips {
                let named = named_here(name, ip);
                if !(named || tagged_here(ip)) || used_elsewhere(ip) {
                    continue;
                }
                if !of_kept.contains(&last_segment(&ip.prefix_id).to_ascii_lowercase())
                    && !wanted_pips.contains(name)
                    && !still_used.contains(name)
                {
                    public_ips_to_delete.push(name.clone());
                } else if named && ip.pool.is_none() {
                    // Made before the tag: tagged now, while its name still tells it is ours.
                    public_ips_to_tag.push(PublicIpCreate {
                        name: name.clone(),
                        prefix_id: ip.prefix_id.clone(),
                    });
                }
            }
        }
    }

    // Managed and adopted prefixes of configurations that are deleted, or switched to BYO / private (or from
    // one of the two to the other). A prefix still used by another configuration stays, and a kept
    // configuration's prefixes all stay.
    let in_use: BTreeSet<String> = configs.iter().flat_map(Config::used_owned_prefixes).collect();
    let mut prefixes_to_delete = Vec::new();
    for c in configs.iter().filter(|c| !c.kept) {
        for name in c.owned_prefix_names() {
            if in_use.contains(&name) || prefixes_to_delete.iter().any(|d: &String| eq_ci(d, &name)) {
                continue;
            }
            let Some(p) = state.managed_prefixes.get(&name) else {
                continue;
            };
            // Standalone public IPs (VM pools) only: a scale set's instance addresses go with the ipConfiguration.
            for pip in p
                .public_ip_ids
                .iter()
                .filter(|id| !id.to_ascii_lowercase().contains("/virtualmachinescalesets/"))
            {
                let pip = last_segment(pip).to_ascii_lowercase();
                if !public_ips_to_delete.contains(&pip) {
                    public_ips_to_delete.push(pip);
                }
            }
            prefixes_to_delete.push(name);
        }
    }

    Ok(PoolPlan {
        prefixes_to_create,
        public_ips_to_create: public_ips_to_create.into_iter().collect(),
        public_ips_to_tag,
        lb: lb_plan.write,
        vmss_model,
        nic_updates,
        public_ips_to_delete,
        prefixes_to_delete,
        ports: lb_plan.ports,
        problems,
    })
}

fn update_reason(
    provisioning_state: &str,
    current: &Nic,
    desired: &Nic,
    addresses: &NicAddresses,
    wanted: &[(String, Option<String>)],
) -> Option<UpdateReason> {
    if current != desired {
        return Some(UpdateReason::Differs);
    }
    if eq_ci(provisioning_state, FAILED) {
        return Some(UpdateReason::Failed);
    }
    let missing = !wanted.is_empty()
        && (addresses.primary_ip.is_none()
            || wanted
                .iter()
                .any(|(n, _)| !addresses.by_ip_config.contains_key(&n.to_ascii_lowercase())));
    missing.then_some(UpdateReason::MissingAddresses)
}

/// The NIC's ARM ID in the ARM ID of a NIC's ipConfiguration (`<nic id>/ipConfigurations/<name>`); the ID
/// itself when it names no ipConfiguration.
fn nic_of(ip_config_id: &str) -> &str {
    ip_config_id
        .to_ascii_lowercase()
        .rfind("/ipconfigurations/")
        .map_or(ip_config_id, |i| &ip_config_id[..i])
}

/// The last segment of an ARM ID: the resource name.
pub fn last_segment(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

/// Whether a NIC belongs to a scale set (public IP configurations) or a VM pool (public IP addresses).
#[derive(Clone, Copy, Debug)]
enum NicFlavor<'a> {
    Vmss,
    Vm { nic_name: &'a str, env: &'a Env },
}

fn is_gateway_ip_config(name: &str) -> bool {
    name.len() >= api::names::MANAGED_RESOURCE_PREFIX.len()
        && name[..api::names::MANAGED_RESOURCE_PREFIX.len()]
            .eq_ignore_ascii_case(api::names::MANAGED_RESOURCE_PREFIX)
}

/// Same ipConfiguration as far as the operator owns it (ARM compares IDs case-insensitively; upstream's
/// `different()` fields).
fn same_ip_config(a: &IpConfig, b: &IpConfig) -> bool {
    let ids = |x: &Option<String>, y: &Option<String>| match (x, y) {
        (Some(x), Some(y)) => eq_ci(x, y),
        (None, None) => true,
        _ => false,
    };
    let pip_cfg = match (&a.public_ip_config, &b.public_ip_config) {
        (Some((an, ai)), Some((bn, bi))) => eq_ci(an, bn) && eq_ci(ai, bi),
        (None, None) => true,
        _ => false,
    };
    a.primary == b.primary
        && a.ipv4 == b.ipv4
        && ids(&a.subnet_id, &b.subnet_id)
        && pip_cfg
        && ids(&a.public_ip_address_id, &b.public_ip_address_id)
}

/// What a NIC keeps as it is: the kept configurations' ipConfigurations (names), and the pool's backend pool.
struct Keeping<'a> {
    ip_configs: &'a [String],
    backend_id: &'a str,
}

/// The desired primary NIC: one secondary ipConfiguration per wanted configuration, a kept configuration's
/// as it is where it exists, none for others; the pool's backend pool on the primary ipConfiguration when any
/// configuration is wanted, off it when no gateway ipConfiguration remains, and as it is when only kept ones
/// remain.
fn desired_nic(
    current: &Nic,
    wanted: &[(String, Option<String>)],
    keeping: &Keeping<'_>,
    flavor: NicFlavor<'_>,
    what: &str,
) -> Result<Nic, PoolProblem> {
    let primary_idx = match current.ip_configs.iter().position(|c| c.primary) {
        Some(i) => i,
        None if current.ip_configs.len() == 1 => 0,
        None => return Err(PoolProblem::NoPrimaryIpConfig(what.to_string())),
    };
    let subnet = current.ip_configs[primary_idx].subnet_id.clone();
    let expected = |name: &str, prefix: &Option<String>| {
        let mut c = IpConfig {
            name: name.to_string(),
            primary: false,
            ipv4: true,
            subnet_id: subnet.clone(),
            ..IpConfig::default()
        };
        if let Some(prefix_id) = prefix {
            match flavor {
                NicFlavor::Vmss => c.public_ip_config = Some((name.to_string(), prefix_id.clone())),
                NicFlavor::Vm { nic_name, env } => {
                    let pip = vm_pool_public_ip_name(last_segment(prefix_id), nic_name);
                    c.public_ip_address_id = Some(env.public_ip_id(&pip));
                }
            }
        }
        c
    };

    // By name, lower-cased: one lookup per ipConfiguration, not a scan (a pool may have 1000 configurations).
    let wanted_by_name: BTreeMap<String, &(String, Option<String>)> =
        wanted.iter().map(|w| (w.0.to_ascii_lowercase(), w)).collect();
    let keeping_names: BTreeSet<String> = keeping
        .ip_configs
        .iter()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    let mut out = Vec::with_capacity(current.ip_configs.len() + wanted.len());
    for (i, c) in current.ip_configs.iter().enumerate() {
        if i == primary_idx || !is_gateway_ip_config(&c.name) {
            out.push(c.clone());
            continue;
        }
        let lower = c.name.to_ascii_lowercase();
        if let Some((name, prefix)) = wanted_by_name.get(&lower) {
            let want = expected(name, prefix);
            out.push(if same_ip_config(c, &want) {
                c.clone()
            } else {
                IpConfig {
                    backend_pools: c.backend_pools.clone(),
                    ..want
                }
            });
        } else if keeping_names.contains(&lower) {
            out.push(c.clone());
        }
    }
    let present: BTreeSet<String> = out.iter().map(|c| c.name.to_ascii_lowercase()).collect();
    for (name, prefix) in wanted {
        if !present.contains(&name.to_ascii_lowercase()) {
            out.push(expected(name, prefix));
        }
    }

    let primary_name = current.ip_configs[primary_idx].name.clone();
    let has_gateway = out
        .iter()
        .any(|c| c.name != primary_name && is_gateway_ip_config(&c.name));
    if let Some(primary) = out.iter_mut().find(|c| c.name == primary_name) {
        if !wanted.is_empty() {
            adjust_backend(primary, keeping.backend_id, true);
        } else if !has_gateway {
            adjust_backend(primary, keeping.backend_id, false);
        }
        // Only kept ipConfigurations remain: the backend pool stays as it is.
    }
    Ok(Nic { ip_configs: out })
}

fn adjust_backend(primary: &mut IpConfig, backend_id: &str, present: bool) {
    let has = primary.backend_pools.iter().any(|b| eq_ci(b, backend_id));
    if present && !has {
        primary.backend_pools.push(backend_id.to_string());
    } else if !present && has {
        primary.backend_pools.retain(|b| !eq_ci(b, backend_id));
    }
}

/// The load-balancer part of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbPlan {
    /// The write.
    pub write: LbWrite,
    /// uid → port of every configuration with a rule.
    pub ports: BTreeMap<String, u16>,
    /// Configurations that got no port: [`plan_pool`] keeps them and plans the load balancer again.
    pub problems: BTreeMap<String, ConfigProblem>,
}

fn rule_is_expected(r: &LbRule, pool_uid: &str, config_uid: &str) -> bool {
    eq_ci(&r.protocol, RULE_PROTOCOL)
        && r.floating_ip
        && opt_eq_ci(r.frontend.as_deref(), pool_uid)
        && opt_eq_ci(r.backend.as_deref(), pool_uid)
        && opt_eq_ci(r.probe.as_deref(), config_uid)
}

/// A rule's port when it is usable: frontend = backend, inside 6000..7000.
fn valid_port(r: &LbRule) -> Option<u16> {
    let port = r.frontend_port?;
    if r.backend_port != Some(port) {
        return None;
    }
    let port = u16::try_from(port).ok()?;
    (WIREGUARD_PORT_START..WIREGUARD_PORT_END)
        .contains(&port)
        .then_some(port)
}

fn expected_probe(config_uid: &str, env: &Env) -> Probe {
    Probe {
        name: config_uid.to_string(),
        protocol: PROBE_PROTOCOL.to_string(),
        port: env.probe_port,
        path: Some(lb_probe_path(config_uid)),
        interval: Some(api::names::LB_PROBE_INTERVAL_SECONDS),
        threshold: Some(api::names::LB_PROBE_THRESHOLD),
    }
}

fn same_probe(a: &Probe, b: &Probe) -> bool {
    eq_ci(&a.protocol, &b.protocol)
        && a.port == b.port
        && a.path == b.path
        && a.interval == b.interval
        && a.threshold == b.threshold
}

/// The desired load balancer for one pool. Entries of other pools are left untouched. An existing rule keeps
/// its port (stable across restarts: the port lives in Azure); a new or replaced rule gets the lowest free
/// port of the pool's backend pool. A kept configuration's rule and probe stay as they are, and its port is
/// taken. The pool is known by its uid alone: the name of its frontend and backend.
pub fn plan_lb(
    pool_uid: &str,
    configs: &[Config],
    current: Option<&Lb>,
    env: &Env,
    kept_on_nics: bool,
) -> LbPlan {
    let uid = pool_uid;
    let wanted: Vec<&Config> = wanted(configs).collect();
    // By uid, lower-cased (ARM names are case-insensitive): one lookup per rule or probe, not a scan.
    let wanted_by_uid: BTreeMap<String, &Config> =
        wanted.iter().map(|c| (c.uid.to_ascii_lowercase(), *c)).collect();
    let kept_uids: BTreeSet<String> = kept(configs).map(|c| c.uid.to_ascii_lowercase()).collect();
    let all_uids: BTreeSet<String> = configs.iter().map(|c| c.uid.to_ascii_lowercase()).collect();
    let is_wanted = |name: &str| wanted_by_uid.contains_key(&name.to_ascii_lowercase());
    let is_kept = |name: &str| kept_uids.contains(&name.to_ascii_lowercase());
    let names_a_config = |name: &str| all_uids.contains(&name.to_ascii_lowercase());
    let mut lb = current.cloned().unwrap_or_default();
    lb.failed = false;
    let mut problems = BTreeMap::new();

    // Rules of this pool that no wanted configuration owns (deleted configurations, leaks), and wanted rules
    // that are wrong or have an unusable port (replaced below with a fresh port).
    let mut ports: BTreeMap<String, u16> = BTreeMap::new();
    let mut used: BTreeSet<u16> = BTreeSet::new();
    let mut dropped_probes: BTreeSet<String> = BTreeSet::new();
    let on_pool = |r: &LbRule| opt_eq_ci(r.backend.as_deref(), uid) || opt_eq_ci(r.frontend.as_deref(), uid);
    // Kept configurations' rules stay as they are: their ports are taken before any other rule's.
    for r in lb.rules.iter().filter(|r| is_kept(&r.name) && on_pool(r)) {
        used.extend(
            [r.frontend_port, r.backend_port]
                .into_iter()
                .flatten()
                .filter_map(|p| u16::try_from(p).ok()),
        );
    }
    let mut rules_left = Vec::with_capacity(lb.rules.len());
    for r in std::mem::take(&mut lb.rules) {
        let ours = on_pool(&r) || names_a_config(&r.name);
        if !ours || is_kept(&r.name) {
            rules_left.push(r);
            continue;
        }
        let owner = wanted_by_uid.get(&r.name.to_ascii_lowercase());
        let keep = owner.is_some_and(|c| !ports.contains_key(&c.uid))
            && rule_is_expected(&r, uid, &r.name)
            && valid_port(&r).is_some_and(|p| !used.contains(&p));
        if keep {
            if let (Some(p), Some(c)) = (valid_port(&r), owner) {
                used.insert(p);
                ports.insert(c.uid.clone(), p);
            }
            rules_left.push(r);
        } else if let Some(p) = &r.probe {
            dropped_probes.insert(p.to_ascii_lowercase());
        }
    }
    lb.rules = rules_left;
    // The port a kept configuration's status advertises stays reserved (its pods may still use it) unless an
    // existing rule of another configuration holds it (that rule keeps it). A configuration that has no rule
    // gets the port its status advertises back when that port is free, before any new rule takes the lowest.
    let in_range = |p: &u16| (WIREGUARD_PORT_START..WIREGUARD_PORT_END).contains(p);
    used.extend(kept(configs).filter_map(|c| c.status_port).filter(in_range));
    let mut advertised: BTreeMap<&str, u16> = BTreeMap::new();
    for c in wanted.iter().filter(|c| !ports.contains_key(&c.uid)) {
        if let Some(p) = c.status_port.filter(in_range)
            && used.insert(p)
        {
            advertised.insert(&c.uid, p);
        }
    }

    // Probes: drop those of unwanted configurations and of dropped rules unless still referenced.
    let referenced: BTreeSet<String> = lb
        .rules
        .iter()
        .filter_map(|r| r.probe.as_deref().map(str::to_ascii_lowercase))
        .collect();
    lb.probes.retain(|p| {
        let lower = p.name.to_ascii_lowercase();
        let ours = names_a_config(&p.name) || dropped_probes.contains(&lower);
        !ours || is_wanted(&p.name) || is_kept(&p.name) || referenced.contains(&lower)
    });

    if wanted.is_empty() {
        // What still uses the frontend and backend pool keeps them: a rule left on them (a kept configuration's),
        // or a NIC that still carries a kept configuration's ipConfiguration (its primary ipConfiguration stays
        // in the backend pool, so neither the pool nor the load balancer can go; the frontend stays with them).
        // A kept configuration with nothing in Azure keeps nothing.
        let referenced_fe = lb.rules.iter().any(|r| opt_eq_ci(r.frontend.as_deref(), uid));
        let referenced_be = lb.rules.iter().any(|r| opt_eq_ci(r.backend.as_deref(), uid));
        if !referenced_fe && !kept_on_nics {
            lb.frontends.retain(|f| !eq_ci(&f.name, uid));
        }
        if !referenced_be && !kept_on_nics {
            lb.backends.retain(|b| !eq_ci(b, uid));
        }
    } else {
        if !lb.frontends.iter().any(|f| eq_ci(&f.name, uid)) {
            lb.frontends.push(Frontend {
                name: uid.to_string(),
                private_ip: None,
                subnet_id: Some(env.frontend_subnet_id.clone()),
            });
        }
        if !lb.backends.iter().any(|b| eq_ci(b, uid)) {
            lb.backends.push(uid.to_string());
        }
        let fe_name = lb
            .frontends
            .iter()
            .find(|f| eq_ci(&f.name, uid))
            .map_or_else(|| uid.to_string(), |f| f.name.clone());
        let be_name = lb
            .backends
            .iter()
            .find(|b| eq_ci(b, uid))
            .cloned()
            .unwrap_or_else(|| uid.to_string());
        let mut probe_at: BTreeMap<String, usize> = lb
            .probes
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.to_ascii_lowercase(), i))
            .collect();
        // `used` only grows below, so the lowest free port never goes down.
        let mut lowest_free = WIREGUARD_PORT_START;
        for c in &wanted {
            let want = expected_probe(&c.uid, env);
            match probe_at
                .get(&c.uid.to_ascii_lowercase())
                .map(|&i| &mut lb.probes[i])
            {
                Some(p) if same_probe(p, &want) => {}
                Some(p) => {
                    *p = Probe {
                        name: p.name.clone(),
                        ..want
                    }
                }
                None => {
                    probe_at.insert(c.uid.to_ascii_lowercase(), lb.probes.len());
                    lb.probes.push(want);
                }
            }
            if ports.contains_key(&c.uid) {
                continue;
            }
            let free = (lowest_free..WIREGUARD_PORT_END).find(|p| !used.contains(p));
            lowest_free = free.unwrap_or(WIREGUARD_PORT_END);
            let Some(port) = advertised.get(c.uid.as_str()).copied().or(free) else {
                problems.insert(
                    c.uid.clone(),
                    ConfigProblem::NoAvailablePorts(WIREGUARD_PORT_END - WIREGUARD_PORT_START),
                );
                continue;
            };
            used.insert(port);
            ports.insert(c.uid.clone(), port);
            lb.rules.push(LbRule {
                name: c.uid.clone(),
                protocol: RULE_PROTOCOL.to_string(),
                floating_ip: true,
                frontend: Some(fe_name.clone()),
                backend: Some(be_name.clone()),
                probe: Some(c.uid.clone()),
                frontend_port: Some(i32::from(port)),
                backend_port: Some(i32::from(port)),
            });
        }
        // Those that got no port get no probe either.
        lb.probes.retain(|p| !problems.keys().any(|u| eq_ci(u, &p.name)));
    }

    let write = match current {
        None if lb == Lb::default() => LbWrite::Keep,
        None => LbWrite::Put {
            lb,
            after_nics: false,
        },
        Some(cur) if *cur == lb => LbWrite::Keep,
        Some(_) if lb.frontends.is_empty() => LbWrite::Delete,
        Some(cur) => {
            let backend_removed =
                cur.backends.iter().any(|b| eq_ci(b, uid)) && !lb.backends.iter().any(|b| eq_ci(b, uid));
            LbWrite::Put {
                lb,
                after_nics: backend_removed,
            }
        }
    };
    LbPlan {
        write,
        ports,
        problems,
    }
}

// ---------------------------------------------------------------------------------------------
// Adopting upstream's prefixes
// ---------------------------------------------------------------------------------------------

/// A public IP prefix of the node resource group, as a LIST of the group shows it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ListedPrefix {
    /// Name.
    pub name: String,
    /// `properties.ipPrefix`.
    pub cidr: Option<String>,
    /// `properties.prefixLength`.
    pub prefix_len: Option<i32>,
}

/// A configuration as adoption sees it: the plan's view and the `status.egressIpPrefix` it has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdoptionCandidate {
    /// The configuration.
    pub config: Config,
    /// Its `status.egressIpPrefix`.
    pub status_cidr: Option<String>,
}

/// Why a configuration that could adopt a prefix adopts none (it gets its own new prefix, as before).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoAdoption {
    /// No prefix fits.
    #[error(
        "no public ip prefix named egressgateway-<UUID of no StaticGatewayConfiguration> with ipPrefix {cidr} and length {prefix_len}, adopted by no other configuration"
    )]
    NoMatch {
        /// The status CIDR.
        cidr: String,
        /// The pool's prefix length.
        prefix_len: i32,
    },
    /// More than one prefix fits.
    #[error("public ip prefixes {} all have ipPrefix {cidr}: none is adopted", .names.join(", "))]
    Ambiguous {
        /// The status CIDR.
        cidr: String,
        /// The prefixes that fit.
        names: Vec<String>,
    },
    /// Another configuration wants the same prefix.
    #[error("configurations {} also have egressIpPrefix {cidr}: none adopts its prefix", .others.join(", "))]
    SharedCidr {
        /// The status CIDR.
        cidr: String,
        /// The other configurations' uids.
        others: Vec<String>,
    },
}

fn parse_v4(cidr: &str) -> Option<ipnet::Ipv4Net> {
    cidr.trim().parse().ok()
}

/// Whether `c` may adopt a prefix, as far as the configuration alone tells: public with neither a BYO prefix
/// nor an adopted one, not being deleted, and a `status.egressIpPrefix` that is an IPv4 CIDR (what an
/// upstream-migrated public configuration has). Whether its own prefix exists is for [`plan_adoptions`].
pub fn may_adopt(c: &Config, status_cidr: Option<&str>) -> bool {
    !c.deleting
        && c.egress == Egress::Managed
        && c.adopted.is_none()
        && status_cidr.and_then(parse_v4).is_some()
}

/// `egressgateway-<UUID>` where the UUID is no known configuration's uid: a prefix the operator may adopt.
fn is_foreign_managed_name(name: &str, known_uids: &BTreeSet<String>) -> bool {
    api::names::managed_name_uuid(name).is_some_and(|uuid| !known_uids.contains(&uuid.to_ascii_lowercase()))
}

/// Which configurations adopt which of the `listed` prefixes (the node resource group's). A configuration
/// that [`may_adopt`] and whose own prefix `egressgateway-<uid>` is not listed adopts the one prefix that is
/// named `egressgateway-<UUID>` with a UUID not in `known_uids` (lower-cased: every configuration's uid), has
/// its `status.egressIpPrefix` as ipPrefix and the pool's length, and is not in `taken` (lower-cased names
/// adopted already by any configuration). Exactly one such prefix, and no other candidate with the same CIDR:
/// `Ok(name)`; otherwise `Err(why)`. Configurations that cannot adopt get no entry.
pub fn plan_adoptions(
    pool: &Pool,
    candidates: &[AdoptionCandidate],
    listed: &[ListedPrefix],
    known_uids: &BTreeSet<String>,
    taken: &BTreeSet<String>,
) -> BTreeMap<String, Result<String, NoAdoption>> {
    let listed_names: BTreeSet<String> = listed.iter().map(|p| p.name.to_ascii_lowercase()).collect();
    let seeking: Vec<(&Config, ipnet::Ipv4Net, &str)> = candidates
        .iter()
        .filter(|a| may_adopt(&a.config, a.status_cidr.as_deref()))
        .filter(|a| !listed_names.contains(&managed_resource_name(&a.config.uid).to_ascii_lowercase()))
        .filter_map(|a| {
            let raw = a.status_cidr.as_deref()?;
            Some((&a.config, parse_v4(raw)?, raw.trim()))
        })
        .collect();
    let mut out = BTreeMap::new();
    for (c, net, raw) in &seeking {
        let others: Vec<String> = seeking
            .iter()
            .filter(|(o, n, _)| o.uid != c.uid && n == net)
            .map(|(o, _, _)| o.uid.clone())
            .collect();
        if !others.is_empty() {
            out.insert(
                c.uid.clone(),
                Err(NoAdoption::SharedCidr {
                    cidr: raw.to_string(),
                    others,
                }),
            );
            continue;
        }
        let matches: Vec<&ListedPrefix> = listed
            .iter()
            .filter(|p| is_foreign_managed_name(&p.name, known_uids))
            .filter(|p| !taken.contains(&p.name.to_ascii_lowercase()))
            .filter(|p| p.prefix_len == Some(pool.prefix_len))
            .filter(|p| p.cidr.as_deref().and_then(parse_v4) == Some(*net))
            .collect();
        let verdict = match matches.as_slice() {
            [one] => Ok(one.name.clone()),
            [] => Err(NoAdoption::NoMatch {
                cidr: raw.to_string(),
                prefix_len: pool.prefix_len,
            }),
            many => Err(NoAdoption::Ambiguous {
                cidr: raw.to_string(),
                names: many.iter().map(|p| p.name.clone()).collect(),
            }),
        };
        out.insert(c.uid.clone(), verdict);
    }
    out
}

/// Checks the value of a configuration's [`api::names::ADOPTED_PREFIX_ANNOTATION`]: the ARM ID of a public IP
/// prefix in the node resource group (`subscription`, `resource_group`) named `egressgateway-<UUID>`, where
/// the UUID is no known configuration's uid (`known_uids`, lower-cased), so that the annotation can never make
/// the operator delete a prefix that is not a left-over of an upstream installation. Returns the prefix name.
pub fn check_adopted_annotation(
    value: &str,
    subscription: &str,
    resource_group: &str,
    known_uids: &BTreeSet<String>,
) -> Result<String, String> {
    let annotation = api::names::ADOPTED_PREFIX_ANNOTATION;
    // The value's shape: the webhook's check, with every configuration's uid taken instead of its own.
    let id = api::rules::adopted_prefix_id(value, |uuid| known_uids.contains(&uuid.to_ascii_lowercase()))
        .map_err(|e| format!("annotation {annotation}: {e}"))?;
    let rule = format!(
        "the prefix must be in the node resource group {resource_group} of subscription {subscription}, named {}<UUID>",
        api::names::MANAGED_RESOURCE_PREFIX
    );
    if !id.subscription.eq_ignore_ascii_case(subscription) {
        return Err(format!(
            "annotation {annotation} names a prefix in subscription {}, not the cluster's; {rule}",
            id.subscription
        ));
    }
    if !id.resource_group.eq_ignore_ascii_case(resource_group) {
        return Err(format!(
            "annotation {annotation} names a prefix in resource group {}; {rule}",
            id.resource_group
        ));
    }
    Ok(id.name)
}

/// A configuration's [`api::names::ADOPTED_PREFIX_ANNOTATION`], as [`check_adoption_claims`] takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdoptionClaim {
    /// The configuration's uid.
    pub uid: String,
    /// `namespace/name`, for messages.
    pub who: String,
    /// The annotation's value.
    pub value: String,
}

/// Every configuration's adoption annotation checked ([`check_adopted_annotation`]), `claims` given oldest
/// first: of two configurations naming the same prefix the older keeps it, the other is refused. Returns the
/// verdict per uid, and the names (lower-cased) of every prefix an annotation names (valid or not: none of
/// them is adopted again).
pub fn check_adoption_claims(
    claims: &[AdoptionClaim],
    subscription: &str,
    resource_group: &str,
    known_uids: &BTreeSet<String>,
) -> (BTreeMap<String, Result<String, String>>, BTreeSet<String>) {
    let mut taken = BTreeSet::new();
    let mut owner: BTreeMap<String, &str> = BTreeMap::new();
    let mut checked = BTreeMap::new();
    for claim in claims {
        if let Ok(id) = api::arm::parse_public_ip_prefix_id(claim.value.trim()) {
            taken.insert(id.name.to_ascii_lowercase());
        }
        let verdict = check_adopted_annotation(&claim.value, subscription, resource_group, known_uids)
            .and_then(|name| match owner.get(&name.to_ascii_lowercase()) {
                Some(first) => Err(format!(
                    "annotation {} names prefix {name}, which configuration {first} adopted; a prefix is adopted by \
                     one configuration only",
                    api::names::ADOPTED_PREFIX_ANNOTATION
                )),
                None => {
                    owner.insert(name.to_ascii_lowercase(), &claim.who);
                    Ok(name)
                }
            });
        checked.insert(claim.uid.clone(), verdict);
    }
    (checked, taken)
}

// ---------------------------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------------------------

/// What Azure says about one configuration after the writes: the facts its status reports.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ConfigFacts {
    /// The pool's frontend IP.
    pub frontend_ip: Option<String>,
    /// The configuration's port.
    pub port: Option<u16>,
    /// Prefix CIDR (public) or comma-joined secondary private IPs (private mode), when known.
    pub egress_ip_prefix: Option<String>,
    /// Per node: (node name, primary IP, secondary IP).
    pub vm_profiles: Vec<api::GatewayVmProfile>,
    /// Instances (VMSS computer names, or VM-pool NIC names) without this configuration's secondary IP yet,
    /// sorted: in private-IP mode they are left out of `egress_ip_prefix`, and reported.
    pub without_address: Vec<String>,
    /// Set by the pass, not read from Azure: the pool has more gateway nodes than its public prefix has
    /// addresses (what it says). The configuration stays provisioned as it was; the status reports this.
    pub pool_exceeds_prefix: Option<String>,
    /// Set by the pass: instance (or NIC) updates ARM refused for that instance alone, as `<name>: <error>`.
    pub refused_updates: Vec<String>,
}

impl ConfigFacts {
    /// Everything a pod needs from Azure is known.
    pub fn is_complete(&self) -> bool {
        self.frontend_ip.is_some() && self.port.is_some() && self.egress_ip_prefix.is_some()
    }
}

/// Reads a configuration's facts from the (re-read) Azure state. `prefix_cidr` is the BYO or managed prefix's
/// CIDR in public mode.
pub fn config_facts(
    pool: &Pool,
    config: &Config,
    state: &AzureState,
    ports: &BTreeMap<String, u16>,
    prefix_cidr: Option<&str>,
) -> ConfigFacts {
    let frontend_ip = state
        .lb
        .as_ref()
        .and_then(|lb| lb.frontends.iter().find(|f| eq_ci(&f.name, &pool.uid)))
        .and_then(|f| f.private_ip.clone());
    let ip_config = managed_resource_name(&config.uid).to_ascii_lowercase();
    let nodes: Vec<(&str, &NicAddresses)> = match pool.kind {
        PoolKind::Vmss => state
            .instances
            .iter()
            .map(|i| (i.computer_name.as_str(), &i.addresses))
            .collect(),
        PoolKind::Vm => state
            .vm_nics
            .iter()
            .map(|n| (n.name.as_str(), &n.addresses))
            .collect(),
    };
    let mut vm_profiles: Vec<api::GatewayVmProfile> = nodes
        .iter()
        .filter_map(|(node, a)| {
            Some(api::GatewayVmProfile {
                node_name: node.to_string(),
                primary_ip: a.primary_ip.clone()?,
                secondary_ip: a.by_ip_config.get(&ip_config)?.clone(),
            })
        })
        .collect();
    vm_profiles.sort_by(|a, b| a.node_name.cmp(&b.node_name));
    let mut without_address: Vec<String> = nodes
        .iter()
        .map(|(node, _)| node.to_string())
        .filter(|node| !vm_profiles.iter().any(|p| p.node_name == *node))
        .collect();
    without_address.sort();
    let egress_ip_prefix = match config.egress {
        // The addresses that exist, as upstream lists them: one instance still without its address (a new
        // node, a failed update) must not take the configuration off the gateways that have theirs. The
        // instances still without one are in `without_address`, and the status says so.
        Egress::Private => (!vm_profiles.is_empty()).then(|| {
            vm_profiles
                .iter()
                .map(|p| p.secondary_ip.as_str())
                .collect::<Vec<_>>()
                .join(",")
        }),
        Egress::Managed | Egress::Byo { .. } | Egress::Adopted { .. } => prefix_cidr.map(str::to_string),
    };
    ConfigFacts {
        frontend_ip,
        port: ports.get(&config.uid).copied(),
        egress_ip_prefix,
        vm_profiles,
        without_address,
        pool_exceeds_prefix: None,
        refused_updates: Vec::new(),
    }
}

#[cfg(test)]
#[path = "desired_tests.rs"]
mod tests;
