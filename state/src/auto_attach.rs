//! Internal attachments: a snapshot taken or deleted, or a backup made, of a detached
//! volume attaches it for the work, on a ready node holding one of its read-write replicas
//! and with no frontend (Longhorn attaches for its snapshot and backup controllers the same
//! way). When the engine has reported the last piece of that work, the log detaches the
//! volume again. Meanwhile users can neither attach nor detach it: the work is short, and
//! a user attach that took the engine over could write into a snapshot asked for before
//! it. A node that goes down takes the attachment with it, like any other (the pending
//! snapshot is dropped), so nothing waits for a dead node.

use crate::decide::live_volume;
use crate::{
    BackupState, Epoch, Event, Frontend, Rejection, ReplicaMode, SnapshotState, State, Volume,
    VolumeState,
};

/// Whether `volume` is attached by the log for its own work.
pub(crate) fn internal(volume: &Volume) -> bool {
    volume.attachment.as_ref().is_some_and(|a| a.internal)
}

/// Why a user cannot attach, detach or delete `volume` now, if it is attached internally:
/// a retryable reason naming the work.
pub(crate) fn busy(state: &State, volume: &Volume) -> Option<String> {
    let attachment = volume.attachment.as_ref().filter(|a| a.internal)?;
    let work = work_of(state, volume, &[]);
    let doing = if work.is_empty() {
        "for snapshot work".to_string()
    } else {
        format!("for {}", work.join(", "))
    };
    Some(format!(
        "volume \"{}\" is attached internally on node \"{}\" {doing}; it detaches by itself \
         once that is done: try again then",
        volume.name, attachment.node
    ))
}

/// The event that attaches `volume` for snapshot or backup work, when it is detached;
/// `None` when its engine (a user's or an internal one) already runs or starts. Refused
/// while it cannot be attached, with the reason.
pub(crate) fn attach_for(
    state: &State,
    name: &str,
    doing: &str,
) -> Result<Option<Event>, Rejection> {
    let volume = live_volume(state, name)?;
    match volume.state {
        VolumeState::Attached => return Ok(None),
        VolumeState::Attaching if internal(volume) => return Ok(None),
        VolumeState::Detached => {}
        VolumeState::Attaching | VolumeState::Detaching => {
            return Err(Rejection::precondition(format!(
                "volume \"{name}\" is {}; try again to {doing} once it is attached or detached",
                if volume.state == VolumeState::Attaching {
                    "still attaching"
                } else {
                    "detaching"
                }
            )));
        }
        VolumeState::Creating | VolumeState::Deleting => {
            return Err(Rejection::precondition(format!(
                "volume \"{name}\" is {}; it cannot {doing}",
                if volume.state == VolumeState::Creating {
                    "being created"
                } else {
                    "being deleted"
                }
            )));
        }
    }
    if let Some(why) = volume.restore_blocks_use() {
        return Err(Rejection::precondition(why));
    }
    if volume.standby {
        return Err(Rejection::precondition(format!(
            "volume \"{name}\" is a disaster-recovery standby; activate it to {doing}"
        )));
    }
    let node = state
        .replicas_of(volume)
        .filter(|r| r.mode == ReplicaMode::ReadWrite)
        .map(|r| r.node.as_str())
        .find(|n| state.nodes.get(*n).is_some_and(|n| n.ready))
        .ok_or_else(|| {
            Rejection::precondition(format!(
                "volume \"{name}\" is detached and none of its read-write replicas is on a \
                 ready node; it cannot be attached to {doing}"
            ))
        })?;
    Ok(Some(Event::VolumeAttaching {
        name: name.to_string(),
        node: node.to_string(),
        epoch: Epoch(volume.epoch.0 + 1),
        frontend: Frontend::None,
        internal: true,
    }))
}

/// `events` (a report about `volume`'s snapshot or backup work), followed by the detach of
/// its internal attachment when they finish the last of that work.
pub(crate) fn then_detach(
    state: &State,
    volume: &str,
    events: Result<Vec<Event>, Rejection>,
) -> Result<Vec<Event>, Rejection> {
    let mut events = events?;
    let Some(current) = state.volumes.get(volume) else {
        return Ok(events);
    };
    let running = matches!(
        current.state,
        VolumeState::Attaching | VolumeState::Attached
    );
    if running
        && internal(current)
        && !events.is_empty()
        && work_of(state, current, &events).is_empty()
    {
        events.push(Event::VolumeDetaching {
            name: volume.to_string(),
        });
    }
    Ok(events)
}

/// The snapshot and backup work left on `volume` once `events` are applied, named for
/// users ("taking snapshot s1", "backup b1").
fn work_of(state: &State, volume: &Volume, events: &[Event]) -> Vec<String> {
    let snapshot_done = |n: &str| {
        events.iter().any(|e| match e {
            Event::SnapshotTaken { volume: v, name }
            | Event::SnapshotFailed {
                volume: v, name, ..
            }
            | Event::SnapshotDeleted { volume: v, name } => v == &volume.name && name == n,
            _ => false,
        })
    };
    let backup_done = |n: &str| {
        events.iter().any(|e| match e {
            Event::BackupCompleted { name, .. } | Event::BackupFailed { name, .. } => name == n,
            _ => false,
        })
    };
    let mut work: Vec<String> = volume
        .snapshots
        .values()
        .filter(|s| !snapshot_done(&s.name))
        .filter_map(|s| match s.state {
            SnapshotState::Pending => Some(format!("taking snapshot \"{}\"", s.name)),
            SnapshotState::Deleting => Some(format!("deleting snapshot \"{}\"", s.name)),
            SnapshotState::Ready => None,
        })
        .collect();
    work.extend(
        state
            .backups
            .values()
            .filter(|b| b.volume == volume.name && b.state == BackupState::InProgress)
            .filter(|b| !backup_done(&b.name))
            .map(|b| format!("backup \"{}\"", b.name)),
    );
    work
}
