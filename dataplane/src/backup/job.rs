//! Backup and restore jobs, run inside the engine of an attached volume (it holds the
//! connections to every replica); the job table also runs copies of another volume's
//! snapshot (`crate::copy`). A backup reads one RW replica as of a snapshot, only the
//! blocks changed since its base snapshot, uploads only blocks the target lacks, and
//! writes the manifest last. A restore writes through the engine to every replica, checks
//! every block's blake3, and flushes at the end. Both run `concurrency` blocks at a time,
//! so memory stays at about `concurrency` x block size.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::store::{DEFAULT_BLOCK_SIZE, Manifest, Store, encode_block};
use super::{BackupError, now_unix_ms, valid_component};
use crate::crash_point;
use crate::engine::{Engine, EngineError};
use crate::protocol::Op;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Running,
    Completed,
    Error,
}

/// A job's progress, shared with whoever polls it.
#[derive(Debug)]
pub struct Progress {
    pub kind: &'static str,
    pub done_bytes: AtomicU64,
    pub total_bytes: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub blocks: AtomicU64,
    /// The job's store's request counters.
    pub counters: Mutex<Option<Arc<super::store::Counters>>>,
    state: Mutex<(JobState, String, String)>,
}

impl Progress {
    pub fn new(kind: &'static str) -> Progress {
        Progress {
            kind,
            done_bytes: AtomicU64::new(0),
            total_bytes: AtomicU64::new(0),
            uploaded_bytes: AtomicU64::new(0),
            blocks: AtomicU64::new(0),
            counters: Mutex::new(None),
            state: Mutex::new((JobState::Running, String::new(), String::new())),
        }
    }

    /// Requests made to the target so far.
    pub fn requests(&self) -> u64 {
        self.counters
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|c| c.requests.load(Ordering::Relaxed)))
            .unwrap_or(0)
    }

    /// (state, error text, manifest url).
    pub fn state(&self) -> (JobState, String, String) {
        self.state.lock().map(|s| s.clone()).unwrap_or((
            JobState::Error,
            "state poisoned".into(),
            String::new(),
        ))
    }

    fn finish(&self, state: JobState, error: String, url: String) {
        if let Ok(mut s) = self.state.lock() {
            *s = (state, error, url);
        }
    }
}

/// What to back up.
#[derive(Debug, Clone)]
pub struct BackupParams {
    pub name: String,
    pub snapshot: String,
    /// The snapshot of the base backup, when not the one its manifest names.
    pub base_snapshot: Option<String>,
    /// The volume's last completed backup, to back up incrementally from.
    pub base_backup: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub concurrency: usize,
    pub block_size: u64,
}

impl BackupParams {
    pub fn new(name: &str, snapshot: &str) -> BackupParams {
        BackupParams {
            name: name.into(),
            snapshot: snapshot.into(),
            base_snapshot: None,
            base_backup: None,
            labels: BTreeMap::new(),
            concurrency: DEFAULT_CONCURRENCY,
            block_size: DEFAULT_BLOCK_SIZE,
        }
    }
}

/// Blocks in flight at once when the caller names no concurrency.
pub const DEFAULT_CONCURRENCY: usize = 8;

const MARKER_REFRESH: Duration = Duration::from_secs(600);

