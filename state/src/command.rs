//! Commands: what proposers ask of the cluster. A command is stamped by its proposer with
//! the time and its own name; [`crate::decide`] turns it into events or a rejection.
//!
//! The enums are serde-tagged (`"type"`) and new fields get `#[serde(default)]`, so a later
//! version still reads an old log.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{Bytes, DataLocality, Epoch, Frontend, Timestamp};

/// A request with the time and the proposer that stamped it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub at: Timestamp,
    pub proposer: String,
    pub request: Request,
    /// The request id a client chose (the API's `Idempotency-Key`): a command whose id was
    /// applied recently is not decided again but answered with the first outcome (see
    /// [`crate::apply`]). At most 64 printable ASCII characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Request {
    /// The cluster version the whole group must run before this request may be proposed:
    /// a request that an older build could not decode, or would decide differently, names
    /// the version that introduced it. 1 for every request of the first release (and for
    /// [`Request::RaiseClusterVersion`], which is proposed only when every member reads it).
    pub fn cluster_version_required(&self) -> crate::ClusterVersion {
        match self {
            Request::RaiseClusterVersion { .. } => crate::ClusterVersion::FIRST,
            // Live engine upgrades: the commands, and the setting of the upgrade job.
            Request::UpgradeEngine { .. }
            | Request::ReportEngineUpgradeChecked { .. }
            | Request::ReportEngineUpgradeFailed { .. }
            | Request::StartEngineUpgradeJob { .. } => crate::ClusterVersion(2),
            Request::SetSetting { key, .. }
                if crate::Settings::canonical_key(key).is_some_and(crate::SettingsV11::is_new) =>
            {
                crate::ClusterVersion(2)
            }
            _ => crate::ClusterVersion::FIRST,
        }
    }
}

impl Command {
    pub fn new(at: Timestamp, proposer: impl Into<String>, request: Request) -> Self {
        Self {
            at,
            proposer: proposer.into(),
            request,
            id: None,
        }
    }

    /// This command under request id `id`.
    pub fn with_id(self, id: impl Into<String>) -> Self {
        Self {
            id: Some(id.into()),
            ..self
        }
    }
}

