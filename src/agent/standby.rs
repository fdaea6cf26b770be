//! Disaster-recovery standbys attached here: their engine (started with no frontend)
//! first restores the backup the standby was created from, then this agent polls the
//! backup volume's index (one request) every `backupstorePollInterval` seconds, every
//! second while an activation waits, and restores each newer backup incrementally over
//! the last restored one. Every step is reported to the log, which keeps what the
//! standby is and how far behind (see `shorthorn_state`'s standby module). A restore cut
//! short (engine restarted, manager restarted) is started again over the same base: it
//! gives the same data.

use std::time::{Duration, Instant};

use shorthorn_dataplane::backup::{BackupSummary, parse_backup_url};
use shorthorn_dataplane::proto::{JobName, JobState, StartRestoreRequest};
use shorthorn_state::{Request, Standby, Timestamp, Volume};
use tonic::Code;

use super::engines::EngineClient;
use super::{Agent, NodeView};

/// An activation waiting for its last poll polls this often.
const ACTIVATING_POLL: Duration = Duration::from_secs(1);
/// Polls failed in a row after which an activation gives up on the target and activates
/// with the last restored backup (when no restore was cut short).
const ACTIVATION_ATTEMPTS: u32 = 5;

/// This agent's polling of one standby.
#[derive(Debug, Default)]
pub(super) struct Poll {
    at: Option<Instant>,
    failures: u32,
    /// When a failed restore job may be started again.
    retry_at: Option<Instant>,
}

/// The newest backup of `index` (by creation time, then name).
fn newest(index: &[BackupSummary]) -> Option<&BackupSummary> {
    index.iter().max_by_key(|b| (b.created_unix_ms, &b.name))
}

/// The newest backup of `index` that is newer than the standby's last restored one.
fn newer<'a>(index: &'a [BackupSummary], dr: &Standby) -> Option<&'a BackupSummary> {
    let newest = newest(index)?;
    let Some(last) = dr.last_restored.as_deref() else {
        return Some(newest);
    };
    if newest.name == last {
        return None;
    }
    let last_created = index
        .iter()
        .find(|b| b.name == last)
        .map_or(dr.last_restored_created.0, |b| b.created_unix_ms);
    (newest.created_unix_ms > last_created).then_some(newest)
}

impl Agent {
    pub(super) async fn carry_out_standby(
        &self,
        volume: &Volume,
        view: &NodeView,
        client: &mut EngineClient,
    ) {
        let (Some(dr), Some(restore)) = (volume.dr.as_ref(), volume.restore.as_ref()) else {
            return;
        };
        let (target, backup_volume, first) = match parse_backup_url(&restore.url) {
            Ok(parts) => parts,
            Err(err) => {
                self.report(Request::ReportStandbyFailed {
                    volume: volume.name.clone(),
                    reason: err.to_string(),
                })
                .await;
                return;
            }
        };
        // The restore in flight, over what.
        let (current, base, created) = if volume.restoring() {
            (Some(first), None, None)
        } else {
            (
                dr.restoring.clone(),
                dr.last_restored.clone(),
                Some(dr.last_seen_created),
            )
        };
        if let Some(backup) = current {
            let request = self
                .follow_standby_restore(
                    volume,
                    view,
                    client,
                    (&target, &backup_volume, &backup),
                    base.as_deref(),
                    created,
                )
                .await;
            if let Some(request) = request {
                self.report(request).await;
            }
            return;
        }
        let interval = if dr.activating {
            ACTIVATING_POLL
        } else if view.standby_poll_secs == 0 {
            return;
        } else {
            Duration::from_secs(view.standby_poll_secs)
        };
        let due = self
            .standby_polls
            .lock()
            .map(|polls| {
                polls
                    .get(&volume.name)
                    .and_then(|p| p.at)
                    .is_none_or(|at| at.elapsed() >= interval)
            })
            .unwrap_or(false);
        if !due {
            return;
        }
        let listed = match self.open_target(&target) {
            Ok(store) => store
                .list_backups(&backup_volume)
                .await
                .map_err(|e| e.to_string()),
            Err(err) => Err(err),
        };
        let failures = self.polled(&volume.name, listed.is_err());
        let request = match listed {
            Err(reason) if dr.activating && failures >= ACTIVATION_ATTEMPTS => {
                Request::ReportStandbyActivated {
                    volume: volume.name.clone(),
                    note: Some(format!(
                        "activated with backup \"{}\": the backup target stayed unreachable \
                         ({failures} polls: {reason})",
                        dr.last_restored.as_deref().unwrap_or_default()
                    )),
                }
            }
            Err(reason) => Request::ReportStandbyFailed {
                volume: volume.name.clone(),
                reason: format!("polling backup volume \"{backup_volume}\": {reason}"),
            },
            Ok(index) => match newer(&index, dr) {
                Some(next) => {
                    tracing::info!(volume = %volume.name, backup = %next.name, base = ?dr.last_restored, "a newer backup to restore");
                    Request::ReportStandbyRestoring {
                        volume: volume.name.clone(),
                        backup: next.name.clone(),
                        created: Timestamp(next.created_unix_ms),
                    }
                }
                None if dr.activating => Request::ReportStandbyActivated {
                    volume: volume.name.clone(),
                    note: None,
                },
                // Up to date; a failure reported before is cleared by the next restore.
                None => return,
            },
        };
        if let Request::ReportStandbyFailed { reason, .. } = &request
            && dr.error.as_ref() == Some(reason)
        {
            return;
        }
        self.report(request).await;
    }

