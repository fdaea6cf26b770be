//! Live engine upgrades: a volume's engine, then its replicas one at a time, move to a new
//! engine image (the path of a `shorthorn` binary present on every node) while the volume
//! stays attached.
//!
//! An upgrade goes through phases, each left by a report of the node agent or by the
//! state a report leaves behind:
//! 1. `Checking`: the agent of the volume's node runs `IMAGE version --json` before
//!    anything stops. A binary that cannot start ends the upgrade here, the old engine
//!    untouched.
//! 2. `Engine`: the new binary's engine starts under a new epoch behind the same device
//!    (the device replays what the old engine had not answered). An engine of the new
//!    image that exits before it reported itself ends the upgrade: the old image comes back
//!    under yet another epoch.
//! 3. `Replica`: once the volume is healthy, one replica at a time is failed, restarted
//!    with the new image and caught up by a delta rebuild. A volume with one replica keeps
//!    its replica process until it is detached (a lone replica cannot be rebuilt from
//!    anything while it serves).
//!
//! A detached volume is checked on the node of its first replica and then takes the image
//! at once: its next engine starts with it, and the agents restart its replica processes.
//!
//! The upgrade job upgrades every volume not on an image, at most
//! `concurrentAutomaticEngineUpgradePerNodeLimit` volumes per node at once (0 = off), and
//! stops starting new ones at the first failure.

use serde::{Deserialize, Serialize};

use crate::decide::live_volume;
use crate::{Epoch, Event, Rejection, ReplicaMode, Robustness, State, Timestamp, VolumeState};

/// Longest accepted engine image path.
pub const IMAGE_MAX_LEN: usize = 4096;

/// Where a volume's upgrade is.
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
#[serde(rename_all = "camelCase", tag = "phase")]
pub enum UpgradePhase {
    /// The agent checks that the new binary starts.
    Checking,
    /// The engine of the new image is starting at `epoch`.
    Engine { epoch: Epoch },
    /// The engine runs the new image; the next replica is restarted once the volume is
    /// healthy.
    Replicas,
    /// Replica `id` is restarted with the new image (`restarted` once the log saw it fail
    /// for that) and rebuilt.
    #[serde(rename_all = "camelCase")]
    Replica { id: String, restarted: bool },
    /// Everything runs the new image (a lone replica: from its next detach).
    Done,
    /// It stopped; `error` says why and the volume is on its old image.
    Failed,
}

/// One volume's engine upgrade.
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
pub struct EngineUpgrade {
    pub image: String,
    /// The image before ("" = each node's own binary).
    pub from: String,
    pub phase: UpgradePhase,
    /// Started by the upgrade job.
    pub job: bool,
    /// The replicas already running the new image.
    pub replicas_done: Vec<String>,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub error: Option<String>,
}

impl EngineUpgrade {
    pub fn running(&self) -> bool {
        !matches!(self.phase, UpgradePhase::Done | UpgradePhase::Failed)
    }
}

/// The job upgrading every volume to one image.
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
pub struct EngineUpgradeJob {
    pub image: String,
    /// The volumes it upgrades, in the order it starts them.
    pub volumes: Vec<String>,
    /// Those whose upgrade finished.
    pub done: Vec<String>,
    /// The volume whose upgrade failed, which stopped the job, and why.
    pub failed: Option<(String, String)>,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

impl EngineUpgradeJob {
    pub fn running(&self) -> bool {
        self.finished_at.is_none()
    }
}

impl State {
    /// The engine image volume `name` runs ("" = each node's own binary).
    pub fn engine_image(&self, name: &str) -> &str {
        self.engine_images.get(name).map_or("", String::as_str)
    }