/// Everything a proposer can ask for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Request {
    RegisterNode(NodeSpec),
    #[serde(rename_all = "camelCase")]
    UpdateNode {
        id: String,
        #[serde(default)]
        address: Option<String>,
        #[serde(default)]
        zone: Option<String>,
        #[serde(default)]
        labels: Option<BTreeMap<String, String>>,
        #[serde(default)]
        tags: Option<BTreeSet<String>>,
    },
    SetNodeSchedulable {
        id: String,
        schedulable: bool,
    },
    /// The node's agent is alive.
    Heartbeat {
        node: String,
    },
    /// Marks down every ready node not heard from for `timeout_secs` at the command's time:
    /// its replicas fail and its attached volumes lose their engine (they can be attached
    /// elsewhere under a new epoch).
    MarkDeadNodes {
        timeout_secs: u64,
    },
    /// Removes a node that holds no replica and no attachment.
    RemoveNode {
        id: String,
    },
    AddDisk {
        node: String,
        disk: DiskSpec,
    },
    UpdateDisk {
        node: String,
        disk: String,
        #[serde(default)]
        capacity: Option<Bytes>,
        #[serde(default)]
        reserved: Option<Bytes>,
        #[serde(default)]
        available: Option<Bytes>,
        #[serde(default)]
        tags: Option<BTreeSet<String>>,
    },
    SetDiskSchedulable {
        node: String,
        disk: String,
        schedulable: bool,
    },
    /// Removes a disk that holds no replica.
    RemoveDisk {
        node: String,
        disk: String,
    },
    CreateVolume(VolumeSpec),
    #[serde(rename_all = "camelCase")]
    UpdateVolume {
        name: String,
        #[serde(default)]
        number_of_replicas: Option<u8>,
        #[serde(default)]
        data_locality: Option<DataLocality>,
        /// Replaces the volume's labels when given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        labels: Option<BTreeMap<String, String>>,
        /// Seconds a failed replica is kept for a delta rebuild before it is replaced.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stale_replica_timeout_secs: Option<u64>,
    },
    ExpandVolume {
        name: String,
        size: Bytes,
    },
    DeleteVolume {
        name: String,
    },
    /// Attaches a volume on a node under a new epoch, with a kernel block device unless
    /// `frontend` is [`Frontend::None`].
    AttachVolume {
        name: String,
        node: String,
        #[serde(default)]
        frontend: Frontend,
    },
    /// The node agent started the engine of `epoch`; it serves at `endpoint`, and the
    /// kernel block device asked for is `device`, set up by `frontend`.
    ReportEngineStarted {
        name: String,
        epoch: Epoch,
        endpoint: String,
        #[serde(default)]
        frontend: Frontend,
        #[serde(default)]
        device: Option<String>,
    },
    /// The node cannot give the attachment of `epoch` the kernel device it asked for.
    ReportDeviceFailed {
        name: String,
        epoch: Epoch,
        reason: String,
    },
    /// The engine of `epoch` exited while its volume stayed attached: a new engine starts
    /// on the same node under a new epoch, behind the same device.
    ReportEngineDied {
        name: String,
        epoch: Epoch,
    },
    DetachVolume {
        name: String,
    },
    /// The engine of `epoch` is gone (stopped on detach, or exited).
    ReportEngineStopped {
        name: String,
        epoch: Epoch,
    },
    ReportReplicaFailed {
        id: String,
        reason: String,
    },
    /// The node agent started the replica's process; engines reach it at `address`.
    ReportReplicaStarted {
        id: String,
        address: String,
    },
    /// A new or returning replica is being rebuilt (it takes writes, serves no reads).
    ReportReplicaRebuilding {
        id: String,
    },
    /// A write-only replica finished its rebuild and serves reads.
    ReportReplicaRebuilt {
        id: String,
    },
    /// A failed replica of a detached volume was checked and holds the newest data
    /// (salvage): it becomes read-write without a rebuild.
    ReportReplicaHealthy {
        id: String,
    },
    /// Removes one replica (its node agent deletes its directory); a volume that is not
    /// being deleted gets a replacement scheduled.
    RemoveReplica {
        id: String,
    },
    /// Replaces every failed replica whose stale timeout has passed at the command's time.
    ReplaceStaleReplicas,
    SetSetting {
        key: String,
        value: String,
    },
    CreateSnapshot {
        volume: String,
        name: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<String, String>,
    },
    /// Merges a snapshot into its child: at once while the volume is attached, else when
    /// it is next attached.
    DeleteSnapshot {
        volume: String,
        name: String,
    },
    /// The engine took a pending snapshot on every replica.
    ReportSnapshotTaken {
        volume: String,
        name: String,
    },
    /// The engine could not take a pending snapshot; it is dropped with the reason.
    ReportSnapshotFailed {
        volume: String,
        name: String,
        reason: String,
    },
    /// The engine merged a deleted snapshot away.
    ReportSnapshotRemoved {
        volume: String,
        name: String,
    },
    /// Reverts an attached volume to a snapshot; the engine refuses while a frontend client
    /// is connected.
    RevertSnapshot {
        volume: String,
        name: String,
    },
    /// The engine reverted the volume; newer snapshots are gone.
    ReportRevertDone {
        volume: String,
        name: String,
    },
    ReportRevertFailed {
        volume: String,
        name: String,
        reason: String,
    },
    /// The revision counter of a failed replica of a volume with no usable replica, for
    /// auto-salvage.
    ReportReplicaRevision {
        id: String,
        revision: u64,
    },
    /// Backs up a snapshot of an attached volume to the backup target; with no snapshot
    /// named, a new one (named like the backup) is taken first.
    CreateBackup {
        name: String,
        volume: String,
        #[serde(default)]
        snapshot: Option<String>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    },
    /// The engine accepted the backup job.
    ReportBackupStarted {
        name: String,
    },
    /// Progress of a backup in progress (the agent sends it at most about once a second).
    #[serde(rename_all = "camelCase")]
    ReportBackupProgress {
        name: String,
        progress: u8,
        blocks: u64,
        uploaded_bytes: u64,
    },
    /// The backup's manifest is on the target.
    #[serde(rename_all = "camelCase")]
    ReportBackupCompleted {
        name: String,
        url: String,
        size: Bytes,
        blocks: u64,
        uploaded_bytes: u64,
    },
    ReportBackupFailed {
        name: String,
        reason: String,
    },
    /// Forgets a backup that is not in progress (the API removed it from the target first).
    DeleteBackup {
        name: String,
    },
    /// The backup volumes the leader found on `target` (its volume directories and their
    /// indexes), by name; ignored unless `target` is the `backupTarget` setting.
    ReportBackupVolumes {
        target: String,
        volumes: BTreeMap<String, Vec<crate::TargetBackup>>,
    },
    /// Progress of the restore of a volume created from a backup.
    ReportRestoreProgress {
        volume: String,
        progress: u8,
    },
    /// The restore wrote and checked every block; the restoring engine is stopped.
    ReportRestoreCompleted {
        volume: String,
    },
    /// The restore failed (a bad block, the target unreachable...); it is not retried.
    ReportRestoreFailed {
        volume: String,
        reason: String,
    },
    /// Turns a disaster-recovery standby into a normal volume once what is newer in its
    /// backup volume is restored (`volume activate`).
    ActivateVolume {
        name: String,
    },
    /// The leader attaches a standby that lost its engine (its node went down) again, on
    /// a ready node of a read-write replica, so that it goes on following.
    AttachStandby {
        name: String,
    },
    /// The standby's agent found `backup` (made at `created`, ms) newer than the last
    /// restored one and started restoring it.
    ReportStandbyRestoring {
        volume: String,
        backup: String,
        created: crate::Timestamp,
    },
    /// The standby holds `backup`'s data (its first restore, or a later incremental one).
    ReportStandbyRestored {
        volume: String,
        backup: String,
        created: crate::Timestamp,
    },
    /// A poll of the backup volume or a restore failed; the agent tries again.
    ReportStandbyFailed {
        volume: String,
        reason: String,
    },
    /// Nothing newer is left to restore (or the target stayed unreachable: `note` says
    /// so): the activation is done.
    ReportStandbyActivated {
        volume: String,
        note: Option<String>,
    },
    CreateRecurringJob(crate::RecurringJobSpec),
    /// Replaces a job's spec; a run in progress goes on under the old one.
    UpdateRecurringJob(crate::RecurringJobSpec),
    DeleteRecurringJob {
        name: String,
    },
    /// The leader asks a job to run its newest schedule slot at or before the command's
    /// time; refused when that slot already ran (a new leader cannot run it twice).
    FireRecurringJob {
        name: String,
    },
    /// The leader starts the job's current run on the next volume waiting for it.
    StepRecurringJob {
        name: String,
        volume: String,
    },
    /// The leader saw the job's snapshot or backup of `volume` finish (or vanish): the
    /// outcome is read from the state.
    FinishRecurringJobVolume {
        name: String,
        volume: String,
    },
    /// Raises the cluster version to `version` (see [`crate::ClusterVersion`]): proposed by
    /// the leader once every manager runs a build that supports it. Raising to the version
    /// the cluster runs changes nothing; lowering is refused. Builds before cluster versions
    /// cannot decode this command, so it is never proposed while one of them is a member.
    RaiseClusterVersion {
        version: crate::ClusterVersion,
    },
    /// Moves volume `name`'s engine, then its replicas one at a time, to `image` (the
    /// absolute path of a shorthorn binary on every node) without detaching it.
    UpgradeEngine {
        name: String,
        image: String,
    },
    /// The agent checking an upgrade's image ran it: it starts (`version` is what it says
    /// it is).
    ReportEngineUpgradeChecked {
        name: String,
        #[serde(default)]
        version: String,
    },
    /// The upgrade's image did not start (checked, or as the engine or a replica).
    ReportEngineUpgradeFailed {
        name: String,
        reason: String,
    },
    /// Upgrades every volume to `image`, at most concurrentAutomaticEngineUpgradePerNodeLimit
    /// per node at once.
    StartEngineUpgradeJob {
        image: String,
    },
}

