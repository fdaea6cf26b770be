//! `decide`: whether a command may happen against the current state, and which events
//! follow. Validation, preconditions and the scheduler's placements all happen here; the
//! state is only read.

use std::collections::{BTreeMap, BTreeSet};

use crate::evolve::scheduling_condition;
use crate::name::{
    check_label, check_labels, check_replica_count, check_subdomain, check_volume_size,
};
use crate::scheduler::{Demand, Placement, Scheduler, human_bytes};
use crate::{
    Command, DataLocality, Disk, DiskSpec, Epoch, Event, Frontend, Node, NodeSpec, Rejection,
    Replica, ReplicaMode, Request, Robustness, Settings, State, Timestamp, Volume, VolumeSpec,
    VolumeState, evolve,
};
use crate::{auto_attach, backups, copy, jobs, restore, salvage, snapshots, standby, upgrade};

/// Decides `command` against `state`: the events it produces, or why it is refused.
/// Pure and deterministic: the same state and command always give the same answer.
pub fn decide(state: &State, command: &Command) -> Result<Vec<Event>, Rejection> {
    let mut events = decide_request(state, command)?;
    upgrade::follow(state, &mut events, command.at);
    Ok(events)
}

fn decide_request(state: &State, command: &Command) -> Result<Vec<Event>, Rejection> {
    let at = command.at;
    crate::cluster_version::check(
        command.request.cluster_version_required(),
        state.cluster_version,
    )?;
    match &command.request {
        Request::RegisterNode(spec) => register_node(state, spec, at),
        Request::UpdateNode {
            id,
            address,
            zone,
            labels,
            tags,
        } => {
            let node = state.node(id)?;
            let event = Event::NodeUpdated {
                id: id.clone(),
                address: address.clone().unwrap_or_else(|| node.address.clone()),
                zone: zone.clone().unwrap_or_else(|| node.zone.clone()),
                labels: labels.clone().unwrap_or_else(|| node.labels.clone()),
                tags: tags.clone().unwrap_or_else(|| node.tags.clone()),
            };
            with_retry(state, vec![event], at)
        }
        Request::SetNodeSchedulable { id, schedulable } => {
            state.node(id)?;
            let event = Event::NodeSchedulingChanged {
                id: id.clone(),
                schedulable: *schedulable,
            };
            with_retry(state, vec![event], at)
        }
        Request::RemoveNode { id } => remove_node(state, id),
        Request::Heartbeat { node } => {
            let current = state.node(node)?;
            let event = Event::NodeHeartbeat {
                id: node.clone(),
                at,
            };
            if current.ready {
                Ok(vec![event])
            } else {
                with_retry(state, vec![event], at)
            }
        }
        Request::MarkDeadNodes { timeout_secs } => mark_dead_nodes(state, *timeout_secs, at),
        Request::AddDisk { node, disk } => {
            let existing = state.node(node)?;
            if existing.disks.contains_key(&disk.id) {
                return Err(Rejection::already_exists(
                    "disk",
                    &format!("{node}/{}", disk.id),
                ));
            }
            let disk = new_disk(disk)?;
            with_retry(
                state,
                vec![Event::DiskAdded {
                    node: node.clone(),
                    disk,
                }],
                at,
            )
        }
        Request::UpdateDisk {
            node,
            disk,
            capacity,
            reserved,
            available,
            tags,
        } => {
            let current = state.disk(node, disk)?;
            let capacity = capacity.unwrap_or(current.capacity);
            let reserved = reserved.unwrap_or(current.reserved);
            let available = available.unwrap_or(current.available);
            check_disk_sizes(&format!("{node}/{disk}"), capacity, reserved, available)?;
            let event = Event::DiskUpdated {
                node: node.clone(),
                disk: disk.clone(),
                capacity,
                reserved,
                available,
                tags: tags.clone().unwrap_or_else(|| current.tags.clone()),
            };
            with_retry(state, vec![event], at)
        }
        Request::SetDiskSchedulable {
            node,
            disk,
            schedulable,
        } => {
            state.disk(node, disk)?;
            let event = Event::DiskSchedulingChanged {
                node: node.clone(),
                disk: disk.clone(),
                schedulable: *schedulable,
            };
            with_retry(state, vec![event], at)
        }
        Request::RemoveDisk { node, disk } => {
            let current = state.disk(node, disk)?;
            if current.replica_count > 0 {
                return Err(Rejection::precondition(format!(
                    "disk \"{node}/{disk}\" still holds {} replica{}; remove or move them first",
                    current.replica_count,
                    if current.replica_count == 1 { "" } else { "s" }
                )));
            }
            Ok(vec![Event::DiskRemoved {
                node: node.clone(),
                disk: disk.clone(),
            }])
        }
        Request::CreateVolume(spec) => create_volume(state, spec, at),
        Request::UpdateVolume {
            name,
            number_of_replicas,
            data_locality,
            labels,
            stale_replica_timeout_secs,
        } => update_volume(
            state,
            name,
            VolumeChanges {
                replicas: *number_of_replicas,
                locality: *data_locality,
                labels: labels.as_ref(),
                stale_secs: *stale_replica_timeout_secs,
            },
            at,
        ),
        Request::ExpandVolume { name, size } => expand_volume(state, name, *size),
        Request::DeleteVolume { name } => delete_volume(state, name),
        Request::AttachVolume {
            name,
            node,
            frontend,
        } => attach_volume(state, name, node, *frontend),
        Request::ReportEngineStarted {
            name,
            epoch,
            endpoint,
            frontend,
            device,
        } => {
            let volume = live_volume(state, name)?;
            check_epoch(volume, *epoch)?;
            match volume.state {
                VolumeState::Attaching => Ok(vec![Event::VolumeAttached {
                    name: name.clone(),
                    epoch: *epoch,
                    endpoint: endpoint.clone(),
                    frontend: *frontend,
                    device: device.clone(),
                }]),
                // A device set up again (its process had died) under the running engine.
                VolumeState::Attached
                    if device.is_some()
                        && volume.attachment.as_ref().map(|a| &a.device) != Some(device) =>
                {
                    Ok(vec![Event::VolumeAttached {
                        name: name.clone(),
                        epoch: *epoch,
                        endpoint: endpoint.clone(),
                        frontend: *frontend,
                        device: device.clone(),
                    }])
                }
                VolumeState::Attached => Ok(vec![]),
                other => Err(Rejection::conflict(format!(
                    "volume \"{name}\" is {other:?}, not attaching; the engine of epoch {} should stop",
                    epoch.0
                ))),
            }
        }
        Request::DetachVolume { name } => {
            let volume = live_volume(state, name)?;
            if let Some(why) = auto_attach::busy(state, volume) {
                return Err(Rejection::conflict(why));
            }
            if let Some(why) = volume.standby_blocks("be detached (its engine follows the backups)")
            {
                return Err(Rejection::precondition(why));
            }
            match volume.state {
                VolumeState::Attaching | VolumeState::Attached => {
                    Ok(vec![Event::VolumeDetaching { name: name.clone() }])
                }
                _ => Ok(vec![]),
            }
        }
        Request::ReportDeviceFailed {
            name,
            epoch,
            reason,
        } => {
            let volume = live_volume(state, name)?;
            check_epoch(volume, *epoch)?;
            let same = volume
                .attachment
                .as_ref()
                .is_some_and(|a| a.error.as_deref() == Some(reason.as_str()));
            if same || volume.state != VolumeState::Attaching {
                return Ok(vec![]);
            }
            Ok(vec![Event::DeviceFailed {
                name: name.clone(),
                reason: reason.clone(),
            }])
        }
        Request::ReportEngineDied { name, epoch } => {
            let volume = live_volume(state, name)?;
            check_epoch(volume, *epoch)?;
            match volume.state {
                VolumeState::Attaching | VolumeState::Attached => {
                    Ok(vec![Event::EngineRestarting {
                        name: name.clone(),
                        epoch: Epoch(volume.epoch.0 + 1),
                    }])
                }
                _ => Ok(vec![]),
            }
        }
        Request::ReportEngineStopped { name, epoch } => {
            let volume = state.volume(name)?;
            check_epoch(volume, *epoch)?;
            match volume.state {
                VolumeState::Attaching | VolumeState::Attached | VolumeState::Detaching => {
                    Ok(vec![Event::VolumeDetached { name: name.clone() }])
                }
                _ => Ok(vec![]),
            }
        }
        Request::ReportReplicaFailed { id, reason } => {
            let replica = state.replica(id)?;
            if replica.mode == ReplicaMode::Error {
                return Ok(vec![]);
            }
            Ok(vec![Event::ReplicaFailed {
                id: id.clone(),
                reason: reason.clone(),
                at,
            }])
        }
        Request::ReportReplicaStarted { id, address } => {
            let replica = state.replica(id)?;
            if address.is_empty() {
                return Err(Rejection::invalid(format!(
                    "replica \"{id}\" needs an address"
                )));
            }
            if replica.address.as_deref() == Some(address.as_str()) {
                return Ok(vec![]);
            }
            Ok(vec![Event::ReplicaStarted {
                id: id.clone(),
                address: address.clone(),
            }])
        }
        Request::ReportReplicaRebuilding { id } => {
            let replica = state.replica(id)?;
            match replica.mode {
                ReplicaMode::WriteOnly => Ok(vec![]),
                ReplicaMode::ReadWrite => Err(Rejection::conflict(format!(
                    "replica \"{id}\" is read-write; only a new or failed replica is rebuilt"
                ))),
                ReplicaMode::Error => {
                    let volume = state.volume(&replica.volume)?;
                    if volume.robustness == Robustness::Faulted {
                        return Err(Rejection::precondition(format!(
                            "volume \"{}\" has no read-write replica to rebuild \"{id}\" from; \
                             it waits for salvage",
                            volume.name
                        )));
                    }
                    Ok(vec![Event::ReplicaRebuilding { id: id.clone() }])
                }
            }
        }
        Request::ReportReplicaRebuilt { id } => {
            let replica = state.replica(id)?;
            match replica.mode {
                ReplicaMode::WriteOnly => Ok(vec![Event::ReplicaHealthy { id: id.clone() }]),
                ReplicaMode::ReadWrite => Ok(vec![]),
                ReplicaMode::Error => Err(Rejection::conflict(format!(
                    "replica \"{id}\" failed; it must be rebuilt again before it serves reads"
                ))),
            }
        }
        Request::ReportReplicaHealthy { id } => {
            let replica = state.replica(id)?;
            let volume = state.volume(&replica.volume)?;
            if replica.mode == ReplicaMode::ReadWrite {
                return Ok(vec![]);
            }
            if volume.state != VolumeState::Detached {
                return Err(Rejection::precondition(format!(
                    "replica \"{id}\" can only be declared healthy without a rebuild while volume \
                     \"{}\" is detached",
                    volume.name
                )));
            }
            Ok(vec![Event::ReplicaHealthy { id: id.clone() }])
        }
        Request::RemoveReplica { id } => remove_replica(state, id, at),
        Request::ReplaceStaleReplicas => replace_stale_replicas(state, at),
        Request::SetSetting { key, value } => {
            let (key, value) = Settings::validate(key, value)?;
            if state.settings.get(key).as_deref() == Some(value.as_str()) {
                return Ok(vec![]);
            }
            with_retry(
                state,
                vec![Event::SettingChanged {
                    key: key.to_string(),
                    value,
                }],
                at,
            )
        }
        Request::CreateSnapshot {
            volume,
            name,
            labels,
        } => snapshots::create(state, volume, name, labels, at),
        Request::DeleteSnapshot { volume, name } => snapshots::delete(state, volume, name),
        Request::ReportSnapshotTaken { volume, name } => {
            auto_attach::then_detach(state, volume, snapshots::taken(state, volume, name))
        }
        Request::ReportSnapshotFailed {
            volume,
            name,
            reason,
        } => auto_attach::then_detach(
            state,
            volume,
            snapshots::failed(state, volume, name, reason),
        ),
        Request::ReportSnapshotRemoved { volume, name } => {
            auto_attach::then_detach(state, volume, snapshots::removed(state, volume, name))
        }
        Request::RevertSnapshot { volume, name } => snapshots::revert(state, volume, name),
        Request::ReportRevertDone { volume, name } => snapshots::reverted(state, volume, name),
        Request::ReportRevertFailed {
            volume,
            name,
            reason,
        } => snapshots::revert_failed(state, volume, name, reason),
        Request::ReportReplicaRevision { id, revision } => {
            salvage::report_revision(state, id, *revision)
        }
        Request::CreateBackup {
            name,
            volume,
            snapshot,
            labels,
        } => backups::create(state, name, volume, snapshot.as_deref(), labels, at),
        Request::ReportBackupStarted { name } => backups::started(state, name),
        Request::ReportBackupProgress {
            name,
            progress,
            blocks,
            uploaded_bytes,
        } => backups::progressed(state, name, *progress, *blocks, *uploaded_bytes),
        Request::ReportBackupCompleted {
            name,
            url,
            size,
            blocks,
            uploaded_bytes,
        } => auto_attach::then_detach(
            state,
            &volume_of_backup(state, name),
            backups::completed(state, name, url, *size, *blocks, *uploaded_bytes),
        ),
        Request::ReportBackupFailed { name, reason } => auto_attach::then_detach(
            state,
            &volume_of_backup(state, name),
            backups::failed(state, name, reason),
        ),
        Request::DeleteBackup { name } => backups::delete(state, name),
        Request::ReportBackupVolumes { target, volumes } => {
            backups::synced(state, target, volumes, at)
        }
        Request::ReportRestoreProgress { volume, progress } => {
            restore::progressed(state, volume, *progress)
        }
        Request::ReportRestoreCompleted { volume } => restore::completed(state, volume),
        Request::ReportRestoreFailed { volume, reason } => restore::failed(state, volume, reason),
        Request::ActivateVolume { name } => standby::activate(state, name, at),
        Request::AttachStandby { name } => standby::attach(state, name),
        Request::ReportStandbyRestoring {
            volume,
            backup,
            created,
        } => standby::restoring(state, volume, backup, *created),
        Request::ReportStandbyRestored {
            volume,
            backup,
            created,
        } => standby::restored(state, volume, backup, *created, at),
        Request::ReportStandbyFailed { volume, reason } => standby::failed(state, volume, reason),
        Request::ReportStandbyActivated { volume, note } => {
            standby::activated(state, volume, note.as_deref(), at)
        }
        Request::CreateRecurringJob(spec) => jobs::create(state, spec, at),
        Request::UpdateRecurringJob(spec) => jobs::update(state, spec),
        Request::DeleteRecurringJob { name } => jobs::delete(state, name),
        Request::FireRecurringJob { name } => jobs::fire(state, name, at),
        Request::StepRecurringJob { name, volume } => jobs::step(state, name, volume, at),
        Request::FinishRecurringJobVolume { name, volume } => jobs::finish(state, name, volume, at),
        Request::RaiseClusterVersion { version } => raise_cluster_version(state, *version),
        Request::UpgradeEngine { name, image } => upgrade::start(state, name, image, false, at),
        Request::ReportEngineUpgradeChecked { name, .. } => upgrade::checked(state, name, at),
        Request::ReportEngineUpgradeFailed { name, reason } => {
            upgrade::failed(state, name, reason, at)
        }
        Request::StartEngineUpgradeJob { image } => upgrade::start_job(state, image, at),
    }
}

