//! Decisions about new volumes whose data is copied from a snapshot of another volume: a
//! volume created from a snapshot, or a clone (Longhorn's `dataSource`; Kubernetes'
//! `VolumeContentSource`). They go the way of a restore from a backup (see `restore`):
//! created with their restore in progress and attached at once, with no frontend, for an
//! engine that copies the snapshot's data from the source's replicas; a user cannot attach
//! them until the copy completed, and a failed copy leaves them unusable with the reason.
//!
//! A clone first takes a snapshot of its source, named `clone-<new volume>`, in the same
//! command (a detached source is attached internally for it); the copy starts once that
//! snapshot is taken, and the snapshot stays on the source afterwards. While a copy runs,
//! what it reads is protected: its snapshot cannot be deleted, its source cannot be
//! reverted past it, and the source volume cannot be deleted.

use crate::decide::live_volume;
use crate::name::check_label;
use crate::scheduler::human_bytes;
use crate::{
    DataSource, Event, Rejection, Restore, RestoreState, SnapshotSource, SnapshotState, State,
    Timestamp, Volume, VolumeState, snapshots,
};

/// The restore of a new volume of `size` bytes named `name` copied from `source`, and the
/// events a clone needs first (its snapshot of the source, an internal attachment).
/// Refused when the source or its snapshot is missing or not usable, or when `size` cannot
/// hold it.
pub(crate) fn start(
    state: &State,
    name: &str,
    size: u64,
    source: &DataSource,
    at: Timestamp,
) -> Result<(Restore, Vec<Event>), Rejection> {
    let volume = live_volume(state, &source.volume)?;
    if let Some(why) = volume.restore_blocks_use() {
        return Err(Rejection::precondition(format!(
            "volume \"{}\" cannot be copied yet: {why}",
            volume.name
        )));
    }
    let fits = |snapshot: &str, held: u64| {
        if size >= held {
            return Ok(());
        }
        Err(Rejection::invalid(format!(
            "volume \"{name}\" of {} cannot hold snapshot \"{}/{snapshot}\" of {}; ask for at least {held} bytes",
            human_bytes(size),
            volume.name,
            human_bytes(held),
        )))
    };
    let (snapshot, events) = match &source.snapshot {
        Some(snapshot) => {
            check_label("snapshot", snapshot)?;
            let found = volume.snapshots.get(snapshot).ok_or_else(|| {
                Rejection::not_found("snapshot", &format!("{}/{snapshot}", volume.name))
            })?;
            match found.state {
                SnapshotState::Ready => {}
                SnapshotState::Pending => {
                    return Err(Rejection::conflict(format!(
                        "snapshot \"{}/{snapshot}\" is still being taken; copy it once it is ready",
                        volume.name
                    )));
                }
                SnapshotState::Deleting => {
                    return Err(Rejection::precondition(format!(
                        "snapshot \"{}/{snapshot}\" is being deleted",
                        volume.name
                    )));
                }
            }
            fits(snapshot, found.size)?;
            (snapshot.clone(), vec![])
        }
        None => {
            let snapshot = clone_snapshot_name(volume, name);
            fits(&snapshot, volume.size)?;
            let system = std::collections::BTreeMap::from([(
                crate::SYSTEM_SNAPSHOT_LABEL.to_string(),
                "clone".to_string(),
            )]);
            let events = snapshots::create(state, &volume.name, &snapshot, &system, at)?;
            (snapshot, events)
        }
    };
    let restore = Restore {
        url: String::new(),
        snapshot: Some(SnapshotSource {
            volume: volume.name.clone(),
            snapshot,
        }),
        state: RestoreState::InProgress,
        progress: 0,
        error: None,
    };
    Ok((restore, events))
}

/// The name of the snapshot a clone named `clone` takes of `source`: `clone-<clone>`, cut
/// to a DNS label, with `-2` ... `-99` when a snapshot of that name exists already.
fn clone_snapshot_name(source: &Volume, clone: &str) -> String {
    let base = format!("clone-{clone}");
    let cut = |max: usize| {
        let mut s = base.clone();
        s.truncate(max);
        s.trim_end_matches('-').to_string()
    };
    let first = cut(63);
    if !source.snapshots.contains_key(&first) {
        return first;
    }
    (2..100)
        .map(|i| format!("{}-{i}", cut(60)))
        .find(|n| !source.snapshots.contains_key(n))
        .unwrap_or(first)
}

/// A volume (not being deleted) whose copy from `volume`'s snapshot `snapshot` (any when
/// `None`) is in progress.
pub(crate) fn copying_from<'a>(
    state: &'a State,
    volume: &str,
    snapshot: Option<&str>,
) -> Option<&'a Volume> {
    state.volumes.values().find(|v| {
        v.state != VolumeState::Deleting
            && v.restore.as_ref().is_some_and(|r| {
                r.state == RestoreState::InProgress && r.copies_from(volume, snapshot)
            })
    })
}