/// Store operations retried with backoff (1, 2, 4, 8 s) while the target is unreachable
/// or fails; object_store retries each request itself first.
async fn retrying<T, F, Fut>(what: &str, mut f: F) -> Result<T, BackupError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BackupError>>,
{
    let mut wait = Duration::from_secs(1);
    let mut attempt = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e @ (BackupError::Unreachable { .. } | BackupError::Store { .. }))
                if attempt < 4 =>
            {
                tracing::warn!(what, error = %e, retry_in = ?wait, "backup store operation failed; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sends `op` to one RW replica, the next one when it fails; a reply of `expect_len`
/// bytes (when given) is the only good one. A snapshot the replica lacks ends the search.
async fn ask_rw_replica(
    engine: &Engine,
    op: Op,
    offset: u64,
    len: u32,
    payload: Bytes,
    expect_len: Option<usize>,
) -> Result<Vec<u8>, EngineError> {
    let mut last = EngineError::NoHealthyReplica;
    for slot in engine.rw_replicas() {
        match engine
            .call_or_fail(&slot, op, 0, offset, len, payload.clone())
            .await
        {
            Ok(r) if expect_len.is_none_or(|n| r.payload.len() == n) => return Ok(r.payload),
            Ok(r) => {
                last = EngineError::Replica {
                    address: slot.address.to_string(),
                    reason: format!("read {} bytes, not {len}", r.payload.len()),
                }
            }
            Err(e @ EngineError::SnapshotNotFound(_)) => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Reads `len` bytes at `offset` as of `snapshot` from one RW replica.
async fn read_snapshot(
    engine: &Engine,
    snapshot: &str,
    offset: u64,
    len: u32,
) -> Result<Vec<u8>, EngineError> {
    let name = Bytes::copy_from_slice(snapshot.as_bytes());
    ask_rw_replica(
        engine,
        Op::ReadSnapshot,
        offset,
        len,
        name,
        Some(len as usize),
    )
    .await
}

/// The bitmap of `block_size` chunks changed in the layers after `from` up to `to` (all
/// layers up to `to` without `from`), from one RW replica.
async fn changed_chunks(
    engine: &Engine,
    block_size: u64,
    from: Option<&str>,
    to: &str,
) -> Result<Vec<u8>, EngineError> {
    let mut payload = (block_size as u32).to_be_bytes().to_vec();
    payload.extend_from_slice(from.unwrap_or_default().as_bytes());
    payload.push(0);
    payload.extend_from_slice(to.as_bytes());
    ask_rw_replica(engine, Op::ChangedChunks, 0, 0, Bytes::from(payload), None).await
}

/// Backs snapshot `p.snapshot` of the engine's volume up to `store`. The manifest is the
/// last thing written: a backup that fails (or whose engine is killed) leaves none.
pub async fn run_backup(
    engine: &Engine,
    store: &Store,
    p: &BackupParams,
    progress: &Progress,
) -> Result<Manifest, BackupError> {
    let volume = engine.volume.as_str().to_owned();
    if !valid_component(&p.name) {
        return Err(BackupError::Invalid(format!(
            "backup name {:?} must be 1-255 bytes of [A-Za-z0-9._-]",
            p.name
        )));
    }
    let bs = p.block_size;
    if bs == 0 || !bs.is_multiple_of(crate::volume::BLOCK_SIZE) || bs > 32 << 20 {
        return Err(BackupError::Invalid(format!(
            "block size {bs} must be a multiple of 4096 up to 32 MiB"
        )));
    }
    let snapshots = engine.snapshot_list().await?;
    let Some(snap_idx) = snapshots.iter().position(|s| s.name == p.snapshot) else {
        return Err(EngineError::SnapshotNotFound(p.snapshot.clone()).into());
    };
    match store.get_manifest(&volume, &p.name).await {
        Ok(_) => {
            return Err(BackupError::Invalid(format!(
                "backup {:?} of volume {volume:?} already exists",
                p.name
            )));
        }
        Err(BackupError::BackupNotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    retrying("mark in progress", || {
        store.mark_in_progress(&volume, &p.name)
    })
    .await?;
    // The marker is rewritten every 10 minutes while the backup runs, so it never looks
    // abandoned (MARKER_EXPIRY) to a collector.
    let refresh = tokio::spawn({
        let (store, volume, name) = (store.clone(), volume.clone(), p.name.clone());
        async move {
            loop {
                tokio::time::sleep(MARKER_REFRESH).await;
                if let Err(e) = store.mark_in_progress(&volume, &name).await {
                    tracing::warn!(volume, backup = %name, error = %e, "in-progress marker not refreshed");
                }
            }
        }
    });
    let result = async {
        store.wait_for_gc(Duration::from_secs(600)).await?;
        // The base is read only now: with the marker up and no collection holding the
        // lock, no block is collected until the marker comes down, so the base's blocks
        // stay. Read before, a base deleted and collected meanwhile would leave this
        // backup naming blocks that are gone.
        // The base: its blocks stand for every chunk not changed since its snapshot.
        let base = match &p.base_backup {
            Some(b) => match store.get_manifest(&volume, b).await {
                Ok(m) if m.block_size == bs => Some(m),
                Ok(_) => None,
                Err(BackupError::BackupNotFound { .. }) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        let base_snapshot = p
            .base_snapshot
            .clone()
            .or_else(|| base.as_ref().map(|m| m.snapshot.clone()));
        let usable_base = match (&base, &base_snapshot) {
            (Some(m), Some(bsnap)) => snapshots
                .iter()
                .position(|s| &s.name == bsnap)
                .filter(|&i| i < snap_idx)
                .map(|_| (m, bsnap.as_str())),
            _ => None,
        };
        let size = engine.size();
        let nblocks = size.div_ceil(bs);
        let bits = changed_chunks(engine, bs, usable_base.map(|(_, s)| s), &p.snapshot).await?;
        let changed = |i: u64| {
            bits.get((i / 8) as usize)
                .is_some_and(|b| b & (1 << (i % 8)) != 0)
        };
        let from_base: HashMap<u64, &String> = usable_base
            .map(|(m, _)| m.blocks.iter().map(|(o, h)| (*o, h)).collect())
            .unwrap_or_default();
        let todo: Vec<u64> = (0..nblocks).filter(|&i| changed(i)).collect();
        progress
            .total_bytes
            .store(todo.len() as u64 * bs, Ordering::Relaxed);
        tracing::info!(volume, backup = %p.name, snapshot = %p.snapshot, base = ?usable_base.map(|(m, _)| &m.name), changed = todo.len(), of = nblocks, "backup started");

        let snapshot = p.snapshot.as_str();
        let uploaded: Vec<(u64, Option<String>)> = futures::stream::iter(todo)
            .map(|i| async move {
                let offset = i * bs;
                let len = bs.min(size - offset) as u32;
                let data = read_snapshot(engine, snapshot, offset, len).await?;
                progress.done_bytes.fetch_add(len as u64, Ordering::Relaxed);
                if data.iter().all(|&b| b == 0) {
                    return Ok::<_, BackupError>((offset, None));
                }
                let hash = blake3::hash(&data).to_hex().to_string();
                if !retrying("check a block", || store.has_block(&hash)).await? {
                    let encoded = tokio::task::spawn_blocking(move || encode_block(&data))
                        .await
                        .map_err(|e| BackupError::Invalid(format!("compression task: {e}")))?;
                    let encoded = Bytes::from(encoded);
                    let n = encoded.len() as u64;
                    retrying("upload a block", || store.put_block(&hash, encoded.clone())).await?;
                    progress.uploaded_bytes.fetch_add(n, Ordering::Relaxed);
                }
                progress.blocks.fetch_add(1, Ordering::Relaxed);
                Ok((offset, Some(hash)))
            })
            .buffer_unordered(p.concurrency.max(1))
            .try_collect()
            .await?;
        let mut blocks: BTreeMap<u64, String> = (0..nblocks)
            .filter(|&i| !changed(i))
            .filter_map(|i| from_base.get(&(i * bs)).map(|h| (i * bs, (*h).clone())))
            .collect();
        for (offset, hash) in uploaded {
            match hash {
                Some(h) => blocks.insert(offset, h),
                None => blocks.remove(&offset),
            };
        }
        let manifest = Manifest {
            format: 1,
            name: p.name.clone(),
            volume: volume.clone(),
            snapshot: p.snapshot.clone(),
            size,
            block_size: bs,
            created_unix_ms: now_unix_ms(),
            labels: p.labels.clone(),
            base_backup: usable_base.map(|(m, _)| m.name.clone()),
            uploaded_bytes: progress.uploaded_bytes.load(Ordering::Relaxed),
            blocks: blocks.into_iter().collect(),
        };
        crash_point("backup-before-manifest");
        retrying("write the manifest", || store.put_manifest(&manifest)).await?;
        Ok(manifest)
    }
    .await;
    refresh.abort();
    let _ = refresh.await;
    if let Err(e) = store.clear_in_progress(&volume, &p.name).await {
        tracing::warn!(volume, backup = %p.name, error = %e, "in-progress marker not removed; it expires");
    }
    if let Ok(m) = &result {
        tracing::info!(event = "backup_completed", volume, backup = %m.name, blocks = m.blocks.len(), uploaded_bytes = m.uploaded_bytes, "backup completed");
    }
    result
}

/// A restore job: backup `name` of backup volume `volume`, over the data of backup
/// `base` (or, with `compare_local`, over data of no known backup).
#[derive(Debug, Clone)]
pub struct RestoreParams {
    pub volume: String,
    pub name: String,
    pub base: Option<String>,
    pub compare_local: bool,
    pub concurrency: usize,
}

/// What a volume holds before a restore into it, which decides the blocks written.
#[derive(Debug, Clone, Copy)]
pub enum RestoreOver<'a> {
    /// Nothing worth keeping (a new volume): every block is written.
    Nothing,
    /// The data of this backup: only the blocks whose hash differs are written, and only
    /// the blocks it had and the restored one has not are trimmed.
    Backup(&'a Manifest),
    /// Data of no known backup (a mix of two): each block is read and hashed first, and
    /// only those that differ are written (non-zero ones where the backup has none are
    /// trimmed).
    Unknown,
}

/// Restores backup `m` into the engine's volume: every block is checked against its
/// blake3; a missing or bad one fails the restore naming offset, hash and backup. Blocks
/// not in the manifest are trimmed (they read as zeros). Flushes at the end. Over data
/// already there (`over`), only what differs is written: an incremental restore. Cut
/// short and run again, it gives the same data.
pub async fn run_restore(
    engine: &Engine,
    store: &Store,
    m: &Manifest,
    over: RestoreOver<'_>,
    concurrency: usize,
    progress: &Progress,
) -> Result<(), BackupError> {
    if engine.size() < m.size {
        return Err(BackupError::Invalid(format!(
            "the volume ({} bytes) is smaller than the backup ({} bytes)",
            engine.size(),
            m.size
        )));
    }
    let bs = m.block_size;
    if bs == 0 || bs > 64 << 20 {
        return Err(BackupError::Invalid(format!("manifest block size {bs}")));
    }
    progress.total_bytes.store(m.size, Ordering::Relaxed);
    let hashes: HashMap<u64, &String> = m.blocks.iter().map(|(o, h)| (*o, h)).collect();
    let (base, compare_local) = match over {
        RestoreOver::Backup(b) if b.block_size == bs => (
            Some(
                b.blocks
                    .iter()
                    .map(|(o, h)| (*o, h))
                    .collect::<HashMap<u64, &String>>(),
            ),
            false,
        ),
        RestoreOver::Nothing => (None, false),
        RestoreOver::Backup(_) | RestoreOver::Unknown => (None, true),
    };
    let base = &base;
    let backup = store.backup_url(&m.volume, &m.name);
    let backup = &backup;
    let hashes = &hashes;
    // Time spent fetching (and checking) blocks and writing them, summed over the blocks
    // in flight, for the completion event: where a slow restore waits.
    let fetch_us = AtomicU64::new(0);
    let write_us = AtomicU64::new(0);
    let (fetch_us, write_us) = (&fetch_us, &write_us);
    let started = std::time::Instant::now();
    futures::stream::iter(0..m.size.div_ceil(bs))
        .map(|i| async move {
            let offset = i * bs;
            let len = bs.min(m.size - offset) as u32;
            let t0 = std::time::Instant::now();
            let unchanged = base
                .as_ref()
                .is_some_and(|b| b.get(&offset) == hashes.get(&offset));
            let unchanged = unchanged
                || (compare_local && holds(engine, offset, len, hashes.get(&offset)).await?);
            if unchanged {
                progress.done_bytes.fetch_add(len as u64, Ordering::Relaxed);
                return Ok(());
            }
            match hashes.get(&offset) {
                Some(hash) => {
                    let data = retrying("read a block", || store.get_block(hash))
                        .await?
                        .map_err(|reason| BackupError::BadBlock {
                            backup: backup.clone(),
                            offset,
                            hash: (*hash).clone(),
                            reason,
                        })?;
                    if data.len() != len as usize {
                        return Err(BackupError::BadBlock {
                            backup: backup.clone(),
                            offset,
                            hash: (*hash).clone(),
                            reason: format!("{} bytes, expected {len}", data.len()),
                        });
                    }
                    progress
                        .uploaded_bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    let t1 = std::time::Instant::now();
                    fetch_us.fetch_add((t1 - t0).as_micros() as u64, Ordering::Relaxed);
                    engine.write(offset, data, false).await?;
                    write_us.fetch_add(t1.elapsed().as_micros() as u64, Ordering::Relaxed);
                    progress.blocks.fetch_add(1, Ordering::Relaxed);
                }
                None => engine.zero(offset, len, true, false).await?,
            }
            progress.done_bytes.fetch_add(len as u64, Ordering::Relaxed);
            Ok(())
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<()>()
        .await?;
    let written = started.elapsed();
    engine.flush().await?;
    tracing::info!(
        event = "restore_completed",
        volume = %engine.volume,
        backup = %backup,
        blocks_s = written.as_secs_f64(),
        flush_s = (started.elapsed() - written).as_secs_f64(),
        fetch_s = fetch_us.load(Ordering::Relaxed) as f64 / 1e6,
        write_s = write_us.load(Ordering::Relaxed) as f64 / 1e6,
        concurrency,
        "restore completed"
    );
    Ok(())
}

/// Whether the volume's block at `offset` already is `hash` (all zeros for `None`).
async fn holds(
    engine: &Engine,
    offset: u64,
    len: u32,
    hash: Option<&&String>,
) -> Result<bool, BackupError> {
    let data = engine.read(offset, len).await?;
    Ok(match hash {
        None => data.iter().all(|b| *b == 0),
        Some(hash) => blake3::hash(&data).to_hex().as_str() == hash.as_str(),
    })
}

/// The jobs an engine runs, by name.
#[derive(Default)]
pub struct Jobs {
    map: Mutex<HashMap<String, Arc<Progress>>>,
}

impl Jobs {
    /// Registers a job; refused while one of that name is running.
    pub fn register(&self, name: &str, kind: &'static str) -> Result<Arc<Progress>, BackupError> {
        let mut map = self
            .map
            .lock()
            .map_err(|_| BackupError::Busy("job table poisoned".into()))?;
        if let Some(p) = map.get(name)
            && p.state().0 == JobState::Running
        {
            return Err(BackupError::Busy(format!(
                "job {name:?} is already running"
            )));
        }
        let p = Arc::new(Progress::new(kind));
        map.insert(name.to_owned(), p.clone());
        Ok(p)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Progress>> {
        self.map.lock().ok().and_then(|m| m.get(name).cloned())
    }

    /// Registers job `name` and runs it in the background on `store` with its own request
    /// counters; its outcome (the backup's url, or the error) becomes the job's state.
    fn spawn<Fut>(
        &self,
        name: &str,
        kind: &'static str,
        store: Store,
        job: impl FnOnce(Store, Arc<Progress>) -> Fut,
    ) -> Result<(), BackupError>
    where
        Fut: std::future::Future<Output = Result<String, BackupError>> + Send + 'static,
    {
        let progress = self.register(name, kind)?;
        let store = store.with_own_counters();
        if let Ok(mut c) = progress.counters.lock() {
            *c = Some(store.counters.clone());
        }
        let run = job(store, progress.clone());
        let name = name.to_owned();
        tokio::spawn(async move {
            match run.await {
                Ok(url) => progress.finish(JobState::Completed, String::new(), url),
                Err(e) => {
                    let event = format!("{kind}_failed");
                    tracing::warn!(event, backup = %name, error = %e, "{kind} failed");
                    progress.finish(JobState::Error, e.to_string(), String::new())
                }
            }
        });
        Ok(())
    }

    /// Starts a backup in the background.
    pub fn start_backup(
        &self,
        engine: Arc<Engine>,
        store: Store,
        params: BackupParams,
    ) -> Result<(), BackupError> {
        let name = params.name.clone();
        self.spawn(&name, "backup", store, |store, progress| async move {
            let m = run_backup(&engine, &store, &params, &progress).await?;
            Ok(store.backup_url(&m.volume, &m.name))
        })
    }

    /// Starts copying a snapshot of another volume into the engine's volume in the
    /// background (`crate::copy`); the job is named [`CopyParams::job_name`].
    pub fn start_copy(
        &self,
        engine: Arc<Engine>,
        params: crate::copy::CopyParams,
    ) -> Result<String, BackupError> {
        let job = params.job_name();
        let progress = self.register(&job, "copy")?;
        let name = job.clone();
        tokio::spawn(async move {
            match crate::copy::run_copy(&engine, &params, &progress).await {
                Ok(()) => progress.finish(JobState::Completed, String::new(), String::new()),
                Err(e) => {
                    tracing::warn!(event = "copy_failed", job = %name, error = %e, "copy failed");
                    progress.finish(JobState::Error, e.to_string(), String::new())
                }
            }
        });
        Ok(job)
    }

    /// Starts a restore of `volume/name` in the background; the job is named
    /// `restore-<volume>-<name>`.
    pub fn start_restore(
        &self,
        engine: Arc<Engine>,
        store: Store,
        p: RestoreParams,
    ) -> Result<String, BackupError> {
        let RestoreParams {
            volume,
            name,
            base,
            compare_local,
            concurrency,
        } = p;
        let job = format!("restore-{volume}-{name}");
        self.spawn(&job, "restore", store, |store, progress| async move {
            let m = store.get_manifest(&volume, &name).await?;
            // A base named but gone leaves data of no backup the target still knows.
            let compare_local = compare_local || base.is_some();
            let base = match base {
                None => None,
                Some(base) => match store.get_manifest(&volume, &base).await {
                    Ok(b) => Some(b),
                    // Deleted on the target since: the volume's own blocks are compared.
                    Err(BackupError::BackupNotFound { .. }) => {
                        tracing::info!(volume, backup = %name, base, "the base backup is gone: comparing the volume's blocks");
                        None
                    }
                    Err(e) => return Err(e),
                },
            };
            let over = match &base {
                Some(b) => RestoreOver::Backup(b),
                None if compare_local => RestoreOver::Unknown,
                None => RestoreOver::Nothing,
            };
            run_restore(&engine, &store, &m, over, concurrency, &progress).await?;
            Ok(store.backup_url(&volume, &name))
        })?;
        Ok(job)
    }
}
