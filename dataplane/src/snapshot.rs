//! Snapshots as the engine runs them across the replica set: hold new I/O, have every
//! replica freeze its head into a snapshot layer, resume. Delete merges a layer into its
//! child on every replica; revert needs no frontend client. The layer work itself is the
//! replica's (`replica` module); this module only orchestrates.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::engine::{Engine, EngineError, ReplicaMode};
use crate::protocol::Op;
use crate::replica::SnapshotInfo;
use crate::volume::valid_name;

impl Engine {
    async fn snapshot_op(&self, op: Op, name: &str) -> Result<(), EngineError> {
        if !valid_name(name) {
            return Err(EngineError::Invalid(format!(
                "snapshot name {name:?} must be 1-255 bytes of [A-Za-z0-9._-]"
            )));
        }
        let _hold = self.gate.write().await;
        if self.replicas().iter().any(|s| s.mode() == ReplicaMode::Wo) {
            return Err(EngineError::Busy(
                "a replica is being rebuilt; try again when it is RW".into(),
            ));
        }
        let targets = self.rw_replicas();
        let mut done = 0;
        let mut first_err = None;
        for r in
            futures::future::join_all(targets.iter().map(|s| {
                self.call_or_fail(s, op, 0, 0, 0, Bytes::copy_from_slice(name.as_bytes()))
            }))
            .await
        {
            match r {
                Ok(_) => done += 1,
                Err(EngineError::SnapshotNotFound(_)) => {
                    first_err = Some(EngineError::SnapshotNotFound(name.into()))
                }
                Err(EngineError::SnapshotExists(_)) => {
                    first_err = Some(EngineError::SnapshotExists(name.into()))
                }
                Err(e) => {
                    if first_err.is_none() {
                        first_err = Some(e)
                    }
                }
            }
        }
        match (done, first_err) {
            (_, Some(e @ (EngineError::SnapshotNotFound(_) | EngineError::SnapshotExists(_)))) => {
                Err(e)
            }
            (0, Some(e)) => Err(e),
            (0, None) => Err(EngineError::NoHealthyReplica),
            _ => Ok(()),
        }
    }

    /// Creates snapshot `name` on every RW replica while new I/O waits.
    pub async fn snapshot_create(&self, name: &str) -> Result<(), EngineError> {
        self.snapshot_op(Op::SnapshotCreate, name).await?;
        tracing::info!(event = "snapshot_created", volume = %self.volume, snapshot = name, "snapshot created");
        Ok(())
    }

    /// Deletes snapshot `name`, merging its data into the next layer.
    pub async fn snapshot_delete(&self, name: &str) -> Result<(), EngineError> {
        self.snapshot_op(Op::SnapshotDelete, name).await?;
        tracing::info!(event = "snapshot_deleted", volume = %self.volume, snapshot = name, "snapshot deleted");
        Ok(())
    }

    /// Makes `name` the base of a new head; refused while a frontend client is connected.
    pub async fn snapshot_revert(&self, name: &str) -> Result<(), EngineError> {
        let clients = self.clients.load(Ordering::Acquire);
        if clients > 0 {
            return Err(EngineError::Busy(format!(
                "revert needs the volume detached; {clients} client(s) connected"
            )));
        }
        self.snapshot_op(Op::SnapshotRevert, name).await?;
        tracing::info!(event = "snapshot_reverted", volume = %self.volume, snapshot = name, "volume reverted");
        Ok(())
    }

    /// The snapshots of the first RW replica that answers, oldest first.
    pub async fn snapshot_list(&self) -> Result<Vec<SnapshotInfo>, EngineError> {
        for slot in self.rw_replicas() {
            if let Ok(reply) = self
                .call_or_fail(&slot, Op::SnapshotList, 0, 0, 0, Bytes::new())
                .await
            {
                return serde_json::from_slice(&reply.payload).map_err(|e| EngineError::Replica {
                    address: slot.address.to_string(),
                    reason: format!("snapshot list: {e}"),
                });
            }
        }
        Err(EngineError::NoHealthyReplica)
    }
}
