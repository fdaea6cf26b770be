//! Scrub: compare the read-write replicas of a volume chunk by chunk (blake3 of 1 MiB, the
//! rebuild's hashes) to find silent corruption or divergence. A chunk on which a strict
//! majority of replicas agree condemns the replicas that differ: they are failed out of
//! the set (and rebuilt by the node agent). With no majority (two replicas that disagree)
//! nothing is failed, but the chunk is reported. Each batch is compared with frontend I/O
//! held, so an in-flight write cannot look like a difference.
//!
//! Never writes to a replica: repair is the rebuild's job.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::engine::{Engine, EngineError};
use crate::protocol::Op;
use crate::rebuild::CHUNK;

/// Chunks compared per hold of frontend I/O.
const BATCH: u64 = 8;

/// What a scrub found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScrubReport {
    pub chunks_compared: u64,
    /// Chunks where the replicas did not all agree, by index (offset / 1 MiB).
    pub mismatched_chunks: Vec<u64>,
    /// Replicas failed for holding data a majority of the others did not.
    pub failed: Vec<String>,
    /// Chunks where the replicas disagreed with no majority to tell which is right.
    pub undecided_chunks: Vec<u64>,
}

impl Engine {
    /// Compares every chunk of every read-write replica; see the module doc.
    pub async fn scrub(&self) -> Result<ScrubReport, EngineError> {
        let mut report = ScrubReport::default();
        let mut offset = 0;
        while offset < self.size() {
            let _hold = self.gate.write().await;
            let count = (self.size() - offset).div_ceil(CHUNK).min(BATCH);
            let replicas = self.rw_replicas();
            if replicas.len() < 2 {
                // Nothing to compare with.
                return Ok(report);
            }
            let chunk = Bytes::copy_from_slice(&(CHUNK as u32).to_be_bytes());
            let hashes = futures::future::join_all(replicas.iter().map(|slot| {
                self.call_or_fail(
                    slot,
                    Op::ChunkHashes,
                    0,
                    offset,
                    count as u32,
                    chunk.clone(),
                )
            }))
            .await;
            let answered: Vec<_> = replicas
                .iter()
                .zip(hashes)
                .filter_map(|(slot, r)| r.ok().map(|reply| (slot.clone(), reply.payload)))
                .collect();
            for i in 0..count as usize {
                let index = offset / CHUNK + i as u64;
                report.chunks_compared += 1;
                let mut votes: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
                for (n, (_, payload)) in answered.iter().enumerate() {
                    if let Some(hash) = payload.get(i * 32..i * 32 + 32) {
                        votes.entry(hash).or_default().push(n);
                    }
                }
                if votes.len() <= 1 {
                    continue;
                }
                report.mismatched_chunks.push(index);
                let (_, winners) = votes
                    .iter()
                    .max_by_key(|(_, voters)| voters.len())
                    .expect("at least two groups");
                if winners.len() * 2 <= answered.len() {
                    report.undecided_chunks.push(index);
                    tracing::warn!(event = "scrub_mismatch", volume = %self.volume, chunk = index, "replicas disagree and no majority tells which is right");
                    continue;
                }
                for (n, (slot, _)) in answered.iter().enumerate() {
                    if !winners.contains(&n) {
                        let reason = format!(
                            "scrub: chunk {index} (offset {}) differs from the majority of replicas",
                            index * CHUNK
                        );
                        self.fail(slot, &reason);
                        let address = slot.address.to_string();
                        if !report.failed.contains(&address) {
                            report.failed.push(address);
                        }
                    }
                }
            }
            offset = (offset + count * CHUNK).min(self.size());
        }
        Ok(report)
    }
}
