//! The state the log builds: nodes with their disks, volumes, replicas, snapshots, settings.
//!
//! Fields marked *derived* are kept up to date by [`crate::evolve`] from other fields so that
//! the scheduler never has to scan every replica; they are part of the encoded state.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::Settings;

/// Milliseconds since the Unix epoch, as stamped on a command by its proposer.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// This time plus `seconds`, saturating.
    pub fn plus_seconds(self, seconds: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(seconds.saturating_mul(1000)))
    }
}

/// The fencing number of an attachment. Every attach takes a bigger one; replicas refuse
/// I/O from an engine whose epoch is older than the newest they have seen.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

/// A count of bytes (sizes, capacities). Arithmetic is done on the inner `u64`.
pub type Bytes = u64;

/// The whole control-plane state. `Default` is the empty cluster.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct State {
    pub nodes: BTreeMap<String, Node>,
    pub volumes: BTreeMap<String, Volume>,
    pub replicas: BTreeMap<String, Replica>,
    pub settings: Settings,
    /// Sequence number of the next replica id; replica ids are `{volume}-r{seq}`.
    pub next_replica: u64,
    /// *Derived*: volumes (not being deleted) with fewer replicas than they ask for.
    pub unscheduled: BTreeSet<String>,
    /// Request ids applied recently, kept by [`crate::apply`] (not by events).
    #[serde(default)]
    pub requests: crate::RecentRequests,
    /// Backups this cluster made or is making, by name.
    #[serde(default)]
    pub backups: BTreeMap<String, Backup>,
    /// Recurring snapshot and backup jobs, by name.
    #[serde(default)]
    pub recurring_jobs: BTreeMap<String, crate::RecurringJob>,
    /// The backup volumes on the backup target (any cluster's), as the leader last synced
    /// them (every `backupstorePollInterval` seconds), by name.
    #[serde(default)]
    pub backup_volumes: BTreeMap<String, BackupVolume>,
    /// The cluster version the group runs: which commands every manager can apply (see
    /// [`crate::ClusterVersion`]). 1 in a state from before cluster versions.
    /// New in state snapshot format 12.
    #[serde(default)]
    pub cluster_version: crate::ClusterVersion,
    /// The engine image of each volume not on its nodes' own binary.
    #[serde(default)]
    pub engine_images: BTreeMap<String, String>,
    /// Each volume's last engine upgrade, running or finished.
    #[serde(default)]
    pub engine_upgrades: BTreeMap<String, crate::EngineUpgrade>,
    /// The last engine upgrade job.
    #[serde(default)]
    pub engine_upgrade_job: Option<crate::EngineUpgradeJob>,
}

/// A storage node: where replicas live and engines run.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub id: String,
    /// Where the node's manager is reached (host:port).
    pub address: String,
    /// Failure domain; empty means the node is a zone of its own for anti-affinity.
    pub zone: String,
    /// Free-form labels (Kubernetes node labels); informational.
    pub labels: BTreeMap<String, String>,
    /// Tags that volumes' node selectors must all match.
    pub tags: BTreeSet<String>,
    pub schedulable: bool,
    pub disks: BTreeMap<String, Disk>,
    /// Whether the node's agent has been heard from within the heartbeat timeout. A node
    /// that is not ready takes no new replica and no attachment.
    #[serde(default)]
    pub ready: bool,
    /// When the node's agent was last heard from.
    #[serde(default)]
    pub last_heartbeat: Timestamp,
}

/// A filesystem directory on a node that holds replica directories.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    pub id: String,
    pub path: String,
    /// Size of the filesystem, in bytes.
    pub capacity: Bytes,
    /// Bytes kept out of scheduling (for the system and other users of the disk).
    pub reserved: Bytes,
    /// Free bytes as last reported by the node agent.
    pub available: Bytes,
    /// Tags that volumes' disk selectors must all match.
    pub tags: BTreeSet<String>,
    pub schedulable: bool,
    /// *Derived*: sum of the sizes of the replicas placed here.
    pub scheduled: Bytes,
    /// *Derived*: number of replicas placed here.
    pub replica_count: u32,
}

