//! CNI 1.1.0's STATUS and GC, run as a runtime runs the plugin: CNI_* environment, configuration on stdin.

mod runtime;

use std::path::Path;
use std::process::{Command, Output};

use runtime::text;

/// Runs the plugin binary with `command` and `conf` on stdin.
fn run(command: &str, conf: &str) -> Output {
    run_with_path(command, conf, &std::env::var_os("PATH").unwrap_or_default())
}

/// [`run`] with the runtime's `PATH` set to `path`.
fn run_with_path(command: &str, conf: &str, path: &std::ffi::OsStr) -> Output {
    runtime::run(&[("CNI_COMMAND", command.as_ref()), ("PATH", path)], conf)
}

fn conf(version: &str, socket: &Path, extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"{version}","name":"k8s","type":"kube-egress-cni","socketPath":{socket:?}{extra}}}"#,
        socket = socket.display().to_string()
    )
}

/// A PATH (in `dir`) with the node's `ip`, `nsenter` and `sysctl`, but no `nft`.
fn path_without_nft(dir: &Path) -> std::path::PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    for tool in ["ip", "nsenter", "sysctl"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{tool} on this machine's PATH"));
        std::os::unix::fs::symlink(found, bin.join(tool)).expect("link the tool");
    }
    bin
}

#[test]
fn status_succeeds_silently_without_the_agent_or_the_nodes_programs() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No node agent answers on the socket (it restarts), and the node lacks `nft`: pods without the
    // annotation need neither, so the node's pod network is not reported down.
    let socket = dir.path().join("cni.sock");
    let bin = path_without_nft(dir.path());
    for path in [std::env::var_os("PATH").unwrap_or_default(), bin.into_os_string()] {
        let out = run_with_path("STATUS", &conf("1.1.0", &socket, ""), &path);
        assert!(
            out.status.success(),
            "{} {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout).trim(), "", "STATUS prints nothing on success");
    }

    // STATUS is a 1.1.0 command.
    let out = run("STATUS", &conf("1.0.0", &socket, ""));
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a CNI error on stdout");
    assert_eq!(err["code"], 1, "{err}");
}

#[test]
fn an_annotated_pods_add_is_error_50_naming_the_programs_the_node_lacks_before_changing_anything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = path_without_nft(dir.path());
    // The runtime passes the pod's annotations, so the plugin needs no agent to know the pod is annotated; the
    // namespace path does not exist: had the plugin gone on, it would have failed there instead.
    let extra = format!(
        r#","prevResult":{{"cniVersion":"1.0.0","interfaces":[],"ips":[]}},"runtimeConfig":{{"io.kubernetes.cri.pod-annotations":{{"{}":"egress"}}}}"#,
        api::names::POD_GATEWAY_ANNOTATION
    );
    let out = runtime::run(
        &[
            ("CNI_COMMAND", "ADD".as_ref()),
            ("CNI_CONTAINERID", "c1".as_ref()),
            ("CNI_NETNS", "/nonexistent/netns".as_ref()),
            ("CNI_IFNAME", "eth0".as_ref()),
            (
                "CNI_ARGS",
                "K8S_POD_NAMESPACE=app;K8S_POD_NAME=p;K8S_POD_UID=u1".as_ref(),
            ),
            ("PATH", bin.as_os_str()),
        ],
        &conf("1.1.0", &dir.path().join("cni.sock"), &extra),
    );
    assert!(!out.status.success());
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a CNI error on stdout");
    assert_eq!(err["code"], 50, "{err}");
    let details = err["details"].as_str().unwrap_or_default();
    assert!(details.contains("missing on the node's PATH: nft"), "{err}");
}

#[test]
fn gc_without_the_valid_attachments_removes_nothing_and_says_what_is_missing() {
    let out = run("GC", &conf("1.1.0", Path::new("/nonexistent.sock"), ""));
    assert!(!out.status.success());
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a CNI error on stdout");
    assert_eq!(err["code"], 7, "{err}");
    assert!(
        err["details"]
            .as_str()
            .is_some_and(|d| d.contains("cni.dev/valid-attachments")),
        "{err}"
    );
}

/// Runs the plugin (the runtime's `env`, the configuration `conf` on stdin) in a private mount and network
/// namespace (root), where the userspace socket directory and the plugin's records directory are fresh tmpfs
/// and the links are the namespace's own, so nothing of the machine's is touched. `setup` (shell, in the socket
/// directory) runs before the plugin, `listing` after it; stdout is then the plugin's, `rc=<its exit code>`,
/// the socket directory, `listing`'s and the namespace's link names, a line each; and stderr.
fn in_private_namespaces(setup: &str, listing: &str, conf: &str, env: &[(&str, &str)]) -> (String, String) {
    let root = cni::plugin::RECORDS_ROOT;
    let script = format!(
        r#"set -e
mkdir -p /run/wireguard {root}
mount -t tmpfs tmpfs /run/wireguard
mount -t tmpfs tmpfs {root}
cd /run/wireguard
{setup}
rc=0
printf '%s' "$CONF" | "$@" || rc=$?
echo "rc=$rc"
ls /run/wireguard
{listing}
ip -o link show | awk -F': ' '{{print $2}}' | cut -d@ -f1
"#
    );
    let out = Command::new("unshare")
        .args(["--mount", "--net", "sh", "-c", &script, "plugin"])
        .arg(env!("CARGO_BIN_EXE_kube-egress-cni"))
        .env("CNI_PATH", "/opt/cni/bin")
        .env("CONF", conf)
        .envs(env.iter().copied())
        .output()
        .expect("unshare runs");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout} {stderr}");
    (stdout, stderr)
}