/// Raises the cluster version; the same version again is a no-op (the leader may propose
/// it twice), a lower one is refused. Whether the proposer's build and every member support
/// `version` is checked before proposing (by the consensus layer): deciding it here would
/// make the outcome depend on the build applying the entry.
fn raise_cluster_version(
    state: &State,
    version: crate::ClusterVersion,
) -> Result<Vec<Event>, Rejection> {
    let current = state.cluster_version;
    if version < current {
        return Err(Rejection::conflict(format!(
            "the cluster runs cluster version {current}; it cannot go back to {version}"
        )));
    }
    if version == current {
        return Ok(Vec::new());
    }
    Ok(vec![Event::ClusterVersionRaised {
        from: current,
        to: version,
    }])
}

/// The volume backup `name` is of; empty for an unknown backup (its report is refused).
fn volume_of_backup(state: &State, name: &str) -> String {
    state
        .backups
        .get(name)
        .map(|b| b.volume.clone())
        .unwrap_or_default()
}

fn register_node(state: &State, spec: &NodeSpec, at: Timestamp) -> Result<Vec<Event>, Rejection> {
    check_subdomain("node", &spec.id)?;
    if state.nodes.contains_key(&spec.id) {
        return Err(Rejection::already_exists("node", &spec.id));
    }
    if spec.address.is_empty() {
        return Err(Rejection::invalid(format!(
            "node \"{}\" needs an address",
            spec.id
        )));
    }
    let mut disks = std::collections::BTreeMap::new();
    for disk in &spec.disks {
        if disks.insert(disk.id.clone(), new_disk(disk)?).is_some() {
            return Err(Rejection::invalid(format!(
                "node \"{}\" lists disk \"{}\" twice",
                spec.id, disk.id
            )));
        }
    }
    let node = Node {
        id: spec.id.clone(),
        address: spec.address.clone(),
        zone: spec.zone.clone(),
        labels: spec.labels.clone(),
        tags: spec.tags.clone(),
        schedulable: true,
        disks,
        ready: true,
        last_heartbeat: at,
    };
    with_retry(state, vec![Event::NodeRegistered { node }], at)
}

