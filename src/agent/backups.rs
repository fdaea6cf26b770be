//! The backups the log asks of a volume attached here, run as jobs on its engine: started
//! once its snapshot is taken, polled each tick, their progress (at most once a second),
//! completion or failure reported to the log. A job the engine no longer knows after it
//! had started (the engine was restarted) fails the backup with that reason; a new backup
//! is the retry. Restores of volumes created from a backup, and copies of volumes created
//! from a snapshot of another volume (or cloned), are run the same way on the engine
//! started for them (with no frontend).

use std::time::{Duration, Instant};

use shorthorn_dataplane::backup::{Manifest, Store, parse_backup_url};
use shorthorn_dataplane::proto::{
    JobName, JobState, StartBackupRequest, StartCopyRequest, StartRestoreRequest,
};
use shorthorn_state::{
    Backup, BackupState, ReplicaMode, Request, Robustness, SnapshotSource, SnapshotState, State,
    TargetBackup, Timestamp, Volume,
};
use tonic::Code;

use super::engines::EngineClient;
use super::{Agent, NodeView};

/// Shortest time between two progress reports of one backup.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

impl Agent {
    /// Starts, follows and reports the backups in progress of this attached volume.
    pub(super) async fn carry_out_backups(
        &self,
        volume: &Volume,
        backups: &[Backup],
        concurrency: u64,
        client: &mut EngineClient,
    ) {
        for backup in backups.iter().filter(|b| b.volume == volume.name) {
            let ready = volume
                .snapshots
                .get(&backup.snapshot)
                .is_some_and(|s| s.state == SnapshotState::Ready);
            if let Some(request) = self.follow_backup(backup, ready, concurrency, client).await
                && let Err(err) = self.propose(request).await
            {
                tracing::warn!(backup = %backup.name, "reporting the backup: {err}");
            }
        }
    }

    async fn follow_backup(
        &self,
        backup: &Backup,
        snapshot_ready: bool,
        concurrency: u64,
        client: &mut EngineClient,
    ) -> Option<Request> {
        let name = backup.name.clone();
        let status = client.job_status(JobName { name: name.clone() }).await;
        let reply = match status {
            Ok(reply) => reply.into_inner(),
            Err(status) if status.code() == Code::NotFound => {
                if backup.started {
                    return Some(Request::ReportBackupFailed {
                        name,
                        reason: "the volume's engine no longer runs the backup job (it was restarted); back it up again".into(),
                    });
                }
                if !snapshot_ready {
                    return None;
                }
                let credentials = match self.config.credentials.map() {
                    Ok(credentials) => credentials,
                    Err(reason) => return Some(Request::ReportBackupFailed { name, reason }),
                };
                let start = StartBackupRequest {
                    name: name.clone(),
                    snapshot: backup.snapshot.clone(),
                    base_snapshot: String::new(),
                    base_backup: backup.base.clone().unwrap_or_default(),
                    target_url: backup.target.clone(),
                    credentials,
                    labels: backup.labels.clone().into_iter().collect(),
                    concurrency: concurrency.min(u32::MAX as u64) as u32,
                };
                return Some(match client.start_backup(start).await {
                    Ok(_) => {
                        tracing::info!(backup = %name, volume = %backup.volume, "backup started");
                        Request::ReportBackupStarted { name }
                    }
                    Err(status) if status.code() == Code::AlreadyExists => {
                        Request::ReportBackupStarted { name }
                    }
                    Err(status) => Request::ReportBackupFailed {
                        name,
                        reason: status.message().to_string(),
                    },
                });
            }
            Err(status) => {
                tracing::debug!(backup = %name, "job status: {}", status.message());
                return None;
            }
        };
        if !backup.started {
            return Some(Request::ReportBackupStarted { name });
        }
        match reply.state() {
            JobState::Completed => {
                // The job counts the blocks it read (only the changed ones); the backup's
                // size and blocks are its manifest's.
                let (size, blocks) = match self.manifest_of(backup).await {
                    Ok(m) => (m.size, m.blocks.len() as u64),
                    Err(err) => {
                        tracing::warn!(backup = %name, "reading the completed backup's manifest: {err}");
                        (backup.size, reply.blocks)
                    }
                };
                Some(Request::ReportBackupCompleted {
                    name,
                    url: reply.manifest_url,
                    size,
                    blocks,
                    uploaded_bytes: reply.uploaded_bytes,
                })
            }
            JobState::Error => Some(Request::ReportBackupFailed {
                name,
                reason: reply.error,
            }),
            _ => {
                let mut reported = self.progress_reported.lock().ok()?;
                if reported
                    .get(&name)
                    .is_some_and(|at| at.elapsed() < PROGRESS_EVERY)
                {
                    return None;
                }
                reported.insert(name.clone(), Instant::now());
                let progress = (reply.done_bytes * 100)
                    .checked_div(reply.total_bytes)
                    .unwrap_or(0)
                    .min(99) as u8;
                Some(Request::ReportBackupProgress {
                    name,
                    progress,
                    blocks: reply.blocks,
                    uploaded_bytes: reply.uploaded_bytes,
                })
            }
        }
    }
}