    /// The image replica `id` of volume `volume` should run, and whether its process may be
    /// restarted now to get there: only the replica an upgrade is at, or any replica of a
    /// detached volume. `None` for a replica the log does not know.
    pub fn replica_image(&self, id: &str) -> Option<(&str, bool)> {
        let replica = self.replicas.get(id)?;
        let volume = self.volumes.get(&replica.volume)?;
        let image = self.engine_image(&volume.name);
        match self.engine_upgrades.get(&volume.name) {
            Some(upgrade) if upgrade.running() => match &upgrade.phase {
                UpgradePhase::Replica { id: at, .. } if at == id => Some((&upgrade.image, true)),
                _ if upgrade.replicas_done.iter().any(|r| r == id) => Some((&upgrade.image, false)),
                _ => Some((&upgrade.from, false)),
            },
            _ => Some((image, volume.state == VolumeState::Detached)),
        }
    }

    /// The node whose agent checks a new image for volume `name`: where it is attached,
    /// else where its first replica is.
    pub fn upgrade_checker(&self, name: &str) -> Option<&str> {
        let volume = self.volumes.get(name)?;
        if let Some(attachment) = &volume.attachment {
            return Some(&attachment.node);
        }
        self.replicas_of(volume).next().map(|r| r.node.as_str())
    }
}

fn check_image(image: &str) -> Result<(), Rejection> {
    if !image.starts_with('/') || image.len() > IMAGE_MAX_LEN || image.contains('\0') {
        return Err(Rejection::invalid(format!(
            "engine image \"{image}\" must be the absolute path of a shorthorn binary on every \
             node (at most {IMAGE_MAX_LEN} bytes)"
        )));
    }
    Ok(())
}

/// `UpgradeEngine`: a user asks for volume `name` to move to `image`.
pub(crate) fn start(
    state: &State,
    name: &str,
    image: &str,
    job: bool,
    at: Timestamp,
) -> Result<Vec<Event>, Rejection> {
    check_image(image)?;
    let volume = live_volume(state, name)?;
    if let Some(upgrade) = state.engine_upgrades.get(name)
        && upgrade.running()
    {
        if upgrade.image == image {
            return Ok(vec![]);
        }
        return Err(Rejection::conflict(format!(
            "volume \"{name}\" is being upgraded to \"{}\"; wait for it to finish",
            upgrade.image
        )));
    }
    if state.engine_image(name) == image {
        return Ok(vec![]);
    }
    if volume.restoring() || volume.standby {
        return Err(Rejection::precondition(format!(
            "volume \"{name}\" is being restored; upgrade its engine once it is done"
        )));
    }
    match volume.state {
        VolumeState::Attached | VolumeState::Detached => {}
        other => {
            return Err(Rejection::precondition(format!(
                "volume \"{name}\" is {other:?}; its engine is upgraded while attached or detached"
            )));
        }
    }
    Ok(vec![Event::EngineUpgradeStarted {
        name: name.to_string(),
        image: image.to_string(),
        from: state.engine_image(name).to_string(),
        job,
        at,
    }])
}

fn running<'a>(state: &'a State, name: &str) -> Option<&'a EngineUpgrade> {
    state.engine_upgrades.get(name).filter(|u| u.running())
}

/// `ReportEngineUpgradeChecked`: the new binary starts. An attached volume's engine is
/// replaced under a new epoch; a detached volume takes the image at once.
pub(crate) fn checked(state: &State, name: &str, at: Timestamp) -> Result<Vec<Event>, Rejection> {
    let Some(upgrade) = running(state, name) else {
        return Ok(vec![]);
    };
    if upgrade.phase != UpgradePhase::Checking {
        return Ok(vec![]);
    }
    let volume = state.volume(name)?;
    match volume.state {
        VolumeState::Attached => Ok(vec![Event::EngineUpgradeChecked {
            name: name.to_string(),
            epoch: Epoch(volume.epoch.0 + 1),
        }]),
        VolumeState::Detached => Ok(vec![Event::EngineUpgradeFinished {
            name: name.to_string(),
            at,
        }]),
        // Attaching or detaching meanwhile: the next report, once it settled, goes on.
        _ => Ok(vec![]),
    }
}

