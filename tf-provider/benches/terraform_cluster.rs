//! Wall time of the real `terraform` CLI with this provider against the test cluster (the real control plane,
//! or kube-sim with `TESTBED_KUBE=sim`, with the real webhook; the real operator on the Azure simulator): `plan` and `apply` for 1 and 100 configurations on
//! one pool, the refresh-only `plan` after them and `destroy`; and the provider's start-up time (process
//! spawn to handshake line, with AutoMTLS as Terraform launches it).
//!
//! `cargo bench -p tf-provider --bench terraform_cluster -- [--runs N] [--sizes 1,100] [--parallelism P]`;
//! `--smoke` is one round of one configuration and one start-up, with the same checks (scripts/test.sh does).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{APP_NS, Cluster, Workspace, pool_tf};

fn config(n: usize) -> String {
    let pool = pool_tf("");
    format!(
        r#"{pool}
resource "egressgateway_static_gateway_configuration" "egress" {{
  count                 = {n}
  namespace             = "{APP_NS}"
  name                  = "egress-${{count.index}}"
  gateway_nodepool_name = egressgateway_gateway_pool.gw.gateway_nodepool_name
  exclude_cidrs         = ["10.0.0.0/8"]
}}

output "egress_prefixes" {{
  value = egressgateway_static_gateway_configuration.egress[*].egress_ip_prefix
}}
"#
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn fmt(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// Times a `terraform` run that must exit with `code` (a plan's `-detailed-exitcode`: 2 with changes, 0
/// without).
async fn timed<F: std::future::Future<Output = support::Run>>(what: &str, code: i32, f: F) -> Duration {
    let start = Instant::now();
    let run = f.await;
    let took = start.elapsed();
    assert_eq!(run.code, code, "{what}:\n{run}");
    took
}

/// One round for `n` configurations (the process's cluster, emptied by the round before): (plan, apply, plan after, destroy).
async fn round(n: usize, parallelism: Option<usize>) -> [Duration; 4] {
    let mut cluster = Cluster::start().await;
    cluster.start_operator().await;
    let mut env = cluster.credentials("admin").await;
    if let Some(p) = parallelism {
        for cmd in ["plan", "apply", "destroy"] {
            env.push((format!("TF_CLI_ARGS_{cmd}"), format!("-parallelism={p}")));
        }
    }
    let ws = Workspace::new(env, &config(n));
    let plan = timed("plan (creates everything)", 2, ws.plan()).await;
    let apply = timed("apply", 0, ws.apply_result()).await;
    let shown = ws.show().await;
    let prefixes = shown.output("egress_prefixes");
    assert_eq!(
        prefixes
            .as_array()
            .map(|a| a.iter().filter(|p| p.is_string()).count()),
        Some(n),
        "every configuration has its prefix"
    );
    let replan = timed("plan after apply (must be empty)", 0, ws.plan()).await;
    let destroy = timed("destroy", 0, ws.destroy()).await;
    cluster.assert_empty().await;
    [plan, apply, replan, destroy]
}

/// Spawn to handshake line, as Terraform launches the provider (magic cookie, protocol 6, a client
/// certificate, so AutoMTLS with a fresh server certificate).
fn startup(runs: usize) -> Vec<Duration> {
    let bin = env!("CARGO_BIN_EXE_terraform-provider-egressgateway");
    let client = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("client cert");
    let pem = client.cert.pem();
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            let mut child = Command::new(bin)
                .env(
                    tf_provider::server::MAGIC_COOKIE_KEY,
                    tf_provider::server::MAGIC_COOKIE_VALUE,
                )
                .env("PLUGIN_PROTOCOL_VERSIONS", "5,6")
                .env("PLUGIN_MIN_PORT", "10000")
                .env("PLUGIN_MAX_PORT", "25000")
                .env("PLUGIN_CLIENT_CERT", &pem)
                .env("TF_PROVIDER_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn provider");
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("handshake line");
            let took = start.elapsed();
            assert!(line.starts_with("1|6|tcp|127.0.0.1:"), "{line}");
            let _ = child.kill();
            let _ = child.wait();
            took
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let smoke = args.iter().any(|a| a == "--smoke");
    let runs: usize = if smoke {
        1
    } else {
        arg("--runs").and_then(|r| r.parse().ok()).unwrap_or(3)
    };
    // Terraform's default is 10 operations at a time.
    let parallelism: Option<usize> = arg("--parallelism").and_then(|p| p.parse().ok());
    let sizes: Vec<usize> = arg("--sizes")
        .filter(|_| !smoke)
        .unwrap_or_else(|| if smoke { "1" } else { "1,100" }.into())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();

    let start_runs = if smoke { 1 } else { 20 };
    let starts = startup(start_runs);
    let mut sorted = starts.clone();
    sorted.sort();
    println!(
        "provider start-up (spawn to handshake, AutoMTLS), {start_runs} runs: p50 {}, max {}",
        fmt(median(starts)),
        fmt(sorted[sorted.len() - 1])
    );

    println!("| configurations | plan (create) | apply (to Ready) | plan after apply | destroy |");
    println!("|---:|---:|---:|---:|---:|");
    for n in sizes {
        let mut cols: [Vec<Duration>; 4] = Default::default();
        for _ in 0..runs {
            for (c, d) in cols.iter_mut().zip(round(n, parallelism).await) {
                c.push(d);
            }
        }
        let [a, b, c, d] = cols.map(median);
        println!("| {n} | {} | {} | {} | {} |", fmt(a), fmt(b), fmt(c), fmt(d));
    }
}
