//! The lab's steps, in order, and the teardown that always runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::net::Ipv4Addr;

use anyhow::{Context as _, anyhow, bail};
use api::StaticGatewayConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use super::chart::{self, LaunchSpec, Localize};
use super::images::{self, Place};
use super::kube_api::{self, KubeApi};
use super::kubelet::{self, Heartbeat};
use super::procs::{Children, live_children, tail};
use super::{Options, info, ok, step};
use super::{fabric, runtime};
use crate::azure::{AzureSim, Seed};
use crate::cluster::Backend;
use crate::files::write_private;

/// The chart's release namespace: the components' namespace.
pub(super) const SYSTEM_NS: &str = "kube-egress-gateway-system";
/// The chart's release name.
const RELEASE: &str = "kube-egress-gateway";
/// Namespace of the demo configuration and pods.
pub(super) const DEMO_NS: &str = "demo";
/// The chart's workloads (and, for the webhook, its Service).
const WEBHOOK: &str = "kube-egress-gateway-webhook";
const OPERATOR: &str = "kube-egress-gateway-operator";
const GATEWAY_AGENT: &str = "kube-egress-gateway-gateway-agent";
const NODE_AGENT: &str = "kube-egress-gateway-node-agent";
/// The gateway node pool (AKS agent pool name, and the GatewayPool's name).
pub(super) const POOL: &str = "gwpool";
/// The gateway node pool Terraform declares a GatewayPool for (scenario 8); nothing uses it before.
pub(super) const TF_POOL: &str = "tfpool";
/// The demo StaticGatewayConfiguration.
pub(super) const SGC: &str = "egress";
/// The regular node pool.
const NODE_POOL: &str = "nodepool1";
/// The VM-based gateway pool (AKS VirtualMachines pool with pre-created NICs: private IP mode), and the
/// GatewayPool scenario 6 declares for it.
pub(super) const VM_POOL: &str = "gwvms";
/// Its VMs (each with one pre-created NIC).
const VM_POOL_VMS: u32 = 2;
/// The on-premises echo host (reached over a private link: ExpressRoute/VPN, no SNAT) in the range scenario 6
/// routes through the gateways (`excludeCidrs`), and a second address of it outside that range.
pub(super) const ONPREM_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 10);
pub(super) const ONPREM_RANGE: &str = "192.168.100.0/24";
pub(super) const ONPREM_OTHER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 10);
/// The fabric's address on every VM link (the VMs' default gateway, as Azure's x.x.x.1).
const FABRIC_GW: Ipv4Addr = Ipv4Addr::new(10, 224, 0, 1);
/// The "internet" echo host and its service port.
pub(super) const ECHO_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub(super) const ECHO_PORT: u16 = 7777;
/// A second address of the echo host, listed in the configuration's `excludeCidrs`.
const ECHO_EXCLUDED_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
/// The pods: (name, node index, annotated).
pub(super) const PODS: [(&str, usize, bool); 2] = [("egress-client", 0, true), ("plain-client", 1, false)];

/// Everything the lab started, so teardown can stop it whatever happened.
#[derive(Default)]
pub(super) struct Lab {
    pub(super) children: Children,
    pub(super) kube: Option<KubeApi>,
    /// The kubelet's part for every Node the lab registers (Ready, Lease renewed).
    pub(super) heartbeat: Option<Heartbeat>,
    /// On the real server: the namespace whose veth's host end carries the Deployments' pod IPs.
    pub(super) pod_network: Option<PodNetwork>,
    pub(super) azure: Option<AzureSim>,
    pub(super) client: Option<kube::Client>,
    pub(super) kubeconfig: PathBuf,
    /// The chart as rendered for the lab and applied to kube-sim.
    pub(super) chart: chart::Rendered,
    /// The step that is running (number, name), for the failure message.
    pub(super) current: (usize, &'static str),
    /// UID and gateway profiles of the demo configuration once Ready.
    pub(super) sgc_uid: String,
    pub(super) profiles: Vec<api::sgc::GatewayVmProfile>,
    /// Network namespaces the lab created (`ip netns` names) and their inodes.
    pub(super) netns: Vec<String>,
    pub(super) netns_inodes: Vec<u64>,
    /// Loopback forwarders into the namespaces, the echo host's service.
    pub(super) forwarders: Vec<tokio::task::JoinHandle<()>>,
    /// The Azure fabric's namespace, wiring and background loop.
    pub(super) fabric_ns: String,
    pub(super) wiring: fabric::Wiring,
    pub(super) fabric: Option<fabric::Running>,
    /// Gateway VMs (node name, primary IP, namespace) and regular nodes.
    pub(super) gateway_vms: Vec<(String, Ipv4Addr, String)>,
    /// The VM-based pool's VMs (node name, primary IP, namespace): wired into the fabric in step 4, their
    /// Nodes and gateway agents started by scenario 6 (`vm_pool_agents`).
    pub(super) vm_pool_vms: Vec<(String, Ipv4Addr, String)>,
    pub(super) vm_pool_agents: bool,
    /// The gateway VMs of the seed's other gateway pools (pool -> VMs as in `gateway_vms`): wired into the
    /// fabric and running the chart's gateway agent from step 5 on, like gateway nodes of an AKS pool that
    /// no GatewayPool uses yet (scenario 8 declares one for `tfpool` with Terraform).
    pub(super) other_pool_vms: std::collections::BTreeMap<String, Vec<(String, Ipv4Addr, String)>>,
    pub(super) nodes: Vec<runtime::Node>,
    /// Directory (a private mount) holding the nodes' persisted mount namespaces.
    pub(super) mnt_dir: Option<PathBuf>,
    /// Pods the runtime set up (node index, sandbox), for CNI DEL at teardown.
    pub(super) pods: Vec<(usize, runtime::Sandbox)>,
    /// status.egressIpPrefix and the cluster's outbound public IP.
    pub(super) prefix: Option<ipnet::Ipv4Net>,
    pub(super) outbound: Option<Ipv4Addr>,
}

/// Runs the lab: steps 1–4, then (unless `--keep`) teardown with a check that nothing is left.
/// Ctrl-C or SIGTERM at any point jumps to teardown.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.work_dir)
        .with_context(|| format!("creating {}", opts.work_dir.display()))?;
    let mut lab = Lab {
        kubeconfig: opts.work_dir.join("kubeconfig"),
        ..Lab::default()
    };
    let outcome = tokio::select! {
        r = lab.steps(&opts) => r,
        s = interrupted() => Err(anyhow!("interrupted by {s}")),
    };
    let outcome = match outcome {
        Ok(()) if opts.keep => {
            keep_summary(&lab, &opts);
            let s = interrupted().await;
            println!("\n{s} received");
            Ok(())
        }
        Ok(()) => Ok(()),
        Err(e) => {
            let (n, name) = lab.current;
            println!("\n\u{2718} FAILED at step {n} ({name}): {e:#}");
            Err(e.context(format!("step {n} ({name})")))
        }
    };
    let clean = lab.teardown(&opts).await;
    match (outcome, clean) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(e.context("teardown")),
    }
}

/// Waits for Ctrl-C or SIGTERM and names it.
async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "Ctrl-C";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
    }
}

fn keep_summary(lab: &Lab, opts: &Options) {
    println!("\n==> --keep: everything stays up until Ctrl-C");
    println!("    export KUBECONFIG={}", lab.kubeconfig.display());
    println!("    kubectl get gatewaypools,sgc -A");
    if let Some(k) = &lab.kube {
        println!("    Kubernetes API: {}", k.describe());
    }
    if let Some(a) = &lab.azure {
        println!(
            "    Azure simulator: {} (inventory: {}/_sim/inventory)",
            a.url(),
            a.url()
        );
    }
    for (_, sb) in &lab.pods {
        println!(
            "    pod {DEMO_NS}/{}: ip netns exec {} bash -c 'echo hi > /dev/udp/{ECHO_IP}/{ECHO_PORT}'   (or curl/nc the echo host)",
            sb.name, sb.netns
        );
    }
    for n in &lab.nodes {
        println!("    node {}: nsenter {} bash", n.name, n.enter_args().join(" "));
    }
    if !lab.fabric_ns.is_empty() {
        println!(
            "    Azure fabric: ip -n {f} route; ip -n {f} rule; ip netns exec {f} nft list table ip {}",
            fabric::NFT_TABLE,
            f = lab.fabric_ns
        );
    }
    println!(
        "    the installed chart: {} (rendered by scripts/render-chart.py; holds the secrets, mode 0600)",
        opts.work_dir.join("chart.yaml").display()
    );
    for (name, log) in lab.children.logs() {
        println!("    {name} log: {}", log.display());
    }
    println!("    work dir: {}", opts.work_dir.display());
}

impl Lab {
    pub(super) fn begin(&mut self, n: usize, name: &'static str) {
        self.current = (n, name);
        step(n, name);
    }

    pub(super) fn client(&self) -> anyhow::Result<kube::Client> {
        self.client.clone().context("Kubernetes client not set up")
    }

    async fn steps(&mut self, opts: &Options) -> anyhow::Result<()> {
        self.begin(
            1,
            "simulators: Azure and the Kubernetes API, the Helm chart installed with kubectl",
        );
        self.simulators(opts).await?;
        self.begin(2, "webhook and operator (real binaries)");
        self.webhook(opts).await?;
        self.operator(opts).await?;
        self.begin(3, "kubectl apply: GatewayPool and StaticGatewayConfiguration");
        self.configure(opts).await?;
        let agent = opts.bin_dir.join("kube-egress-gateway-agent");
        let cni = opts.bin_dir.join(api::names::CNI_PLUGIN_TYPE);
        if !nix::unistd::geteuid().is_root() || !agent.exists() || !cni.exists() {
            self.begin(4, "data plane");
            info(&format!(
                "SKIPPED: needs root, {} and {} (scripts/lab.sh builds them and runs as root)",
                agent.display(),
                cni.display()
            ));
            return Ok(());
        }
        self.begin(
            4,
            "Azure fabric: VM networks, load balancer, edge and the internet echo host",
        );
        self.fabric(opts).await?;
        self.begin(5, "gateway nodes: real gateway agents behind the load balancer");
        self.gateways(opts).await?;
        self.begin(6, "regular nodes: real node agents and the CNI chain");
        self.nodes(opts).await?;
        self.begin(7, "pods, created as kubelet and the container runtime would");
        self.pods(opts).await?;
        self.begin(8, "egress: the source address the internet echo host sees");
        self.egress(opts).await?;
        if !opts.scenarios.is_empty() {
            super::scenarios::run(self, opts).await?;
        }
        self.check_accounts()?;
        Ok(())
    }

