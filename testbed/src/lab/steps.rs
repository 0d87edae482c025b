//! The lab's steps, in order, and the teardown that always runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::net::Ipv4Addr;

use anyhow::{Context as _, anyhow, bail};
use api::StaticGatewayConfiguration;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::procs::{Children, live_children, tail};
use super::{Options, info, ok, step};
use crate::azure::{AzureSim, Seed};
use crate::kube::KubeSim;

/// Namespace of the components (as the chart installs them).
const SYSTEM_NS: &str = "kube-egress-gateway-system";
/// Namespace of the demo configuration and pods.
const DEMO_NS: &str = "demo";
/// The webhook Service the configurations point at.
const WEBHOOK_SVC: &str = "kube-egress-gateway-webhook";
/// Name of both webhook configurations.
const WEBHOOK_CONFIG: &str = "kube-egress-gateway";
/// The gateway node pool (AKS agent pool name, and the GatewayPool's name).
const POOL: &str = "gwpool";
/// The demo StaticGatewayConfiguration.
const SGC: &str = "egress";

/// Everything the lab started, so teardown can stop it whatever happened.
#[derive(Default)]
struct Lab {
    children: Children,
    kube: Option<KubeSim>,
    azure: Option<AzureSim>,
    client: Option<kube::Client>,
    kubeconfig: PathBuf,
    /// The step that is running (number, name), for the failure message.
    current: (usize, &'static str),
    /// UID and gateway profiles of the demo configuration once Ready.
    sgc_uid: String,
    profiles: Vec<api::sgc::GatewayVmProfile>,
    /// Network namespaces the lab created (`ip netns` names) and their inodes.
    netns: Vec<String>,
    netns_inodes: Vec<u64>,
    /// Loopback forwarders into the namespaces.
    forwarders: Vec<tokio::task::JoinHandle<()>>,
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
    if let Some(a) = &lab.azure {
        println!(
            "    Azure simulator: {} (inventory: {}/_sim/inventory)",
            a.url(),
            a.url()
        );
    }
    for (name, log) in lab.children.logs() {
        println!("    {name} log: {}", log.display());
    }
    println!("    work dir: {}", opts.work_dir.display());
}

impl Lab {
    fn begin(&mut self, n: usize, name: &'static str) {
        self.current = (n, name);
        step(n, name);
    }

    fn client(&self) -> anyhow::Result<kube::Client> {
        self.client.clone().context("Kubernetes client not set up")
    }

    async fn steps(&mut self, opts: &Options) -> anyhow::Result<()> {
        self.begin(1, "simulators: Kubernetes API and Azure");
        self.simulators().await?;
        self.begin(2, "webhook and operator (real binaries)");
        self.webhook(opts).await?;
        self.operator(opts).await?;
        self.begin(3, "kubectl apply: GatewayPool and StaticGatewayConfiguration");
        self.configure(opts).await?;
        self.begin(4, "data plane: gateway nodes");
        let agent = opts.bin_dir.join("kube-egress-gateway-agent");
        if !nix::unistd::geteuid().is_root() || !agent.exists() {
            info(&format!(
                "SKIPPED: needs root and {} (scripts/lab.sh builds it and runs as root)",
                agent.display()
            ));
        } else {
            self.gateways(opts, &agent).await?;
        }
        info("NOT PART OF THE LAB YET: regular nodes, node agents, the CNI chain, pods, the floating-IP");
        info(
            "forwarding and edge SNAT of the Azure fabric, and the echo host; so no pod traffic is sent and",
        );
        info("no pod source address is shown or verified.");
        Ok(())
    }

