//! A user's edit of an object's spec, as the commands that make the log agree with it.
//! Fields the log cannot change that way are refused with a sentence saying what to do
//! instead; the mirror puts that on the object and puts the log's value back.

use shorthorn_state::{DataLocality, JobTask, Request, State};

use crate::crd;
use crate::project::{Kind, backup_target_spec, node_spec, volume_spec};

/// The requests that turn the log's version of object `name` of `kind` into `spec` (none
/// when they agree), or why the edit cannot be made.
pub fn requests_for(
    kind: Kind,
    name: &str,
    spec: &serde_json::Value,
    state: &State,
) -> Result<Vec<Request>, String> {
    match kind {
        Kind::Volume => volume(name, spec, state),
        Kind::Setting => setting(name, spec, state),
        Kind::BackupTarget => backup_target(spec, state),
        Kind::Node => node(name, spec, state),
        Kind::RecurringJob => recurring_job(name, spec, state),
        other => Err(format!(
            "the spec of a {} is written by Shorthorn and cannot be edited; use the shorthorn CLI or API",
            other.name()
        )),
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    kind: Kind,
    spec: &serde_json::Value,
) -> Result<T, String> {
    serde_json::from_value(spec.clone())
        .map_err(|e| format!("the {} spec is invalid: {e}", kind.name()))
}

fn fixed(field: &str, instead: &str) -> String {
    format!("spec.{field} cannot be changed on an existing object; {instead}")
}

fn volume(name: &str, spec: &serde_json::Value, state: &State) -> Result<Vec<Request>, String> {
    let Some(v) = state.volumes.get(name) else {
        return Err(format!(
            "volume \"{name}\" is not in the log (it is being created or was deleted)"
        ));
    };
    let want: crd::VolumeSpec = parse(Kind::Volume, spec)?;
    let have = volume_spec(v);
    if want.node_selector != have.node_selector {
        return Err(fixed(
            "nodeSelector",
            "create a new volume with the selector",
        ));
    }
    if want.disk_selector != have.disk_selector {
        return Err(fixed(
            "diskSelector",
            "create a new volume with the selector",
        ));
    }
    if want.from_backup != have.from_backup {
        return Err(fixed("fromBackup", "restore into a new volume"));
    }
    if want.standby != have.standby {
        return Err(fixed(
            "standby",
            "activate a standby volume with the CLI or API",
        ));
    }
    let stale_secs = (want.stale_replica_timeout_seconds != have.stale_replica_timeout_seconds)
        .then(|| {
            u64::try_from(want.stale_replica_timeout_seconds).map_err(|_| {
                format!(
                    "spec.staleReplicaTimeoutSeconds must not be negative: {}",
                    want.stale_replica_timeout_seconds
                )
            })
        })
        .transpose()?;
    let mut out = Vec::new();
    let size: u64 = want
        .size
        .trim()
        .parse()
        .map_err(|_| format!("spec.size \"{}\" is not a number of bytes", want.size))?;
    if size != v.size {
        if size < v.size {
            return Err(format!(
                "spec.size {size} is smaller than the volume's {} bytes: volumes cannot shrink",
                v.size
            ));
        }
        out.push(Request::ExpandVolume {
            name: name.to_string(),
            size,
        });
    }
    let replicas = u8::try_from(want.number_of_replicas).map_err(|_| {
        format!(
            "spec.numberOfReplicas {} is out of range 1..=20",
            want.number_of_replicas
        )
    })?;
    let locality = match want.data_locality.as_str() {
        "disabled" => DataLocality::Disabled,
        "best-effort" => DataLocality::BestEffort,
        other => {
            return Err(format!(
                "spec.dataLocality \"{other}\" is not disabled or best-effort"
            ));
        }
    };
    if replicas != v.number_of_replicas || locality != v.data_locality || stale_secs.is_some() {
        out.push(Request::UpdateVolume {
            name: name.to_string(),
            number_of_replicas: (replicas != v.number_of_replicas).then_some(replicas),
            data_locality: (locality != v.data_locality).then_some(locality),
            labels: None,
            stale_replica_timeout_secs: stale_secs,
        });
    }
    Ok(out)
}

fn setting_key(name: &str) -> Option<&'static str> {
    shorthorn_state::SETTING_KEYS
        .iter()
        .copied()
        .find(|k| crd::setting_object_name(k) == name)
}

fn setting(name: &str, spec: &serde_json::Value, state: &State) -> Result<Vec<Request>, String> {
    let Some(key) = setting_key(name) else {
        return Err(format!("\"{name}\" is not a Shorthorn setting"));
    };
    let want: crd::SettingSpec = parse(Kind::Setting, spec)?;
    if state.settings.get(key).as_deref() == Some(want.value.as_str()) {
        return Ok(Vec::new());
    }
    Ok(vec![Request::SetSetting {
        key: key.to_string(),
        value: want.value,
    }])
}

