//! The lab's start-up cleanup (root: network namespaces and mounts): what a lab run killed with SIGKILL left
//! behind is removed — processes in its namespaces and work dir first — and a live run's things are kept.
//! Namespace names carry this test's pid and a random tag, so parallel runs and other labs are not touched;
//! everything the test made is removed at the end, also when an assertion fails.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use testbed::lab::leftovers::{self, Leftover, Places};
use testbed::lab::runtime;

/// A pid no process has: a child that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait true");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} reused at once"
    );
    pid
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sleeper(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sleep")
}

/// Removes what the test made, whatever happened.
struct Made {
    namespaces: Vec<String>,
    mounts: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Drop for Made {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            if Path::new("/run/netns").join(ns).exists() {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
        for m in self.mounts.iter().rev() {
            let _ = runtime::unmount(m);
        }
    }
}

#[tokio::test]
async fn leftovers_of_a_gone_run_are_removed_and_a_live_runs_are_kept() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let places = Places {
        netns_dir: std::fs::canonicalize("/run/netns").unwrap_or_else(|_| PathBuf::from("/run/netns")),
        run_dir: scratch.path().join("run"),
        wireguard_dir: scratch.path().join("wireguard"),
        temp_dir: scratch.path().join("tmp"),
    };
    for d in [&places.run_dir, &places.wireguard_dir, &places.temp_dir] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let (dead, live) = (dead_pid(), std::process::id());
    let unique = format!("leftovertest{:08x}", rand_tag());
    let dead_ns = format!("{}{unique}", leftovers::run_tag(dead));
    let live_ns = format!("{}{unique}", leftovers::run_tag(live));
    let mut made = Made {
        namespaces: vec![dead_ns.clone(), live_ns.clone()],
        mounts: Vec::new(),
        children: Vec::new(),
    };

    // The gone run: a namespace with a process in it, the nodes' mount directory (a private mount with a
    // bind mount inside, as a node's persisted mount namespace is), a work dir a process still works in, and
    // a wireguard-go socket nobody listens on.
    ip(&["netns", "add", &dead_ns]);
    ip(&["netns", "add", &live_ns]);
    let mut in_ns = Command::new("ip");
    in_ns.args(["netns", "exec", &dead_ns, "sleep", "600"]);
    made.children.push(sleeper(&mut in_ns));
    let dead_mnt = leftovers::mount_dir(&places.run_dir, dead);
    runtime::private_mount_dir(&dead_mnt).expect("private mount");
    made.mounts.push(dead_mnt.clone());
    let node_file = dead_mnt.join("node0.mnt");
    std::fs::write(&node_file, "").expect("node file");
    let target = scratch.path().join("bound");
    std::fs::write(&target, "").expect("bind source");
    let out = Command::new("mount")
        .args(["--bind", &target.to_string_lossy(), &node_file.to_string_lossy()])
        .output()
        .expect("mount");
    assert!(
        out.status.success(),
        "mount --bind: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    made.mounts.push(node_file.clone());
    let dead_work = leftovers::work_dir(&places.temp_dir, dead);
    std::fs::create_dir_all(dead_work.join("nodes")).expect("work dir");
    let mut in_work = Command::new("sleep");
    in_work.arg("600").current_dir(dead_work.join("nodes"));
    made.children.push(sleeper(&mut in_work));
    let stale_socket = places.wireguard_dir.join("wg-gone.sock");
    drop(UnixListener::bind(&stale_socket).expect("bind socket"));

    // The live run (this test's pid): the same kinds of things, and a socket someone listens on.
    let live_mnt = leftovers::mount_dir(&places.run_dir, live);
    let live_work = leftovers::work_dir(&places.temp_dir, live);
    std::fs::create_dir_all(&live_mnt).expect("live mount dir");
    std::fs::create_dir_all(&live_work).expect("live work dir");
    let live_socket = places.wireguard_dir.join("wg-live.sock");
    let _listening = UnixListener::bind(&live_socket).expect("bind live socket");

    // The processes are found before anything else goes (wait until both have started in place).
    let processes_found = || {
        leftovers::find(&places)
            .iter()
            .filter(|l| matches!(l, Leftover::Process { .. }))
            .count()
    };
    testbed::wait::eventually(
        "the sleeps in the namespace and in the work dir are found",
        || async { processes_found() == 2 },
    )
    .await;
    let found = leftovers::find(&places);
    assert!(
        matches!(found[..2], [Leftover::Process { .. }, Leftover::Process { .. }]),
        "processes go first: {found:?}"
    );

    let removed = leftovers::clean(&places).expect("clean");
    for expected in [
        Leftover::NetworkNamespace(dead_ns.clone()),
        Leftover::MountDir(dead_mnt.clone()),
        Leftover::WorkDir(dead_work.clone()),
        Leftover::StaleWireguardSocket(stale_socket.clone()),
    ] {
        assert!(
            removed.contains(&expected),
            "{expected} not reported as removed: {removed:?}"
        );
    }
    for child in &mut made.children {
        let status = child.wait().expect("wait");
        assert!(!status.success(), "a leftover process was not killed: {status}");
    }
    assert!(!places.netns_dir.join(&dead_ns).exists(), "{dead_ns} still there");
    assert!(
        runtime::mounts_under(&dead_mnt).is_empty(),
        "mounts left: {:?}",
        runtime::mounts_under(&dead_mnt)
    );
    assert!(!dead_mnt.exists() && !dead_work.exists() && !stale_socket.exists());

    assert!(
        places.netns_dir.join(&live_ns).exists(),
        "a live run's namespace was removed"
    );
    assert!(
        live_mnt.exists() && live_work.exists() && live_socket.exists(),
        "a live run's things were removed"
    );
}

/// A random tag for names, so runs of this test never meet.
fn rand_tag() -> u32 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u32
}
