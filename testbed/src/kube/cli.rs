//! The `kube-sim` binary's flags and run: the simulator on loopback, a kubeconfig per user, CRDs from files;
//! stops on Ctrl-C or SIGTERM. `src/bin/kube-sim.rs` hands [`Args`] to [`daemon::main`], which parses them
//! and runs them.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use serde::Deserialize as _;

use super::{KubeSim, KubeSimConfig, User, random_token};

/// The `kube-sim` flags.
#[derive(Debug, clap::Parser)]
#[command(
    name = "kube-sim",
    version,
    about = "In-memory Kubernetes API server (HTTPS, bearer tokens, CRDs, admission webhooks)"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Where to write the admin kubeconfig; `<path>.viewer` and `<path>.nobody` are written too.
    #[arg(long, default_value = "kube-sim.kubeconfig")]
    pub kubeconfig: PathBuf,
    /// CRD manifests (YAML files or directories of them) to install at start.
    #[arg(long)]
    pub crds: Vec<PathBuf>,
    /// Map a webhook Service to a local address: `namespace/name=127.0.0.1:9443`.
    #[arg(long = "service")]
    pub services: Vec<String>,
    /// Add a service account user `namespace/name` (RBAC-authorized); its kubeconfig is
    /// `<kubeconfig>.sa.<namespace>.<name>`.
    #[arg(long = "service-account")]
    pub service_accounts: Vec<String>,
}

impl daemon::Daemon for Args {
    /// Serves until Ctrl-C or SIGTERM; errors are bad flags, unreadable CRD files and start-up failures.
    async fn run(self) -> anyhow::Result<()> {
        let args = self;
        let mut cfg = KubeSimConfig {
            listen: args.listen,
            ..KubeSimConfig::default()
        };
        for s in &args.services {
            let (k, v) = parse_service(s)?;
            cfg.services.insert(k, v);
        }
        let mut extra_files = vec![
            ("viewer".to_string(), ".viewer".to_string()),
            ("nobody".into(), ".nobody".into()),
        ];
        for sa in &args.service_accounts {
            let (ns, name) = sa
                .split_once('/')
                .with_context(|| format!("--service-account {sa:?}: expected namespace/name"))?;
            let user = User::service_account(ns, name, &random_token());
            extra_files.push((user.name.clone(), format!(".sa.{ns}.{name}")));
            cfg.users.push(user);
        }
        let sim = KubeSim::start(cfg).await?;
        sim.write_kubeconfig(&args.kubeconfig, "admin")?;
        for (user, suffix) in extra_files {
            let mut p = args.kubeconfig.clone().into_os_string();
            p.push(suffix);
            sim.write_kubeconfig(&PathBuf::from(p), &user)?;
        }
        let client = sim.client("admin")?;
        let crds: kube::Api<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        > = kube::Api::all(client);
        for f in crd_files(&args.crds)? {
            let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value = serde_yaml::Value::deserialize(doc)
                    .with_context(|| format!("parsing {}", f.display()))?;
                if value.is_null() {
                    continue;
                }
                let crd = serde_json::from_value(serde_json::to_value(value)?)
                    .with_context(|| format!("{} is not a CRD", f.display()))?;
                crds.create(&Default::default(), &crd)
                    .await
                    .with_context(|| format!("installing {}", f.display()))?;
            }
        }
        tracing::info!(url = %sim.url(), kubeconfig = %args.kubeconfig.display(), "ready");
        daemon::shutdown_signal().await;
        tracing::info!("shutting down");
        sim.shutdown().await;
        Ok(())
    }
}

fn parse_service(s: &str) -> anyhow::Result<((String, String), SocketAddr)> {
    let (svc, addr) = s
        .split_once('=')
        .with_context(|| format!("--service {s:?}: expected namespace/name=ip:port"))?;
    let (ns, name) = svc
        .split_once('/')
        .with_context(|| format!("--service {s:?}: expected namespace/name before '='"))?;
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("--service {s:?}: {addr:?} is not ip:port"))?;
    Ok(((ns.to_string(), name.to_string()), addr))
}

fn crd_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect();
            entries.sort();
            out.extend(entries);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}