impl Agent {
    /// The manifest of `backup` on its target (one read).
    async fn manifest_of(&self, backup: &Backup) -> Result<Manifest, String> {
        self.open_target(&backup.target)?
            .get_manifest(&backup.volume, &backup.name)
            .await
            .map_err(|e| e.to_string())
    }

    /// Runs the restore of a volume created from a backup on its engine (started with no
    /// frontend for it): starts the job when the engine does not know it (a new engine, or
    /// one started again after this manager restarted: a restore rewrites every block, so
    /// it simply starts over), reports its progress at most once a second, then its
    /// completion or its failure with the engine's reason.
    ///
    /// A volume copied from a snapshot of another volume is run the same way with a copy
    /// job, started once the snapshot is taken (a clone's is taken in the same command that
    /// created the volume) and handed the source's read-write replicas.
    pub(super) async fn carry_out_restore(
        &self,
        volume: &Volume,
        view: &NodeView,
        client: &mut EngineClient,
    ) {
        let Some(restore) = volume.restore.as_ref() else {
            return;
        };
        let concurrency = view.restore_concurrency;
        let request = match (&restore.snapshot, view.copy_sources.get(&volume.name)) {
            (Some(from), Some(source)) => {
                self.follow_copy(&volume.name, from, source, concurrency, client)
                    .await
            }
            (Some(_), None) => None,
            (None, _) => {
                self.follow_restore(&volume.name, &restore.url, concurrency, client)
                    .await
            }
        };
        if let Some(request) = request
            && let Err(err) = self.propose(request).await
        {
            tracing::warn!(volume = %volume.name, "reporting the restore: {err}");
        }
    }

