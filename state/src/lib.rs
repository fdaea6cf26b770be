//! The Shorthorn domain: nodes, disks, volumes, replicas, snapshots and settings, the
//! commands that change them, the events those commands produce, and the replica scheduler.
//!
//! This crate is pure. It never does I/O, never reads a clock and never draws a random
//! number: time and the proposer come in on each [`Command`], so the same log of commands
//! gives the same [`State`] and the same [`Event`]s on every manager, forever.
//!
//! The two functions that matter are [`decide`] (may a command happen, and what events
//! follow) and [`evolve`] (apply one event). [`apply`] chains them.

mod auto_attach;
mod backups;
mod cluster_version;
mod codec;
mod command;
mod copy;
mod decide;
mod event;
mod evolve;
mod idempotency;
mod jobs;
mod model;
mod name;
mod rejection;
mod restore;
mod salvage;
mod scheduler;
mod setting;
mod snapshots;
mod standby;
mod upgrade;

pub use cluster_version::{CLUSTER_VERSION, ClusterVersion, too_new as cluster_version_too_new};
pub use codec::{DecodeError, FORMAT_VERSION, OLDEST_FORMAT_VERSION, format_version};
pub use command::{Command, DataSource, DiskSpec, NodeSpec, Request, VolumeSpec};
pub use decide::decide;
pub use event::Event;
pub use evolve::evolve;
pub use idempotency::{
    AppliedRequest, REQUEST_ID_CAPACITY, REQUEST_ID_MAX_LEN, REQUEST_ID_RETENTION_SECS,
    RecentRequests, check_request_id,
};
pub use jobs::{
    DEFAULT_GROUP, GROUP_VOLUME_LABEL_PREFIX, JOB_LABEL, JOB_NAME_MAX_LEN, JOB_VOLUME_LABEL_PREFIX,
    JobOutcome, JobRun, JobTask, RETAIN_MAX, RecurringJob, RecurringJobSpec, SYSTEM_SNAPSHOT_LABEL,
    applies_to, expired_backups, members, next_requests,
};
pub use model::{
    Attachment, Backup, BackupState, BackupVolume, Bytes, DataLocality, Disk, Epoch, Frontend,
    Node, Replica, ReplicaMode, Restore, RestoreState, Robustness, Snapshot, SnapshotSource,
    SnapshotState, Standby, State, TargetBackup, Timestamp, Volume, VolumeState, backup_url,
};
pub use name::{MIB, VOLUME_SIZE_ALIGNMENT, is_dns1123_label, is_dns1123_subdomain};
pub use rejection::{Rejection, RejectionKind};
pub use scheduler::Placement;
pub use setting::{SETTING_KEYS, Settings, SettingsV11};
pub use upgrade::{EngineUpgrade, EngineUpgradeJob, IMAGE_MAX_LEN, UpgradePhase};

/// Decide `command` against `state` and, when it is accepted, evolve `state` with every
/// event it produced. Returns the events, or the rejection (and then `state` is untouched).
///
/// A command with a request id ([`Command::id`]) is applied at most once: while the id is
/// remembered, a retry gets the first outcome (a success as no events) and only the record
/// of recent ids changes (see [`RecentRequests`]).
pub fn apply(state: &mut State, command: &Command) -> Result<Vec<Event>, Rejection> {
    idempotency::apply_at_most_once(state, command, |state, command| {
        let events = decide(state, command)?;
        for event in &events {
            evolve(state, event);
        }
        Ok(events)
    })
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod testkit;
