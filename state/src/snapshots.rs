//! Decisions about snapshots: the log records what is asked (pending create, deleting,
//! revert) and the node agent of the attached volume carries it out on the engine and
//! reports back. Nothing here talks to a replica.

use std::collections::BTreeMap;

use crate::auto_attach;
use crate::decide::live_volume;
use crate::name::check_label;
use crate::{Event, Rejection, Snapshot, SnapshotState, State, Timestamp, Volume, VolumeState};

fn snapshot<'a>(volume: &'a Volume, name: &str) -> Result<&'a Snapshot, Rejection> {
    volume
        .snapshots
        .get(name)
        .ok_or_else(|| Rejection::not_found("snapshot", &format!("{}/{name}", volume.name)))
}

fn attached<'a>(state: &'a State, name: &str, doing: &str) -> Result<&'a Volume, Rejection> {
    let volume = live_volume(state, name)?;
    if volume.state != VolumeState::Attached || auto_attach::internal(volume) {
        return Err(Rejection::precondition(format!(
            "volume \"{name}\" is {}; attach it to {doing}",
            volume_state_word(volume)
        )));
    }
    Ok(volume)
}

fn volume_state_word(volume: &Volume) -> &'static str {
    if auto_attach::internal(volume) {
        return "attached internally (for snapshot or backup work, no frontend)";
    }
    match volume.state {
        VolumeState::Creating => "being created",
        VolumeState::Detached => "detached",
        VolumeState::Attaching => "still attaching",
        VolumeState::Attached => "attached",
        VolumeState::Detaching => "detaching",
        VolumeState::Deleting => "being deleted",
    }
}

pub(crate) fn create(
    state: &State,
    volume: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    at: Timestamp,
) -> Result<Vec<Event>, Rejection> {
    check_label("snapshot", name)?;
    let current = live_volume(state, volume)?;
    if let Some(why) = current.standby_blocks("take a snapshot") {
        return Err(Rejection::precondition(why));
    }
    if current.snapshots.contains_key(name) {
        return Err(Rejection::already_exists(
            "snapshot",
            &format!("{volume}/{name}"),
        ));
    }
    let max = state.settings.snapshot_max_count;
    if current.snapshots.len() as u64 >= max {
        return Err(Rejection::precondition(format!(
            "volume \"{volume}\" already has {max} snapshots (snapshotMaxCount); delete some first"
        )));
    }
    // A detached volume is attached internally for its engine to take the snapshot.
    let attach = auto_attach::attach_for(state, volume, "take a snapshot")?;
    let mut events = vec![Event::SnapshotCreated {
        snapshot: Snapshot {
            name: name.to_string(),
            volume: volume.to_string(),
            created_at: at,
            size: current.size,
            state: SnapshotState::Pending,
            labels: labels.clone(),
        },
    }];
    events.extend(attach);
    Ok(events)
}

pub(crate) fn delete(state: &State, volume: &str, name: &str) -> Result<Vec<Event>, Rejection> {
    let current = live_volume(state, volume)?;
    let (volume, name) = (volume.to_string(), name.to_string());
    match snapshot(current, &name)?.state {
        SnapshotState::Deleting => Ok(vec![]),
        SnapshotState::Pending => Err(Rejection::conflict(format!(
            "snapshot \"{volume}/{name}\" is still being taken; delete it once it is ready"
        ))),
        SnapshotState::Ready if current.revert_to.as_deref() == Some(name.as_str()) => {
            Err(Rejection::conflict(format!(
                "volume \"{volume}\" is being reverted to snapshot \"{name}\""
            )))
        }
        SnapshotState::Ready => {
            crate::copy::check_snapshot_unused(state, &volume, &name, "delete it")?;
            // A detached volume is attached internally for its engine to merge the
            // snapshot away. When it cannot be now (detaching, no ready replica node), the
            // delete is recorded and the next engine of the volume merges it.
            let attach = auto_attach::attach_for(state, &volume, "delete a snapshot")
                .ok()
                .flatten();
            let mut events = vec![Event::SnapshotDeleting { volume, name }];
            events.extend(attach);
            Ok(events)
        }
    }
}

