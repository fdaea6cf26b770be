//! `evolve`: applies one event to the state. It trusts the event (decide checked it) and
//! never fails; an event naming something that is gone changes nothing.

use crate::{
    Attachment, BackupState, Event, ReplicaMode, Restore, RestoreState, Robustness, SnapshotState,
    State, Volume, VolumeState,
};

fn restore_of<'a>(state: &'a mut State, volume: &str) -> Option<&'a mut Restore> {
    state.volumes.get_mut(volume)?.restore.as_mut()
}

/// Applies `event` to `state`, keeping the derived fields (disk usage, robustness, the set
/// of volumes short of replicas) in step.
pub fn evolve(state: &mut State, event: &Event) {
    match event {
        Event::ClusterVersionRaised { to, .. } => {
            state.cluster_version = *to;
        }
        Event::NodeRegistered { node } => {
            state.nodes.insert(node.id.clone(), node.clone());
        }
        Event::NodeUpdated {
            id,
            address,
            zone,
            labels,
            tags,
        } => {
            if let Some(node) = state.nodes.get_mut(id) {
                node.address.clone_from(address);
                node.zone.clone_from(zone);
                node.labels.clone_from(labels);
                node.tags.clone_from(tags);
            }
        }
        Event::NodeSchedulingChanged { id, schedulable } => {
            if let Some(node) = state.nodes.get_mut(id) {
                node.schedulable = *schedulable;
            }
        }
        Event::NodeHeartbeat { id, at } => {
            if let Some(node) = state.nodes.get_mut(id) {
                node.ready = true;
                node.last_heartbeat = *at;
            }
        }
        Event::NodeDown { id } => {
            if let Some(node) = state.nodes.get_mut(id) {
                node.ready = false;
            }
        }
        Event::NodeRemoved { id } => {
            state.nodes.remove(id);
        }
        Event::DiskAdded { node, disk } => {
            if let Some(node) = state.nodes.get_mut(node) {
                node.disks.insert(disk.id.clone(), disk.clone());
            }
        }
        Event::DiskUpdated {
            node,
            disk,
            capacity,
            reserved,
            available,
            tags,
        } => {
            if let Some(disk) = state
                .nodes
                .get_mut(node)
                .and_then(|n| n.disks.get_mut(disk))
            {
                disk.capacity = *capacity;
                disk.reserved = *reserved;
                disk.available = *available;
                disk.tags.clone_from(tags);
            }
        }
        Event::DiskSchedulingChanged {
            node,
            disk,
            schedulable,
        } => {
            if let Some(disk) = state
                .nodes
                .get_mut(node)
                .and_then(|n| n.disks.get_mut(disk))
            {
                disk.schedulable = *schedulable;
            }
        }
        Event::DiskRemoved { node, disk } => {
            if let Some(node) = state.nodes.get_mut(node) {
                node.disks.remove(disk);
            }
        }
        Event::VolumeCreated { volume } => {
            state.volumes.insert(volume.name.clone(), volume.clone());
            refresh(state, &volume.name);
        }
        Event::VolumeUpdated {
            name,
            number_of_replicas,
            data_locality,
        } => {
            if let Some(volume) = state.volumes.get_mut(name) {
                volume.number_of_replicas = *number_of_replicas;
                volume.data_locality = *data_locality;
            }
            refresh(state, name);
        }
        Event::VolumeStaleReplicaTimeoutSet { name, secs } => {
            if let Some(volume) = state.volumes.get_mut(name) {
                volume.stale_replica_timeout_secs = *secs;
            }
        }
        Event::VolumeExpanded { name, size } => {
            let Some(volume) = state.volumes.get_mut(name) else {
                return;
            };
            let grown = size.saturating_sub(volume.size);
            volume.size = *size;
            let placed: Vec<(String, String)> = state
                .replicas_of(&state.volumes[name])
                .map(|r| (r.node.clone(), r.disk.clone()))
                .collect();
            for (node, disk) in placed {
                if let Some(disk) = state
                    .nodes
                    .get_mut(&node)
                    .and_then(|n| n.disks.get_mut(&disk))
                {
                    disk.scheduled += grown;
                }
            }
        }
        Event::VolumeAttaching {
            name,
            node,
            epoch,
            frontend,
            internal,
        } => {
            if let Some(volume) = state.volumes.get_mut(name) {
                volume.state = VolumeState::Attaching;
                volume.epoch = volume.epoch.max(*epoch);
                if !*internal {
                    volume.user_attachments += 1;
                }
                volume.attachment = Some(Attachment {
                    node: node.clone(),
                    epoch: *epoch,
                    endpoint: None,
                    frontend: *frontend,
                    device: None,
                    error: None,
                    internal: *internal,
                });
            }
        }
        Event::VolumeAttached {
            name,
            endpoint,
            frontend,
            device,
            ..
        } => {
            if let Some(volume) = state.volumes.get_mut(name) {
                volume.state = VolumeState::Attached;
                if let Some(attachment) = volume.attachment.as_mut() {
                    attachment.endpoint = Some(endpoint.clone());
                    attachment.error = None;
                    if attachment.frontend.wants_device() {
                        attachment.frontend = *frontend;
                        attachment.device = device.clone();
                    }
                }
            }
        }
        Event::DeviceFailed { name, reason } => {
            if let Some(attachment) = state
                .volumes
                .get_mut(name)
                .and_then(|v| v.attachment.as_mut())
            {
                attachment.error = Some(reason.clone());
            }
        }
        Event::EngineRestarting { name, epoch } => restart_engine(state, name, *epoch),
        Event::VolumeDetaching { name } => set_volume_state(state, name, VolumeState::Detaching),
        Event::VolumeDetached { name } => {
            if let Some(volume) = state.volumes.get_mut(name) {
                volume.state = VolumeState::Detached;
                volume.attachment = None;
                // Without an engine a pending snapshot would be taken at the wrong time, and
                // a revert is never carried out: both are dropped.
                volume
                    .snapshots
                    .retain(|_, s| s.state != SnapshotState::Pending);
                volume.revert_to = None;
                // The restoring engine is gone before the restore completed: what the
                // volume holds is partial, and nothing presents it as restored.
                if let Some(restore) = volume.restore.as_mut()
                    && restore.state == RestoreState::InProgress
                {
                    restore.state = RestoreState::Error;
                    restore.error = Some(
                        "the restoring engine stopped before the restore completed (detached, or its node went down)".into(),
                    );
                }
            }
            // The engine ran the backup job: without it the job is gone.
            for backup in state.backups.values_mut() {
                if &backup.volume == name && backup.state == BackupState::InProgress {
                    backup.state = BackupState::Error;
                    backup.error = Some(
                        "the volume's engine stopped before the backup completed; back it up again"
                            .to_string(),
                    );
                }
            }
        }
        Event::VolumeDeleting { name } => {
            set_volume_state(state, name, VolumeState::Deleting);
            refresh(state, name);
        }
        Event::VolumeDeleted { name } => {
            if let Some(volume) = state.volumes.remove(name) {
                for id in &volume.replicas {
                    remove_replica(state, id);
                }
            }
            state.unscheduled.remove(name);
            state.engine_images.remove(name);
            state.engine_upgrades.remove(name);
        }
        Event::ReplicaScheduled { replica } => {
            let Some(volume) = state.volumes.get_mut(&replica.volume) else {
                return;
            };
            volume.replicas.insert(replica.id.clone());
            let size = volume.size;
            if let Some(disk) = state
                .nodes
                .get_mut(&replica.node)
                .and_then(|n| n.disks.get_mut(&replica.disk))
            {
                disk.scheduled += size;
                disk.replica_count += 1;
            }
            state.replicas.insert(replica.id.clone(), replica.clone());
            state.next_replica += 1;
            refresh(state, &replica.volume);
        }
        Event::SchedulingFailed {
            volume,
            scheduled,
            wanted,
            reason,
        } => {
            if let Some(volume) = state.volumes.get_mut(volume) {
                volume.condition = Some(scheduling_condition(*scheduled, *wanted, reason));
            }
        }
        Event::ReplicaFailed { id, reason, at } => {
            set_replica_mode(state, id, ReplicaMode::Error, |r| {
                r.failed_at = Some(*at);
                r.failure = Some(reason.clone());
                r.revision = None;
            });
        }
        Event::ReplicaRebuilding { id } => {
            set_replica_mode(state, id, ReplicaMode::WriteOnly, |r| {
                r.failed_at = None;
                r.revision = None;
            });
        }
        Event::ReplicaRevisionReported { id, revision } => {
            if let Some(replica) = state.replicas.get_mut(id) {
                replica.revision = Some(*revision);
            }
        }
        Event::ReplicaSalvaged { id, volume, epoch } => {
            let siblings: Vec<String> = state
                .volumes
                .get(volume)
                .map(|v| v.replicas.iter().cloned().collect())
                .unwrap_or_default();
            for sibling in siblings {
                if let Some(replica) = state.replicas.get_mut(&sibling) {
                    replica.revision = None;
                }
            }
            set_replica_mode(state, id, ReplicaMode::ReadWrite, |r| {
                r.failed_at = None;
                r.failure = None;
            });
            if let (Some(epoch), Some(volume)) = (epoch, state.volumes.get_mut(volume)) {
                // The old engine lost every replica: a new one starts under a new epoch.
                volume.epoch = volume.epoch.max(*epoch);
                volume.state = VolumeState::Attaching;
                if let Some(attachment) = volume.attachment.as_mut() {
                    attachment.epoch = *epoch;
                    attachment.endpoint = None;
                }
            }
        }
        Event::ReplicaHealthy { id } => {
            set_replica_mode(state, id, ReplicaMode::ReadWrite, |r| {
                r.failed_at = None;
                r.failure = None;
            });
        }
        Event::ReplicaStarted { id, address } => {
            if let Some(replica) = state.replicas.get_mut(id) {
                replica.address = Some(address.clone());
            }
        }
        Event::ReplicaRemoved { id } => {
            if let Some(volume) = remove_replica(state, id) {
                refresh(state, &volume);
            }
        }
        Event::SettingChanged { key, value } => state.settings.set(key, value),
        Event::VolumeLabelsSet { name, labels } => {
            if let Some(volume) = state.volumes.get_mut(name) {
                volume.labels.clone_from(labels);
            }
        }
        Event::RecurringJobCreated { .. }
        | Event::RecurringJobUpdated { .. }
        | Event::RecurringJobDeleted { .. }
        | Event::RecurringJobFired { .. }
        | Event::RecurringJobVolumeStarted { .. }
        | Event::RecurringJobVolumeFinished { .. } => crate::jobs::evolve_job(state, event),
        Event::SnapshotCreated { snapshot } => {
            if let Some(volume) = state.volumes.get_mut(&snapshot.volume) {
                volume
                    .snapshots
                    .insert(snapshot.name.clone(), snapshot.clone());
            }
        }
        Event::SnapshotTaken { volume, name } => {
            set_snapshot_state(state, volume, name, SnapshotState::Ready);
        }
        Event::SnapshotDeleting { volume, name } => {
            set_snapshot_state(state, volume, name, SnapshotState::Deleting);
        }
        Event::SnapshotFailed { volume, name, .. } | Event::SnapshotDeleted { volume, name } => {
            if let Some(volume) = state.volumes.get_mut(volume) {
                volume.snapshots.remove(name);
            }
        }
        Event::RevertRequested { volume, name } => {
            if let Some(volume) = state.volumes.get_mut(volume) {
                volume.revert_to = Some(name.clone());
            }
        }
        Event::SnapshotReverted {
            volume, dropped, ..
        } => {
            if let Some(volume) = state.volumes.get_mut(volume) {
                volume.revert_to = None;
                for name in dropped {
                    volume.snapshots.remove(name);
                }
            }
        }
        Event::RevertFailed { volume, .. } => {
            if let Some(volume) = state.volumes.get_mut(volume) {
                volume.revert_to = None;
            }
        }
        Event::BackupCreated { backup } => {
            state.backups.insert(backup.name.clone(), backup.clone());
        }
        Event::BackupStarted { name, .. } => {
            if let Some(backup) = state.backups.get_mut(name) {
                backup.started = true;
            }
        }
        Event::BackupProgressed {
            name,
            progress,
            blocks,
            uploaded_bytes,
            ..
        } => {
            if let Some(backup) = state.backups.get_mut(name) {
                backup.progress = *progress;
                backup.blocks = *blocks;
                backup.uploaded_bytes = *uploaded_bytes;
            }
        }
        Event::BackupCompleted {
            name,
            url,
            size,
            blocks,
            uploaded_bytes,
            ..
        } => {
            if let Some(backup) = state.backups.get_mut(name) {
                backup.state = BackupState::Completed;
                backup.progress = 100;
                backup.url = url.clone();
                backup.size = *size;
                backup.blocks = *blocks;
                backup.uploaded_bytes = *uploaded_bytes;
            }
        }
        Event::BackupFailed { name, reason, .. } => {
            if let Some(backup) = state.backups.get_mut(name) {
                backup.state = BackupState::Error;
                backup.error = Some(reason.clone());
            }
        }
        Event::BackupDeleted { name, .. } => {
            state.backups.remove(name);
        }
        Event::BackupVolumesSynced {
            target,
            volumes,
            at,
        } => {
            state.backup_volumes = volumes
                .iter()
                .map(|(name, backups)| {
                    let volume = crate::BackupVolume {
                        name: name.clone(),
                        target: target.clone(),
                        backups: backups.clone(),
                        synced_at: *at,
                    };
                    (name.clone(), volume)
                })
                .collect();
        }
        Event::RestoreProgressed { name, progress } => {
            if let Some(restore) = restore_of(state, name) {
                restore.progress = *progress;
            }
        }
        Event::RestoreCompleted { name } => {
            if let Some(restore) = restore_of(state, name) {
                restore.state = RestoreState::Completed;
                restore.progress = 100;
            }
        }
        Event::RestoreFailed { name, reason } => {
            if let Some(restore) = restore_of(state, name) {
                restore.state = RestoreState::Error;
                restore.error = Some(reason.clone());
            }
        }
        Event::StandbyRestoring {
            name,
            backup,
            created,
        } => {
            if let Some(dr) = standby_of(state, name) {
                // Another backup in place of one whose restore was cut short (it was
                // deleted from the target): the data is a mix of no known backup now.
                if dr.restoring.as_ref().is_some_and(|r| r != backup) {
                    dr.last_restored = None;
                }
                dr.last_seen = Some(backup.clone());
                dr.last_seen_created = *created;
                dr.restoring = Some(backup.clone());
                dr.error = None;
            }
        }
        Event::StandbyRestored {
            name,
            backup,
            created,
            at,
        } => {
            if let Some(dr) = standby_of(state, name) {
                if dr.last_seen_created <= *created {
                    dr.last_seen = Some(backup.clone());
                    dr.last_seen_created = *created;
                }
                dr.last_restored = Some(backup.clone());
                dr.last_restored_created = *created;
                dr.restored_at = *at;
                dr.restoring = None;
                dr.error = None;
            }
        }
        Event::StandbyFailed { name, reason } => {
            if let Some(dr) = standby_of(state, name) {
                dr.error = Some(reason.clone());
            }
        }
        Event::VolumeActivating { name } => {
            if let Some(dr) = standby_of(state, name) {
                dr.activating = true;
            }
        }
        Event::VolumeActivated { name, at, note } => {
            if let Some(volume) = state.volumes.get_mut(name) {
                volume.standby = false;
                if let Some(dr) = volume.dr.as_mut() {
                    dr.activating = false;
                    dr.activated_at = Some(*at);
                    dr.activation_note = note.clone();
                }
            }
        }
        Event::EngineUpgradeStarted { .. }
        | Event::EngineUpgradeChecked { .. }
        | Event::EngineUpgradeEngineRunning { .. }
        | Event::EngineUpgradeReplica { .. }
        | Event::EngineUpgradeReplicaRestarted { .. }
        | Event::EngineUpgradeReplicaDone { .. }
        | Event::EngineUpgradeFinished { .. }
        | Event::EngineUpgradeFailed { .. }
        | Event::EngineUpgradeJobStarted { .. }
        | Event::EngineUpgradeJobVolumeDone { .. }
        | Event::EngineUpgradeJobFailed { .. }
        | Event::EngineUpgradeJobFinished { .. } => crate::upgrade::evolve(state, event),
    }
}

