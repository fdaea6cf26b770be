//! Backup routes: this cluster's backups (in the log), the backup volumes on the target
//! (any cluster's, read from the target), verify, and the check of a new `backupTarget`.
//!
//! The log records what is asked and the node agent of the attached volume runs the job on
//! its engine; these handlers only propose and read, except where the target itself is the
//! subject: deleting a backup removes its manifest from the target before the log forgets
//! it, listing backup volumes and verifying read the target, and setting `backupTarget`
//! probes it (one put, get and delete; never a listing of the bucket).

use std::collections::BTreeMap;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shorthorn_dataplane::backup::{BackupError, BackupTarget, Manifest, Store, parse_backup_url};
use shorthorn_state::{Backup, BackupState, Request};

use super::{Api, ApiError, Body};

impl Api {
    /// Opens `target` with this manager's credentials (no I/O yet).
    pub(super) fn store(&self, target: &str) -> Result<Store, ApiError> {
        let credentials = self.credentials.load().map_err(ApiError::BadRequest)?;
        Store::open_url(target, &credentials).map_err(target_error)
    }

    /// The `backupTarget` setting, or why there is none.
    async fn current_target(&self) -> Result<String, ApiError> {
        let target = self.read(|s| s.settings.backup_target.clone()).await?;
        if target.is_empty() {
            return Err(ApiError::Precondition(
                "no backup target is set; set one with `shorthorn setting set backupTarget URL`"
                    .into(),
            ));
        }
        Ok(target)
    }

    async fn backup(&self, name: String) -> Result<Backup, ApiError> {
        self.read(move |s| s.backups.get(&name).cloned().ok_or(name))
            .await?
            .map_err(|name| ApiError::NotFound(format!("backup \"{name}\" not found")))
    }

    /// The size of a volume restored from backup `url`: `asked`, which must hold the
    /// backup, or the backup's size. Reads the backup's manifest, so a backup that is not
    /// there (or a target that cannot be read) is refused before any volume is created.
    pub(super) async fn restore_size(
        &self,
        url: &str,
        asked: Option<u64>,
    ) -> Result<u64, ApiError> {
        let (target, volume, name) =
            parse_backup_url(url).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let manifest = self
            .store(&target)?
            .get_manifest(&volume, &name)
            .await
            .map_err(target_error)?;
        match asked {
            Some(size) if size < manifest.size => Err(ApiError::BadRequest(format!(
                "size {size} is smaller than backup {url}, which holds {} bytes",
                manifest.size
            ))),
            Some(size) => Ok(size),
            None => Ok(manifest.size),
        }
    }

    /// A standby's `--from-backup` may name a backup volume (`TARGET?volume=VOL`): it starts
    /// from that volume's newest backup, whose URL this returns. A backup URL is kept.
    pub(super) async fn newest_backup_url(&self, url: &str) -> Result<String, ApiError> {
        let Some((target, query)) = url.split_once('?') else {
            return Ok(url.to_string());
        };
        let params: Vec<(&str, &str)> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        if params.iter().any(|(k, _)| *k == "backup") {
            return Ok(url.to_string());
        }
        let Some(volume) = params.iter().find(|(k, _)| *k == "volume").map(|(_, v)| *v) else {
            return Ok(url.to_string());
        };
        let own: Vec<String> = params
            .iter()
            .filter(|(k, _)| *k != "volume")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let target = if own.is_empty() {
            target.to_string()
        } else {
            format!("{target}?{}", own.join("&"))
        };
        let newest = self
            .store(&target)?
            .list_backups(volume)
            .await
            .map_err(target_error)?
            .into_iter()
            .max_by_key(|b| (b.created_unix_ms, b.name.clone()))
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "backup volume \"{volume}\" on {target} has no backup yet: a standby starts from its newest"
                ))
            })?;
        let sep = if target.contains('?') { '&' } else { '?' };
        Ok(format!(
            "{target}{sep}backup={}&volume={volume}",
            newest.name
        ))
    }

    /// Probes a new backup target (reachable, writable, credentials valid) before the log
    /// records it; the error says why not. An empty value (no target) is not probed.
    pub(super) async fn check_target(&self, url: &str) -> Result<(), ApiError> {
        if url.is_empty() {
            return Ok(());
        }
        let target = BackupTarget::parse(url).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let credentials = self.credentials.load().map_err(ApiError::BadRequest)?;
        Store::check_target(&target, &credentials)
            .await
            .map_err(|e| ApiError::BadRequest(e.to_string()))
    }
}