/// Shell lines that make, in the current directory, a bound UAPI socket `<name>.sock` for each of `sockets`,
/// and a (veth) link of each of `links`.
fn sockets_and_links(sockets: &[&str], links: &[&str]) -> String {
    let mut sh = format!(
        "python3 -c 'import socket, sys\nfor n in sys.argv[1:]: socket.socket(socket.AF_UNIX).bind(n + \".sock\")' {}\n",
        sockets.join(" ")
    );
    for (i, l) in links.iter().enumerate() {
        sh.push_str(&format!("ip link add {l} type veth peer name peer{i}\n"));
    }
    sh
}

/// DEL after an upgrade removes what an interrupted ADD of the earlier version left in the node's namespace
/// for its sandbox, under that version's name (which GC ignores): the link and the userspace tunnel's UAPI
/// socket; and its sandbox's link, the network's record that it owns that name and a killed ADD's record.
/// Another sandbox's are left alone.
#[test]
fn del_removes_the_pre_upgrade_leftovers_of_its_sandbox() {
    let earlier = cni::plugin::pre_upgrade_control_name("sandbox-del");
    let current = cni::plugin::control_name("k8s", "sandbox-del");
    let others = cni::plugin::pre_upgrade_control_name("sandbox-other");
    let others_current = cni::plugin::control_name("k8s", "sandbox-other");
    let owned = cni::plugin::owned_dir("k8s").display().to_string();
    // ADD records of ADDs killed before they removed them (a runtime's timeout): this sandbox's and another's.
    let adding = cni::plugin::ADDING_DIR;
    let setup = format!(
        "mkdir -p {owned} {adding}\ntouch {owned}/{current} {owned}/{others_current} {adding}/{current} \
         {adding}/{others_current}\n{}",
        sockets_and_links(&[&earlier, &others], &[&earlier, &current, &others])
    );
    let conf = conf("1.1.0", Path::new("/nonexistent.sock"), "");
    let (stdout, stderr) = in_private_namespaces(
        &setup,
        &format!("ls {owned} | sed 's/^/owned:/'; ls {adding} | sed 's/^/adding:/'"),
        &conf,
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "sandbox-del"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
        ],
    );
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    assert_eq!(
        lines.get(..2),
        Some(&[r#"{"cniVersion":"1.1.0"}"#, "rc=0"][..]),
        "DEL succeeds: {stdout} {stderr}"
    );
    let has = |n: &str| lines.contains(&n);
    for gone in [
        earlier.clone(),
        format!("{earlier}.sock"),
        current.clone(),
        format!("owned:{current}"),
        format!("adding:{current}"),
    ] {
        assert!(!has(&gone), "{gone} is removed: {stdout}");
    }
    for kept in [
        others.clone(),
        format!("{others}.sock"),
        format!("owned:{others_current}"),
        format!("adding:{others_current}"),
    ] {
        assert!(has(&kept), "{kept} of another sandbox is kept: {stdout}");
    }
}

/// GC in a private mount and network namespace ([`in_private_namespaces`]).
#[test]
fn gc_removes_only_the_stale_pod_tunnels_of_sandboxes_the_runtime_no_longer_has() {
    // This network is `k8s` (the configuration's name); `macvlan-net` chains the plugin too.
    let name = |sandbox: &str| cni::plugin::control_name("k8s", sandbox);
    let (keep, stale, young) = (name("sandbox-keep"), name("sandbox-stale"), name("sandbox-young"));
    // A kernel link an ADD is creating right now (its record is fresh), and one an ADD that died long ago left.
    let (adding, crashed) = (name("sandbox-adding"), name("sandbox-crashed"));
    // The other network's attachments, which this network's runtime call does not list.
    let other = cni::plugin::control_name("macvlan-net", "sandbox-other");
    let other_crashed = cni::plugin::control_name("macvlan-net", "sandbox-other-crashed");
    assert_ne!(
        cni::plugin::network_prefix("k8s"),
        cni::plugin::network_prefix("macvlan-net")
    );
    // Tunnels named by an earlier version of the plugin (a hash of the container id only, no network): a running
    // pod's, and one an interrupted ADD left for a sandbox the runtime no longer has. Neither name starts with
    // this network's prefix: GC ignores both (the DEL of their sandbox removes them).
    let legacy_of = |what: &str| {
        (0..)
            .map(|i| format!("sandbox-legacy-{what}-{i}"))
            .find(|s| {
                !cni::plugin::pre_upgrade_control_name(s).starts_with(&cni::plugin::network_prefix("k8s"))
            })
            .expect("some sandbox id")
    };
    let (legacy_sandbox, legacy_stale_sandbox) = (legacy_of("valid"), legacy_of("stale"));
    let legacy = cni::plugin::pre_upgrade_control_name(&legacy_sandbox);
    let legacy_stale = cni::plugin::pre_upgrade_control_name(&legacy_stale_sandbox);
    let conf = conf(
        "1.1.0",
        Path::new("/nonexistent.sock"),
        &format!(
            r#","cni.dev/valid-attachments":[{{"containerID":"sandbox-keep","ifname":"eth0"}},{{"containerID":"{legacy_sandbox}","ifname":"eth0"}}]"#
        ),
    );
    // A name of this network's shape that this network never recorded as its own (another network's whose
    // 16-bit prefix is the same, say): GC does not take it.
    let unrecorded = name("sandbox-unrecorded");
    let records = cni::plugin::ADDING_DIR;
    let (owned, other_owned) = (
        cni::plugin::owned_dir("k8s").display().to_string(),
        cni::plugin::owned_dir("macvlan-net").display().to_string(),
    );
    let setup = format!(
        r#"mkdir -p {records} {owned} {other_owned}
# The names each network's ADDs recorded as their own.
touch -d '-10 minutes' {owned}/{keep} {owned}/{stale} {owned}/{young} {owned}/{adding} {owned}/{crashed}
touch -d '-10 minutes' {other_owned}/{other} {other_owned}/{other_crashed}
{}
# Old enough for GC, all but the tunnel whose ADD may still be running.
touch -h -d '-10 minutes' {keep}.sock {stale}.sock {other}.sock {legacy}.sock {legacy_stale}.sock {unrecorded}.sock wgg000000000001.sock wg0.sock
touch {records}/{adding}
touch -d '-10 minutes' {records}/{crashed} {records}/{other_crashed}"#,
        sockets_and_links(
            &[
                &keep,
                &stale,
                &young,
                &other,
                &legacy,
                &legacy_stale,
                &unrecorded,
                "wgg000000000001",
                "wg0"
            ],
            &[
                &stale,
                &keep,
                "wgpnotours",
                &adding,
                &crashed,
                &other,
                &other_crashed,
                &legacy_stale,
                &unrecorded
            ],
        )
    );
    let listing =
        format!("ls {records}\nls {owned} | sed 's/^/owned:/'\nls {other_owned} | sed 's/^/other-owned:/'");
    let (stdout, stderr) = in_private_namespaces(&setup, &listing, &conf, &[("CNI_COMMAND", "GC")]);
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    assert_eq!(
        lines.first(),
        Some(&"rc=0"),
        "GC succeeds silently: {stdout} {stderr}"
    );
    let has = |n: &str| lines.contains(&n);
    // `crashed` names both a link and an ADD record: neither is left.
    for gone in [format!("{stale}.sock"), stale.clone(), crashed.clone()] {
        assert!(!has(&gone), "{gone} of a stale sandbox is removed: {stdout}");
    }
    for kept in [
        format!("{keep}.sock"),
        keep.clone(),
        format!("{young}.sock"),
        format!("{legacy}.sock"),
        format!("{legacy_stale}.sock"),
        legacy_stale.clone(),
        "wgg000000000001.sock".to_string(),
        "wg0.sock".to_string(),
        "wgpnotours".to_string(),
        format!("{unrecorded}.sock"),
        unrecorded.clone(),
    ] {
        assert!(has(&kept), "{kept} is kept: {stdout}");
    }
    // The stale names' ownership records go with them; the others' stay.
    let owned_now: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("owned:")).collect();
    let mut still_owned = vec![keep.as_str(), young.as_str(), adding.as_str()];
    still_owned.sort_unstable();
    assert_eq!(owned_now, still_owned, "{stdout}");
    let other_owned_now: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("other-owned:"))
        .collect();
    assert_eq!(other_owned_now.len(), 2, "{stdout}");
    assert_eq!(
        lines.iter().filter(|l| **l == adding).count(),
        2,
        "the link an ADD is creating (and its record) is kept: {stdout}"
    );
    assert!(
        has(&format!("{other}.sock")),
        "the other network's tunnel is kept: {stdout}"
    );
    assert_eq!(
        lines.iter().filter(|l| **l == other).count(),
        1,
        "the other network's link is kept: {stdout}"
    );
    assert_eq!(
        lines.iter().filter(|l| **l == other_crashed).count(),
        2,
        "the other network's stale link and record are its own GC's: {stdout}"
    );
}
