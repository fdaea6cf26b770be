//! The log's state as the objects that mirror it: a pure function, so what the mirror
//! writes is decided (and tested) without an API server.

use std::collections::BTreeMap;

use serde::Serialize;
use shorthorn_state::{
    BackupState, JobOutcome, ReplicaMode, RestoreState, SnapshotState, State, Timestamp,
    VolumeState,
};

use crate::crd::{self, object_name, setting_object_name};

/// The kinds the mirror writes, in the order it writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Node,
    Setting,
    BackupTarget,
    Volume,
    Replica,
    Engine,
    Snapshot,
    Backup,
    BackupVolume,
    RecurringJob,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Node,
        Kind::Setting,
        Kind::BackupTarget,
        Kind::Volume,
        Kind::Replica,
        Kind::Engine,
        Kind::Snapshot,
        Kind::Backup,
        Kind::BackupVolume,
        Kind::RecurringJob,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Setting => "Setting",
            Kind::BackupTarget => "BackupTarget",
            Kind::Volume => "Volume",
            Kind::Replica => "Replica",
            Kind::Engine => "Engine",
            Kind::Snapshot => "Snapshot",
            Kind::Backup => "Backup",
            Kind::BackupVolume => "BackupVolume",
            Kind::RecurringJob => "RecurringJob",
        }
    }

    /// Whether a user may edit the spec (edits of the others are refused and put back).
    pub fn editable(self) -> bool {
        matches!(
            self,
            Kind::Volume | Kind::Setting | Kind::BackupTarget | Kind::Node | Kind::RecurringJob
        )
    }
}

/// One object as the log says it should be.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub spec: serde_json::Value,
    pub status: serde_json::Value,
}

/// Every object the log implies, by kind and object name.
pub type Projection = BTreeMap<(Kind, String), Desired>;

fn json(value: impl Serialize) -> serde_json::Value {
    serde_json::to_value(value).expect("CRD types serialize")
}

fn lower_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_ascii_lowercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

fn volume_state(state: VolumeState) -> &'static str {
    match state {
        VolumeState::Creating => "creating",
        VolumeState::Detached => "detached",
        VolumeState::Attaching => "attaching",
        VolumeState::Attached => "attached",
        VolumeState::Detaching => "detaching",
        VolumeState::Deleting => "deleting",
    }
}

pub fn replica_mode(mode: ReplicaMode) -> &'static str {
    match mode {
        ReplicaMode::ReadWrite => "RW",
        ReplicaMode::WriteOnly => "WO",
        ReplicaMode::Error => "ERR",
    }
}

/// The Volume spec the log has for `volume` (what edits are compared against).
pub fn volume_spec(volume: &shorthorn_state::Volume) -> crd::VolumeSpec {
    crd::VolumeSpec {
        size: volume.size.to_string(),
        number_of_replicas: i32::from(volume.number_of_replicas),
        data_locality: volume.data_locality.as_str().to_string(),
        stale_replica_timeout_seconds: volume.stale_replica_timeout_secs as i64,
        node_selector: volume.node_selector.iter().cloned().collect(),
        disk_selector: volume.disk_selector.iter().cloned().collect(),
        from_backup: volume
            .restore
            .as_ref()
            .map(|r| r.url.clone())
            .unwrap_or_default(),
        standby: volume.standby,
    }
}

pub fn node_spec(node: &shorthorn_state::Node) -> crd::NodeSpec {
    crd::NodeSpec {
        allow_scheduling: node.schedulable,
        zone: node.zone.clone(),
        tags: node.tags.iter().cloned().collect(),
        disks: node
            .disks
            .values()
            .map(|d| {
                (
                    d.id.clone(),
                    crd::DiskSpec {
                        path: d.path.clone(),
                        allow_scheduling: d.schedulable,
                        storage_reserved: d.reserved,
                        tags: d.tags.iter().cloned().collect(),
                    },
                )
            })
            .collect(),
    }
}

pub fn backup_target_spec(state: &State) -> crd::BackupTargetSpec {
    crd::BackupTargetSpec {
        backup_target_url: state.settings.backup_target.clone(),
        credential_secret: state.settings.backup_target_credential_secret.clone(),
        poll_interval: state.settings.backupstore_poll_interval as i64,
    }
}

