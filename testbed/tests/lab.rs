//! The README's main-job command, end to end: the lab binary installing the Helm chart and running the real
//! webhook, operator, agents (from the chart's workloads, as its service accounts) and CNI plugin. Covers upstream scenario (7) (an invalid configuration refused with the rule's message) and
//! scenario (1) (the configuration becomes Ready with a prefix from the public range; the annotated pod's
//! traffic reaches the echo host from an address inside it, the plain pod's from one outside it), scenario (4)
//! (a destination in excludeCidrs bypasses the gateway), and that
//! the teardown leaves no process, namespace, mount or work directory behind. The main job runs on both API
//! servers (`--kube real` and `--kube sim`), the other tests on the default one.

use std::path::{Path, PathBuf};
use std::process::Command;

mod lab_common;
use lab_common::bin_dir;

/// The text after the first occurrence of `marker` (empty when absent).
fn after<'a>(text: &'a str, marker: &str) -> &'a str {
    text.find(marker)
        .map(|i| &text[i + marker.len()..])
        .unwrap_or_default()
}

fn work_dir_of(stdout: &str) -> Option<PathBuf> {
    let line = stdout.lines().find(|l| l.contains("(work dir "))?;
    let start = line.find("(work dir ")? + "(work dir ".len();
    Some(PathBuf::from(line[start..].trim_end_matches(')')))
}

#[test]
fn lab_runs_end_to_end_on_the_real_control_plane_and_leaves_nothing() {
    let stdout = main_job("real");
    assert!(
        stdout.lines().next().is_some_and(|l| l.starts_with(
            "Kubernetes API: the real control plane (etcd, kube-apiserver, kube-controller-manager from "
        ) && l.contains("chosen by --kube")),
        "the first line names the API server:\n{stdout}"
    );
    // The apiserver calls the chart's webhooks at the Service's endpoints, which kube-controller-manager's
    // endpoints controller derived from the webhook's pod the lab bound and reported Ready.
    let endpoints = after(
        &stdout,
        "\u{2714} Endpoints kube-egress-gateway-system/kube-egress-gateway-webhook = ",
    )
    .split_whitespace()
    .next()
    .unwrap_or_else(|| panic!("no Endpoints line:\n{stdout}"));
    let ip: std::net::SocketAddr = endpoints.parse().expect("an address");
    assert!(!ip.ip().is_loopback() && ip.port() == 9443, "{endpoints}");
    assert!(
        stdout.contains(&format!("--listen=0.0.0.0:9443 -> --listen={endpoints}")),
        "the webhook listens at its endpoint:\n{stdout}"
    );
    assert!(
        stdout.contains("Kubernetes API v1.28.7: real etcd + kube-apiserver + kube-controller-manager"),
        "{stdout}"
    );
    assert!(
        stdout.contains("a token for each of the chart's ServiceAccounts (TokenRequest API)"),
        "{stdout}"
    );
    assert_eq!(
        stdout
            .matches("none forbidden by the chart's RBAC (the apiserver's audit log)")
            .count(),
        4,
        "{stdout}"
    );
}

#[test]
fn lab_runs_end_to_end_on_kube_sim_and_leaves_nothing() {
    let stdout = main_job("sim");
    assert!(
        stdout.lines().next().is_some_and(
            |l| l.starts_with("Kubernetes API: kube-sim, the in-process simulator (chosen by --kube")
        ),
        "the first line names the API server:\n{stdout}"
    );
}

