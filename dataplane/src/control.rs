//! The engine's gRPC control endpoint (`proto/control.proto`).

use std::sync::Arc;

use crate::address::Listener;
use crate::engine::Engine;

/// Serves the control API on `listener` until it fails.
pub async fn serve(_engine: Arc<Engine>, _listener: Listener) -> std::io::Result<()> {
    std::future::pending().await
}
