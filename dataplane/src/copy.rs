//! Copying a snapshot of another volume into this engine's volume: how a volume created
//! from a snapshot, or a clone, gets its data.
//!
//! The engine of the new volume opens read-only connections (`PROTOCOL.md`) to the source
//! volume's replicas. They neither take nor are fenced by an epoch, so the source's own
//! engine, when it has one, is not disturbed, and a detached source needs none: its replica
//! processes serve the snapshot's layers, which no engine changes while the log protects
//! them. One source replica says which chunks any layer up to the snapshot holds
//! (ChangedChunks, from the block maps without reading data); only those chunks are read,
//! as of the snapshot (ReadSnapshot), spread over the source replicas in turn, and only
//! their non-zero runs are written through the engine to every replica of the new volume,
//! which reads zeros everywhere else already. `concurrency` chunks are in flight at once,
//! so memory stays at about `concurrency` x [`CHUNK`]. The copy flushes at the end and is
//! done only then. It never writes to the source.
//!
//! A source replica that fails or does not answer is left for the next one; when none
//! answers, the whole round is tried again after 1, 2, 4, 8 and 16 s (a source replica
//! restarted, a node briefly away) before the copy fails with every replica's reason. A
//! copy that is stopped (its engine killed) is simply run again from the start by the next
//! engine: it rewrites the same bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::address::Address;
use crate::backup::job::Progress;
use crate::engine::link::ReplicaLink;
use crate::engine::{Engine, EngineError};
use crate::protocol::{Op, Status};
use crate::volume::{BLOCK_SIZE, valid_name};

/// Bytes read per request from a source replica: the unit of the changed-chunk map and of
/// the copy's parallelism.
pub const CHUNK: u64 = 2 << 20;
/// Rounds over every source replica after the first, with growing waits between them.
const RETRY_ROUNDS: u32 = 5;

/// What to copy, and from where.
#[derive(Debug, Clone)]
pub struct CopyParams {
    /// The source volume, as its replicas know it.
    pub source_volume: String,
    pub snapshot: String,
    /// The source's read-write replicas.
    pub replicas: Vec<Address>,
    /// Bytes to copy: the source's size when the snapshot was taken.
    pub size: u64,
    /// Chunks in flight at once.
    pub concurrency: usize,
}

impl CopyParams {
    /// The name the engine's job table knows the copy by.
    pub fn job_name(&self) -> String {
        format!("copy-{}-{}", self.source_volume, self.snapshot)
    }
}

/// Why a copy failed, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("invalid copy: {0}")]
    Invalid(String),
    #[error("snapshot {snapshot:?} of volume {volume:?} is on none of its replicas ({reasons})")]
    SnapshotNotFound {
        volume: String,
        snapshot: String,
        reasons: String,
    },
    #[error("no replica of volume {volume:?} could serve the copy: {reasons}")]
    SourceFailed { volume: String, reasons: String },
    #[error("writing the copy into this volume: {0}")]
    Engine(#[from] EngineError),
}

/// One source replica and its read-only connection, opened when first needed and again
/// after it failed.
struct Source {
    address: Address,
    link: tokio::sync::Mutex<Option<Arc<ReplicaLink>>>,
}

/// The source volume's replicas, asked in turn.
struct Sources<'a> {
    volume: &'a str,
    token: &'a str,
    timeout: Duration,
    list: Vec<Source>,
    next: AtomicUsize,
}

/// How one source replica answered one request.
enum Answer {
    Data(Vec<u8>),
    /// The replica lacks the snapshot.
    NotFound(String),
    /// A definite refusal (bad range, disk error): asking it again will not help.
    Refused(String),
    /// No answer (connection failed, timed out): it may answer later.
    Gone(String),
}