    async fn simulators(&mut self) -> anyhow::Result<()> {
        let kube = KubeSim::start(Default::default())
            .await
            .context("starting the Kubernetes API simulator")?;
        kube.write_kubeconfig(&self.kubeconfig, "admin")
            .context("writing the kubeconfig")?;
        let client = kube.client("admin").context("Kubernetes client")?;
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let mut names = Vec::new();
        for crd in api::crd::all() {
            crds.create(&PostParams::default(), &crd)
                .await
                .with_context(|| format!("creating CRD {:?}", crd.metadata.name))?;
            names.push(crd.spec.names.kind.clone());
        }
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for ns in [SYSTEM_NS, DEMO_NS] {
            let n: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
            namespaces
                .create(&PostParams::default(), &n)
                .await
                .with_context(|| format!("creating namespace {ns}"))?;
        }
        ok(&format!(
            "kube-sim at {} with CRDs {} and namespaces {SYSTEM_NS}, {DEMO_NS}",
            kube.url(),
            names.join(", ")
        ));

        let seed = lab_seed();
        let azure = AzureSim::start(&seed)
            .await
            .context("starting the Azure simulator")?;
        let resources: Vec<String> = azure.inventory()["resources"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let has = |kind: &str| {
            resources
                .iter()
                .filter(|r| r.to_ascii_lowercase().contains(kind))
                .count()
        };
        if has("/virtualmachinescalesets/") == 0 {
            bail!("the Azure simulator has no VMSS: {resources:?}");
        }
        if has("/loadbalancers/") != 0 {
            bail!("the Azure simulator already has a load balancer: {resources:?}");
        }
        let vmss = &seed.vm_scale_sets[0];
        ok(&format!(
            "azure-sim at {}: subscription {}, vnet aks-vnet/aks-subnet, VMSS {} ({} instances, tags aks-managed-poolName={}, aks-managed-gatewayIPPrefixSize={}), public range {}, no internal load balancer yet",
            azure.url(),
            seed.subscription_id,
            vmss.name,
            vmss.instances,
            vmss.pool_name,
            vmss.gateway_prefix_size.unwrap_or_default(),
            seed.public_ip_ranges
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
        self.kube = Some(kube);
        self.azure = Some(azure);
        self.client = Some(client);
        Ok(())
    }

    async fn webhook(&mut self, opts: &Options) -> anyhow::Result<()> {
        let client = self.client()?;
        // Registered as the chart does; the webhook patches its self-generated CA into both at start.
        let group = api::names::GROUP;
        let entry = |name: &str, path: &str, resource: &str| {
            json!({
                "name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
                "timeoutSeconds": 5,
                "clientConfig": {"service": {"namespace": SYSTEM_NS, "name": WEBHOOK_SVC, "path": path, "port": 443}},
                "rules": [{"apiGroups": [group], "apiVersions": ["*"], "resources": [resource],
                    "operations": ["CREATE", "UPDATE"], "scope": "*"}],
            })
        };
        let mutating: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": WEBHOOK_CONFIG},
            "webhooks": [entry("mutate.staticgatewayconfigurations.egressgateway.kubernetes.azure.com",
                "/mutate-staticgatewayconfiguration", "staticgatewayconfigurations")]
        }))?;
        let validating: ValidatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": WEBHOOK_CONFIG},
            "webhooks": [
                entry("validate.staticgatewayconfigurations.egressgateway.kubernetes.azure.com",
                    "/validate-staticgatewayconfiguration", "staticgatewayconfigurations"),
                entry("validate.gatewaypools.egressgateway.kubernetes.azure.com",
                    "/validate-gatewaypool", "gatewaypools"),
            ]
        }))?;
        let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        mwcs.create(&PostParams::default(), &mutating)
            .await
            .context("creating the MutatingWebhookConfiguration")?;
        vwcs.create(&PostParams::default(), &validating)
            .await
            .context("creating the ValidatingWebhookConfiguration")?;

        let listen = free_port()?;
        let metrics = free_port()?;
        self.kube
            .as_ref()
            .context("kube-sim not started")?
            .map_service(SYSTEM_NS, WEBHOOK_SVC, listen);
        let args = [
            "--listen".to_string(),
            listen.to_string(),
            "--metrics-listen".into(),
            metrics.to_string(),
            "--self-signed-dns-names".into(),
            format!("{WEBHOOK_SVC}.{SYSTEM_NS}.svc"),
            "--mutating-webhook-configuration".into(),
            WEBHOOK_CONFIG.into(),
            "--validating-webhook-configuration".into(),
            WEBHOOK_CONFIG.into(),
            "--podendpoint-writers".into(),
            format!("system:serviceaccount:{SYSTEM_NS}:kube-egress-gateway-node-agent"),
            "--drain-seconds".into(),
            "0".into(),
        ];
        self.children.spawn(
            "webhook",
            &opts.bin_dir.join("kube-egress-gateway-webhook"),
            &args,
            &[("KUBECONFIG", self.kubeconfig.display().to_string())],
            &opts.work_dir,
        )?;
        self.wait("webhook /readyz answers 200", opts, || async {
            Ok(http_status(metrics, "/readyz").await == Some(200))
        })
        .await?;
        self.wait("the webhook's CA is in both webhook configurations", opts, || {
            let (mwcs, vwcs) = (mwcs.clone(), vwcs.clone());
            async move {
                let m = mwcs.get(WEBHOOK_CONFIG).await?;
                let v = vwcs.get(WEBHOOK_CONFIG).await?;
                let m_ok = m.webhooks.unwrap_or_default().iter().all(|w| {
                    w.client_config
                        .ca_bundle
                        .as_ref()
                        .is_some_and(|b| !b.0.is_empty())
                });
                let v_ok = v.webhooks.unwrap_or_default().iter().all(|w| {
                    w.client_config
                        .ca_bundle
                        .as_ref()
                        .is_some_and(|b| !b.0.is_empty())
                });
                Ok(m_ok && v_ok)
            }
        })
        .await?;
        ok(&format!(
            "webhook serving at {listen} (Service {SYSTEM_NS}/{WEBHOOK_SVC}), ready, CA patched into the webhook configurations"
        ));
        Ok(())
    }

    async fn operator(&mut self, opts: &Options) -> anyhow::Result<()> {
        let client = self.client()?;
        let azure = self.azure.as_ref().context("azure-sim not started")?;
        let seed = lab_seed();
        let sp = seed
            .service_principals
            .first()
            .context("seed has no service principal")?;
        let cloud = json!({
            "cloud": "AzurePublicCloud", "location": seed.location, "subscriptionId": seed.subscription_id,
            "tenantId": seed.tenant_id, "aadClientId": sp.client_id, "aadClientSecret": sp.client_secret,
            "resourceGroup": "node-rg", "vnetName": "aks-vnet", "subnetName": "aks-subnet",
            "resourceManagerEndpoint": azure.url(), "activeDirectoryAuthorityHost": azure.url()
        });
        let cloud_path = opts.work_dir.join("azure.json");
        write_private(&cloud_path, &cloud.to_string())?;
        let health = free_port()?;
        let metrics = free_port()?;
        let args = [
            "--cloud-config".to_string(),
            cloud_path.display().to_string(),
            "--leader-elect".into(),
            "--metrics-bind-port".into(),
            metrics.port().to_string(),
            "--health-probe-bind-port".into(),
            health.port().to_string(),
        ];
        self.children.spawn(
            "operator",
            &opts.bin_dir.join("kube-egress-gateway-operator"),
            &args,
            &[
                ("KUBECONFIG", self.kubeconfig.display().to_string()),
                ("MY_POD_NAMESPACE", SYSTEM_NS.to_string()),
            ],
            &opts.work_dir,
        )?;
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
        let who = holder.lock().map(|g| g.clone()).unwrap_or_default();
        ok(&format!(
            "operator elected leader: {who}; ready; cloud config points at azure-sim"
        ));
        Ok(())
    }

    async fn configure(&mut self, opts: &Options) -> anyhow::Result<()> {
        let pool = format!(
            "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: GatewayPool\nmetadata:\n  name: {POOL}\nspec:\n  gatewayNodepoolName: {POOL}\n  publicIpPrefixSize: 31\n"
        );
        let sgc = format!(
            "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\nmetadata:\n  name: {SGC}\n  namespace: {DEMO_NS}\nspec:\n  gatewayNodepoolName: {POOL}\n  excludeCidrs:\n    - 10.0.0.0/8\n"
        );
        let invalid = format!(
            "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\nmetadata:\n  name: broken\n  namespace: {DEMO_NS}\nspec:\n  gatewayNodepoolName: {POOL}\n  publicIpPrefixId: my-prefix\n  excludeCidrs:\n    - 1.2.3.4\n"
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
        info(
            "$ kubectl apply -f invalid-sgc.yaml   # publicIpPrefixId not an ARM ID, excludeCidrs[0] not a CIDR",
        );
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
            let lbs: Vec<String> = a.inventory()["resources"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .filter_map(|r| r.as_str())
                        .filter(|r| r.to_ascii_lowercase().contains("/loadbalancers/"))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
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

    /// Gateway namespaces on a fabric bridge, the real gateway agent in each, and the fabric's view of their
    /// load-balancer probes.
    async fn gateways(&mut self, opts: &Options, agent: &Path) -> anyhow::Result<()> {
        use super::dataplane::{forward_loopback, ip, netns_inode, probe_from};
        let tag = format!("lab{}-", std::process::id());
        let fabric = format!("{tag}fabric");
        ip(&["netns", "add", &fabric])?;
        self.netns.push(fabric.clone());
        ip(&["-n", &fabric, "link", "set", "lo", "up"])?;
        ip(&["-n", &fabric, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &fabric, "addr", "add", "10.224.0.1/16", "dev", "br0"])?;
        ip(&["-n", &fabric, "link", "set", "br0", "up"])?;
        let kube_port = self.kube.as_ref().context("kube-sim")?.addr().port();
        let azure = self.azure.as_ref().context("azure-sim")?;
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client()?);
        let profiles = self.profiles.clone();
        let mut gws = Vec::new();
        for (i, vm) in profiles.iter().enumerate() {
            let ns = format!("{tag}gw{i}");
            ip(&["netns", "add", &ns])?;
            self.netns.push(ns.clone());
            let primary: Ipv4Addr = vm
                .primary_ip
                .parse()
                .with_context(|| format!("primary IP '{}' of {}", vm.primary_ip, vm.node_name))?;
            let fab_if = format!("gw{i}");
            ip(&[
                "link", "add", "name", &fab_if, "netns", &fabric, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &fabric, "link", "set", &fab_if, "master", "br0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{primary}/16"), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "route", "add", "default", "via", "10.224.0.1"])?;
            self.forwarders.push(forward_loopback(&ns, kube_port)?);
            let (imds_port, imds) = super::dataplane::imds_for_node(&ns, azure.addr(), &vm.node_name)?;
            self.forwarders.push(imds);
            let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
                "metadata": {"name": vm.node_name, "labels": {api::names::NODE_AGENTPOOL_LABEL: POOL}}
            }))?;
            nodes
                .create(&PostParams::default(), &node)
                .await
                .with_context(|| format!("creating Node {}", vm.node_name))?;
            let args = [
                format!("--net={}", PathBuf::from("/var/run/netns").join(&ns).display()),
                "--".into(),
                agent.display().to_string(),
                "--mode".into(),
                "gateway".into(),
                "--node-name".into(),
                vm.node_name.clone(),
                "--namespace".into(),
                SYSTEM_NS.into(),
                "--netns-name".into(),
                format!("{tag}gw{i}-egw"),
                "--host-interface".into(),
                "eth0".into(),
                "--imds-endpoint".into(),
                format!("http://127.0.0.1:{imds_port}"),
                "--metrics-bind-address".into(),
                "127.0.0.1:0".into(),
                "--health-probe-bind-address".into(),
                "127.0.0.1:0".into(),
                "--lb-probe-drain-delay-seconds".into(),
                "1".into(),
            ];
            self.children.spawn(
                &format!("gateway-agent-{i}"),
                Path::new("nsenter"),
                &args,
                &[("KUBECONFIG", self.kubeconfig.display().to_string())],
                &opts.work_dir,
            )?;
            self.netns.push(format!("{tag}gw{i}-egw"));
            gws.push((vm.node_name.clone(), primary));
        }
        for ns in &self.netns {
            if let Some(i) = netns_inode(ns) {
                self.netns_inodes.push(i);
            }
        }
        let path = api::names::lb_probe_path(&self.sgc_uid);
        let frontend = Api::<StaticGatewayConfiguration>::namespaced(self.client()?, DEMO_NS)
            .get(SGC)
            .await?
            .status
            .and_then(|s| s.gateway_server_profile)
            .map(|p| p.ip)
            .unwrap_or_default();
        for (i, (node, _)) in gws.iter().enumerate() {
            let ns = format!("{tag}gw{i}");
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
        for (node, primary) in &gws {
            let (f, p) = (fabric.clone(), path.clone());
            let primary = *primary;
            self.wait(
                &format!("the fabric's probe of {node} ({primary}:8082{path}) answers 200"),
                opts,
                move || {
                    let (f, p) = (f.clone(), p.clone());
                    async move { Ok(probe_from(&f, primary, 8082, &p).await == Some(200)) }
                },
            )
            .await?;
            ok(&format!(
                "gateway agent on {node} ({primary}, own netns) is up; the fabric's LB probe :8082{path} answers 200"
            ));
        }
        Ok(())
    }

    /// Polls `cond` until true, failing at the step timeout or when a component exits.
    async fn wait<F, Fut>(&mut self, what: &str, opts: &Options, mut cond: F) -> anyhow::Result<()>
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

    async fn kubectl(&self, opts: &Options, args: &[&str]) -> anyhow::Result<KubectlOut> {
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
        let stopped = self.children.stop_all(Duration::from_secs(5)).await;
        if !stopped.is_empty() {
            info(&format!("stopped {}", stopped.join(", ")));
        }
        self.client = None;
        if let Some(k) = self.kube.take() {
            k.shutdown().await;
            info("kube-sim stopped");
        }
        if self.azure.take().is_some() {
            info("azure-sim stopped");
        }
        let mut left = Vec::new();
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
        let tag = format!("lab{}-", std::process::id());
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
        if left.is_empty() {
            ok("nothing left: no child processes, no lab network namespaces, work dir removed");
            Ok(())
        } else {
            bail!("left behind: {}", left.join("; "))
        }
    }
}

struct KubectlOut {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// The lab's Azure world: AKS-like, with the gateway VMSS pool `gwpool` (2 instances, /31 prefix size tag).
fn lab_seed() -> Seed {
    let mut seed = Seed::aks_like(2);
    for v in &mut seed.vm_scale_sets {
        v.name = format!("aks-{POOL}-12345678-vmss");
        v.pool_name = POOL.into();
        v.gateway_prefix_size = Some(31);
    }
    seed
}

/// A free loopback port (bound then released; the component binds it right after).
fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    l.local_addr().context("free port address")
}

/// Writes a file only the owner can read (it holds the simulated service principal's secret).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The HTTP status of `GET path` on a plain-HTTP loopback port, or None when it does not answer.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}
