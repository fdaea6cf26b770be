//! Decisions about backups: the log records each backup asked for and what the engine of the
//! attached volume reports about it (progress, completed, failed). Nothing here talks to the
//! backup target; the API removes a backup from the target before `DeleteBackup`.

use std::collections::BTreeMap;

use crate::auto_attach;
use crate::decide::live_volume;
use crate::name::check_label;
use crate::{
    Backup, BackupState, Bytes, Event, Rejection, Snapshot, SnapshotState, State, TargetBackup,
    Timestamp,
};

fn backup<'a>(state: &'a State, name: &str) -> Result<&'a Backup, Rejection> {
    state
        .backups
        .get(name)
        .ok_or_else(|| Rejection::not_found("backup", name))
}

pub(crate) fn create(
    state: &State,
    name: &str,
    volume: &str,
    snapshot: Option<&str>,
    labels: &BTreeMap<String, String>,
    at: Timestamp,
) -> Result<Vec<Event>, Rejection> {
    check_label("backup", name)?;
    let target = state.settings.backup_target.clone();
    if target.is_empty() {
        return Err(Rejection::precondition(
            "no backup target is set; set one with `shorthorn setting set backupTarget URL`",
        ));
    }
    if state.backups.contains_key(name) {
        return Err(Rejection::already_exists("backup", name));
    }
    let current = live_volume(state, volume)?;
    if let Some(why) = current.standby_blocks("be backed up") {
        return Err(Rejection::precondition(why));
    }
    if let Some(why) = current.restore_blocks_use() {
        return Err(Rejection::precondition(why));
    }
    if let Some(running) = state
        .backups
        .values()
        .find(|b| b.volume == volume && b.state == BackupState::InProgress)
    {
        return Err(Rejection::conflict(format!(
            "volume \"{volume}\" is already being backed up (backup \"{}\"); wait for it to finish",
            running.name
        )));
    }
    // A detached volume is attached internally for its engine to upload the backup.
    let attach = auto_attach::attach_for(state, volume, "back it up")?;
    let mut events = Vec::new();
    let snapshot = match snapshot {
        Some(snapshot) => match current.snapshots.get(snapshot) {
            Some(s) if s.state != SnapshotState::Deleting => snapshot.to_string(),
            Some(_) => {
                return Err(Rejection::precondition(format!(
                    "snapshot \"{volume}/{snapshot}\" is being deleted"
                )));
            }
            None => {
                return Err(Rejection::not_found(
                    "snapshot",
                    &format!("{volume}/{snapshot}"),
                ));
            }
        },
        None => {
            if current.snapshots.contains_key(name) {
                return Err(Rejection::already_exists(
                    "snapshot",
                    &format!("{volume}/{name}"),
                ));
            }
            let max = state.settings.snapshot_max_count;
            if current.snapshots.len() as u64 >= max {
                return Err(Rejection::precondition(format!(
                    "volume \"{volume}\" already has {max} snapshots (snapshotMaxCount); name one to back up or delete some"
                )));
            }
            events.push(Event::SnapshotCreated {
                snapshot: Snapshot {
                    name: name.to_string(),
                    volume: volume.to_string(),
                    created_at: at,
                    size: current.size,
                    state: SnapshotState::Pending,
                    labels: snapshot_labels(labels),
                },
            });
            name.to_string()
        }
    };
    // Incremental: the newest completed backup of this volume on this target.
    let base = state
        .backups
        .values()
        .filter(|b| b.volume == volume && b.target == target && b.state == BackupState::Completed)
        .max_by_key(|b| (b.created_at, b.name.clone()))
        .map(|b| b.name.clone());
    events.push(Event::BackupCreated {
        backup: Backup {
            name: name.to_string(),
            volume: volume.to_string(),
            snapshot,
            url: crate::backup_url(&target, volume, name),
            target,
            base,
            state: BackupState::InProgress,
            progress: 0,
            error: None,
            size: current.size,
            blocks: 0,
            uploaded_bytes: 0,
            started: false,
            created_at: at,
            labels: labels.clone(),
        },
    });
    events.extend(attach);
    Ok(events)
}