fn new_disk(spec: &DiskSpec) -> Result<Disk, Rejection> {
    check_label("disk", &spec.id)?;
    if spec.path.is_empty() {
        return Err(Rejection::invalid(format!(
            "disk \"{}\" needs a path",
            spec.id
        )));
    }
    let available = spec.available.unwrap_or(spec.capacity);
    check_disk_sizes(&spec.id, spec.capacity, spec.reserved, available)?;
    Ok(Disk {
        id: spec.id.clone(),
        path: spec.path.clone(),
        capacity: spec.capacity,
        reserved: spec.reserved,
        available,
        tags: spec.tags.clone(),
        schedulable: true,
        scheduled: 0,
        replica_count: 0,
    })
}

fn check_disk_sizes(
    disk: &str,
    capacity: u64,
    reserved: u64,
    available: u64,
) -> Result<(), Rejection> {
    if capacity == 0 {
        return Err(Rejection::invalid(format!(
            "disk \"{disk}\" capacity must be positive"
        )));
    }
    if reserved > capacity {
        return Err(Rejection::invalid(format!(
            "disk \"{disk}\" reserves {reserved} bytes, more than its capacity of {capacity} bytes"
        )));
    }
    if available > capacity {
        return Err(Rejection::invalid(format!(
            "disk \"{disk}\" reports {available} bytes available, more than its capacity of {capacity} bytes"
        )));
    }
    Ok(())
}

fn mark_dead_nodes(
    state: &State,
    timeout_secs: u64,
    at: Timestamp,
) -> Result<Vec<Event>, Rejection> {
    let mut events = Vec::new();
    let mut let_go: BTreeSet<&str> = BTreeSet::new();
    for node in state.nodes.values() {
        if !node.ready || node.last_heartbeat.plus_seconds(timeout_secs) > at {
            continue;
        }
        events.push(Event::NodeDown {
            id: node.id.clone(),
        });
        for replica in state.replicas.values() {
            if replica.node != node.id {
                continue;
            }
            let deleting = state
                .volumes
                .get(&replica.volume)
                .is_some_and(|v| v.state == VolumeState::Deleting);
            if deleting {
                // As in delete_volume: a deleted volume does not wait for a dead node.
                events.push(Event::ReplicaRemoved {
                    id: replica.id.clone(),
                });
                let_go.insert(&replica.id);
            } else if replica.mode != ReplicaMode::Error {
                events.push(Event::ReplicaFailed {
                    id: replica.id.clone(),
                    reason: format!("node \"{}\" is down (missed heartbeats)", node.id),
                    at,
                });
            }
        }
        for volume in state.volumes.values() {
            if volume
                .attachment
                .as_ref()
                .is_some_and(|a| a.node == node.id)
            {
                events.push(Event::VolumeDetached {
                    name: volume.name.clone(),
                });
            }
        }
    }
    for volume in state.volumes.values() {
        if volume.state == VolumeState::Deleting
            && !volume.replicas.is_empty()
            && volume
                .replicas
                .iter()
                .all(|id| let_go.contains(id.as_str()))
        {
            events.push(Event::VolumeDeleted {
                name: volume.name.clone(),
            });
        }
    }
    Ok(events)
}

fn remove_node(state: &State, id: &str) -> Result<Vec<Event>, Rejection> {
    let node = state.node(id)?;
    let replicas: u32 = node.disks.values().map(|d| d.replica_count).sum();
    if replicas > 0 {
        return Err(Rejection::precondition(format!(
            "node \"{id}\" still holds {replicas} replica{}; remove them or let them be replaced first",
            if replicas == 1 { "" } else { "s" }
        )));
    }
    if let Some(volume) = state
        .volumes
        .values()
        .find(|v| v.attachment.as_ref().is_some_and(|a| a.node == id))
    {
        return Err(Rejection::precondition(format!(
            "node \"{id}\" has volume \"{}\" attached; detach it first",
            volume.name
        )));
    }
    Ok(vec![Event::NodeRemoved { id: id.to_string() }])
}

fn create_volume(state: &State, spec: &VolumeSpec, at: Timestamp) -> Result<Vec<Event>, Rejection> {
    check_label("volume", &spec.name)?;
    check_labels(&spec.labels)?;
    check_volume_size(spec.size)?;
    let replicas = match spec.number_of_replicas {
        Some(count) => count,
        None => u8::try_from(state.settings.default_replica_count).unwrap_or(3),
    };
    check_replica_count(replicas)?;
    if state.volumes.contains_key(&spec.name) {
        return Err(Rejection::already_exists("volume", &spec.name));
    }
    let (restore, mut source_events) = match (&spec.from_backup, &spec.data_source) {
        (Some(_), Some(_)) => {
            return Err(Rejection::invalid(format!(
                "volume \"{}\" is restored from a backup or copied from a snapshot, not both",
                spec.name
            )));
        }
        (Some(url), None) => {
            restore::check_url(url)?;
            (Some(restore::new(url)), vec![])
        }
        (None, Some(source)) => {
            let (restore, events) = copy::start(state, &spec.name, spec.size, source, at)?;
            (Some(restore), events)
        }
        (None, None) => (None, vec![]),
    };
    let dr = if spec.standby {
        Some(standby::new(&spec.name, spec.from_backup.as_deref())?)
    } else {
        None
    };
    let stale_minutes = spec
        .stale_replica_timeout
        .unwrap_or(state.settings.stale_replica_timeout);
    let volume = Volume {
        name: spec.name.clone(),
        size: spec.size,
        number_of_replicas: replicas,
        data_locality: spec
            .data_locality
            .unwrap_or(state.settings.default_data_locality),
        node_selector: spec.node_selector.clone(),
        disk_selector: spec.disk_selector.clone(),
        stale_replica_timeout_secs: stale_minutes.saturating_mul(60),
        standby: spec.standby,
        state: VolumeState::Creating,
        robustness: Robustness::Faulted,
        epoch: Epoch(0),
        attachment: None,
        replicas: BTreeSet::new(),
        snapshots: Default::default(),
        condition: None,
        created_at: at,
        revert_to: None,
        restore,
        labels: spec.labels.clone(),
        user_attachments: 0,
        dr: dr.map(Box::new),
    };
    let mut events = vec![Event::VolumeCreated {
        volume: volume.clone(),
    }];
    let mut scheduler = Scheduler::new(state);
    let mut next = state.next_replica;
    schedule_missing(
        &volume,
        &[],
        &[],
        &mut scheduler,
        &mut next,
        at,
        &mut events,
    );
    // A volume restored from a backup (or copied from a snapshot) goes from creating
    // straight to attaching, for the engine that restores it.
    let ready = match volume.restore {
        Some(_) => restore::attach_new(state, &volume, &events)?,
        None => Event::VolumeDetached {
            name: spec.name.clone(),
        },
    };
    events.push(ready);
    // A clone's snapshot of its source comes first.
    source_events.extend(events);
    Ok(source_events)
}

/// What an `UpdateVolume` changes (`None`: kept).
struct VolumeChanges<'a> {
    replicas: Option<u8>,
    locality: Option<DataLocality>,
    labels: Option<&'a BTreeMap<String, String>>,
    stale_secs: Option<u64>,
}

/// The longest stale replica timeout a volume takes, as the setting's range (a year).
const STALE_REPLICA_TIMEOUT_MAX_SECS: u64 = 525_600 * 60;

