//! Recurring jobs: snapshots and backups taken on a cron schedule by the log's clock.
//!
//! A job names a task, a schedule and the volumes it applies to (by label or group). Only
//! the Raft leader proposes the commands that run it, but every decision is the log's, so
//! a leader change never runs a slot twice:
//!
//! 1. `FireRecurringJob`: the newest schedule slot at or before the command's time, if it
//!    is newer than the last slot run, starts a run over the volumes that belong to the job
//!    then. Slots missed while no leader existed, or while the previous run went on, run
//!    once, as that newest slot.
//! 2. `StepRecurringJob`: the run starts its work on one waiting volume (at most
//!    `concurrency` at once), or records why it skipped it.
//! 3. `FinishRecurringJobVolume`: the leader saw that work finish; the outcome is read from
//!    the snapshot or backup itself. The run ends, into the job's history, when every
//!    volume has an outcome.
//!
//! `retain` keeps the job's own newest snapshots of each volume (deleting older ones as a
//! new one is taken) and its newest completed backups ([`expired_backups`] names the ones
//! the leader removes from the target).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::{Deserialize, Serialize};

use crate::name::{check_label, check_labels};
use crate::{
    BackupState, Event, Rejection, SnapshotState, State, Timestamp, Volume, VolumeState, evolve,
};

/// The label a job's snapshots and backups carry, with the job's name (Longhorn's).
pub const JOB_LABEL: &str = "RecurringJob";
/// A volume label `<JOB_VOLUME_LABEL_PREFIX><job>: enabled` joins the job.
pub const JOB_VOLUME_LABEL_PREFIX: &str = "recurring-job.shorthorn.io/";
/// A volume label `<GROUP_VOLUME_LABEL_PREFIX><group>: enabled` joins the group's jobs.
pub const GROUP_VOLUME_LABEL_PREFIX: &str = "recurring-job-group.shorthorn.io/";
/// The group whose jobs apply to volumes that name no job and no group.
pub const DEFAULT_GROUP: &str = "default";
/// The label of the snapshots the log takes for its own work (the value says which).
pub const SYSTEM_SNAPSHOT_LABEL: &str = "shorthorn.io/system";
/// Longest job name (its snapshot and backup names add 18 characters to it).
pub const JOB_NAME_MAX_LEN: usize = 40;
/// Most snapshots or backups a job may keep of each volume.
pub const RETAIN_MAX: u32 = 100;

/// What a job does to each of its volumes.
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
#[serde(rename_all = "kebab-case")]
pub enum JobTask {
    /// Takes a snapshot; keeps the job's newest `retain`.
    Snapshot,
    /// Deletes the snapshots the log took for its own work (for backups, clones).
    SnapshotCleanup,
    /// Deletes the oldest snapshots of any kind beyond `retain`.
    SnapshotDelete,
    /// Backs up a new snapshot, unless nothing changed since the job's last backup; keeps
    /// the job's newest `retain` backups and their snapshots.
    Backup,
    /// Like `backup`, even when nothing changed.
    BackupForceCreate,
    /// Trims the filesystem on the volume (not supported yet: refused with the reason).
    FilesystemTrim,
}

impl JobTask {
    pub const ALL: [JobTask; 6] = [
        JobTask::Snapshot,
        JobTask::SnapshotCleanup,
        JobTask::SnapshotDelete,
        JobTask::Backup,
        JobTask::BackupForceCreate,
        JobTask::FilesystemTrim,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobTask::Snapshot => "snapshot",
            JobTask::SnapshotCleanup => "snapshot-cleanup",
            JobTask::SnapshotDelete => "snapshot-delete",
            JobTask::Backup => "backup",
            JobTask::BackupForceCreate => "backup-force-create",
            JobTask::FilesystemTrim => "filesystem-trim",
        }
    }

    pub fn parse(text: &str) -> Option<JobTask> {
        JobTask::ALL.into_iter().find(|t| t.as_str() == text)
    }

    fn backs_up(self) -> bool {
        matches!(self, JobTask::Backup | JobTask::BackupForceCreate)
    }
}