/// The objects the log implies. Statuses leave `observedGeneration` and `conditions` to the
/// mirror (it knows the objects' generations and edit outcomes).
pub fn project(state: &State) -> Projection {
    let mut out = Projection::new();
    let mut put = |kind: Kind, name: String, spec: serde_json::Value, status: serde_json::Value| {
        out.insert((kind, name), Desired { spec, status });
    };
    for node in state.nodes.values() {
        let status = crd::NodeStatus {
            ready: node.ready,
            address: node.address.clone(),
            disk_status: node
                .disks
                .values()
                .map(|d| {
                    (
                        d.id.clone(),
                        crd::DiskStatus {
                            storage_maximum: d.capacity,
                            storage_available: d.available,
                            storage_scheduled: d.scheduled,
                            replica_count: d.replica_count,
                        },
                    )
                })
                .collect(),
            ..Default::default()
        };
        put(
            Kind::Node,
            node.id.clone(),
            json(node_spec(node)),
            json(status),
        );
    }
    for (key, value) in state.settings.entries() {
        put(
            Kind::Setting,
            setting_object_name(key),
            json(crd::SettingSpec { value }),
            json(crd::SettingStatus {
                key: key.to_string(),
                ..Default::default()
            }),
        );
    }
    put(
        Kind::BackupTarget,
        "default".to_string(),
        json(backup_target_spec(state)),
        json(crd::BackupTargetStatus {
            backup_volume_count: state.backup_volumes.len() as u32,
            ..Default::default()
        }),
    );
    for volume in state.volumes.values() {
        let attachment = volume.attachment.as_ref();
        let status = crd::VolumeStatus {
            state: volume_state(volume.state).to_string(),
            robustness: lower_first(&format!("{:?}", volume.robustness)),
            current_node_id: attachment.map(|a| a.node.clone()).unwrap_or_default(),
            epoch: volume.epoch.0,
            endpoint: attachment
                .and_then(|a| a.endpoint.clone())
                .unwrap_or_default(),
            device: attachment
                .and_then(|a| a.device.clone())
                .unwrap_or_default(),
            frontend: attachment
                .map(|a| a.frontend.as_str().to_string())
                .unwrap_or_default(),
            replicas: state
                .replicas_of(volume)
                .map(|r| (r.id.clone(), replica_mode(r.mode).to_string()))
                .collect(),
            restore_state: volume
                .restore
                .as_ref()
                .map(|r| {
                    match r.state {
                        RestoreState::InProgress => "inProgress",
                        RestoreState::Completed => "completed",
                        RestoreState::Error => "error",
                    }
                    .to_string()
                })
                .unwrap_or_default(),
            restore_progress: volume.restore.as_ref().map(|r| r.progress).unwrap_or(0),
            current_image: state.engine_image(&volume.name).to_string(),
            engine_upgrade: state
                .engine_upgrades
                .get(&volume.name)
                .map(upgrade_text)
                .unwrap_or_default(),
            ..Default::default()
        };
        put(
            Kind::Volume,
            volume.name.clone(),
            json(volume_spec(volume)),
            json(status),
        );
        if let Some(a) = attachment {
            let engine_state = match volume.state {
                VolumeState::Attached => "running",
                VolumeState::Detaching => "stopping",
                _ => "starting",
            };
            put(
                Kind::Engine,
                format!("{}-e", volume.name),
                json(crd::EngineSpec {
                    volume_name: volume.name.clone(),
                    node_id: a.node.clone(),
                    epoch: a.epoch.0,
                    frontend: a.frontend.as_str().to_string(),
                    internal: a.internal,
                }),
                json(crd::EngineStatus {
                    state: engine_state.to_string(),
                    endpoint: a.endpoint.clone().unwrap_or_default(),
                    device: a.device.clone().unwrap_or_default(),
                    error: a.error.clone().unwrap_or_default(),
                    ..Default::default()
                }),
            );
        }
        for snapshot in volume.snapshots.values() {
            let snap_state = match snapshot.state {
                SnapshotState::Pending => "pending",
                SnapshotState::Ready => "ready",
                SnapshotState::Deleting => "deleting",
            };
            put(
                Kind::Snapshot,
                object_name(&[&volume.name, &snapshot.name]),
                json(crd::SnapshotSpec {
                    volume: volume.name.clone(),
                    name: snapshot.name.clone(),
                }),
                json(crd::SnapshotStatus {
                    state: snap_state.to_string(),
                    size: snapshot.size.to_string(),
                    ..Default::default()
                }),
            );
        }
    }
    for replica in state.replicas.values() {
        put(
            Kind::Replica,
            replica.id.clone(),
            json(crd::ReplicaSpec {
                volume_name: replica.volume.clone(),
                node_id: replica.node.clone(),
                disk_id: replica.disk.clone(),
            }),
            json(crd::ReplicaStatus {
                mode: replica_mode(replica.mode).to_string(),
                address: replica.address.clone().unwrap_or_default(),
                failure: replica.failure.clone().unwrap_or_default(),
                ..Default::default()
            }),
        );
    }
    for backup in state.backups.values() {
        let backup_state = match backup.state {
            BackupState::InProgress => "inProgress",
            BackupState::Completed => "completed",
            BackupState::Error => "error",
        };
        put(
            Kind::Backup,
            object_name(&[&backup.name]),
            json(crd::BackupSpec {
                name: backup.name.clone(),
                volume: backup.volume.clone(),
                snapshot: backup.snapshot.clone(),
                labels: backup.labels.clone(),
            }),
            json(crd::BackupStatus {
                state: backup_state.to_string(),
                progress: backup.progress,
                url: backup.url.clone(),
                size: backup.size.to_string(),
                blocks: backup.blocks,
                uploaded_bytes: backup.uploaded_bytes,
                error: backup.error.clone().unwrap_or_default(),
                ..Default::default()
            }),
        );
    }
    for bv in state.backup_volumes.values() {
        let last = bv.backups.last();
        put(
            Kind::BackupVolume,
            object_name(&[&bv.name]),
            json(crd::BackupVolumeSpec {
                name: bv.name.clone(),
            }),
            json(crd::BackupVolumeStatus {
                target: bv.target.clone(),
                backup_count: bv.backups.len() as u32,
                last_backup_name: last.map(|b| b.name.clone()).unwrap_or_default(),
                size: last.map(|b| b.size.to_string()).unwrap_or_default(),
                ..Default::default()
            }),
        );
    }
    for job in state.recurring_jobs.values() {
        let spec = &job.spec;
        let failure = job
            .history
            .last()
            .and_then(|run| {
                run.outcomes.values().find_map(|o| match o {
                    JobOutcome::Failed { reason, .. } => Some(reason.clone()),
                    _ => None,
                })
            })
            .unwrap_or_default();
        put(
            Kind::RecurringJob,
            spec.name.clone(),
            json(crd::RecurringJobSpec {
                task: spec.task.as_str().to_string(),
                cron: spec.cron.clone(),
                retain: i32::try_from(spec.retain).unwrap_or(i32::MAX),
                concurrency: i32::try_from(spec.concurrency).unwrap_or(i32::MAX),
                groups: spec.groups.iter().cloned().collect(),
                labels: spec.labels.clone(),
            }),
            json(crd::RecurringJobStatus {
                last_run: job.last_slot.map(rfc3339).unwrap_or_default(),
                next_run: job.next_slot().map(rfc3339).unwrap_or_default(),
                running_volumes: job
                    .run
                    .as_ref()
                    .map_or(0, |r| (r.pending.len() + r.running.len()) as u32),
                last_run_failed: !failure.is_empty(),
                last_failure: failure,
                ..Default::default()
            }),
        );
    }
    out
}