/// Refuses to delete or revert away `volume`'s snapshot `snapshot` while a copy reads it.
pub(crate) fn check_snapshot_unused(
    state: &State,
    volume: &str,
    snapshot: &str,
    doing: &str,
) -> Result<(), Rejection> {
    match copying_from(state, volume, Some(snapshot)) {
        Some(copy) => Err(Rejection::precondition(format!(
            "snapshot \"{volume}/{snapshot}\" is being copied into volume \"{}\" ({}%); {doing} \
             once that copy completed, or delete volume \"{}\"",
            copy.name,
            copy.restore.as_ref().map_or(0, |r| r.progress),
            copy.name
        ))),
        None => Ok(()),
    }
}

/// Refuses to delete `volume` while a copy reads one of its snapshots.
pub(crate) fn check_volume_unused(state: &State, volume: &str) -> Result<(), Rejection> {
    let Some(copy) = copying_from(state, volume, None) else {
        return Ok(());
    };
    let snapshot = copy
        .restore
        .as_ref()
        .and_then(|r| r.snapshot.as_ref())
        .map_or("", |s| s.snapshot.as_str());
    Err(Rejection::precondition(format!(
        "volume \"{volume}\" is the source of volume \"{}\", which is being copied from its \
         snapshot \"{snapshot}\"; delete it once that copy completed, or delete volume \"{}\"",
        copy.name, copy.name
    )))
}

#[cfg(test)]
mod tests {
    use crate::RejectionKind::*;
    use crate::testkit::{Cluster, GIB};
    use crate::{DataSource, Request, RestoreState, SnapshotState, VolumeSpec, VolumeState};

    fn cluster() -> Cluster {
        let mut c = Cluster::new();
        for n in ["n1", "n2", "n3"] {
            c.node(n, "", 100);
        }
        c.volume("src", 1, 2);
        c
    }

    fn copy(name: &str, gib: u64, snapshot: Option<&str>) -> Request {
        Request::CreateVolume(VolumeSpec {
            name: name.into(),
            size: gib * GIB,
            number_of_replicas: Some(2),
            data_source: Some(DataSource {
                volume: "src".into(),
                snapshot: snapshot.map(str::to_string),
            }),
            ..Default::default()
        })
    }

    fn snapshot(c: &mut Cluster, name: &str) {
        c.ok(Request::CreateSnapshot {
            labels: Default::default(),
            volume: "src".into(),
            name: name.into(),
        });
        c.ok(Request::ReportSnapshotTaken {
            volume: "src".into(),
            name: name.into(),
        });
    }

    fn engine_started(c: &mut Cluster, name: &str) {
        let epoch = c.state.volumes[name].epoch;
        c.ok(Request::ReportEngineStarted {
            name: name.into(),
            epoch,
            endpoint: String::new(),
            frontend: Default::default(),
            device: None,
        });
    }

    #[test]
    fn a_volume_from_a_snapshot_is_copied_before_users_get_it_and_protects_its_source() {
        let mut c = cluster();
        c.attach("src", "n1");
        snapshot(&mut c, "s0");
        snapshot(&mut c, "s1");
        c.ok(copy("dst", 1, Some("s1")));
        let v = &c.state.volumes["dst"];
        assert_eq!(v.state, VolumeState::Attaching, "attached for its copy");
        let r = v.restore.as_ref().expect("restore");
        assert_eq!(r.source(), "snapshot \"src/s1\"");
        assert_eq!((r.state, r.url.as_str()), (RestoreState::InProgress, ""));
        engine_started(&mut c, "dst");
        let node = c.state.volumes["dst"]
            .attachment
            .as_ref()
            .unwrap()
            .node
            .clone();
        let why = c.rejected(
            Request::AttachVolume {
                name: "dst".into(),
                node,
                frontend: Default::default(),
            },
            PreconditionFailed,
        );
        assert!(
            why.contains("being copied from snapshot \"src/s1\""),
            "{why}"
        );

        // What the copy reads is protected while it runs.
        let why = c.rejected(
            Request::DeleteSnapshot {
                volume: "src".into(),
                name: "s1".into(),
            },
            PreconditionFailed,
        );
        assert!(why.contains("being copied into volume \"dst\""), "{why}");
        snapshot(&mut c, "s2");
        c.ok(Request::DeleteSnapshot {
            volume: "src".into(),
            name: "s2".into(),
        });
        let why = c.rejected(
            Request::RevertSnapshot {
                volume: "src".into(),
                name: "s0".into(),
            },
            PreconditionFailed,
        );
        assert!(why.contains("being copied"), "{why}");
        c.ok(Request::DetachVolume { name: "src".into() });
        let epoch = c.state.volumes["src"].epoch;
        c.ok(Request::ReportEngineStopped {
            name: "src".into(),
            epoch,
        });
        let why = c.rejected(
            Request::DeleteVolume { name: "src".into() },
            PreconditionFailed,
        );
        assert!(why.contains("source of volume \"dst\""), "{why}");

        c.ok(Request::ReportRestoreProgress {
            volume: "dst".into(),
            progress: 50,
        });
        c.ok(Request::ReportRestoreCompleted {
            volume: "dst".into(),
        });
        assert_eq!(c.state.volumes["dst"].state, VolumeState::Detaching);
        // Copied: its source is free again.
        c.ok(Request::DeleteVolume { name: "src".into() });
    }

