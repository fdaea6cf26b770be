//! The CSI driver `driver.shorthorn.io`: Identity, Controller and Node services over a unix
//! socket. It holds no state of its own: every answer is derived from the managers' REST API
//! (reached through [`ManagerApi`], which the binary implements with its HTTP client), so any
//! call may be repeated after the plugin crashed.

pub mod api;
pub mod controller;
pub mod identity;
pub mod node;
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("csi.v1");
}

use std::path::PathBuf;
use std::sync::Arc;

pub use api::{ApiFailure, ManagerApi};

/// The name every CSI client knows this driver by.
pub const DRIVER_NAME: &str = "driver.shorthorn.io";
/// Topology key of a node's failure zone (Shorthorn's `zone` of the node).
pub const TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
/// Topology key of a node's region.
pub const TOPOLOGY_REGION: &str = "topology.kubernetes.io/region";
/// Topology key naming the node itself.
pub const TOPOLOGY_NODE: &str = "topology.shorthorn.io/node";

/// Which services one `shorthorn csi` process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Controller,
    Node,
    All,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the endpoint must be unix:///absolute/path, not \"{0}\"")]
    Endpoint(String),
    #[error("cannot remove the stale socket {path}: {source}")]
    Stale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the gRPC server stopped: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The unix socket path of an endpoint `unix:///path` (or `unix:/path`, or a bare path).
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ServeError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if !path.starts_with('/') {
        return Err(ServeError::Endpoint(endpoint.to_string()));
    }
    Ok(PathBuf::from(path))
}

/// What the driver needs to know about where it runs.
#[derive(Clone)]
pub struct Driver {
    pub api: Arc<dyn ManagerApi>,
    /// The Shorthorn node this plugin runs on (the node service's volumes attach here).
    pub node_id: String,
    pub mode: Mode,
}

/// Serves the services of `driver.mode` on the unix socket of `endpoint` until `shutdown`.
pub async fn serve(
    driver: Driver,
    endpoint: &str,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let path = socket_path(endpoint)?;
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(ServeError::Stale { path, source }),
    }
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let listener = tokio::net::UnixListener::bind(&path).map_err(|source| ServeError::Listen {
        path: path.clone(),
        source,
    })?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let identity =
        proto::identity_server::IdentityServer::new(identity::Identity::new(driver.clone()));
    let mut router = tonic::transport::Server::builder().add_service(identity);
    if matches!(driver.mode, Mode::Controller | Mode::All) {
        router = router.add_service(proto::controller_server::ControllerServer::new(
            controller::Controller::new(driver.clone()),
        ));
    }
    if matches!(driver.mode, Mode::Node | Mode::All) {
        router = router.add_service(proto::node_server::NodeServer::new(node::NodeService::new(
            driver.clone(),
        )));
    }
    tracing::info!(socket = %path.display(), node = %driver.node_id, "CSI driver serving");
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