/// Runs the lab's main job on `kube` and checks what both API servers must show; returns its output.
fn main_job(kube: &str) -> String {
    let dir = bin_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_lab"))
        .arg("--bin-dir")
        .arg(&dir)
        .arg("--step-timeout")
        .arg("40")
        .args(["--kube", kube])
        .output()
        .expect("lab runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "lab failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for expected in [
        "==> step 1: simulators",
        "==> step 2: webhook and operator",
        "operator elected leader",
        "denied the request: StaticGatewayConfiguration demo/broken is invalid: spec.publicIpPrefixId: rule 6",
        "\u{2714} the webhook refused the invalid configuration",
        "demo/egress is Ready; status.egressIpPrefix = 20.10.0.",
        "azure-sim now has the internal load balancer",
        "\u{2714} shutting down, the chart's RBAC refused its service accounts nothing",
        "\u{2714} nothing left: no child processes, no lab network namespaces, work dir removed; no lab mounts, nft tables or wireguard sockets",
        "==> step 8: egress",
        "CNI DEL of pod demo/egress-client",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in the lab's output:\n{stdout}"
        );
    }
    // The chart is what the lab installs: every rendered object applied, and every component started from its
    // workload and talking to the API server as the chart's service account, refused nothing by the chart's RBAC.
    let installed = stdout
        .lines()
        .find(|l| l.contains("installed from the chart ("))
        .unwrap_or_else(|| panic!("no chart install line:\n{stdout}"));
    for kind in [
        "4 CustomResourceDefinition",
        "4 ServiceAccount",
        "2 Deployment",
        "2 DaemonSet",
        "1 MutatingWebhookConfiguration",
        "1 ValidatingWebhookConfiguration",
    ] {
        assert!(installed.contains(kind), "{kind} not in {installed:?}");
    }
    for (component, account, workload) in [
        ("webhook", "webhook", "Deployment/kube-egress-gateway-webhook"),
        ("operator", "operator", "Deployment/kube-egress-gateway-operator"),
        (
            "gateway agents",
            "gateway-agent",
            "DaemonSet/kube-egress-gateway-gateway-agent",
        ),
        (
            "node agents",
            "node-agent",
            "DaemonSet/kube-egress-gateway-node-agent",
        ),
    ] {
        let user = format!("system:serviceaccount:kube-egress-gateway-system:kube-egress-gateway-{account}");
        let line = format!("\u{2714} {component}: API requests as {user} (");
        assert!(stdout.contains(&line), "missing {line:?}:\n{stdout}");
        assert!(
            stdout.contains(&format!("{workload} container ")) && stdout.contains(&format!(" as {user}")),
            "{component} not started from {workload} as {user}:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("\u{2714} over the whole run the chart's RBAC refused its service accounts nothing"),
        "{stdout}"
    );
    // The webhook's PodEndpoint rule (the chart's --podendpoint-writers) refuses admin, and admits the node agent.
    assert!(
        stdout.contains("written only by the node agent (system:serviceaccount:kube-egress-gateway-system:kube-egress-gateway-node-agent); user \"admin\" may not create them"),
        "{stdout}"
    );
    assert!(
        stdout.contains("PodEndpoint demo/egress-client created by the node agent as system:serviceaccount:kube-egress-gateway-system:kube-egress-gateway-node-agent"),
        "{stdout}"
    );
    // Both real gateway agents, each in its own namespace, answer the fabric's load-balancer probe.
    assert_eq!(
        stdout
            .matches("own netns) is up; the fabric's LB probe :8082/gw/")
            .count(),
        2,
        "{stdout}"
    );
    // Regular nodes: the node agent chained our plugin after the primary one.
    assert_eq!(
        stdout
            .matches("node agent installed 01-egressgateway.conflist = [bridge -> kube-egress-cni]")
            .count(),
        2,
        "{stdout}"
    );
    // The check marks: the annotated pod egresses inside status.egressIpPrefix, the plain one outside it,
    // which the test re-checks from the addresses printed.
    let prefix: ipnet::Ipv4Net = after(&stdout, "status.egressIpPrefix = ")
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no prefix in:\n{stdout}"));
    // Upstream scenario (4): the annotated pod's traffic to a destination in excludeCidrs bypasses the gateway.
    for (pod, inside) in [
        ("egress-client (annotated)", true),
        ("plain-client (plain)", false),
        ("egress-client to 198.51.100.20 (in spec.excludeCidrs)", false),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("demo/{pod}: the echo host saw UDP from ")))
            .unwrap_or_else(|| panic!("no egress line for {pod}:\n{stdout}"));
        assert!(line.trim_start().starts_with('\u{2714}'), "{line}");
        let udp: std::net::Ipv4Addr = after(line, "UDP from ")
            .trim_end_matches(',')
            .split([',', ' '])
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no UDP source in {line:?}"));
        let tcp: std::net::Ipv4Addr = after(line, "TCP from ")
            .split(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no TCP source in {line:?}"));
        assert_eq!(prefix.contains(&udp), inside, "{line} (prefix {prefix})");
        assert_eq!(prefix.contains(&tcp), inside, "{line} (prefix {prefix})");
    }
    // The printed table comes from kubectl itself.
    let table = stdout
        .lines()
        .skip_while(|l| !l.contains("$ kubectl get sgc -n demo"))
        .nth(2)
        .unwrap_or_default();
    assert!(
        table.contains("egress") && table.contains("True"),
        "kubectl get sgc row: {table:?}\n{stdout}"
    );
    let work = work_dir_of(&stdout).expect("the lab names its work dir");
    assert!(
        !Path::new(&work).exists(),
        "work dir {} left behind",
        work.display()
    );
    stdout
}

