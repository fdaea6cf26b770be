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
        let link = self.connect(&address).await?;
        // A failed entry for the same address is replaced.
        let _ = self.remove_replica(&address);
        let slot = self.new_slot(address.clone(), link, ReplicaMode::Wo);
        slot.rebuild
            .total_bytes
            .store(self.size(), Ordering::Release);
        self.push_replica(slot.clone());
        tracing::info!(event = "replica_mode", replica = %address, mode = "WO", "replica added, rebuilding");
        let engine = self.clone();
        let target = slot.clone();
        tokio::spawn(async move {
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

    async fn rebuild(&self, target: &ReplicaSlot) -> Result<(), EngineError> {
        let mut offset = 0;
        while offset < self.size() {
            if target.mode() != ReplicaMode::Wo {
                return Err(EngineError::Busy("replica left WO mode".into()));
            }
            let _hold = self.gate.write().await;
            let size = self.size();
            let count = (size - offset).div_ceil(CHUNK).min(BATCH);
            let Some(source) = self.rw_replicas().into_iter().next() else {
                return Err(EngineError::NoHealthyReplica);
            };
            let chunk = Bytes::copy_from_slice(&(CHUNK as u32).to_be_bytes());
            let (src, dst) = futures::join!(
                self.call_or_fail(
                    &source,
                    Op::ChunkHashes,
                    0,
                    offset,
                    count as u32,
                    chunk.clone()
                ),
                self.call_or_fail(target, Op::ChunkHashes, 0, offset, count as u32, chunk),
            );
            let dst = dst?;
            let Ok(src) = src else {
                // The source failed and is dropped; retry this batch from another one.
                continue;
            };
            for i in 0..count as usize {
                let start = offset + i as u64 * CHUNK;
                let len = CHUNK.min(size - start) as u32;
                target
                    .rebuild
                    .chunks_compared
                    .fetch_add(1, Ordering::Relaxed);
                if src.payload.get(i * 32..i * 32 + 32) == dst.payload.get(i * 32..i * 32 + 32) {
                    continue;
                }
                let data = self
                    .call_or_fail(&source, Op::Read, 0, start, len, Bytes::new())
                    .await?;
                if data.payload.iter().all(|&b| b == 0) {
                    self.call_or_fail(target, Op::WriteZeroes, 0, start, len, Bytes::new())
                        .await?;
                } else {
                    self.call_or_fail(target, Op::Write, 0, start, len, Bytes::from(data.payload))
                        .await?;
                }
                target.rebuild.chunks_copied.fetch_add(1, Ordering::Relaxed);
                target
                    .rebuild
                    .copied_bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
            }
            offset = (offset + count * CHUNK).min(size);
            target.rebuild.done_bytes.store(offset, Ordering::Release);
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
