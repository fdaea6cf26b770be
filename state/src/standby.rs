//! Disaster-recovery standby volumes. A standby is created from the newest backup of a
//! backup volume that another cluster writes (`--from-backup URL --standby`): it is
//! restored like any volume from a backup, but its engine is not stopped when the first
//! restore completes. It stays attached with no frontend, and its node's agent polls the
//! backup volume's index; each newer backup is restored incrementally over the last
//! (only the blocks whose hash changed, zeroing the ones gone) and reported here. Users
//! cannot attach, detach, snapshot, back up, revert or expand it meanwhile.
//!
//! `ActivateVolume` asks the agent to restore what is still newer and then report the
//! activation; the volume becomes a normal one, detached, ready for a user's attach. A
//! standby that lost its engine (its node went down) is attached again by the leader
//! (`AttachStandby`), or, when activated then, activated at once if no restore was cut
//! short (its data is then exactly `last_restored`).

use crate::decide::live_volume;
use crate::{
    Epoch, Event, Frontend, Rejection, ReplicaMode, RestoreState, Standby, State, Timestamp,
    Volume, VolumeState,
};

/// The backup volume a backup URL (`TARGET?backup=NAME&volume=VOLUME`) belongs to:
/// `TARGET?volume=VOLUME`, with any options of the target's own kept.
pub(crate) fn backup_volume_of(url: &str) -> String {
    let Some((target, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.starts_with("backup=") && !kv.is_empty())
        .collect();
    if rest.is_empty() {
        target.to_string()
    } else {
        format!("{target}?{}", rest.join("&"))
    }
}

/// The standby record a volume created with `standby` starts with; refused without a
/// backup to follow.
pub(crate) fn new(name: &str, from_backup: Option<&str>) -> Result<Standby, Rejection> {
    let url = from_backup.ok_or_else(|| {
        Rejection::invalid(format!(
            "volume \"{name}\" cannot be a standby without a backup volume to follow: \
             create it with --from-backup"
        ))
    })?;
    Ok(Standby {
        backup_volume: backup_volume_of(url),
        ..Default::default()
    })
}

fn standby<'a>(state: &'a State, name: &str) -> Result<(&'a Volume, &'a Standby), Rejection> {
    let volume = live_volume(state, name)?;
    match (volume.standby, volume.dr.as_ref()) {
        (true, Some(dr)) => Ok((volume, dr)),
        _ => Err(Rejection::precondition(format!(
            "volume \"{name}\" is not a disaster-recovery standby"
        ))),
    }
}

/// A report about a standby that is no longer one (activated, deleted): `None`, ignored.
fn reported<'a>(state: &'a State, name: &str) -> Option<(&'a Volume, &'a Standby)> {
    standby(state, name).ok()
}

pub(crate) fn activate(state: &State, name: &str, at: Timestamp) -> Result<Vec<Event>, Rejection> {
    let (volume, dr) = standby(state, name)?;
    if let Some(restore) = volume.restore.as_ref()
        && restore.state == RestoreState::Error
    {
        return Err(Rejection::precondition(format!(
            "volume \"{name}\" cannot be activated: its first restore failed ({}); delete it and \
             create the standby again",
            restore.error.as_deref().unwrap_or("unknown reason")
        )));
    }
    if dr.activating {
        return Ok(vec![]);
    }
    let mut events = vec![Event::VolumeActivating {
        name: name.to_string(),
    }];
    // No engine to finish the work: a standby whose data is exactly its last restored
    // backup is activated at once; one cut short mid-restore waits for the leader to
    // attach it again and its agent to finish that restore.
    let complete = volume
        .restore
        .as_ref()
        .is_none_or(|r| r.state == RestoreState::Completed);
    if volume.state == VolumeState::Detached && complete && dr.restoring.is_none() {
        events.push(Event::VolumeActivated {
            name: name.to_string(),
            at,
            note: None,
        });
    }
    Ok(events)
}

pub(crate) fn restoring(
    state: &State,
    name: &str,
    backup: &str,
    created: Timestamp,
) -> Result<Vec<Event>, Rejection> {
    let Some((_, dr)) = reported(state, name) else {
        return Ok(vec![]);
    };
    if dr.restoring.as_deref() == Some(backup) && dr.error.is_none() {
        return Ok(vec![]);
    }
    Ok(vec![Event::StandbyRestoring {
        name: name.to_string(),
        backup: backup.to_string(),
        created,
    }])
}