    async fn follow_copy(
        &self,
        volume: &str,
        from: &SnapshotSource,
        source: &CopySource,
        concurrency: u64,
        client: &mut EngineClient,
    ) -> Option<Request> {
        let failed = |reason: String| {
            Some(Request::ReportRestoreFailed {
                volume: volume.to_string(),
                reason,
            })
        };
        let what = format!("snapshot \"{}/{}\"", from.volume, from.snapshot);
        // The engine's name for the job (see `CopyParams::job_name`).
        let job = format!("copy-{}-{}", from.volume, from.snapshot);
        let reply = match client.job_status(JobName { name: job }).await {
            Ok(reply) => reply.into_inner(),
            Err(status) if status.code() == Code::NotFound => {
                let size = match source.snapshot {
                    None => {
                        return failed(format!(
                            "{what} is gone (it failed, or its volume was detached or deleted before it was taken)"
                        ));
                    }
                    Some((SnapshotState::Pending, _)) => return None,
                    Some((_, size)) => size,
                };
                if source.replicas.is_empty() {
                    if source.faulted {
                        return failed(format!(
                            "volume \"{}\" has no healthy replica to copy {what} from",
                            from.volume
                        ));
                    }
                    tracing::debug!(volume, "waiting for the source replicas' addresses");
                    return None;
                }
                let start = StartCopyRequest {
                    source_volume: from.volume.clone(),
                    snapshot: from.snapshot.clone(),
                    source_replicas: source.replicas.iter().map(|a| format!("tcp:{a}")).collect(),
                    size_bytes: size,
                    concurrency: concurrency.min(u32::MAX as u64) as u32,
                };
                return match client.start_copy(start).await {
                    Ok(_) => {
                        tracing::info!(volume, source = %what, "copy started");
                        None
                    }
                    Err(status) if status.code() == Code::AlreadyExists => None,
                    Err(status) => failed(status.message().to_string()),
                };
            }
            Err(status) => {
                tracing::debug!(volume, "copy job status: {}", status.message());
                return None;
            }
        };
        match reply.state() {
            JobState::Completed => {
                tracing::info!(volume, source = %what, written_bytes = reply.uploaded_bytes, "copy completed");
                Some(Request::ReportRestoreCompleted {
                    volume: volume.to_string(),
                })
            }
            JobState::Error => failed(reply.error),
            _ => self.restore_progress(volume, reply.done_bytes, reply.total_bytes),
        }
    }

    /// The progress report of a restore or copy, at most once a second.
    pub(super) fn restore_progress(&self, volume: &str, done: u64, total: u64) -> Option<Request> {
        let key = format!("restore/{volume}");
        let mut reported = self.progress_reported.lock().ok()?;
        if reported
            .get(&key)
            .is_some_and(|at| at.elapsed() < PROGRESS_EVERY)
        {
            return None;
        }
        reported.insert(key, Instant::now());
        let progress = (done * 100).checked_div(total).unwrap_or(0).min(99) as u8;
        Some(Request::ReportRestoreProgress {
            volume: volume.to_string(),
            progress,
        })
    }

    async fn follow_restore(
        &self,
        volume: &str,
        url: &str,
        concurrency: u64,
        client: &mut EngineClient,
    ) -> Option<Request> {
        let failed = |reason: String| {
            Some(Request::ReportRestoreFailed {
                volume: volume.to_string(),
                reason,
            })
        };
        let (target, backup_volume, backup) = match parse_backup_url(url) {
            Ok(parts) => parts,
            Err(err) => return failed(err.to_string()),
        };
        // The engine's name for the job (see `Jobs::start_restore`).
        let job = format!("restore-{backup_volume}-{backup}");
        let reply = match client.job_status(JobName { name: job }).await {
            Ok(reply) => reply.into_inner(),
            Err(status) if status.code() == Code::NotFound => {
                let credentials = match self.config.credentials.map() {
                    Ok(credentials) => credentials,
                    Err(reason) => return failed(reason),
                };
                let start = StartRestoreRequest {
                    target_url: target,
                    credentials,
                    backup_volume,
                    backup_name: backup,
                    concurrency: concurrency.min(u32::MAX as u64) as u32,
                    base_backup_name: String::new(),
                    compare_local: false,
                };
                return match client.start_restore(start).await {
                    Ok(_) => {
                        tracing::info!(volume, url, "restore started");
                        None
                    }
                    Err(status) if status.code() == Code::AlreadyExists => None,
                    Err(status) => failed(status.message().to_string()),
                };
            }
            Err(status) => {
                tracing::debug!(volume, "restore job status: {}", status.message());
                return None;
            }
        };
        match reply.state() {
            JobState::Completed => {
                tracing::info!(volume, url, "restore completed");
                Some(Request::ReportRestoreCompleted {
                    volume: volume.to_string(),
                })
            }
            JobState::Error => failed(reply.error),
            _ => self.restore_progress(volume, reply.done_bytes, reply.total_bytes),
        }
    }
}

