//! Events: what happened, as decided from a command. [`crate::evolve`] applies them; the
//! log keeps them by index for subscribers (node agents, the k8s mirror, `shorthorn watch`).
//!
//! Serde-tagged (`"type"`) like commands, so old logs stay readable.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{
    Backup, Bytes, DataLocality, Disk, Epoch, Frontend, Node, Replica, Snapshot, Timestamp, Volume,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Event {
    NodeRegistered {
        node: Node,
    },
    NodeUpdated {
        id: String,
        address: String,
        zone: String,
        labels: BTreeMap<String, String>,
        tags: BTreeSet<String>,
    },
    NodeSchedulingChanged {
        id: String,
        schedulable: bool,
    },
    NodeRemoved {
        id: String,
    },
    /// The node's agent was heard from; a node that was down is ready again.
    NodeHeartbeat {
        id: String,
        at: Timestamp,
    },
    /// The node missed its heartbeats.
    NodeDown {
        id: String,
    },
    DiskAdded {
        node: String,
        disk: Disk,
    },
    DiskUpdated {
        node: String,
        disk: String,
        capacity: Bytes,
        reserved: Bytes,
        available: Bytes,
        tags: BTreeSet<String>,
    },
    DiskSchedulingChanged {
        node: String,
        disk: String,
        schedulable: bool,
    },
    DiskRemoved {
        node: String,
        disk: String,
    },
    /// A volume was created (state `creating`); its placements follow as `ReplicaScheduled`.
    VolumeCreated {
        volume: Volume,
    },
    #[serde(rename_all = "camelCase")]
    VolumeUpdated {
        name: String,
        number_of_replicas: u8,
        data_locality: DataLocality,
    },
    VolumeExpanded {
        name: String,
        size: Bytes,
    },
    VolumeStaleReplicaTimeoutSet {
        name: String,
        secs: u64,
    },
    /// The volume is attaching on `node` under `epoch` (bigger than any before).
    VolumeAttaching {
        name: String,
        node: String,
        epoch: Epoch,
        #[serde(default)]
        frontend: Frontend,
        /// Attached by the log for snapshot or backup work on a detached volume.
        #[serde(default)]
        internal: bool,
    },
    VolumeAttached {
        name: String,
        epoch: Epoch,
        endpoint: String,
        #[serde(default)]
        frontend: Frontend,
        #[serde(default)]
        device: Option<String>,
    },
    /// The attachment's node cannot set up the kernel device asked for.
    DeviceFailed {
        name: String,
        reason: String,
    },
    /// The engine exited while attached: a new one starts on the same node under `epoch`
    /// (bigger than any before), behind the same kernel device.
    EngineRestarting {
        name: String,
        epoch: Epoch,
    },
    VolumeDetaching {
        name: String,
    },
    /// The volume has no engine (after creation, detach, or an engine exit).
    VolumeDetached {
        name: String,
    },
    VolumeDeleting {
        name: String,
    },
    VolumeDeleted {
        name: String,
    },
    /// The scheduler placed a replica; its node agent creates the directory.
    ReplicaScheduled {
        replica: Replica,
    },
    /// The scheduler could not give a volume all its replicas, and says why.
    SchedulingFailed {
        volume: String,
        scheduled: u8,
        wanted: u8,
        reason: String,
    },
    ReplicaFailed {
        id: String,
        reason: String,
        at: Timestamp,
    },
    ReplicaRebuilding {
        id: String,
    },
    ReplicaStarted {
        id: String,
        address: String,
    },
    /// The replica serves reads and writes (rebuilt, or salvaged).
    ReplicaHealthy {
        id: String,
    },
    ReplicaRemoved {
        id: String,
    },
    /// A setting took a new (validated, canonical) value.
    SettingChanged {
        key: String,
        value: String,
    },
    /// A snapshot was asked for (pending until the engine takes it).
    VolumeLabelsSet {
        name: String,
        labels: BTreeMap<String, String>,
    },
    RecurringJobCreated {
        job: crate::RecurringJob,
    },
    RecurringJobUpdated {
        spec: crate::RecurringJobSpec,
    },
    RecurringJobDeleted {
        name: String,
    },
    /// A job's run of `slot` began over `volumes` (none: the slot is marked run).
    RecurringJobFired {
        name: String,
        slot: Timestamp,
        at: Timestamp,
        volumes: Vec<String>,
    },
    /// The run began making `item` (a snapshot or backup) of `volume`.
    #[serde(rename_all = "camelCase")]
    RecurringJobVolumeStarted {
        name: String,
        volume: String,
        item: String,
        /// The volume's user attachment count, when it was not attached by a user.
        unchanged_since: Option<u64>,
    },
    RecurringJobVolumeFinished {
        name: String,
        volume: String,
        outcome: crate::JobOutcome,
        at: Timestamp,
    },
    SnapshotCreated {
        snapshot: Snapshot,
    },
    SnapshotTaken {
        volume: String,
        name: String,
    },
    /// A pending snapshot was dropped: the engine failed it, or the volume detached first.
    SnapshotFailed {
        volume: String,
        name: String,
        reason: String,
    },
    SnapshotDeleting {
        volume: String,
        name: String,
    },
    SnapshotDeleted {
        volume: String,
        name: String,
    },
    RevertRequested {
        volume: String,
        name: String,
    },
    /// The volume holds the snapshot's data again; `dropped` snapshots were newer.
    SnapshotReverted {
        volume: String,
        name: String,
        dropped: Vec<String>,
    },
    RevertFailed {
        volume: String,
        name: String,
        reason: String,
    },
    ReplicaRevisionReported {
        id: String,
        revision: u64,
    },
    /// Every replica had failed; this one held the newest data and serves again. An
    /// attached volume gets a new engine under `epoch`.
    ReplicaSalvaged {
        id: String,
        volume: String,
        epoch: Option<Epoch>,
    },
    /// A backup was asked for (in progress).
    BackupCreated {
        backup: Backup,
    },
    BackupStarted {
        name: String,
        volume: String,
    },
    #[serde(rename_all = "camelCase")]
    BackupProgressed {
        name: String,
        volume: String,
        progress: u8,
        blocks: u64,
        uploaded_bytes: u64,
    },
    #[serde(rename_all = "camelCase")]
    BackupCompleted {
        name: String,
        volume: String,
        url: String,
        size: Bytes,
        blocks: u64,
        uploaded_bytes: u64,
    },
    BackupFailed {
        name: String,
        volume: String,
        reason: String,
    },
    BackupDeleted {
        name: String,
        volume: String,
    },
    /// The backup volumes on the target changed since the last sync: these are all of them.
    BackupVolumesSynced {
        target: String,
        volumes: BTreeMap<String, Vec<crate::TargetBackup>>,
        at: Timestamp,
    },
    RestoreProgressed {
        name: String,
        progress: u8,
    },
    /// The volume holds the backup's data; it can be attached.
    RestoreCompleted {
        name: String,
    },
    RestoreFailed {
        name: String,
        reason: String,
    },
    StandbyRestoring {
        name: String,
        backup: String,
        created: Timestamp,
    },
    StandbyRestored {
        name: String,
        backup: String,
        created: Timestamp,
        at: Timestamp,
    },
    StandbyFailed {
        name: String,
        reason: String,
    },
    VolumeActivating {
        name: String,
    },
    /// The standby is a normal volume now (its following engine stops).
    VolumeActivated {
        name: String,
        at: Timestamp,
        note: Option<String>,
    },
    /// The cluster runs cluster version `to` from now on (see [`crate::ClusterVersion`]).
    ClusterVersionRaised {
        from: crate::ClusterVersion,
        to: crate::ClusterVersion,
    },
    /// An engine upgrade of the volume began: the new image is checked first.
    EngineUpgradeStarted {
        name: String,
        image: String,
        from: String,
        job: bool,
        at: Timestamp,
    },
    /// The new image starts; the engine is replaced by one of it at `epoch`.
    EngineUpgradeChecked {
        name: String,
        epoch: Epoch,
    },
    /// The engine of the new image serves; the replicas follow.
    EngineUpgradeEngineRunning {
        name: String,
    },
    /// Replica `id` is restarted with the new image and rebuilt.
    EngineUpgradeReplica {
        name: String,
        id: String,
    },
    /// The log saw replica `id` fail for its restart.
    EngineUpgradeReplicaRestarted {
        name: String,
        id: String,
    },
    /// Replica `id` runs the new image and is read-write again.
    EngineUpgradeReplicaDone {
        name: String,
        id: String,
    },
    EngineUpgradeFinished {
        name: String,
        at: Timestamp,
    },
    /// The upgrade stopped; the volume is back on its old image.
    EngineUpgradeFailed {
        name: String,
        reason: String,
        at: Timestamp,
    },
    EngineUpgradeJobStarted {
        image: String,
        volumes: Vec<String>,
        at: Timestamp,
    },
    EngineUpgradeJobVolumeDone {
        name: String,
    },
    /// A volume's upgrade failed: the job starts no other.
    EngineUpgradeJobFailed {
        name: String,
        reason: String,
        at: Timestamp,
    },
    EngineUpgradeJobFinished {
        at: Timestamp,
    },
}