/// `ReportEngineUpgradeFailed`: the new binary did not start (checked or as the engine).
pub(crate) fn failed(
    state: &State,
    name: &str,
    reason: &str,
    at: Timestamp,
) -> Result<Vec<Event>, Rejection> {
    let Some(upgrade) = running(state, name) else {
        return Ok(vec![]);
    };
    let volume = state.volume(name)?;
    let restart = match upgrade.phase {
        // The engine of the new image is replaced by one of the old under a new epoch.
        UpgradePhase::Engine { epoch } if volume.epoch == epoch => Some(Epoch(epoch.0 + 1)),
        _ => None,
    };
    let mut events = Vec::new();
    if let Some(epoch) = restart {
        events.push(Event::EngineRestarting {
            name: name.to_string(),
            epoch,
        });
    }
    events.push(Event::EngineUpgradeFailed {
        name: name.to_string(),
        reason: reason.to_string(),
        at,
    });
    Ok(events)
}

/// `StartEngineUpgradeJob`: every volume not on `image` is upgraded to it.
pub(crate) fn start_job(
    state: &State,
    image: &str,
    at: Timestamp,
) -> Result<Vec<Event>, Rejection> {
    check_image(image)?;
    let limit = state
        .settings
        .concurrent_automatic_engine_upgrade_per_node_limit;
    if limit == 0 {
        return Err(Rejection::precondition(
            "automatic engine upgrades are off: set concurrentAutomaticEngineUpgradePerNodeLimit \
             to the number of volumes a node may upgrade at once"
                .to_string(),
        ));
    }
    if let Some(job) = &state.engine_upgrade_job
        && job.running()
    {
        return Err(Rejection::conflict(format!(
            "an engine upgrade job to \"{}\" is running",
            job.image
        )));
    }
    let volumes = state
        .volumes
        .values()
        .filter(|v| v.state != VolumeState::Deleting && state.engine_image(&v.name) != image)
        .map(|v| v.name.clone())
        .collect();
    Ok(vec![Event::EngineUpgradeJobStarted {
        image: image.to_string(),
        volumes,
        at,
    }])
}

/// What follows from `events` for the upgrades and the job, on the state they leave: the
/// next phase of each running upgrade, the failure of one whose new engine died, and the
/// job's next volumes. Appends to `events`.
pub(crate) fn follow(state: &State, events: &mut Vec<Event>, at: Timestamp) {
    let busy = state.engine_upgrades.values().any(EngineUpgrade::running)
        || state
            .engine_upgrade_job
            .as_ref()
            .is_some_and(EngineUpgradeJob::running)
        || events.iter().any(|e| {
            matches!(
                e,
                Event::EngineUpgradeStarted { .. } | Event::EngineUpgradeJobStarted { .. }
            )
        });
    if !busy {
        return;
    }
    let mut after = state.clone();
    for event in events.iter() {
        crate::evolve(&mut after, event);
    }
    // Each round's events change what the next may do; a few rounds reach a fixpoint (a
    // finished upgrade lets the job start another, which may finish at once).
    for _ in 0..64 {
        let next = next_steps(state, &after, events, at);
        if next.is_empty() {
            return;
        }
        for event in &next {
            crate::evolve(&mut after, event);
        }
        events.extend(next);
    }
}