/// A log time (ms since the epoch) as Kubernetes writes times.
pub(crate) fn rfc3339(at: Timestamp) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(at.0 as i64)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// `IMAGE: PHASE` of an engine upgrade, as the Volume's status shows it.
fn upgrade_text(upgrade: &shorthorn_state::EngineUpgrade) -> String {
    use shorthorn_state::UpgradePhase;
    let phase = match &upgrade.phase {
        UpgradePhase::Checking => "checking".to_string(),
        UpgradePhase::Engine { .. } => "engine".to_string(),
        UpgradePhase::Replicas => "replicas".to_string(),
        UpgradePhase::Replica { id, .. } => format!("replica {id}"),
        UpgradePhase::Done => "done".to_string(),
        UpgradePhase::Failed => format!(
            "failed: {}",
            upgrade.error.as_deref().unwrap_or("unknown reason")
        ),
    };
    format!("{}: {phase}", upgrade.image)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shorthorn_state::{Command, DiskSpec, NodeSpec, Request, Timestamp, VolumeSpec, apply};

    /// Three nodes of 100 GiB and volume "db" (1 GiB, 3 replicas).
    pub(crate) fn cluster() -> State {
        let mut state = State::default();
        let mut run = |request: Request| {
            apply(
                &mut state,
                &Command::new(Timestamp(1_000_000), "test", request),
            )
            .expect("accepted");
        };
        for id in ["n1", "n2", "n3"] {
            run(Request::RegisterNode(NodeSpec {
                id: id.into(),
                address: format!("{id}:9500"),
                disks: vec![DiskSpec {
                    id: "d1".into(),
                    path: "/data".into(),
                    capacity: 100 << 30,
                    ..Default::default()
                }],
                ..Default::default()
            }));
        }
        run(Request::CreateVolume(VolumeSpec {
            name: "db".into(),
            size: 1 << 30,
            number_of_replicas: Some(3),
            ..Default::default()
        }));
        state
    }

    #[test]
    fn a_volume_with_replicas_projects_to_its_objects() {
        let p = project(&cluster());
        let vol = &p[&(Kind::Volume, "db".to_string())];
        assert_eq!(vol.spec["numberOfReplicas"], 3);
        assert_eq!(vol.spec["size"], "1073741824");
        assert_eq!(vol.status["replicas"].as_object().map(|m| m.len()), Some(3));
        let replicas = p.keys().filter(|(k, _)| *k == Kind::Replica).count();
        assert_eq!(replicas, 3);
        assert_eq!(p.keys().filter(|(k, _)| *k == Kind::Node).count(), 3);
        assert!(p.contains_key(&(Kind::Setting, "backup-target".to_string())));
        assert!(p.contains_key(&(Kind::BackupTarget, "default".to_string())));
        assert!(!p.keys().any(|(k, _)| *k == Kind::Engine));
    }
}