impl Event {
    /// The volume this event is about, if any (for per-volume subscribers).
    pub fn volume(&self) -> Option<&str> {
        match self {
            Event::VolumeCreated { volume } => Some(&volume.name),
            Event::VolumeUpdated { name, .. }
            | Event::VolumeStaleReplicaTimeoutSet { name, .. }
            | Event::VolumeExpanded { name, .. }
            | Event::VolumeAttaching { name, .. }
            | Event::VolumeAttached { name, .. }
            | Event::EngineRestarting { name, .. }
            | Event::DeviceFailed { name, .. }
            | Event::VolumeDetaching { name }
            | Event::VolumeDetached { name }
            | Event::VolumeDeleting { name }
            | Event::VolumeDeleted { name }
            | Event::RestoreProgressed { name, .. }
            | Event::RestoreCompleted { name }
            | Event::RestoreFailed { name, .. }
            | Event::StandbyRestoring { name, .. }
            | Event::StandbyRestored { name, .. }
            | Event::StandbyFailed { name, .. }
            | Event::VolumeActivating { name }
            | Event::VolumeActivated { name, .. }
            | Event::EngineUpgradeStarted { name, .. }
            | Event::EngineUpgradeChecked { name, .. }
            | Event::EngineUpgradeEngineRunning { name }
            | Event::EngineUpgradeReplica { name, .. }
            | Event::EngineUpgradeReplicaRestarted { name, .. }
            | Event::EngineUpgradeReplicaDone { name, .. }
            | Event::EngineUpgradeFinished { name, .. }
            | Event::EngineUpgradeFailed { name, .. } => Some(name),
            Event::ReplicaScheduled { replica } => Some(&replica.volume),
            Event::SchedulingFailed { volume, .. }
            | Event::SnapshotTaken { volume, .. }
            | Event::SnapshotFailed { volume, .. }
            | Event::SnapshotDeleting { volume, .. }
            | Event::SnapshotDeleted { volume, .. }
            | Event::RevertRequested { volume, .. }
            | Event::SnapshotReverted { volume, .. }
            | Event::RevertFailed { volume, .. }
            | Event::ReplicaSalvaged { volume, .. }
            | Event::BackupStarted { volume, .. }
            | Event::BackupProgressed { volume, .. }
            | Event::BackupCompleted { volume, .. }
            | Event::BackupFailed { volume, .. }
            | Event::BackupDeleted { volume, .. }
            | Event::RecurringJobVolumeStarted { volume, .. }
            | Event::RecurringJobVolumeFinished { volume, .. } => Some(volume),
            Event::VolumeLabelsSet { name, .. } => Some(name),
            Event::BackupCreated { backup } => Some(&backup.volume),
            Event::SnapshotCreated { snapshot } => Some(&snapshot.volume),
            _ => None,
        }
    }
}