/// A job as a user asks for it.
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
pub struct RecurringJobSpec {
    pub name: String,
    pub task: JobTask,
    /// Five fields (minute hour day-of-month month day-of-week) or six with seconds first,
    /// in UTC.
    pub cron: String,
    /// Snapshots or backups of each volume the job keeps (≥ 1).
    pub retain: u32,
    /// Volumes the job works on at once (≥ 1).
    pub concurrency: u32,
    #[serde(default)]
    pub groups: BTreeSet<String>,
    /// Added to the snapshots and backups the job makes.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// How one volume of a run ended.
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
#[serde(tag = "result", rename_all = "camelCase")]
pub enum JobOutcome {
    /// The work was done; `item` names the snapshot or backup made, if any.
    Done {
        item: Option<String>,
    },
    /// Nothing was done, on purpose: unchanged since the last run, detached, standby.
    Skipped {
        reason: String,
    },
    Failed {
        reason: String,
    },
}

/// One run of a job: the volumes of one slot.
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
pub struct JobRun {
    /// The schedule slot run.
    pub slot: Timestamp,
    pub fired_at: Timestamp,
    /// Volumes not started yet, in order.
    pub pending: Vec<String>,
    /// Volumes whose work is going on, with the snapshot or backup being made.
    pub running: BTreeMap<String, String>,
    pub outcomes: BTreeMap<String, JobOutcome>,
    pub finished_at: Option<Timestamp>,
}

impl JobRun {
    pub fn failed(&self) -> bool {
        self.outcomes
            .values()
            .any(|o| matches!(o, JobOutcome::Failed { .. }))
    }
}

/// A job in the log.
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
pub struct RecurringJob {
    pub spec: RecurringJobSpec,
    pub created_at: Timestamp,
    /// The newest slot that ran (or began to).
    pub last_slot: Option<Timestamp>,
    /// The run in progress.
    pub run: Option<JobRun>,
    /// Finished runs, oldest first, within the history limit settings.
    pub history: Vec<JobRun>,
    /// Volumes that were detached when the job last worked on them, with their
    /// [`Volume::user_attachments`] then: unchanged while that count stays.
    pub unchanged_since: BTreeMap<String, u64>,
}

impl RecurringJob {
    /// The first slot after the last one run (or after the job was created).
    pub fn next_slot(&self) -> Option<Timestamp> {
        let cron = schedule(&self.spec.cron).ok()?;
        let after = to_datetime(self.last_slot.unwrap_or(self.created_at))?;
        let next = cron.find_next_occurrence(&after, false).ok()?;
        Some(Timestamp(u64::try_from(next.timestamp_millis()).ok()?))
    }

    /// Whether the job should be fired at `now`: a slot is due and no run is going on.
    pub fn due(&self, now: Timestamp) -> bool {
        self.run.is_none() && self.next_slot().is_some_and(|slot| slot <= now)
    }
}

fn parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Optional).build()
}

fn schedule(cron: &str) -> Result<Cron, String> {
    let fields = cron.split_whitespace().count();
    if !(5..=6).contains(&fields) {
        return Err(format!(
            "cron \"{cron}\" has {fields} fields; it needs 5 (minute hour day-of-month month \
             day-of-week) or 6 (seconds first)"
        ));
    }
    parser()
        .parse(cron)
        .map_err(|err| format!("cron \"{cron}\" is invalid: {err}"))
}

fn to_datetime(at: Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(i64::try_from(at.0).ok()?)
}

/// The newest slot of `cron` at or before `at`.
fn slot_at(cron: &str, at: Timestamp) -> Option<Timestamp> {
    let cron = schedule(cron).ok()?;
    let slot = cron
        .find_previous_occurrence(&to_datetime(at)?, true)
        .ok()?;
    Some(Timestamp(u64::try_from(slot.timestamp_millis()).ok()?))
}

fn check_spec(spec: &RecurringJobSpec) -> Result<(), Rejection> {
    check_label("recurring job", &spec.name)?;
    if spec.name.len() > JOB_NAME_MAX_LEN {
        return Err(Rejection::invalid(format!(
            "recurring job name \"{}\" is {} characters long; at most {JOB_NAME_MAX_LEN} are allowed",
            spec.name,
            spec.name.len()
        )));
    }
    if spec.task == JobTask::FilesystemTrim {
        return Err(Rejection::invalid(
            "task \"filesystem-trim\" is not supported yet: the node agent does not know where \
             a volume's filesystem is mounted",
        ));
    }
    let cron = schedule(&spec.cron).map_err(Rejection::invalid)?;
    let now = DateTime::from_timestamp_millis(0).unwrap_or_default();
    if cron.find_next_occurrence(&now, false).is_err() {
        return Err(Rejection::invalid(format!(
            "cron \"{}\" never fires",
            spec.cron
        )));
    }
    if !(1..=RETAIN_MAX).contains(&spec.retain) {
        return Err(Rejection::invalid(format!(
            "retain {} is out of range: it must be between 1 and {RETAIN_MAX}",
            spec.retain
        )));
    }
    if spec.concurrency == 0 {
        return Err(Rejection::invalid("concurrency must be at least 1"));
    }
    for group in &spec.groups {
        check_label("recurring job group", group)?;
    }
    check_labels(&spec.labels)
}

fn job<'a>(state: &'a State, name: &str) -> Result<&'a RecurringJob, Rejection> {
    state
        .recurring_jobs
        .get(name)
        .ok_or_else(|| Rejection::not_found("recurring job", name))
}

pub(crate) fn create(
    state: &State,
    spec: &RecurringJobSpec,
    at: Timestamp,
) -> Result<Vec<Event>, Rejection> {
    check_spec(spec)?;
    if state.recurring_jobs.contains_key(&spec.name) {
        return Err(Rejection::already_exists("recurring job", &spec.name));
    }
    Ok(vec![Event::RecurringJobCreated {
        job: RecurringJob {
            spec: spec.clone(),
            created_at: at,
            last_slot: None,
            run: None,
            history: Vec::new(),
            unchanged_since: BTreeMap::new(),
        },
    }])
}

pub(crate) fn update(state: &State, spec: &RecurringJobSpec) -> Result<Vec<Event>, Rejection> {
    check_spec(spec)?;
    let current = job(state, &spec.name)?;
    if current.spec == *spec {
        return Ok(vec![]);
    }
    Ok(vec![Event::RecurringJobUpdated { spec: spec.clone() }])
}

