//! gRPC client of the node agent over its unix socket.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::proto::nic_service_client::NicServiceClient;

/// Where the agent listens and the plugin dials unless their configuration says otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/kube-egress-gateway/cni.sock";

/// Connects to the agent's unix socket. `connect_timeout` bounds how long a missing agent can delay us.
pub async fn connect(
    socket: PathBuf,
    connect_timeout: Duration,
) -> Result<NicServiceClient<Channel>, String> {
    let shown = socket.display().to_string();
    // The URI is required by tonic but unused: the connector below always dials the socket.
    let ep = Endpoint::try_from("http://kube-egress-gateway.invalid")
        .map_err(|e| e.to_string())?
        .connect_timeout(connect_timeout)
        .timeout(Duration::from_secs(20));
    let channel = tokio::time::timeout(
        connect_timeout,
        ep.connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { tokio::net::UnixStream::connect(socket).await.map(TokioIo::new) }
        })),
    )
    .await
    .map_err(|_| format!("node agent socket {shown}: no answer within {connect_timeout:?}"))?
    .map_err(|e| format!("node agent socket {shown}: {e}"))?;
    Ok(NicServiceClient::new(channel))
}