    #[test]
    fn a_clone_takes_a_snapshot_of_its_detached_source_first() {
        let mut c = cluster();
        c.ok(copy("c1", 1, None));
        let src = &c.state.volumes["src"];
        let snap = &src.snapshots["clone-c1"];
        assert_eq!(snap.state, SnapshotState::Pending);
        let a = src.attachment.as_ref().expect("attached for the snapshot");
        assert!(a.internal, "{a:?}");
        let r = c.state.volumes["c1"].restore.clone().unwrap();
        assert!(r.copies_from("src", Some("clone-c1")), "{r:?}");
        engine_started(&mut c, "src");
        c.ok(Request::ReportSnapshotTaken {
            volume: "src".into(),
            name: "clone-c1".into(),
        });
        assert_eq!(
            c.state.volumes["src"].state,
            VolumeState::Detaching,
            "the internal attachment ends with its snapshot"
        );
        let epoch = c.state.volumes["src"].epoch;
        c.ok(Request::ReportEngineStopped {
            name: "src".into(),
            epoch,
        });

        // A name that would pass 63 characters is cut; one taken gets a number.
        let long = "x".repeat(63);
        c.ok(copy(&long, 1, None));
        let names: Vec<&String> = c.state.volumes["src"].snapshots.keys().collect();
        assert!(
            names
                .iter()
                .any(|n| n.len() == 63 && n.starts_with("clone-xxx")),
            "{names:?}"
        );
    }

    #[test]
    fn a_copy_being_deleted_lets_its_source_go_and_a_restoring_volume_can_be_deleted() {
        let mut c = cluster();
        snapshot_detached(&mut c);
        c.ok(copy("dst", 1, Some("s1")));
        engine_started(&mut c, "dst");
        // Only its copying engine has it: deleting it stops the copy.
        let events = c.ok(Request::DeleteVolume { name: "dst".into() });
        assert!(
            events.contains(&crate::Event::VolumeDetached { name: "dst".into() }),
            "{events:?}"
        );
        assert_eq!(c.state.volumes["dst"].state, VolumeState::Deleting);
        c.ok(Request::DeleteSnapshot {
            volume: "src".into(),
            name: "s1".into(),
        });
    }

    fn snapshot_detached(c: &mut Cluster) {
        c.ok(Request::CreateSnapshot {
            labels: Default::default(),
            volume: "src".into(),
            name: "s1".into(),
        });
        engine_started(c, "src");
        c.ok(Request::ReportSnapshotTaken {
            volume: "src".into(),
            name: "s1".into(),
        });
        let epoch = c.state.volumes["src"].epoch;
        c.ok(Request::ReportEngineStopped {
            name: "src".into(),
            epoch,
        });
        assert_eq!(c.state.volumes["src"].state, VolumeState::Detached);
    }

    #[test]
    fn bad_sources_and_sizes_are_refused_with_the_reason() {
        let mut c = cluster();
        snapshot_detached(&mut c);
        assert_eq!(
            c.rejected(copy("dst", 1, Some("nope")), NotFound),
            "snapshot \"src/nope\" not found"
        );
        let mut missing = copy("dst", 1, None);
        if let Request::CreateVolume(spec) = &mut missing {
            spec.data_source.as_mut().unwrap().volume = "ghost".into();
        }
        assert_eq!(c.rejected(missing, NotFound), "volume \"ghost\" not found");
        c.ok(Request::ExpandVolume {
            name: "src".into(),
            size: 2 * GIB,
        });
        // The snapshot is 1 GiB (the size when it was taken); the volume is 2 GiB now.
        c.ok(copy("from-snap", 1, Some("s1")));
        let why = c.rejected(copy("clone", 1, None), InvalidArgument);
        assert!(
            why.contains("cannot hold snapshot \"src/clone-clone\""),
            "{why}"
        );
        let mut both = copy("both", 2, None);
        if let Request::CreateVolume(spec) = &mut both {
            spec.from_backup = Some("s3://b@r/p?backup=b&volume=v".into());
        }
        assert!(
            c.rejected(both, InvalidArgument).contains("not both"),
            "a backup and a snapshot at once"
        );
        // A volume still being copied is no source yet.
        let why = c.rejected(
            Request::CreateVolume(VolumeSpec {
                name: "second".into(),
                size: GIB,
                data_source: Some(DataSource {
                    volume: "from-snap".into(),
                    snapshot: None,
                }),
                ..Default::default()
            }),
            PreconditionFailed,
        );
        assert!(why.contains("cannot be copied yet"), "{why}");
    }
}
