//! Node identity from the Azure Instance Metadata Service (`/metadata/instance`).
//!
//! The gateway agent decides which configurations apply to its node from the VMSS name, resource group and
//! the `aks-managed-poolName` tag, and finds its own entry in `status.gatewayVMProfiles` by computer name
//! or by the `aks-managed-nic-name` tag (VM pools). The endpoint is a flag so the lab can serve a fake.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What the agent needs to know about its VM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeIdentity {
    /// `compute.osProfile.computerName`.
    pub computer_name: String,
    /// `compute.vmScaleSetName` (empty for standalone VMs).
    pub vmss_name: String,
    /// `compute.resourceGroupName`.
    pub resource_group: String,
    /// `compute.tags` parsed from `"k:v;k2:v2"`.
    pub tags: BTreeMap<String, String>,
    /// First private IPv4 of the first interface, when present.
    pub primary_ip: Option<Ipv4Addr>,
}

/// Parses IMDS tags `"k:v;k2:v2"`: entries split on `;`, then on `:`, trimmed; entries without exactly one
/// `:` are ignored (as upstream).
pub fn parse_tags(s: &str) -> BTreeMap<String, String> {
    s.split(';')
        .filter_map(|e| {
            let parts: Vec<&str> = e.split(':').collect();
            if parts.len() != 2 {
                return None;
            }
            let (k, v) = (parts[0].trim(), parts[1].trim());
            (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Why the node's identity could not be read from IMDS; [`ImdsError::reason`] is its metric/log label.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// `--imds-endpoint` is not `http://host[:port]`.
    #[error("--imds-endpoint: {endpoint:?} {rule}")]
    Endpoint {
        /// The flag's value.
        endpoint: String,
        /// What it must look like.
        rule: &'static str,
    },
    /// Connecting, writing or reading failed.
    #[error("IMDS {addr}: {step}: {source}")]
    Io {
        /// host:port.
        addr: String,
        /// connect, write or read.
        step: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No complete answer in time.
    #[error("IMDS {addr}: no answer within {timeout:?}")]
    Timeout {
        /// host:port.
        addr: String,
        /// The deadline.
        timeout: Duration,
    },
    /// An answer that is not a 200 with a JSON body.
    #[error("IMDS {addr}: {what}")]
    Response {
        /// host:port.
        addr: String,
        /// What was wrong with it.
        what: String,
    },
    /// The instance document lacks a field the agent needs.
    #[error("IMDS instance metadata: {0}")]
    Document(&'static str),
}

impl ImdsError {
    /// A short stable label (metrics, logs).
    pub fn reason(&self) -> &'static str {
        match self {
            ImdsError::Endpoint { .. } => "InvalidEndpoint",
            ImdsError::Io { .. } => "Unreachable",
            ImdsError::Timeout { .. } => "Timeout",
            ImdsError::Response { .. } => "BadResponse",
            ImdsError::Document(_) => "IncompleteDocument",
        }
    }
}

/// Parses the `/metadata/instance` document.
pub fn parse_instance(doc: &Value) -> Result<NodeIdentity, ImdsError> {
    let compute = doc
        .get("compute")
        .ok_or(ImdsError::Document("field compute is missing"))?;
    let s = |v: &Value, field: &str| v.get(field).and_then(Value::as_str).unwrap_or("").to_string();
    let computer_name = compute
        .get("osProfile")
        .map(|o| s(o, "computerName"))
        .filter(|n| !n.is_empty())
        .ok_or(ImdsError::Document(
            "compute.osProfile.computerName is missing or empty",
        ))?;
    let primary_ip = doc
        .pointer("/network/interface/0/ipv4/ipAddress/0/privateIpAddress")
        .and_then(Value::as_str)
        .and_then(|ip| ip.parse().ok());
    Ok(NodeIdentity {
        computer_name,
        vmss_name: s(compute, "vmScaleSetName"),
        resource_group: s(compute, "resourceGroupName"),
        tags: parse_tags(&s(compute, "tags")),
        primary_ip,
    })
}

/// Fetches the instance metadata from `endpoint` (`http://host[:port]`, default `http://169.254.169.254`).
pub async fn fetch(endpoint: &str, timeout: Duration) -> Result<NodeIdentity, ImdsError> {
    let hostport = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| ImdsError::Endpoint {
            endpoint: endpoint.to_string(),
            rule: "must start with http://",
        })?
        .trim_end_matches('/');
    if hostport.is_empty() || hostport.contains('/') {
        return Err(ImdsError::Endpoint {
            endpoint: endpoint.to_string(),
            rule: "must be http://host[:port] without a path",
        });
    }
    let addr = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let path = "/metadata/instance?format=json&api-version=2021-10-01";
    let body = tokio::time::timeout(timeout, async {
        let mut c = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|source| io_err(&addr, "connect", source))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nMetadata: true\r\nUser-Agent: kube-egress-gateway-agent\r\nConnection: close\r\n\r\n"
        );
        c.write_all(req.as_bytes())
            .await
            .map_err(|source| io_err(&addr, "write", source))?;
        let mut raw = Vec::new();
        c.read_to_end(&mut raw)
            .await
            .map_err(|source| io_err(&addr, "read", source))?;
        Ok::<_, ImdsError>(raw)
    })
    .await
    .map_err(|_| ImdsError::Timeout {
        addr: addr.clone(),
        timeout,
    })??;
    let text = String::from_utf8_lossy(&body);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad(&addr, "malformed HTTP response".into()))?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        return Err(bad(&addr, format!("HTTP status {status}")));
    }
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Err(bad(&addr, "chunked responses are not supported".into()));
    }
    let doc: Value =
        serde_json::from_str(body).map_err(|e| bad(&addr, format!("instance metadata is not JSON: {e}")))?;
    parse_instance(&doc)
}

