//! `lab`: the README's main-job command (run by `scripts/lab.sh`). The logic lives in `testbed::lab`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Brings up the simulated Azure and Kubernetes, installs the Helm chart, runs the real components from it, applies a GatewayPool and a
/// StaticGatewayConfiguration with kubectl, shows the result, and tears everything down.
#[derive(Debug, Parser)]
#[command(name = "lab", version)]
struct Args {
    /// Leave everything running (until Ctrl-C) and print a kubeconfig for kubectl.
    #[arg(long)]
    keep: bool,
    /// Directory with the workspace binaries; default: the directory of this binary.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The chart renderer (Helm SDK); default: scripts/render-chart.py of the source tree this lab was built from.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/render-chart.py"))]
    render_chart: PathBuf,
    /// Longest wait for any one condition, in seconds.
    #[arg(long, default_value_t = 60)]
    step_timeout: u64,
    /// After the default steps, run these scenarios (upstream's e2e numbering, plus ours): `all`, or a list
    /// such as `2,3,9`. 2 BYO public IP prefix, 3 ingress to an annotated pod, 5 two configurations on one
    /// pool, 6 private mode, 8 terraform apply/destroy with our provider (needs `terraform` on PATH), 9 gateway
    /// failover (measured), 10 delete everything and check Azure is clean.
    #[arg(long, default_value = "none")]
    scenarios: String,
    /// Run every component from its image (the chart's image references, in podman's local storage, e.g.
    /// built by scripts/release.sh) with `podman run` in the lab's namespaces, instead of the binaries.
    #[arg(long)]
    from_images: bool,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let scenarios = match testbed::lab::scenarios::parse(&args.scenarios) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: --scenarios: {e}");
            std::process::exit(2);
        }
    };
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => match std::env::current_exe() {
            Ok(p) => p.parent().map(PathBuf::from).unwrap_or_default(),
            Err(e) => {
                eprintln!("error: cannot find the lab binary's directory: {e}");
                std::process::exit(2);
            }
        },
    };
    let opts = testbed::lab::Options {
        keep: args.keep,
        bin_dir,
        render_chart: args.render_chart,
        work_dir: std::env::temp_dir().join(format!("kube-egress-lab-{}", std::process::id())),
        step_timeout: Duration::from_secs(args.step_timeout),
        scenarios,
        images: args.from_images.then(testbed::lab::images::ImageMode::detect),
    };
    println!("kube-egress-gateway lab (work dir {})", opts.work_dir.display());
    match testbed::lab::run(opts).await {
        Ok(()) => println!("\nlab finished"),
        Err(e) => {
            eprintln!("\nlab failed: {e:#}");
            std::process::exit(1);
        }
    }
}