impl Disk {
    /// Most bytes that may be scheduled here:
    /// `(capacity − reserved) × storageOverProvisioningPercentage / 100`.
    pub fn schedulable_limit(&self, settings: &Settings) -> Bytes {
        let usable = u128::from(self.capacity.saturating_sub(self.reserved));
        let limit = usable * u128::from(settings.storage_over_provisioning_percentage) / 100;
        Bytes::try_from(limit).unwrap_or(Bytes::MAX)
    }

    /// Whether the reported free space is above `storageMinimalAvailablePercentage`.
    pub fn has_minimal_available(&self, settings: &Settings) -> bool {
        u128::from(self.available) * 100
            > u128::from(self.capacity) * u128::from(settings.storage_minimal_available_percentage)
    }
}

/// Whether the scheduler tries to keep one replica on the node the volume is attached to.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum DataLocality {
    #[default]
    Disabled,
    BestEffort,
}

impl DataLocality {
    pub fn as_str(self) -> &'static str {
        match self {
            DataLocality::Disabled => "disabled",
            DataLocality::BestEffort => "best-effort",
        }
    }
}

/// Where a volume is in its lifecycle.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum VolumeState {
    /// Created; its replicas are being placed (Longhorn shows this until first detach).
    Creating,
    Detached,
    /// An engine is starting on the attachment's node with the attachment's epoch.
    Attaching,
    /// The engine serves I/O; the attachment carries its endpoint.
    Attached,
    /// The engine is being stopped.
    Detaching,
    /// Its replicas are being removed; the volume disappears with the last one.
    Deleting,
}

/// How many of a volume's replicas are usable.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum Robustness {
    /// As many read-write replicas as asked.
    Healthy,
    /// At least one read-write replica, fewer than asked.
    Degraded,
    /// No read-write replica.
    Faulted,
}

/// Where a volume is attached and under which epoch.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub node: String,
    pub epoch: Epoch,
    /// The frontend address (e.g. `nbd://127.0.0.1:10809/db`) once the engine runs.
    pub endpoint: Option<String>,
    /// The kernel block device asked for with the attach ([`Frontend::None`]: only the
    /// NBD endpoint for userspace clients); once set up, the frontend the node chose.
    #[serde(default)]
    pub frontend: Frontend,
    /// The kernel block device (e.g. `/dev/loop3`) once the node set it up. It stays the
    /// same across engine restarts on the node.
    #[serde(default)]
    pub device: Option<String>,
    /// Why the node cannot set up the device asked for (e.g. its kernel lacks the driver);
    /// the attachment waits (the node retries) until it is detached.
    #[serde(default)]
    pub error: Option<String>,
    /// Attached by the log itself, with no frontend, to take or delete snapshots or run a
    /// backup of a detached volume (Longhorn attaches for its snapshot and backup
    /// controllers the same way); detached again by the log once that work is done. Users
    /// can neither attach nor detach the volume meanwhile.
    #[serde(default)]
    pub internal: bool,
}

/// How an attached volume reaches the kernel of its node. Longhorn calls this the volume's
/// frontend (`blockdev`, `iscsi`); here the node picks among what its kernel offers.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum Frontend {
    /// No kernel device: the engine's NBD endpoint for userspace clients only.
    #[default]
    None,
    /// A kernel block device through whichever frontend the node offers (the
    /// `blockDeviceFrontend` setting can force one).
    Auto,
    /// A file in a FUSE mount attached to a loop device (`/dev/loopN`): every kernel.
    Fuse,
    /// The kernel NBD client (`/dev/nbdN`): kernels with the `nbd` driver.
    Nbd,
}

impl Frontend {
    pub fn as_str(self) -> &'static str {
        match self {
            Frontend::None => "none",
            Frontend::Auto => "auto",
            Frontend::Fuse => "fuse",
            Frontend::Nbd => "nbd",
        }
    }

    /// Whether the attachment needs a kernel block device.
    pub fn wants_device(self) -> bool {
        self != Frontend::None
    }
}

impl std::str::FromStr for Frontend {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "none" => Ok(Frontend::None),
            "auto" => Ok(Frontend::Auto),
            "fuse" => Ok(Frontend::Fuse),
            "nbd" => Ok(Frontend::Nbd),
            other => Err(format!(
                "\"{other}\" is not a frontend (none, auto, fuse or nbd)"
            )),
        }
    }
}