fn io_err(addr: &str, step: &'static str, source: std::io::Error) -> ImdsError {
    ImdsError::Io {
        addr: addr.to_string(),
        step,
        source,
    }
}

fn bad(addr: &str, what: String) -> ImdsError {
    ImdsError::Response {
        addr: addr.to_string(),
        what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tags_parse_like_upstream() {
        let t = parse_tags("a:b; c : d ;e");
        assert_eq!(
            t,
            BTreeMap::from([("a".into(), "b".into()), ("c".into(), "d".into())])
        );
        assert!(parse_tags("").is_empty());
        assert!(parse_tags("x:y:z").is_empty());
    }

    #[test]
    fn instance_document() {
        let doc = json!({
            "compute": {"osProfile": {"computerName": "gw-vmss000001"}, "vmScaleSetName": "gw-vmss",
                        "resourceGroupName": "MC_rg", "tags": "aks-managed-poolName:gwpool;aks-managed-nic-name:nic1"},
            "network": {"interface": [{"ipv4": {"ipAddress": [{"privateIpAddress": "10.0.0.4"}]}}]}
        });
        let id = parse_instance(&doc).expect("valid");
        assert_eq!(id.computer_name, "gw-vmss000001");
        assert_eq!(id.vmss_name, "gw-vmss");
        assert_eq!(id.resource_group, "MC_rg");
        assert_eq!(id.tags["aks-managed-poolName"], "gwpool");
        assert_eq!(id.tags["aks-managed-nic-name"], "nic1");
        assert_eq!(id.primary_ip, Some(Ipv4Addr::new(10, 0, 0, 4)));
        let e = parse_instance(&json!({"compute": {}})).expect_err("no name");
        assert!(e.to_string().contains("computerName"), "{e}");
        assert_eq!(e.reason(), "IncompleteDocument");
    }

    #[tokio::test]
    async fn fetch_talks_http_to_a_fake_imds() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.expect("read");
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let body = r#"{"compute":{"osProfile":{"computerName":"n1"},"vmScaleSetName":"v","resourceGroupName":"rg","tags":""}}"#;
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.expect("write");
            req
        });
        let id = fetch(&format!("http://{addr}"), Duration::from_secs(5))
            .await
            .expect("fetch");
        assert_eq!(id.computer_name, "n1");
        let req = server.await.expect("join");
        assert!(req.starts_with("GET /metadata/instance?"), "{req}");
        assert!(req.contains("Metadata: true"));
        assert!(fetch("https://x", Duration::from_secs(1)).await.is_err());
    }
}