/// What a copy from a snapshot of another volume needs from the log: the snapshot's state
/// and size (`None` once it is gone), and the source's read-write replicas.
#[derive(Debug, Clone)]
pub(super) struct CopySource {
    snapshot: Option<(SnapshotState, u64)>,
    /// Addresses (host:port) of the source's read-write replicas that reported one.
    replicas: Vec<String>,
    /// The source has no read-write replica at all.
    faulted: bool,
}

impl CopySource {
    pub(super) fn of(state: &State, from: &SnapshotSource) -> CopySource {
        let Some(volume) = state.volumes.get(&from.volume) else {
            return CopySource {
                snapshot: None,
                replicas: vec![],
                faulted: true,
            };
        };
        CopySource {
            snapshot: volume
                .snapshots
                .get(&from.snapshot)
                .map(|s| (s.state, s.size)),
            replicas: state
                .replicas_of(volume)
                .filter(|r| r.mode == ReplicaMode::ReadWrite)
                .filter_map(|r| r.address.clone())
                .collect(),
            faulted: volume.robustness == Robustness::Faulted,
        }
    }
}

/// The backup work only the leader does: collecting the blocks no manifest names (the one
/// actor BACKUP.md requires), in the background after backups were deleted from the log
/// and at most once per `COLLECT_EVERY` (the store defers it while any backup is in
/// progress on the target); and syncing the backup volumes on the target into the log
/// every `backupstorePollInterval` seconds (one listing of the volume directories and one
/// index read per volume; the log records it only when it changed).
#[derive(Default)]
pub(super) struct LeaderBackups {
    gc: std::sync::Arc<std::sync::Mutex<CollectorState>>,
    sync: std::sync::Arc<std::sync::Mutex<SyncState>>,
    /// When the log was last read for this work (at most every `LEADER_CHECK`).
    checked: std::sync::Mutex<Option<Instant>>,
}

/// Least time between two looks at the log for the leader's backup work.
const LEADER_CHECK: Duration = Duration::from_secs(1);

#[derive(Default)]
struct CollectorState {
    /// The completed backups on the target as last seen, and the target.
    seen: (String, std::collections::BTreeSet<String>),
    /// Backups were deleted since the last collection.
    due: bool,
    last: Option<Instant>,
    running: bool,
}

#[derive(Default)]
struct SyncState {
    last: Option<Instant>,
    running: bool,
    /// A finished poll's report, proposed at the next tick.
    ready: Option<Request>,
}