pub(crate) fn taken(state: &State, volume: &str, name: &str) -> Result<Vec<Event>, Rejection> {
    let current = state.volume(volume)?;
    match snapshot(current, name)?.state {
        SnapshotState::Pending => Ok(vec![Event::SnapshotTaken {
            volume: volume.to_string(),
            name: name.to_string(),
        }]),
        _ => Ok(vec![]),
    }
}

pub(crate) fn failed(
    state: &State,
    volume: &str,
    name: &str,
    reason: &str,
) -> Result<Vec<Event>, Rejection> {
    let current = state.volume(volume)?;
    match snapshot(current, name)?.state {
        SnapshotState::Pending => Ok(vec![Event::SnapshotFailed {
            volume: volume.to_string(),
            name: name.to_string(),
            reason: reason.to_string(),
        }]),
        _ => Ok(vec![]),
    }
}

pub(crate) fn removed(state: &State, volume: &str, name: &str) -> Result<Vec<Event>, Rejection> {
    let current = state.volume(volume)?;
    match current.snapshots.get(name).map(|s| s.state) {
        Some(SnapshotState::Deleting) => Ok(vec![Event::SnapshotDeleted {
            volume: volume.to_string(),
            name: name.to_string(),
        }]),
        Some(_) => Err(Rejection::conflict(format!(
            "snapshot \"{volume}/{name}\" is not being deleted"
        ))),
        None => Ok(vec![]),
    }
}

pub(crate) fn revert(state: &State, volume: &str, name: &str) -> Result<Vec<Event>, Rejection> {
    if let Some(why) = live_volume(state, volume)?.standby_blocks("be reverted") {
        return Err(Rejection::precondition(why));
    }
    let current = attached(state, volume, "revert it")?;
    let target = snapshot(current, name)?;
    if target.state != SnapshotState::Ready {
        return Err(Rejection::conflict(format!(
            "snapshot \"{volume}/{name}\" is not ready (it is {:?})",
            target.state
        )));
    }
    // The layers form one chain: snapshots taken after the target go with the revert.
    for newer in current
        .snapshots
        .values()
        .filter(|s| s.created_at > target.created_at)
    {
        crate::copy::check_snapshot_unused(state, volume, &newer.name, "revert the volume")?;
    }
    match current.revert_to.as_deref() {
        Some(pending) if pending == name => Ok(vec![]),
        Some(pending) => Err(Rejection::conflict(format!(
            "volume \"{volume}\" is already being reverted to snapshot \"{pending}\""
        ))),
        None => Ok(vec![Event::RevertRequested {
            volume: volume.to_string(),
            name: name.to_string(),
        }]),
    }
}

pub(crate) fn reverted(state: &State, volume: &str, name: &str) -> Result<Vec<Event>, Rejection> {
    let current = state.volume(volume)?;
    if current.revert_to.as_deref() != Some(name) {
        return Ok(vec![]);
    }
    let target = snapshot(current, name)?;
    // The layers form one chain: everything taken after the target is gone with the head.
    let dropped = current
        .snapshots
        .values()
        .filter(|s| s.created_at > target.created_at)
        .map(|s| s.name.clone())
        .collect();
    Ok(vec![Event::SnapshotReverted {
        volume: volume.to_string(),
        name: name.to_string(),
        dropped,
    }])
}

pub(crate) fn revert_failed(
    state: &State,
    volume: &str,
    name: &str,
    reason: &str,
) -> Result<Vec<Event>, Rejection> {
    let current = state.volume(volume)?;
    if current.revert_to.as_deref() != Some(name) {
        return Ok(vec![]);
    }
    Ok(vec![Event::RevertFailed {
        volume: volume.to_string(),
        name: name.to_string(),
        reason: reason.to_string(),
    }])
}

#[cfg(test)]
mod tests {
    use crate::RejectionKind::*;
    use crate::testkit::Cluster;
    use crate::{Event, Frontend, Request, SnapshotState, VolumeState};

    fn take(c: &mut Cluster, name: &str) {
        c.ok(Request::CreateSnapshot {
            labels: Default::default(),
            volume: "db".into(),
            name: name.into(),
        });
        c.ok(Request::ReportSnapshotTaken {
            volume: "db".into(),
            name: name.into(),
        });
    }