    /// Starts (again) or follows the restore of `backup` over `base` on the standby's
    /// engine; the request reporting where it got, if any.
    async fn follow_standby_restore(
        &self,
        volume: &Volume,
        view: &NodeView,
        client: &mut EngineClient,
        (target, backup_volume, backup): (&str, &str, &str),
        base: Option<&str>,
        created: Option<Timestamp>,
    ) -> Option<Request> {
        let job = format!("restore-{backup_volume}-{backup}");
        let what = (target, backup_volume, backup);
        let failed = |reason: String| {
            Some(Request::ReportStandbyFailed {
                volume: volume.name.clone(),
                reason: format!("restoring backup \"{backup}\": {reason}"),
            })
        };
        let status = client.job_status(JobName { name: job.clone() }).await;
        let reply = match status {
            Ok(reply) => reply.into_inner(),
            Err(status) if status.code() == Code::NotFound => {
                return self
                    .start_standby_restore(volume, view, client, what, base, false)
                    .await
                    .and_then(failed);
            }
            Err(status) => {
                tracing::debug!(volume = %volume.name, "standby restore status: {}", status.message());
                return None;
            }
        };
        match reply.state() {
            JobState::Completed => {
                let created = match created {
                    Some(created) if created.0 > 0 => created,
                    // The first restore: when its backup was made, from its manifest.
                    _ => match self.open_target(target) {
                        Ok(store) => match store.get_manifest(backup_volume, backup).await {
                            Ok(m) => Timestamp(m.created_unix_ms),
                            Err(err) => {
                                tracing::warn!(volume = %volume.name, "reading the manifest of {backup}: {err}");
                                Timestamp(0)
                            }
                        },
                        Err(_) => Timestamp(0),
                    },
                };
                tracing::info!(volume = %volume.name, backup, fetched_bytes = reply.uploaded_bytes, "standby restore completed");
                Some(Request::ReportStandbyRestored {
                    volume: volume.name.clone(),
                    backup: backup.to_string(),
                    created,
                })
            }
            // The first restore failing fails the standby (the log says so); a later one
            // is reported and started again after a poll interval.
            JobState::Error if volume.restoring() => Some(Request::ReportStandbyFailed {
                volume: volume.name.clone(),
                reason: reply.error,
            }),
            JobState::Error => {
                if let Some(request) = self
                    .restoring_deleted(volume, target, backup_volume, backup)
                    .await
                {
                    return Some(request);
                }
                let retry = self
                    .standby_polls
                    .lock()
                    .map(|mut polls| {
                        let poll = polls.entry(volume.name.clone()).or_default();
                        match poll.retry_at {
                            Some(at) if at <= Instant::now() => {
                                poll.retry_at = None;
                                true
                            }
                            Some(_) => false,
                            None => {
                                let wait = Duration::from_secs(view.standby_poll_secs.clamp(1, 30));
                                poll.retry_at = Some(Instant::now() + wait);
                                false
                            }
                        }
                    })
                    .unwrap_or(false);
                if retry
                    && let Some(reason) = self
                        .start_standby_restore(volume, view, client, what, base, true)
                        .await
                {
                    return failed(reason);
                }
                let reason = format!("restoring backup \"{backup}\": {}", reply.error);
                let dr = volume.dr.as_ref()?;
                (dr.error.as_ref() != Some(&reason)).then(|| Request::ReportStandbyFailed {
                    volume: volume.name.clone(),
                    reason,
                })
            }
            _ if volume.restoring() => {
                self.restore_progress(&volume.name, reply.done_bytes, reply.total_bytes)
            }
            _ => None,
        }
    }

