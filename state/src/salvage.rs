//! Auto-salvage: when every replica of a volume has failed, the node agents report the
//! revision counter of each failed replica; once every replica on a live node has reported,
//! the one with the highest counter (the newest flushed data) serves again, and the others
//! are rebuilt from it. With the `autoSalvage` setting off the volume stays faulted.

use crate::{Epoch, Event, Rejection, ReplicaMode, Robustness, State, VolumeState};

pub(crate) fn report_revision(
    state: &State,
    id: &str,
    revision: u64,
) -> Result<Vec<Event>, Rejection> {
    let replica = state.replica(id)?;
    let volume = state.volume(&replica.volume)?;
    if replica.mode != ReplicaMode::Error
        || volume.robustness != Robustness::Faulted
        || volume.state == VolumeState::Deleting
    {
        // Only the replicas of a volume with nothing left to serve are candidates.
        return Ok(vec![]);
    }
    let mut events = Vec::new();
    if replica.revision != Some(revision) {
        events.push(Event::ReplicaRevisionReported {
            id: id.to_string(),
            revision,
        });
    }
    if !state.settings.auto_salvage {
        return Ok(events);
    }
    let node_ready = |node: &str| state.nodes.get(node).is_some_and(|n| n.ready);
    let mut best: Option<(u64, &str)> = None;
    for candidate in state.replicas_of(volume) {
        // A write-only replica was mid-rebuild: never a source.
        if candidate.mode != ReplicaMode::Error || !node_ready(&candidate.node) {
            continue;
        }
        let reported = if candidate.id == id {
            Some(revision)
        } else {
            candidate.revision
        };
        let Some(reported) = reported else {
            // Wait for every live replica: the missing one may hold the newest data.
            return Ok(events);
        };
        // Highest revision wins; ties go to the lowest id (replicas_of is in id order).
        if best.is_none_or(|(r, _)| reported > r) {
            best = Some((reported, candidate.id.as_str()));
        }
    }
    if let Some((_, chosen)) = best {
        let epoch = volume
            .attachment
            .as_ref()
            .map(|_| Epoch(volume.epoch.0 + 1));
        events.push(Event::ReplicaSalvaged {
            id: chosen.to_string(),
            volume: volume.name.clone(),
            epoch,
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use crate::testkit::Cluster;
    use crate::{Event, ReplicaMode, Request, Robustness, VolumeState};

    /// A 3-replica volume attached on n1 whose replicas all failed.
    fn faulted() -> (Cluster, Vec<String>) {
        let mut c = Cluster::new();
        for n in ["n1", "n2", "n3"] {
            c.node(n, "", 100);
        }
        c.volume("db", 1, 3);
        c.attach("db", "n1");
        let ids: Vec<String> = c.replicas("db").into_iter().map(|r| r.id).collect();
        for id in &ids {
            c.ok(Request::ReportReplicaFailed {
                id: id.clone(),
                reason: "connection reset".into(),
            });
        }
        assert_eq!(c.state.volumes["db"].robustness, Robustness::Faulted);
        (c, ids)
    }

    fn report(c: &mut Cluster, id: &str, revision: u64) -> Vec<Event> {
        c.ok(Request::ReportReplicaRevision {
            id: id.into(),
            revision,
        })
    }

    #[test]
    fn the_replica_with_the_newest_data_is_salvaged_once_all_reported() {
        let (mut c, ids) = faulted();
        assert_eq!(report(&mut c, &ids[0], 40).len(), 1);
        assert_eq!(report(&mut c, &ids[1], 97).len(), 1, "waits for the third");
        let events = report(&mut c, &ids[2], 96);
        assert!(
            matches!(&events[..], [_, Event::ReplicaSalvaged { id, .. }] if id == &ids[1]),
            "{events:?}"
        );
        let volume = &c.state.volumes["db"];
        assert_eq!(volume.robustness, Robustness::Degraded);
        // The engine lost everything: a new one starts under a new epoch.
        assert_eq!(volume.state, VolumeState::Attaching);
        assert_eq!(volume.epoch.0, 2);
        assert_eq!(volume.attachment.as_ref().map(|a| a.epoch.0), Some(2));
        let modes: Vec<ReplicaMode> = c.replicas("db").iter().map(|r| r.mode).collect();
        assert_eq!(
            modes,
            [
                ReplicaMode::Error,
                ReplicaMode::ReadWrite,
                ReplicaMode::Error
            ]
        );
        assert!(c.replicas("db").iter().all(|r| r.revision.is_none()));
        // Late reports for a volume that is no longer faulted change nothing.
        assert!(report(&mut c, &ids[0], 41).is_empty());
    }

    #[test]
    fn replicas_on_dead_nodes_are_not_waited_for() {
        let (mut c, ids) = faulted();
        let dead = c.replicas("db")[2].node.clone();
        c.clock += 60_000;
        for node in ["n1", "n2", "n3"] {
            if node != dead {
                c.ok(Request::Heartbeat { node: node.into() });
            }
        }
        c.ok(Request::MarkDeadNodes { timeout_secs: 30 });
        assert!(!c.state.nodes[&dead].ready);
        report(&mut c, &ids[0], 5);
        let events = report(&mut c, &ids[1], 5);
        assert!(
            matches!(&events[..], [_, Event::ReplicaSalvaged { id, .. }] if id == &ids[0]),
            "a tie goes to the lowest id: {events:?}"
        );
    }

    #[test]
    fn without_auto_salvage_the_volume_stays_faulted() {
        let (mut c, ids) = faulted();
        c.set("autoSalvage", "false");
        for id in &ids {
            report(&mut c, id, 7);
        }
        assert_eq!(c.state.volumes["db"].robustness, Robustness::Faulted);
        // And the failed replicas are not replaced by empty ones, whatever the timeout.
        c.clock += 10 * 24 * 3600 * 1000;
        assert!(c.ok(Request::ReplaceStaleReplicas).is_empty());
    }
}
