//! The block data path of one volume: the replica store and its server, the per-volume
//! engine that fans writes out to replicas, the engine <-> replica wire protocol, the NBD
//! frontend, snapshots, rebuild, copies of another volume's snapshot and the engine's gRPC
//! control endpoint.
//!
//! The on-disk format is described in `FORMAT.md`, the wire protocol in `PROTOCOL.md`.
//! This crate knows nothing of Raft or Kubernetes: the engine is handed its replica set and
//! epoch as arguments.

pub mod address;
pub mod backup;
pub mod control;
pub mod copy;
pub mod device;
pub mod engine;
pub mod layer;
pub mod nbd;
pub mod protocol;
pub mod rebuild;
pub mod replica;
pub mod runtime;
pub mod scrub;
pub mod snapshot;
pub mod volume;

/// The generated gRPC types of the engine control API (`proto/control.proto`).
pub mod proto {
    tonic::include_proto!("shorthorn.engine.v1");
}

/// Aborts the process at `point` when `SHORTHORN_CRASH_POINT` names it: fault injection
/// for the crash tests (layer operations in the replica, a backup before its manifest).
pub(crate) fn crash_point(point: &str) {
    if std::env::var("SHORTHORN_CRASH_POINT").is_ok_and(|p| p == point) {
        tracing::error!(
            point,
            "crash point reached: aborting (SHORTHORN_CRASH_POINT)"
        );
        std::process::abort();
    }
}