/// The labels of the snapshot a backup takes: a recurring job's own (its retention keeps
/// them), else marked as the log's (a `snapshot-cleanup` job removes it).
fn snapshot_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = labels.clone();
    if !labels.contains_key(crate::JOB_LABEL) {
        out.insert(
            crate::SYSTEM_SNAPSHOT_LABEL.to_string(),
            "backup".to_string(),
        );
    }
    out
}

fn in_progress<'a>(state: &'a State, name: &str) -> Result<Option<&'a Backup>, Rejection> {
    let backup = backup(state, name)?;
    Ok((backup.state == BackupState::InProgress).then_some(backup))
}

pub(crate) fn started(state: &State, name: &str) -> Result<Vec<Event>, Rejection> {
    Ok(match in_progress(state, name)? {
        Some(b) if !b.started => vec![Event::BackupStarted {
            name: name.to_string(),
            volume: b.volume.clone(),
        }],
        _ => vec![],
    })
}

pub(crate) fn progressed(
    state: &State,
    name: &str,
    progress: u8,
    blocks: u64,
    uploaded_bytes: u64,
) -> Result<Vec<Event>, Rejection> {
    let progress = progress.min(99);
    Ok(match in_progress(state, name)? {
        Some(b)
            if (b.progress, b.blocks, b.uploaded_bytes) != (progress, blocks, uploaded_bytes) =>
        {
            vec![Event::BackupProgressed {
                name: name.to_string(),
                volume: b.volume.clone(),
                progress,
                blocks,
                uploaded_bytes,
            }]
        }
        _ => vec![],
    })
}

pub(crate) fn completed(
    state: &State,
    name: &str,
    url: &str,
    size: Bytes,
    blocks: u64,
    uploaded_bytes: u64,
) -> Result<Vec<Event>, Rejection> {
    Ok(match in_progress(state, name)? {
        Some(b) => vec![Event::BackupCompleted {
            name: name.to_string(),
            volume: b.volume.clone(),
            url: if url.is_empty() {
                b.url.clone()
            } else {
                url.to_string()
            },
            size,
            blocks,
            uploaded_bytes,
        }],
        None => vec![],
    })
}

pub(crate) fn failed(state: &State, name: &str, reason: &str) -> Result<Vec<Event>, Rejection> {
    Ok(match in_progress(state, name)? {
        Some(b) => vec![Event::BackupFailed {
            name: name.to_string(),
            volume: b.volume.clone(),
            reason: reason.to_string(),
        }],
        None => vec![],
    })
}

pub(crate) fn delete(state: &State, name: &str) -> Result<Vec<Event>, Rejection> {
    let Some(b) = state.backups.get(name) else {
        return Ok(vec![]);
    };
    if b.state == BackupState::InProgress {
        return Err(Rejection::conflict(format!(
            "backup \"{name}\" is in progress; delete it once it completed or failed"
        )));
    }
    Ok(vec![Event::BackupDeleted {
        name: name.to_string(),
        volume: b.volume.clone(),
    }])
}

/// A sync of the backup volumes on the target: one event when they changed (so polling an
/// unchanged target adds nothing to the log); a report about another target than the
/// current one is stale and ignored.
pub(crate) fn synced(
    state: &State,
    target: &str,
    volumes: &BTreeMap<String, Vec<TargetBackup>>,
    at: Timestamp,
) -> Result<Vec<Event>, Rejection> {
    if target != state.settings.backup_target || target.is_empty() {
        return Ok(vec![]);
    }
    let unchanged = state.backup_volumes.len() == volumes.len()
        && state
            .backup_volumes
            .values()
            .all(|v| v.target == target && volumes.get(&v.name).is_some_and(|b| *b == v.backups));
    if unchanged {
        return Ok(vec![]);
    }
    Ok(vec![Event::BackupVolumesSynced {
        target: target.to_string(),
        volumes: volumes.clone(),
        at,
    }])
}

#[cfg(test)]
mod tests {
    use crate::RejectionKind::*;
    use crate::testkit::Cluster;
    use crate::{BackupState, Request, SnapshotState, VolumeState};

    fn create(name: &str, snapshot: Option<&str>) -> Request {
        Request::CreateBackup {
            name: name.into(),
            volume: "db".into(),
            snapshot: snapshot.map(Into::into),
            labels: Default::default(),
        }
    }