impl Sources<'_> {
    async fn link(&self, source: &Source) -> Result<Arc<ReplicaLink>, String> {
        let mut slot = source.link.lock().await;
        if let Some(link) = slot.as_ref()
            && !link.is_closed()
        {
            return Ok(link.clone());
        }
        let connect = ReplicaLink::connect_read_only(&source.address, self.volume, self.token);
        let link = match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(link)) => Arc::new(link),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {:?}", self.timeout)),
        };
        *slot = Some(link.clone());
        Ok(link)
    }

    async fn forget(&self, source: &Source) {
        if let Some(link) = source.link.lock().await.take() {
            link.shutdown();
        }
    }

    async fn ask_one(
        &self,
        source: &Source,
        op: Op,
        offset: u64,
        length: u32,
        payload: Bytes,
        expect_len: Option<usize>,
    ) -> Answer {
        let link = match self.link(source).await {
            Ok(link) => link,
            Err(e) => return Answer::Gone(e),
        };
        let call = link.call(op, 0, offset, length, payload);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(r)) if r.status == Status::Ok => match expect_len {
                Some(n) if r.payload.len() != n => {
                    Answer::Refused(format!("read {} bytes, not {n}", r.payload.len()))
                }
                _ => Answer::Data(r.payload),
            },
            Ok(Ok(r)) if r.status == Status::NotFound => {
                Answer::NotFound(format!("{op:?} answered NotFound"))
            }
            Ok(Ok(r)) => Answer::Refused(format!("{op:?} answered {:?}", r.status)),
            Ok(Err(e)) => {
                self.forget(source).await;
                Answer::Gone(e.to_string())
            }
            Err(_) => {
                self.forget(source).await;
                Answer::Gone(format!("no answer within {:?}", self.timeout))
            }
        }
    }

    /// Sends one request to the source replicas, starting with the next in turn and moving
    /// on while one fails; rounds where no replica answered are retried with backoff.
    async fn ask(
        &self,
        snapshot: &str,
        op: Op,
        offset: u64,
        length: u32,
        payload: Bytes,
        expect_len: Option<usize>,
    ) -> Result<Vec<u8>, CopyError> {
        let mut wait = Duration::from_secs(1);
        let mut round = 0;
        loop {
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            let (mut reasons, mut not_found, mut gone) = (Vec::new(), 0, false);
            for k in 0..self.list.len() {
                let source = &self.list[(start + k) % self.list.len()];
                let answer = self
                    .ask_one(source, op, offset, length, payload.clone(), expect_len)
                    .await;
                let reason = match answer {
                    Answer::Data(data) => return Ok(data),
                    Answer::NotFound(r) => {
                        not_found += 1;
                        r
                    }
                    Answer::Refused(r) => r,
                    Answer::Gone(r) => {
                        gone = true;
                        r
                    }
                };
                reasons.push(format!("{}: {reason}", source.address));
            }
            let reasons = reasons.join("; ");
            if not_found == self.list.len() {
                return Err(CopyError::SnapshotNotFound {
                    volume: self.volume.to_owned(),
                    snapshot: snapshot.to_owned(),
                    reasons,
                });
            }
            if !gone || round == RETRY_ROUNDS {
                return Err(CopyError::SourceFailed {
                    volume: self.volume.to_owned(),
                    reasons,
                });
            }
            tracing::warn!(volume = self.volume, ?op, offset, retry_in = ?wait, reasons, "no source replica answered; trying again");
            tokio::time::sleep(wait).await;
            wait *= 2;
            round += 1;
        }
    }
}

/// The `[start, end)` byte ranges of `data` made of whole `block`-sized runs that are not
/// all zeros (the last block may be short).
pub fn nonzero_runs(data: &[u8], block: usize) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, piece) in data.chunks(block).enumerate() {
        if piece.iter().all(|&b| b == 0) {
            continue;
        }
        let (start, end) = (i * block, i * block + piece.len());
        match runs.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => runs.push((start, end)),
        }
    }
    runs
}

