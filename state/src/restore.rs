//! Decisions about restoring a new volume from a backup. The volume is created with its
//! restore in progress and attached at once, under epoch 1, on the node of one of its
//! replicas: that node's agent starts an engine with no frontend and runs the restore job
//! on it. The engine's reports come back here; completed or failed, the volume is detached.
//! A user cannot attach it before the restore completed, and a volume whose restore failed
//! (or was detached mid-restore, or whose node went down) is never presented as restored:
//! it is deleted and restored again. An engine that dies mid-restore is restarted under a
//! new epoch on the same node, and the new engine restores from the start. Nothing here
//! talks to the target; the API checked the backup exists and fits before the volume was
//! created. A volume copied from a snapshot of another volume (`copy`) goes the same way,
//! with the same reports.

use crate::decide::live_volume;
use crate::{Epoch, Event, Rejection, Restore, RestoreState, State, Volume, VolumeState};

/// The `from_backup` URL is Longhorn's `<target>?backup=<name>&volume=<volume>`.
pub(crate) fn check_url(url: &str) -> Result<(), Rejection> {
    let Some((target, query)) = url.split_once('?') else {
        return Err(bad_url(url));
    };
    let has = |key: &str| {
        query.split('&').any(|kv| {
            kv.split_once('=')
                .is_some_and(|(k, v)| k == key && !v.is_empty())
        })
    };
    if target.is_empty() || !has("backup") || !has("volume") {
        return Err(bad_url(url));
    }
    Ok(())
}

fn bad_url(url: &str) -> Rejection {
    Rejection::invalid(format!(
        "backup URL \"{url}\" is malformed: it is TARGET?backup=NAME&volume=VOLUME (as `shorthorn backup get` prints it)"
    ))
}

/// The restore a volume created from `url` starts with.
pub(crate) fn new(url: &str) -> Restore {
    Restore {
        url: url.to_string(),
        snapshot: None,
        state: RestoreState::InProgress,
        progress: 0,
        error: None,
    }
}

/// The events that attach a volume being created for its restore: on the node of the
/// first replica placed on a ready node. Refused when no replica could be placed there.
pub(crate) fn attach_new(
    state: &State,
    volume: &Volume,
    events: &[Event],
) -> Result<Event, Rejection> {
    let node = events
        .iter()
        .find_map(|e| match e {
            Event::ReplicaScheduled { replica }
                if state.nodes.get(&replica.node).is_some_and(|n| n.ready) =>
            {
                Some(replica.node.clone())
            }
            _ => None,
        })
        .ok_or_else(|| {
            let why = events.iter().find_map(|e| match e {
                Event::SchedulingFailed { reason, .. } => Some(reason.clone()),
                _ => None,
            });
            Rejection::precondition(format!(
                "volume \"{}\" cannot be restored: no replica could be placed on a ready node{}",
                volume.name,
                why.map(|w| format!(" ({w})")).unwrap_or_default()
            ))
        })?;
    Ok(Event::VolumeAttaching {
        name: volume.name.clone(),
        node,
        epoch: Epoch(volume.epoch.0 + 1),
        frontend: crate::Frontend::None,
        internal: false,
    })
}

/// The volume, when its restore is in progress; `None` for a late report (ignored).
fn restoring<'a>(state: &'a State, name: &str) -> Result<Option<&'a Volume>, Rejection> {
    let volume = live_volume(state, name)?;
    Ok(volume.restoring().then_some(volume))
}

fn detaching(volume: &Volume) -> Option<Event> {
    matches!(volume.state, VolumeState::Attaching | VolumeState::Attached).then(|| {
        Event::VolumeDetaching {
            name: volume.name.clone(),
        }
    })
}

pub(crate) fn progressed(state: &State, name: &str, progress: u8) -> Result<Vec<Event>, Rejection> {
    let progress = progress.min(99);
    Ok(match restoring(state, name)? {
        Some(v) if v.restore.as_ref().is_some_and(|r| r.progress != progress) => {
            vec![Event::RestoreProgressed {
                name: name.to_string(),
                progress,
            }]
        }
        _ => vec![],
    })
}

pub(crate) fn completed(state: &State, name: &str) -> Result<Vec<Event>, Rejection> {
    let Some(volume) = restoring(state, name)? else {
        return Ok(vec![]);
    };
    let mut events = vec![Event::RestoreCompleted {
        name: name.to_string(),
    }];
    // A standby's engine goes on following its backups.
    if !volume.standby {
        events.extend(detaching(volume));
    }
    Ok(events)
}

pub(crate) fn failed(state: &State, name: &str, reason: &str) -> Result<Vec<Event>, Rejection> {
    let Some(volume) = restoring(state, name)? else {
        return Ok(vec![]);
    };
    let mut events = vec![Event::RestoreFailed {
        name: name.to_string(),
        reason: reason.to_string(),
    }];
    events.extend(detaching(volume));
    Ok(events)
}

#[cfg(test)]
mod tests {
    use crate::RejectionKind::*;
    use crate::testkit::{Cluster, GIB};
    use crate::{Request, RestoreState, VolumeSpec, VolumeState};

    const URL: &str = "s3://bucket@us-east-1/store?backup=b1&volume=db";