    fn target(c: &mut Cluster, url: &str) {
        c.ok(Request::SetSetting {
            key: "backupTarget".into(),
            value: url.into(),
        });
    }

    fn complete(c: &mut Cluster, name: &str) {
        c.ok(Request::ReportBackupCompleted {
            name: name.into(),
            url: String::new(),
            size: 1 << 30,
            blocks: 3,
            uploaded_bytes: 4096,
        });
    }

    #[test]
    fn a_backup_of_a_detached_volume_attaches_it_internally_until_it_ends() {
        let mut c = Cluster::with_attached_db();
        target(&mut c, "file:///mnt/b");
        c.ok(Request::DetachVolume { name: "db".into() });
        let epoch = c.state.volumes["db"].epoch;
        let stopped = |c: &mut Cluster| {
            let epoch = c.state.volumes["db"].epoch;
            c.ok(Request::ReportEngineStopped {
                name: "db".into(),
                epoch,
            });
        };
        stopped(&mut c);
        for (name, ok) in [("b1", true), ("b2", false)] {
            c.ok(create(name, None));
            let v = &c.state.volumes["db"];
            assert!(v.attachment.as_ref().is_some_and(|a| a.internal), "{v:?}");
            assert!(v.epoch > epoch);
            let epoch = v.epoch;
            c.ok(Request::ReportEngineStarted {
                name: "db".into(),
                epoch,
                endpoint: String::new(),
                frontend: Default::default(),
                device: None,
            });
            // The snapshot it backs up is taken first; the upload keeps the engine.
            c.ok(Request::ReportSnapshotTaken {
                volume: "db".into(),
                name: name.into(),
            });
            assert_eq!(c.state.volumes["db"].state, VolumeState::Attached);
            if ok {
                complete(&mut c, name);
            } else {
                c.ok(Request::ReportBackupFailed {
                    name: name.into(),
                    reason: "target unreachable".into(),
                });
            }
            assert_eq!(c.state.volumes["db"].state, VolumeState::Detaching);
            stopped(&mut c);
            assert_eq!(c.state.volumes["db"].state, VolumeState::Detached);
        }
        assert_eq!(c.state.backups["b1"].state, BackupState::Completed);
        assert_eq!(c.state.backups["b2"].state, BackupState::Error);
    }

    #[test]
    fn a_backup_needs_a_target_and_an_attached_volume() {
        let mut c = Cluster::with_attached_db();
        assert!(
            c.rejected(create("b1", None), PreconditionFailed)
                .contains("no backup target is set")
        );
        target(&mut c, "file:///mnt/b");
        c.ok(Request::DetachVolume { name: "db".into() });
        assert!(
            c.rejected(create("b1", None), PreconditionFailed)
                .contains("is detaching; try again to back it up")
        );
        assert_eq!(
            c.rejected(
                Request::CreateBackup {
                    name: "b1".into(),
                    volume: "nope".into(),
                    snapshot: None,
                    labels: Default::default()
                },
                NotFound
            ),
            "volume \"nope\" not found"
        );
        assert!(
            c.rejected(create("Bad_Name", None), InvalidArgument)
                .contains("DNS-1123")
        );
    }