/// A replicated block device.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    /// Size in bytes, a multiple of 2 MiB.
    pub size: Bytes,
    pub number_of_replicas: u8,
    pub data_locality: DataLocality,
    pub node_selector: BTreeSet<String>,
    pub disk_selector: BTreeSet<String>,
    /// Seconds a failed replica is kept before it is replaced.
    pub stale_replica_timeout_secs: u64,
    /// A disaster-recovery standby: follows backups, cannot be attached for writing.
    pub standby: bool,
    pub state: VolumeState,
    /// *Derived* from the modes of its replicas.
    pub robustness: Robustness,
    /// The newest epoch ever given to this volume; it only grows.
    pub epoch: Epoch,
    pub attachment: Option<Attachment>,
    pub replicas: BTreeSet<String>,
    pub snapshots: BTreeMap<String, Snapshot>,
    /// Why the volume has fewer replicas than asked, if it has.
    pub condition: Option<String>,
    pub created_at: Timestamp,
    /// A revert to this snapshot waits for the volume's engine.
    #[serde(default)]
    pub revert_to: Option<String>,
    /// Where this volume's first data comes from (a backup, or a snapshot of another
    /// volume), and how far it is. While the restore is not completed the volume is
    /// attached only to the engine restoring it (no frontend) and a user cannot attach it.
    #[serde(default)]
    pub restore: Option<Restore>,
    /// Free-form labels; `recurring-job.shorthorn.io/<job>: enabled` and
    /// `recurring-job-group.shorthorn.io/<group>: enabled` join recurring jobs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// How many times users attached it (not the log for its own work): a detached volume
    /// whose count did not move since a job's last run has not changed.
    #[serde(default)]
    pub user_attachments: u64,
    /// What a disaster-recovery standby follows and how far it got; kept after activation
    /// (with `activated_at`) as the record of where the data came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dr: Option<Box<Standby>>,
}

/// A disaster-recovery standby's following of a backup volume (written by another
/// cluster): each newer backup its node's agent finds in the backup volume's index is
/// restored incrementally into it. `last_restored` is only moved by a completed restore,
/// so the data is always that backup's, except while `restoring` names a newer one.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub struct Standby {
    /// The backup volume followed, `<target>?volume=<name>`.
    pub backup_volume: String,
    /// The newest backup found in the backup volume, and when it was made (ms).
    pub last_seen: Option<String>,
    pub last_seen_created: Timestamp,
    /// The backup the data is, when it was made (ms), and when its restore completed.
    /// `None` while a restore replaces one that was cut short (see `restoring`).
    pub last_restored: Option<String>,
    pub last_restored_created: Timestamp,
    pub restored_at: Timestamp,
    /// A newer backup being restored over `last_restored`: until it completes the data
    /// is a mix of the two. When the backup being restored is deleted from the target
    /// meanwhile, the newest one left is restored in its place, over data of no known
    /// backup (`last_restored` is `None` then).
    pub restoring: Option<String>,
    /// Why the last poll or restore failed; cleared by the next that succeeds.
    pub error: Option<String>,
    /// `volume activate` asked: the agent restores what is left, then the volume turns
    /// into a normal one.
    pub activating: bool,
    pub activated_at: Option<Timestamp>,
    /// What the activation could not do (the target unreachable: activated with
    /// `last_restored`).
    pub activation_note: Option<String>,
}

/// Where a volume's restore from a backup is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum RestoreState {
    /// The engine is writing the backup's blocks to every replica (`progress` percent).
    InProgress,
    /// Every block was written and checked: the volume can be attached.
    Completed,
    /// It failed (`error` says why); the volume holds no usable data and is deleted.
    Error,
}

/// The restore of a new volume: from a backup (Longhorn's `fromBackup`), or copied from a
/// snapshot of another volume (a volume created from a snapshot, or a clone; Longhorn's
/// `dataSource`).
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub struct Restore {
    /// The backup's URL, `<target>?backup=<name>&volume=<volume>`; empty when the data is
    /// copied from a snapshot.
    pub url: String,
    /// The snapshot of another volume the data is copied from, when not from a backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotSource>,
    pub state: RestoreState,
    /// Percent done while in progress.
    pub progress: u8,
    pub error: Option<String>,
}

