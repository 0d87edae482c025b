//! What lab runs that never tore down leave behind (the lab killed with SIGKILL, a crashed machine session):
//! network namespaces `lab<pid>-…`, the nodes' mount directory `/run/kube-egress-lab<pid>-mnt`, the work dir
//! `<tmp>/kube-egress-lab-<pid>`, processes still running in those namespaces or that work dir, and stale
//! wireguard-go UAPI sockets. A run counts as gone when no process has its pid; a live run's things are kept.
//!
//! The lab removes these at start ([`clean`]), saying what it removed; `lab --cleanup` (`scripts/lab.sh
//! --cleanup`) does only that.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::{dataplane, runtime};

/// Where lab runs put host-wide things. [`Places::host`] is the real machine; tests point it elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Places {
    /// Named network namespaces (`ip netns`).
    pub netns_dir: PathBuf,
    /// Where the nodes' mount directories are made.
    pub run_dir: PathBuf,
    /// wireguard-go's UAPI sockets.
    pub wireguard_dir: PathBuf,
    /// Where work dirs are made.
    pub temp_dir: PathBuf,
}

impl Places {
    /// The places the lab uses on this machine.
    pub fn host() -> Self {
        Places {
            // Resolved (`/var/run` is a link to `/run`): mount points are compared with /proc's mountinfo.
            netns_dir: std::fs::canonicalize(dataplane::NETNS_DIR)
                .unwrap_or_else(|_| PathBuf::from(dataplane::NETNS_DIR)),
            run_dir: PathBuf::from("/run"),
            wireguard_dir: PathBuf::from("/run/wireguard"),
            temp_dir: std::env::temp_dir(),
        }
    }
}

/// Prefix of the names a lab run gives host-wide things: `lab<pid>-`.
pub fn run_tag(pid: u32) -> String {
    format!("lab{pid}-")
}

/// The nodes' mount directory of the lab run `pid` under `run_dir`.
pub fn mount_dir(run_dir: &Path, pid: u32) -> PathBuf {
    run_dir.join(format!("kube-egress-{}mnt", run_tag(pid)))
}

/// The work dir of the lab run `pid` under `temp_dir`.
pub fn work_dir(temp_dir: &Path, pid: u32) -> PathBuf {
    temp_dir.join(format!("kube-egress-lab-{pid}"))
}

/// One thing a gone lab run left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    /// A process of a gone run: in one of its network namespaces, or working in its work dir.
    Process { pid: i32, name: String },
    /// A network namespace (name in `ip netns`).
    NetworkNamespace(String),
    /// A nodes' mount directory, with whatever is still mounted under it.
    MountDir(PathBuf),
    /// A work dir.
    WorkDir(PathBuf),
    /// A wireguard-go UAPI socket nobody listens on any more.
    StaleWireguardSocket(PathBuf),
}

impl std::fmt::Display for Leftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Leftover::Process { pid, name } => write!(f, "process {name} (pid {pid})"),
            Leftover::NetworkNamespace(name) => write!(f, "network namespace {name}"),
            Leftover::MountDir(p) => write!(f, "mount directory {}", p.display()),
            Leftover::WorkDir(p) => write!(f, "work dir {}", p.display()),
            Leftover::StaleWireguardSocket(p) => write!(f, "stale wireguard socket {}", p.display()),
        }
    }
}

/// The pid in `lab<pid>-<rest>`.
fn tagged_pid(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("lab")?.split_once('-')?.0;
    digits
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| digits.parse().ok())
        .flatten()
}

/// Whether a process with this pid exists (any process: a reused pid keeps the run's leftovers, which is the
/// safe side).
fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Processes whose working directory is `dir` or below it.
fn processes_working_in(dir: &Path) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for name in names_in(Path::new("/proc")) {
        let Ok(pid) = name.parse::<i32>() else {
            continue;
        };
        let proc_dir = Path::new("/proc").join(&name);
        if std::fs::read_link(proc_dir.join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir)) {
            let comm = std::fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
            out.push((pid, comm.trim().to_string()));
        }
    }
    out
}

/// A unix socket file that refuses connections: its wireguard-go is gone.
fn stale_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
        && std::os::unix::net::UnixStream::connect(path)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// Everything gone lab runs left in `places`, in the order it must go: processes first (a namespace with a