fn next_steps(before: &State, after: &State, events: &[Event], at: Timestamp) -> Vec<Event> {
    let mut next = Vec::new();
    for (name, upgrade) in &after.engine_upgrades {
        if !upgrade.running() {
            continue;
        }
        let Some(volume) = after.volumes.get(name) else {
            continue;
        };
        if volume.state == VolumeState::Deleting {
            next.push(Event::EngineUpgradeFailed {
                name: name.clone(),
                reason: "the volume is being deleted".to_string(),
                at,
            });
            continue;
        }
        match &upgrade.phase {
            UpgradePhase::Checking => {}
            UpgradePhase::Engine { epoch } => {
                // The engine of the new image died: its restart (a new epoch, decided by
                // the report of its death) runs the old image again.
                let died = events.iter().any(|e| {
                    matches!(e, Event::EngineRestarting { name: n, epoch: new }
                        if n == name && new.0 == epoch.0 + 1)
                });
                let was_at = before.volumes.get(name).map(|v| v.epoch);
                if died && was_at == Some(*epoch) {
                    next.push(Event::EngineUpgradeFailed {
                        name: name.clone(),
                        reason: format!("the engine of image \"{}\" exited", upgrade.image),
                        at,
                    });
                } else if volume.state == VolumeState::Detached {
                    // Detached meanwhile: its next engine starts with the image.
                    next.push(Event::EngineUpgradeFinished {
                        name: name.clone(),
                        at,
                    });
                } else if volume.state == VolumeState::Attached && volume.epoch >= *epoch {
                    next.push(Event::EngineUpgradeEngineRunning { name: name.clone() });
                }
            }
            UpgradePhase::Replicas => match volume.state {
                VolumeState::Attached => next.extend(next_replica(after, name, upgrade, at)),
                VolumeState::Detached => next.push(Event::EngineUpgradeFinished {
                    name: name.clone(),
                    at,
                }),
                _ => {}
            },
            UpgradePhase::Replica { .. } if volume.state == VolumeState::Detached => {
                // Detached meanwhile: the agents restart the rest of its replicas.
                next.push(Event::EngineUpgradeFinished {
                    name: name.clone(),
                    at,
                });
            }
            UpgradePhase::Replica { id, restarted } => match after.replicas.get(id) {
                None => next.extend(next_replica(after, name, upgrade, at)),
                Some(r) if *restarted && r.mode == ReplicaMode::ReadWrite => {
                    next.push(Event::EngineUpgradeReplicaDone {
                        name: name.clone(),
                        id: id.clone(),
                    });
                }
                Some(r) if !*restarted && r.mode == ReplicaMode::Error => {
                    next.push(Event::EngineUpgradeReplicaRestarted {
                        name: name.clone(),
                        id: id.clone(),
                    });
                }
                Some(_) => {}
            },
            UpgradePhase::Done | UpgradePhase::Failed => {}
        }
    }
    if let Some(job) = after.engine_upgrade_job.as_ref().filter(|j| j.running()) {
        next.extend(job_steps(after, job, at));
    }
    next
}

/// The replica an attached volume's upgrade restarts next, once the volume is healthy; or
/// the end of the upgrade.
fn next_replica(state: &State, name: &str, upgrade: &EngineUpgrade, at: Timestamp) -> Vec<Event> {
    let Some(volume) = state.volumes.get(name) else {
        return vec![];
    };
    let replicas: Vec<_> = state.replicas_of(volume).collect();
    let left: Vec<_> = replicas
        .iter()
        .filter(|r| !upgrade.replicas_done.contains(&r.id))
        .collect();
    if replicas.len() <= 1 || left.is_empty() {
        return vec![Event::EngineUpgradeFinished {
            name: name.to_string(),
            at,
        }];
    }
    if volume.robustness != Robustness::Healthy
        || replicas.iter().any(|r| r.mode != ReplicaMode::ReadWrite)
    {
        // One replica at a time, and only from a healthy volume.
        return vec![];
    }
    vec![Event::EngineUpgradeReplica {
        name: name.to_string(),
        id: left[0].id.clone(),
    }]
}

