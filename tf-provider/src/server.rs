//! go-plugin serving: magic cookie, loopback listener, TLS, the handshake line, health and controller
//! services, and shutdown.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::transport::server::Connected;

use crate::proto::plugin as plugin_pb;
use crate::proto::tfplugin6::provider_server::ProviderServer;
use crate::provider::Provider;

/// Environment variable and value that mark a launch by Terraform (go-plugin's magic cookie).
pub const MAGIC_COOKIE_KEY: &str = "TF_PLUGIN_MAGIC_COOKIE";
/// See [`MAGIC_COOKIE_KEY`].
pub const MAGIC_COOKIE_VALUE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";
/// Schemas of two resources and two data sources are small, but the state of many objects is not:
/// terraform-plugin-go allows 256 MiB.
const MAX_MESSAGE: usize = 256 << 20;

/// Why the plugin cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Run by hand.
    #[error(
        "This binary is a Terraform provider plugin (terraform-provider-egressgateway). It is not meant to be \
         executed directly: Terraform starts it. Install it (or point dev_overrides at its directory) and run \
         terraform init/plan/apply."
    )]
    NotLaunchedByTerraform,
    /// Terraform does not speak protocol 6.
    #[error(
        "this provider speaks plugin protocol 6 only; Terraform offered {0:?} (Terraform 1.0 or later is needed)"
    )]
    Protocol(String),
    /// TLS setup.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Listening or serving.
    #[error("cannot serve: {0}")]
    Io(#[from] io::Error),
    /// gRPC transport.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// What Terraform passed in the environment.
#[derive(Debug, Default)]
pub struct LaunchEnv {
    /// TF_PLUGIN_MAGIC_COOKIE
    pub cookie: Option<String>,
    /// PLUGIN_PROTOCOL_VERSIONS
    pub protocol_versions: Option<String>,
    /// PLUGIN_CLIENT_CERT (PEM), absent when Terraform runs with TF_DISABLE_PLUGIN_TLS=1.
    pub client_cert: Option<String>,
}

impl LaunchEnv {
    /// Reads the process environment.
    pub fn from_env() -> Self {
        LaunchEnv {
            cookie: std::env::var(MAGIC_COOKIE_KEY).ok(),
            protocol_versions: std::env::var("PLUGIN_PROTOCOL_VERSIONS").ok(),
            client_cert: std::env::var("PLUGIN_CLIENT_CERT")
                .ok()
                .filter(|s| !s.trim().is_empty()),
        }
    }

    /// Checks the cookie and the protocol offer.
    pub fn check(&self) -> Result<(), ServeError> {
        if self.cookie.as_deref() != Some(MAGIC_COOKIE_VALUE) {
            return Err(ServeError::NotLaunchedByTerraform);
        }
        if let Some(v) = &self.protocol_versions
            && !v.split(',').any(|p| p.trim() == "6")
        {
            return Err(ServeError::Protocol(v.clone()));
        }
        Ok(())
    }
}

/// The handshake line go-plugin's client parses: `CORE|APP|NETWORK|ADDR|PROTOCOL|SERVERCERT`.
pub fn handshake_line(addr: std::net::SocketAddr, server_cert_der: Option<&[u8]>) -> String {
    let cert = server_cert_der
        .map(|d| base64::engine::general_purpose::STANDARD_NO_PAD.encode(d))
        .unwrap_or_default();
    format!("1|6|tcp|{addr}|grpc|{cert}")
}

/// A plaintext or TLS connection, as tonic serves it.
#[derive(Debug)]
pub enum Conn {
    /// No AutoMTLS.
    Plain(TcpStream),
    /// AutoMTLS.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// go-plugin's controller: Terraform's Kill() calls Shutdown, then waits 2 s before SIGKILL.
#[derive(Debug)]
struct Controller {
    shutdown: watch::Sender<bool>,
}

#[tonic::async_trait]
impl plugin_pb::grpc_controller_server::GrpcController for Controller {
    async fn shutdown(
        &self,
        _request: tonic::Request<plugin_pb::Empty>,
    ) -> Result<tonic::Response<plugin_pb::Empty>, tonic::Status> {
        tracing::debug!("Terraform asked the provider to shut down");
        let _ = self.shutdown.send(true);
        Ok(tonic::Response::new(plugin_pb::Empty {}))
    }
}

/// Serves until Terraform calls Shutdown. `announce` receives the handshake line (stdout in production).
pub async fn serve(env: &LaunchEnv, announce: impl FnOnce(&str)) -> Result<(), ServeError> {
    env.check()?;
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let (tls, cert_der) = match &env.client_cert {
        Some(pem) => {
            let (cert, key) = crate::tls::server_certificate()?;
            let der = cert.as_ref().to_vec();
            let config = crate::tls::server_config(pem, cert, key)?;
            (Some(tokio_rustls::TlsAcceptor::from(config)), Some(der))
        }
        None => (None, None),
    };

    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Conn>>(16);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let conn = match tls {
                    None => Conn::Plain(tcp),
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(s) => Conn::Tls(Box::new(s)),
                        Err(e) => {
                            tracing::warn!(error = %e, %peer, "TLS handshake with a client failed");
                            return;
                        }
                    },
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });

    let (shutdown, mut shutdown_rx) = watch::channel(false);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("plugin", tonic_health::ServingStatus::Serving)
        .await;
    let provider = ProviderServer::new(Provider::new())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let controller = plugin_pb::grpc_controller_server::GrpcControllerServer::new(Controller { shutdown });
    let mut stop = shutdown_rx.clone();
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(controller)
        .add_service(provider)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(rx), async move {
            let _ = stop.wait_for(|s| *s).await;
        });
    let server = tokio::spawn(server);
    announce(&handshake_line(addr, cert_der.as_deref()));
    let _ = shutdown_rx.wait_for(|s| *s).await;
    // Graceful shutdown waits for Terraform to hang up; do not let that eat go-plugin's 2 s budget.
    match tokio::time::timeout(Duration::from_millis(300), server).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => tracing::warn!(error = %join, "server task failed"),
        Err(_) => tracing::debug!("connections still open at shutdown; exiting anyway"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_and_protocol_are_checked() {
        let ok = LaunchEnv {
            cookie: Some(MAGIC_COOKIE_VALUE.into()),
            protocol_versions: Some("5,6".into()),
            client_cert: None,
        };
        assert!(ok.check().is_ok());
        let by_hand = LaunchEnv::default();
        let err = by_hand.check().expect_err("no cookie");
        assert!(
            err.to_string().contains("not meant to be executed directly"),
            "{err}"
        );
        let old = LaunchEnv {
            protocol_versions: Some("5".into()),
            ..ok
        };
        assert!(matches!(old.check(), Err(ServeError::Protocol(_))));
    }

    #[test]
    fn handshake_line_uses_unpadded_base64() {
        let addr: std::net::SocketAddr = "127.0.0.1:10234".parse().expect("addr");
        assert_eq!(handshake_line(addr, None), "1|6|tcp|127.0.0.1:10234|grpc|");
        // 4 bytes: padded base64 would end in "==".
        assert_eq!(
            handshake_line(addr, Some(&[1, 2, 3, 4])),
            "1|6|tcp|127.0.0.1:10234|grpc|AQIDBA"
        );
    }
}