/// A target failure as an API error: the user's input when it is malformed, 404 for a
/// backup that is not there, 502 when the target failed.
pub(super) fn target_error(err: BackupError) -> ApiError {
    match err {
        BackupError::BadTarget { .. }
        | BackupError::BadCredentials(_)
        | BackupError::Unsupported(_)
        | BackupError::Invalid(_) => ApiError::BadRequest(err.to_string()),
        BackupError::BackupNotFound { .. } => ApiError::NotFound(err.to_string()),
        other => ApiError::Target(other.to_string()),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct BackupFilter {
    volume: Option<String>,
}

pub(super) async fn list(
    State(api): State<Api>,
    Query(filter): Query<BackupFilter>,
) -> Result<Json<Vec<Backup>>, ApiError> {
    let mut backups: Vec<Backup> = api
        .read(move |s| {
            s.backups
                .values()
                .filter(|b| filter.volume.as_ref().is_none_or(|v| &b.volume == v))
                .cloned()
                .collect()
        })
        .await?;
    backups.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
    Ok(Json(backups))
}

pub(super) async fn get(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<Backup>, ApiError> {
    Ok(Json(api.backup(name).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    volume: String,
    /// Default: `backup-` and 8 hex digits (from the Idempotency-Key when one is sent, so a
    /// retry names the same backup).
    #[serde(default)]
    name: Option<String>,
    /// Default: a new snapshot named like the backup.
    #[serde(default)]
    snapshot: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// 201 with the backup in progress; the volume's engine uploads it in the background.
pub(super) async fn create(
    State(api): State<Api>,
    Body(body): Body<CreateBody>,
) -> Result<(StatusCode, Json<Backup>), ApiError> {
    let name = match body.name {
        Some(name) => name,
        None => default_name(),
    };
    api.propose(Request::CreateBackup {
        name: name.clone(),
        volume: body.volume,
        snapshot: body.snapshot,
        labels: body.labels,
    })
    .await?;
    Ok((StatusCode::CREATED, Json(api.backup(name).await?)))
}

/// `backup-` and 8 hex digits: a hash of the request's Idempotency-Key when it has one,
/// else random.
fn default_name() -> String {
    let key = super::IDEMPOTENCY_KEY
        .try_with(|cell| {
            let key = cell.take();
            cell.set(key.clone());
            key
        })
        .ok()
        .flatten();
    let seed = match key {
        Some(key) => key.into_bytes(),
        None => {
            let mut bytes = [0u8; 16];
            let random = std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
            if random.is_err() {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                bytes = now.to_le_bytes();
            }
            bytes.to_vec()
        }
    };
    // FNV-1a: a name, not a secret.
    let hash = seed.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("backup-{:08x}", hash as u32)
}

/// 204 once the backup is gone from the target and the log. A completed backup's manifest
/// is removed from the target first (its blocks are collected later by the leader); a
/// failed one never had a manifest. An in-progress backup is refused (409).
pub(super) async fn delete(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let backup = match api.backup(name.clone()).await {
        Ok(backup) => backup,
        // Deleting twice is fine (a retry).
        Err(ApiError::NotFound(_)) => return Ok(StatusCode::NO_CONTENT),
        Err(err) => return Err(err),
    };
    match backup.state {
        BackupState::InProgress => {
            return Err(ApiError::Conflict(format!(
                "backup \"{name}\" is in progress; delete it once it completed or failed"
            )));
        }
        BackupState::Completed => {
            let store = api.store(&backup.target)?;
            match store.delete_backup(&backup.volume, &backup.name).await {
                Ok(()) | Err(BackupError::BackupNotFound { .. }) => {}
                Err(err) => return Err(target_error(err)),
            }
            tracing::info!(backup = %name, target = %backup.target, "backup deleted from the target");
        }
        BackupState::Error => {}
    }
    api.propose(Request::DeleteBackup { name }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One bad block a verify found.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct BadBlockView {
    offset: u64,
    hash: String,
    reason: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct VerifyReport {
    name: String,
    volume: String,
    url: String,
    /// Blocks read and checked.
    blocks: u64,
    /// Every block that is missing or does not match its blake3.
    bad: Vec<BadBlockView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VerifyQuery {
    /// Answer with a stream of progress lines (NDJSON) ending with the report, so a
    /// backup of any size is verified within one request without a timeout cutting it.
    #[serde(default)]
    progress: bool,
}

/// Reads every block of a completed backup from the target and checks it; 200 with each
/// bad one named (an empty `bad` list: the backup restores byte for byte).
pub(super) async fn verify(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(query): Query<VerifyQuery>,
) -> Result<Response, ApiError> {
    let backup = api.backup(name.clone()).await?;
    if backup.state != BackupState::Completed {
        return Err(ApiError::Conflict(format!(
            "backup \"{name}\" is not completed (it is {:?}); only a completed backup can be verified",
            backup.state
        )));
    }
    let store = api.store(&backup.target)?;
    api.verify_answer(store, backup.volume, backup.name, query.progress)
        .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VerifyBody {
    backup: String,
}

/// As [`verify`], for any backup of a backup volume on the current target (another
/// cluster's too).
pub(super) async fn verify_on_target(
    State(api): State<Api>,
    Path(volume): Path<String>,
    Query(query): Query<VerifyQuery>,
    Body(body): Body<VerifyBody>,
) -> Result<Response, ApiError> {
    let store = api.store(&api.current_target().await?)?;
    api.verify_answer(store, volume, body.backup, query.progress)
        .await
}

/// Aborts the verification when the answer's stream is dropped (the client went away).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often a streamed verification says how far it got.
const VERIFY_PROGRESS_EVERY: Duration = Duration::from_secs(1);

impl Api {
    /// The verification of `volume/name` as one JSON report, or with `progress` as NDJSON
    /// lines `{"checked": n, "blocks": total}` every second, then `{"report": ...}` (or
    /// `{"error": kind, "message": ...}`). A backup that is not there is a plain 404 either
    /// way: its manifest is read before the answer starts.
    async fn verify_answer(
        &self,
        store: Store,
        volume: String,
        name: String,
        progress: bool,
    ) -> Result<Response, ApiError> {
        let manifest = store
            .get_manifest(&volume, &name)
            .await
            .map_err(target_error)?;
        if !progress {
            let report = self
                .verify_on(&store, &manifest, &AtomicU64::new(0))
                .await?;
            return Ok(Json(report).into_response());
        }
        let blocks = manifest.blocks.len() as u64;
        let checked = Arc::new(AtomicU64::new(0));
        let api = self.clone();
        let counter = checked.clone();
        let task = AbortOnDrop(tokio::spawn(async move {
            api.verify_on(&store, &manifest, &counter).await
        }));
        let lines = futures::stream::unfold(Some(task), move |task| {
            let checked = checked.clone();
            async move {
                let mut task = task?;
                let line = tokio::select! {
                    done = &mut task.0 => {
                        let line = match done {
                            Ok(Ok(report)) => serde_json::json!({ "report": report }),
                            Ok(Err(err)) => err.as_json(),
                            Err(err) => serde_json::json!({ "error": "internal", "message": err.to_string() }),
                        };
                        return Some((Ok::<_, Infallible>(ndjson(&line)), None));
                    }
                    _ = tokio::time::sleep(VERIFY_PROGRESS_EVERY) => {
                        serde_json::json!({ "checked": checked.load(Ordering::Relaxed), "blocks": blocks })
                    }
                };
                Some((Ok(ndjson(&line)), Some(task)))
            }
        });
        Ok((
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            axum::body::Body::from_stream(lines),
        )
            .into_response())
    }

    /// Checks every block `manifest` names, counting them in `checked` as it goes.
    async fn verify_on(
        &self,
        store: &Store,
        manifest: &Manifest,
        checked: &AtomicU64,
    ) -> Result<VerifyReport, ApiError> {
        let concurrency = self.read(|s| s.settings.restore_concurrent_limit).await? as usize;
        let bad = store
            .verify_manifest(manifest, concurrency, checked)
            .await
            .map_err(target_error)?;
        let (volume, name) = (&manifest.volume, &manifest.name);
        if !bad.is_empty() {
            tracing::warn!(backup = %name, volume, bad = bad.len(), "verify found bad blocks");
        }
        Ok(VerifyReport {
            name: name.to_string(),
            volume: volume.to_string(),
            url: store.backup_url(volume, name),
            blocks: manifest.blocks.len() as u64,
            bad: bad
                .into_iter()
                .map(|b| BadBlockView {
                    offset: b.offset,
                    hash: b.hash,
                    reason: b.reason,
                })
                .collect(),
        })
    }
}

/// A backup volume on the target, as its index says.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct BackupVolumeView {
    name: String,
    backup_count: usize,
    last_backup: Option<String>,
    /// ms since the Unix epoch.
    last_backup_at: Option<u64>,
    /// Volume size of the last backup, in bytes.
    size: Option<u64>,
    /// With `synced=true`: when the leader's sync that last changed it ran (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    synced_at: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct VolumesQuery {
    /// Answer from the log (the leader's last sync) instead of reading the target.
    #[serde(default)]
    synced: bool,
}

/// The backup volumes on the current target, including those another cluster wrote: one
/// listing of the volume directories, then one index read per volume; or, with
/// `synced=true`, the log's copy (synced every `backupstorePollInterval` seconds).
pub(super) async fn list_volumes(
    State(api): State<Api>,
    Query(query): Query<VolumesQuery>,
) -> Result<Json<Vec<BackupVolumeView>>, ApiError> {
    let target = api.current_target().await?;
    if query.synced {
        let synced = api
            .read(move |s| {
                s.backup_volumes
                    .values()
                    .filter(|v| v.target == target)
                    .map(|v| {
                        let last = v.backups.last();
                        BackupVolumeView {
                            name: v.name.clone(),
                            backup_count: v.backups.len(),
                            last_backup: last.map(|b| b.name.clone()),
                            last_backup_at: last.map(|b| b.created_at.0),
                            size: last.map(|b| b.size),
                            synced_at: Some(v.synced_at.0),
                        }
                    })
                    .collect()
            })
            .await?;
        return Ok(Json(synced));
    }
    let store = api.store(&target)?;
    let names = store.list_volumes().await.map_err(target_error)?;
    let mut volumes = Vec::with_capacity(names.len());
    for name in names {
        let backups = store.list_backups(&name).await.map_err(target_error)?;
        let last = backups.last();
        volumes.push(BackupVolumeView {
            backup_count: backups.len(),
            last_backup: last.map(|b| b.name.clone()),
            last_backup_at: last.map(|b| b.created_unix_ms),
            size: last.map(|b| b.size),
            synced_at: None,
            name,
        });
    }
    Ok(Json(volumes))
}

/// A backup on the target (any cluster's), with the URL a restore takes.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TargetBackupView {
    name: String,
    volume: String,
    snapshot: String,
    size: u64,
    /// ms since the Unix epoch.
    created_at: u64,
    blocks: u64,
    labels: BTreeMap<String, String>,
    url: String,
}

/// The backups of one backup volume on the current target, oldest first (one read of its
/// index).
pub(super) async fn get_volume(
    State(api): State<Api>,
    Path(volume): Path<String>,
) -> Result<Json<Vec<TargetBackupView>>, ApiError> {
    let store = api.store(&api.current_target().await?)?;
    let backups = store.list_backups(&volume).await.map_err(target_error)?;
    Ok(Json(
        backups
            .into_iter()
            .map(|b| TargetBackupView {
                url: store.backup_url(&b.volume, &b.name),
                name: b.name,
                volume: b.volume,
                snapshot: b.snapshot,
                size: b.size,
                created_at: b.created_unix_ms,
                blocks: b.blocks,
                labels: b.labels,
            })
            .collect(),
    ))
}

/// One NDJSON line.
fn ndjson(value: &serde_json::Value) -> axum::body::Bytes {
    let mut line = value.to_string();
    line.push('\n');
    line.into()
}