/// A snapshot of another volume that a new volume's data is copied from. The copy reads
/// the snapshot's layers from the source's replicas; while it runs the snapshot cannot be
/// deleted, the source cannot be reverted past it, and the source cannot be deleted.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSource {
    pub volume: String,
    pub snapshot: String,
}

impl Restore {
    /// Where the data comes from, for users: the backup URL, or `snapshot "vol/snap"`.
    pub fn source(&self) -> String {
        match &self.snapshot {
            Some(s) => format!("snapshot \"{}/{}\"", s.volume, s.snapshot),
            None => self.url.clone(),
        }
    }

    /// Whether the data is copied from `volume`'s snapshot `snapshot` (any of its
    /// snapshots when `None`).
    pub fn copies_from(&self, volume: &str, snapshot: Option<&str>) -> bool {
        self.snapshot
            .as_ref()
            .is_some_and(|s| s.volume == volume && snapshot.is_none_or(|n| n == s.snapshot))
    }
}

impl Volume {
    /// Why a user cannot use this volume yet because of its restore, if so.
    pub fn restore_blocks_use(&self) -> Option<String> {
        let restore = self.restore.as_ref()?;
        let copy = restore.snapshot.is_some();
        match restore.state {
            RestoreState::Completed => None,
            RestoreState::InProgress if copy => Some(format!(
                "volume \"{}\" is being copied from {} ({}%); it can be used once the copy completed",
                self.name,
                restore.source(),
                restore.progress
            )),
            RestoreState::InProgress => Some(format!(
                "volume \"{}\" is being restored from {} ({}%); it can be used once the restore completed",
                self.name, restore.url, restore.progress
            )),
            RestoreState::Error if copy => Some(format!(
                "the copy of {} into volume \"{}\" failed: {}; delete the volume and create it again",
                restore.source(),
                self.name,
                restore.error.as_deref().unwrap_or("unknown reason")
            )),
            RestoreState::Error => Some(format!(
                "the restore of volume \"{}\" from {} failed: {}; delete the volume and restore it again",
                self.name,
                restore.url,
                restore.error.as_deref().unwrap_or("unknown reason")
            )),
        }
    }

    /// Why `doing` is refused while this volume is a disaster-recovery standby, if it is.
    pub fn standby_blocks(&self, doing: &str) -> Option<String> {
        self.standby.then(|| {
            format!(
                "volume \"{}\" is a disaster-recovery standby following its backups; it cannot {doing} \
                 until it is activated (`shorthorn volume activate {}`)",
                self.name, self.name
            )
        })
    }

    /// Whether an engine is restoring this volume (it serves no frontend meanwhile).
    pub fn restoring(&self) -> bool {
        self.restore
            .as_ref()
            .is_some_and(|r| r.state == RestoreState::InProgress)
    }
}

/// A replica's role in its volume (Longhorn's RW / WO / ERR).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum ReplicaMode {
    /// Serves reads and takes writes.
    #[serde(rename = "RW")]
    ReadWrite,
    /// Takes writes while it is rebuilt; serves no reads yet.
    #[serde(rename = "WO")]
    WriteOnly,
    /// Failed; kept for a delta rebuild until the stale timeout replaces it.
    #[serde(rename = "ERR")]
    Error,
}

/// One copy of a volume, on one disk of one node.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub struct Replica {
    pub id: String,
    pub volume: String,
    pub node: String,
    pub disk: String,
    pub mode: ReplicaMode,
    pub failed_at: Option<Timestamp>,
    pub failure: Option<String>,
    pub created_at: Timestamp,
    /// Where the replica process serves the wire protocol, once its node agent started it.
    #[serde(default)]
    pub address: Option<String>,
    /// The revision counter its node agent read after the volume lost every replica (for
    /// salvage: the highest holds the newest flushed data). Cleared when the mode changes.
    #[serde(default)]
    pub revision: Option<u64>,
}