    fn revert(name: &str) -> Request {
        Request::RevertSnapshot {
            volume: "db".into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_snapshot_is_pending_until_the_engine_took_it() {
        let mut c = Cluster::with_attached_db();
        c.ok(Request::CreateSnapshot {
            labels: Default::default(),
            volume: "db".into(),
            name: "s1".into(),
        });
        let state = |c: &Cluster| c.state.volumes["db"].snapshots.get("s1").map(|s| s.state);
        assert_eq!(state(&c), Some(SnapshotState::Pending));
        // Reports are idempotent: the agent may send them twice.
        for _ in 0..2 {
            c.ok(Request::ReportSnapshotTaken {
                volume: "db".into(),
                name: "s1".into(),
            });
        }
        assert_eq!(state(&c), Some(SnapshotState::Ready));

        c.ok(Request::CreateSnapshot {
            labels: Default::default(),
            volume: "db".into(),
            name: "s2".into(),
        });
        let events = c.ok(Request::ReportSnapshotFailed {
            volume: "db".into(),
            name: "s2".into(),
            reason: "replica r2 refused".into(),
        });
        assert!(
            matches!(&events[..], [Event::SnapshotFailed { reason, .. }] if reason == "replica r2 refused")
        );
        assert!(!c.state.volumes["db"].snapshots.contains_key("s2"));

        // A pending snapshot is dropped when the volume detaches before the engine took it.
        c.ok(Request::CreateSnapshot {
            labels: Default::default(),
            volume: "db".into(),
            name: "s3".into(),
        });
        c.ok(Request::DetachVolume { name: "db".into() });
        let epoch = c.state.volumes["db"].epoch;
        c.ok(Request::ReportEngineStopped {
            name: "db".into(),
            epoch,
        });
        let names: Vec<&String> = c.state.volumes["db"].snapshots.keys().collect();
        assert_eq!(names, ["s1"]);
    }

    #[test]
    fn revert_waits_for_the_engine_and_drops_newer_snapshots() {
        let mut c = Cluster::with_attached_db();
        take(&mut c, "s1");
        take(&mut c, "s2");
        take(&mut c, "s3");
        assert_eq!(
            c.rejected(revert("nope"), NotFound),
            "snapshot \"db/nope\" not found"
        );
        c.ok(revert("s2"));
        assert_eq!(c.state.volumes["db"].revert_to.as_deref(), Some("s2"));
        assert_eq!(
            c.rejected(revert("s1"), Conflict),
            "volume \"db\" is already being reverted to snapshot \"s2\""
        );
        assert_eq!(
            c.rejected(
                Request::DeleteSnapshot {
                    volume: "db".into(),
                    name: "s2".into()
                },
                Conflict
            ),
            "volume \"db\" is being reverted to snapshot \"s2\""
        );
        c.ok(Request::ReportRevertFailed {
            volume: "db".into(),
            name: "s2".into(),
            reason: "an NBD client is connected".into(),
        });
        assert_eq!(c.state.volumes["db"].revert_to, None);
        assert_eq!(c.state.volumes["db"].snapshots.len(), 3);

        c.ok(revert("s2"));
        let events = c.ok(Request::ReportRevertDone {
            volume: "db".into(),
            name: "s2".into(),
        });
        assert!(
            matches!(&events[..], [Event::SnapshotReverted { dropped, .. }] if dropped == &["s3"]),
            "{events:?}"
        );
        let names: Vec<&String> = c.state.volumes["db"].snapshots.keys().collect();
        assert_eq!(names, ["s1", "s2"]);
        assert_eq!(c.state.volumes["db"].revert_to, None);
        // A late duplicate report changes nothing.
        assert!(
            c.ok(Request::ReportRevertDone {
                volume: "db".into(),
                name: "s2".into(),
            })
            .is_empty()
        );
    }

    #[test]
    fn snapshots_and_reverts_need_an_attached_volume() {
        let mut c = Cluster::with_attached_db();
        take(&mut c, "s1");
        c.ok(Request::DetachVolume { name: "db".into() });
        assert_eq!(
            c.rejected(revert("s1"), PreconditionFailed),
            "volume \"db\" is detaching; attach it to revert it"
        );
        // Deleting is recorded while detached; the next engine merges it.
        c.ok(Request::DeleteSnapshot {
            volume: "db".into(),
            name: "s1".into(),
        });
        assert_eq!(
            c.state.volumes["db"].snapshots["s1"].state,
            SnapshotState::Deleting
        );
    }
    fn detached_db() -> Cluster {
        let mut c = Cluster::with_attached_db();
        c.ok(Request::DetachVolume { name: "db".into() });
        let epoch = c.state.volumes["db"].epoch;
        c.ok(Request::ReportEngineStopped {
            name: "db".into(),
            epoch,
        });
        assert_eq!(c.state.volumes["db"].state, VolumeState::Detached);
        c
    }

    fn create(name: &str) -> Request {
        Request::CreateSnapshot {
            labels: Default::default(),
            volume: "db".into(),
            name: name.into(),
        }
    }

    fn engine_started(c: &mut Cluster) {
        let epoch = c.state.volumes["db"].epoch;
        c.ok(Request::ReportEngineStarted {
            name: "db".into(),
            epoch,
            endpoint: String::new(),
            frontend: Default::default(),
            device: None,
        });
    }

    fn engine_stopped(c: &mut Cluster) {
        let epoch = c.state.volumes["db"].epoch;
        c.ok(Request::ReportEngineStopped {
            name: "db".into(),
            epoch,
        });
    }

    #[test]
    fn a_snapshot_of_a_detached_volume_attaches_it_internally_until_taken() {
        // Detached volume, snapshot asked: the log attaches it without a frontend on a
        // node of a replica, the engine takes it, the log detaches it again.
        let mut c = detached_db();
        let epoch = c.state.volumes["db"].epoch;
        c.ok(create("s1"));
        let v = &c.state.volumes["db"];
        assert_eq!(v.state, VolumeState::Attaching);
        assert!(v.epoch > epoch, "an internal attach fences like any other");
        let a = v.attachment.clone().expect("attached internally");
        assert!(a.internal);
        assert_eq!(a.frontend, Frontend::None);
        assert!(c.nodes_of("db").contains(&a.node));
        engine_started(&mut c);
        assert_eq!(c.state.volumes["db"].state, VolumeState::Attached);
        // A second snapshot asked meanwhile joins the same attachment.
        c.ok(create("s2"));
        assert_eq!(
            c.state.volumes["db"].attachment.as_ref().unwrap().epoch,
            a.epoch
        );

        let events = c.ok(Request::ReportSnapshotTaken {
            volume: "db".into(),
            name: "s1".into(),
        });
        assert!(
            !events.contains(&Event::VolumeDetaching { name: "db".into() }),
            "s2 is left"
        );
        let events = c.ok(Request::ReportSnapshotTaken {
            volume: "db".into(),
            name: "s2".into(),
        });
        assert_eq!(
            events.last(),
            Some(&Event::VolumeDetaching { name: "db".into() })
        );
        assert_eq!(c.state.volumes["db"].state, VolumeState::Detaching);
        engine_stopped(&mut c);
        let v = &c.state.volumes["db"];
        assert_eq!(v.state, VolumeState::Detached);
        assert_eq!(v.snapshots["s1"].state, SnapshotState::Ready);
        assert_eq!(v.snapshots["s2"].state, SnapshotState::Ready);

        // A delete attaches it the same way, and a failed snapshot detaches it too.
        c.ok(Request::DeleteSnapshot {
            volume: "db".into(),
            name: "s1".into(),
        });
        assert!(c.state.volumes["db"].attachment.as_ref().unwrap().internal);
        engine_started(&mut c);
        c.ok(Request::ReportSnapshotRemoved {
            volume: "db".into(),
            name: "s1".into(),
        });
        assert_eq!(c.state.volumes["db"].state, VolumeState::Detaching);
        engine_stopped(&mut c);
        c.ok(create("s3"));
        engine_started(&mut c);
        c.ok(Request::ReportSnapshotFailed {
            volume: "db".into(),
            name: "s3".into(),
            reason: "replica refused".into(),
        });
        assert_eq!(c.state.volumes["db"].state, VolumeState::Detaching);
        engine_stopped(&mut c);
        let names: Vec<&String> = c.state.volumes["db"].snapshots.keys().collect();
        assert_eq!(names, ["s2"]);

        // A user's attachment is never detached by snapshot work.
        c.attach("db", "n2");
        take(&mut c, "s4");
        assert_eq!(c.state.volumes["db"].state, VolumeState::Attached);
        assert!(!c.state.volumes["db"].attachment.as_ref().unwrap().internal);
    }

    #[test]
    fn users_cannot_attach_detach_or_delete_an_internally_attached_volume() {
        let mut c = detached_db();
        c.ok(create("s1"));
        let node = c.state.volumes["db"]
            .attachment
            .as_ref()
            .unwrap()
            .node
            .clone();
        for n in [node.as_str(), "n3"] {
            let why = c.rejected(
                Request::AttachVolume {
                    name: "db".into(),
                    node: n.into(),
                    frontend: Frontend::Auto,
                },
                Conflict,
            );
            assert!(
                why.contains("attached internally")
                    && why.contains("taking snapshot \"s1\"")
                    && why.contains("try again"),
                "{why}"
            );
        }
        let why = c.rejected(Request::DetachVolume { name: "db".into() }, Conflict);
        assert!(why.contains("detaches by itself"), "{why}");
        let why = c.rejected(
            Request::DeleteVolume { name: "db".into() },
            PreconditionFailed,
        );
        assert!(why.contains("attached internally"), "{why}");
        engine_started(&mut c);
        assert!(
            c.rejected(revert("s1"), PreconditionFailed)
                .contains("attached internally")
        );
        c.ok(Request::ReportSnapshotTaken {
            volume: "db".into(),
            name: "s1".into(),
        });
        // Detaching: a user attach waits for the engine to stop.
        let why = c.rejected(
            Request::AttachVolume {
                name: "db".into(),
                node: "n3".into(),
                frontend: Frontend::Auto,
            },
            Conflict,
        );
        assert!(why.contains("detaches by itself"), "{why}");
        engine_stopped(&mut c);
        c.ok(Request::AttachVolume {
            name: "db".into(),
            node: "n3".into(),
            frontend: Frontend::Auto,
        });
        assert!(!c.state.volumes["db"].attachment.as_ref().unwrap().internal);
    }

    #[test]
    fn a_node_dying_mid_snapshot_leaves_the_volume_detached_and_usable() {
        let mut c = detached_db();
        c.ok(create("s1"));
        let node = c.state.volumes["db"]
            .attachment
            .as_ref()
            .unwrap()
            .node
            .clone();
        engine_started(&mut c);
        // Every node but the attachment's keeps beating; it misses its heartbeats.
        c.clock += 60_000;
        for n in ["n1", "n2", "n3"].into_iter().filter(|n| *n != node) {
            c.ok(Request::Heartbeat { node: n.into() });
        }
        c.ok(Request::MarkDeadNodes { timeout_secs: 30 });
        let v = &c.state.volumes["db"];
        assert_eq!(v.state, VolumeState::Detached);
        assert!(v.attachment.is_none());
        assert!(v.snapshots.is_empty(), "the pending snapshot is dropped");
        // A late report from the dead engine changes nothing.
        let late = c.run(Request::ReportSnapshotTaken {
            volume: "db".into(),
            name: "s1".into(),
        });
        assert!(late.is_err(), "{late:?}");
        assert_eq!(c.state.volumes["db"].state, VolumeState::Detached);
        // Asked again, it attaches on a node that is alive.
        c.ok(create("s1"));
        let again = c.state.volumes["db"].attachment.clone().unwrap();
        assert!(again.internal && again.node != node, "{again:?}");
        engine_started(&mut c);
        c.ok(Request::ReportSnapshotTaken {
            volume: "db".into(),
            name: "s1".into(),
        });
        engine_stopped(&mut c);
        c.attach("db", "n3");
        assert_eq!(c.state.volumes["db"].state, VolumeState::Attached);
    }
}