    #[test]
    fn a_backup_takes_a_snapshot_reports_progress_and_completes_with_its_url() {
        let mut c = Cluster::with_attached_db();
        target(&mut c, "s3://bucket@us-east-1/store");
        c.ok(create("b1", None));
        assert_eq!(
            c.state.volumes["db"].snapshots["b1"].state,
            SnapshotState::Pending
        );
        let b = &c.state.backups["b1"];
        assert_eq!(
            (b.state, b.snapshot.as_str(), b.base.as_deref()),
            (BackupState::InProgress, "b1", None)
        );
        assert_eq!(b.url, "s3://bucket@us-east-1/store?backup=b1&volume=db");
        assert!(
            c.rejected(create("b2", None), Conflict)
                .contains("already being backed up")
        );
        c.ok(Request::ReportBackupStarted { name: "b1".into() });
        let progress = |p| Request::ReportBackupProgress {
            name: "b1".into(),
            progress: p,
            blocks: 1,
            uploaded_bytes: 10,
        };
        assert_eq!(c.ok(progress(40)).len(), 1);
        // The same progress twice is one event.
        assert!(c.ok(progress(40)).is_empty());
        assert_eq!(c.state.backups["b1"].progress, 40);
        complete(&mut c, "b1");
        let b = &c.state.backups["b1"];
        assert_eq!(
            (b.state, b.progress, b.blocks, b.uploaded_bytes),
            (BackupState::Completed, 100, 3, 4096)
        );
        // A late failure report does not undo a completed backup.
        assert!(
            c.ok(Request::ReportBackupFailed {
                name: "b1".into(),
                reason: "late".into()
            })
            .is_empty()
        );

        // The next backup of the volume is incremental from b1; a named snapshot is used.
        c.ok(Request::CreateSnapshot {
            labels: Default::default(),
            volume: "db".into(),
            name: "s2".into(),
        });
        assert!(
            c.rejected(create("b3", Some("missing")), NotFound)
                .contains("db/missing")
        );
        c.ok(create("b2", Some("s2")));
        assert_eq!(c.state.backups["b2"].base.as_deref(), Some("b1"));
        assert_eq!(c.state.backups["b2"].snapshot, "s2");
    }

    #[test]
    fn backup_volumes_synced_from_the_target_are_logged_only_when_they_change() {
        let mut c = Cluster::with_attached_db();
        target(&mut c, "file:///mnt/b");
        let backup = |name: &str| crate::TargetBackup {
            name: name.into(),
            snapshot: name.into(),
            size: 1 << 30,
            created_at: crate::Timestamp(5),
            blocks: 2,
        };
        let report =
            |target: &str, backups: Vec<crate::TargetBackup>| Request::ReportBackupVolumes {
                target: target.into(),
                volumes: [("other".to_string(), backups)].into(),
            };
        assert_eq!(c.ok(report("file:///mnt/b", vec![backup("b1")])).len(), 1);
        let v = &c.state.backup_volumes["other"];
        assert_eq!((v.target.as_str(), v.backups.len()), ("file:///mnt/b", 1));
        assert!(
            c.ok(report("file:///mnt/b", vec![backup("b1")])).is_empty(),
            "unchanged"
        );
        assert!(
            c.ok(report("file:///elsewhere", vec![])).is_empty(),
            "another target"
        );
        assert_eq!(
            c.ok(report("file:///mnt/b", vec![backup("b1"), backup("b2")]))
                .len(),
            1
        );
        assert_eq!(c.state.backup_volumes["other"].backups.len(), 2);
        c.ok(Request::ReportBackupVolumes {
            target: "file:///mnt/b".into(),
            volumes: Default::default(),
        });
        assert!(
            c.state.backup_volumes.is_empty(),
            "a volume gone from the target is gone"
        );
    }

    #[test]
    fn a_detach_fails_the_backup_in_progress_and_a_retry_is_allowed() {
        let mut c = Cluster::with_attached_db();
        target(&mut c, "file:///mnt/b");
        c.ok(create("b1", None));
        c.ok(Request::ReportSnapshotTaken {
            volume: "db".into(),
            name: "b1".into(),
        });
        assert!(
            c.rejected(Request::DeleteBackup { name: "b1".into() }, Conflict)
                .contains("in progress")
        );
        c.ok(Request::DetachVolume { name: "db".into() });
        let epoch = c.state.volumes["db"].epoch;
        c.ok(Request::ReportEngineStopped {
            name: "db".into(),
            epoch,
        });
        let b = &c.state.backups["b1"];
        assert_eq!(b.state, BackupState::Error);
        assert!(b.error.as_deref().unwrap().contains("engine stopped"));
        c.attach("db", "n1");
        c.ok(create("b2", Some("b1")));
        // A failed backup is no base for an incremental one.
        assert_eq!(c.state.backups["b2"].base, None);
        c.ok(Request::ReportBackupFailed {
            name: "b2".into(),
            reason: "engine restarted".into(),
        });
        assert_eq!(
            c.state.backups["b2"].error.as_deref(),
            Some("engine restarted")
        );
        c.ok(Request::DeleteBackup { name: "b1".into() });
        assert!(!c.state.backups.contains_key("b1"));
        // Deleting twice is fine (the API retries).
        c.ok(Request::DeleteBackup { name: "b1".into() });
    }
}