fn job_steps(state: &State, job: &EngineUpgradeJob, at: Timestamp) -> Vec<Event> {
    let mut next = Vec::new();
    // This job's upgrade of a volume (an earlier job's record does not count).
    let upgrade_of = |v: &str| {
        state
            .engine_upgrades
            .get(v)
            .filter(|u| u.job && u.image == job.image && u.started_at >= job.started_at)
    };
    for volume in &job.volumes {
        if job.done.contains(volume) {
            continue;
        }
        match upgrade_of(volume) {
            Some(u) if u.phase == UpgradePhase::Done => {
                next.push(Event::EngineUpgradeJobVolumeDone {
                    name: volume.clone(),
                })
            }
            Some(u) if u.phase == UpgradePhase::Failed && job.failed.is_none() => {
                next.push(Event::EngineUpgradeJobFailed {
                    name: volume.clone(),
                    reason: u.error.clone().unwrap_or_default(),
                    at,
                });
            }
            _ => {}
        }
    }
    if !next.is_empty() {
        return next;
    }
    let in_flight: Vec<&String> = job
        .volumes
        .iter()
        .filter(|v| !job.done.contains(v) && upgrade_of(v).is_some_and(EngineUpgrade::running))
        .collect();
    if job.failed.is_some() {
        if in_flight.is_empty() {
            next.push(Event::EngineUpgradeJobFinished { at });
        }
        return next;
    }
    let limit = state
        .settings
        .concurrent_automatic_engine_upgrade_per_node_limit;
    let mut per_node: std::collections::BTreeMap<&str, u64> = Default::default();
    for volume in &in_flight {
        if let Some(node) = state.upgrade_checker(volume) {
            *per_node.entry(node).or_default() += 1;
        }
    }
    let mut waiting = false;
    for volume in &job.volumes {
        if job.done.contains(volume) || upgrade_of(volume).is_some() {
            continue;
        }
        let Some(v) = state.volumes.get(volume) else {
            // Deleted meanwhile: nothing to upgrade.
            next.push(Event::EngineUpgradeJobVolumeDone {
                name: volume.clone(),
            });
            continue;
        };
        if state.engine_image(volume) == job.image {
            next.push(Event::EngineUpgradeJobVolumeDone {
                name: volume.clone(),
            });
            continue;
        }
        let node = state.upgrade_checker(volume).unwrap_or("");
        let count = per_node.entry(node).or_default();
        if limit == 0 || *count >= limit {
            waiting = true;
            continue;
        }
        match start(state, &v.name, &job.image, true, at) {
            Ok(events) if !events.is_empty() => {
                *count += 1;
                next.extend(events);
            }
            // Not upgradable now (attaching, restoring, another upgrade): later.
            _ => waiting = true,
        }
    }
    if next.is_empty() && in_flight.is_empty() && !waiting {
        next.push(Event::EngineUpgradeJobFinished { at });
    }
    next
}

