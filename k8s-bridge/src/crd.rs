//! The custom resources of group `shorthorn.io`: what `kubectl get volumes.shorthorn.io`
//! shows. The log is the source of truth; these objects mirror it (status always, spec as
//! the log has it), and an edit of a spec field the log knows becomes a command.
//!
//! Their YAML is generated from these types ([`crds_yaml`], `shorthorn crds`) into the
//! chart; a test fails when the committed YAML is stale.

use std::collections::BTreeMap;

use kube::CustomResource;
use kube::core::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Shorthorn resource.
pub const GROUP: &str = "shorthorn.io";
/// The field manager of every write the mirror makes (server-side apply).
pub const FIELD_MANAGER: &str = "shorthorn-manager";

/// A condition in the shape Kubernetes uses (`metav1.Condition`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A replicated block device (Longhorn's `volumes.longhorn.io`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "shorthorn.io",
    version = "v1",
    kind = "Volume",
    namespaced,
    status = "VolumeStatus",
    shortname = "shvol",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Robustness","type":"string","jsonPath":".status.robustness"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.numberOfReplicas"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".spec.size"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.currentNodeID"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    /// Bytes, a multiple of 2 MiB (a string, as Longhorn writes it).
    pub size: String,
    pub number_of_replicas: i32,
    /// `disabled` or `best-effort`.
    pub data_locality: String,
    /// Seconds a failed replica is kept for a delta rebuild before it is replaced.
    pub stale_replica_timeout_seconds: i64,
    #[serde(default)]
    pub node_selector: Vec<String>,
    #[serde(default)]
    pub disk_selector: Vec<String>,
    /// The backup URL this volume was restored from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from_backup: String,
    /// A disaster-recovery standby.
    #[serde(default)]
    pub standby: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    /// creating, detached, attaching, attached, detaching or deleting.
    pub state: String,
    /// healthy, degraded or faulted.
    pub robustness: String,
    /// The node the volume is attached to.
    #[serde(
        rename = "currentNodeID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub current_node_id: String,
    pub epoch: u64,
    /// The engine's NBD endpoint and the node's block device, once attached.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub frontend: String,
    /// Replica ids with their modes (RW, WO, ERR).
    #[serde(default)]
    pub replicas: BTreeMap<String, String>,
    /// Restore from a backup: state and percent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub restore_state: String,
    #[serde(default)]
    pub restore_progress: u8,
    /// The engine image its engine and replicas run (empty: each node's own binary).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub current_image: String,
    /// Its last engine upgrade: `IMAGE: PHASE` (checking, engine, replicas, replica ID,
    /// done, failed: ERROR).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub engine_upgrade: String,
    /// The generation of the spec the log has seen (accepted or rejected).
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The engine of an attached volume: one per attachment.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "shorthorn.io",
    version = "v1",
    kind = "Engine",
    namespaced,
    status = "EngineStatus",
    shortname = "sheng",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Volume","type":"string","jsonPath":".spec.volumeName"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeID"}"#,
    printcolumn = r#"{"name":"Epoch","type":"integer","jsonPath":".spec.epoch"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EngineSpec {
    pub volume_name: String,
    #[serde(rename = "nodeID")]
    pub node_id: String,
    pub epoch: u64,
    /// none, auto, fuse or nbd.
    pub frontend: String,
    /// Attached by the log itself (snapshot or backup of a detached volume, restore).
    #[serde(default)]
    pub internal: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EngineStatus {
    /// starting, running or stopping.
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// The generation of the spec the log has seen (accepted or rejected).
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// One copy of a volume on one disk of one node.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "shorthorn.io",
    version = "v1",
    kind = "Replica",
    namespaced,
    status = "ReplicaStatus",
    shortname = "shr",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".status.mode"}"#,
    printcolumn = r#"{"name":"Volume","type":"string","jsonPath":".spec.volumeName"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeID"}"#,
    printcolumn = r#"{"name":"Disk","type":"string","jsonPath":".spec.diskID"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSpec {
    pub volume_name: String,
    #[serde(rename = "nodeID")]
    pub node_id: String,
    #[serde(rename = "diskID")]
    pub disk_id: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// RW, WO or ERR.
    pub mode: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failure: String,
    /// The generation of the spec the log has seen (accepted or rejected).
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A storage node and its disks.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "shorthorn.io",
    version = "v1",
    kind = "Node",
    namespaced,
    status = "NodeStatus",
    shortname = "shn",
    printcolumn = r#"{"name":"Ready","type":"boolean","jsonPath":".status.ready"}"#,
    printcolumn = r#"{"name":"Schedulable","type":"boolean","jsonPath":".spec.allowScheduling"}"#,
    printcolumn = r#"{"name":"Zone","type":"string","jsonPath":".spec.zone"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    pub allow_scheduling: bool,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub disks: BTreeMap<String, DiskSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskSpec {
    pub path: String,
    pub allow_scheduling: bool,
    pub storage_reserved: u64,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(default)]
    pub disk_status: BTreeMap<String, DiskStatus>,
    /// The generation of the spec the log has seen (accepted or rejected).
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskStatus {
    pub storage_maximum: u64,
    pub storage_available: u64,
    pub storage_scheduled: u64,
    pub replica_count: u32,
}