pub(crate) fn delete(state: &State, name: &str) -> Result<Vec<Event>, Rejection> {
    job(state, name)?;
    Ok(vec![Event::RecurringJobDeleted {
        name: name.to_string(),
    }])
}

/// Whether `volume` belongs to `job`: it names the job or one of its groups, or it names
/// none and the job is in the default group.
pub fn applies_to(job: &RecurringJobSpec, volume: &Volume) -> bool {
    let enabled = |key: String| volume.labels.get(&key).is_some_and(|v| v == "enabled");
    if enabled(format!("{JOB_VOLUME_LABEL_PREFIX}{}", job.name)) {
        return true;
    }
    if job
        .groups
        .iter()
        .any(|g| enabled(format!("{GROUP_VOLUME_LABEL_PREFIX}{g}")))
    {
        return true;
    }
    let names_any = volume.labels.keys().any(|k| {
        k.starts_with(JOB_VOLUME_LABEL_PREFIX) || k.starts_with(GROUP_VOLUME_LABEL_PREFIX)
    });
    !names_any && job.groups.contains(DEFAULT_GROUP)
}

/// The volumes (not being deleted) that belong to `job` now, by name.
pub fn members(state: &State, job: &RecurringJobSpec) -> Vec<String> {
    state
        .volumes
        .values()
        .filter(|v| v.state != VolumeState::Deleting && applies_to(job, v))
        .map(|v| v.name.clone())
        .collect()
}

pub(crate) fn fire(state: &State, name: &str, at: Timestamp) -> Result<Vec<Event>, Rejection> {
    let current = job(state, name)?;
    if current.run.is_some() {
        return Err(Rejection::conflict(format!(
            "recurring job \"{name}\" is still running its previous slot"
        )));
    }
    let after = current.last_slot.unwrap_or(current.created_at);
    let slot = slot_at(&current.spec.cron, at)
        .filter(|slot| *slot > after)
        .ok_or_else(|| {
            Rejection::precondition(format!("recurring job \"{name}\" has no slot due"))
        })?;
    Ok(vec![Event::RecurringJobFired {
        name: name.to_string(),
        slot,
        at,
        volumes: members(state, &current.spec),
    }])
}

/// The name of what `job` makes of `volume` in `slot`: unique per job, slot and volume
/// (backup names are cluster-wide), at most 58 characters.
fn item_name(job: &str, slot: Timestamp, volume: &str) -> String {
    // FNV-1a: short, stable across builds and platforms.
    let hash = volume.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{job}-{:08x}-{hash:08x}", slot.0 / 1000)
}

/// Events of `step`, each decided against the state the ones before it left.
struct Batch {
    scratch: State,
    events: Vec<Event>,
}

impl Batch {
    fn new(state: &State) -> Self {
        Self {
            scratch: state.clone(),
            events: Vec::new(),
        }
    }

    fn push(&mut self, events: Vec<Event>) {
        for event in &events {
            evolve(&mut self.scratch, event);
        }
        self.events.extend(events);
    }
}

pub(crate) fn step(
    state: &State,
    name: &str,
    volume: &str,
    at: Timestamp,
) -> Result<Vec<Event>, Rejection> {
    let current = job(state, name)?;
    let run = current.run.as_ref().ok_or_else(|| {
        Rejection::precondition(format!("recurring job \"{name}\" is not running"))
    })?;
    if !run.pending.iter().any(|v| v == volume) {
        return Err(Rejection::precondition(format!(
            "volume \"{volume}\" is not waiting in recurring job \"{name}\"'s run"
        )));
    }
    if run.running.len() >= current.spec.concurrency as usize {
        return Err(Rejection::conflict(format!(
            "recurring job \"{name}\" already works on {} volumes (its concurrency)",
            run.running.len()
        )));
    }
    let finished = |outcome| {
        Ok(vec![Event::RecurringJobVolumeFinished {
            name: name.to_string(),
            volume: volume.to_string(),
            outcome,
            at,
        }])
    };
    let skipped = |reason: String| finished(JobOutcome::Skipped { reason });
    let Some(target) = state
        .volumes
        .get(volume)
        .filter(|v| v.state != VolumeState::Deleting)
    else {
        return skipped(format!("volume \"{volume}\" was deleted"));
    };
    if target.standby {
        return skipped(format!(
            "volume \"{volume}\" is a disaster-recovery standby"
        ));
    }
    if let Some(why) = target.restore_blocks_use() {
        return skipped(why);
    }
    let user_attached = target.attachment.as_ref().is_some_and(|a| !a.internal);
    let detached = target.state == VolumeState::Detached;
    let spec = &current.spec;
    let makes_something = matches!(spec.task, JobTask::Snapshot) || spec.task.backs_up();
    if makes_something
        && spec.task != JobTask::BackupForceCreate
        && !user_attached
        && current.unchanged_since.get(volume) == Some(&target.user_attachments)
    {
        return skipped(format!(
            "volume \"{volume}\" has not been attached since the job's last run: nothing changed"
        ));
    }
    if detached && !state.settings.allow_recurring_job_while_volume_detached {
        return skipped(format!(
            "volume \"{volume}\" is detached and allowRecurringJobWhileVolumeDetached is off"
        ));
    }
    let mut batch = Batch::new(state);
    let item = item_name(name, run.slot, volume);
    let mut labels = spec.labels.clone();
    labels.insert(JOB_LABEL.to_string(), name.to_string());
    let made = match spec.task {
        JobTask::Snapshot => crate::snapshots::create(&batch.scratch, volume, &item, &labels, at),
        JobTask::Backup | JobTask::BackupForceCreate => {
            crate::backups::create(&batch.scratch, &item, volume, None, &labels, at)
        }
        JobTask::SnapshotCleanup | JobTask::SnapshotDelete | JobTask::FilesystemTrim => Ok(vec![]),
    };
    match made {
        Ok(events) => batch.push(events),
        Err(rejection) => {
            return finished(JobOutcome::Failed {
                reason: rejection.message,
            });
        }
    }
    for old in to_delete(&batch.scratch, spec, volume) {
        // A snapshot still in use (a copy's source, a revert's target) is kept for now.
        if let Ok(events) = crate::snapshots::delete(&batch.scratch, volume, &old) {
            batch.push(events);
        }
    }
    let mark = (detached || !user_attached).then_some(target.user_attachments);
    if makes_something {
        batch.push(vec![Event::RecurringJobVolumeStarted {
            name: name.to_string(),
            volume: volume.to_string(),
            item,
            unchanged_since: mark,
        }]);
    } else {
        batch.push(vec![Event::RecurringJobVolumeFinished {
            name: name.to_string(),
            volume: volume.to_string(),
            outcome: JobOutcome::Done { item: None },
            at,
        }]);
    }
    Ok(batch.events)
}