fn update_volume(
    state: &State,
    name: &str,
    changes: VolumeChanges<'_>,
    at: Timestamp,
) -> Result<Vec<Event>, Rejection> {
    let VolumeChanges {
        replicas,
        locality,
        labels,
        stale_secs,
    } = changes;
    let volume = live_volume(state, name)?;
    let wanted = replicas.unwrap_or(volume.number_of_replicas);
    check_replica_count(wanted)?;
    if let Some(labels) = labels {
        check_labels(labels)?;
    }
    if let Some(secs) = stale_secs
        && secs > STALE_REPLICA_TIMEOUT_MAX_SECS
    {
        return Err(Rejection::invalid(format!(
            "stale replica timeout {secs} s is out of range: at most {STALE_REPLICA_TIMEOUT_MAX_SECS} s (525600 minutes)"
        )));
    }
    let mut events = vec![Event::VolumeUpdated {
        name: name.to_string(),
        number_of_replicas: wanted,
        data_locality: locality.unwrap_or(volume.data_locality),
    }];
    if let Some(secs) = stale_secs.filter(|s| *s != volume.stale_replica_timeout_secs) {
        events.push(Event::VolumeStaleReplicaTimeoutSet {
            name: name.to_string(),
            secs,
        });
    }
    if let Some(labels) = labels.filter(|l| **l != volume.labels) {
        events.push(Event::VolumeLabelsSet {
            name: name.to_string(),
            labels: labels.clone(),
        });
    }
    let have = volume.replicas.len();
    let wanted_len = usize::from(wanted);
    if have > wanted_len {
        // Drop the least useful first: failed, then rebuilding, then the most loaded disks.
        let mut ranked: Vec<&Replica> = state.replicas_of(volume).collect();
        ranked.sort_by_key(|r| {
            let load = state
                .disk(&r.node, &r.disk)
                .map(|d| d.scheduled)
                .unwrap_or(0);
            (
                std::cmp::Reverse(r.mode),
                std::cmp::Reverse(load),
                r.id.clone(),
            )
        });
        for replica in ranked.into_iter().take(have - wanted_len) {
            events.push(Event::ReplicaRemoved {
                id: replica.id.clone(),
            });
        }
    } else if have < wanted_len {
        let mut updated = volume.clone();
        updated.number_of_replicas = wanted;
        let existing = placements_of(state, volume, &[]);
        let mut scheduler = Scheduler::new(state);
        let mut next = state.next_replica;
        schedule_missing(
            &updated,
            &existing,
            &[],
            &mut scheduler,
            &mut next,
            at,
            &mut events,
        );
    }
    Ok(events)
}

fn expand_volume(state: &State, name: &str, size: u64) -> Result<Vec<Event>, Rejection> {
    let volume = live_volume(state, name)?;
    check_volume_size(size)?;
    if let Some(why) = volume.standby_blocks("be expanded") {
        return Err(Rejection::precondition(why));
    }
    if size < volume.size {
        return Err(Rejection::invalid(format!(
            "volume \"{name}\" cannot shrink from {} to {}",
            human_bytes(volume.size),
            human_bytes(size)
        )));
    }
    if size == volume.size {
        return Ok(vec![]);
    }
    let grown = size - volume.size;
    for replica in state.replicas_of(volume) {
        let disk = state.disk(&replica.node, &replica.disk)?;
        if disk.scheduled + grown > disk.schedulable_limit(&state.settings) {
            return Err(Rejection::precondition(format!(
                "disk \"{}/{}\" of replica \"{}\" has no room for {} more",
                replica.node,
                replica.disk,
                replica.id,
                human_bytes(grown)
            )));
        }
    }
    Ok(vec![Event::VolumeExpanded {
        name: name.to_string(),
        size,
    }])
}

fn delete_volume(state: &State, name: &str) -> Result<Vec<Event>, Rejection> {
    let volume = state.volume(name)?;
    if volume.state != VolumeState::Deleting {
        copy::check_volume_unused(state, name)?;
    }
    let mut events = vec![];
    match volume.state {
        VolumeState::Deleting => return Ok(vec![]),
        // Only the engine restoring it has it (users cannot attach it before the restore
        // completed, nor a standby ever): the restore stops with the volume.
        VolumeState::Attaching | VolumeState::Attached | VolumeState::Detaching
            if (volume.restoring() || volume.standby) && !auto_attach::internal(volume) =>
        {
            events.push(Event::VolumeDetached {
                name: name.to_string(),
            });
        }
        VolumeState::Attaching | VolumeState::Attached | VolumeState::Detaching => {
            if let Some(why) = auto_attach::busy(state, volume) {
                return Err(Rejection::precondition(why));
            }
            let node = volume.attachment.as_ref().map_or("", |a| a.node.as_str());
            return Err(Rejection::precondition(format!(
                "volume \"{name}\" is attached to node \"{node}\"; detach it first"
            )));
        }
        VolumeState::Creating | VolumeState::Detached => {}
    }
    events.push(Event::VolumeDeleting {
        name: name.to_string(),
    });
    // Replicas on nodes that are down are let go at once: no agent is there to remove
    // them, and the volume must not wait for the node. A node that returns reports their
    // directories as orphans.
    let mut left = volume.replicas.len();
    for replica in state.replicas_of(volume) {
        if !state.nodes.get(&replica.node).is_some_and(|n| n.ready) {
            events.push(Event::ReplicaRemoved {
                id: replica.id.clone(),
            });
            left -= 1;
        }
    }
    if left == 0 {
        events.push(Event::VolumeDeleted {
            name: name.to_string(),
        });
    }
    Ok(events)
}

fn attach_volume(
    state: &State,
    name: &str,
    node: &str,
    frontend: Frontend,
) -> Result<Vec<Event>, Rejection> {
    let volume = live_volume(state, name)?;
    let target = state.node(node)?;
    if let Some(why) = volume.restore_blocks_use() {
        return Err(Rejection::precondition(why));
    }
    if volume.standby {
        return Err(Rejection::precondition(format!(
            "volume \"{name}\" is a disaster-recovery standby; activate it before attaching"
        )));
    }
    // Refused rather than taken over: an engine with a frontend could write into a
    // snapshot asked for before the attach. The work is short; the caller retries.
    if let Some(why) = auto_attach::busy(state, volume) {
        return Err(Rejection::conflict(why));
    }
    if let Some(attachment) = &volume.attachment {
        if attachment.node == node && volume.state != VolumeState::Detaching {
            // Asking again for what is there is a no-op; asking for a device an attachment
            // has not got (or another one) is not.
            let same = frontend == Frontend::None
                || attachment.frontend == frontend
                || (frontend == Frontend::Auto && attachment.frontend.wants_device());
            if same {
                return Ok(vec![]);
            }
            return Err(Rejection::conflict(format!(
                "volume \"{name}\" is attached to node \"{node}\" with frontend {}; detach it \
                 before attaching it with frontend {}",
                attachment.frontend.as_str(),
                frontend.as_str()
            )));
        }
        return Err(Rejection::conflict(format!(
            "volume \"{name}\" is attached to node \"{}\"; detach it first",
            attachment.node
        )));
    }
    if !target.ready {
        return Err(Rejection::precondition(format!(
            "node \"{node}\" is down (missed heartbeats); volumes cannot be attached there"
        )));
    }
    if !target.schedulable {
        return Err(Rejection::precondition(format!(
            "node \"{node}\" is not schedulable; volumes cannot be attached there"
        )));
    }
    if volume.robustness == Robustness::Faulted {
        return Err(Rejection::precondition(format!(
            "volume \"{name}\" has no healthy replica; it cannot be attached until one is salvaged or rebuilt"
        )));
    }
    Ok(vec![Event::VolumeAttaching {
        name: name.to_string(),
        node: node.to_string(),
        epoch: Epoch(volume.epoch.0 + 1),
        frontend,
        internal: false,
    }])
}