/// A completed restore; the first one also completes the volume's restore, without the
/// detach a normal restored volume gets.
pub(crate) fn restored(
    state: &State,
    name: &str,
    backup: &str,
    created: Timestamp,
    at: Timestamp,
) -> Result<Vec<Event>, Rejection> {
    let Some((volume, dr)) = reported(state, name) else {
        return Ok(vec![]);
    };
    let mut events = vec![];
    if volume.restoring() {
        events.push(Event::RestoreCompleted {
            name: name.to_string(),
        });
    } else if dr.last_restored.as_deref() == Some(backup) && dr.restoring.is_none() {
        return Ok(vec![]);
    }
    events.push(Event::StandbyRestored {
        name: name.to_string(),
        backup: backup.to_string(),
        created,
        at,
    });
    Ok(events)
}

pub(crate) fn failed(state: &State, name: &str, reason: &str) -> Result<Vec<Event>, Rejection> {
    let Some((volume, dr)) = reported(state, name) else {
        return Ok(vec![]);
    };
    // The first restore fails the volume as any restore does (it holds nothing usable).
    if volume.restoring() {
        let mut events = vec![Event::RestoreFailed {
            name: name.to_string(),
            reason: reason.to_string(),
        }];
        if matches!(volume.state, VolumeState::Attaching | VolumeState::Attached) {
            events.push(Event::VolumeDetaching {
                name: name.to_string(),
            });
        }
        return Ok(events);
    }
    if dr.error.as_deref() == Some(reason) {
        return Ok(vec![]);
    }
    Ok(vec![Event::StandbyFailed {
        name: name.to_string(),
        reason: reason.to_string(),
    }])
}

pub(crate) fn activated(
    state: &State,
    name: &str,
    note: Option<&str>,
    at: Timestamp,
) -> Result<Vec<Event>, Rejection> {
    let Some((volume, dr)) = reported(state, name) else {
        return Ok(vec![]);
    };
    if !dr.activating || volume.restoring() {
        return Ok(vec![]);
    }
    if note.is_none() && dr.restoring.is_some() {
        return Err(Rejection::precondition(format!(
            "volume \"{name}\" is still restoring backup \"{}\"; it is activated once that completed",
            dr.restoring.as_deref().unwrap_or_default()
        )));
    }
    let mut events = vec![Event::VolumeActivated {
        name: name.to_string(),
        at,
        note: note.map(str::to_string),
    }];
    if matches!(volume.state, VolumeState::Attaching | VolumeState::Attached) {
        events.push(Event::VolumeDetaching {
            name: name.to_string(),
        });
    }
    Ok(events)
}

/// Attaches a detached standby again for its following engine, when its first restore
/// completed; nothing to do otherwise (attached already, or failed).
pub(crate) fn attach(state: &State, name: &str) -> Result<Vec<Event>, Rejection> {
    let (volume, _) = standby(state, name)?;
    let complete = volume
        .restore
        .as_ref()
        .is_some_and(|r| r.state == RestoreState::Completed);
    if volume.state != VolumeState::Detached || !complete {
        return Ok(vec![]);
    }
    let node = state
        .replicas_of(volume)
        .filter(|r| r.mode == ReplicaMode::ReadWrite)
        .map(|r| r.node.as_str())
        .find(|n| state.nodes.get(*n).is_some_and(|n| n.ready))
        .ok_or_else(|| {
            Rejection::precondition(format!(
                "standby \"{name}\" has no read-write replica on a ready node to follow its backups on"
            ))
        })?;
    Ok(vec![Event::VolumeAttaching {
        name: name.to_string(),
        node: node.to_string(),
        epoch: Epoch(volume.epoch.0 + 1),
        frontend: Frontend::None,
        internal: false,
    }])
}

#[cfg(test)]
mod tests {
    use crate::RejectionKind::*;
    use crate::testkit::{Cluster, GIB};
    use crate::{Request, RestoreState, Timestamp, VolumeSpec, VolumeState};

    const URL: &str = "s3://bucket@us-east-1/store?backup=b1&volume=db";

    fn standby() -> Cluster {
        let mut c = Cluster::new();
        for n in ["n1", "n2", "n3"] {
            c.node(n, "", 100);
        }
        c.set("backupTarget", "s3://bucket@us-east-1/store");
        c.ok(Request::CreateVolume(VolumeSpec {
            name: "dr".into(),
            size: GIB,
            number_of_replicas: Some(2),
            from_backup: Some(URL.into()),
            standby: true,
            ..Default::default()
        }));
        let epoch = c.state.volumes["dr"].epoch;
        c.ok(Request::ReportEngineStarted {
            name: "dr".into(),
            epoch,
            endpoint: String::new(),
            frontend: Default::default(),
            device: None,
        });
        c
    }

