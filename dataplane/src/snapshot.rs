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
        let joining = !self.joining.lock().map(|j| j.is_empty()).unwrap_or(true);
        if joining || self.replicas().iter().any(|s| s.mode() == ReplicaMode::Wo) {
            return Err(EngineError::Busy(
                "a replica is being rebuilt; try again when it is RW".into(),
            ));
        }
        let targets = self.rw_replicas();
        let results =
            futures::future::join_all(targets.iter().map(|s| {
                self.call_or_fail(s, op, 0, 0, 0, Bytes::copy_from_slice(name.as_bytes()))
            }))
            .await;
        let (mut done, mut already, mut failed) = (0u32, None, Vec::new());
        for (slot, result) in targets.iter().zip(results) {
            match result {
                Ok(_) => done += 1,
                // Already as asked: a retried create, or a delete on a replica that was
                // rebuilt without this layer (its head holds the merged data already).
                Err(e @ EngineError::SnapshotExists(_)) if op == Op::SnapshotCreate => {
                    already = Some(e)
                }
                Err(e @ EngineError::SnapshotNotFound(_)) if op == Op::SnapshotDelete => {
                    already = Some(e)
                }
                Err(e) => failed.push((slot, e)),
            }
        }
        if done > 0 || already.is_some() {
            // Some replicas are as asked and these are not: they no longer hold the
            // volume's data. They leave the set (and are rebuilt from the others) rather
            // than serve reads that differ from their siblings'.
            for (slot, e) in failed.drain(..) {
                self.fail(
                    slot,
                    &format!("{op:?} {name:?} failed here but not on the others: {e}"),
                );
            }
        }
        match (done, already, failed.into_iter().next()) {
            (1.., _, _) => Ok(()),
            // Nothing changed anywhere: say why (exists / not found).
            (0, Some(e), _) | (0, None, Some((_, e))) => Err(e),
            (0, None, None) => Err(EngineError::NoHealthyReplica),
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