fn remove_replica(state: &State, id: &str, at: Timestamp) -> Result<Vec<Event>, Rejection> {
    let replica = state.replica(id)?;
    let volume = state.volume(&replica.volume)?;
    let mut events = vec![Event::ReplicaRemoved { id: id.to_string() }];
    if volume.state == VolumeState::Deleting {
        if volume.replicas.len() == 1 {
            events.push(Event::VolumeDeleted {
                name: volume.name.clone(),
            });
        }
        return Ok(events);
    }
    let is_last_healthy = replica.mode == ReplicaMode::ReadWrite
        && state
            .replicas_of(volume)
            .filter(|r| r.mode == ReplicaMode::ReadWrite)
            .count()
            == 1;
    if is_last_healthy && volume.number_of_replicas > 0 {
        return Err(Rejection::precondition(format!(
            "replica \"{id}\" is the last healthy replica of volume \"{}\"; removing it would lose the data",
            volume.name
        )));
    }
    let mut scheduler = Scheduler::new(state);
    scheduler.release(&replica.node, &replica.disk, volume.size);
    let existing = placements_of(state, volume, &[id]);
    let mut next = state.next_replica;
    schedule_missing(
        volume,
        &existing,
        &[replica],
        &mut scheduler,
        &mut next,
        at,
        &mut events,
    );
    Ok(events)
}

fn replace_stale_replicas(state: &State, at: Timestamp) -> Result<Vec<Event>, Rejection> {
    let mut events = Vec::new();
    let mut scheduler = Scheduler::new(state);
    let mut next = state.next_replica;
    for volume in state.volumes.values() {
        // With no read-write replica there is nothing to rebuild a replacement from: the
        // failed replicas hold the only data (see salvage).
        if volume.state == VolumeState::Deleting || volume.robustness == Robustness::Faulted {
            continue;
        }
        let stale: Vec<&Replica> = state
            .replicas_of(volume)
            .filter(|r| {
                r.mode == ReplicaMode::Error
                    && r.failed_at.is_some_and(|t| {
                        t.plus_seconds(volume.replacement_wait_secs(&state.settings)) <= at
                    })
            })
            .collect();
        if stale.is_empty() {
            continue;
        }
        let gone: Vec<&str> = stale.iter().map(|r| r.id.as_str()).collect();
        for replica in &stale {
            scheduler.release(&replica.node, &replica.disk, volume.size);
            events.push(Event::ReplicaRemoved {
                id: replica.id.clone(),
            });
        }
        let existing = placements_of(state, volume, &gone);
        schedule_missing(
            volume,
            &existing,
            &stale,
            &mut scheduler,
            &mut next,
            at,
            &mut events,
        );
    }
    Ok(events)
}

/// Appends `change` (events about nodes, disks or settings), then retries the placement of
/// every volume short of replicas on the state as it will be after the change.
fn with_retry(state: &State, change: Vec<Event>, at: Timestamp) -> Result<Vec<Event>, Rejection> {
    if state.unscheduled.is_empty() {
        return Ok(change);
    }
    // Only nodes and settings matter to the scheduler; the rest stays in `state`.
    let mut after = State {
        nodes: state.nodes.clone(),
        settings: state.settings.clone(),
        ..State::default()
    };
    for event in &change {
        evolve(&mut after, event);
    }
    let view = State {
        volumes: Default::default(),
        replicas: Default::default(),
        ..after
    };
    let mut events = change;
    let mut scheduler = Scheduler::new(&view);
    let mut next = state.next_replica;
    for name in &state.unscheduled {
        if let Some(volume) = state.volumes.get(name) {
            let existing = placements_of(state, volume, &[]);
            schedule_missing(
                volume,
                &existing,
                &[],
                &mut scheduler,
                &mut next,
                at,
                &mut events,
            );
        }
    }
    Ok(events)
}

/// Schedules the replicas `volume` lacks beyond `existing`, appending `ReplicaScheduled`
/// events, and a `SchedulingFailed` when some cannot be placed and the reason is new.
fn schedule_missing(
    volume: &Volume,
    existing: &[Placement],
    avoid: &[&Replica],
    scheduler: &mut Scheduler<'_>,
    next: &mut u64,
    at: Timestamp,
    events: &mut Vec<Event>,
) {
    let wanted = usize::from(volume.number_of_replicas);
    if existing.len() >= wanted {
        return;
    }
    let local_node = match (volume.data_locality, &volume.attachment) {
        (DataLocality::BestEffort, Some(a)) if !existing.iter().any(|p| p.node == a.node) => {
            Some(a.node.as_str())
        }
        _ => None,
    };
    let demand = Demand {
        size: volume.size,
        node_selector: &volume.node_selector,
        disk_selector: &volume.disk_selector,
        local_node,
        existing: existing.to_vec(),
        avoid: avoid.iter().map(|r| r.node.clone()).collect(),
    };
    let (placed, shortfall) = scheduler.place(&demand, wanted - existing.len());
    // A volume that never had an engine holds only zeros: its new replicas are current.
    let mode = if volume.epoch.0 == 0 {
        ReplicaMode::ReadWrite
    } else {
        ReplicaMode::WriteOnly
    };
    let scheduled = existing.len() + placed.len();
    for placement in placed {
        events.push(Event::ReplicaScheduled {
            replica: Replica {
                id: format!("{}-r{}", volume.name, *next),
                volume: volume.name.clone(),
                node: placement.node,
                disk: placement.disk,
                mode,
                failed_at: None,
                failure: None,
                created_at: at,
                address: None,
                revision: None,
            },
        });
        *next += 1;
    }
    if let Some(reason) = shortfall {
        let scheduled = u8::try_from(scheduled).unwrap_or(u8::MAX);
        let condition = scheduling_condition(scheduled, volume.number_of_replicas, &reason);
        if volume.condition.as_deref() != Some(condition.as_str()) {
            events.push(Event::SchedulingFailed {
                volume: volume.name.clone(),
                scheduled,
                wanted: volume.number_of_replicas,
                reason,
            });
        }
    }
}

/// Where the replicas of `volume` are, leaving out the ids in `without`.
fn placements_of(state: &State, volume: &Volume, without: &[&str]) -> Vec<Placement> {
    state
        .replicas_of(volume)
        .filter(|r| !without.contains(&r.id.as_str()))
        .map(|r| Placement {
            node: r.node.clone(),
            disk: r.disk.clone(),
        })
        .collect()
}

/// A volume that exists and is not being deleted.
pub(crate) fn live_volume<'a>(state: &'a State, name: &str) -> Result<&'a Volume, Rejection> {
    let volume = state.volume(name)?;
    if volume.state == VolumeState::Deleting {
        return Err(Rejection::precondition(format!(
            "volume \"{name}\" is being deleted"
        )));
    }
    Ok(volume)
}