/// The snapshots of `volume` the job deletes now, oldest first.
fn to_delete(state: &State, spec: &RecurringJobSpec, volume: &str) -> Vec<String> {
    let Some(current) = state.volumes.get(volume) else {
        return vec![];
    };
    let live = |s: &&crate::Snapshot| s.state != SnapshotState::Deleting;
    let mut candidates: Vec<&crate::Snapshot> = match spec.task {
        JobTask::Snapshot | JobTask::Backup | JobTask::BackupForceCreate => current
            .snapshots
            .values()
            .filter(live)
            .filter(|s| s.labels.get(JOB_LABEL) == Some(&spec.name))
            .collect(),
        JobTask::SnapshotDelete => current.snapshots.values().filter(live).collect(),
        JobTask::SnapshotCleanup => {
            return current
                .snapshots
                .values()
                .filter(|s| s.state == SnapshotState::Ready)
                .filter(|s| s.labels.contains_key(crate::SYSTEM_SNAPSHOT_LABEL))
                .map(|s| s.name.clone())
                .collect();
        }
        JobTask::FilesystemTrim => return vec![],
    };
    candidates.sort_by_key(|s| (s.created_at, s.name.clone()));
    let excess = candidates.len().saturating_sub(spec.retain as usize);
    candidates
        .into_iter()
        .take(excess)
        .filter(|s| s.state == SnapshotState::Ready)
        .map(|s| s.name.clone())
        .collect()
}

pub(crate) fn finish(
    state: &State,
    name: &str,
    volume: &str,
    at: Timestamp,
) -> Result<Vec<Event>, Rejection> {
    let current = job(state, name)?;
    let item = current
        .run
        .as_ref()
        .and_then(|run| run.running.get(volume))
        .ok_or_else(|| {
            Rejection::precondition(format!(
                "recurring job \"{name}\" is not working on volume \"{volume}\""
            ))
        })?;
    let not_yet = || {
        Rejection::precondition(format!(
            "recurring job \"{name}\"'s work on volume \"{volume}\" is still going on"
        ))
    };
    let outcome = if current.spec.task.backs_up() {
        match state.backups.get(item) {
            Some(b) if b.state == BackupState::InProgress => return Err(not_yet()),
            Some(b) if b.state == BackupState::Completed => JobOutcome::Done {
                item: Some(item.clone()),
            },
            Some(b) => JobOutcome::Failed {
                reason: b.error.clone().unwrap_or_else(|| "backup failed".into()),
            },
            None => JobOutcome::Failed {
                reason: format!("backup \"{item}\" was deleted before it completed"),
            },
        }
    } else {
        let snapshot = state
            .volumes
            .get(volume)
            .and_then(|v| v.snapshots.get(item));
        match snapshot.map(|s| s.state) {
            Some(SnapshotState::Pending) => return Err(not_yet()),
            Some(_) => JobOutcome::Done {
                item: Some(item.clone()),
            },
            None if !state.volumes.contains_key(volume) => JobOutcome::Failed {
                reason: format!("volume \"{volume}\" was deleted"),
            },
            None => JobOutcome::Failed {
                reason: format!(
                    "snapshot \"{volume}/{item}\" was dropped (its engine stopped or failed \
                     before taking it)"
                ),
            },
        }
    };
    Ok(vec![Event::RecurringJobVolumeFinished {
        name: name.to_string(),
        volume: volume.to_string(),
        outcome,
        at,
    }])
}