/// Least time between two collections.
const COLLECT_EVERY: Duration = Duration::from_secs(60);
/// Blocks younger than this are never collected (clock skew between writers); the
/// environment's `SHORTHORN_BACKUP_GC_GRACE_SECS` overrides it (tests).
fn collect_grace() -> Duration {
    std::env::var("SHORTHORN_BACKUP_GC_GRACE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(600), Duration::from_secs)
}

impl Agent {
    /// Opens the backup target with this manager's credentials.
    pub(super) fn open_target(&self, target: &str) -> Result<Store, String> {
        let credentials = self.config.credentials.load()?;
        Store::open_url(target, &credentials).map_err(|e| e.to_string())
    }

    /// On the leader, each tick: the block collection and the backup volume sync, when due.
    pub(super) async fn leader_backup_tasks(&self) {
        {
            let Ok(mut checked) = self.leader_backups.checked.lock() else {
                return;
            };
            if checked.is_some_and(|at| at.elapsed() < LEADER_CHECK) {
                return;
            }
            *checked = Some(Instant::now());
        }
        let read = self
            .log
            .read(|s| {
                let target = s.settings.backup_target.clone();
                let completed: std::collections::BTreeSet<String> = s
                    .backups
                    .values()
                    .filter(|b| b.target == target && b.state == BackupState::Completed)
                    .map(|b| b.name.clone())
                    .collect();
                (target, completed, s.settings.backupstore_poll_interval)
            })
            .await;
        let Ok((target, completed, poll_every)) = read else {
            return;
        };
        self.sync_backup_volumes_when_due(&target, poll_every).await;
        self.collect_backups_when_due(target, completed);
    }

    async fn sync_backup_volumes_when_due(&self, target: &str, every_secs: u64) {
        let store = {
            let Ok(mut sync) = self.leader_backups.sync.lock() else {
                return;
            };
            let ready = sync.ready.take();
            let due = every_secs > 0
                && !target.is_empty()
                && !sync.running
                && sync
                    .last
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(every_secs));
            let store = if due {
                sync.last = Some(Instant::now());
                match self.open_target(target) {
                    Ok(store) => {
                        sync.running = true;
                        Some(store)
                    }
                    Err(err) => {
                        tracing::warn!(target, "syncing the backup volumes: {err}");
                        None
                    }
                }
            } else {
                None
            };
            (ready, store)
        };
        let (ready, store) = store;
        if let Some(request) = ready
            && let Err(err) = self.propose(request).await
        {
            tracing::warn!("reporting the backup volumes: {err}");
        }
        let Some(store) = store else {
            return;
        };
        let sync = self.leader_backups.sync.clone();
        let target = target.to_string();
        tokio::spawn(async move {
            let found = async {
                let mut volumes = std::collections::BTreeMap::new();
                for name in store.list_volumes().await? {
                    let backups = store.list_backups(&name).await?;
                    let backups = backups
                        .into_iter()
                        .map(|b| TargetBackup {
                            name: b.name,
                            snapshot: b.snapshot,
                            size: b.size,
                            created_at: Timestamp(b.created_unix_ms),
                            blocks: b.blocks,
                        })
                        .collect();
                    volumes.insert(name, backups);
                }
                Ok::<_, shorthorn_dataplane::backup::BackupError>(volumes)
            }
            .await;
            let Ok(mut sync) = sync.lock() else {
                return;
            };
            sync.running = false;
            match found {
                Ok(volumes) => sync.ready = Some(Request::ReportBackupVolumes { target, volumes }),
                Err(err) => tracing::warn!(target, "syncing the backup volumes: {err}"),
            }
        });
    }

    /// Starts a collection on the backup target when backups were deleted since the last.
    fn collect_backups_when_due(
        &self,
        target: String,
        completed: std::collections::BTreeSet<String>,
    ) {
        let Some(store) = ({
            let Ok(mut c) = self.leader_backups.gc.lock() else {
                return;
            };
            if c.seen.0 == target && c.seen.1.iter().any(|b| !completed.contains(b)) {
                c.due = true;
            }
            c.seen = (target.clone(), completed);
            let idle = c.last.is_none_or(|at| at.elapsed() >= COLLECT_EVERY);
            if target.is_empty() || !c.due || c.running || !idle {
                return;
            }
            c.last = Some(Instant::now());
            match self.open_target(&target) {
                Ok(store) => {
                    c.running = true;
                    c.due = false;
                    Some(store)
                }
                Err(err) => {
                    tracing::warn!(target, "collecting backup blocks: {err}");
                    None
                }
            }
        }) else {
            return;
        };
        let collector = self.leader_backups.gc.clone();
        tokio::spawn(async move {
            let outcome = store.gc(collect_grace()).await;
            let Ok(mut c) = collector.lock() else {
                return;
            };
            c.running = false;
            match outcome {
                Ok(report) if !report.deferred_by.is_empty() => {
                    // Backups were running: try again at the next turn.
                    c.due = true;
                    tracing::info!(target = %store.url(), deferred_by = ?report.deferred_by, "block collection deferred");
                }
                Ok(report) => {
                    tracing::info!(target = %store.url(), deleted = report.deleted, bytes = report.deleted_bytes, kept_young = report.kept_young, "collected unreferenced backup blocks")
                }
                Err(err) => {
                    c.due = true;
                    tracing::warn!(target = %store.url(), "collecting backup blocks: {err}");
                }
            }
        });
    }
}
