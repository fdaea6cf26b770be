//! Rebuild: bring a new or returning replica up to date while the volume stays in use.
//! The replica joins in WO mode (it takes every new write at once) while the data it lacks
//! is copied from an RW replica, chunk by chunk. Chunks are compared by blake3 first, so a
//! replica that returns after a short absence copies only what changed. Each batch of
//! chunks is compared and copied with frontend I/O held, so no write can slip between a
//! copy's read and its write. It becomes RW when done.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::address::Address;
use crate::engine::{Engine, EngineError, ReplicaMode, ReplicaSlot};
use crate::protocol::Op;

/// Bytes per compared chunk.
pub const CHUNK: u64 = 1 << 20;
/// Chunks compared per hold of frontend I/O.
const BATCH: u64 = 8;

impl Engine {
    /// Adds the replica at `address` in WO mode and starts rebuilding it in the background.
    pub async fn add_replica(
        self: &Arc<Self>,
        address: Address,
    ) -> Result<Arc<ReplicaSlot>, EngineError> {
        if self
            .replicas()
            .iter()
            .any(|s| s.address == address && s.mode() != ReplicaMode::Err)
        {
            return Err(EngineError::Invalid(format!(
                "replica {address} is already in the set"
            )));
        }
        {
            let mut joining = self.joining.lock().unwrap_or_else(|e| e.into_inner());
            if joining.contains(&address) {
                return Err(EngineError::Busy(format!(
                    "replica {address} is being given its snapshot layers"
                )));
            }
            joining.push(address.clone());
        }
        let link = match self.connect(&address).await {
            Ok(link) => link,
            Err(e) => {
                self.done_joining(&address);
                return Err(e);
            }
        };
        // A failed entry for the same address is replaced.
        let _ = self.remove_replica(&address);
        let slot = self.new_slot(address.clone(), link, ReplicaMode::Wo);
        slot.rebuild
            .total_bytes
            .store(self.size(), Ordering::Release);
        // Without snapshot layers to give it, it joins at once (WO: it takes every new
        // write); else first the layers it lacks, while it takes no writes, then it joins.
        let missing = match self.missing_layers(&slot).await {
            Ok(missing) => missing,
            Err(e) => {
                self.done_joining(&address);
                return Err(e);
            }
        };
        if missing.is_empty() {
            self.push_replica(slot.clone());
            self.done_joining(&address);
            tracing::info!(event = "replica_mode", replica = %address, mode = "WO", "replica added, rebuilding");
        }
        let engine = self.clone();
        let target = slot.clone();
        tokio::spawn(async move {
            if !missing.is_empty() {
                let history = engine.copy_history(&target, &missing).await;
                if let Err(e) = history {
                    engine.done_joining(&target.address);
                    engine.fail(&target, &format!("copying snapshot layers failed: {e}"));
                    return;
                }
                engine.push_replica(target.clone());
                engine.done_joining(&target.address);
                tracing::info!(event = "replica_mode", replica = %target.address, mode = "WO", "replica added with its snapshot layers, rebuilding");
            }
            match engine.rebuild(&target).await {
                Ok(()) => {
                    tracing::info!(
                        event = "replica_mode",
                        replica = %target.address,
                        mode = "RW",
                        copied_bytes = target.rebuild.copied_bytes.load(Ordering::Relaxed),
                        chunks_copied = target.rebuild.chunks_copied.load(Ordering::Relaxed),
                        "rebuild done"
                    );
                }
                Err(e) => engine.fail(&target, &format!("rebuild failed: {e}")),
            }
        });
        Ok(slot)
    }