    fn restored(c: &mut Cluster, backup: &str, created: u64) {
        c.ok(Request::ReportStandbyRestored {
            volume: "dr".into(),
            backup: backup.into(),
            created: Timestamp(created),
        });
    }

    #[test]
    fn a_standby_stays_attached_after_its_first_restore_and_follows_newer_backups() {
        let mut c = standby();
        let dr = c.state.volumes["dr"].dr.clone().expect("standby record");
        assert_eq!(dr.backup_volume, "s3://bucket@us-east-1/store?volume=db");
        restored(&mut c, "b1", 1_000);
        let v = &c.state.volumes["dr"];
        assert_eq!(v.state, VolumeState::Attached, "its engine goes on");
        assert_eq!(v.restore.as_ref().unwrap().state, RestoreState::Completed);
        assert!(v.standby);
        let dr = v.dr.as_ref().unwrap();
        assert_eq!(dr.last_restored.as_deref(), Some("b1"));
        assert_eq!(dr.last_seen.as_deref(), Some("b1"));

        c.ok(Request::ReportStandbyRestoring {
            volume: "dr".into(),
            backup: "b2".into(),
            created: Timestamp(2_000),
        });
        let dr = c.state.volumes["dr"].dr.clone().unwrap();
        assert_eq!(
            (dr.last_seen.as_deref(), dr.last_restored.as_deref()),
            (Some("b2"), Some("b1")),
            "seen, not restored yet"
        );
        c.ok(Request::ReportStandbyFailed {
            volume: "dr".into(),
            reason: "target unreachable".into(),
        });
        assert!(
            c.ok(Request::ReportStandbyFailed {
                volume: "dr".into(),
                reason: "target unreachable".into(),
            })
            .is_empty(),
            "the same failure twice is one event"
        );
        assert_eq!(
            c.state.volumes["dr"].dr.as_ref().unwrap().error.as_deref(),
            Some("target unreachable")
        );
        restored(&mut c, "b2", 2_000);
        let dr = c.state.volumes["dr"].dr.clone().unwrap();
        assert_eq!(dr.last_restored.as_deref(), Some("b2"));
        assert_eq!((dr.restoring, dr.error), (None, None));
    }

    #[test]
    fn a_backup_deleted_mid_restore_is_replaced_over_data_of_no_known_backup() {
        let mut c = standby();
        restored(&mut c, "b1", 1_000);
        let restoring = |c: &mut Cluster, backup: &str, created: u64| {
            c.ok(Request::ReportStandbyRestoring {
                volume: "dr".into(),
                backup: backup.into(),
                created: Timestamp(created),
            })
        };
        restoring(&mut c, "b2", 2_000);
        // Retried after a failure: the same backup over the same base.
        c.ok(Request::ReportStandbyFailed {
            volume: "dr".into(),
            reason: "target unreachable".into(),
        });
        restoring(&mut c, "b2", 2_000);
        let dr = c.state.volumes["dr"].dr.clone().unwrap();
        assert_eq!(dr.last_restored.as_deref(), Some("b1"), "{dr:?}");
        // b2 deleted from the target mid-restore: b1 (the newest left) in its place, over
        // a mix of b1 and b2.
        restoring(&mut c, "b1", 1_000);
        let dr = c.state.volumes["dr"].dr.clone().unwrap();
        assert_eq!(
            (dr.restoring.as_deref(), dr.last_restored.as_deref()),
            (Some("b1"), None),
            "the data is no backup now"
        );
        restored(&mut c, "b1", 1_000);
        let dr = c.state.volumes["dr"].dr.clone().unwrap();
        assert_eq!(
            (dr.last_restored.as_deref(), dr.restoring),
            (Some("b1"), None)
        );
    }

    #[test]
    fn a_standby_refuses_what_would_write_to_it_with_the_reason() {
        let mut c = standby();
        restored(&mut c, "b1", 1_000);
        let attach = Request::AttachVolume {
            name: "dr".into(),
            node: "n1".into(),
            frontend: Default::default(),
        };
        let snapshot = Request::CreateSnapshot {
            volume: "dr".into(),
            name: "s1".into(),
            labels: Default::default(),
        };
        let backup = Request::CreateBackup {
            name: "x".into(),
            volume: "dr".into(),
            snapshot: None,
            labels: Default::default(),
        };
        let detach = Request::DetachVolume { name: "dr".into() };
        let expand = Request::ExpandVolume {
            name: "dr".into(),
            size: 2 * GIB,
        };
        for request in [attach, snapshot, backup, detach, expand] {
            let why = c.rejected(request.clone(), PreconditionFailed);
            assert!(
                why.contains("disaster-recovery standby"),
                "{request:?}: {why}"
            );
        }
        // Deleting it stops its engine with it.
        c.ok(Request::DeleteVolume { name: "dr".into() });
        assert_eq!(c.state.volumes["dr"].state, VolumeState::Deleting);
    }

