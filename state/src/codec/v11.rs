//! The state snapshot as format 11 wrote it (commit 8983096 and the releases before cluster
//! versions): the top-level [`State`] of then, frozen. Its nested types are today's, whose
//! archived layout has not changed since; the day one does, freeze that type here too.
//!
//! Format 11 is also what this build *writes* while the cluster runs cluster version 1 and
//! the state holds nothing format 11 cannot say (see [`super`]), so that a manager of the
//! older build can still read the snapshots of a newer one during a rolling upgrade.

use std::collections::{BTreeMap, BTreeSet};

use crate::setting::SettingsV11;
use crate::{Backup, BackupVolume, ClusterVersion, Node, RecurringJob, Replica, State, Volume};

/// [`State`] as of format 11: the same fields in the same order, nothing added.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(super) struct StateV11 {
    nodes: BTreeMap<String, Node>,
    volumes: BTreeMap<String, Volume>,
    replicas: BTreeMap<String, Replica>,
    settings: SettingsV11,
    next_replica: u64,
    unscheduled: BTreeSet<String>,
    requests: crate::RecentRequests,
    backups: BTreeMap<String, Backup>,
    recurring_jobs: BTreeMap<String, RecurringJob>,
    backup_volumes: BTreeMap<String, BackupVolume>,
}

impl From<StateV11> for State {
    /// A format 11 state in today's shape: every field added since takes the value that
    /// means "as before" (one line each below).
    fn from(old: StateV11) -> State {
        let StateV11 {
            nodes,
            volumes,
            replicas,
            settings,
            next_replica,
            unscheduled,
            requests,
            backups,
            recurring_jobs,
            backup_volumes,
        } = old;
        State {
            nodes,
            volumes,
            replicas,
            // The settings added since take their defaults.
            settings: settings.into(),
            next_replica,
            unscheduled,
            requests,
            backups,
            recurring_jobs,
            backup_volumes,
            // Added in format 12:
            cluster_version: ClusterVersion::FIRST,
            engine_images: BTreeMap::new(),
            engine_upgrades: BTreeMap::new(),
            engine_upgrade_job: None,
        }
    }
}

impl StateV11 {
    /// `state` in format 11, if that loses nothing: every field added since holds the value
    /// that means "as before". (The match names every field, so a new one cannot be missed.)
    pub(super) fn lossless(state: &State) -> Option<StateV11> {
        let State {
            nodes,
            volumes,
            replicas,
            settings,
            next_replica,
            unscheduled,
            requests,
            backups,
            recurring_jobs,
            backup_volumes,
            cluster_version,
            engine_images,
            engine_upgrades,
            engine_upgrade_job,
        } = state;
        // Added in format 12 (one condition each):
        if *cluster_version != ClusterVersion::FIRST
            || !engine_images.is_empty()
            || !engine_upgrades.is_empty()
            || engine_upgrade_job.is_some()
        {
            return None;
        }
        let settings = SettingsV11::lossless(settings)?;
        Some(StateV11 {
            nodes: nodes.clone(),
            volumes: volumes.clone(),
            replicas: replicas.clone(),
            settings,
            next_replica: *next_replica,
            unscheduled: unscheduled.clone(),
            requests: requests.clone(),
            backups: backups.clone(),
            recurring_jobs: recurring_jobs.clone(),
            backup_volumes: backup_volumes.clone(),
        })
    }
}