fn backup_target(spec: &serde_json::Value, state: &State) -> Result<Vec<Request>, String> {
    let want: crd::BackupTargetSpec = parse(Kind::BackupTarget, spec)?;
    let have = backup_target_spec(state);
    let mut out = Vec::new();
    let mut set = |key: &str, value: String| {
        out.push(Request::SetSetting {
            key: key.to_string(),
            value,
        })
    };
    if want.backup_target_url != have.backup_target_url {
        set("backupTarget", want.backup_target_url);
    }
    if want.credential_secret != have.credential_secret {
        set("backupTargetCredentialSecret", want.credential_secret);
    }
    if want.poll_interval != have.poll_interval {
        set("backupstorePollInterval", want.poll_interval.to_string());
    }
    Ok(out)
}

fn recurring_job(
    name: &str,
    spec: &serde_json::Value,
    state: &State,
) -> Result<Vec<Request>, String> {
    let Some(job) = state.recurring_jobs.get(name) else {
        return Err(format!(
            "recurring job \"{name}\" is not in the log (it is being created or was deleted)"
        ));
    };
    let want: crd::RecurringJobSpec = parse(Kind::RecurringJob, spec)?;
    let task = JobTask::parse(&want.task).ok_or_else(|| {
        format!(
            "spec.task \"{}\" is not one of {}",
            want.task,
            JobTask::ALL.map(JobTask::as_str).join(", ")
        )
    })?;
    let count = |field: &str, value: i32| {
        u32::try_from(value).map_err(|_| format!("spec.{field} must not be negative: {value}"))
    };
    let wanted = shorthorn_state::RecurringJobSpec {
        name: name.to_string(),
        task,
        cron: want.cron,
        retain: count("retain", want.retain)?,
        concurrency: count("concurrency", want.concurrency)?,
        groups: want.groups.into_iter().collect(),
        labels: want.labels,
    };
    if wanted == job.spec {
        return Ok(Vec::new());
    }
    // The log checks the rest (cron, retain and concurrency bounds) and says why.
    Ok(vec![Request::UpdateRecurringJob(wanted)])
}

