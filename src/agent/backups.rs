//! The backups the log asks of a volume attached here, run as jobs on its engine: started
//! once its snapshot is taken, polled each tick, their progress (at most once a second),
//! completion or failure reported to the log. A job the engine no longer knows after it
//! had started (the engine was restarted) fails the backup with that reason; a new backup
//! is the retry.

use std::time::{Duration, Instant};

use shorthorn_dataplane::backup::Credentials;
use shorthorn_dataplane::proto::{JobName, JobState, StartBackupRequest};
use shorthorn_state::{Backup, Request, SnapshotState, Volume};
use tonic::Code;

use super::Agent;
use super::engines::EngineClient;

/// Shortest time between two progress reports of one backup.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The target's credentials: Longhorn's keys (`AWS_ACCESS_KEY_ID`, ...) from this
/// manager's environment.
fn credentials() -> std::collections::HashMap<String, String> {
    Credentials::KEYS
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect()
}

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
                let start = StartBackupRequest {
                    name: name.clone(),
                    snapshot: backup.snapshot.clone(),
                    base_snapshot: String::new(),
                    base_backup: backup.base.clone().unwrap_or_default(),
                    target_url: backup.target.clone(),
                    credentials: credentials(),
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
            JobState::Completed => Some(Request::ReportBackupCompleted {
                name,
                url: reply.manifest_url,
                size: reply.total_bytes,
                blocks: reply.blocks,
                uploaded_bytes: reply.uploaded_bytes,
            }),
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
