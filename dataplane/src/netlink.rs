//! Link removal over rtnetlink, for the hot path where `ip` process starts would dominate: CNI DEL of a
//! plain pod looks for a leftover WireGuard link in the pod's namespace and in the node's, and finds none.

use futures::TryStreamExt as _;
use nix::errno::Errno;

use crate::netns::Netns;

/// Why a netlink link operation failed; names the namespace or link.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The namespace file could not be entered.
    #[error("network namespace {path}: {reason}")]
    Enter {
        /// The namespace file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The netlink socket could not be opened.
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused a request about the link.
    #[error("link {name}: {source}")]
    Link {
        /// Link name.
        name: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
}

/// Deletes link `name` in `ns` if it is there; returns whether it was. Needs a Tokio runtime.
pub async fn delete_link_if_present(ns: &Netns, name: &str) -> Result<bool, NetlinkError> {
    let handle = connect(ns)?;
    let link_err = |source| NetlinkError::Link {
        name: name.to_string(),
        source,
    };
    let found = match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => link,
        Err(e) if is_no_such_device(&e) => None,
        Err(e) => return Err(link_err(e)),
    };
    let Some(link) = found else {
        return Ok(false);
    };
    match handle.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        // Removed meanwhile (its namespace or wireguard-go went away): what DEL wants.
        Err(e) if is_no_such_device(&e) => Ok(false),
        Err(e) => Err(link_err(e)),
    }
}

fn is_no_such_device(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == Errno::ENODEV as i32)
}

/// A route-netlink handle bound to `ns`: a socket belongs to the namespace of the thread that opens it, so
/// for another namespace a short-lived thread enters it and opens the socket there.
fn connect(ns: &Netns) -> Result<rtnetlink::Handle, NetlinkError> {
    let (conn, handle, _) = match ns {
        Netns::Current => rtnetlink::new_connection().map_err(NetlinkError::Socket)?,
        Netns::Path(path) => {
            let runtime = tokio::runtime::Handle::current();
            let path = path.clone();
            let shown = path.display().to_string();
            let enter_err = |reason: String| NetlinkError::Enter {
                path: shown.clone(),
                reason,
            };
            std::thread::spawn(move || {
                let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
                let _in_runtime = runtime.enter();
                rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))
            })
            .join()
            .map_err(|_| enter_err("the thread entering it panicked".into()))?
            .map_err(enter_err)?
        }
    };
    tokio::spawn(conn);
    Ok(handle)
}