#[test]
fn a_failing_step_is_named_and_everything_is_still_torn_down() {
    // No component binaries here: step 2 cannot start the webhook after step 1 started both simulators.
    let empty = std::env::temp_dir().join(format!("lab-empty-bin-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("empty bin dir");
    let out = Command::new(env!("CARGO_BIN_EXE_lab"))
        .arg("--bin-dir")
        .arg(&empty)
        .output()
        .expect("lab runs");
    let _ = std::fs::remove_dir(&empty);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "lab should fail:\n{stdout}");
    assert!(
        stdout.contains("FAILED at step 2 (webhook and operator (real binaries)): starting webhook"),
        "failure does not name the step and cause:\n{stdout}"
    );
    assert!(
        stdout.contains(
            "\u{2714} nothing left: no child processes, no lab network namespaces, work dir removed"
        ),
        "no clean teardown after the failure:\n{stdout}"
    );
    let work = work_dir_of(&stdout).expect("the lab names its work dir");
    assert!(!work.exists(), "work dir {} left behind", work.display());
}

#[test]
fn keep_waits_for_ctrl_c_then_tears_down() {
    use std::io::{BufRead as _, BufReader};
    let dir = bin_dir();
    let mut guard = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_lab"))
            .arg("--bin-dir")
            .arg(&dir)
            .arg("--keep")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("lab runs"),
    );
    let child = &mut guard.0;
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = String::new();
    let mut kubeconfig = None;
    // Read until the --keep summary has printed its kubeconfig (the lab exits on failure, ending the loop).
    for line in lines.by_ref() {
        let line = line.expect("line");
        seen.push_str(&line);
        seen.push('\n');
        if let Some(k) = line.trim().strip_prefix("export KUBECONFIG=") {
            kubeconfig = Some(PathBuf::from(k));
        }
        if line.contains("work dir: ") && kubeconfig.is_some() {
            break;
        }
    }
    let kubeconfig = kubeconfig.unwrap_or_else(|| panic!("no kubeconfig printed:\n{seen}"));
    assert!(
        seen.contains("pod demo/egress-client: ip netns exec "),
        "the kept lab names the pods' namespaces:\n{seen}"
    );
    let get = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "sgc", "-n", "demo", "-o", "name"])
        .output()
        .expect("kubectl runs");
    assert!(
        String::from_utf8_lossy(&get.stdout).contains("egress"),
        "kubectl against the kept lab: {}",
        String::from_utf8_lossy(&get.stderr)
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    for line in lines {
        seen.push_str(&line.expect("line"));
        seen.push('\n');
    }
    let status = child.wait().expect("lab exits");
    assert!(status.success(), "lab after Ctrl-C:\n{seen}");
    assert!(
        seen.contains(
            "\u{2714} nothing left: no child processes, no lab network namespaces, work dir removed"
        ),
        "{seen}"
    );
    assert!(!kubeconfig.exists(), "kubeconfig left behind");
}

/// Stops a kept lab if the test fails before it sends Ctrl-C (SIGINT, so the lab still tears down).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            if let Ok(pid) = i32::try_from(self.0.id()) {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGINT);
            }
            let _ = self.0.wait();
        }
    }
}
