//! The Controller service: volumes and snapshots as the managers' API has them. The CSI
//! volume id is the Shorthorn volume name. A CSI snapshot is either a Shorthorn snapshot
//! (VolumeSnapshotClass `type: snap`, the default), id `snap:<volume>/<snapshot>`, or a
//! Shorthorn backup on the backup target (`type: bak`), id `bak:<volume>/<backup>`. A backup
//! takes a snapshot of its own, named like it; that snapshot is part of the CSI backup (not
//! listed as a snapshot of its own, and deleted with it). A volume created from a `snap:`
//! snapshot, or cloned from a volume, has the snapshot's data copied into it by the
//! managers (a clone snapshots its source first) before it can be published.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Value, json};
use shorthorn_state::{Backup, BackupState, Node, RestoreState, Snapshot, Volume, VolumeState};
use tonic::{Request, Response, Status};

use crate::api::{self, segment};
use crate::proto::{self, controller_service_capability as ccap, volume_capability};
use crate::{Driver, TOPOLOGY_NODE, TOPOLOGY_ZONE};

/// Sizes are whole multiples of this.
pub const ALIGN: u64 = 2 * 1024 * 1024;
/// The size of a volume whose request gives none.
pub const DEFAULT_SIZE: u64 = 1024 * 1024 * 1024;
/// How long publish and unpublish wait for the engine to start or stop.
const STATE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

pub struct Controller {
    driver: Driver,
}

impl Controller {
    pub fn new(driver: Driver) -> Self {
        Controller { driver }
    }