/// A node as its agent registers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    pub id: String,
    pub address: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: BTreeSet<String>,
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
}

/// A disk as its node agent registers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskSpec {
    pub id: String,
    pub path: String,
    pub capacity: Bytes,
    #[serde(default)]
    pub reserved: Bytes,
    /// Free bytes now; the capacity when not given.
    #[serde(default)]
    pub available: Option<Bytes>,
    #[serde(default)]
    pub tags: BTreeSet<String>,
}

/// A volume as a user asks for it; `None` fields take the cluster's default settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    pub name: String,
    pub size: Bytes,
    #[serde(default)]
    pub number_of_replicas: Option<u8>,
    #[serde(default)]
    pub data_locality: Option<DataLocality>,
    #[serde(default)]
    pub node_selector: BTreeSet<String>,
    #[serde(default)]
    pub disk_selector: BTreeSet<String>,
    /// Minutes a failed replica is kept before it is replaced.
    #[serde(default)]
    pub stale_replica_timeout: Option<u64>,
    #[serde(default)]
    pub standby: bool,
    /// Restore the new volume from this backup (`<target>?backup=<name>&volume=<volume>`);
    /// the API checks that the backup exists and fits.
    #[serde(default)]
    pub from_backup: Option<String>,
    /// Copy the new volume's data from another volume's snapshot, or clone the volume (a
    /// new snapshot of it is taken first); the size must hold the source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source: Option<DataSource>,
    /// Free-form labels; `recurring-job.shorthorn.io/<job>: enabled` and
    /// `recurring-job-group.shorthorn.io/<group>: enabled` join recurring jobs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Where a new volume's data is copied from (Longhorn's `dataSource`, Kubernetes'
/// `VolumeContentSource`): a snapshot of `volume`, or with no `snapshot` a clone of
/// `volume` as it is now (the log takes a snapshot of it for the copy, named
/// `clone-<new volume>`, and keeps it on the source afterwards).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataSource {
    pub volume: String,
    #[serde(default)]
    pub snapshot: Option<String>,
}