/// What the leader proposes for `job` at `now`, if anything: fire a due slot, finish
/// work it sees done, start waiting volumes within the concurrency.
pub fn next_requests(state: &State, job: &RecurringJob, now: Timestamp) -> Vec<crate::Request> {
    let name = job.spec.name.clone();
    let Some(run) = &job.run else {
        return if job.due(now) {
            vec![crate::Request::FireRecurringJob { name }]
        } else {
            vec![]
        };
    };
    let mut requests = Vec::new();
    let mut running = run.running.len();
    for (volume, _) in run.running.iter() {
        if finish(state, &name, volume, now).is_ok() {
            requests.push(crate::Request::FinishRecurringJobVolume {
                name: name.clone(),
                volume: volume.clone(),
            });
            running -= 1;
        }
    }
    let free = (job.spec.concurrency as usize).saturating_sub(running);
    for volume in run.pending.iter().take(free) {
        requests.push(crate::Request::StepRecurringJob {
            name: name.clone(),
            volume: volume.clone(),
        });
    }
    requests
}

/// Completed backups of recurring jobs beyond their `retain`, oldest first: the leader
/// removes them from the target, then from the log.
pub fn expired_backups(state: &State) -> Vec<String> {
    let mut by_job: BTreeMap<(&str, &str), Vec<&crate::Backup>> = BTreeMap::new();
    for backup in state.backups.values() {
        if backup.state != BackupState::Completed {
            continue;
        }
        if let Some(job) = backup.labels.get(JOB_LABEL) {
            by_job
                .entry((job.as_str(), backup.volume.as_str()))
                .or_default()
                .push(backup);
        }
    }
    let mut expired = Vec::new();
    for ((job, _), mut backups) in by_job {
        let Some(spec) = state.recurring_jobs.get(job).map(|j| &j.spec) else {
            continue;
        };
        if !spec.task.backs_up() {
            continue;
        }
        backups.sort_by_key(|b| (b.created_at, b.name.clone()));
        let excess = backups.len().saturating_sub(spec.retain as usize);
        expired.extend(backups.into_iter().take(excess).map(|b| b.name.clone()));
    }
    expired
}

/// Applies a job event (called by [`crate::evolve`]).
pub(crate) fn evolve_job(state: &mut State, event: &Event) {
    match event {
        Event::RecurringJobCreated { job } => {
            state
                .recurring_jobs
                .insert(job.spec.name.clone(), job.clone());
        }
        Event::RecurringJobUpdated { spec } => {
            if let Some(job) = state.recurring_jobs.get_mut(&spec.name) {
                job.spec = spec.clone();
            }
        }
        Event::RecurringJobDeleted { name } => {
            state.recurring_jobs.remove(name);
        }
        Event::RecurringJobFired {
            name,
            slot,
            at,
            volumes,
        } => {
            if let Some(job) = state.recurring_jobs.get_mut(name) {
                job.last_slot = Some(*slot);
                if !volumes.is_empty() {
                    job.run = Some(JobRun {
                        slot: *slot,
                        fired_at: *at,
                        pending: volumes.clone(),
                        running: BTreeMap::new(),
                        outcomes: BTreeMap::new(),
                        finished_at: None,
                    });
                }
            }
        }
        Event::RecurringJobVolumeStarted {
            name,
            volume,
            item,
            unchanged_since,
        } => {
            if let Some(job) = state.recurring_jobs.get_mut(name) {
                match unchanged_since {
                    Some(count) => job.unchanged_since.insert(volume.clone(), *count),
                    None => job.unchanged_since.remove(volume),
                };
                if let Some(run) = job.run.as_mut() {
                    run.pending.retain(|v| v != volume);
                    run.running.insert(volume.clone(), item.clone());
                }
            }
        }
        Event::RecurringJobVolumeFinished {
            name,
            volume,
            outcome,
            at,
        } => {
            let limits = (
                state.settings.recurring_successful_jobs_history_limit as usize,
                state.settings.recurring_failed_jobs_history_limit as usize,
            );
            if let Some(job) = state.recurring_jobs.get_mut(name) {
                if let Some(run) = job.run.as_mut() {
                    run.pending.retain(|v| v != volume);
                    run.running.remove(volume);
                    run.outcomes.insert(volume.clone(), outcome.clone());
                    if run.pending.is_empty() && run.running.is_empty() {
                        run.finished_at = Some(*at);
                    }
                }
                if job.run.as_ref().is_some_and(|r| r.finished_at.is_some()) {
                    job.history.extend(job.run.take());
                    trim_history(&mut job.history, limits);
                }
            }
        }
        _ => {}
    }
}