    async fn volume(&self, name: &str) -> Result<Option<Volume>, Status> {
        match api::call::<Volume>(
            &self.driver.api,
            "GET",
            format!("/v1/volumes/{}", segment(name)),
            None,
        )
        .await
        {
            // A volume being deleted is gone for CSI (DeleteVolume answered already).
            Ok(v) if v.state == VolumeState::Deleting => Ok(None),
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.to_status(&format!("reading volume {name}"))),
        }
    }

    /// Waits up to [`STATE_WAIT`] for a volume to reach `state`; Unavailable after that,
    /// so the caller retries (the request stays in the log and completes meanwhile).
    async fn wait_state(&self, name: &str, state: VolumeState) -> Result<Volume, Status> {
        let deadline = tokio::time::Instant::now() + STATE_WAIT;
        loop {
            let Some(v) = self.volume(name).await? else {
                return Err(Status::not_found(format!("volume \"{name}\" is gone")));
            };
            if v.state == state {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::unavailable(format!(
                    "volume \"{name}\" is {:?}, not yet {state:?}; retry",
                    v.state
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Waits up to [`STATE_WAIT`] while the managers have the volume attached internally
    /// (for snapshot or backup work on a detached volume); they detach it by themselves
    /// once the work is done. Returns the volume as it is then (None when gone).
    async fn settle_internal(&self, name: &str) -> Result<Option<Volume>, Status> {
        let deadline = tokio::time::Instant::now() + STATE_WAIT;
        loop {
            let v = self.volume(name).await?;
            let internal = v
                .as_ref()
                .and_then(|v| v.attachment.as_ref())
                .is_some_and(|a| a.internal);
            if !internal || tokio::time::Instant::now() >= deadline {
                return Ok(v);
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Waits up to [`STATE_WAIT`] while a volume of this name is being deleted (its
    /// replicas removed by their node agents).
    async fn settle_deleting(&self, name: &str) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + STATE_WAIT;
        loop {
            let deleting = match api::call::<Volume>(
                &self.driver.api,
                "GET",
                format!("/v1/volumes/{}", segment(name)),
                None,
            )
            .await
            {
                Ok(v) => v.state == VolumeState::Deleting,
                Err(e) if e.is_not_found() => false,
                Err(e) => return Err(e.to_status(&format!("reading volume {name}"))),
            };
            if !deleting || tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Waits up to [`STATE_WAIT`] while the volume is detaching (its engine stopping).
    async fn settle_detaching(&self, name: &str) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + STATE_WAIT;
        loop {
            let detaching = self
                .volume(name)
                .await?
                .is_some_and(|v| v.state == VolumeState::Detaching);
            if !detaching || tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// This cluster's backups, from the log (no backup target needed).
    async fn backups(&self) -> Result<Vec<Backup>, Status> {
        api::call(&self.driver.api, "GET", "/v1/backups".into(), None)
            .await
            .map_err(|e| e.to_status("listing backups"))
    }

    /// Backup `name` of `volume`; None when there is none (or it is another volume's).
    async fn backup_of(&self, volume: &str, name: &str) -> Result<Option<Backup>, Status> {
        match api::call::<Backup>(
            &self.driver.api,
            "GET",
            format!("/v1/backups/{}", segment(name)),
            None,
        )
        .await
        {
            Ok(b) => Ok((b.volume == volume).then_some(b)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.to_status(&format!("reading backup {name}"))),
        }
    }

    /// CreateSnapshot with `type: bak`: backup `name` of `volume` (which exists), asked
    /// for once; a repeat answers the backup's current state (ready once completed).
    async fn create_backup(
        &self,
        volume: &str,
        name: &str,
    ) -> Result<proto::CreateSnapshotResponse, Status> {
        let answer = |b: Backup| match b.state {
            BackupState::Error => Err(Status::internal(format!(
                "backup \"{name}\" of volume {volume} failed: {}; delete the snapshot and take \
                 it again",
                b.error.as_deref().unwrap_or("no reason given")
            ))),
            _ => Ok(proto::CreateSnapshotResponse {
                snapshot: Some(csi_backup(&b)),
            }),
        };
        if let Some(b) = self.backup_of(volume, name).await? {
            return answer(b);
        }
        let created = api::call::<Backup>(
            &self.driver.api,
            "POST",
            "/v1/backups".into(),
            Some(json!({ "volume": volume, "name": name })),
        )
        .await;
        match created {
            Ok(b) => answer(b),
            // Asked for at the same moment by a retry of this call: the same backup.
            Err(e) if e.status == Some(409) => match self.backup_of(volume, name).await? {
                Some(b) => answer(b),
                None => Err(e.to_status(&format!("backing up volume {volume} as {name}"))),
            },
            Err(e) => Err(e.to_status(&format!("backing up volume {volume} as {name}"))),
        }
    }

    async fn nodes(&self) -> Result<Vec<Node>, Status> {
        api::call(&self.driver.api, "GET", "/v1/nodes".into(), None)
            .await
            .map_err(|e| e.to_status("listing the nodes"))
    }
}

/// The StorageClass parameters CreateVolume understands, parsed.
#[derive(Debug, Default, PartialEq)]
pub struct Parameters {
    pub number_of_replicas: Option<u8>,
    pub stale_replica_timeout: Option<u64>,
    pub from_backup: Option<String>,
    pub fs_type: Option<String>,
    pub data_locality: Option<String>,
    pub mkfs_params: Option<String>,
    pub disk_selector: BTreeSet<String>,
    pub node_selector: BTreeSet<String>,
    /// The volume labels `recurringJobSelector` names (jobs and groups the volume joins).
    pub labels: BTreeMap<String, String>,
    /// The kernel block device frontend the node sets up: auto (the node's best), fuse, nbd.
    pub frontend: Option<String>,
}

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

fn tags(value: &str) -> BTreeSet<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// One entry of Longhorn's `recurringJobSelector`: `[{"name": "snap", "isGroup": false}]`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JobSelector {
    name: String,
    #[serde(default)]
    is_group: bool,
}

/// The volume labels that join the jobs and groups a `recurringJobSelector` names.
fn recurring_job_labels(value: &str) -> Result<BTreeMap<String, String>, Status> {
    if value.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let selectors: Vec<JobSelector> = serde_json::from_str(value).map_err(|err| {
        invalid(format!(
            "recurringJobSelector is not a JSON list of {{\"name\": ..., \"isGroup\": true|false}}: {err}"
        ))
    })?;
    Ok(selectors
        .into_iter()
        .map(|s| {
            let prefix = if s.is_group {
                shorthorn_state::GROUP_VOLUME_LABEL_PREFIX
            } else {
                shorthorn_state::JOB_VOLUME_LABEL_PREFIX
            };
            (format!("{prefix}{}", s.name), "enabled".to_string())
        })
        .collect())
}

/// The volume label holding the name of the PersistentVolumeClaim it was made for.
pub const PVC_NAME_LABEL: &str = "pvc.shorthorn.io/name";
/// The volume label holding that claim's namespace.
pub const PVC_NAMESPACE_LABEL: &str = "pvc.shorthorn.io/namespace";

/// Parses StorageClass parameters; an unknown key is an error (a typo would otherwise be
/// silently ignored). Keys the external-provisioner adds (`csi.storage.k8s.io/…`) are skipped.
pub fn parse_parameters(params: &HashMap<String, String>) -> Result<Parameters, Status> {
    let mut p = Parameters::default();
    for (key, value) in params {
        match key.as_str() {
            "numberOfReplicas" => {
                let n: u8 = value.trim().parse().map_err(|_| {
                    invalid(format!(
                        "numberOfReplicas \"{value}\" is not a number between 1 and 20"
                    ))
                })?;
                if !(1..=20).contains(&n) {
                    return Err(invalid(format!(
                        "numberOfReplicas {n} is out of range: it must be between 1 and 20"
                    )));
                }
                p.number_of_replicas = Some(n);
            }
            "staleReplicaTimeout" => {
                let minutes: u64 = value.trim().parse().map_err(|_| {
                    invalid(format!(
                        "staleReplicaTimeout \"{value}\" is not a whole number of minutes"
                    ))
                })?;
                p.stale_replica_timeout = Some(minutes);
            }
            "fromBackup" => {
                if !value.trim().is_empty() {
                    p.from_backup = Some(value.trim().to_string());
                }
            }
            "fsType" => match value.trim() {
                "" => {}
                "ext4" | "xfs" => p.fs_type = Some(value.trim().to_string()),
                other => {
                    return Err(invalid(format!(
                        "fsType \"{other}\" is not supported: use ext4 or xfs"
                    )));
                }
            },
            "dataLocality" => match value.trim() {
                "disabled" | "best-effort" => p.data_locality = Some(value.trim().to_string()),
                other => {
                    return Err(invalid(format!(
                        "dataLocality \"{other}\" is not supported: use disabled or best-effort"
                    )));
                }
            },
            "mkfsParams" => p.mkfs_params = Some(value.clone()),
            "diskSelector" => p.disk_selector = tags(value),
            "nodeSelector" => p.node_selector = tags(value),
            "recurringJobSelector" => p.labels.extend(recurring_job_labels(value)?),
            "frontend" => match value.trim() {
                "" => {}
                "auto" | "fuse" | "nbd" => p.frontend = Some(value.trim().to_string()),
                other => {
                    return Err(invalid(format!(
                        "frontend \"{other}\" is not supported: use auto, fuse or nbd"
                    )));
                }
            },
            // The claim behind the volume (external-provisioner --extra-create-metadata):
            // kept as labels, so metrics and listings can name it.
            "csi.storage.k8s.io/pvc/name" => {
                p.labels.insert(PVC_NAME_LABEL.to_string(), value.clone());
            }
            "csi.storage.k8s.io/pvc/namespace" => {
                p.labels
                    .insert(PVC_NAMESPACE_LABEL.to_string(), value.clone());
            }
            k if k.starts_with("csi.storage.k8s.io/") => {}
            other => {
                return Err(invalid(format!(
                    "unknown StorageClass parameter \"{other}\": known are numberOfReplicas, \
                     staleReplicaTimeout, fromBackup, fsType, dataLocality, mkfsParams, \
                     diskSelector, nodeSelector, recurringJobSelector, frontend"
                )));
            }
        }
    }
    Ok(p)
}

/// The size to create for a capacity range: the required bytes (or the default when none,
/// or the limit when that is smaller), rounded up to 2 MiB; OutOfRange when the rounding
/// passes the limit.
pub fn size_for(range: Option<&proto::CapacityRange>) -> Result<u64, Status> {
    let (required, limit) = match range {
        Some(r) => (r.required_bytes, r.limit_bytes),
        None => (0, 0),
    };
    if required < 0 || limit < 0 {
        return Err(Status::out_of_range("capacity bytes must not be negative"));
    }
    let (required, limit) = (required as u64, limit as u64);
    if limit != 0 && required > limit {
        return Err(Status::out_of_range(format!(
            "required bytes {required} exceed the limit {limit}"
        )));
    }
    let wanted = match (required, limit) {
        (0, 0) => DEFAULT_SIZE,
        (0, l) => DEFAULT_SIZE.min(l / ALIGN * ALIGN).max(ALIGN),
        (r, _) => r,
    };
    let size = wanted.div_ceil(ALIGN) * ALIGN;
    if limit != 0 && size > limit {
        return Err(Status::out_of_range(format!(
            "volumes are sized in steps of 2 MiB: {size} bytes would pass the limit of {limit}"
        )));
    }
    Ok(size)
}

/// Checks the capabilities: single-node access, mount (ext4/xfs) or block.
pub fn check_capabilities(caps: &[proto::VolumeCapability]) -> Result<(), String> {
    use volume_capability::access_mode::Mode;
    if caps.is_empty() {
        return Err("volume capabilities are required".into());
    }
    for cap in caps {
        let mode = cap
            .access_mode
            .as_ref()
            .map(|m| m.mode)
            .ok_or("every volume capability needs an access mode")?;
        match Mode::try_from(mode) {
            Ok(
                Mode::SingleNodeWriter
                | Mode::SingleNodeReaderOnly
                | Mode::SingleNodeSingleWriter
                | Mode::SingleNodeMultiWriter,
            ) => {}
            _ => {
                return Err(format!(
                    "access mode {} is not supported: a Shorthorn volume is attached to one \
                     node at a time (ReadWriteOnce)",
                    Mode::try_from(mode)
                        .map(|m| m.as_str_name())
                        .unwrap_or("unknown")
                ));
            }
        }
        match &cap.access_type {
            Some(volume_capability::AccessType::Block(_)) => {}
            Some(volume_capability::AccessType::Mount(m)) => {
                if !matches!(m.fs_type.as_str(), "" | "ext4" | "xfs") {
                    return Err(format!(
                        "filesystem \"{}\" is not supported: use ext4 or xfs",
                        m.fs_type
                    ));
                }
            }
            None => {
                return Err("every volume capability needs an access type (mount or block)".into());
            }
        }
    }
    Ok(())
}

fn topology_of(node: &Node) -> proto::Topology {
    let mut segments = HashMap::new();
    segments.insert(TOPOLOGY_NODE.to_string(), node.id.clone());
    if !node.zone.is_empty() {
        segments.insert(TOPOLOGY_ZONE.to_string(), node.zone.clone());
    }
    proto::Topology { segments }
}

fn matches(topology: &proto::Topology, node: &Node) -> bool {
    let ours = topology_of(node).segments;
    topology
        .segments
        .iter()
        .all(|(k, v)| ours.get(k).is_some_and(|o| o == v))
}

fn csi_volume(v: &Volume, context: HashMap<String, String>, nodes: &[Node]) -> proto::Volume {
    proto::Volume {
        capacity_bytes: v.size as i64,
        volume_id: v.name.clone(),
        volume_context: context,
        content_source: None,
        accessible_topology: nodes.iter().filter(|n| n.ready).map(topology_of).collect(),
    }
}

/// What a CSI snapshot is in Shorthorn: the VolumeSnapshotClass parameter `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// `snap`: a snapshot in the volume's replicas.
    Snap,
    /// `bak`: a backup on the backup target.
    Bak,
}

impl SnapshotKind {
    fn prefix(self) -> &'static str {
        match self {
            SnapshotKind::Snap => "snap:",
            SnapshotKind::Bak => "bak:",
        }
    }
}

fn snapshot_id(kind: SnapshotKind, volume: &str, name: &str) -> String {
    format!("{}{volume}/{name}", kind.prefix())
}

/// `(kind, volume, name)` of a snapshot id; None when it is not one of ours.
pub fn parse_snapshot_id(id: &str) -> Option<(SnapshotKind, &str, &str)> {
    let (kind, rest) = [SnapshotKind::Snap, SnapshotKind::Bak]
        .into_iter()
        .find_map(|k| id.strip_prefix(k.prefix()).map(|rest| (k, rest)))?;
    let (v, s) = rest.split_once('/')?;
    (!v.is_empty() && !s.is_empty()).then_some((kind, v, s))
}

fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn csi_snapshot(s: &Snapshot) -> proto::Snapshot {
    use shorthorn_state::SnapshotState;
    proto::Snapshot {
        size_bytes: s.size as i64,
        snapshot_id: snapshot_id(SnapshotKind::Snap, &s.volume, &s.name),
        source_volume_id: s.volume.clone(),
        creation_time: Some(timestamp(s.created_at.0)),
        ready_to_use: s.state == SnapshotState::Ready,
        group_snapshot_id: String::new(),
    }
}

/// A backup as a CSI snapshot: ready once its manifest is on the target.
fn csi_backup(b: &Backup) -> proto::Snapshot {
    proto::Snapshot {
        size_bytes: b.size as i64,
        snapshot_id: snapshot_id(SnapshotKind::Bak, &b.volume, &b.name),
        source_volume_id: b.volume.clone(),
        creation_time: Some(timestamp(b.created_at.0)),
        ready_to_use: b.state == BackupState::Completed,
        group_snapshot_id: String::new(),
    }
}

/// Whether `s` is the snapshot a backup took of its own (named like the backup): it
/// belongs to the `bak:` CSI snapshot, not listed as a `snap:` one.
fn taken_for_backup(s: &Snapshot, backups: &[Backup]) -> bool {
    backups
        .iter()
        .any(|b| b.volume == s.volume && b.name == s.name && b.snapshot == s.name)
}

/// The Shorthorn name (a DNS-1123 label) for a CSI name. The external-provisioner's names
/// (`pvc-<uuid>`, `snapshot-<uuid>`) already are labels and are kept as they are; any other
/// name (CSI allows any string) becomes a readable label — lower-cased, other characters
/// turned into '-', cut to fit — plus 8 hex digits of the blake3 of the whole name, so two
/// CSI names never meet in one Shorthorn name and the same CSI name always maps to the same
/// volume (CreateVolume stays idempotent by name).
pub fn shorthorn_name(what: &str, name: &str) -> Result<String, Status> {
    if name.is_empty() {
        return Err(invalid(format!("the {what} name is required")));
    }
    if shorthorn_state::is_dns1123_label(name) {
        return Ok(name.to_string());
    }
    let mut readable = String::with_capacity(name.len());
    for c in name.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (readable.is_empty() || readable.ends_with('-'))) {
            readable.push(c);
        }
    }
    readable.truncate(63 - 9);
    let readable = readable.trim_end_matches('-');
    let hash = blake3::hash(name.as_bytes()).to_hex();
    Ok(if readable.is_empty() {
        format!("csi-{}", &hash[..8])
    } else {
        format!("{readable}-{}", &hash[..8])
    })
}

fn page<T>(items: Vec<T>, max: i32, token: &str) -> Result<(Vec<T>, String), Status> {
    let start: usize = if token.is_empty() {
        0
    } else {
        token.parse().map_err(|_| {
            Status::aborted(format!(
                "starting token \"{token}\" is not one this driver gave"
            ))
        })?
    };
    if start > items.len() {
        return Err(Status::aborted(format!(
            "starting token \"{token}\" is past the end of the list"
        )));
    }
    if max < 0 {
        return Err(invalid("max_entries must not be negative"));
    }
    let take = if max == 0 { usize::MAX } else { max as usize };
    let total = items.len();
    let chunk: Vec<T> = items.into_iter().skip(start).take(take).collect();
    let end = start + chunk.len();
    let next = if end < total {
        end.to_string()
    } else {
        String::new()
    };
    Ok((chunk, next))
}

#[tonic::async_trait]
impl proto::controller_server::Controller for Controller {
    async fn create_volume(
        &self,
        request: Request<proto::CreateVolumeRequest>,
    ) -> Result<Response<proto::CreateVolumeResponse>, Status> {
        let mut req = request.into_inner();
        req.name = shorthorn_name("volume", &req.name)?;
        check_capabilities(&req.volume_capabilities).map_err(invalid)?;
        let mut params = parse_parameters(&req.parameters)?;
        let size = size_for(req.capacity_range.as_ref())?;
        // The (volume, snapshot) a snapshot or volume content source copies (no snapshot: a
        // clone), and the bytes it holds.
        let mut copy: Option<(String, Option<String>)> = None;
        let mut copy_size = 0;
        match req
            .volume_content_source
            .as_ref()
            .and_then(|s| s.r#type.as_ref())
        {
            None => {}
            Some(proto::volume_content_source::Type::Snapshot(s))
                if matches!(
                    parse_snapshot_id(&s.snapshot_id),
                    Some((SnapshotKind::Bak, _, _))
                ) =>
            {
                // A backup: restored as the fromBackup parameter restores it.
                let backup = match parse_snapshot_id(&s.snapshot_id) {
                    Some((_, v, name)) => self.backup_of(v, name).await?,
                    None => None,
                };
                let Some(backup) = backup else {
                    return Err(Status::not_found(format!(
                        "snapshot \"{}\" does not exist",
                        s.snapshot_id
                    )));
                };
                match backup.state {
                    BackupState::Completed => {}
                    BackupState::InProgress => {
                        return Err(Status::unavailable(format!(
                            "backup \"{}\" is in progress ({}%); retry once it is completed",
                            backup.name, backup.progress
                        )));
                    }
                    BackupState::Error => {
                        return Err(Status::failed_precondition(format!(
                            "backup \"{}\" failed ({}); it cannot be restored",
                            backup.name,
                            backup.error.as_deref().unwrap_or("no reason given")
                        )));
                    }
                }
                if params
                    .from_backup
                    .as_ref()
                    .is_some_and(|u| *u != backup.url)
                {
                    return Err(invalid(format!(
                        "the content source is backup {} but the parameter fromBackup names \
                         another: give one of the two",
                        backup.url
                    )));
                }
                params.from_backup = Some(backup.url);
            }
            Some(proto::volume_content_source::Type::Snapshot(s)) => {
                // A snapshot: its data is copied into the new volume.
                let found = match parse_snapshot_id(&s.snapshot_id) {
                    Some((_, v, name)) => self
                        .volume(v)
                        .await?
                        .and_then(|v| v.snapshots.get(name).cloned()),
                    None => None,
                };
                let Some(snapshot) = found else {
                    return Err(Status::not_found(format!(
                        "snapshot \"{}\" does not exist",
                        s.snapshot_id
                    )));
                };
                copy = Some((snapshot.volume.clone(), Some(snapshot.name.clone())));
                copy_size = snapshot.size;
            }
            Some(proto::volume_content_source::Type::Volume(s)) => {
                // A clone: a snapshot of the source is taken and copied.
                let Some(source) = self.volume(&s.volume_id).await? else {
                    return Err(Status::not_found(format!(
                        "source volume \"{}\" does not exist",
                        s.volume_id
                    )));
                };
                copy = Some((source.name.clone(), None));
                copy_size = source.size;
            }
        }
        if copy.is_some() && params.from_backup.is_some() {
            return Err(invalid(
                "the content source is a snapshot or a volume but the parameter fromBackup \
                 names a backup: give one of the two",
            ));
        }
        let size = match req.capacity_range.as_ref() {
            // No size asked: the source's, when it is bigger than the default.
            None => size.max(copy_size),
            Some(r) if r.required_bytes == 0 && r.limit_bytes == 0 => size.max(copy_size),
            Some(_) => size,
        };
        if size < copy_size {
            return Err(Status::out_of_range(format!(
                "{size} bytes cannot hold the content source of {copy_size} bytes; ask for at \
                 least that"
            )));
        }
        let nodes = self.nodes().await?;
        if let Some(req_topo) = &req.accessibility_requirements
            && !req_topo.requisite.is_empty()
            && !nodes
                .iter()
                .any(|n| n.ready && req_topo.requisite.iter().any(|t| matches(t, n)))
        {
            return Err(Status::resource_exhausted(
                "no ready node matches the requisite topology of the request",
            ));
        }
        let mut context = HashMap::new();
        if let Some(fs) = &params.fs_type {
            context.insert("fsType".to_string(), fs.clone());
        }
        if let Some(m) = &params.mkfs_params {
            context.insert("mkfsParams".to_string(), m.clone());
        }
        if let Some(f) = &params.frontend {
            context.insert("frontend".to_string(), f.clone());
        }
        let content_source = req.volume_content_source.clone();
        // A volume of that name deleted a moment ago is let go first.
        self.settle_deleting(&req.name).await?;
        if let Some(existing) = self.volume(&req.name).await? {
            let restore = existing.restore.as_ref();
            let same = match (&copy, &params.from_backup) {
                (Some((volume, snapshot)), _) => {
                    restore.is_some_and(|r| r.copies_from(volume, snapshot.as_deref()))
                }
                (None, Some(url)) => restore.is_some_and(|r| r.snapshot.is_none() && r.url == *url),
                (None, None) => restore.is_none(),
            };
            if !same {
                let asked = match (&copy, &params.from_backup) {
                    (Some((v, Some(s))), _) => format!("copied from snapshot {v}/{s}"),
                    (Some((v, None)), _) => format!("cloned from volume {v}"),
                    (None, Some(u)) => format!("restored from {u}"),
                    (None, None) => "empty".into(),
                };
                return Err(Status::already_exists(format!(
                    "volume \"{}\" exists {}, not {asked}",
                    req.name,
                    restore.map_or("empty".into(), |r| format!("from {}", r.source())),
                )));
            }
            if existing.size != size {
                return Err(Status::already_exists(format!(
                    "volume \"{}\" exists with {} bytes, not the {size} asked",
                    req.name, existing.size
                )));
            }
            let mut volume = csi_volume(&existing, context, &nodes);
            volume.content_source = content_source;
            return Ok(Response::new(proto::CreateVolumeResponse {
                volume: Some(volume),
            }));
        }
        let mut body = json!({ "name": req.name, "size": size });
        if let Some(n) = params.number_of_replicas {
            body["numberOfReplicas"] = json!(n);
        }
        if let Some(t) = params.stale_replica_timeout {
            body["staleReplicaTimeout"] = json!(t);
        }
        if let Some(d) = &params.data_locality {
            body["dataLocality"] = json!(d);
        }
        if !params.labels.is_empty() {
            body["labels"] = json!(params.labels);
        }
        if let Some(url) = &params.from_backup {
            // Restored by an engine with no frontend; ControllerPublish answers ABORTED
            // until the restore completed, and the external-attacher retries.
            body["fromBackup"] = json!(url);
        }
        if let Some((volume, snapshot)) = &copy {
            // Copied by an engine with no frontend from the source's replicas, as a restore
            // is; ControllerPublish answers ABORTED until the copy completed.
            body["dataSource"] = match snapshot {
                Some(snapshot) => json!({ "volume": volume, "snapshot": snapshot }),
                None => json!({ "volume": volume }),
            };
        }
        if !params.node_selector.is_empty() {
            body["nodeSelector"] = json!(params.node_selector);
        }
        if !params.disk_selector.is_empty() {
            body["diskSelector"] = json!(params.disk_selector);
        }
        let created =
            api::call::<Volume>(&self.driver.api, "POST", "/v1/volumes".into(), Some(body)).await;
        let volume = match created {
            Ok(v) => v,
            Err(e) if e.status == Some(409) => match self.volume(&req.name).await? {
                Some(v) if v.size == size => v,
                Some(v) => {
                    return Err(Status::already_exists(format!(
                        "volume \"{}\" exists with {} bytes, not the {size} asked",
                        req.name, v.size
                    )));
                }
                None => {
                    return Err(Status::aborted(format!(
                        "volume \"{}\" is still being deleted; retry once it is gone",
                        req.name
                    )));
                }
            },
            Err(e) => {
                let status = e.to_status(&format!("creating volume {}", req.name));
                let lower = e.message.to_lowercase();
                if ["capacity", "schedul", "no disk", "space"]
                    .iter()
                    .any(|w| lower.contains(w))
                {
                    return Err(Status::resource_exhausted(status.message().to_string()));
                }
                return Err(status);
            }
        };
        if volume.replicas.is_empty() {
            // Nothing could be placed: do not leave a volume with no copy behind.
            let reason = volume
                .condition
                .clone()
                .unwrap_or_else(|| "no disk can hold a replica".into());
            let _ = api::call::<Value>(
                &self.driver.api,
                "DELETE",
                format!("/v1/volumes/{}", segment(&req.name)),
                None,
            )
            .await;
            return Err(Status::resource_exhausted(format!(
                "no placement fits volume \"{}\" of {size} bytes: {reason}",
                req.name
            )));
        }
        let mut volume = csi_volume(&volume, context, &nodes);
        volume.content_source = content_source;
        Ok(Response::new(proto::CreateVolumeResponse {
            volume: Some(volume),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<proto::DeleteVolumeRequest>,
    ) -> Result<Response<proto::DeleteVolumeResponse>, Status> {
        let id = request.into_inner().volume_id;
        if id.is_empty() {
            return Err(invalid("the volume id is required"));
        }
        // A snapshot just taken or deleted may still hold its internal attachment, and the
        // engine of a restore or copy that just completed may still be stopping.
        self.settle_internal(&id).await?;
        self.settle_detaching(&id).await?;
        match api::call::<Value>(
            &self.driver.api,
            "DELETE",
            format!("/v1/volumes/{}", segment(&id)),
            None,
        )
        .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.to_status(&format!("deleting volume {id}"))),
        }
        Ok(Response::new(proto::DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        request: Request<proto::ControllerPublishVolumeRequest>,
    ) -> Result<Response<proto::ControllerPublishVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("the volume id is required"));
        }
        if req.node_id.is_empty() {
            return Err(invalid("the node id is required"));
        }
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| invalid("the volume capability is required"))?;
        check_capabilities(std::slice::from_ref(cap)).map_err(invalid)?;
        // An internal attachment (a snapshot of the detached volume) ends by itself.
        let volume = self.settle_internal(&req.volume_id).await?.ok_or_else(|| {
            Status::not_found(format!("volume \"{}\" does not exist", req.volume_id))
        })?;
        let nodes = self.nodes().await?;
        if !nodes.iter().any(|n| n.id == req.node_id) {
            return Err(Status::not_found(format!(
                "node \"{}\" is not a Shorthorn node",
                req.node_id
            )));
        }
        if let Some(restore) = &volume.restore {
            match restore.state {
                RestoreState::Completed => {}
                RestoreState::InProgress => {
                    let doing = if restore.snapshot.is_some() {
                        "copied"
                    } else {
                        "restored"
                    };
                    return Err(Status::aborted(format!(
                        "volume \"{}\" is being {doing} from {} ({}%); try again once it is done",
                        volume.name,
                        restore.source(),
                        restore.progress
                    )));
                }
                RestoreState::Error => {
                    return Err(Status::failed_precondition(
                        volume.restore_blocks_use().unwrap_or_default(),
                    ));
                }
            }
        }
        if volume.standby {
            return Err(Status::aborted(format!(
                "volume \"{}\" is still restoring from a backup; try again once it is done",
                volume.name
            )));
        }
        if volume.state == VolumeState::Detaching {
            // Its last user (or its restoring engine) is letting it go: a moment's wait.
            return Err(Status::aborted(format!(
                "volume \"{}\" is still detaching from node {}; try again once it is detached",
                volume.name,
                volume.attachment.as_ref().map_or("?", |a| a.node.as_str())
            )));
        }
        if let Some(a) = &volume.attachment {
            if a.internal {
                // Attached by the managers for snapshot or backup work: it detaches by
                // itself; the attacher retries.
                return Err(Status::aborted(format!(
                    "volume \"{}\" is attached internally on node {} for snapshot or backup \
                     work; try again once it detached by itself",
                    volume.name, a.node
                )));
            }
            if a.node == req.node_id {
                return Ok(Response::new(publish_context(&volume)));
            }
            return Err(Status::failed_precondition(format!(
                "volume \"{}\" is attached to node {}; unpublish it there first",
                volume.name, a.node
            )));
        }
        let attached = api::call::<Volume>(
            &self.driver.api,
            "POST",
            format!("/v1/volumes/{}/attach", segment(&volume.name)),
            // The kubelet needs a kernel block device: the node's best frontend unless the
            // StorageClass named one (`frontend` in the volume context).
            Some(json!({
                "node": req.node_id,
                "frontend": req.volume_context.get("frontend").map_or("auto", |f| f.as_str()),
            })),
        )
        .await
        .map_err(|e| {
            e.to_status(&format!(
                "attaching volume {} to {}",
                volume.name, req.node_id
            ))
        })?;
        let attached = self
            .wait_state(&attached.name, VolumeState::Attached)
            .await?;
        Ok(Response::new(publish_context(&attached)))
    }

    async fn controller_unpublish_volume(
        &self,
        request: Request<proto::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<proto::ControllerUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("the volume id is required"));
        }
        let Some(volume) = self.volume(&req.volume_id).await? else {
            // Gone: it is unpublished everywhere.
            return Ok(Response::new(proto::ControllerUnpublishVolumeResponse {}));
        };
        let attached_here = volume
            .attachment
            .as_ref()
            // An internal attachment (snapshot or backup work) is no publication.
            .is_some_and(|a| !a.internal && (req.node_id.is_empty() || a.node == req.node_id));
        if attached_here {
            api::call::<Value>(
                &self.driver.api,
                "POST",
                format!("/v1/volumes/{}/detach", segment(&volume.name)),
                Some(json!({})),
            )
            .await
            .map_err(|e| e.to_status(&format!("detaching volume {}", volume.name)))?;
            self.wait_state(&volume.name, VolumeState::Detached).await?;
        }
        Ok(Response::new(proto::ControllerUnpublishVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<proto::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<proto::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("the volume id is required"));
        }
        if req.volume_capabilities.is_empty() {
            return Err(invalid("volume capabilities are required"));
        }
        if self.volume(&req.volume_id).await?.is_none() {
            return Err(Status::not_found(format!(
                "volume \"{}\" does not exist",
                req.volume_id
            )));
        }
        let response = match check_capabilities(&req.volume_capabilities) {
            Ok(()) => proto::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(proto::validate_volume_capabilities_response::Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: Default::default(),
                }),
                message: String::new(),
            },
            Err(why) => proto::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: why,
            },
        };
        Ok(Response::new(response))
    }

    async fn list_volumes(
        &self,
        request: Request<proto::ListVolumesRequest>,
    ) -> Result<Response<proto::ListVolumesResponse>, Status> {
        let req = request.into_inner();
        let mut volumes: Vec<Volume> =
            api::call(&self.driver.api, "GET", "/v1/volumes".into(), None)
                .await
                .map_err(|e| e.to_status("listing volumes"))?;
        // A deleted volume stays in the log while its replicas are removed; for CSI it is
        // gone once DeleteVolume answered.
        volumes.retain(|v| v.state != VolumeState::Deleting);
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        let nodes = self.nodes().await?;
        let (chunk, next_token) = page(volumes, req.max_entries, &req.starting_token)?;
        let entries = chunk
            .iter()
            .map(|v| proto::list_volumes_response::Entry {
                volume: Some(csi_volume(v, HashMap::new(), &nodes)),
                status: Some(proto::list_volumes_response::VolumeStatus {
                    published_node_ids: v.attachment.iter().map(|a| a.node.clone()).collect(),
                    volume_condition: v.condition.as_ref().map(|c| proto::VolumeCondition {
                        abnormal: true,
                        message: c.clone(),
                    }),
                }),
            })
            .collect();
        Ok(Response::new(proto::ListVolumesResponse {
            entries,
            next_token,
        }))
    }

    async fn get_capacity(
        &self,
        request: Request<proto::GetCapacityRequest>,
    ) -> Result<Response<proto::GetCapacityResponse>, Status> {
        let req = request.into_inner();
        let nodes = self.nodes().await?;
        let available: u64 = nodes
            .iter()
            .filter(|n| n.ready && n.schedulable)
            .filter(|n| {
                req.accessible_topology
                    .as_ref()
                    .is_none_or(|t| matches(t, n))
            })
            .flat_map(|n| n.disks.values())
            .filter(|d| d.schedulable)
            .map(|d| d.available.saturating_sub(d.reserved))
            .sum();
        Ok(Response::new(proto::GetCapacityResponse {
            available_capacity: available.min(i64::MAX as u64) as i64,
            maximum_volume_size: None,
            minimum_volume_size: Some(ALIGN as i64),
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<proto::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<proto::ControllerGetCapabilitiesResponse>, Status> {
        use ccap::rpc::Type;
        let capabilities = [
            Type::CreateDeleteVolume,
            Type::PublishUnpublishVolume,
            Type::ListVolumes,
            Type::GetCapacity,
            Type::CreateDeleteSnapshot,
            Type::ListSnapshots,
            Type::CloneVolume,
            Type::ExpandVolume,
            Type::ListVolumesPublishedNodes,
            Type::VolumeCondition,
        ]
        .into_iter()
        .map(|t| proto::ControllerServiceCapability {
            r#type: Some(ccap::Type::Rpc(ccap::Rpc { r#type: t as i32 })),
        })
        .collect();
        Ok(Response::new(proto::ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<proto::CreateSnapshotRequest>,
    ) -> Result<Response<proto::CreateSnapshotResponse>, Status> {
        let mut req = request.into_inner();
        if req.source_volume_id.is_empty() {
            return Err(invalid("the source volume id is required"));
        }
        req.name = shorthorn_name("snapshot", &req.name)?;
        let mut kind = SnapshotKind::Snap;
        for (key, value) in &req.parameters {
            match (key.as_str(), value.as_str()) {
                ("type", "snap") | ("type", "") => {}
                ("type", "bak") => kind = SnapshotKind::Bak,
                ("type", other) => {
                    return Err(invalid(format!(
                        "snapshot type \"{other}\" is unknown: use snap or bak"
                    )));
                }
                (k, _) if k.starts_with("csi.storage.k8s.io/") => {}
                (other, _) => {
                    return Err(invalid(format!(
                        "unknown VolumeSnapshotClass parameter \"{other}\": the only one is type"
                    )));
                }
            }
        }
        // A snapshot name is unique across volumes and kinds in CSI.
        let volumes: Vec<Volume> = api::call(&self.driver.api, "GET", "/v1/volumes".into(), None)
            .await
            .map_err(|e| e.to_status("listing volumes"))?;
        let backups = self.backups().await?;
        if let Some(other) = volumes
            .iter()
            .find(|v| v.name != req.source_volume_id && v.snapshots.contains_key(&req.name))
        {
            return Err(Status::already_exists(format!(
                "snapshot \"{}\" exists already, of volume {}",
                req.name, other.name
            )));
        }
        if let Some(other) = backups.iter().find(|b| {
            b.name == req.name && (b.volume != req.source_volume_id || kind == SnapshotKind::Snap)
        }) {
            return Err(Status::already_exists(format!(
                "snapshot \"{}\" exists already, as a backup (type bak) of volume {}",
                req.name, other.volume
            )));
        }
        let Some(volume) = volumes.iter().find(|v| v.name == req.source_volume_id) else {
            return Err(Status::not_found(format!(
                "volume \"{}\" does not exist",
                req.source_volume_id
            )));
        };
        if kind == SnapshotKind::Bak {
            let own = volume
                .snapshots
                .get(&req.name)
                .is_some_and(|s| !taken_for_backup(s, &backups));
            if own {
                return Err(Status::already_exists(format!(
                    "snapshot \"{}\" exists already, as a snapshot (type snap) of volume {}",
                    req.name, volume.name
                )));
            }
            return Ok(Response::new(
                self.create_backup(&volume.name, &req.name).await?,
            ));
        }
        if let Some(s) = volume.snapshots.get(&req.name) {
            return Ok(Response::new(proto::CreateSnapshotResponse {
                snapshot: Some(csi_snapshot(s)),
            }));
        }
        let snapshot = api::call::<Snapshot>(
            &self.driver.api,
            "POST",
            format!("/v1/volumes/{}/snapshots", segment(&volume.name)),
            Some(json!({ "name": req.name })),
        )
        .await
        .map_err(|e| e.to_status(&format!("taking snapshot {} of {}", req.name, volume.name)))?;
        // A detached volume was attached internally for the snapshot: let it detach, so
        // that a publish or a delete right after finds it free.
        let snapshot = match self.settle_internal(&volume.name).await? {
            Some(v) => v.snapshots.get(&req.name).cloned().unwrap_or(snapshot),
            None => snapshot,
        };
        Ok(Response::new(proto::CreateSnapshotResponse {
            snapshot: Some(csi_snapshot(&snapshot)),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<proto::DeleteSnapshotRequest>,
    ) -> Result<Response<proto::DeleteSnapshotResponse>, Status> {
        let id = request.into_inner().snapshot_id;
        if id.is_empty() {
            return Err(invalid("the snapshot id is required"));
        }
        // An id that is not ours names nothing, and deleting nothing succeeds.
        if let Some((kind, volume, name)) = parse_snapshot_id(&id) {
            if kind == SnapshotKind::Bak {
                let Some(backup) = self.backup_of(volume, name).await? else {
                    return Ok(Response::new(proto::DeleteSnapshotResponse {}));
                };
                // From the target, then from the log; an in-progress one is refused.
                match api::call::<Value>(
                    &self.driver.api,
                    "DELETE",
                    format!("/v1/backups/{}", segment(name)),
                    None,
                )
                .await
                {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.to_status(&format!("deleting backup {id}"))),
                }
                if backup.snapshot != name {
                    return Ok(Response::new(proto::DeleteSnapshotResponse {}));
                }
                // Then the snapshot it took of its own (below).
            }
            match api::call::<Value>(
                &self.driver.api,
                "DELETE",
                format!(
                    "/v1/volumes/{}/snapshots/{}",
                    segment(volume),
                    segment(name)
                ),
                None,
            )
            .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.to_status(&format!("deleting snapshot {id}"))),
            }
            self.settle_internal(volume).await?;
        }
        Ok(Response::new(proto::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        request: Request<proto::ListSnapshotsRequest>,
    ) -> Result<Response<proto::ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        let volumes: Vec<Volume> = api::call(&self.driver.api, "GET", "/v1/volumes".into(), None)
            .await
            .map_err(|e| e.to_status("listing volumes"))?;
        let backups = self.backups().await?;
        let wanted = (!req.snapshot_id.is_empty()).then(|| parse_snapshot_id(&req.snapshot_id));
        let chosen = |kind: SnapshotKind, volume: &str, name: &str| {
            (req.source_volume_id.is_empty() || volume == req.source_volume_id)
                && match &wanted {
                    None => true,
                    Some(None) => false,
                    Some(Some(w)) => *w == (kind, volume, name),
                }
        };
        let mut snapshots: Vec<proto::Snapshot> = volumes
            .iter()
            .flat_map(|v| v.snapshots.values())
            .filter(|s| !taken_for_backup(s, &backups))
            .filter(|s| chosen(SnapshotKind::Snap, &s.volume, &s.name))
            .map(csi_snapshot)
            .chain(
                backups
                    .iter()
                    // A backup outlives its volume: it still restores.
                    .filter(|b| chosen(SnapshotKind::Bak, &b.volume, &b.name))
                    .map(csi_backup),
            )
            .collect();
        snapshots.sort_by(|a, b| a.snapshot_id.cmp(&b.snapshot_id));
        let (chunk, next_token) = page(snapshots, req.max_entries, &req.starting_token)?;
        Ok(Response::new(proto::ListSnapshotsResponse {
            entries: chunk
                .into_iter()
                .map(|s| proto::list_snapshots_response::Entry { snapshot: Some(s) })
                .collect(),
            next_token,
        }))
    }

    async fn controller_expand_volume(
        &self,
        request: Request<proto::ControllerExpandVolumeRequest>,
    ) -> Result<Response<proto::ControllerExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("the volume id is required"));
        }
        let range = req
            .capacity_range
            .as_ref()
            .ok_or_else(|| invalid("the capacity range is required"))?;
        let size = size_for(Some(range))?;
        let volume = self.volume(&req.volume_id).await?.ok_or_else(|| {
            Status::not_found(format!("volume \"{}\" does not exist", req.volume_id))
        })?;
        let block = matches!(
            req.volume_capability
                .as_ref()
                .and_then(|c| c.access_type.as_ref()),
            Some(volume_capability::AccessType::Block(_))
        );
        let current = if volume.size >= size {
            volume.size
        } else {
            api::call::<Volume>(
                &self.driver.api,
                "POST",
                format!("/v1/volumes/{}/expand", segment(&volume.name)),
                Some(json!({ "size": size })),
            )
            .await
            .map_err(|e| e.to_status(&format!("expanding volume {}", volume.name)))?
            .size
        };
        Ok(Response::new(proto::ControllerExpandVolumeResponse {
            capacity_bytes: current as i64,
            node_expansion_required: !block,
        }))
    }
}

fn publish_context(volume: &Volume) -> proto::ControllerPublishVolumeResponse {
    let mut publish_context = HashMap::new();
    if let Some(a) = &volume.attachment {
        publish_context.insert("node".to_string(), a.node.clone());
    }
    proto::ControllerPublishVolumeResponse { publish_context }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn csi_names_map_to_stable_distinct_dns_labels() {
        assert_eq!(shorthorn_name("volume", "pvc-0a1b").unwrap(), "pvc-0a1b");
        let a = shorthorn_name("volume", "sanity-Controller-Service CreateVolume-1").unwrap();
        let b = shorthorn_name("volume", "sanity-controller-service-createvolume-1").unwrap();
        let c = shorthorn_name("volume", "Sanity-Controller-Service CreateVolume-1").unwrap();
        assert!(
            a.starts_with("sanity-controller-service-createvolume-1-"),
            "{a}"
        );
        assert_eq!(
            b, "sanity-controller-service-createvolume-1",
            "a label stays as it is"
        );
        assert_ne!(a, c, "names differing only in case stay apart");
        assert_eq!(
            a,
            shorthorn_name("volume", "sanity-Controller-Service CreateVolume-1").unwrap()
        );
        let long = "X".repeat(300);
        let odd = ["!!!", "Ünïcödé", long.as_str(), "-a-", "a..b"];
        for name in odd {
            let mapped = shorthorn_name("volume", name).unwrap();
            assert!(
                shorthorn_state::is_dns1123_label(&mapped),
                "{name} -> {mapped}"
            );
        }
        assert_eq!(
            shorthorn_name("volume", "").unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn sizes_round_up_to_2_mib() {
        let r = |req, lim| proto::CapacityRange {
            required_bytes: req,
            limit_bytes: lim,
        };
        assert_eq!(size_for(None).unwrap(), DEFAULT_SIZE);
        assert_eq!(size_for(Some(&r(1, 0))).unwrap(), ALIGN);
        assert_eq!(size_for(Some(&r(ALIGN as i64 + 1, 0))).unwrap(), 2 * ALIGN);
        assert_eq!(size_for(Some(&r(0, 3 * ALIGN as i64))).unwrap(), 3 * ALIGN);
        assert_eq!(
            size_for(Some(&r(ALIGN as i64 + 1, ALIGN as i64 + 2)))
                .unwrap_err()
                .code(),
            Code::OutOfRange
        );
        assert_eq!(
            size_for(Some(&r(10, 5))).unwrap_err().code(),
            Code::OutOfRange
        );
    }

    #[test]
    fn parameters_parse_and_unknown_keys_are_refused() {
        let p = |pairs: &[(&str, &str)]| {
            parse_parameters(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let ok = p(&[
            ("numberOfReplicas", "3"),
            ("staleReplicaTimeout", "2880"),
            ("fsType", "xfs"),
            ("diskSelector", "ssd, fast"),
            ("csi.storage.k8s.io/pvc/name", "mysql-pvc"),
            ("csi.storage.k8s.io/pvc/namespace", "default"),
            ("csi.storage.k8s.io/pv/name", "pvc-1234"),
            (
                "recurringJobSelector",
                r#"[{"name":"snap","isGroup":false}]"#,
            ),
        ])
        .unwrap();
        assert_eq!(
            ok.labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
            [
                (PVC_NAME_LABEL, "mysql-pvc"),
                (PVC_NAMESPACE_LABEL, "default"),
                ("recurring-job.shorthorn.io/snap", "enabled"),
            ],
            "the claim's labels beside the jobs'"
        );
        assert_eq!(ok.number_of_replicas, Some(3));
        assert_eq!(ok.stale_replica_timeout, Some(2880));
        assert_eq!(ok.fs_type.as_deref(), Some("xfs"));
        assert_eq!(ok.disk_selector.len(), 2);
        let jobs = p(&[(
            "recurringJobSelector",
            r#"[{"name":"snap","isGroup":false},{"name":"gold","isGroup":true}]"#,
        )])
        .unwrap();
        assert_eq!(
            jobs.labels.into_iter().collect::<Vec<_>>(),
            [
                (
                    "recurring-job-group.shorthorn.io/gold".to_string(),
                    "enabled".to_string()
                ),
                (
                    "recurring-job.shorthorn.io/snap".to_string(),
                    "enabled".to_string()
                ),
            ]
        );
        for bad in [
            ("recurringJobSelector", "snap"),
            ("recurringJobSelector", r#"[{"job":"snap"}]"#),
            ("numberOfReplicas", "0"),
            ("numberOfReplicas", "100"),
            ("fsType", "btrfs"),
            ("numberOfReplica", "3"),
            ("dataLocality", "strict"),
        ] {
            let err = p(&[bad]).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn snapshot_ids_round_trip_and_pages_end() {
        for kind in [SnapshotKind::Snap, SnapshotKind::Bak] {
            assert_eq!(
                parse_snapshot_id(&snapshot_id(kind, "v", "s")),
                Some((kind, "v", "s"))
            );
        }
        assert_eq!(
            parse_snapshot_id("bak:v/s").map(|s| s.0),
            Some(SnapshotKind::Bak)
        );
        assert_eq!(parse_snapshot_id("v/s"), None);
        assert_eq!(parse_snapshot_id("bak:/s"), None);
        assert_eq!(parse_snapshot_id("other:v/s"), None);
        let (a, t) = page(vec![1, 2, 3], 2, "").unwrap();
        assert_eq!((a, t.as_str()), (vec![1, 2], "2"));
        let (b, t) = page(vec![1, 2, 3], 2, "2").unwrap();
        assert_eq!((b, t.as_str()), (vec![3], ""));
        assert_eq!(page(vec![1], 0, "x").unwrap_err().code(), Code::Aborted);
    }
}
