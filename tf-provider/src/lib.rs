//! Terraform provider for kube-egress-gateway.

/// Generated protocol types.
pub mod proto {
    /// Terraform plugin protocol 6.
    #[allow(missing_debug_implementations, clippy::all, rust_2018_idioms)]
    pub mod tfplugin6 {
        tonic::include_proto!("tfplugin6");
    }
    /// go-plugin's controller.
    #[allow(missing_debug_implementations, clippy::all, rust_2018_idioms)]
    pub mod plugin {
        tonic::include_proto!("plugin");
    }
}

pub mod cluster;
pub mod diag;
pub mod provider;
pub mod resources;
pub mod schema;
pub mod server;
pub mod tls;
pub mod value;
