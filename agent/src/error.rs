//! The agent's errors, typed so that callers can tell them apart and metrics and logs can label them by
//! `reason()` (as the operator's `ArmError` does). Messages name what failed; none carries a secret (keys
//! travel on stdin or over UAPI, never in a command line, a path or an object this module prints).

use std::path::PathBuf;

/// A Kubernetes read or write of node mode (pods, configurations, PodEndpoints, the node's taint, the
/// uninstall ConfigMap) that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The API server refused or could not be reached; `what` is the request, e.g. `get node n1`.
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// The pod a PodEndpoint is for does not exist (any more).
    #[error("pod {namespace}/{name} not found")]
    PodNotFound { namespace: String, name: String },
    /// A CNI ADD from a sandbox of a former pod of that name (its K8S_POD_UID is not the live pod's uid).
    #[error(
        "pod {namespace}/{name} now has uid {live_uid}, not {sandbox_uid}: the CNI ADD comes from a sandbox of a \
         former pod of that name"
    )]
    PodReplaced {
        namespace: String,
        name: String,
        sandbox_uid: String,
        live_uid: String,
    },
    /// The pod lacks a field a PodEndpoint's owner reference needs.
    #[error("pod has no metadata.{0}")]
    PodIncomplete(&'static str),
    /// An object could not be encoded for the API server.
    #[error("encoding {what}: {source}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// Optimistic-concurrency conflicts on every attempt.
    #[error("{what}: conflicts persisted after {attempts} attempts")]
    Conflicts { what: String, attempts: u32 },
}

impl ClusterError {
    /// An API error of request `what`.
    pub fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |source| ClusterError::Api { what, source }
    }

    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ClusterError::Api {
                source: kube::Error::Api(s),
                ..
            } => match s.code {
                401 => "unauthorized",
                403 => "forbidden",
                404 => "not_found",
                409 => "conflict",
                422 => "invalid",
                429 => "throttled",
                _ => "api",
            },
            ClusterError::Api { .. } => "unreachable",
            ClusterError::PodNotFound { .. } => "pod_not_found",
            ClusterError::PodReplaced { .. } => "pod_replaced",
            ClusterError::PodIncomplete(_) => "invalid_pod",
            ClusterError::Encode { .. } => "encode",
            ClusterError::Conflicts { .. } => "conflict",
        }
    }
}

/// A file-system step that failed: the CNI configuration directory or the CNI socket.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct FileError {
    /// What was being done: `read`, `write`, `rename to`, `remove`, `bind`, …
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    /// The error of `action` on `path`.
    pub fn at(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| FileError { action, path, source }
    }
}

/// A primary CNI configuration our plugin cannot be chained after.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CniConfigError {
    #[error("cni config file {file}: not JSON: {message}")]
    NotJson { file: String, message: String },
    #[error("{file}: not a JSON object")]
    NotObject { file: String },
    #[error("failed to find plugins in cni config file {file}")]
    NoPlugins { file: String },
    #[error("plugins field is not an array in {file}")]
    PluginsNotArray { file: String },
    #[error("empty plugin list in cni config file {file}")]
    EmptyPlugins { file: String },
    #[error("failed to find type in plugin conf in file {file}")]
    NoType { file: String },
}

/// Why installing (or removing) our CNI configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum CniInstallError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Config(#[from] CniConfigError),
    #[error("encoding our conflist: {0}")]
    Encode(#[from] serde_json::Error),
    /// A configuration sorts before ours: the runtime loads only the first file of the directory.
    #[error(
        "CNI configuration {by} sorts before ours ({ours}) in {dir}: the container runtime uses only the first \
         file, so kube-egress-cni never runs and annotated pods would egress with the node's IP; remove or rename \
         {by}, or give ours a name that sorts first (--cni-conf-file)"
    )]
    Shadowed {
        /// The directory.
        dir: String,
        /// Our file's name.
        ours: String,
        /// The file the runtime loads instead.
        by: String,
    },
}

impl CniInstallError {
    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            CniInstallError::File(_) => "io",
            CniInstallError::Config(_) => "invalid_primary_config",
            CniInstallError::Encode(_) => "encode",
            CniInstallError::Shadowed { .. } => "shadowed",
        }
    }
}

/// Why the CNI plugin's gRPC server stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Socket(#[from] FileError),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

impl ServeError {
    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ServeError::Socket(_) => "socket",
            ServeError::Grpc(_) => "grpc",
        }
    }
}

/// This gateway node's addresses for a configuration cannot be taken from its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIpsError {
    /// The operator has not listed this node (yet).
    #[error("failed to find primary or secondary IP for node {node}")]
    NotListed { node: String },
    /// The listed address is not an IPv4 address; `field` is `primaryIP` or `secondaryIP`.
    #[error("gatewayVMProfiles[{node}].{field}: {value:?} is not an IPv4 address")]
    NotIpv4 {
        node: String,
        field: &'static str,
        value: String,
    },
}

impl NodeIpsError {
    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            NodeIpsError::NotListed { .. } => "node_not_listed",
            NodeIpsError::NotIpv4 { .. } => "invalid_ip",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_are_labelled_by_status_and_name_the_request() {
        let status = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: "nope".into(),
                ..Default::default()
            }))
        };
        let e = ClusterError::api("get node n1")(status(403));
        assert_eq!(e.reason(), "forbidden");
        assert!(e.to_string().starts_with("get node n1: "), "{e}");
        assert_eq!(ClusterError::api("x")(status(409)).reason(), "conflict");
        assert_eq!(ClusterError::api("x")(status(500)).reason(), "api");
        let f = FileError::at("read", "/etc/cni/net.d")(std::io::Error::other("denied"));
        assert_eq!(f.to_string(), "read /etc/cni/net.d: denied");
        assert_eq!(CniInstallError::from(f).reason(), "io");
    }
}