/// Copies snapshot `p.snapshot` of volume `p.source_volume` from its replicas into the
/// engine's volume (see the module documentation). `progress` counts the bytes of the
/// chunks to read (`total_bytes`, `done_bytes`), the bytes written (`uploaded_bytes`) and
/// the chunks that held data (`blocks`).
pub async fn run_copy(
    engine: &Engine,
    p: &CopyParams,
    progress: &Progress,
) -> Result<(), CopyError> {
    if !valid_name(&p.source_volume) || !valid_name(&p.snapshot) {
        return Err(CopyError::Invalid(format!(
            "volume {:?} and snapshot {:?} must be 1-255 bytes of [A-Za-z0-9._-]",
            p.source_volume, p.snapshot
        )));
    }
    if p.replicas.is_empty() {
        return Err(CopyError::Invalid(format!(
            "no replica of volume {:?} to copy from",
            p.source_volume
        )));
    }
    if p.size == 0 || !p.size.is_multiple_of(BLOCK_SIZE) || p.size > engine.size() {
        return Err(CopyError::Invalid(format!(
            "{} bytes of snapshot {:?} cannot be copied into this volume of {} bytes",
            p.size,
            p.snapshot,
            engine.size()
        )));
    }
    let sources = Sources {
        volume: &p.source_volume,
        token: engine.token(),
        timeout: engine.timeout(),
        list: p
            .replicas
            .iter()
            .map(|address| Source {
                address: address.clone(),
                link: tokio::sync::Mutex::new(None),
            })
            .collect(),
        next: AtomicUsize::new(0),
    };
    let started = Instant::now();
    let mut map = (CHUNK as u32).to_be_bytes().to_vec();
    map.push(0);
    map.extend_from_slice(p.snapshot.as_bytes());
    let bits = sources
        .ask(&p.snapshot, Op::ChangedChunks, 0, 0, Bytes::from(map), None)
        .await?;
    let held = |i: u64| {
        bits.get((i / 8) as usize)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    };
    let chunks = p.size.div_ceil(CHUNK);
    let todo: Vec<u64> = (0..chunks).filter(|&i| held(i)).collect();
    let len_of = |i: u64| CHUNK.min(p.size - i * CHUNK);
    let total: u64 = todo.iter().map(|&i| len_of(i)).sum();
    progress.total_bytes.store(total, Ordering::Relaxed);
    tracing::info!(volume = %engine.volume, source = %p.source_volume, snapshot = %p.snapshot, chunks = todo.len(), of = chunks, "copy started");

    let name = Bytes::copy_from_slice(p.snapshot.as_bytes());
    let (sources, name) = (&sources, &name);
    futures::stream::iter(todo)
        .map(|i| async move {
            let offset = i * CHUNK;
            let len = len_of(i) as u32;
            let data = sources
                .ask(
                    &p.snapshot,
                    Op::ReadSnapshot,
                    offset,
                    len,
                    name.clone(),
                    Some(len as usize),
                )
                .await?;
            let data = Bytes::from(data);
            let runs = nonzero_runs(&data, BLOCK_SIZE as usize);
            for &(start, end) in &runs {
                engine
                    .write(offset + start as u64, data.slice(start..end), false)
                    .await?;
                progress
                    .uploaded_bytes
                    .fetch_add((end - start) as u64, Ordering::Relaxed);
            }
            if !runs.is_empty() {
                progress.blocks.fetch_add(1, Ordering::Relaxed);
            }
            progress.done_bytes.fetch_add(len as u64, Ordering::Relaxed);
            Ok::<_, CopyError>(())
        })
        .buffer_unordered(p.concurrency.max(1))
        .try_collect::<()>()
        .await?;
    engine.flush().await?;
    let elapsed = started.elapsed();
    let written = progress.uploaded_bytes.load(Ordering::Relaxed);
    tracing::info!(
        event = "copy_completed",
        volume = %engine.volume,
        source = %p.source_volume,
        snapshot = %p.snapshot,
        read_bytes = total,
        written_bytes = written,
        elapsed_ms = elapsed.as_millis() as u64,
        read_mib_per_sec = (total as f64 / (1 << 20) as f64 / elapsed.as_secs_f64().max(1e-3)) as u64,
        "copy completed"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::nonzero_runs;

    #[test]
    fn only_non_zero_blocks_are_written_in_merged_runs() {
        let mut data = vec![0u8; 10 * 4];
        assert!(nonzero_runs(&data, 4).is_empty());
        data[1] = 1; // block 0
        data[5] = 1; // block 1
        data[17] = 1; // block 4
        data[39] = 1; // block 9, the last
        assert_eq!(nonzero_runs(&data, 4), vec![(0, 8), (16, 20), (36, 40)]);
        let short = [0u8, 0, 0, 0, 0, 7];
        assert_eq!(nonzero_runs(&short, 4), vec![(4, 6)], "a short last block");
    }
}