    async fn simulators(&mut self, opts: &Options) -> anyhow::Result<()> {
        // Azure first: the chart's cloud config points the operator at it.
        let seed = lab_seed();
        let azure = AzureSim::start(&seed)
            .await
            .context("starting the Azure simulator")?;
        if azure_ids(&azure, "/virtualmachinescalesets/").is_empty() {
            bail!(
                "the Azure simulator has no VMSS: {}",
                azure.inventory()["resources"]
            );
        }
        let lbs = azure_ids(&azure, "/loadbalancers/");
        if !lbs.is_empty() {
            bail!("the Azure simulator already has a load balancer: {lbs:?}");
        }
        // AKS's default outbound: one public IP every private source without its own leaves from.
        let outbound = azure
            .with_state(|s| {
                s.world.put_public_ip(
                    "node-rg",
                    "aks-outbound-ip",
                    json!({"location": seed.location, "tags": {fabric::OUTBOUND_TAG.0: fabric::OUTBOUND_TAG.1}}),
                )
            })
            .map_err(|e| anyhow!("creating the cluster's outbound public IP: {e:?}"))?;
        let outbound_ip: Ipv4Addr = outbound
            .resource
            .pointer("/properties/ipAddress")
            .and_then(|v| v.as_str())
            .and_then(|v| v.parse().ok())
            .context("the outbound public IP has no address")?;
        self.outbound = Some(outbound_ip);
        let gateway_pools = seed
            .vm_scale_sets
            .iter()
            .filter_map(|v| {
                v.gateway_prefix_size.map(|size| {
                    format!(
                        "VMSS {} ({} instances, tags aks-managed-poolName={}, aks-managed-gatewayIPPrefixSize={size})",
                        v.name, v.instances, v.pool_name
                    )
                })
            })
            .collect::<Vec<_>>()
            .join(", ");
        ok(&format!(
            "azure-sim at {}: subscription {}, vnet aks-vnet/aks-subnet, gateway pools: {gateway_pools}; VM-based gateway pool {VM_POOL} ({} VMs with pre-created NICs tagged {}), regular pool {NODE_POOL}, public range {}, cluster outbound IP {outbound_ip}, no internal load balancer yet",
            azure.url(),
            seed.subscription_id,
            vm_pool_nodes(&azure.handle()).len(),
            api::names::TAG_STATIC_GATEWAY_NIC,
            seed.public_ip_ranges
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
        let azure_url = azure.url().to_string();
        self.azure = Some(azure);

        // The chart, rendered with the Helm SDK (values and output hold the service principal's secret: 0600).
        let values = lab_values(&seed, &azure_url)?;
        let values_path = opts.work_dir.join("values.yaml");
        write_private(&values_path, &serde_json::to_string_pretty(&values)?)?;
        let text = render_chart(opts, &values_path).await?;
        let chart_path = opts.work_dir.join("chart.yaml");
        write_private(&chart_path, &text)?;
        self.chart = chart::Rendered::parse(&text).context("reading the rendered chart")?;
        if let Some(mode) = &opts.images {
            mode.check_present(&self.chart.images())?;
        }
        let script = std::fs::canonicalize(&opts.render_chart).unwrap_or_else(|_| opts.render_chart.clone());
        info(&format!(
            "$ {} --release {RELEASE} --namespace {SYSTEM_NS} -f values.yaml > chart.yaml",
            script.display()
        ));
        info(&format!(
            "  values: cloud config -> azure-sim (service principal from its seed), webhook certificates selfSigned with 1 replica and no drain, gateway LB probe port {} with a 1s drain",
            api::names::DEFAULT_LB_PROBE_PORT
        ));

        // The API server (kube-sim: with a user for each of the chart's ServiceAccounts, what the token
        // controller would issue; the real one hands out tokens by TokenRequest once the chart made them).
        let accounts = self.chart.service_accounts();
        let kube = KubeApi::start(opts.kube, &accounts).await?;
        kube.write_admin_kubeconfig(&self.kubeconfig)
            .context("writing the kubeconfig")?;
        let client = kube.client().context("Kubernetes client")?;
        let version = client
            .apiserver_version()
            .await
            .context("GET /version")?
            .git_version;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for ns in [SYSTEM_NS, DEMO_NS] {
            let n: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
            namespaces
                .create(&PostParams::default(), &n)
                .await
                .with_context(|| format!("creating namespace {ns}"))?;
        }
        ok(&format!(
            "Kubernetes API {version}: {}; namespaces {SYSTEM_NS} (the release's, as `helm install --create-namespace`) and {DEMO_NS}",
            kube.describe()
        ));
        let backend = kube.backend();
        self.kube = Some(kube);
        self.client = Some(client.clone());
        if backend == Backend::Real {
            // Pods need their namespace's default ServiceAccount (the ServiceAccount admission plugin).
            for ns in [SYSTEM_NS, DEMO_NS] {
                let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
                    Api::namespaced(client.clone(), ns);
                self.wait(
                    &format!("kube-controller-manager creates ServiceAccount {ns}/default"),
                    opts,
                    || {
                        let accounts = accounts.clone();
                        async move { Ok(accounts.get_opt("default").await?.is_some()) }
                    },
                )
                .await?;
            }
        }
        self.heartbeat = Some(Heartbeat::start(client).await?);

        // The lab's `helm install`: every rendered object, CRDs first, then Helm's install order.
        let out = self.kubectl(opts, &["apply", "-f", "chart.yaml"]).await?;
        if !out.ok {
            bail!("the API server refused part of the chart: {}", out.stderr.trim());
        }
        info("$ kubectl apply -f chart.yaml");
        // As `helm install` does for its CRDs: wait until they are served.
        let crds: Vec<String> = self
            .chart
            .objects
            .iter()
            .filter(|o| o["kind"] == "CustomResourceDefinition")
            .filter_map(|o| o.pointer("/metadata/name").and_then(|n| n.as_str()))
            .map(|n| format!("crd/{n}"))
            .collect();
        let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        args.extend(crds.iter().map(String::as_str));
        let out = self.kubectl(opts, &args).await?;
        if !out.ok {
            bail!("the chart's CRDs are not served: {}", out.stderr.trim());
        }
        let kinds = self.chart.kinds();
        ok(&format!(
            "installed from the chart ({} objects): {}",
            self.chart.objects.len(),
            kinds
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        // Each component's identity: a token of its ServiceAccount, in a kubeconfig.
        let kube = self.kube.as_ref().context("no API server")?;
        for (ns, name) in &accounts {
            kube.write_service_account_kubeconfig(&self.sa_kubeconfig(ns, name), ns, name)
                .await
                .with_context(|| format!("writing the kubeconfig of service account {ns}/{name}"))?;
        }
        ok(&format!(
            "a token for each of the chart's ServiceAccounts ({}): {}",
            if backend == Backend::Real {
                "TokenRequest API"
            } else {
                "kube-sim's users"
            },
            accounts
                .iter()
                .map(|(_, n)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        self.register_regular_nodes().await
    }

    /// The regular nodes join the cluster (their kubelets register them, report them Ready and renew their
    /// Leases from now on), with their pod CIDR and the cni-not-ready taint their node agent removes.
    async fn register_regular_nodes(&mut self) -> anyhow::Result<()> {
        let client = self.client()?;
        let heartbeat = self.heartbeat.as_ref().context("no heartbeat")?;
        let azure = self.azure.as_ref().context("azure-sim not started")?.handle();
        let names = regular_nodes();
        let view = azure.with_state(|s| fabric::read_view(&s.world, &names));
        for (i, name) in names.iter().enumerate() {
            let primary = view
                .vms
                .iter()
                .find(|v| v.vm == *name)
                .map(|v| v.primary)
                .with_context(|| format!("azure-sim has no NIC for node {name}"))?;
            let pod_cidr = regular_pod_cidr(i);
            let node = json!({
                "metadata": {"name": name, "labels": regular_node_labels()},
                "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr],
                    "taints": [{"key": api::names::CNI_NOT_READY_TAINT, "value": "true", "effect": "NoSchedule"}]}
            });
            heartbeat.register(&client, node, primary).await?;
        }
        ok(&format!(
            "regular nodes {} registered as their kubelets do (Ready, InternalIP, Lease renewed every 10 s in {}; pod CIDRs 10.244.<i>.0/24; taint {})",
            names.join(", "),
            kubelet::NODE_LEASE_NS,
            api::names::CNI_NOT_READY_TAINT
        ));
        Ok(())
    }

    /// The kubeconfig holding service account `ns/name`'s token (as kube-sim's `--service-account` names it).
    fn sa_kubeconfig(&self, ns: &str, name: &str) -> PathBuf {
        let mut p = self.kubeconfig.clone().into_os_string();
        p.push(format!(".sa.{ns}.{name}"));
        PathBuf::from(p)
    }

    /// Starts the process a kubelet would start for `spec`: its Secret volumes written to files, its environment,
    /// and its service account's token (a kubeconfig instead of the in-cluster token mount). `enter` are the
    /// `nsenter` arguments that put it in its node's namespaces (hostNetwork pods), empty for the host.
    fn launch(
        &mut self,
        name: &str,
        spec: &LaunchSpec,
        place: Place<'_>,
        opts: &Options,
    ) -> anyhow::Result<()> {
        for f in &spec.secret_files {
            if let Some(dir) = f.path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            write_private(&f.path, &f.data)?;
        }
        let kubeconfig = self.sa_kubeconfig(&spec.service_account.0, &spec.service_account.1);
        if !kubeconfig.exists() {
            bail!("no token for service account {}", spec.user());
        }
        let mut envs: Vec<(&str, String)> = spec.env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        envs.push(("KUBECONFIG", kubeconfig.display().to_string()));
        let binary = opts.bin_dir.join(&spec.binary);
        let enter = place.nsenter_args();
        let (program, args) = if let Some(mode) = &opts.images {
            // wireguard-go (the agent's fallback: this machine has no WireGuard kernel module) needs the tun
            // device, which a node with the module never does.
            let devices: &[&str] = if matches!(place, Place::Netns(_)) {
                &["/dev/net/tun"]
            } else {
                &[]
            };
            let kubeconfig = self.sa_kubeconfig(&spec.service_account.0, &spec.service_account.1);
            // Kubernetes makes Secret volumes and the token readable by the pod's user; so does the lab, with
            // the container's own copy of the kubeconfig.
            let kubeconfig = images::hand_over(spec, &kubeconfig, &opts.work_dir.join("pods").join(name))?;
            let a = mode.run_args(name, spec, &place, &kubeconfig, devices)?;
            info(&format!(
                "{name}: podman run {} ({})",
                spec.image,
                images::security_flags(&spec.security_context).join(" ")
            ));
            for d in devices {
                info(&format!(
                    "  lab-only: --device={d} (wireguard-go without the kernel module)"
                ));
            }
            (PathBuf::from("podman"), a)
        } else if enter.is_empty() {
            (binary.clone(), spec.argv())
        } else {
            let mut a = enter;
            a.push(binary.display().to_string());
            a.extend(spec.argv());
            (PathBuf::from("nsenter"), a)
        };
        info(&format!(
            "{name}: {} container {} ({}) as {}",
            spec.workload,
            spec.container,
            if opts.images.is_some() {
                &spec.image
            } else {
                &spec.binary
            },
            spec.user()
        ));
        info(&format!("  args: {}", spec.args.join(" ")));
        for (from, to) in &spec.localized {
            info(&format!("  localised: {from} -> {to}"));
        }
        for (arg, why) in &spec.lab_args {
            info(&format!("  lab-only: {arg} ({why})"));
        }
        self.children.spawn(name, &program, &args, &envs, &opts.work_dir)
    }

    /// The `podman` arguments of init container `container` of DaemonSet `ds` as rendered, at `place`.
    fn init_container_args(
        &self,
        mode: &images::ImageMode,
        ds: &str,
        container: &str,
        name: &str,
        place: &Place<'_>,
        replace: Option<(&str, &str)>,
    ) -> anyhow::Result<Vec<String>> {
        let w = self.chart.get("DaemonSet", ds)?;
        let pod = w
            .pointer("/spec/template/spec")
            .with_context(|| format!("DaemonSet {ds} has no pod template"))?;
        let c = pod["initContainers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == container))
            .with_context(|| format!("DaemonSet {ds} has no init container {container}"))?;
        let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
        mode.init_args(name, c, &volumes, place, replace)
    }

    /// Checks that the API server served `user` (a component's service account) and refused it nothing (403).
    /// kube-sim counts each user's requests; the real apiserver's audit log has them.
    fn check_identity(&self, component: &str, user: &str) -> anyhow::Result<()> {
        let kube = self.kube.as_ref().context("no API server")?;
        let counts = kube.requests_by(user)?;
        let forbidden = count_requests(&counts, |_, code| code == 403);
        let served = count_requests(&counts, |_, code| (200..300).contains(&code));
        let writes = count_requests(&counts, |m, code| {
            !kube_api::is_read(m) && (200..300).contains(&code)
        });
        if forbidden > 0 {
            bail!("{component}: the chart's RBAC refused {user} {forbidden} request(s): {counts:?}");
        }
        if served == 0 {
            bail!("{component}: the API server served no request as {user}: {counts:?}");
        }
        ok(&format!(
            "{component}: API requests as {user} ({served} answered, {writes} of them writes), none forbidden by the chart's RBAC{}",
            match kube.backend() {
                Backend::Real => " (the apiserver's audit log)",
                Backend::Sim => "",
            }
        ));
        Ok(())
    }

    /// Over the whole run: the API server refused none of the chart's service accounts anything (403).
    fn check_accounts(&self) -> anyhow::Result<()> {
        let kube = self.kube.as_ref().context("no API server")?;
        if let Some(refused) = self.rbac_refusals(kube)?.into_iter().next() {
            bail!("{refused}");
        }
        let mut seen = Vec::new();
        for (ns, name) in self.chart.service_accounts() {
            let user = format!("system:serviceaccount:{ns}:{name}");
            seen.push(format!(
                "{name} {}",
                kube.requests_by(&user)?.values().sum::<u64>()
            ));
        }
        ok(&format!(
            "over the whole run the chart's RBAC refused its service accounts nothing (requests: {})",
            seen.join(", ")
        ));
        Ok(())
    }

    /// One line per chart service account the API server answered 403 so far.
    fn rbac_refusals(&self, kube: &KubeApi) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for (ns, name) in self.chart.service_accounts() {
            let user = format!("system:serviceaccount:{ns}:{name}");
            let counts = kube.requests_by(&user)?;
            let forbidden = count_requests(&counts, |_, code| code == 403);
            if forbidden > 0 {
                out.push(format!(
                    "the chart's RBAC refused {user} {forbidden} request(s): {counts:?}"
                ));
            }
        }
        Ok(out)
    }

    /// The launch spec of Deployment `name`'s `container` (one replica: the lab runs one process), its
    /// listeners moved to `ports` (it runs in the host's network namespace, not a pod's own).
    fn deployment_pod(
        &self,
        name: &str,
        container: &str,
        ports: &[(&str, String)],
        pod: &chart::Pod,
        opts: &Options,
    ) -> anyhow::Result<LaunchSpec> {
        let spec = self.chart.launch_spec(
            "Deployment",
            name,
            container,
            pod,
            &Localize {
                ports: ports.iter().map(|(f, v)| (f.to_string(), v.clone())).collect(),
                volume_root: opts.work_dir.join("pods").join(container),
            },
        )?;
        if spec.replicas != Some(1) {
            bail!(
                "the lab runs one {container} replica; the chart renders {:?}",
                spec.replicas
            );
        }
        Ok(spec)
    }

    /// The launch spec of DaemonSet `ds`'s `agent` container on node `node_name` (the `i`th of its kind, with
    /// `labels`): the DaemonSet must select the node and mount its hostPaths where they are on the host.
    fn daemonset_pod(
        &self,
        ds: &str,
        short: &str,
        i: usize,
        node_name: &str,
        labels: &std::collections::BTreeMap<String, String>,
        opts: &Options,
    ) -> anyhow::Result<LaunchSpec> {
        if !self.chart.selects("DaemonSet", ds, labels)? {
            bail!("the chart's DaemonSet {ds} does not select node {node_name} ({labels:?})");
        }
        let spec = self.chart.launch_spec(
            "DaemonSet",
            ds,
            "agent",
            &chart::Pod {
                namespace: SYSTEM_NS.into(),
                name: format!("{ds}-{i}"),
                node_name: node_name.to_string(),
            },
            &Localize {
                ports: Vec::new(),
                volume_root: opts.work_dir.join("pods").join(format!("{short}-{i}")),
            },
        )?;
        let remapped = spec.remapped_host_paths();
        if !remapped.is_empty() {
            bail!("{ds} mounts hostPaths elsewhere, which the lab cannot honour: {remapped:?}");
        }
        Ok(spec)
    }

    /// Which API server the lab runs on.
    pub(super) fn backend(&self) -> anyhow::Result<Backend> {
        Ok(self.kube.as_ref().context("no API server")?.backend())
    }

    /// Container `container`'s port named `port` in Deployment `name` as rendered.
    fn container_port(&self, name: &str, container: &str, port: &str) -> anyhow::Result<u16> {
        let d = self.chart.get("Deployment", name)?;
        d.pointer("/spec/template/spec/containers")
            .and_then(|c| c.as_array())
            .and_then(|cs| cs.iter().find(|c| c["name"] == container))
            .and_then(|c| c["ports"].as_array())
            .and_then(|ps| ps.iter().find(|p| p["name"] == port))
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .with_context(|| format!("Deployment {name} has no port {port} on container {container}"))
    }

    /// The scheduler's part for Deployment `name` on the real server: waits for the pod its ReplicaSet
    /// creates, binds it to the first regular node (where the lab counts the Deployments' pods) and gives it
    /// an IP of the lab's pod network. Returns the pod as the downward API sees it, and its IP.
    async fn schedule_deployment_pod(
        &mut self,
        name: &str,
        opts: &Options,
    ) -> anyhow::Result<(chart::Pod, Ipv4Addr)> {
        use k8s_openapi::api::core::v1::Pod;
        let d = self.chart.get("Deployment", name)?;
        let selector = d
            .pointer("/spec/selector/matchLabels")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .with_context(|| format!("Deployment {name} has no spec.selector.matchLabels"))?;
        let pods: Api<Pod> = Api::namespaced(self.client()?, SYSTEM_NS);
        let found = std::sync::Arc::new(std::sync::Mutex::new(None::<Pod>));
        self.wait(
            &format!("kube-controller-manager's ReplicaSet controller creates the pod of Deployment {name}"),
            opts,
            || {
                let (pods, found, selector) = (pods.clone(), found.clone(), selector.clone());
                async move {
                    let list = pods
                        .list(&kube::api::ListParams::default().labels(&selector))
                        .await?;
                    let pod = list
                        .items
                        .into_iter()
                        .find(|p| p.metadata.deletion_timestamp.is_none());
                    let there = pod.is_some();
                    if let Ok(mut g) = found.lock() {
                        *g = pod;
                    }
                    Ok(there)
                }
            },
        )
        .await?;
        let pod = found
            .lock()
            .ok()
            .and_then(|mut g| g.take())
            .context("no pod found")?;
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let node = regular_nodes().into_iter().next().context("no regular node")?;
        kubelet::bind(&pods, &pod_name, &node).await?;
        let ip = self.pod_network()?.next_ip()?;
        info(&format!(
            "$ (scheduler) bind Pod {SYSTEM_NS}/{pod_name} (ReplicaSet of Deployment {name}) to {node}; (kubelet) its IP {ip}"
        ));
        Ok((
            chart::Pod {
                namespace: SYSTEM_NS.into(),
                name: pod_name,
                node_name: node,
            },
            ip,
        ))
    }

    /// The kubelet's report for a Deployment's pod whose container passed its readiness probe.
    async fn report_running(&self, pod: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::Pod;
        let node = regular_nodes().into_iter().next().context("no regular node")?;
        let host_ip = self
            .azure
            .as_ref()
            .context("azure-sim")?
            .handle()
            .with_state(|s| fabric::read_view(&s.world, [&node]))
            .vms
            .first()
            .map(|v| v.primary)
            .with_context(|| format!("azure-sim has no NIC for {node}"))?;
        let pods: Api<Pod> = Api::namespaced(self.client()?, SYSTEM_NS);
        kubelet::report_running(&pods, pod, ip, host_ip).await?;
        info(&format!(
            "$ (kubelet) Pod {SYSTEM_NS}/{pod} Running and Ready (readiness probe /readyz answered 200), podIP {ip}, hostIP {host_ip}"
        ));
        Ok(())
    }

    /// The pod network of the Deployments' pods (created on first use).
    fn pod_network(&mut self) -> anyhow::Result<&mut PodNetwork> {
        if self.pod_network.is_none() {
            let net = PodNetwork::create(&lab_tag(), std::process::id())?;
            self.netns.push(net.ns.clone());
            if let Some(i) = super::dataplane::netns_inode(&net.ns) {
                self.netns_inodes.push(i);
            }
            info(&format!(
                "pod network of the Deployments' pods: veth {} on the host (its peer in namespace {}), addresses {}/30",
                net.link, net.ns, net.base
            ));
            self.pod_network = Some(net);
        }
        self.pod_network.as_mut().context("pod network")
    }

    async fn webhook(&mut self, opts: &Options) -> anyhow::Result<()> {
        self.chart.get("Service", WEBHOOK)?;
        let real = self.backend()? == Backend::Real;
        // On the real server the apiserver calls the Service's endpoints, which must be the pod's own
        // (non-loopback) IP and the chart's port: the webhook listens there. kube-sim maps the Service to a
        // loopback listener instead.
        let (pod, pod_ip) = if real {
            let (pod, ip) = self.schedule_deployment_pod(WEBHOOK, opts).await?;
            (pod, Some(ip))
        } else {
            (deployment_pod(WEBHOOK), None)
        };
        let (listen, metrics) = match pod_ip {
            Some(ip) => (
                SocketAddr::from((ip, self.container_port(WEBHOOK, "webhook", "https")?)),
                SocketAddr::from((ip, self.container_port(WEBHOOK, "webhook", "metrics")?)),
            ),
            None => (free_port()?, free_port()?),
        };
        let spec = self.deployment_pod(
            WEBHOOK,
            "webhook",
            &[
                ("--listen", listen.to_string()),
                ("--metrics-listen", metrics.to_string()),
            ],
            &pod,
            opts,
        )?;
        if let Some(KubeApi::Sim(sim)) = &self.kube {
            sim.map_service(SYSTEM_NS, WEBHOOK, listen);
        }
        self.launch("webhook", &spec, Place::Host, opts)?;
        self.wait("webhook /readyz answers 200", opts, || async {
            Ok(http_status(metrics, "/readyz").await == Some(200))
        })
        .await?;
        if let Some(ip) = pod_ip {
            self.report_running(&pod.name, ip).await?;
            let client = self.client()?;
            let want = listen.to_string();
            self.wait(
                &format!("kube-controller-manager's endpoints controller puts {want} in Endpoints {SYSTEM_NS}/{WEBHOOK}"),
                opts,
                || {
                    let (client, want) = (client.clone(), want.clone());
                    async move { Ok(kubelet::ready_endpoints(&client, SYSTEM_NS, WEBHOOK).await?.contains(&want)) }
                },
            )
            .await?;
            ok(&format!(
                "Endpoints {SYSTEM_NS}/{WEBHOOK} = {want} (the Ready pod's IP and the Service's targetPort): where the apiserver calls the chart's webhooks"
            ));
        }
        // The chart's registration is live and reaches the webhook over the chart's certificate: a PodEndpoint
        // written by anyone but the node agent's account is refused.
        let pe = format!(
            "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: PodEndpoint\nmetadata:\n  name: forged\n  namespace: {DEMO_NS}\nspec:\n  podIpAddress: 10.244.9.9/32\n  podPublicKey: \"{}=\"\n  staticGatewayConfiguration: {SGC}\n",
            "A".repeat(43)
        );
        std::fs::write(opts.work_dir.join("forged-podendpoint.yaml"), pe)
            .context("writing forged-podendpoint.yaml")?;
        let out = self
            .kubectl(opts, &["apply", "-f", "forged-podendpoint.yaml"])
            .await?;
        if out.ok || !out.stderr.contains("written only by the node agent") {
            bail!(
                "a PodEndpoint written as admin was not refused by the chart's webhook (exit ok: {}): {}{}",
                out.ok,
                out.stdout.trim(),
                out.stderr.trim()
            );
        }
        info("$ kubectl apply -f forged-podendpoint.yaml   # as admin");
        info(&format!("  {}", out.stderr.trim()));
        let writers = spec
            .args
            .iter()
            .find_map(|a| a.strip_prefix("--podendpoint-writers="))
            .unwrap_or_default()
            .to_string();
        ok(&format!(
            "webhook serving at {listen} (Service {SYSTEM_NS}/{WEBHOOK}), ready; the chart's webhook configurations reach it over the chart's certificate: a PodEndpoint applied as admin is refused (--podendpoint-writers={writers})"
        ));
        self.check_identity("webhook", &spec.user())
    }

    async fn operator(&mut self, opts: &Options) -> anyhow::Result<()> {
        let client = self.client()?;
        let health = free_port()?;
        let metrics = free_port()?;
        let (pod, pod_ip) = if self.backend()? == Backend::Real {
            let (pod, ip) = self.schedule_deployment_pod(OPERATOR, opts).await?;
            (pod, Some(ip))
        } else {
            (deployment_pod(OPERATOR), None)
        };
        let spec = self.deployment_pod(
            OPERATOR,
            "operator",
            &[
                ("--metrics-bind-port", metrics.port().to_string()),
                ("--health-probe-bind-port", health.port().to_string()),
            ],
            &pod,
            opts,
        )?;
        self.launch("operator", &spec, Place::Host, opts)?;
        let leases: Api<Lease> = Api::namespaced(client, SYSTEM_NS);
        let holder = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        self.wait("the operator holds the leader Lease", opts, || {
            let (leases, holder) = (leases.clone(), holder.clone());
            async move {
                let list = leases.list(&Default::default()).await?;
                for l in list.items {
                    if let Some(h) = l.spec.and_then(|s| s.holder_identity)
                        && !h.is_empty()
                    {
                        if let Ok(mut g) = holder.lock() {
                            *g = format!("{} (Lease {})", h, l.metadata.name.unwrap_or_default());
                        }
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        })
        .await?;
        self.wait("operator /readyz answers 200", opts, || async {
            Ok(http_status(health, "/readyz").await == Some(200))
        })
        .await?;
        if let Some(ip) = pod_ip {
            self.report_running(&pod.name, ip).await?;
        }
        let who = holder.lock().map(|g| g.clone()).unwrap_or_default();
        ok(&format!(
            "operator elected leader: {who}; ready; its cloud config (the chart's Secret) points at azure-sim"
        ));
        self.check_identity("operator", &spec.user())
    }

    async fn configure(&mut self, opts: &Options) -> anyhow::Result<()> {
        let pool = format!(
            "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: GatewayPool\nmetadata:\n  name: {POOL}\nspec:\n  gatewayNodepoolName: {POOL}\n  publicIpPrefixSize: 31\n"
        );
        let sgc = format!(
            "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\nmetadata:\n  name: {SGC}\n  namespace: {DEMO_NS}\nspec:\n  gatewayNodepoolName: {POOL}\n  excludeCidrs:\n    - 10.0.0.0/8\n    - {ECHO_EXCLUDED_IP}/32\n"
        );
        let invalid = format!(
            "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\nmetadata:\n  name: broken\n  namespace: {DEMO_NS}\nspec:\n  gatewayNodepoolName: {POOL}\n  publicIpPrefixId: my-prefix\n"
        );
        for (file, text) in [
            ("gatewaypool.yaml", &pool),
            ("sgc.yaml", &sgc),
            ("invalid-sgc.yaml", &invalid),
        ] {
            std::fs::write(opts.work_dir.join(file), text).with_context(|| format!("writing {file}"))?;
        }
        for file in ["gatewaypool.yaml", "sgc.yaml"] {
            let out = self.kubectl(opts, &["apply", "-f", file]).await?;
            if !out.ok {
                bail!("kubectl apply -f {file} failed: {}", out.stderr.trim());
            }
            info(&format!("$ kubectl apply -f {file}"));
            info(&format!("  {}", out.stdout.trim()));
        }
        info("$ kubectl apply -f invalid-sgc.yaml   # publicIpPrefixId not an ARM ID (the webhook's rule 6)");
        let out = self.kubectl(opts, &["apply", "-f", "invalid-sgc.yaml"]).await?;
        if out.ok || !out.stderr.contains("denied the request") {
            bail!(
                "the invalid configuration was not refused by the webhook (exit ok: {}): {}{}",
                out.ok,
                out.stdout.trim(),
                out.stderr.trim()
            );
        }
        info(&format!("  {}", out.stderr.trim()));
        ok("the webhook refused the invalid configuration");

        let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(self.client()?, DEMO_NS);
        let prefix = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        self.wait(
            "the StaticGatewayConfiguration is Ready with an egress prefix",
            opts,
            || {
                let (sgcs, prefix) = (sgcs.clone(), prefix.clone());
                async move {
                    let s = sgcs.get(SGC).await?;
                    let Some(st) = s.status else { return Ok(false) };
                    match (&st.egress_ip_prefix, st.is_ready_for_pods()) {
                        (Some(p), true) => {
                            if let Ok(mut g) = prefix.lock() {
                                *g = p.clone();
                            }
                            Ok(true)
                        }
                        _ => Ok(false),
                    }
                }
            },
        )
        .await?;
        let pools: Api<api::GatewayPool> = Api::all(self.client()?);
        self.wait("the GatewayPool reports 2 ready instances", opts, || {
            let pools = pools.clone();
            async move {
                let p = pools.get(POOL).await?;
                Ok(p.status.is_some_and(|s| s.ready_instances == 2))
            }
        })
        .await?;
        let prefix = prefix.lock().map(|g| g.clone()).unwrap_or_default();
        let current = sgcs.get(SGC).await?;
        self.sgc_uid = current.metadata.uid.clone().unwrap_or_default();
        self.profiles = current.status.map(|s| s.gateway_vm_profiles).unwrap_or_default();
        let net: ipnet::Ipv4Net = prefix
            .parse()
            .with_context(|| format!("status.egressIpPrefix '{prefix}' is not an IPv4 CIDR"))?;
        let seed = lab_seed();
        let inside = seed.public_ip_ranges.iter().find(|r| r.contains(&net));
        let Some(range) = inside else {
            bail!("status.egressIpPrefix {net} is outside the simulator's public ranges");
        };
        if net.prefix_len() != 31 {
            bail!("status.egressIpPrefix {net} is not a /31 as the pool asks");
        }
        self.prefix = Some(net);
        for args in [
            ["get", "gatewaypool", "-o", "wide"].as_slice(),
            ["get", "sgc", "-n", DEMO_NS].as_slice(),
        ] {
            let out = self.kubectl(opts, args).await?;
            if !out.ok {
                bail!("kubectl {} failed: {}", args.join(" "), out.stderr.trim());
            }
            info(&format!("$ kubectl {}", args.join(" ")));
            for l in out.stdout.lines() {
                info(&format!("  {l}"));
            }
        }
        ok(&format!(
            "{DEMO_NS}/{SGC} is Ready; status.egressIpPrefix = {net} (a /31 from public range {range})"
        ));
        if let Some(a) = &self.azure {
            let lbs = azure_ids(a, "/loadbalancers/");
            if lbs.is_empty() {
                bail!("the configuration is Ready but azure-sim has no load balancer");
            }
            ok(&format!(
                "azure-sim now has the internal load balancer {}",
                lbs.join(", ")
            ));
            let s = sgcs.get(SGC).await?;
            let st = s.status.unwrap_or_default();
            super::azure_view::show(a, &lbs, &st.gateway_vm_profiles, net)?;
        }
        Ok(())
    }

    /// Creates network namespace `name` (lo up) and remembers it for teardown.
    pub(super) fn add_netns(&mut self, name: &str) -> anyhow::Result<()> {
        use super::dataplane::{ip, netns_inode};
        ip(&["netns", "add", name])?;
        self.netns.push(name.to_string());
        if let Some(i) = netns_inode(name) {
            self.netns_inodes.push(i);
        }
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    /// A VM: its own namespace whose `eth0` is a point-to-point link into the fabric (`fabric_if`), with the
    /// primary IP Azure gave it (no subnet route: Azure's SDN, not an L2 segment, delivers everything).
    fn add_vm(&mut self, ns: &str, fabric_if: &str, primary: Ipv4Addr, table: u32) -> anyhow::Result<()> {
        use super::dataplane::ip;
        let fabric = self.fabric_ns.clone();
        self.add_netns(ns)?;
        ip(&[
            "link", "add", "name", fabric_if, "netns", &fabric, "type", "veth", "peer", "name", "eth0",
            "netns", ns,
        ])?;
        ip(&[
            "-n",
            &fabric,
            "addr",
            "add",
            &format!("{FABRIC_GW}/32"),
            "dev",
            fabric_if,
        ])?;
        ip(&["-n", &fabric, "link", "set", fabric_if, "up"])?;
        let t = table.to_string();
        ip(&[
            "-n", &fabric, "rule", "add", "pref", &t, "fwmark", &t, "lookup", &t,
        ])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{primary}/16"),
            "dev",
            "eth0",
            "noprefixroute",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &FABRIC_GW.to_string(),
            "dev",
            "eth0",
            "onlink",
        ])?;
        sysctl(ns, "net.ipv4.ip_forward", "1")
    }

    /// The Azure fabric namespace, the echo host behind its edge, one namespace per VM (gateway and regular
    /// nodes), and the fabric loop realising the Azure simulator's state.
    async fn fabric(&mut self, opts: &Options) -> anyhow::Result<()> {
        use super::dataplane::ip;
        let tag = lab_tag();
        self.fabric_ns = format!("{tag}fabric");
        let fabric = self.fabric_ns.clone();
        self.add_netns(&fabric)?;
        sysctl(&fabric, "net.ipv4.ip_forward", "1")?;
        for k in ["all", "default"] {
            sysctl(&fabric, &format!("net.ipv4.conf.{k}.rp_filter"), "0")?;
        }
        let inet = format!("{tag}inet");
        self.add_netns(&inet)?;
        ip(&[
            "link", "add", "name", "edge0", "netns", &fabric, "type", "veth", "peer", "name", "eth0",
            "netns", &inet,
        ])?;
        ip(&["-n", &fabric, "addr", "add", "198.51.100.1/24", "dev", "edge0"])?;
        ip(&["-n", &fabric, "link", "set", "edge0", "up"])?;
        ip(&[
            "-n",
            &inet,
            "addr",
            "add",
            &format!("{ECHO_IP}/24"),
            "dev",
            "eth0",
        ])?;
        let excluded = format!("{ECHO_EXCLUDED_IP}/24");
        ip(&["-n", &inet, "addr", "add", &excluded, "dev", "eth0"])?;
        ip(&["-n", &inet, "link", "set", "eth0", "up"])?;
        ip(&["-n", &inet, "route", "add", "default", "via", "198.51.100.1"])?;
        self.forwarders.extend(super::dataplane::echo_server(
            &inet,
            &[ECHO_IP, ECHO_EXCLUDED_IP],
            ECHO_PORT,
        )?);
        ok(&format!(
            "internet echo host {ECHO_IP} and {ECHO_EXCLUDED_IP}, port {ECHO_PORT} (UDP and TCP answer the source address they see) behind the fabric's edge"
        ));
        // On-premises, behind a private link (ExpressRoute / VPN gateway): reached from the VNet without the
        // edge's SNAT, so it sees private sources as they are.
        let onprem = format!("{tag}onprem");
        self.add_netns(&onprem)?;
        ip(&[
            "link", "add", "name", "onprem0", "netns", &fabric, "type", "veth", "peer", "name", "eth0",
            "netns", &onprem,
        ])?;
        for (fabric_side, host_side) in [
            ("192.168.100.1/24", format!("{ONPREM_IP}/24")),
            ("192.168.200.1/24", format!("{ONPREM_OTHER_IP}/24")),
        ] {
            ip(&["-n", &fabric, "addr", "add", fabric_side, "dev", "onprem0"])?;
            ip(&["-n", &onprem, "addr", "add", &host_side, "dev", "eth0"])?;
        }
        ip(&["-n", &fabric, "link", "set", "onprem0", "up"])?;
        ip(&["-n", &onprem, "link", "set", "eth0", "up"])?;
        ip(&["-n", &onprem, "route", "add", "default", "via", "192.168.100.1"])?;
        self.forwarders.extend(super::dataplane::echo_server(
            &onprem,
            &[ONPREM_IP, ONPREM_OTHER_IP],
            ECHO_PORT,
        )?);
        ok(&format!(
            "on-premises echo host {ONPREM_IP} and {ONPREM_OTHER_IP}, port {ECHO_PORT}, behind a private link of the fabric (no SNAT: it sees private source addresses)"
        ));

        let azure = self.azure.as_ref().context("azure-sim")?.handle();
        // The demo pool's gateways are those of the configuration's profiles; the other gateway pools' VMs
        // (no configuration yet) follow them.
        let gateways: Vec<String> = self.profiles.iter().map(|p| p.node_name.clone()).collect();
        let others: Vec<(String, String)> = gateway_nodes()
            .into_iter()
            .filter(|(pool, node)| pool != POOL && !gateways.contains(node))
            .collect();
        let regular = regular_nodes();
        let vm_pool = vm_pool_nodes(&azure);
        let names: Vec<String> = gateways
            .iter()
            .chain(others.iter().map(|(_, n)| n))
            .chain(&regular)
            .chain(&vm_pool)
            .cloned()
            .collect();
        let view = azure.with_state(|s| fabric::read_view(&s.world, &names));
        let primary_of = |n: &str| view.vms.iter().find(|v| v.vm == n).map(|v| v.primary);
        let mut wiring = fabric::Wiring {
            edge: "edge0".into(),
            private_space: vec!["10.0.0.0/8".parse()?],
            ..Default::default()
        };
        for (i, node) in gateways.iter().enumerate() {
            let primary =
                primary_of(node).with_context(|| format!("azure-sim has no NIC for gateway {node}"))?;
            let (ns, dev, table) = (format!("{tag}gw{i}"), format!("gw{i}"), 0x100 + i as u32);
            self.add_vm(&ns, &dev, primary, table)?;
            wiring.nics.insert(node.clone(), (dev, table));
            self.gateway_vms.push((node.clone(), primary, ns));
        }
        for (j, (pool, node)) in others.iter().enumerate() {
            let i = gateways.len() + j;
            if i >= 0x10 {
                bail!("the lab wires at most 16 gateway VMs (fabric tables 0x100-0x10f)");
            }
            let primary =
                primary_of(node).with_context(|| format!("azure-sim has no NIC for gateway {node}"))?;
            let (ns, dev, table) = (format!("{tag}gw{i}"), format!("gw{i}"), 0x100 + i as u32);
            self.add_vm(&ns, &dev, primary, table)?;
            wiring.nics.insert(node.clone(), (dev, table));
            self.other_pool_vms
                .entry(pool.clone())
                .or_default()
                .push((node.clone(), primary, ns));
        }
        for (i, node) in regular.iter().enumerate() {
            let primary =
                primary_of(node).with_context(|| format!("azure-sim has no NIC for node {node}"))?;
            let (ns, dev, table) = (format!("{tag}node{i}"), format!("node{i}"), 0x110 + i as u32);
            self.add_vm(&ns, &dev, primary, table)?;
            wiring.nics.insert(node.clone(), (dev, table));
            wiring
                .pod_cidrs
                .push((regular_pod_cidr(i).parse()?, node.clone()));
        }
        // The VM-based pool's VMs are wired like the others (cheap; their gateway agents start in scenario 6).
        for (i, node) in vm_pool.iter().enumerate() {
            let primary = primary_of(node).with_context(|| format!("azure-sim has no NIC for VM {node}"))?;
            let (ns, dev, table) = (format!("{tag}gwvm{i}"), format!("gwvm{i}"), 0x120 + i as u32);
            self.add_vm(&ns, &dev, primary, table)?;
            wiring.nics.insert(node.clone(), (dev, table));
            self.vm_pool_vms.push((node.clone(), primary, ns));
        }
        self.wiring = wiring.clone();
        let running = fabric::start(&fabric, azure, wiring, Duration::from_millis(250));
        let mut status = running.status.clone();
        self.fabric = Some(running);
        // Per VM its /32 and its LB table's default route, plus its secondaries; plus one route per pod CIDR.
        let want = view.vms.iter().map(|v| 2 + v.secondaries.len()).sum::<usize>() + regular.len();
        self.wait(
            "the fabric routes every VM, secondary IP and pod CIDR",
            opts,
            || {
                let s = status.borrow_and_update().clone();
                async move {
                    if let Some(e) = s.error {
                        bail!("{e}");
                    }
                    Ok(s.desired.routes.len() >= want)
                }
            },
        )
        .await?;
        for vm in &view.vms {
            let role = if gateways.contains(&vm.vm) {
                format!("gateway, {POOL}")
            } else if let Some((pool, _)) = others.iter().find(|(_, n)| *n == vm.vm) {
                format!("gateway, {pool}: no configuration yet")
            } else if vm_pool.contains(&vm.vm) {
                format!("gateway, {VM_POOL} (VM-based): its agents start with scenario 6")
            } else {
                "node".to_string()
            };
            let extra = vm
                .secondaries
                .iter()
                .map(|(p, public)| match public {
                    Some(pub_ip) => format!(", secondary {p} (public {pub_ip})"),
                    None => format!(", secondary {p}"),
                })
                .collect::<String>();
            info(&format!("VM {} ({role}): primary {}{extra}", vm.vm, vm.primary));
        }
        for r in &view.rules {
            info(&format!(
                "LB rule {}: {:?} {}:{} floating IP {} -> backends {:?} (probe {})",
                r.name,
                r.proto,
                r.frontend,
                r.port,
                r.floating_ip,
                r.backends,
                r.probe
                    .as_deref()
                    .map(|p| p.rsplit('/').next().unwrap_or(p))
                    .unwrap_or("none")
            ));
        }
        ok(&format!(
            "Azure fabric {fabric}: each VM on its own link, secondary IPs routed to their VM, pod CIDRs to their node, floating-IP LB rules to healthy backends only, edge SNAT secondary -> public IP and other private sources -> {}",
            self.outbound
                .map(|o| o.to_string())
                .unwrap_or_else(|| "(no outbound IP)".into())
        ));
        Ok(())
    }

    /// The real gateway agent in each gateway VM, the LB frontend on its eth0, and the fabric's probes.
    async fn gateways(&mut self, opts: &Options) -> anyhow::Result<()> {
        use super::dataplane::probe_from;
        let mut vms: Vec<(String, (String, Ipv4Addr, String))> = self
            .gateway_vms
            .iter()
            .map(|vm| (POOL.to_string(), vm.clone()))
            .collect();
        for (pool, list) in &self.other_pool_vms {
            vms.extend(list.iter().map(|vm| (pool.clone(), vm.clone())));
        }
        for (i, (pool, (node_name, _, ns))) in vms.iter().enumerate() {
            self.start_gateway_agent(&format!("gateway-agent-{i}"), i, node_name, ns, pool, None, opts)
                .await?;
        }
        for (pool, list) in &self.other_pool_vms {
            let names: Vec<&str> = list.iter().map(|vm| vm.0.as_str()).collect();
            info(&format!(
                "pool {pool} ({}): gateway agents running; no GatewayPool or configuration uses the pool yet",
                names.join(", ")
            ));
        }
        let path = api::names::lb_probe_path(&self.sgc_uid);
        let frontend = Api::<StaticGatewayConfiguration>::namespaced(self.client()?, DEMO_NS)
            .get(SGC)
            .await?
            .status
            .and_then(|s| s.gateway_server_profile)
            .map(|p| p.ip)
            .unwrap_or_default();
        for (node, _, ns) in self.gateway_vms.clone() {
            let want = format!("{frontend}/32");
            self.wait(
                &format!("the LB frontend {want} on eth0 of {node} (floating IP)"),
                opts,
                move || {
                    let ns = ns.clone();
                    let want = want.clone();
                    async move {
                        let out = tokio::process::Command::new("ip")
                            .args(["-n", &ns, "-4", "-o", "addr", "show", "dev", "eth0"])
                            .output()
                            .await?;
                        Ok(String::from_utf8_lossy(&out.stdout)
                            .split_whitespace()
                            .any(|w| w == want))
                    }
                },
            )
            .await?;
            ok(&format!(
                "the agent put the LB frontend {frontend}/32 on eth0 of {node} (floating IP)"
            ));
        }
        let fabric = self.fabric_ns.clone();
        // The port lab_values gives the chart (gatewayLbProbePort), which the operator puts in the LB probe.
        let port = api::names::DEFAULT_LB_PROBE_PORT;
        for (node, primary, _) in self.gateway_vms.clone() {
            let (f, p) = (fabric.clone(), path.clone());
            self.wait(
                &format!("the fabric's probe of {node} ({primary}:{port}{path}) answers 200"),
                opts,
                move || {
                    let (f, p) = (f.clone(), p.clone());
                    async move { Ok(probe_from(&f, primary, port, &p).await == Some(200)) }
                },
            )
            .await?;
            ok(&format!(
                "gateway agent on {node} ({primary}, own netns) is up; the fabric's LB probe :{port}{path} answers 200"
            ));
        }
        let mut status = self.fabric.as_ref().context("fabric not running")?.status.clone();
        let all: Vec<Ipv4Addr> = self.gateway_vms.iter().map(|g| g.1).collect();
        let serving = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        self.wait(
            &format!(
                "the fabric's health probes (every {}s) put every gateway behind the floating-IP rule",
                api::names::LB_PROBE_INTERVAL_SECONDS
            ),
            opts,
            || {
                let s = status.borrow_and_update().clone();
                let (all, serving) = (all.clone(), serving.clone());
                async move {
                    let Some((rule, backends)) = s.desired.serving.iter().next() else {
                        return Ok(false);
                    };
                    if let Ok(mut g) = serving.lock() {
                        *g = format!("{rule} -> {backends:?}");
                    }
                    Ok(all.iter().all(|a| backends.contains(a)))
                }
            },
        )
        .await?;
        let serving = serving.lock().map(|g| g.clone()).unwrap_or_default();
        ok(&format!(
            "the fabric load-balances {serving} (healthy backends only)"
        ));
        self.check_identity(
            "gateway agents",
            &format!("system:serviceaccount:{SYSTEM_NS}:{GATEWAY_AGENT}"),
        )
    }

    /// A gateway node as AKS registers it (Node `node_name` labelled with its agent pool `pool` and the gateway
    /// mode the chart's DaemonSet selects; `provider_id` for VM-based pools, whose instances name their Node by
    /// it) and the chart's gateway DaemonSet pod on it: the real agent in the VM's network namespace `ns`, as
    /// child `name`; `i` numbers the DaemonSet's pods.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn start_gateway_agent(
        &mut self,
        name: &str,
        i: usize,
        node_name: &str,
        ns: &str,
        pool: &str,
        provider_id: Option<&str>,
        opts: &Options,
    ) -> anyhow::Result<()> {
        use super::dataplane::forward_loopback;
        let kube_port = self.kube.as_ref().context("no API server")?.port()?;
        let azure_addr = self.azure.as_ref().context("azure-sim")?.addr();
        let primary = self
            .azure
            .as_ref()
            .context("azure-sim")?
            .handle()
            .with_state(|s| fabric::read_view(&s.world, [&node_name.to_string()]))
            .vms
            .first()
            .map(|v| v.primary)
            .with_context(|| format!("azure-sim has no NIC for {node_name}"))?;
        self.forwarders.push(forward_loopback(ns, kube_port)?);
        let (imds_port, imds) = super::dataplane::imds_for_node(ns, azure_addr, node_name)?;
        self.forwarders.push(imds);
        // AKS gateway pool nodes: their pool and the gateway mode label the chart's DaemonSet selects.
        let labels: std::collections::BTreeMap<String, String> = [
            (api::names::NODE_AGENTPOOL_LABEL, pool),
            (api::names::NODE_GATEWAY_MODE_LABEL, "true"),
            ("kubernetes.io/os", "linux"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        let mut node = json!({"metadata": {"name": node_name, "labels": labels}});
        if let Some(p) = provider_id {
            node["spec"] = json!({"providerID": p});
        }
        self.heartbeat
            .as_ref()
            .context("no heartbeat")?
            .register(&self.client()?, node, primary)
            .await?;
        // The DaemonSet's pod on this node: hostNetwork, so the VM's own network namespace; the chart's
        // ports as they are. The gateway VMs share the host's mount namespace, so hostPaths are the host's.
        let mut spec = self.daemonset_pod(GATEWAY_AGENT, "gateway-agent", i, node_name, &labels, opts)?;
        spec.add_lab_arg(
            "--netns-name",
            &format!("{ns}-egw"),
            "all gateway VMs share the host's /var/run/netns; on a node it is ns-static-egress-gateway, made by the chart's netns-init init container",
        )?;
        spec.add_lab_arg(
            "--imds-endpoint",
            &format!("http://127.0.0.1:{imds_port}"),
            "this VM's instance metadata from azure-sim, instead of 169.254.169.254",
        )?;
        if let Some(mode) = &opts.images {
            // The chart's netns-init, privileged as in the chart, makes the gateway namespace (the lab's name).
            let args = self.init_container_args(
                mode,
                GATEWAY_AGENT,
                "netns-init",
                &format!("{name}-netns-init"),
                &Place::Netns(ns),
                Some(("ns-static-egress-gateway", &format!("{ns}-egw"))),
            )?;
            mode.run_init(&args).await?;
            info(&format!(
                "{name}: init container netns-init (privileged, as in the chart) made {ns}-egw"
            ));
        }
        self.launch(name, &spec, Place::Netns(ns), opts)?;
        self.netns.push(format!("{ns}-egw"));
        Ok(())
    }

    /// Regular nodes: their own mount namespace, the primary CNI configuration (bridge + host-local), the
    /// real node agent that chains our plugin after it and removes the node's cni-not-ready taint.
    async fn nodes(&mut self, opts: &Options) -> anyhow::Result<()> {
        use super::dataplane::forward_loopback;
        let tag = lab_tag();
        let mnt_dir = super::leftovers::mount_dir(std::path::Path::new("/run"), std::process::id());
        runtime::private_mount_dir(&mnt_dir)?;
        self.mnt_dir = Some(mnt_dir.clone());
        let kube_port = self.kube.as_ref().context("no API server")?.port()?;
        let nodes_api: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client()?);
        for (i, name) in regular_nodes().iter().enumerate() {
            let node = runtime::Node {
                name: name.clone(),
                netns: format!("{tag}node{i}"),
                mntns: mnt_dir.join(format!("node{i}")),
                dir: opts.work_dir.join("nodes").join(name),
                // From images, the plugin is the one the chart's cni-install copied from the agent image.
                cni_path: vec![
                    PathBuf::from(runtime::CNI_DIR),
                    if opts.images.is_some() {
                        opts.work_dir.join("nodes").join(name).join("cni-bin")
                    } else {
                        opts.bin_dir.clone()
                    },
                ],
            };
            runtime::create_mount_ns(&node.mntns, &node.dir)?;
            self.nodes.push(node.clone());
            let pod_cidr = regular_pod_cidr(i);
            let primary = runtime::primary_conflist(&pod_cidr, &node.dir.join("ipam"));
            std::fs::write(
                node.conf_dir().join("10-kubenet.conflist"),
                serde_json::to_vec_pretty(&primary)?,
            )
            .context("writing the primary CNI configuration")?;
            self.forwarders.push(forward_loopback(&node.netns, kube_port)?);
            let labels = regular_node_labels();
            // The DaemonSet's pod on this node: hostNetwork, so the node's network namespace, and its hostPath
            // volumes, which must be the node's own directories (bind mounts in its mount namespace).
            let spec = self.daemonset_pod(NODE_AGENT, "node-agent", i, name, &labels, opts)?;
            let shared: Vec<&str> = spec
                .host_paths
                .iter()
                .map(|h| h.host_path.as_str())
                .filter(|h| {
                    !runtime::NODE_PRIVATE_DIRS
                        .iter()
                        .any(|(d, _)| chart::normalize_run(h) == chart::normalize_run(d))
                })
                .collect();
            if !shared.is_empty() {
                bail!("{NODE_AGENT} mounts hostPaths that are not the lab node's own: {shared:?}");
            }
            if let Some(mode) = &opts.images {
                // The chart's cni-install copies the image's plugin into the node's plugin directory.
                let args = self.init_container_args(
                    mode,
                    NODE_AGENT,
                    "cni-install",
                    &format!("node-agent-{i}-cni-install"),
                    &Place::Node(&node),
                    None,
                )?;
                mode.run_init(&args).await?;
                info(&format!(
                    "node-agent-{i}: init container cni-install copied the image's {} into {}",
                    api::names::CNI_PLUGIN_TYPE,
                    node.dir.join("cni-bin").display()
                ));
            }
            self.launch(&format!("node-agent-{i}"), &spec, Place::Node(&node), opts)?;
        }
        for node in self.nodes.clone() {
            let ours = node.conf_dir().join(api::names::CNI_CONF_FILE);
            let (api, name) = (nodes_api.clone(), node.name.clone());
            self.wait(
                &format!(
                    "the node agent on {name} installs /etc/cni/net.d/{} and removes the {} taint",
                    api::names::CNI_CONF_FILE,
                    api::names::CNI_NOT_READY_TAINT
                ),
                opts,
                move || {
                    let (api, name, ours) = (api.clone(), name.clone(), ours.clone());
                    async move {
                        if !ours.exists() {
                            return Ok(false);
                        }
                        let n = api.get(&name).await?;
                        let taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
                        Ok(!taints.iter().any(|t| t.key == api::names::CNI_NOT_READY_TAINT))
                    }
                },
            )
            .await?;
            let (file, list) = node.network_config()?;
            let chain: Vec<String> = list["plugins"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p["type"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            ok(&format!(
                "node {} (own network and mount namespace): node agent installed {file} = [{}] (the runtime's first conflist), taint removed",
                node.name,
                chain.join(" -> ")
            ));
        }
        self.check_identity(
            "node agents",
            &format!("system:serviceaccount:{SYSTEM_NS}:{NODE_AGENT}"),
        )
    }

    /// Creates a pod as kubelet would (Pod object, netns, CNI ADD on node `node_idx`, status.podIP) and, when
    /// annotated, waits for its PodEndpoint. The lab tears it down like the default pods unless removed before.
    pub(super) async fn add_pod(
        &mut self,
        opts: &Options,
        name: &'static str,
        node_idx: usize,
        gateway: Option<&str>,
    ) -> anyhow::Result<runtime::Sandbox> {
        use k8s_openapi::api::core::v1::Pod;
        let pods: Api<Pod> = Api::namespaced(self.client()?, DEMO_NS);
        let node = self
            .nodes
            .get(node_idx)
            .cloned()
            .with_context(|| format!("no regular node {node_idx}"))?;
        let annotations: std::collections::BTreeMap<String, String> = gateway
            .map(|g| [(api::names::POD_GATEWAY_ANNOTATION.to_string(), g.to_string())].into())
            .unwrap_or_default();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": DEMO_NS, "annotations": annotations},
            "spec": {"nodeName": node.name, "containers": [{"name": "app",
                "image": "registry.k8s.io/e2e-test-images/agnhost:2.36"}]}
        }))?;
        let created = pods
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating Pod {DEMO_NS}/{name}"))?;
        let uid = created.metadata.uid.unwrap_or_default().replace('-', "");
        let netns = format!("{}pod-{name}", super::steps::lab_tag());
        self.add_netns(&netns)?;
        let (n2, nn, cid, ann) = (node.clone(), netns.clone(), format!("{uid:0>64}"), annotations);
        let sandbox = tokio::task::spawn_blocking(move || n2.add(DEMO_NS, name, &cid, &nn, &ann))
            .await
            .context("CNI ADD thread")?
            .with_context(|| format!("CNI ADD for pod {DEMO_NS}/{name} on {}", node.name))?;
        self.pods.push((node_idx, sandbox.clone()));
        let pod_ip = sandbox
            .ipv4()
            .with_context(|| format!("the CNI result has no IPv4: {}", sandbox.result))?;
        // The node's primary IP, as kubelet reports it.
        let host_ip = self
            .azure
            .as_ref()
            .context("azure-sim not started")?
            .handle()
            .with_state(|s| fabric::read_view(&s.world, [&node.name]))
            .vms
            .first()
            .map(|v| v.primary.to_string())
            .unwrap_or_default();
        pods.patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"phase": "Running", "podIP": pod_ip.to_string(),
                "podIPs": [{"ip": pod_ip.to_string()}], "hostIP": host_ip}})),
        )
        .await
        .with_context(|| format!("writing status.podIP of {DEMO_NS}/{name}"))?;
        let has_wg = sandbox.interfaces().iter().any(|i| i == "wg0");
        if has_wg != gateway.is_some() {
            bail!(
                "pod {name}: wg0 {} but the pod is {}annotated",
                if has_wg { "present" } else { "missing" },
                if gateway.is_some() { "" } else { "not " }
            );
        }
        if gateway.is_some() {
            let pes: Api<api::PodEndpoint> = Api::namespaced(self.client()?, DEMO_NS);
            self.wait(
                &format!("the node agent's PodEndpoint {DEMO_NS}/{name}"),
                opts,
                || {
                    let pes = pes.clone();
                    async move { Ok(pes.get_opt(name).await?.is_some()) }
                },
            )
            .await?;
        }
        info(&format!(
            "$ (kubelet) pod {DEMO_NS}/{name} on {}{}: netns {}, CNI ADD -> interfaces [{}], status.podIP = {pod_ip}",
            node.name,
            gateway
                .map(|g| format!(" (annotation {}={g})", api::names::POD_GATEWAY_ANNOTATION))
                .unwrap_or_default(),
            sandbox.netns,
            sandbox.interfaces().join(", ")
        ));
        Ok(sandbox)
    }

    /// An annotated and a plain pod: Pod object, network namespace, CNI ADD of the node's chain, status.podIP.
    async fn pods(&mut self, opts: &Options) -> anyhow::Result<()> {
        for (name, node_idx, annotated) in PODS {
            self.add_pod(opts, name, node_idx, annotated.then_some(SGC))
                .await?;
            if annotated {
                ok(&format!(
                    "{DEMO_NS}/{name} (annotation {}={SGC}): wg0 tunnel to the gateways' frontend, PodEndpoint {DEMO_NS}/{name} created by the node agent as system:serviceaccount:{SYSTEM_NS}:{NODE_AGENT} (the only writer the chart's webhook admits)",
                    api::names::POD_GATEWAY_ANNOTATION
                ));
            } else {
                ok(&format!(
                    "{DEMO_NS}/{name} (no annotation): eth0 only, the node's normal path"
                ));
            }
        }
        let columns =
            "custom-columns=NAME:.metadata.name,NODE:.spec.nodeName,POD-IP:.status.podIP,PHASE:.status.phase";
        let out = self
            .kubectl(opts, &["get", "pods", "-n", DEMO_NS, "-o", columns])
            .await?;
        if out.ok {
            info(&format!("$ kubectl get pods -n {DEMO_NS} -o {columns}"));
            for l in out.stdout.lines() {
                info(&format!("  {l}"));
            }
        }
        Ok(())
    }

    /// Each pod asks the echo host which address it came from; the annotated pod's must be inside
    /// status.egressIpPrefix and the plain pod's outside it.
    async fn egress(&mut self, opts: &Options) -> anyhow::Result<()> {
        use super::dataplane::{tcp_source_seen, udp_source_seen};
        let prefix = self.prefix.context("no egress prefix")?;
        // Whose public address is it: a gateway's secondary IP, or the cluster's outbound IP.
        let names: Vec<String> = self.wiring.nics.keys().cloned().collect();
        let view = self
            .azure
            .as_ref()
            .map(|a| a.handle().with_state(|s| fabric::read_view(&s.world, &names)))
            .unwrap_or_default();
        let outbound = self.outbound;
        let owner = move |a: Ipv4Addr| -> String {
            if Some(a) == outbound {
                return " (the cluster's outbound IP)".into();
            }
            view.vms
                .iter()
                .find_map(|v| {
                    v.secondaries
                        .iter()
                        .find(|(_, p)| *p == Some(a))
                        .map(|(s, _)| format!(" (public IP of {}'s secondary IP {s})", v.vm))
                })
                .unwrap_or_default()
        };
        // (pod, echo address, expect inside the prefix, what the check is).
        let mut checks = Vec::new();
        for (_, sb) in self.pods.clone() {
            let annotated = !sb.annotations.is_empty();
            let kind = if annotated { "annotated" } else { "plain" };
            checks.push((
                sb.clone(),
                ECHO_IP,
                annotated,
                format!("{DEMO_NS}/{} ({kind})", sb.name),
            ));
            if annotated {
                // Upstream e2e scenario (4): a destination in spec.excludeCidrs bypasses the gateway.
                checks.push((
                    sb.clone(),
                    ECHO_EXCLUDED_IP,
                    false,
                    format!(
                        "{DEMO_NS}/{} to {ECHO_EXCLUDED_IP} (in spec.excludeCidrs)",
                        sb.name
                    ),
                ));
            }
        }
        let mut failures = Vec::new();
        for (sb, to, want_inside, what) in checks {
            let echo = SocketAddr::from((to, ECHO_PORT));
            let udp = udp_source_seen(&sb.netns, echo, opts.step_timeout).await;
            let tcp = tcp_source_seen(&sb.netns, echo, opts.step_timeout).await;
            let seen = |a: Option<Ipv4Addr>| {
                a.map(|a| a.to_string())
                    .unwrap_or_else(|| "nothing (no answer)".into())
            };
            let whose = udp.map(&owner).unwrap_or_default();
            let good = [udp, tcp]
                .iter()
                .all(|a| a.is_some_and(|a| prefix.contains(&a) == want_inside));
            let want = format!(
                "{} status.egressIpPrefix {prefix}",
                if want_inside { "inside" } else { "outside" }
            );
            let line = format!(
                "{what}: the echo host saw UDP from {}, TCP from {}{whose} -> {want}",
                seen(udp),
                seen(tcp)
            );
            if good {
                ok(&line);
            } else {
                println!("    \u{2718} {line}: NO");
                failures.push(what);
            }
        }
        if !failures.is_empty() {
            bail!("wrong egress address for {}", failures.join(", "));
        }
        Ok(())
    }

    /// Polls `cond` until true, failing at the step timeout or when a component exits.
    pub(super) async fn wait<F, Fut>(&mut self, what: &str, opts: &Options, mut cond: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<bool>>,
    {
        info(&format!("waiting: {what}"));
        let deadline = tokio::time::Instant::now() + opts.step_timeout;
        let mut last_err = String::new();
        loop {
            match cond().await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last_err = format!("{e:#}"),
            }
            if let Some(gone) = self.children.exited() {
                bail!("while waiting for {what}: {gone}");
            }
            if tokio::time::Instant::now() >= deadline {
                let logs = self
                    .children
                    .logs()
                    .iter()
                    .map(|(n, l)| format!("{n}:\n{}", tail(l, 10)))
                    .collect::<Vec<_>>()
                    .join("\n");
                bail!(
                    "timed out after {}s waiting for {what}{}\n{logs}",
                    opts.step_timeout.as_secs(),
                    if last_err.is_empty() {
                        String::new()
                    } else {
                        format!(" (last error: {last_err})")
                    }
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// [`Lab::wait`] until `leftovers` finds nothing; on timeout the error lists what it last found in
    /// `place` (e.g. "azure-sim"), joined by `sep`.
    pub(super) async fn wait_until_none(
        &mut self,
        what: &str,
        opts: &Options,
        place: &str,
        sep: &str,
        mut leftovers: impl FnMut() -> Vec<String>,
    ) -> anyhow::Result<()> {
        let mut last = Vec::new();
        let waited = self
            .wait(what, opts, || {
                last = leftovers();
                let none = last.is_empty();
                async move { Ok(none) }
            })
            .await;
        waited.map_err(|e| anyhow::anyhow!("{e:#}\n    left in {place}: {}", last.join(sep)))
    }

    pub(super) async fn kubectl(&self, opts: &Options, args: &[&str]) -> anyhow::Result<KubectlOut> {
        let out = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(opts.work_dir.join("kube-cache"))
            .args(args)
            .current_dir(&opts.work_dir)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true)
            .output()
            .await
            .context("running kubectl (is it installed? scripts/install-deps.sh installs it)")?;
        Ok(KubectlOut {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Stops everything, then checks nothing is left: no child processes, simulators stopped, work dir gone.
    async fn teardown(&mut self, opts: &Options) -> anyhow::Result<()> {
        println!("\n==> teardown");
        let mut left = Vec::new();
        if let Some(f) = self.fabric.take() {
            f.stop();
        }
        // Pods first, while the node agents still answer the plugin's DEL (PodEndpoint removal).
        for (node_idx, sb) in std::mem::take(&mut self.pods).into_iter().rev() {
            let Some(node) = self.nodes.get(node_idx).cloned() else {
                continue;
            };
            let name = sb.name.clone();
            match tokio::task::spawn_blocking(move || node.del(&sb)).await {
                Ok(Ok(())) => info(&format!("CNI DEL of pod {DEMO_NS}/{name}")),
                Ok(Err(e)) => left.push(format!("CNI DEL of pod {name} failed: {e:#}")),
                Err(e) => left.push(format!("CNI DEL of pod {name}: {e}")),
            }
        }
        // wireguard-go processes of the lab, by the UAPI socket name they were started with.
        for ns in &self.netns {
            if let Some(i) = super::dataplane::netns_inode(ns)
                && !self.netns_inodes.contains(&i)
            {
                self.netns_inodes.push(i);
            }
        }
        let wg_sockets: Vec<PathBuf> = super::dataplane::processes_in(&self.netns_inodes)
            .into_iter()
            .filter(|(_, name)| name == "wireguard-go")
            .filter_map(|(pid, _)| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let last = cmdline.split(|b| *b == 0).rfind(|a| !a.is_empty())?;
                Some(PathBuf::from(format!(
                    "/run/wireguard/{}.sock",
                    String::from_utf8_lossy(last)
                )))
            })
            .collect();
        let stopped = self.children.stop_all(Duration::from_secs(5)).await;
        if let Some(mode) = &opts.images {
            let left = mode.remove_leftovers();
            if !left.is_empty() {
                info(&format!(
                    "removed containers left by killed `podman run`s: {left:?}"
                ));
            }
        }
        if !stopped.is_empty() {
            info(&format!("stopped {}", stopped.join(", ")));
        }
        // The shutdown paths (PodEndpoint deletion at CNI DEL, the agents' and the operator's cleanup on
        // SIGTERM) run with the chart's accounts too: a refusal there is a chart bug like any other.
        let refused = match self.kube.as_ref().map(|kube| self.rbac_refusals(kube)) {
            Some(Ok(r)) => r,
            Some(Err(e)) => vec![format!("cannot tell what the API server refused: {e:#}")],
            None => Vec::new(),
        };
        self.client = None;
        if let Some(h) = self.heartbeat.take() {
            h.stop();
        }
        if let Some(k) = self.kube.take() {
            let what = match k.backend() {
                Backend::Real => {
                    "the control plane (etcd, kube-apiserver, kube-controller-manager) stopped, its folder removed"
                }
                Backend::Sim => "kube-sim stopped",
            };
            k.shutdown().await;
            info(what);
        }
        if self.azure.take().is_some() {
            info("azure-sim stopped");
        }
        for h in self.forwarders.drain(..) {
            h.abort();
        }
        // Anything still living in the lab's namespaces (e.g. wireguard-go started by an agent) goes first.
        for (pid, name) in super::dataplane::processes_in(&self.netns_inodes) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            info(&format!("stopping {name} (pid {pid}) left in a lab namespace"));
        }
        for signal in [None, Some(nix::sys::signal::Signal::SIGKILL)] {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while tokio::time::Instant::now() < deadline
                && !super::dataplane::processes_in(&self.netns_inodes).is_empty()
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if let Some(sig) = signal {
                for (pid, _) in super::dataplane::processes_in(&self.netns_inodes) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
                }
            }
        }
        for ns in self.netns.drain(..).rev() {
            if super::dataplane::netns_inode(&ns).is_some()
                && let Err(e) = super::dataplane::ip(&["netns", "del", &ns])
            {
                left.push(format!("{e:#}"));
            }
        }
        // The nodes' mount namespaces: pods' wireguard sockets were in the nodes' own /run/wireguard.
        for node in std::mem::take(&mut self.nodes) {
            let sockets: Vec<String> = std::fs::read_dir(node.wireguard_dir())
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            if !sockets.is_empty() {
                left.push(format!(
                    "wireguard sockets on {}: {}",
                    node.name,
                    sockets.join(", ")
                ));
            }
            if let Err(e) = runtime::unmount(&node.mntns) {
                left.push(format!("{e:#}"));
            }
        }
        if let Some(dir) = self.mnt_dir.take() {
            if let Err(e) = runtime::unmount(&dir) {
                left.push(format!("{e:#}"));
            }
            let mounts = runtime::mounts_under(&dir);
            if !mounts.is_empty() {
                left.push(format!("mounts: {}", mounts.join(", ")));
            } else if let Err(e) = std::fs::remove_dir_all(&dir) {
                left.push(format!("{}: {e}", dir.display()));
            }
        }
        // Gateways' wireguard-go sockets are on the host; a process that had to be killed leaves its socket.
        for sock in wg_sockets {
            if sock.exists() {
                match std::fs::remove_file(&sock) {
                    Ok(()) => info(&format!(
                        "removed {} (its wireguard-go was killed)",
                        sock.display()
                    )),
                    Err(e) => left.push(format!("wireguard socket {}: {e}", sock.display())),
                }
            }
        }
        let tables = std::process::Command::new("nft")
            .args(["list", "tables"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if tables.contains(fabric::NFT_TABLE) {
            left.push(format!("nft table {} in the host namespace", fabric::NFT_TABLE));
        }
        let tag = lab_tag();
        let leftover_ns = super::dataplane::netns_with_prefix(&tag);
        if !leftover_ns.is_empty() {
            left.push(format!("network namespaces: {}", leftover_ns.join(", ")));
        }
        let stragglers = super::dataplane::processes_in(&self.netns_inodes);
        if !stragglers.is_empty() {
            left.push(format!("processes in lab namespaces: {stragglers:?}"));
        }
        if opts.work_dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&opts.work_dir)
        {
            left.push(format!("work dir {}: {e}", opts.work_dir.display()));
        }
        let children = live_children();
        if !children.is_empty() {
            left.push(format!("child processes: {}", children.join(", ")));
        }
        match (left.is_empty(), refused.is_empty()) {
            (true, true) => {
                ok("shutting down, the chart's RBAC refused its service accounts nothing");
                ok(
                    "nothing left: no child processes, no lab network namespaces, work dir removed; no lab mounts, nft tables or wireguard sockets",
                );
                Ok(())
            }
            (true, false) => bail!("during shutdown {}", refused.join("; ")),
            (false, true) => bail!("left behind: {}", left.join("; ")),
            (false, false) => bail!(
                "left behind: {}; during shutdown {}",
                left.join("; "),
                refused.join("; ")
            ),
        }
    }
}

/// The Deployments' pods' IPs on the real server. The webhook's must be one the apiserver can reach and that
/// Endpoints accept (not loopback): the host end of a veth whose peer sits in the lab's namespace
/// `lab<pid>-pods`, so deleting that namespace (teardown, or the next run's leftovers clean-up) removes the
/// link too. A /30 of `10.254.0.0/16` per run, from its pid; refused when an interface already has it.
pub(super) struct PodNetwork {
    ns: String,
    link: String,
    base: Ipv4Addr,
    used: u32,
}

impl PodNetwork {
    fn create(tag: &str, pid: u32) -> anyhow::Result<Self> {
        use super::dataplane::ip;
        let n = pid % 16_000;
        let base = Ipv4Addr::new(10, 254, (n / 64) as u8, ((n % 64) * 4) as u8);
        let taken = std::process::Command::new("ip")
            .args(["-o", "-4", "addr", "show", "to", &format!("{base}/30")])
            .output()
            .context("running ip")?;
        if !taken.stdout.is_empty() {
            bail!(
                "the pod network {base}/30 is in use on this machine: {}",
                String::from_utf8_lossy(&taken.stdout).trim()
            );
        }
        let ns = format!("{tag}pods");
        let link = format!("{tag}pods");
        ip(&["netns", "add", &ns])?;
        ip(&[
            "link", "add", "name", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["link", "set", &link, "up"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        Ok(Self {
            ns,
            link,
            base,
            used: 0,
        })
    }

    /// The next pod's IP (`.1`, `.2` of the /30), added to the host end.
    fn next_ip(&mut self) -> anyhow::Result<Ipv4Addr> {
        if self.used >= 2 {
            bail!("the lab's pod network has room for two Deployment pods");
        }
        self.used += 1;
        let ip = Ipv4Addr::from(u32::from(self.base) + self.used);
        super::dataplane::ip(&["addr", "add", &format!("{ip}/32"), "dev", &self.link])?;
        Ok(ip)
    }
}

/// How many of the requests counted by (method, status) in `counts` (kube-sim's `requests_by`) match `which`.
fn count_requests(
    counts: &std::collections::BTreeMap<(String, u16), u64>,
    which: impl Fn(&str, u16) -> bool,
) -> u64 {
    counts
        .iter()
        .filter(|((method, code), _)| which(method, *code))
        .map(|(_, n)| n)
        .sum()
}

pub(super) struct KubectlOut {
    pub(super) ok: bool,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

/// The lab's Azure world: AKS-like, with the gateway VMSS pool `gwpool` (2 instances, /31 prefix size tag),
/// the regular pool `nodepool1` (2 instances, no gateway tag), a second gateway VMSS pool `tfpool` (2
/// instances, /31) that only scenario 8 declares a GatewayPool for (with Terraform), and the VM-based gateway
/// pool `gwvms` (2 VMs, each with a pre-created NIC tagged as a static gateway NIC of the pool, /31 prefix
/// size tag). Pools are seeded in this order, so adding one after the others leaves their addresses as they
/// were.
pub(super) fn lab_seed() -> Seed {
    let mut seed = Seed::aks_like(2);
    for v in &mut seed.vm_scale_sets {
        v.name = format!("aks-{POOL}-12345678-vmss");
        v.pool_name = POOL.into();
        v.gateway_prefix_size = Some(31);
    }
    let mut regular = seed.vm_scale_sets[0].clone();
    regular.name = format!("aks-{NODE_POOL}-12345678-vmss");
    regular.pool_name = NODE_POOL.into();
    regular.gateway_prefix_size = None;
    seed.vm_scale_sets.push(regular);
    let mut tf = seed.vm_scale_sets[0].clone();
    tf.name = format!("aks-{TF_POOL}-12345678-vmss");
    tf.pool_name = TF_POOL.into();
    seed.vm_scale_sets.push(tf);
    seed.with_vm_pool(VM_POOL, VM_POOL_VMS, VM_POOL_VMS)
}

/// (pool, computer name) of every gateway VMSS instance in the lab's seed, in seed order.
pub(super) fn gateway_nodes() -> Vec<(String, String)> {
    lab_seed()
        .vm_scale_sets
        .iter()
        .filter(|v| v.gateway_prefix_size.is_some())
        .flat_map(|v| (0..v.instances).map(move |i| (v.pool_name.clone(), format!("{}{i:06}", v.name))))
        .collect()
}

/// Computer names of the VM-based pool's VMs as azure-sim holds them (VMs tagged with the pool), sorted.
pub(super) fn vm_pool_nodes(azure: &crate::azure::SimHandle) -> Vec<String> {
    use crate::azure::world::VM_TYPE;
    let mut names: Vec<String> = azure.with_state(|s| {
        s.world
            .resource_ids()
            .iter()
            .filter_map(|id| s.world.get(id))
            .filter(|v| {
                v["type"]
                    .as_str()
                    .is_some_and(|t| t.eq_ignore_ascii_case(VM_TYPE))
            })
            .filter(|v| {
                v.pointer(&format!("/tags/{}", api::names::TAG_AKS_POOL_NAME))
                    .and_then(|t| t.as_str())
                    .is_some_and(|t| t.eq_ignore_ascii_case(VM_POOL))
            })
            .filter_map(|v| {
                v.pointer("/properties/osProfile/computerName")
                    .and_then(|n| n.as_str())
                    .map(str::to_string)
            })
            .collect()
    });
    names.sort();
    names
}

/// IDs of the resources azure-sim holds (its inventory) whose lower-cased ID contains `segment`.
fn azure_ids(azure: &AzureSim, segment: &str) -> Vec<String> {
    azure.inventory()["resources"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|r| r.as_str())
                .filter(|r| r.to_ascii_lowercase().contains(segment))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Prefix of the names this run gives host-wide things (network namespaces, the nodes' mount directory), so
/// teardown finds whatever of them is left: `lab<pid>-`.
pub(super) fn lab_tag() -> String {
    super::leftovers::run_tag(std::process::id())
}

/// The labels AKS gives a regular node.
fn regular_node_labels() -> std::collections::BTreeMap<String, String> {
    [
        (api::names::NODE_AGENTPOOL_LABEL, NODE_POOL),
        ("kubernetes.io/os", "linux"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into()
}

/// Regular node `i`'s pod CIDR (kubenet's per-node range).
fn regular_pod_cidr(i: usize) -> String {
    format!("10.244.{i}.0/24")
}

/// Computer names of the regular nodes (VMSS instances of `nodepool1`).
fn regular_nodes() -> Vec<String> {
    let seed = lab_seed();
    seed.vm_scale_sets
        .iter()
        .filter(|v| v.pool_name == NODE_POOL)
        .flat_map(|v| (0..v.instances).map(move |i| format!("{}{i:06}", v.name)))
        .collect()
}

/// Sets a sysctl inside network namespace `ns`.
fn sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    super::dataplane::run_in(ns, "sysctl", &["-q", "-w", &format!("{key}={value}")], "")
}

/// The lab's values for the chart: the cloud config points at azure-sim with the service principal of its
/// seed (the chart passes the endpoint keys through, as for a custom cloud); one webhook replica with the
/// chart's self-signed certificate and no drain delay, a 1 s LB probe drain (the lab stops components with a
/// 5 s grace); the LB probe port the fabric probes; the node agents watch userspace pods' tunnels only (the
/// lab's pods use wireguard-go, and the pod namespace directory is the host's, shared by every lab node).
fn lab_values(seed: &Seed, azure_url: &str) -> anyhow::Result<serde_json::Value> {
    if seed.service_principals.is_empty() {
        bail!("seed has no service principal");
    }
    Ok(json!({
        "common": {"gatewayLbProbePort": api::names::DEFAULT_LB_PROBE_PORT},
        "config": {"azureCloudConfig": seed.cloud_config(azure_url)},
        "webhook": {"replicas": 1, "drainSeconds": 0, "certificates": {"mode": "selfSigned"}},
        "gatewayDaemonManager": {"lbProbeDrainDelaySeconds": 1},
        "gatewayCNIManager": {"podTunnelWatch": {"podNetnsDir": ""}},
    }))
}

/// Renders the chart with `scripts/render-chart.py` (the Helm SDK) and `values`; the rendered text.
async fn render_chart(opts: &Options, values: &Path) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("python3")
        .arg(&opts.render_chart)
        .args(["--release", RELEASE, "--namespace", SYSTEM_NS, "-f"])
        .arg(values)
        .kill_on_drop(true)
        .output()
        .await
        .context("running python3 (scripts/install-deps.sh installs it and the Helm SDK)")?;
    if !out.status.success() {
        bail!(
            "rendering the chart with {} failed: {}",
            opts.render_chart.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("the rendered chart is not UTF-8")
}

/// The downward-API view of a Deployment's (only) pod. Webhook and operator run on the host, in no node's
/// namespaces; their pods are said to be on the first regular node.
fn deployment_pod(name: &str) -> chart::Pod {
    chart::Pod {
        namespace: SYSTEM_NS.into(),
        name: format!("{name}-0"),
        node_name: regular_nodes().into_iter().next().unwrap_or_default(),
    }
}

/// A free loopback port (bound then released; the component binds it right after).
fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    l.local_addr().context("free port address")
}

/// The HTTP status of `GET path` on a plain-HTTP loopback port, or None when it does not answer within 2 s.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    tokio::time::timeout(
        Duration::from_secs(2),
        super::dataplane::http_get(addr, path, &[]),
    )
    .await
    .ok()
    .flatten()
    .map(|(status, _)| status)
}