/// Applies one upgrade event.
pub(crate) fn evolve(state: &mut State, event: &Event) {
    match event {
        Event::EngineUpgradeStarted {
            name,
            image,
            from,
            job,
            at,
        } => {
            state.engine_upgrades.insert(
                name.clone(),
                EngineUpgrade {
                    image: image.clone(),
                    from: from.clone(),
                    phase: UpgradePhase::Checking,
                    job: *job,
                    replicas_done: Vec::new(),
                    started_at: *at,
                    finished_at: None,
                    error: None,
                },
            );
        }
        Event::EngineUpgradeChecked { name, epoch } => {
            let Some(upgrade) = state.engine_upgrades.get_mut(name) else {
                return;
            };
            upgrade.phase = UpgradePhase::Engine { epoch: *epoch };
            state
                .engine_images
                .insert(name.clone(), upgrade.image.clone());
            crate::evolve::restart_engine(state, name, *epoch);
        }
        Event::EngineUpgradeReplica { name, id } => {
            if let Some(upgrade) = state.engine_upgrades.get_mut(name) {
                upgrade.phase = UpgradePhase::Replica {
                    id: id.clone(),
                    restarted: false,
                };
            }
        }
        Event::EngineUpgradeReplicaRestarted { name, id } => {
            if let Some(upgrade) = state.engine_upgrades.get_mut(name) {
                upgrade.phase = UpgradePhase::Replica {
                    id: id.clone(),
                    restarted: true,
                };
            }
        }
        Event::EngineUpgradeReplicaDone { name, id } => {
            if let Some(upgrade) = state.engine_upgrades.get_mut(name) {
                upgrade.replicas_done.push(id.clone());
                upgrade.phase = UpgradePhase::Replicas;
            }
        }
        Event::EngineUpgradeEngineRunning { name } => {
            if let Some(upgrade) = state.engine_upgrades.get_mut(name) {
                upgrade.phase = UpgradePhase::Replicas;
            }
        }
        Event::EngineUpgradeFinished { name, at } => {
            if let Some(upgrade) = state.engine_upgrades.get_mut(name) {
                upgrade.phase = UpgradePhase::Done;
                upgrade.finished_at = Some(*at);
                state
                    .engine_images
                    .insert(name.clone(), upgrade.image.clone());
            }
        }
        Event::EngineUpgradeFailed { name, reason, at } => {
            if let Some(upgrade) = state.engine_upgrades.get_mut(name) {
                upgrade.phase = UpgradePhase::Failed;
                upgrade.finished_at = Some(*at);
                upgrade.error = Some(reason.clone());
                if upgrade.from.is_empty() {
                    state.engine_images.remove(name);
                } else {
                    state
                        .engine_images
                        .insert(name.clone(), upgrade.from.clone());
                }
            }
        }
        Event::EngineUpgradeJobStarted { image, volumes, at } => {
            state.engine_upgrade_job = Some(EngineUpgradeJob {
                image: image.clone(),
                volumes: volumes.clone(),
                done: Vec::new(),
                failed: None,
                started_at: *at,
                finished_at: None,
            });
        }
        Event::EngineUpgradeJobVolumeDone { name } => {
            if let Some(job) = state.engine_upgrade_job.as_mut() {
                job.done.push(name.clone());
            }
        }
        Event::EngineUpgradeJobFailed { name, reason, .. } => {
            if let Some(job) = state.engine_upgrade_job.as_mut() {
                job.failed = Some((name.clone(), reason.clone()));
            }
        }
        Event::EngineUpgradeJobFinished { at } => {
            if let Some(job) = state.engine_upgrade_job.as_mut() {
                job.finished_at = Some(*at);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Cluster;
    use crate::{RejectionKind, Request};

    const NEW: &str = "/opt/shorthorn/v2/shorthorn";

    /// [`Cluster::with_attached_db`] at the cluster version engine upgrades need.
    fn cluster() -> Cluster {
        let mut c = Cluster::with_attached_db();
        c.ok(Request::RaiseClusterVersion {
            version: crate::CLUSTER_VERSION,
        });
        c
    }

    #[test]
    fn upgrades_wait_for_the_cluster_version_that_has_them() {
        let mut c = Cluster::with_attached_db();
        let msg = c.rejected(
            Request::UpgradeEngine {
                name: "db".into(),
                image: NEW.into(),
            },
            RejectionKind::Conflict,
        );
        assert!(msg.contains("this needs cluster version 2"), "{msg}");
        let msg = c.rejected(
            Request::SetSetting {
                key: "concurrentAutomaticEngineUpgradePerNodeLimit".into(),
                value: "1".into(),
            },
            RejectionKind::Conflict,
        );
        assert!(msg.contains("this needs cluster version 2"), "{msg}");
        // The settings format 11 knows are set as before.
        c.set("autoSalvage", "false");
    }

    fn phase(c: &Cluster, name: &str) -> UpgradePhase {
        c.state.engine_upgrades[name].phase.clone()
    }

    fn started(c: &mut Cluster, name: &str) {
        let epoch = c.state.volumes[name].epoch;
        c.ok(Request::ReportEngineStarted {
            name: name.into(),
            epoch,
            endpoint: "nbd://n1:10809/db".into(),
            frontend: Default::default(),
            device: None,
        });
    }

    /// Restarts the replica the upgrade is at, the way the agent and the engine report it.
    fn restart_replica(c: &mut Cluster, id: &str) {
        c.ok(Request::ReportReplicaFailed {
            id: id.into(),
            reason: "restarting with a new engine image".into(),
        });
        c.ok(Request::ReportReplicaRebuilding { id: id.into() });
        c.ok(Request::ReportReplicaRebuilt { id: id.into() });
    }

    #[test]
    fn an_attached_volume_moves_its_engine_then_one_replica_at_a_time() {
        let mut c = cluster();
        let epoch = c.state.volumes["db"].epoch;
        c.ok(Request::UpgradeEngine {
            name: "db".into(),
            image: NEW.into(),
        });
        assert_eq!(phase(&c, "db"), UpgradePhase::Checking);
        assert_eq!(
            c.state.engine_image("db"),
            "",
            "nothing moves before the check"
        );
        assert_eq!(c.state.volumes["db"].epoch, epoch);

        c.ok(Request::ReportEngineUpgradeChecked {
            name: "db".into(),
            version: "0.2.0".into(),
        });
        let new_epoch = Epoch(epoch.0 + 1);
        assert_eq!(phase(&c, "db"), UpgradePhase::Engine { epoch: new_epoch });
        assert_eq!(c.state.engine_image("db"), NEW);
        assert_eq!(c.state.volumes["db"].epoch, new_epoch);
        assert_eq!(c.state.volumes["db"].state, VolumeState::Attaching);

        started(&mut c, "db");
        let ids: Vec<String> = c.replicas("db").into_iter().map(|r| r.id).collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                phase(&c, "db"),
                UpgradePhase::Replica {
                    id: id.clone(),
                    restarted: false
                }
            );
            assert_eq!(c.state.replica_image(id), Some((NEW, true)));
            for other in &ids[i + 1..] {
                assert_eq!(c.state.replica_image(other), Some(("", false)));
            }
            restart_replica(&mut c, id);
        }
        assert_eq!(phase(&c, "db"), UpgradePhase::Done);
        assert_eq!(c.state.engine_upgrades["db"].replicas_done, ids);
        for id in &ids {
            assert_eq!(c.state.replica_image(id), Some((NEW, false)));
        }
    }

    #[test]
    fn the_next_replica_waits_for_a_healthy_volume() {
        let mut c = cluster();
        let ids: Vec<String> = c.replicas("db").into_iter().map(|r| r.id).collect();
        c.ok(Request::ReportReplicaFailed {
            id: ids[2].clone(),
            reason: "disk error".into(),
        });
        c.ok(Request::UpgradeEngine {
            name: "db".into(),
            image: NEW.into(),
        });
        c.ok(Request::ReportEngineUpgradeChecked {
            name: "db".into(),
            version: String::new(),
        });
        started(&mut c, "db");
        assert_eq!(phase(&c, "db"), UpgradePhase::Replicas);
        c.ok(Request::ReportReplicaRebuilding { id: ids[2].clone() });
        c.ok(Request::ReportReplicaRebuilt { id: ids[2].clone() });
        assert_eq!(
            phase(&c, "db"),
            UpgradePhase::Replica {
                id: ids[0].clone(),
                restarted: false
            }
        );
    }

    #[test]
    fn an_image_that_does_not_start_leaves_the_engine_alone() {
        let mut c = cluster();
        let before = c.state.volumes["db"].clone();
        c.ok(Request::UpgradeEngine {
            name: "db".into(),
            image: NEW.into(),
        });
        c.ok(Request::ReportEngineUpgradeFailed {
            name: "db".into(),
            reason: "exit status 1".into(),
        });
        assert_eq!(phase(&c, "db"), UpgradePhase::Failed);
        assert_eq!(
            c.state.engine_upgrades["db"].error.as_deref(),
            Some("exit status 1")
        );
        assert_eq!(c.state.volumes["db"], before, "the engine keeps its epoch");
        assert_eq!(c.state.engine_image("db"), "");
    }

    #[test]
    fn an_engine_of_the_new_image_that_exits_brings_the_old_image_back() {
        let mut c = cluster();
        c.ok(Request::UpgradeEngine {
            name: "db".into(),
            image: NEW.into(),
        });
        c.ok(Request::ReportEngineUpgradeChecked {
            name: "db".into(),
            version: String::new(),
        });
        let epoch = c.state.volumes["db"].epoch;
        c.ok(Request::ReportEngineDied {
            name: "db".into(),
            epoch,
        });
        assert_eq!(phase(&c, "db"), UpgradePhase::Failed);
        assert_eq!(c.state.engine_image("db"), "");
        assert_eq!(c.state.volumes["db"].epoch, Epoch(epoch.0 + 1));
        assert_eq!(c.state.volumes["db"].state, VolumeState::Attaching);
        // Once it serves, it is an ordinary engine again: a later death is a restart.
        started(&mut c, "db");
        let epoch = c.state.volumes["db"].epoch;
        c.ok(Request::ReportEngineDied {
            name: "db".into(),
            epoch,
        });
        assert_eq!(c.state.volumes["db"].epoch, Epoch(epoch.0 + 1));
        assert_eq!(phase(&c, "db"), UpgradePhase::Failed);
    }

    #[test]
    fn a_detached_volume_takes_the_image_once_checked() {
        let mut c = cluster();
        c.ok(Request::DetachVolume { name: "db".into() });
        let epoch = c.state.volumes["db"].epoch;
        c.ok(Request::ReportEngineStopped {
            name: "db".into(),
            epoch,
        });
        c.ok(Request::UpgradeEngine {
            name: "db".into(),
            image: NEW.into(),
        });
        let first = c.replicas("db")[0].clone();
        assert_eq!(c.state.upgrade_checker("db"), Some(first.node.as_str()));
        c.ok(Request::ReportEngineUpgradeChecked {
            name: "db".into(),
            version: String::new(),
        });
        assert_eq!(phase(&c, "db"), UpgradePhase::Done);
        assert_eq!(c.state.engine_image("db"), NEW);
        assert_eq!(c.state.replica_image(&first.id), Some((NEW, true)));
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut c = cluster();
        let msg = c.rejected(
            Request::UpgradeEngine {
                name: "db".into(),
                image: "shorthorn".into(),
            },
            RejectionKind::InvalidArgument,
        );
        assert!(msg.contains("absolute path"), "{msg}");
        c.rejected(
            Request::UpgradeEngine {
                name: "nope".into(),
                image: NEW.into(),
            },
            RejectionKind::NotFound,
        );
        c.ok(Request::UpgradeEngine {
            name: "db".into(),
            image: NEW.into(),
        });
        let msg = c.rejected(
            Request::UpgradeEngine {
                name: "db".into(),
                image: "/other".into(),
            },
            RejectionKind::Conflict,
        );
        assert!(msg.contains("being upgraded"), "{msg}");
        let msg = c.rejected(
            Request::StartEngineUpgradeJob { image: NEW.into() },
            RejectionKind::PreconditionFailed,
        );
        assert!(
            msg.contains("concurrentAutomaticEngineUpgradePerNodeLimit"),
            "{msg}"
        );
    }

    #[test]
    fn the_job_keeps_to_the_per_node_limit_and_stops_at_the_first_failure() {
        let mut c = cluster();
        c.volume("web", 1, 3);
        c.attach("web", "n1");
        c.volume("logs", 1, 3);
        c.attach("logs", "n1");
        c.set("concurrentAutomaticEngineUpgradePerNodeLimit", "1");
        c.ok(Request::StartEngineUpgradeJob { image: NEW.into() });
        let job = c.state.engine_upgrade_job.clone().unwrap();
        assert_eq!(job.volumes, ["db", "logs", "web"]);
        let running: Vec<&String> = c
            .state
            .engine_upgrades
            .iter()
            .filter(|(_, u)| u.running())
            .map(|(v, _)| v)
            .collect();
        assert_eq!(running, ["db"], "one volume at a time on n1");

        // db goes all the way; logs starts next.
        c.ok(Request::ReportEngineUpgradeChecked {
            name: "db".into(),
            version: String::new(),
        });
        started(&mut c, "db");
        for id in c.replicas("db").into_iter().map(|r| r.id) {
            restart_replica(&mut c, &id);
        }
        assert_eq!(phase(&c, "db"), UpgradePhase::Done);
        assert_eq!(phase(&c, "logs"), UpgradePhase::Checking);
        assert!(!c.state.engine_upgrades.contains_key("web"));

        // logs fails: web is never started and the job ends.
        c.ok(Request::ReportEngineUpgradeFailed {
            name: "logs".into(),
            reason: "exit status 1".into(),
        });
        let job = c.state.engine_upgrade_job.clone().unwrap();
        assert_eq!(job.done, ["db"]);
        assert_eq!(
            job.failed,
            Some(("logs".to_string(), "exit status 1".to_string()))
        );
        assert!(job.finished_at.is_some());
        assert!(!c.state.engine_upgrades.contains_key("web"));
        assert_eq!(c.state.engine_image("web"), "");
        assert_eq!(c.state.engine_image("logs"), "");
    }
}