fn standby_of<'a>(state: &'a mut State, volume: &str) -> Option<&'a mut crate::Standby> {
    state.volumes.get_mut(volume)?.dr.as_deref_mut()
}

/// The condition text a `SchedulingFailed` event leaves on its volume.
pub(crate) fn scheduling_condition(scheduled: u8, wanted: u8, reason: &str) -> String {
    format!("{scheduled} of {wanted} replicas scheduled: {reason}")
}

fn set_snapshot_state(state: &mut State, volume: &str, name: &str, to: SnapshotState) {
    if let Some(snapshot) = state
        .volumes
        .get_mut(volume)
        .and_then(|v| v.snapshots.get_mut(name))
    {
        snapshot.state = to;
    }
}

/// A new engine for attached volume `name` at `epoch`: same node, same device; the new
/// engine reports its endpoint again.
pub(crate) fn restart_engine(state: &mut State, name: &str, epoch: crate::Epoch) {
    if let Some(volume) = state.volumes.get_mut(name) {
        volume.state = VolumeState::Attaching;
        volume.epoch = volume.epoch.max(epoch);
        if let Some(attachment) = volume.attachment.as_mut() {
            attachment.epoch = epoch;
            attachment.endpoint = None;
        }
    }
}

fn set_volume_state(state: &mut State, name: &str, to: VolumeState) {
    if let Some(volume) = state.volumes.get_mut(name) {
        volume.state = to;
    }
}