    fn done_joining(&self, address: &Address) {
        self.joining
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|a| a != address);
    }

    /// The snapshots an RW replica has and `target` lacks, oldest first; none when
    /// `target`'s chain is not a prefix of the source's (it then gets the data alone).
    async fn missing_layers(&self, target: &ReplicaSlot) -> Result<Vec<String>, EngineError> {
        let source = self
            .rw_replicas()
            .into_iter()
            .next()
            .ok_or(EngineError::NoHealthyReplica)?;
        let names = |reply: crate::engine::link::Reply| -> Result<Vec<String>, EngineError> {
            let list: Vec<crate::replica::SnapshotInfo> = serde_json::from_slice(&reply.payload)
                .map_err(|e| EngineError::Invalid(format!("snapshot list: {e}")))?;
            Ok(list.into_iter().map(|s| s.name).collect())
        };
        let list = |slot| self.call_or_fail(slot, Op::SnapshotList, 0, 0, 0, Bytes::new());
        let have = names(list(&source).await?)?;
        let own = names(list(target).await?)?;
        if !have.starts_with(&own) {
            tracing::warn!(replica = %target.address, ?own, ?have, "its snapshots are not a prefix of the volume's: it gets the data without the missing layers");
            return Ok(Vec::new());
        }
        Ok(have[own.len()..].to_vec())
    }

    /// Gives `target` the `missing` snapshots of an RW replica, oldest first: for each, its
    /// data becomes that snapshot's view and it takes the snapshot.
    async fn copy_history(
        &self,
        target: &ReplicaSlot,
        missing: &[String],
    ) -> Result<(), EngineError> {
        let source = self
            .rw_replicas()
            .into_iter()
            .next()
            .ok_or(EngineError::NoHealthyReplica)?;
        for name in missing {
            let mut offset = 0;
            while offset < self.size() {
                let count = (self.size() - offset).div_ceil(CHUNK).min(BATCH);
                if !self
                    .copy_differing(&source, target, offset, count, Some(name))
                    .await?
                {
                    return Err(EngineError::Replica {
                        address: source.address.to_string(),
                        reason: format!("failed while giving snapshot {name:?} to a replica"),
                    });
                }
                offset = (offset + count * CHUNK).min(self.size());
            }
            self.call_or_fail(
                target,
                Op::SnapshotCreate,
                0,
                0,
                0,
                Bytes::copy_from_slice(name.as_bytes()),
            )
            .await?;
            tracing::info!(replica = %target.address, snapshot = %name, "snapshot layer rebuilt");
        }
        Ok(())
    }

    /// Compares `count` chunks from `offset` between `source` (as of snapshot `at`, or as
    /// it is now) and `target` by blake3, and copies the ones that differ, counting them in
    /// the target's rebuild progress. `Ok(false)` when the source failed before the
    /// comparison (it is dropped; the caller may retry from another one).
    async fn copy_differing(
        &self,
        source: &ReplicaSlot,
        target: &ReplicaSlot,
        offset: u64,
        count: u64,
        at: Option<&str>,
    ) -> Result<bool, EngineError> {
        let size = self.size();
        let chunk = (CHUNK as u32).to_be_bytes();
        let mut at_chunk = chunk.to_vec();
        at_chunk.extend_from_slice(at.unwrap_or_default().as_bytes());
        let (src, dst) = futures::join!(
            self.call_or_fail(
                source,
                Op::ChunkHashes,
                0,
                offset,
                count as u32,
                Bytes::from(at_chunk)
            ),
            self.call_or_fail(
                target,
                Op::ChunkHashes,
                0,
                offset,
                count as u32,
                Bytes::copy_from_slice(&chunk)
            ),
        );
        let dst = dst?;
        let Ok(src) = src else {
            return Ok(false);
        };
        let (read, name) = match at {
            Some(name) => (Op::ReadSnapshot, Bytes::copy_from_slice(name.as_bytes())),
            None => (Op::Read, Bytes::new()),
        };
        let progress = &target.rebuild;
        for i in 0..count as usize {
            let start = offset + i as u64 * CHUNK;
            let len = CHUNK.min(size - start) as u32;
            progress.chunks_compared.fetch_add(1, Ordering::Relaxed);
            if src.payload.get(i * 32..i * 32 + 32) == dst.payload.get(i * 32..i * 32 + 32) {
                continue;
            }
            let data = self
                .call_or_fail(source, read, 0, start, len, name.clone())
                .await?;
            if data.payload.iter().all(|&b| b == 0) {
                self.call_or_fail(target, Op::WriteZeroes, 0, start, len, Bytes::new())
                    .await?;
            } else {
                self.call_or_fail(target, Op::Write, 0, start, len, Bytes::from(data.payload))
                    .await?;
            }
            progress.chunks_copied.fetch_add(1, Ordering::Relaxed);
            progress
                .copied_bytes
                .fetch_add(len as u64, Ordering::Relaxed);
        }
        Ok(true)
    }

    async fn rebuild(&self, target: &ReplicaSlot) -> Result<(), EngineError> {
        let mut offset = 0;
        while offset < self.size() {
            if target.mode() != ReplicaMode::Wo {
                return Err(EngineError::Busy("replica left WO mode".into()));
            }
            let _hold = self.gate.write().await;
            let count = (self.size() - offset).div_ceil(CHUNK).min(BATCH);
            let Some(source) = self.rw_replicas().into_iter().next() else {
                return Err(EngineError::NoHealthyReplica);
            };
            // A source that failed is dropped; this batch is retried from another one.
            if self
                .copy_differing(&source, target, offset, count, None)
                .await?
            {
                offset = (offset + count * CHUNK).min(self.size());
                target.rebuild.done_bytes.store(offset, Ordering::Release);
            }
        }
        // With frontend I/O held, the target takes the source's revision counter and turns
        // RW, so both count the same writes from here on.
        let _hold = self.gate.write().await;
        let source = self
            .rw_replicas()
            .into_iter()
            .next()
            .ok_or(EngineError::NoHealthyReplica)?;
        let revision = self.revision(&source).await?;
        self.call_or_fail(target, Op::SetRevision, 0, revision, 0, Bytes::new())
            .await?;
        self.call_or_fail(target, Op::Flush, 0, 0, 0, Bytes::new())
            .await?;
        if !target.set_mode(ReplicaMode::Wo, ReplicaMode::Rw) {
            return Err(EngineError::Busy("replica left WO mode".into()));
        }
        Ok(())
    }
}