/// A point-in-time layer of a volume.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "shorthorn.io",
    version = "v1",
    kind = "Snapshot",
    namespaced,
    status = "SnapshotStatus",
    shortname = "shsnap",
    printcolumn = r#"{"name":"Volume","type":"string","jsonPath":".spec.volume"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.size"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSpec {
    pub volume: String,
    /// The snapshot's name in the volume (object names are unique per namespace).
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    /// pending, ready or deleting.
    pub state: String,
    /// Volume size when taken, bytes.
    pub size: String,
    /// The generation of the spec the log has seen (accepted or rejected).
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A backup of one snapshot of a volume on the backup target.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "shorthorn.io",
    version = "v1",
    kind = "Backup",
    namespaced,
    status = "BackupStatus",
    shortname = "shbak",
    printcolumn = r#"{"name":"Volume","type":"string","jsonPath":".spec.volume"}"#,
    printcolumn = r#"{"name":"Snapshot","type":"string","jsonPath":".spec.snapshot"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Progress","type":"integer","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    pub name: String,
    pub volume: String,
    pub snapshot: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// inProgress, completed or error.
    pub state: String,
    pub progress: u8,
    pub url: String,
    pub size: String,
    pub blocks: u64,
    pub uploaded_bytes: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// The generation of the spec the log has seen (accepted or rejected).
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A backup volume on the backup target (any cluster's), as the last sync saw it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "shorthorn.io",
    version = "v1",
    kind = "BackupVolume",
    namespaced,
    status = "BackupVolumeStatus",
    shortname = "shbv",
    printcolumn = r#"{"name":"Backups","type":"integer","jsonPath":".status.backupCount"}"#,
    printcolumn = r#"{"name":"Last","type":"string","jsonPath":".status.lastBackupName"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BackupVolumeSpec {
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupVolumeStatus {
    pub target: String,
    pub backup_count: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_backup_name: String,
    /// Bytes of the last backup's volume.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub size: String,
    /// The generation of the spec the log has seen (accepted or rejected).
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The backup target (one object, `default`): editing its spec sets the settings.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "shorthorn.io",
    version = "v1",
    kind = "BackupTarget",
    namespaced,
    status = "BackupTargetStatus",
    shortname = "shbt",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.backupTargetURL"}"#,
    printcolumn = r#"{"name":"Credential","type":"string","jsonPath":".spec.credentialSecret"}"#,
    printcolumn = r#"{"name":"Interval","type":"integer","jsonPath":".spec.pollInterval"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BackupTargetSpec {
    #[serde(rename = "backupTargetURL")]
    pub backup_target_url: String,
    pub credential_secret: String,
    /// Seconds.
    pub poll_interval: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupTargetStatus {
    pub backup_volume_count: u32,
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// One cluster setting; the object name is the setting's key in kebab case
/// (`backup-target` for `backupTarget`), as Longhorn names its Setting objects.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "shorthorn.io",
    version = "v1",
    kind = "Setting",
    namespaced,
    status = "SettingStatus",
    shortname = "shset",
    printcolumn = r#"{"name":"Value","type":"string","jsonPath":".spec.value"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SettingSpec {
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettingStatus {
    /// The setting's key as the log and the CLI spell it.
    pub key: String,
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A recurring snapshot or backup job (Longhorn's `recurringjobs.longhorn.io`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "shorthorn.io",
    version = "v1",
    kind = "RecurringJob",
    namespaced,
    status = "RecurringJobStatus",
    shortname = "shrj",
    printcolumn = r#"{"name":"Task","type":"string","jsonPath":".spec.task"}"#,
    printcolumn = r#"{"name":"Cron","type":"string","jsonPath":".spec.cron"}"#,
    printcolumn = r#"{"name":"Retain","type":"integer","jsonPath":".spec.retain"}"#,
    printcolumn = r#"{"name":"Concurrency","type":"integer","jsonPath":".spec.concurrency"}"#,
    printcolumn = r#"{"name":"Last Run","type":"date","jsonPath":".status.lastRun"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RecurringJobSpec {
    /// snapshot, snapshot-cleanup, snapshot-delete, backup or backup-force-create.
    pub task: String,
    pub cron: String,
    pub retain: i32,
    pub concurrency: i32,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecurringJobStatus {
    /// The schedule slot of the newest run (RFC 3339, UTC); empty before the first.
    #[serde(default)]
    pub last_run: String,
    /// The next slot the job fires at.
    #[serde(default)]
    pub next_run: String,
    /// Volumes the run going on still works on (0 when none runs).
    #[serde(default)]
    pub running_volumes: u32,
    /// Whether the newest finished run failed on some volume, and the first reason.
    #[serde(default)]
    pub last_run_failed: bool,
    #[serde(default)]
    pub last_failure: String,
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Every CRD, in a stable order.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![
        Volume::crd(),
        Engine::crd(),
        Replica::crd(),
        Node::crd(),
        Snapshot::crd(),
        Backup::crd(),
        BackupVolume::crd(),
        BackupTarget::crd(),
        Setting::crd(),
        RecurringJob::crd(),
    ]
}

/// The CRDs as one multi-document YAML file (what the chart's `crds/` holds).
pub fn crds_yaml() -> String {
    let mut out = String::from(
        "# Generated by `shorthorn crds` from k8s-bridge/src/crd.rs; do not edit by hand.\n",
    );
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&crd).expect("a CRD serializes to YAML"));
    }
    out
}

/// The Setting object name of a setting key: kebab case (`backupTarget` → `backup-target`).
pub fn setting_object_name(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut prev_lower = false;
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else if c == '_' || c == '.' {
            out.push('-');
            prev_lower = false;
        } else {
            out.push(c);
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        }
    }
    out
}

/// A Kubernetes object name for log names that may not be one (snapshot and backup names
/// allow capitals and `_`): the joined parts when they form a DNS-1123 subdomain, else a
/// lowercased, cleaned prefix and a hash of the original, so distinct names never collide.
pub fn object_name(parts: &[&str]) -> String {
    let joined = parts.join(".");
    if joined.len() <= 253 && parts.iter().all(|p| shorthorn_state::is_dns1123_label(p)) {
        return joined;
    }
    let cleaned: String = joined
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .take(40)
        .collect();
    let cleaned = cleaned.trim_matches('-');
    let hash = blake3::hash(parts.join("\0").as_bytes()).to_hex();
    if cleaned.is_empty() {
        format!("x-{}", &hash[..16])
    } else {
        format!("{cleaned}-{}", &hash[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chart installs the committed YAML; it must be what the types generate.
    #[test]
    fn the_charts_crd_yaml_is_generated_from_these_types() {
        let committed = include_str!("../../deploy/chart/crds/shorthorn.io.yaml");
        assert!(
            committed == crds_yaml(),
            "deploy/chart/crds/shorthorn.io.yaml is stale: run \
             `cargo run -- crds > deploy/chart/crds/shorthorn.io.yaml`"
        );
    }

    #[test]
    fn setting_names_are_kebab_case() {
        assert_eq!(setting_object_name("backupTarget"), "backup-target");
        assert_eq!(
            setting_object_name("backupstorePollInterval"),
            "backupstore-poll-interval"
        );
        assert_eq!(
            setting_object_name("guaranteedEngineCPU"),
            "guaranteed-engine-cpu"
        );
        for key in shorthorn_state::SETTING_KEYS {
            assert!(
                shorthorn_state::is_dns1123_label(&setting_object_name(key)),
                "{key}"
            );
        }
    }

    #[test]
    fn object_names_are_valid_and_distinct() {
        assert_eq!(object_name(&["db", "s1"]), "db.s1");
        let a = object_name(&["db", "Snap_1"]);
        let b = object_name(&["db", "snap-1"]);
        assert_ne!(a, b);
        assert!(shorthorn_state::is_dns1123_subdomain(&a), "{a}");
        assert_ne!(object_name(&["a", "b.c"]), object_name(&["a.b", "c"]));
    }

    #[test]
    fn every_crd_is_in_the_group_with_columns() {
        let all = crds();
        assert_eq!(all.len(), 10);
        for crd in &all {
            assert_eq!(crd.spec.group, GROUP);
            let v = &crd.spec.versions[0];
            assert!(
                v.subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some()
            );
            assert!(
                v.additional_printer_columns
                    .as_ref()
                    .is_some_and(|c| !c.is_empty()),
                "{}",
                crd.spec.names.kind
            );
        }
        let yaml = crds_yaml();
        assert_eq!(yaml.lines().filter(|l| *l == "---").count(), 10);
    }
}
