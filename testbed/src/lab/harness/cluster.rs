//! The cluster job: Azure and the Kubernetes API started, the chart installed with kubectl, the webhook and
//! the operator running, the demo GatewayPool and configuration applied (steps 1 to 3).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail};
use api::StaticGatewayConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use super::{
    DEMO_NS, ECHO_EXCLUDED_IP, Lab, NODE_POOL, OPERATOR, Options, POOL, RELEASE, SGC, SYSTEM_NS, VM_POOL,
    WEBHOOK, azure_ids, lab_seed, regular_node_labels, regular_nodes, regular_pod_cidr, vm_pool_nodes,
};
use crate::azure::{AzureSim, Seed};
use crate::cluster::Backend;
use crate::files::write_private;
use crate::lab::chart;
use crate::lab::fabric;
use crate::lab::images::Place;
use crate::lab::kube_api::KubeApi;
use crate::lab::kubelet::{self, Heartbeat};
use crate::lab::report::{info, ok};
use anyhow::Context as _;

impl Lab {
    pub(in crate::lab) async fn simulators(&mut self, opts: &Options) -> anyhow::Result<()> {
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

    pub(in crate::lab) async fn webhook(&mut self, opts: &Options) -> anyhow::Result<()> {
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
        let refusal = self
            .refused_apply(
                opts,
                "forged-podendpoint.yaml",
                "written only by the node agent",
                "a PodEndpoint written as admin was not refused by the chart's webhook",
            )
            .await?;
        info("$ kubectl apply -f forged-podendpoint.yaml   # as admin");
        info(&format!("  {refusal}"));
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

    /// `kubectl apply -f file`, which must be refused with `marker` in the message; the refusal (stderr).
    /// Otherwise fails with `not_refused` and what kubectl said.
    async fn refused_apply(
        &self,
        opts: &Options,
        file: &str,
        marker: &str,
        not_refused: &str,
    ) -> anyhow::Result<String> {
        let out = self.kubectl(opts, &["apply", "-f", file]).await?;
        if out.ok || !out.stderr.contains(marker) {
            bail!(
                "{not_refused} (exit ok: {}): {}{}",
                out.ok,
                out.stdout.trim(),
                out.stderr.trim()
            );
        }
        Ok(out.stderr.trim().to_string())
    }

    pub(in crate::lab) async fn operator(&mut self, opts: &Options) -> anyhow::Result<()> {
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

    pub(in crate::lab) async fn configure(&mut self, opts: &Options) -> anyhow::Result<()> {
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
        let refusal = self
            .refused_apply(
                opts,
                "invalid-sgc.yaml",
                "denied the request",
                "the invalid configuration was not refused by the webhook",
            )
            .await?;
        info(&format!("  {refusal}"));
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
            crate::lab::azure_view::show(a, &lbs, &st.gateway_vm_profiles, net)?;
        }
        Ok(())
    }
}

/// The lab's values for the chart: the cloud config points at azure-sim with the service principal of its
/// seed (the chart passes the endpoint keys through, as for a custom cloud); one webhook replica with the
/// chart's self-signed certificate and no drain delay, a 1 s LB probe drain (the lab stops components with a
/// 5 s grace); the LB probe port the fabric probes; the gateway agents on the default `wireguardBackend: auto`,
/// which finds no WireGuard kernel module here and uses wireguard-go, through the `/dev/net/tun` the chart mounts; the node
/// agents watch userspace pods' tunnels only (the lab's pods use wireguard-go, and the pod namespace directory
/// is the host's, shared by every lab node).
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
pub(in crate::lab) async fn render_chart(opts: &Options, values: &Path) -> anyhow::Result<String> {
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
        crate::lab::dataplane::http_get(addr, path, &[]),
    )
    .await
    .ok()
    .flatten()
    .map(|(status, _)| status)
}