/// A point-in-time, read-only layer of a volume.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub name: String,
    pub volume: String,
    pub created_at: Timestamp,
    /// Volume size when the snapshot was taken.
    pub size: Bytes,
    #[serde(default)]
    pub state: SnapshotState,
    /// `RecurringJob: <job>` on a job's snapshots; `shorthorn.io/system: <why>` on those the
    /// log took for its own work (a backup, a clone), which `snapshot-cleanup` jobs remove.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Where a snapshot is between the log and the replicas.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum SnapshotState {
    /// Asked for; the engine of the attached volume has not taken it yet.
    Pending,
    /// Taken on every replica of the volume.
    #[default]
    Ready,
    /// Being merged into its child; waits for an engine if the volume is detached.
    Deleting,
}

impl Volume {
    /// Seconds after which a failed replica of this volume is replaced: its stale timeout,
    /// or the cluster's replenishment wait when that is sooner.
    pub fn replacement_wait_secs(&self, settings: &crate::Settings) -> u64 {
        self.stale_replica_timeout_secs
            .min(settings.replica_replenishment_wait_interval)
    }
}

impl State {
    pub(crate) fn node(&self, id: &str) -> Result<&Node, crate::Rejection> {
        self.nodes
            .get(id)
            .ok_or_else(|| crate::Rejection::not_found("node", id))
    }

    pub(crate) fn disk(&self, node: &str, disk: &str) -> Result<&Disk, crate::Rejection> {
        self.node(node)?
            .disks
            .get(disk)
            .ok_or_else(|| crate::Rejection::not_found("disk", &format!("{node}/{disk}")))
    }

    pub(crate) fn volume(&self, name: &str) -> Result<&Volume, crate::Rejection> {
        self.volumes
            .get(name)
            .ok_or_else(|| crate::Rejection::not_found("volume", name))
    }

    pub(crate) fn replica(&self, id: &str) -> Result<&Replica, crate::Rejection> {
        self.replicas
            .get(id)
            .ok_or_else(|| crate::Rejection::not_found("replica", id))
    }

    /// The replicas of `volume` in id order.
    pub fn replicas_of<'a>(&'a self, volume: &'a Volume) -> impl Iterator<Item = &'a Replica> + 'a {
        volume
            .replicas
            .iter()
            .filter_map(|id| self.replicas.get(id))
    }
}

/// Where a backup is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum BackupState {
    /// Asked for; the engine of the attached volume uploads it (`progress` percent).
    InProgress,
    /// Its manifest is on the target: it can be restored.
    Completed,
    /// It failed (`error` says why); no manifest was written.
    Error,
}

/// A backup of one snapshot of a volume to the backup target.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub struct Backup {
    pub name: String,
    pub volume: String,
    pub snapshot: String,
    /// The backup target (the `backupTarget` setting) when the backup was asked for.
    pub target: String,
    /// The volume's last completed backup on the same target: only blocks changed since
    /// are read.
    pub base: Option<String>,
    pub state: BackupState,
    /// Percent done while in progress.
    pub progress: u8,
    pub error: Option<String>,
    /// `<target>?backup=<name>&volume=<volume>`.
    pub url: String,
    /// Volume size backed up, in bytes.
    pub size: Bytes,
    /// Non-zero blocks read.
    pub blocks: u64,
    /// Compressed bytes uploaded (blocks the target lacked).
    pub uploaded_bytes: u64,
    /// The engine accepted the job (a job the engine no longer knows then failed).
    pub started: bool,
    pub created_at: Timestamp,
    pub labels: BTreeMap<String, String>,
}

/// The backup URL of `name` of `volume` on `target`, as Longhorn spells it (a target
/// with options of its own, `nfs://...?mountport=N`, gets the keys after `&`).
pub fn backup_url(target: &str, volume: &str, name: &str) -> String {
    let sep = if target.contains('?') { '&' } else { '?' };
    format!("{target}{sep}backup={name}&volume={volume}")
}

/// A backup volume on the backup target, as the leader's last sync saw its index.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub struct BackupVolume {
    pub name: String,
    /// The target it is on (the `backupTarget` setting when it was synced).
    pub target: String,
    /// Its backups, oldest first.
    pub backups: Vec<TargetBackup>,
    /// When the sync that last changed it ran.
    pub synced_at: Timestamp,
}

/// One backup on the target, as its backup volume's index lists it.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub struct TargetBackup {
    pub name: String,
    pub snapshot: String,
    /// Volume size backed up, in bytes.
    pub size: Bytes,
    pub created_at: Timestamp,
    /// Non-zero blocks.
    pub blocks: u64,
}