    /// After a failed restore of `backup`: when the backup volume no longer has it (deleted
    /// on the source cluster mid-restore), the request that replaces it with the newest
    /// backup left, over the mix of data the cut-short restore left (or, with none left,
    /// says so). `None` when it is still there or the target cannot be listed: the restore
    /// is retried as it is.
    async fn restoring_deleted(
        &self,
        volume: &Volume,
        target: &str,
        backup_volume: &str,
        backup: &str,
    ) -> Option<Request> {
        let index = self
            .open_target(target)
            .ok()?
            .list_backups(backup_volume)
            .await
            .ok()?;
        if index.iter().any(|b| b.name == backup) {
            return None;
        }
        let Some(newest) = newest(&index) else {
            return Some(Request::ReportStandbyFailed {
                volume: volume.name.clone(),
                reason: format!(
                    "backup \"{backup}\" was deleted from the target while it was restored and \
                     backup volume \"{backup_volume}\" has no other: the data is part of it"
                ),
            });
        };
        tracing::warn!(volume = %volume.name, backup, instead = %newest.name, "the backup being restored was deleted from the target: restoring the newest left in its place");
        Some(Request::ReportStandbyRestoring {
            volume: volume.name.clone(),
            backup: newest.name.clone(),
            created: Timestamp(newest.created_unix_ms),
        })
    }

    /// Starts the restore of `backup` over `base` on the engine; why it could not, if so.
    async fn start_standby_restore(
        &self,
        volume: &Volume,
        view: &NodeView,
        client: &mut EngineClient,
        (target, backup_volume, backup): (&str, &str, &str),
        base: Option<&str>,
        retry: bool,
    ) -> Option<String> {
        let credentials = match self.config.credentials.map() {
            Ok(c) => c,
            Err(reason) => return Some(reason),
        };
        let request = StartRestoreRequest {
            target_url: target.to_string(),
            credentials,
            backup_volume: backup_volume.to_string(),
            backup_name: backup.to_string(),
            concurrency: view.restore_concurrency.min(u32::MAX as u64) as u32,
            base_backup_name: base.unwrap_or_default().to_string(),
            // A later restore with no base: over what a restore cut short left.
            compare_local: base.is_none() && !volume.restoring(),
        };
        match client.start_restore(request).await {
            Ok(_) => {
                tracing::info!(volume = %volume.name, backup, ?base, retry, "standby restore started");
                None
            }
            Err(status) if status.code() == Code::AlreadyExists => None,
            Err(status) => Some(status.message().to_string()),
        }
    }

    /// On the leader, each tick: standbys that lost their engine (their node went down, or
    /// it stopped) are attached again on a node of one of their read-write replicas.
    pub(super) async fn leader_standby_tasks(&self) {
        let Ok(detached) = self
            .log
            .read(|s| {
                s.volumes
                    .values()
                    .filter(|v| v.standby && v.state == shorthorn_state::VolumeState::Detached)
                    .filter(|v| {
                        v.restore
                            .as_ref()
                            .is_some_and(|r| r.state == shorthorn_state::RestoreState::Completed)
                    })
                    .map(|v| v.name.clone())
                    .collect::<Vec<_>>()
            })
            .await
        else {
            return;
        };
        for name in detached {
            if let Err(err) = self
                .propose(Request::AttachStandby { name: name.clone() })
                .await
            {
                tracing::debug!(volume = %name, "attaching the standby again: {err}");
            }
        }
    }

    /// Records a poll of `volume`'s backup volume; the failures in a row, this one included.
    fn polled(&self, volume: &str, failed: bool) -> u32 {
        let Ok(mut polls) = self.standby_polls.lock() else {
            return 0;
        };
        let poll = polls.entry(volume.to_string()).or_default();
        poll.at = Some(Instant::now());
        poll.failures = if failed { poll.failures + 1 } else { 0 };
        poll.failures
    }

    async fn report(&self, request: Request) {
        if let Err(err) = self.propose(request).await {
            tracing::warn!("reporting a standby: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(name: &str, created: u64) -> BackupSummary {
        BackupSummary {
            name: name.into(),
            volume: "v".into(),
            snapshot: "s".into(),
            size: 0,
            created_unix_ms: created,
            blocks: 0,
            labels: Default::default(),
        }
    }

    #[test]
    fn the_next_backup_is_the_newest_made_after_the_last_restored() {
        let index = [summary("b1", 10), summary("b2", 20), summary("b3", 30)];
        let dr = |last: Option<&str>, created: u64| Standby {
            last_restored: last.map(str::to_string),
            last_restored_created: Timestamp(created),
            ..Default::default()
        };
        assert_eq!(newer(&index, &dr(None, 0)).unwrap().name, "b3");
        assert_eq!(newer(&index, &dr(Some("b1"), 10)).unwrap().name, "b3");
        assert!(newer(&index, &dr(Some("b3"), 30)).is_none());
        // The last restored one deleted from the target: only what is newer follows.
        assert!(newer(&index[..2], &dr(Some("b3"), 30)).is_none());
        assert_eq!(newer(&index, &dr(Some("gone"), 25)).unwrap().name, "b3");
        assert!(newer(&[], &dr(Some("b1"), 10)).is_none());
    }
}