    #[test]
    fn activation_waits_for_the_agent_then_detaches_a_normal_volume() {
        let mut c = standby();
        restored(&mut c, "b1", 1_000);
        let activate = Request::ActivateVolume { name: "dr".into() };
        c.ok(activate.clone());
        assert!(c.state.volumes["dr"].dr.as_ref().unwrap().activating);
        assert!(c.ok(activate.clone()).is_empty(), "asked twice is once");
        c.ok(Request::ReportStandbyRestoring {
            volume: "dr".into(),
            backup: "b2".into(),
            created: Timestamp(2_000),
        });
        let early = Request::ReportStandbyActivated {
            volume: "dr".into(),
            note: None,
        };
        assert!(
            c.rejected(early.clone(), PreconditionFailed)
                .contains("still restoring")
        );
        restored(&mut c, "b2", 2_000);
        c.ok(early);
        let v = &c.state.volumes["dr"];
        assert!(!v.standby);
        assert_eq!(v.state, VolumeState::Detaching);
        assert_eq!(v.dr.as_ref().unwrap().last_restored.as_deref(), Some("b2"));
        let epoch = v.epoch;
        c.ok(Request::ReportEngineStopped {
            name: "dr".into(),
            epoch,
        });
        c.attach("dr", "n2");
        assert_eq!(c.state.volumes["dr"].state, VolumeState::Attached);
        assert!(
            c.rejected(activate, PreconditionFailed)
                .contains("not a disaster-recovery standby")
        );
        // A late report of the agent changes nothing.
        assert!(
            c.ok(Request::ReportStandbyRestored {
                volume: "dr".into(),
                backup: "b3".into(),
                created: Timestamp(3_000),
            })
            .is_empty()
        );
    }

    #[test]
    fn activation_during_the_first_restore_waits_for_it() {
        let mut c = standby();
        c.ok(Request::ActivateVolume { name: "dr".into() });
        assert!(
            c.ok(Request::ReportStandbyActivated {
                volume: "dr".into(),
                note: None
            })
            .is_empty(),
            "not before the first restore completed"
        );
        assert!(c.state.volumes["dr"].standby);
        restored(&mut c, "b1", 1_000);
        c.ok(Request::ReportStandbyActivated {
            volume: "dr".into(),
            note: None,
        });
        assert!(!c.state.volumes["dr"].standby);
    }

    #[test]
    fn a_standby_that_lost_its_node_is_attached_again_or_activated_at_once() {
        let mut c = standby();
        restored(&mut c, "b1", 1_000);
        let node = c.state.volumes["dr"].attachment.clone().unwrap().node;
        let epoch = c.state.volumes["dr"].epoch;
        c.ok(Request::ReportEngineStopped {
            name: "dr".into(),
            epoch,
        });
        assert_eq!(c.state.volumes["dr"].state, VolumeState::Detached);
        let attach = Request::AttachStandby { name: "dr".into() };
        c.ok(attach.clone());
        let v = &c.state.volumes["dr"];
        assert_eq!(v.state, VolumeState::Attaching);
        assert!(
            c.nodes_of("dr")
                .contains(&v.attachment.as_ref().unwrap().node)
        );
        assert!(c.ok(attach).is_empty(), "attaching already");
        let _ = node;

        // Detached with its data exactly b1: activated at once.
        let epoch = c.state.volumes["dr"].epoch;
        c.ok(Request::ReportEngineStopped {
            name: "dr".into(),
            epoch,
        });
        c.ok(Request::ActivateVolume { name: "dr".into() });
        let v = &c.state.volumes["dr"];
        assert!(!v.standby);
        assert_eq!(v.state, VolumeState::Detached);
    }

    #[test]
    fn a_standby_needs_a_backup_to_follow() {
        let mut c = Cluster::new();
        c.node("n1", "", 100);
        let why = c.rejected(
            Request::CreateVolume(VolumeSpec {
                name: "dr".into(),
                size: GIB,
                standby: true,
                ..Default::default()
            }),
            InvalidArgument,
        );
        assert!(why.contains("--from-backup"), "{why}");
        assert_eq!(
            super::backup_volume_of("nfs://h:/e?mountport=9&backup=b&volume=v"),
            "nfs://h:/e?mountport=9&volume=v"
        );
    }
}