fn set_replica_mode(
    state: &mut State,
    id: &str,
    mode: ReplicaMode,
    also: impl FnOnce(&mut crate::Replica),
) {
    let Some(replica) = state.replicas.get_mut(id) else {
        return;
    };
    replica.mode = mode;
    also(replica);
    let volume = replica.volume.clone();
    refresh(state, &volume);
}

/// Removes a replica and its disk accounting; returns its volume's name.
fn remove_replica(state: &mut State, id: &str) -> Option<String> {
    let replica = state.replicas.remove(id)?;
    let size = state.volumes.get_mut(&replica.volume).map(|volume| {
        volume.replicas.remove(id);
        volume.size
    });
    if let Some(disk) = state
        .nodes
        .get_mut(&replica.node)
        .and_then(|n| n.disks.get_mut(&replica.disk))
    {
        disk.scheduled = disk.scheduled.saturating_sub(size.unwrap_or(0));
        disk.replica_count = disk.replica_count.saturating_sub(1);
    }
    Some(replica.volume)
}

/// Recomputes a volume's derived fields: robustness, membership of `unscheduled`, and the
/// scheduling condition once it has all its replicas.
fn refresh(state: &mut State, name: &str) {
    let Some(volume) = state.volumes.get(name) else {
        state.unscheduled.remove(name);
        return;
    };
    let robustness = robustness_of(state, volume);
    let short = volume.state != VolumeState::Deleting
        && volume.replicas.len() < usize::from(volume.number_of_replicas);
    if short {
        state.unscheduled.insert(name.to_string());
    } else {
        state.unscheduled.remove(name);
    }
    if let Some(volume) = state.volumes.get_mut(name) {
        volume.robustness = robustness;
        if !short {
            volume.condition = None;
        }
    }
}

fn robustness_of(state: &State, volume: &Volume) -> Robustness {
    let healthy = state
        .replicas_of(volume)
        .filter(|r| r.mode == ReplicaMode::ReadWrite)
        .count();
    if healthy == 0 {
        Robustness::Faulted
    } else if healthy >= usize::from(volume.number_of_replicas) {
        Robustness::Healthy
    } else {
        Robustness::Degraded
    }
}