/// process in it outlives its name), then namespaces, mounts, work dirs and sockets.
pub fn find(places: &Places) -> Vec<Leftover> {
    let mut namespaces = Vec::new();
    let mut dirs = Vec::new();
    for name in names_in(&places.netns_dir) {
        if tagged_pid(&name).is_some_and(|pid| !alive(pid)) {
            namespaces.push(name);
        }
    }
    for name in names_in(&places.run_dir) {
        if let Some(pid) = name.strip_prefix("kube-egress-").and_then(tagged_pid)
            && !alive(pid)
            && mount_dir(&places.run_dir, pid) == places.run_dir.join(&name)
        {
            dirs.push(Leftover::MountDir(places.run_dir.join(name)));
        }
    }
    for name in names_in(&places.temp_dir) {
        if let Some(pid) = name
            .strip_prefix("kube-egress-lab-")
            .and_then(|p| p.parse::<u32>().ok())
            && !alive(pid)
        {
            dirs.push(Leftover::WorkDir(places.temp_dir.join(name)));
        }
    }
    let inodes: Vec<u64> = namespaces
        .iter()
        .filter_map(|n| std::fs::metadata(places.netns_dir.join(n)).ok().map(|m| m.ino()))
        .collect();
    let mut processes = dataplane::processes_in(&inodes);
    for d in &dirs {
        if let Leftover::WorkDir(dir) = d {
            processes.extend(processes_working_in(dir));
        }
    }
    processes.sort();
    processes.dedup();
    let sockets = names_in(&places.wireguard_dir)
        .into_iter()
        .map(|n| places.wireguard_dir.join(n))
        .filter(|p| p.extension().is_some_and(|e| e == "sock") && stale_socket(p))
        .map(Leftover::StaleWireguardSocket);
    processes
        .into_iter()
        .map(|(pid, name)| Leftover::Process { pid, name })
        .chain(namespaces.into_iter().map(Leftover::NetworkNamespace))
        .chain(dirs)
        .chain(sockets)
        .collect()
}

/// Removes one leftover.
fn remove(places: &Places, leftover: &Leftover) -> anyhow::Result<()> {
    use anyhow::Context as _;
    match leftover {
        Leftover::Process { pid, .. } => {
            let pid = nix::unistd::Pid::from_raw(*pid);
            match nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
                Err(e) => Err(e).context("SIGKILL"),
            }
        }
        Leftover::NetworkNamespace(name) => {
            // What `ip netns del` does: detach the namespace's bind mount, remove its name.
            let path = places.netns_dir.join(name);
            runtime::unmount(&path)?;
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
        }
        Leftover::MountDir(dir) => {
            let mut mounts = runtime::mounts_under(dir);
            // Deepest first: the nodes' mount namespaces are bound inside the directory's own mount.
            mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in mounts {
                runtime::unmount(Path::new(&m))?;
            }
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
        }
        Leftover::WorkDir(dir) => {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
        }
        Leftover::StaleWireguardSocket(path) => {
            std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))
        }
    }
}

/// Finds and removes what gone lab runs left in `places`, printing each removal. Every leftover is tried; the
/// error names those that could not be removed.
pub fn clean(places: &Places) -> anyhow::Result<Vec<Leftover>> {
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for leftover in find(places) {
        match remove(places, &leftover) {
            Ok(()) => {
                println!("    removed {leftover}, left by a lab run that is gone");
                removed.push(leftover);
            }
            Err(e) => failed.push(format!("{leftover}: {e:#}")),
        }
    }
    if failed.is_empty() {
        Ok(removed)
    } else {
        anyhow::bail!("cannot remove what earlier lab runs left: {}", failed.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_tags_name_the_pid() {
        assert_eq!(tagged_pid(&format!("{}pod-a", run_tag(4242))), Some(4242));
        assert_eq!(tagged_pid("lab-12"), None);
        assert_eq!(tagged_pid("lab12x-a"), None);
        assert_eq!(tagged_pid("labrador-1"), None);
        assert_eq!(tagged_pid("ns-static-egress-gateway"), None);
    }
}