fn check_epoch(volume: &Volume, epoch: Epoch) -> Result<(), Rejection> {
    if epoch != volume.epoch {
        return Err(Rejection::conflict(format!(
            "volume \"{}\" is at epoch {}, the report is for epoch {}",
            volume.name, volume.epoch.0, epoch.0
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RejectionKind::*;
    use crate::testkit::{Cluster, GIB, disk};

    fn three_nodes() -> Cluster {
        let mut c = Cluster::new();
        for n in ["n1", "n2", "n3"] {
            c.node(n, "", 100);
        }
        c
    }

    fn create(name: &str, size: u64, replicas: Option<u8>) -> Request {
        Request::CreateVolume(VolumeSpec {
            name: name.into(),
            size,
            number_of_replicas: replicas,
            ..Default::default()
        })
    }

    #[test]
    fn bad_volume_names_are_rejected_with_the_rule() {
        let mut c = three_nodes();
        for bad in ["DB", "-db", "db-", "", "a_b", &"x".repeat(64)] {
            let message = c.rejected(create(bad, GIB, None), InvalidArgument);
            assert!(message.contains("DNS-1123 label"), "{message}");
            assert!(message.contains(&format!("\"{bad}\"")), "{message}");
        }
        c.ok(create(&"x".repeat(63), 2 * 1024 * 1024, Some(1)));
    }

    #[test]
    fn sizes_must_be_positive_multiples_of_2_mib() {
        let mut c = three_nodes();
        assert_eq!(
            c.rejected(create("db", 0, None), InvalidArgument),
            "volume size must be positive"
        );
        let message = c.rejected(create("db", 3 * 1024 * 1024, None), InvalidArgument);
        assert_eq!(
            message,
            "volume size 3145728 bytes is not a multiple of 2 MiB (2097152 bytes)"
        );
    }

    #[test]
    fn replica_count_is_1_to_20() {
        let mut c = three_nodes();
        for bad in [0, 21] {
            let message = c.rejected(create("db", GIB, Some(bad)), InvalidArgument);
            assert_eq!(
                message,
                format!("number of replicas {bad} is out of range: it must be between 1 and 20")
            );
        }
    }

    #[test]
    fn the_stale_replica_timeout_of_a_volume_can_be_changed_within_a_year() {
        let mut c = three_nodes();
        c.volume("db", 1, 3);
        let update = |secs: u64| Request::UpdateVolume {
            name: "db".into(),
            number_of_replicas: None,
            data_locality: None,
            labels: None,
            stale_replica_timeout_secs: Some(secs),
        };
        let events = c.ok(update(300));
        assert!(
            events.contains(&Event::VolumeStaleReplicaTimeoutSet {
                name: "db".into(),
                secs: 300
            }),
            "{events:?}"
        );
        assert_eq!(c.state.volumes["db"].stale_replica_timeout_secs, 300);
        assert!(
            !c.ok(update(300))
                .iter()
                .any(|e| matches!(e, Event::VolumeStaleReplicaTimeoutSet { .. })),
            "unchanged"
        );
        let message = c.rejected(update(STALE_REPLICA_TIMEOUT_MAX_SECS + 1), InvalidArgument);
        assert!(message.contains("out of range"), "{message}");
        assert_eq!(c.state.volumes["db"].stale_replica_timeout_secs, 300);
    }

    #[test]
    fn duplicate_and_unknown_volumes() {
        let mut c = three_nodes();
        c.volume("db", 1, 3);
        assert_eq!(
            c.rejected(create("db", GIB, None), AlreadyExists),
            "volume \"db\" already exists"
        );
        for request in [
            Request::DeleteVolume {
                name: "nope".into(),
            },
            Request::ExpandVolume {
                name: "nope".into(),
                size: GIB,
            },
            Request::AttachVolume {
                name: "nope".into(),
                node: "n1".into(),
                frontend: Default::default(),
            },
            Request::CreateSnapshot {
                labels: Default::default(),
                volume: "nope".into(),
                name: "s1".into(),
            },
        ] {
            assert_eq!(c.rejected(request, NotFound), "volume \"nope\" not found");
        }
    }

    #[test]
    fn volumes_never_shrink() {
        let mut c = three_nodes();
        c.volume("db", 2, 3);
        let message = c.rejected(
            Request::ExpandVolume {
                name: "db".into(),
                size: GIB,
            },
            InvalidArgument,
        );
        assert_eq!(message, "volume \"db\" cannot shrink from 2 GiB to 1 GiB");
        c.ok(Request::ExpandVolume {
            name: "db".into(),
            size: 4 * GIB,
        });
        assert_eq!(c.state.volumes["db"].size, 4 * GIB);
        assert_eq!(c.state.nodes["n1"].disks["d1"].scheduled, 4 * GIB);
    }

    #[test]
    fn expansion_needs_room_on_every_replica_disk() {
        let mut c = three_nodes();
        c.volume("db", 60, 3);
        let message = c.rejected(
            Request::ExpandVolume {
                name: "db".into(),
                size: 120 * GIB,
            },
            PreconditionFailed,
        );
        assert!(message.contains("has no room for 60 GiB more"), "{message}");
    }

    #[test]
    fn attach_rules() {
        let mut c = three_nodes();
        c.volume("db", 1, 3);
        let attach = |node: &str| Request::AttachVolume {
            name: "db".into(),
            node: node.into(),
            frontend: Default::default(),
        };
        assert_eq!(c.rejected(attach("n9"), NotFound), "node \"n9\" not found");
        c.ok(Request::SetNodeSchedulable {
            id: "n3".into(),
            schedulable: false,
        });
        assert_eq!(
            c.rejected(attach("n3"), PreconditionFailed),
            "node \"n3\" is not schedulable; volumes cannot be attached there"
        );
        let events = c.ok(attach("n1"));
        assert_eq!(
            events,
            vec![Event::VolumeAttaching {
                name: "db".into(),
                node: "n1".into(),
                epoch: Epoch(1),
                frontend: Frontend::None,
                internal: false,
            }]
        );
        assert_eq!(
            c.ok(attach("n1")),
            vec![],
            "attaching again to the same node is a no-op"
        );
        assert_eq!(
            c.rejected(attach("n2"), Conflict),
            "volume \"db\" is attached to node \"n1\"; detach it first"
        );
        assert_eq!(
            c.rejected(
                Request::DeleteVolume { name: "db".into() },
                PreconditionFailed
            ),
            "volume \"db\" is attached to node \"n1\"; detach it first"
        );
    }

    #[test]
    fn every_attach_takes_a_bigger_epoch_and_stale_engines_are_refused() {
        let mut c = three_nodes();
        c.volume("db", 1, 3);
        for expected in 1..=3u64 {
            c.ok(Request::AttachVolume {
                name: "db".into(),
                node: "n2".into(),
                frontend: Default::default(),
            });
            assert_eq!(c.state.volumes["db"].epoch, Epoch(expected));
            let stale = Request::ReportEngineStarted {
                name: "db".into(),
                epoch: Epoch(expected - 1),
                endpoint: "nbd://x".into(),
                frontend: Default::default(),
                device: None,
            };
            assert_eq!(
                c.rejected(stale, Conflict),
                format!(
                    "volume \"db\" is at epoch {expected}, the report is for epoch {}",
                    expected - 1
                )
            );
            c.ok(Request::ReportEngineStarted {
                name: "db".into(),
                epoch: Epoch(expected),
                endpoint: "nbd://x".into(),
                frontend: Default::default(),
                device: None,
            });
            assert_eq!(c.state.volumes["db"].state, VolumeState::Attached);
            c.ok(Request::DetachVolume { name: "db".into() });
            assert_eq!(c.state.volumes["db"].state, VolumeState::Detaching);
            c.ok(Request::ReportEngineStopped {
                name: "db".into(),
                epoch: Epoch(expected),
            });
            assert_eq!(c.state.volumes["db"].state, VolumeState::Detached);
            assert_eq!(c.state.volumes["db"].attachment, None);
        }
    }

    #[test]
    fn an_engine_that_died_restarts_on_its_node_under_a_bigger_epoch_behind_its_device() {
        let mut c = three_nodes();
        c.volume("db", 1, 3);
        c.ok(Request::AttachVolume {
            name: "db".into(),
            node: "n2".into(),
            frontend: Frontend::Auto,
        });
        c.ok(Request::ReportEngineStarted {
            name: "db".into(),
            epoch: Epoch(1),
            endpoint: "nbd://a".into(),
            frontend: Frontend::Fuse,
            device: Some("/dev/loop3".into()),
        });
        let attached = c.state.volumes["db"].attachment.clone().expect("attached");
        assert_eq!(attached.frontend, Frontend::Fuse);
        assert_eq!(attached.device.as_deref(), Some("/dev/loop3"));
        // Asking again for a device is a no-op; asking for none keeps the device too.
        for frontend in [Frontend::Auto, Frontend::Fuse, Frontend::None] {
            c.ok(Request::AttachVolume {
                name: "db".into(),
                node: "n2".into(),
                frontend,
            });
        }
        let message = c.rejected(
            Request::AttachVolume {
                name: "db".into(),
                node: "n2".into(),
                frontend: Frontend::Nbd,
            },
            Conflict,
        );
        assert!(message.contains("with frontend fuse"), "{message}");

        // The engine of epoch 1 died: a new one starts on n2, behind the same device; a
        // second report of that death is refused as stale.
        c.ok(Request::ReportEngineDied {
            name: "db".into(),
            epoch: Epoch(1),
        });
        let volume = &c.state.volumes["db"];
        assert_eq!(volume.state, VolumeState::Attaching);
        assert_eq!(volume.epoch, Epoch(2));
        let restarting = volume.attachment.clone().expect("still attached");
        assert_eq!(restarting.node, "n2");
        assert_eq!(restarting.epoch, Epoch(2));
        assert_eq!(restarting.endpoint, None);
        assert_eq!(restarting.device.as_deref(), Some("/dev/loop3"));
        c.rejected(
            Request::ReportEngineDied {
                name: "db".into(),
                epoch: Epoch(1),
            },
            Conflict,
        );
        c.ok(Request::ReportEngineStarted {
            name: "db".into(),
            epoch: Epoch(2),
            endpoint: "nbd://b".into(),
            frontend: Frontend::Fuse,
            device: Some("/dev/loop3".into()),
        });
        let volume = &c.state.volumes["db"];
        assert_eq!(volume.state, VolumeState::Attached);
        assert_eq!(
            volume
                .attachment
                .as_ref()
                .and_then(|a| a.endpoint.as_deref()),
            Some("nbd://b")
        );
    }

    #[test]
    fn faulted_volumes_cannot_be_attached() {
        // (Standby volumes: state/src/standby.rs.)
        let mut c = three_nodes();
        c.volume("db", 1, 1);
        let id = c.replicas("db")[0].id.clone();
        c.ok(Request::ReportReplicaFailed {
            id,
            reason: "disk gone".into(),
        });
        let message = c.rejected(
            Request::AttachVolume {
                name: "db".into(),
                node: "n1".into(),
                frontend: Default::default(),
            },
            PreconditionFailed,
        );
        assert_eq!(
            message,
            "volume \"db\" has no healthy replica; it cannot be attached until one is salvaged or rebuilt"
        );
    }

    #[test]
    fn settings_reject_unknown_keys_and_bad_values_naming_the_key() {
        let mut c = Cluster::new();
        let set = |k: &str, v: &str| Request::SetSetting {
            key: k.into(),
            value: v.into(),
        };
        let message = c.rejected(set("replicaSoftAntiAfinity", "true"), InvalidArgument);
        assert!(
            message.starts_with("unknown setting \"replicaSoftAntiAfinity\""),
            "{message}"
        );
        assert_eq!(
            c.rejected(set("replicaSoftAntiAffinity", "yes"), InvalidArgument),
            "setting \"replicaSoftAntiAffinity\": \"yes\" is not a boolean (true or false)"
        );
        assert_eq!(
            c.rejected(
                set("storageMinimalAvailablePercentage", "101"),
                InvalidArgument
            ),
            "setting \"storageMinimalAvailablePercentage\": 101 is out of range 0..=100"
        );
        assert_eq!(
            c.rejected(set("defaultReplicaCount", "-1"), InvalidArgument),
            "setting \"defaultReplicaCount\": \"-1\" is not a non-negative integer"
        );
        assert_eq!(
            c.rejected(set("defaultDataLocality", "strict"), InvalidArgument),
            "setting \"defaultDataLocality\": \"strict\" is not a data locality (disabled or best-effort)"
        );
        let message = c.rejected(set("backupTarget", "ftp://x"), InvalidArgument);
        assert!(
            message.starts_with("setting \"backupTarget\": \"ftp://x\" is not a backup target"),
            "{message}"
        );
        let message = c.rejected(
            set("volumeAttachmentRecoveryPolicy", "sometimes"),
            InvalidArgument,
        );
        assert_eq!(
            message,
            "setting \"volumeAttachmentRecoveryPolicy\": \"sometimes\" is not one of never, wait, immediate"
        );
        // Aliases from Longhorn's values.yaml land on the canonical key.
        c.set("priority-class", "high-priority");
        assert_eq!(
            c.state.settings.get("priorityClass").as_deref(),
            Some("high-priority")
        );
        c.set("defaultReplicaCount", "2");
        assert_eq!(c.state.settings.default_replica_count, 2);
        assert_eq!(
            c.ok(set("defaultReplicaCount", "2")),
            vec![],
            "an unchanged value makes no event"
        );
    }

    #[test]
    fn every_seed_default_setting_key_is_known() {
        // The keys of the defaultSettings example in the Longhorn introduction.
        for key in [
            "backupTarget",
            "backupTargetCredentialSecret",
            "createDefaultDiskLabeledNodes",
            "defaultDataPath",
            "replicaSoftAntiAffinity",
            "storageOverProvisioningPercentage",
            "storageMinimalAvailablePercentage",
            "upgradeChecker",
            "defaultReplicaCount",
            "defaultDataLocality",
            "guaranteedEngineCPU",
            "defaultLonghornStaticStorageClass",
            "backupstorePollInterval",
            "taintToleration",
            "systemManagedComponentsNodeSelector",
            "priority-class",
            "autoSalvage",
            "disableSchedulingOnCordonedNode",
            "replicaZoneSoftAntiAffinity",
            "volumeAttachmentRecoveryPolicy",
            "nodeDownPodDeletionPolicy",
            "mkfsExt4Parameters",
            "guaranteed-engine-manager-cpu",
            "guaranteed-replica-manager-cpu",
            "replicaDiskSoftAntiAffinity",
            "staleReplicaTimeout",
        ] {
            assert!(Settings::canonical_key(key).is_some(), "{key} is unknown");
        }
        let defaults = Settings::default();
        assert_eq!(
            defaults.get("storageOverProvisioningPercentage").as_deref(),
            Some("100")
        );
        assert_eq!(
            defaults.get("storageMinimalAvailablePercentage").as_deref(),
            Some("25")
        );
        assert_eq!(defaults.get("defaultReplicaCount").as_deref(), Some("3"));
        assert_eq!(
            defaults.get("replicaSoftAntiAffinity").as_deref(),
            Some("false")
        );
        assert!(Settings::describe().contains("staleReplicaTimeout (default \"2880\")"));
    }

    #[test]
    fn node_and_disk_rejections() {
        let mut c = three_nodes();
        let register = |id: &str, address: &str| {
            Request::RegisterNode(NodeSpec {
                id: id.into(),
                address: address.into(),
                ..Default::default()
            })
        };
        assert_eq!(
            c.rejected(register("n1", "x:1"), AlreadyExists),
            "node \"n1\" already exists"
        );
        let message = c.rejected(register("Bad_Node", "x:1"), InvalidArgument);
        assert!(message.contains("DNS-1123 subdomain"), "{message}");
        assert_eq!(
            c.rejected(register("n4", ""), InvalidArgument),
            "node \"n4\" needs an address"
        );
        let mut big_reserve = disk("d2", 10);
        big_reserve.reserved = 11 * GIB;
        let message = c.rejected(
            Request::AddDisk {
                node: "n1".into(),
                disk: big_reserve,
            },
            InvalidArgument,
        );
        assert!(message.contains("more than its capacity"), "{message}");
        assert_eq!(
            c.rejected(
                Request::AddDisk {
                    node: "n1".into(),
                    disk: disk("d1", 10)
                },
                AlreadyExists
            ),
            "disk \"n1/d1\" already exists"
        );
        assert_eq!(
            c.rejected(
                Request::RemoveDisk {
                    node: "n1".into(),
                    disk: "zz".into()
                },
                NotFound
            ),
            "disk \"n1/zz\" not found"
        );
        c.volume("db", 1, 3);
        assert_eq!(
            c.rejected(Request::RemoveNode { id: "n1".into() }, PreconditionFailed),
            "node \"n1\" still holds 1 replica; remove them or let them be replaced first"
        );
        assert_eq!(
            c.rejected(
                Request::RemoveDisk {
                    node: "n1".into(),
                    disk: "d1".into()
                },
                PreconditionFailed
            ),
            "disk \"n1/d1\" still holds 1 replica; remove or move them first"
        );
        c.ok(Request::RegisterNode(NodeSpec {
            id: "n4".into(),
            address: "n4:1".into(),
            ..Default::default()
        }));
        c.ok(Request::RemoveNode { id: "n4".into() });
        assert!(!c.state.nodes.contains_key("n4"));
    }

    #[test]
    fn snapshot_rejections() {
        let mut c = three_nodes();
        c.volume("db", 1, 3);
        let snap = |name: &str| Request::CreateSnapshot {
            labels: Default::default(),
            volume: "db".into(),
            name: name.into(),
        };
        c.attach("db", "n1");
        let message = c.rejected(snap("Nightly"), InvalidArgument);
        assert!(
            message.starts_with("snapshot name \"Nightly\" is invalid"),
            "{message}"
        );
        c.ok(snap("s1"));
        assert_eq!(
            c.rejected(snap("s1"), AlreadyExists),
            "snapshot \"db/s1\" already exists"
        );
        assert_eq!(
            c.rejected(
                Request::DeleteSnapshot {
                    volume: "db".into(),
                    name: "s2".into()
                },
                NotFound
            ),
            "snapshot \"db/s2\" not found"
        );
        assert_eq!(
            c.rejected(
                Request::DeleteSnapshot {
                    volume: "db".into(),
                    name: "s1".into()
                },
                Conflict
            ),
            "snapshot \"db/s1\" is still being taken; delete it once it is ready"
        );
        c.ok(Request::ReportSnapshotTaken {
            volume: "db".into(),
            name: "s1".into(),
        });
        c.set("snapshotMaxCount", "2");
        c.ok(snap("s2"));
        let message = c.rejected(snap("s3"), PreconditionFailed);
        assert!(message.contains("already has 2 snapshots"), "{message}");
        c.ok(Request::DeleteSnapshot {
            volume: "db".into(),
            name: "s1".into(),
        });
        // A deleting snapshot still counts until the engine merged it away.
        c.rejected(snap("s3"), PreconditionFailed);
        c.ok(Request::ReportSnapshotRemoved {
            volume: "db".into(),
            name: "s1".into(),
        });
        c.ok(snap("s3"));
    }

    #[test]
    fn replica_report_rejections() {
        let mut c = three_nodes();
        c.volume("db", 1, 1);
        let id = c.replicas("db")[0].id.clone();
        assert_eq!(
            c.rejected(
                Request::ReportReplicaFailed {
                    id: "r9".into(),
                    reason: "x".into()
                },
                NotFound
            ),
            "replica \"r9\" not found"
        );
        let message = c.rejected(
            Request::RemoveReplica { id: id.clone() },
            PreconditionFailed,
        );
        assert!(message.contains("last healthy replica"), "{message}");
        assert!(
            c.rejected(
                Request::ReportReplicaRebuilding { id: id.clone() },
                Conflict
            )
            .contains("is read-write")
        );
        c.ok(Request::ReportReplicaFailed {
            id: id.clone(),
            reason: "io error".into(),
        });
        assert!(
            c.rejected(Request::ReportReplicaRebuilt { id: id.clone() }, Conflict)
                .contains("must be rebuilt again")
        );
        // Salvage: a detached volume's failed replica may be declared healthy.
        c.ok(Request::ReportReplicaHealthy { id: id.clone() });
        assert_eq!(c.state.volumes["db"].robustness, Robustness::Healthy);
        c.ok(Request::AttachVolume {
            name: "db".into(),
            node: "n1".into(),
            frontend: Default::default(),
        });
        c.ok(Request::ReportReplicaFailed {
            id: id.clone(),
            reason: "io error".into(),
        });
        let message = c.rejected(Request::ReportReplicaHealthy { id }, PreconditionFailed);
        assert!(
            message.contains("while volume \"db\" is detached"),
            "{message}"
        );
    }

    #[test]
    fn deleting_a_volume_waits_for_its_replicas() {
        let mut c = three_nodes();
        c.volume("db", 1, 3);
        c.ok(Request::DeleteVolume { name: "db".into() });
        assert_eq!(c.state.volumes["db"].state, VolumeState::Deleting);
        let message = c.rejected(
            Request::AttachVolume {
                name: "db".into(),
                node: "n1".into(),
                frontend: Default::default(),
            },
            PreconditionFailed,
        );
        assert_eq!(message, "volume \"db\" is being deleted");
        let ids: Vec<String> = c.replicas("db").into_iter().map(|r| r.id).collect();
        for (i, id) in ids.iter().enumerate() {
            let events = c.ok(Request::RemoveReplica { id: id.clone() });
            let deleted = events.contains(&Event::VolumeDeleted { name: "db".into() });
            assert_eq!(deleted, i == ids.len() - 1);
        }
        assert!(c.state.volumes.is_empty() && c.state.replicas.is_empty());
        assert!(c.state.nodes.values().all(|n| n.disks["d1"].scheduled == 0));
    }

    #[test]
    fn a_node_that_misses_heartbeats_goes_down_and_frees_its_volumes() {
        let mut c = Cluster::new();
        for n in ["n1", "n2", "n3", "n4"] {
            c.node(n, "", 100);
        }
        c.volume("db", 1, 3);
        let on_n1 = c.nodes_of("db").contains(&"n1".to_string());
        c.ok(Request::AttachVolume {
            name: "db".into(),
            node: "n1".into(),
            frontend: Default::default(),
        });
        for n in ["n2", "n3", "n4"] {
            c.ok(Request::Heartbeat { node: n.into() });
        }
        assert_eq!(
            c.ok(Request::MarkDeadNodes { timeout_secs: 60 }),
            vec![],
            "nobody is late yet"
        );
        c.clock += 61_000;
        for n in ["n2", "n3", "n4"] {
            c.ok(Request::Heartbeat { node: n.into() });
        }
        let events = c.ok(Request::MarkDeadNodes { timeout_secs: 60 });
        assert!(
            events.contains(&Event::NodeDown { id: "n1".into() }),
            "{events:?}"
        );
        assert!(!c.state.nodes["n1"].ready);
        let volume = &c.state.volumes["db"];
        assert_eq!(
            volume.state,
            VolumeState::Detached,
            "the engine died with its node"
        );
        assert_eq!(volume.attachment, None);
        if on_n1 {
            assert_eq!(volume.robustness, Robustness::Degraded);
        }
        assert_eq!(
            c.rejected(
                Request::AttachVolume {
                    name: "db".into(),
                    node: "n1".into(),
                    frontend: Default::default(),
                },
                PreconditionFailed
            ),
            "node \"n1\" is down (missed heartbeats); volumes cannot be attached there"
        );
        c.ok(Request::AttachVolume {
            name: "db".into(),
            node: "n2".into(),
            frontend: Default::default(),
        });
        assert_eq!(
            c.state.volumes["db"].epoch,
            Epoch(2),
            "re-attached elsewhere under a new epoch"
        );
        c.ok(Request::Heartbeat { node: "n1".into() });
        assert!(c.state.nodes["n1"].ready);
    }

    #[test]
    fn a_deleted_volume_does_not_wait_for_dead_nodes() {
        let mut c = Cluster::new();
        for n in ["n1", "n2", "n3"] {
            c.node(n, "", 100);
        }
        c.volume("a", 1, 3);
        c.volume("b", 1, 1);
        let dead = c.nodes_of("b")[0].clone();
        c.clock += 61_000;
        for n in ["n1", "n2", "n3"] {
            if n != dead {
                c.ok(Request::Heartbeat { node: n.into() });
            }
        }
        c.ok(Request::MarkDeadNodes { timeout_secs: 60 });
        assert!(!c.state.nodes[&dead].ready);

        // Deleted while a replica's node is down: that replica is let go at once, the
        // others wait for their agents.
        let events = c.ok(Request::DeleteVolume { name: "a".into() });
        let on_dead = c
            .replicas("a")
            .into_iter()
            .filter(|r| r.node == dead)
            .count();
        assert_eq!(on_dead, 0, "{events:?}");
        assert_eq!(c.replicas("a").len(), 2);
        for replica in c.replicas("a") {
            c.ok(Request::RemoveReplica { id: replica.id });
        }
        assert!(
            !c.state.volumes.contains_key("a"),
            "deleted with its last replica"
        );

        // Its only replica on the dead node: deleted at once.
        c.ok(Request::DeleteVolume { name: "b".into() });
        assert!(!c.state.volumes.contains_key("b"));
        let disk = &c.state.nodes[&dead].disks["d1"];
        assert_eq!(
            (disk.scheduled, disk.replica_count),
            (0, 0),
            "disk accounting freed"
        );
    }

    #[test]
    fn a_node_dying_while_its_volume_is_deleted_lets_the_replica_go() {
        let mut c = Cluster::new();
        for n in ["n1", "n2"] {
            c.node(n, "", 100);
        }
        c.volume("db", 1, 2);
        c.ok(Request::DeleteVolume { name: "db".into() });
        let on_n1 = c
            .replicas("db")
            .into_iter()
            .find(|r| r.node == "n1")
            .expect("on n1");
        c.ok(Request::RemoveReplica { id: on_n1.id });
        assert!(c.state.volumes.contains_key("db"), "waits for n2's agent");
        c.clock += 61_000;
        c.ok(Request::Heartbeat { node: "n1".into() });
        let events = c.ok(Request::MarkDeadNodes { timeout_secs: 60 });
        assert!(
            events.contains(&Event::VolumeDeleted { name: "db".into() }),
            "{events:?}"
        );
        assert!(!c.state.volumes.contains_key("db"));
    }
}