/// Keeps the newest `successful` runs with no failure and the newest `failed` others.
fn trim_history(history: &mut Vec<JobRun>, (successful, failed): (usize, usize)) {
    let mut kept_ok = 0;
    let mut kept_failed = 0;
    let mut keep = vec![false; history.len()];
    for (i, run) in history.iter().enumerate().rev() {
        let (kept, limit) = if run.failed() {
            (&mut kept_failed, failed)
        } else {
            (&mut kept_ok, successful)
        };
        if *kept < limit {
            *kept += 1;
            keep[i] = true;
        }
    }
    let mut flags = keep.into_iter();
    history.retain(|_| flags.next().unwrap_or(false));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RejectionKind::*;
    use crate::testkit::Cluster;
    use crate::{Request, VolumeSpec};

    fn spec(name: &str, task: JobTask, cron: &str, retain: u32) -> RecurringJobSpec {
        RecurringJobSpec {
            name: name.into(),
            task,
            cron: cron.into(),
            retain,
            concurrency: 1,
            groups: BTreeSet::new(),
            labels: BTreeMap::new(),
        }
    }

    fn join(c: &mut Cluster, volume: &str, job: &str) {
        c.ok(Request::UpdateVolume {
            name: volume.into(),
            number_of_replicas: None,
            data_locality: None,
            labels: Some(BTreeMap::from([(
                format!("{JOB_VOLUME_LABEL_PREFIX}{job}"),
                "enabled".into(),
            )])),
            stale_replica_timeout_secs: None,
        });
    }

    /// Moves the clock to just after the next multiple of `secs` seconds.
    fn to_next_slot(c: &mut Cluster, secs: u64) {
        c.clock = (c.clock / (secs * 1000) + 1) * secs * 1000;
    }

    /// Proposes what the leader would, once, as the leader does; returns the requests.
    fn lead(c: &mut Cluster, name: &str) -> Vec<Request> {
        let job = c.state.recurring_jobs[name].clone();
        let requests = next_requests(&c.state, &job, Timestamp(c.clock + 1000));
        for request in &requests {
            c.ok(request.clone());
        }
        requests
    }

    fn job_snapshots(c: &Cluster, volume: &str, job: &str) -> Vec<(String, SnapshotState)> {
        c.state.volumes[volume]
            .snapshots
            .values()
            .filter(|s| s.labels.get(JOB_LABEL).map(String::as_str) == Some(job))
            .map(|s| (s.name.clone(), s.state))
            .collect()
    }

    #[test]
    fn bad_jobs_are_refused_with_the_reason() {
        let mut c = Cluster::new();
        let mut bad = |s: RecurringJobSpec, word: &str| {
            let message = c.rejected(Request::CreateRecurringJob(s), InvalidArgument);
            assert!(message.contains(word), "{message}");
        };
        bad(
            spec(&"a".repeat(41), JobTask::Snapshot, "* * * * *", 1),
            "at most 40",
        );
        bad(spec("Snap", JobTask::Snapshot, "* * * * *", 1), "DNS-1123");
        bad(spec("s", JobTask::Snapshot, "* * * *", 1), "4 fields");
        bad(spec("s", JobTask::Snapshot, "61 * * * *", 1), "invalid");
        bad(spec("s", JobTask::Snapshot, "every day", 1), "fields");
        bad(spec("s", JobTask::Snapshot, "* * * * *", 0), "retain 0");
        bad(spec("s", JobTask::Snapshot, "* * * * *", 101), "retain 101");
        bad(
            spec("s", JobTask::FilesystemTrim, "* * * * *", 1),
            "not supported",
        );
        let mut s = spec("s", JobTask::Snapshot, "* * * * *", 1);
        s.concurrency = 0;
        bad(s, "concurrency");
        let mut s = spec("s", JobTask::Snapshot, "* * * * *", 1);
        s.groups.insert("Bad Group".into());
        bad(s, "group");
        c.ok(Request::CreateRecurringJob(spec(
            "s",
            JobTask::Snapshot,
            "0 0 * * *",
            1,
        )));
        c.rejected(
            Request::CreateRecurringJob(spec("s", JobTask::Snapshot, "0 0 * * *", 1)),
            AlreadyExists,
        );
        assert!(
            c.rejected(
                Request::UpdateRecurringJob(spec("s", JobTask::Snapshot, "0 0 *", 1)),
                InvalidArgument
            )
            .contains("3 fields")
        );
    }

    #[test]
    fn a_slot_runs_once_even_when_fired_again_and_missed_slots_run_once() {
        let mut c = Cluster::with_attached_db();
        c.ok(Request::CreateRecurringJob(spec(
            "snap",
            JobTask::Snapshot,
            "*/10 * * * * *",
            5,
        )));
        join(&mut c, "db", "snap");
        let fire = || Request::FireRecurringJob {
            name: "snap".into(),
        };
        // Nothing due before the first slot after creation.
        let created = c.state.recurring_jobs["snap"].created_at.0;
        if created % 10_000 < 8_000 {
            assert!(
                c.rejected(fire(), PreconditionFailed)
                    .contains("no slot due")
            );
        }
        to_next_slot(&mut c, 10);
        c.ok(fire());
        let slot = c.state.recurring_jobs["snap"].last_slot.unwrap();
        assert_eq!(slot.0 % 10_000, 0);
        // A second leader firing the same slot (still running or not) runs nothing.
        assert!(c.rejected(fire(), Conflict).contains("still running"));
        lead(&mut c, "snap");
        c.ok(Request::ReportSnapshotTaken {
            volume: "db".into(),
            name: job_snapshots(&c, "db", "snap")[0].0.clone(),
        });
        lead(&mut c, "snap");
        assert!(c.state.recurring_jobs["snap"].run.is_none());
        c.clock = slot.0 + 5_000;
        assert!(
            c.rejected(fire(), PreconditionFailed)
                .contains("no slot due")
        );
        // Five slots pass with no leader: the newest runs, once.
        c.clock = slot.0 + 55_000;
        c.ok(fire());
        let newest = c.state.recurring_jobs["snap"].last_slot.unwrap();
        assert_eq!(newest.0, slot.0 + 50_000);
        assert!(c.rejected(fire(), Conflict).contains("still running"));
    }

    #[test]
    fn a_snapshot_job_keeps_exactly_retain_of_its_own_snapshots() {
        let mut c = Cluster::with_attached_db();
        c.ok(Request::CreateSnapshot {
            volume: "db".into(),
            name: "mine".into(),
            labels: BTreeMap::new(),
        });
        c.ok(Request::ReportSnapshotTaken {
            volume: "db".into(),
            name: "mine".into(),
        });
        c.ok(Request::CreateRecurringJob(spec(
            "snap",
            JobTask::Snapshot,
            "*/10 * * * * *",
            2,
        )));
        join(&mut c, "db", "snap");
        for run in 1..=4 {
            to_next_slot(&mut c, 10);
            assert!(matches!(
                lead(&mut c, "snap")[..],
                [Request::FireRecurringJob { .. }]
            ));
            assert!(matches!(
                lead(&mut c, "snap")[..],
                [Request::StepRecurringJob { .. }]
            ));
            // Still being taken: the leader proposes nothing, and a finish is refused.
            assert!(lead(&mut c, "snap").is_empty());
            c.rejected(
                Request::FinishRecurringJobVolume {
                    name: "snap".into(),
                    volume: "db".into(),
                },
                PreconditionFailed,
            );
            let item = c.state.recurring_jobs["snap"].run.as_ref().unwrap().running["db"].clone();
            c.ok(Request::ReportSnapshotTaken {
                volume: "db".into(),
                name: item.clone(),
            });
            for (name, state) in job_snapshots(&c, "db", "snap") {
                if state == SnapshotState::Deleting {
                    c.ok(Request::ReportSnapshotRemoved {
                        volume: "db".into(),
                        name,
                    });
                }
            }
            lead(&mut c, "snap");
            let job = &c.state.recurring_jobs["snap"];
            assert!(job.run.is_none());
            let last = job.history.last().unwrap();
            assert_eq!(last.outcomes["db"], JobOutcome::Done { item: Some(item) });
            assert_eq!(job.history.len(), 1, "the history limit is 1 by default");
            let kept = job_snapshots(&c, "db", "snap");
            assert_eq!(kept.len(), run.min(2), "run {run}: {kept:?}");
        }
        // The user's own snapshot is never the job's to delete.
        assert!(c.state.volumes["db"].snapshots.contains_key("mine"));
    }

    #[test]
    fn detached_volumes_are_skipped_unless_allowed_and_unchanged_ones_always() {
        let mut c = Cluster::with_attached_db();
        c.ok(Request::CreateRecurringJob(spec(
            "snap",
            JobTask::Snapshot,
            "*/10 * * * * *",
            3,
        )));
        join(&mut c, "db", "snap");
        c.ok(Request::DetachVolume { name: "db".into() });
        let epoch = c.state.volumes["db"].epoch;
        c.ok(Request::ReportEngineStopped {
            name: "db".into(),
            epoch,
        });
        let run = |c: &mut Cluster| {
            to_next_slot(c, 10);
            lead(c, "snap");
            lead(c, "snap");
            c.state.recurring_jobs["snap"].run.clone()
        };
        let outcome = |c: &Cluster| {
            c.state.recurring_jobs["snap"]
                .history
                .last()
                .unwrap()
                .outcomes["db"]
                .clone()
        };
        assert!(run(&mut c).is_none());
        assert!(
            matches!(outcome(&c), JobOutcome::Skipped { reason } if reason.contains("allowRecurringJobWhileVolumeDetached"))
        );
        c.set("allowRecurringJobWhileVolumeDetached", "true");
        let running = run(&mut c).expect("the snapshot is being taken");
        let item = running.running["db"].clone();
        let volume = &c.state.volumes["db"];
        assert!(volume.attachment.as_ref().is_some_and(|a| a.internal));
        c.ok(Request::ReportSnapshotTaken {
            volume: "db".into(),
            name: item,
        });
        assert_eq!(c.state.volumes["db"].state, VolumeState::Detaching);
        let epoch = c.state.volumes["db"].epoch;
        c.ok(Request::ReportEngineStopped {
            name: "db".into(),
            epoch,
        });
        lead(&mut c, "snap");
        assert!(matches!(outcome(&c), JobOutcome::Done { .. }));
        // Nobody attached it since: nothing changed, nothing taken.
        assert!(run(&mut c).is_none());
        assert!(
            matches!(outcome(&c), JobOutcome::Skipped { reason } if reason.contains("nothing changed"))
        );
        assert_eq!(job_snapshots(&c, "db", "snap").len(), 1);
        // A user attach (and detach) means it may have changed: the next run takes one.
        c.attach("db", "n2");
        c.ok(Request::DetachVolume { name: "db".into() });
        let epoch = c.state.volumes["db"].epoch;
        c.ok(Request::ReportEngineStopped {
            name: "db".into(),
            epoch,
        });
        assert!(run(&mut c).is_some());
    }

    #[test]
    fn volumes_join_by_label_group_or_default_and_concurrency_bounds_the_work() {
        let mut c = Cluster::with_attached_db();
        for (name, labels) in [
            ("plain", BTreeMap::new()),
            (
                "grouped",
                BTreeMap::from([(format!("{GROUP_VOLUME_LABEL_PREFIX}gold"), "enabled".into())]),
            ),
            (
                "other",
                BTreeMap::from([(
                    format!("{JOB_VOLUME_LABEL_PREFIX}nightly"),
                    "enabled".into(),
                )]),
            ),
        ] {
            c.ok(Request::CreateVolume(VolumeSpec {
                name: name.into(),
                size: 1 << 30,
                number_of_replicas: Some(1),
                labels,
                ..Default::default()
            }));
            c.attach(name, "n1");
        }
        let mut s = spec("snap", JobTask::Snapshot, "*/10 * * * * *", 1);
        s.groups = BTreeSet::from(["default".into(), "gold".into()]);
        s.concurrency = 2;
        c.ok(Request::CreateRecurringJob(s.clone()));
        assert_eq!(members(&c.state, &s), ["db", "grouped", "plain"]);
        to_next_slot(&mut c, 10);
        lead(&mut c, "snap");
        let steps = lead(&mut c, "snap");
        assert_eq!(steps.len(), 2, "{steps:?}");
        let message = c.rejected(
            Request::StepRecurringJob {
                name: "snap".into(),
                volume: "plain".into(),
            },
            Conflict,
        );
        assert!(message.contains("concurrency"), "{message}");
        assert!(lead(&mut c, "snap").is_empty());
        // One finishes: the third starts.
        c.ok(Request::ReportSnapshotTaken {
            volume: "db".into(),
            name: c.state.recurring_jobs["snap"].run.as_ref().unwrap().running["db"].clone(),
        });
        let next = lead(&mut c, "snap");
        assert!(
            matches!(&next[..], [Request::FinishRecurringJobVolume { volume, .. }, Request::StepRecurringJob { volume: third, .. }] if volume == "db" && third == "plain"),
            "{next:?}"
        );
    }

    #[test]
    fn a_backup_job_keeps_retain_backups_and_records_failures() {
        let mut c = Cluster::with_attached_db();
        c.set("backupTarget", "file:///mnt/b");
        c.set("recurringFailedJobsHistoryLimit", "2");
        c.ok(Request::CreateRecurringJob(spec(
            "bk",
            JobTask::Backup,
            "*/10 * * * * *",
            2,
        )));
        join(&mut c, "db", "bk");
        let mut made = Vec::new();
        for run in 0..4 {
            to_next_slot(&mut c, 10);
            lead(&mut c, "bk");
            lead(&mut c, "bk");
            let item = c.state.recurring_jobs["bk"].run.as_ref().unwrap().running["db"].clone();
            assert_eq!(c.state.backups[&item].labels[JOB_LABEL], "bk");
            c.ok(Request::ReportSnapshotTaken {
                volume: "db".into(),
                name: item.clone(),
            });
            c.ok(Request::ReportBackupStarted { name: item.clone() });
            if run == 2 {
                c.ok(Request::ReportBackupFailed {
                    name: item.clone(),
                    reason: "target unreachable".into(),
                });
            } else {
                c.ok(Request::ReportBackupCompleted {
                    name: item.clone(),
                    url: String::new(),
                    size: 1 << 30,
                    blocks: 1,
                    uploaded_bytes: 1,
                });
                made.push(item);
            }
            lead(&mut c, "bk");
        }
        let job = &c.state.recurring_jobs["bk"];
        assert!(job.history.iter().any(|r| matches!(&r.outcomes["db"], JobOutcome::Failed { reason } if reason.contains("unreachable"))));
        assert_eq!(
            job.history.len(),
            2,
            "one successful and one failed run kept"
        );
        // Three completed: the oldest is beyond retain 2.
        assert_eq!(expired_backups(&c.state), vec![made[0].clone()]);
        // Its snapshots are kept at 2 as well (the failed backup's one counts).
        assert_eq!(
            job_snapshots(&c, "db", "bk")
                .iter()
                .filter(|(_, s)| *s == SnapshotState::Ready)
                .count(),
            2
        );
    }

    #[test]
    fn snapshot_cleanup_removes_only_the_logs_own_snapshots() {
        let mut c = Cluster::with_attached_db();
        c.set("backupTarget", "file:///mnt/b");
        c.ok(Request::CreateBackup {
            name: "b1".into(),
            volume: "db".into(),
            snapshot: None,
            labels: BTreeMap::new(),
        });
        c.ok(Request::ReportSnapshotTaken {
            volume: "db".into(),
            name: "b1".into(),
        });
        c.ok(Request::ReportBackupCompleted {
            name: "b1".into(),
            url: String::new(),
            size: 1 << 30,
            blocks: 1,
            uploaded_bytes: 1,
        });
        c.ok(Request::CreateSnapshot {
            volume: "db".into(),
            name: "mine".into(),
            labels: BTreeMap::new(),
        });
        c.ok(Request::ReportSnapshotTaken {
            volume: "db".into(),
            name: "mine".into(),
        });
        let mut s = spec("clean", JobTask::SnapshotCleanup, "*/10 * * * * *", 1);
        s.groups.insert(DEFAULT_GROUP.into());
        c.ok(Request::CreateRecurringJob(s));
        to_next_slot(&mut c, 10);
        lead(&mut c, "clean");
        lead(&mut c, "clean");
        let snapshots = &c.state.volumes["db"].snapshots;
        assert_eq!(snapshots["b1"].state, SnapshotState::Deleting);
        assert_eq!(snapshots["mine"].state, SnapshotState::Ready);
        assert!(c.state.recurring_jobs["clean"].run.is_none());
    }
}