fn node(name: &str, spec: &serde_json::Value, state: &State) -> Result<Vec<Request>, String> {
    let Some(n) = state.nodes.get(name) else {
        return Err(format!("node \"{name}\" is not in the log"));
    };
    let want: crd::NodeSpec = parse(Kind::Node, spec)?;
    let have = node_spec(n);
    let mut out = Vec::new();
    if want.allow_scheduling != have.allow_scheduling {
        out.push(Request::SetNodeSchedulable {
            id: name.to_string(),
            schedulable: want.allow_scheduling,
        });
    }
    if want.zone != have.zone || want.tags != have.tags {
        out.push(Request::UpdateNode {
            id: name.to_string(),
            address: None,
            zone: (want.zone != have.zone).then(|| want.zone.clone()),
            labels: None,
            tags: (want.tags != have.tags).then(|| want.tags.iter().cloned().collect()),
        });
    }
    if want.disks.keys().ne(have.disks.keys()) {
        return Err(fixed(
            "disks",
            "disks are added and removed by the node's agent and the CLI (keys cannot change)",
        ));
    }
    for (id, w) in &want.disks {
        let h = &have.disks[id];
        if w.path != h.path {
            return Err(fixed(&format!("disks.{id}.path"), "add a new disk instead"));
        }
        if w.allow_scheduling != h.allow_scheduling {
            out.push(Request::SetDiskSchedulable {
                node: name.to_string(),
                disk: id.clone(),
                schedulable: w.allow_scheduling,
            });
        }
        if w.storage_reserved != h.storage_reserved || w.tags != h.tags {
            out.push(Request::UpdateDisk {
                node: name.to_string(),
                disk: id.clone(),
                capacity: None,
                reserved: (w.storage_reserved != h.storage_reserved).then_some(w.storage_reserved),
                available: None,
                tags: (w.tags != h.tags).then(|| w.tags.iter().cloned().collect()),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::tests::cluster;
    use crate::project::{Kind, project};

    fn spec_of(state: &State, kind: Kind, name: &str) -> serde_json::Value {
        project(state)[&(kind, name.to_string())].spec.clone()
    }

    #[test]
    fn an_unchanged_spec_asks_for_nothing() {
        let state = cluster();
        let projection = project(&state);
        for ((kind, name), desired) in &projection {
            if kind.editable() {
                assert_eq!(
                    requests_for(*kind, name, &desired.spec, &state),
                    Ok(vec![]),
                    "{kind:?} {name}"
                );
            }
        }
    }

    #[test]
    fn replica_count_size_locality_and_stale_timeout_become_commands() {
        let state = cluster();
        let mut spec = spec_of(&state, Kind::Volume, "db");
        spec["numberOfReplicas"] = 2.into();
        spec["size"] = (2u64 << 30).to_string().into();
        spec["dataLocality"] = "best-effort".into();
        spec["staleReplicaTimeoutSeconds"] = 600.into();
        assert_eq!(
            requests_for(Kind::Volume, "db", &spec, &state),
            Ok(vec![
                Request::ExpandVolume {
                    name: "db".into(),
                    size: 2 << 30
                },
                Request::UpdateVolume {
                    labels: Default::default(),
                    name: "db".into(),
                    number_of_replicas: Some(2),
                    data_locality: Some(DataLocality::BestEffort),
                    stale_replica_timeout_secs: Some(600),
                },
            ])
        );
        let mut spec = spec_of(&state, Kind::Volume, "db");
        spec["staleReplicaTimeoutSeconds"] = (-1).into();
        let why = requests_for(Kind::Volume, "db", &spec, &state).unwrap_err();
        assert!(why.contains("must not be negative"), "{why}");
    }

    #[test]
    fn bad_edits_say_why() {
        let state = cluster();
        let mut spec = spec_of(&state, Kind::Volume, "db");
        spec["size"] = "1048576".into();
        let why = requests_for(Kind::Volume, "db", &spec, &state).unwrap_err();
        assert!(why.contains("cannot shrink"), "{why}");
        let mut spec = spec_of(&state, Kind::Volume, "db");
        spec["nodeSelector"] = serde_json::json!(["ssd"]);
        let why = requests_for(Kind::Volume, "db", &spec, &state).unwrap_err();
        assert!(why.contains("nodeSelector"), "{why}");
        let mut spec = spec_of(&state, Kind::Volume, "db");
        spec["numberOfReplicas"] = 300.into();
        assert!(requests_for(Kind::Volume, "db", &spec, &state).is_err());
        let replica = project(&state)
            .into_iter()
            .find(|((k, _), _)| *k == Kind::Replica)
            .expect("a replica");
        let why = requests_for(Kind::Replica, &replica.0.1, &replica.1.spec, &state).unwrap_err();
        assert!(why.contains("cannot be edited"), "{why}");
    }

    #[test]
    fn a_recurring_job_is_mirrored_and_its_edits_become_an_update() {
        let mut state = cluster();
        let job = shorthorn_state::RecurringJobSpec {
            name: "nightly".into(),
            task: JobTask::Backup,
            cron: "0 2 * * *".into(),
            retain: 7,
            concurrency: 2,
            groups: ["default".to_string()].into(),
            labels: Default::default(),
        };
        shorthorn_state::apply(
            &mut state,
            &shorthorn_state::Command::new(
                shorthorn_state::Timestamp(1_000_000),
                "test",
                Request::CreateRecurringJob(job.clone()),
            ),
        )
        .expect("accepted");
        let desired = &project(&state)[&(Kind::RecurringJob, "nightly".to_string())];
        assert_eq!(desired.spec["task"], "backup");
        assert_eq!(desired.spec["retain"], 7);
        assert_eq!(desired.status["nextRun"], "1970-01-01T02:00:00Z");
        assert_eq!(desired.status["lastRun"], "");
        assert_eq!(
            requests_for(Kind::RecurringJob, "nightly", &desired.spec, &state),
            Ok(vec![])
        );
        let mut spec = desired.spec.clone();
        spec["cron"] = "*/5 * * * *".into();
        spec["retain"] = 3.into();
        let want = shorthorn_state::RecurringJobSpec {
            cron: "*/5 * * * *".into(),
            retain: 3,
            ..job
        };
        assert_eq!(
            requests_for(Kind::RecurringJob, "nightly", &spec, &state),
            Ok(vec![Request::UpdateRecurringJob(want)])
        );
        let mut spec = desired.spec.clone();
        spec["task"] = "defrag".into();
        let why = requests_for(Kind::RecurringJob, "nightly", &spec, &state).unwrap_err();
        assert!(why.contains("\"defrag\" is not one of"), "{why}");
        let mut spec = desired.spec.clone();
        spec["retain"] = (-1).into();
        let why = requests_for(Kind::RecurringJob, "nightly", &spec, &state).unwrap_err();
        assert!(why.contains("spec.retain"), "{why}");
    }

    #[test]
    fn settings_and_the_backup_target_become_set_setting() {
        let state = cluster();
        let r = requests_for(
            Kind::Setting,
            "backupstore-poll-interval",
            &serde_json::json!({"value": "500"}),
            &state,
        );
        assert_eq!(
            r,
            Ok(vec![Request::SetSetting {
                key: "backupstorePollInterval".into(),
                value: "500".into()
            }])
        );
        let mut spec = spec_of(&state, Kind::BackupTarget, "default");
        spec["backupTargetURL"] = "s3://b@us-east-1/".into();
        assert_eq!(
            requests_for(Kind::BackupTarget, "default", &spec, &state),
            Ok(vec![Request::SetSetting {
                key: "backupTarget".into(),
                value: "s3://b@us-east-1/".into()
            }])
        );
        assert!(
            requests_for(
                Kind::Setting,
                "no-such",
                &serde_json::json!({"value": "1"}),
                &state
            )
            .is_err()
        );
    }
}