    fn cluster() -> Cluster {
        let mut c = Cluster::new();
        for n in ["n1", "n2", "n3"] {
            c.node(n, "", 100);
        }
        c
    }

    fn restore(name: &str, url: &str) -> Request {
        Request::CreateVolume(VolumeSpec {
            name: name.into(),
            size: GIB,
            number_of_replicas: Some(2),
            from_backup: Some(url.into()),
            ..Default::default()
        })
    }

    #[test]
    fn a_restored_volume_is_attached_for_its_engine_and_not_for_users_until_completed() {
        let mut c = cluster();
        c.ok(restore("copy", URL));
        let v = &c.state.volumes["copy"];
        assert_eq!(v.state, VolumeState::Attaching);
        let node = v
            .attachment
            .as_ref()
            .expect("attached for the restore")
            .node
            .clone();
        assert!(c.nodes_of("copy").contains(&node), "on a node of a replica");
        let r = v.restore.as_ref().expect("restore");
        assert_eq!((r.state, r.progress), (RestoreState::InProgress, 0));

        let epoch = c.state.volumes["copy"].epoch;
        c.ok(Request::ReportEngineStarted {
            name: "copy".into(),
            epoch,
            endpoint: String::new(),
            frontend: Default::default(),
            device: None,
        });
        let attach = Request::AttachVolume {
            name: "copy".into(),
            node: node.clone(),
            frontend: Default::default(),
        };
        assert!(
            c.rejected(attach.clone(), PreconditionFailed)
                .contains("being restored")
        );
        c.set("backupTarget", "file:///mnt/b");
        assert!(
            c.rejected(
                Request::CreateBackup {
                    name: "b2".into(),
                    volume: "copy".into(),
                    snapshot: None,
                    labels: Default::default()
                },
                PreconditionFailed
            )
            .contains("being restored")
        );
        let progress = |p| Request::ReportRestoreProgress {
            volume: "copy".into(),
            progress: p,
        };
        assert_eq!(c.ok(progress(40)).len(), 1);
        assert!(
            c.ok(progress(40)).is_empty(),
            "the same progress twice is one event"
        );
        assert_eq!(
            c.state.volumes["copy"].restore.as_ref().unwrap().progress,
            40
        );

        c.ok(Request::ReportRestoreCompleted {
            volume: "copy".into(),
        });
        let v = &c.state.volumes["copy"];
        assert_eq!(
            v.state,
            VolumeState::Detaching,
            "the restoring engine stops"
        );
        assert_eq!(v.restore.as_ref().unwrap().state, RestoreState::Completed);
        c.ok(Request::ReportEngineStopped {
            name: "copy".into(),
            epoch,
        });
        // A late failure report does not undo a completed restore.
        assert!(
            c.ok(Request::ReportRestoreFailed {
                volume: "copy".into(),
                reason: "late".into()
            })
            .is_empty()
        );
        assert_eq!(c.state.volumes["copy"].state, VolumeState::Detached);
        c.attach("copy", "n3");
        assert_eq!(c.state.volumes["copy"].state, VolumeState::Attached);
    }

    #[test]
    fn a_failed_or_interrupted_restore_says_why_and_keeps_the_volume_from_use() {
        let mut c = cluster();
        c.ok(restore("a", URL));
        c.ok(Request::ReportRestoreFailed {
            volume: "a".into(),
            reason: "block at offset 0 (blake3 00ab) is bad".into(),
        });
        let v = &c.state.volumes["a"];
        assert_eq!(v.state, VolumeState::Detaching);
        let epoch = v.epoch;
        c.ok(Request::ReportEngineStopped {
            name: "a".into(),
            epoch,
        });
        let attach = |n: &str| Request::AttachVolume {
            name: n.into(),
            node: "n1".into(),
            frontend: Default::default(),
        };
        let why = c.rejected(attach("a"), PreconditionFailed);
        assert!(why.contains("failed: block at offset 0"), "{why}");
        c.ok(Request::DeleteVolume { name: "a".into() });

        // The engine dies (or the node goes down) mid-restore: the volume is detached and
        // its restore failed, with the reason; nothing waits forever.
        c.ok(restore("b", URL));
        let epoch = c.state.volumes["b"].epoch;
        c.ok(Request::ReportEngineStopped {
            name: "b".into(),
            epoch,
        });
        let v = &c.state.volumes["b"];
        assert_eq!(v.state, VolumeState::Detached);
        let r = v.restore.as_ref().unwrap();
        assert_eq!(r.state, RestoreState::Error);
        assert!(
            r.error.as_deref().unwrap().contains("engine stopped"),
            "{r:?}"
        );
        assert!(
            c.rejected(attach("b"), PreconditionFailed)
                .contains("restore it again")
        );
    }

    #[test]
    fn a_malformed_url_or_no_place_for_a_replica_is_refused() {
        let mut c = cluster();
        for bad in [
            "s3://b@r/p",
            "s3://b@r/p?backup=x",
            "?backup=x&volume=y",
            "s3://b@r/p?backup=&volume=v",
        ] {
            assert!(
                c.rejected(restore("x", bad), InvalidArgument)
                    .contains("malformed"),
                "{bad}"
            );
        }
        let mut empty = Cluster::new();
        assert!(
            empty
                .rejected(restore("x", URL), PreconditionFailed)
                .contains("no replica could be placed")
        );
    }
}
