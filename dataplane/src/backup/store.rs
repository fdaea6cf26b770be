//! The backup store on a target (layout and formats in `BACKUP.md`): content-addressed
//! compressed blocks shared by every volume, one manifest per backup, one index per backup
//! volume, in-progress markers and the collector's lock.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use serde::{Deserialize, Serialize};

use super::target::{BackupTarget, Credentials};
use super::{BackupError, now_unix_ms};

/// The root of everything Shorthorn writes under a target's prefix.
const ROOT: &str = "shorthorn-backupstore";
const BLOCK_MAGIC: &[u8; 4] = b"SHBK";
const BLOCK_HEADER: usize = 12;
pub const CODEC_NONE: u8 = 0;
pub const CODEC_ZSTD: u8 = 1;
/// The default block size: 2 MiB.
pub const DEFAULT_BLOCK_SIZE: u64 = 2 << 20;
/// TCP connections to an NFS server per opened store (one RPC in flight on each): more than
/// the default job concurrency, so block transfers never wait for a connection.
const NFS_CONNECTIONS: usize = 16;
/// An in-progress marker (or the collector's lock) older than this is abandoned.
pub const MARKER_EXPIRY: Duration = Duration::from_secs(6 * 3600);

/// The blake3 of a block's plain content, as 64 hex digits.
pub type BlockHash = String;

/// One backup: written last, atomically; a backup without its manifest does not exist.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub volume: String,
    pub snapshot: String,
    pub size: u64,
    pub block_size: u64,
    pub created_unix_ms: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The backup this one was made incrementally from, if any.
    #[serde(default)]
    pub base_backup: Option<String>,
    /// Bytes of compressed blocks this backup uploaded (the rest were on the target).
    #[serde(default)]
    pub uploaded_bytes: u64,
    /// `(offset, blake3 hex)` of every block that is not all zeros, by offset; an offset
    /// not listed reads as zeros.
    pub blocks: Vec<(u64, BlockHash)>,
}

/// What the index of a backup volume says about one of its backups.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupSummary {
    pub name: String,
    pub volume: String,
    pub snapshot: String,
    pub size: u64,
    pub created_unix_ms: u64,
    pub blocks: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl From<&Manifest> for BackupSummary {
    fn from(m: &Manifest) -> Self {
        BackupSummary {
            name: m.name.clone(),
            volume: m.volume.clone(),
            snapshot: m.snapshot.clone(),
            size: m.size,
            created_unix_ms: m.created_unix_ms,
            blocks: m.blocks.len() as u64,
            labels: m.labels.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Index {
    format: u32,
    volume: String,
    backups: Vec<BackupSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    volume: String,
    backup: String,
    started_unix_ms: u64,
}

/// One block a verify found bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadBlock {
    pub offset: u64,
    pub hash: BlockHash,
    pub reason: String,
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Backups in progress made the collector wait for another run; nothing was deleted.
    pub deferred_by: Vec<String>,
    pub referenced: u64,
    pub deleted: u64,
    pub deleted_bytes: u64,
    pub kept_young: u64,
}

/// Requests this process made to the target (for tests and the benchmark).
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub put_bytes: AtomicU64,
    pub get_bytes: AtomicU64,
}

/// An opened backup target.
#[derive(Clone)]
pub struct Store {
    os: Arc<dyn ObjectStore>,
    root: String,
    url: String,
    pub counters: Arc<Counters>,
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

impl Store {
    /// Opens `target` with `credentials`. Opening does no I/O; [`Store::check`] does.
    pub fn open(target: &BackupTarget, credentials: &Credentials) -> Result<Store, BackupError> {
        Self::open_with_retry(target, credentials, data_retry())
    }

    /// Opens a target URL.
    pub fn open_url(url: &str, credentials: &Credentials) -> Result<Store, BackupError> {
        Self::open(&BackupTarget::parse(url)?, credentials)
    }

    fn open_with_retry(
        target: &BackupTarget,
        credentials: &Credentials,
        retry: RetryConfig,
    ) -> Result<Store, BackupError> {
        let url = target.to_string();
        let (os, prefix): (Arc<dyn ObjectStore>, String) =
            match target {
                BackupTarget::File { path } => {
                    std::fs::create_dir_all(path).map_err(|e| BackupError::Unreachable {
                        target: url.clone(),
                        reason: format!("cannot create {path}: {e}"),
                    })?;
                    let fs = object_store::local::LocalFileSystem::new_with_prefix(path).map_err(
                        |e| BackupError::Unreachable {
                            target: url.clone(),
                            reason: chain(&e),
                        },
                    )?;
                    (Arc::new(fs), String::new())
                }
                BackupTarget::S3 {
                    bucket,
                    region,
                    prefix,
                } => {
                    let mut options = ClientOptions::new()
                        .with_connect_timeout(Duration::from_secs(5))
                        .with_timeout(Duration::from_secs(60));
                    let mut b = object_store::aws::AmazonS3Builder::new()
                        .with_bucket_name(bucket)
                        .with_region(region)
                        .with_virtual_hosted_style_request(credentials.virtual_hosted_style)
                        .with_retry(retry);
                    if let Some(endpoint) = &credentials.endpoint {
                        if endpoint.starts_with("http://") {
                            options = options.with_allow_http(true);
                        }
                        b = b.with_endpoint(endpoint.trim_end_matches('/'));
                    }
                    if let Some(pem) = &credentials.cert {
                        let cert =
                            object_store::Certificate::from_pem(pem.as_bytes()).map_err(|e| {
                                BackupError::BadCredentials(format!("AWS_CERT: {}", chain(&e)))
                            })?;
                        options = options.with_root_certificate(cert);
                    }
                    match (&credentials.access_key_id, &credentials.secret_access_key) {
                        (Some(k), Some(s)) => {
                            b = b.with_access_key_id(k).with_secret_access_key(s);
                        }
                        (None, None) => b = b.with_skip_signature(true),
                        _ => {
                            return Err(BackupError::BadCredentials(
                                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together".into(),
                            ));
                        }
                    }
                    let s3 = b.with_client_options(options).build().map_err(|e| {
                        BackupError::BadTarget {
                            url: url.clone(),
                            reason: chain(&e),
                        }
                    })?;
                    (Arc::new(s3), prefix.clone())
                }
                BackupTarget::Nfs {
                    server,
                    port,
                    mount_port,
                    export,
                } => {
                    let quick = retry.max_retries <= 1;
                    let nfs = super::nfs::NfsStore::new(super::nfs::NfsConfig {
                        server: server.clone(),
                        port: *port,
                        mount_port: *mount_port,
                        export: export.clone(),
                        url: url.clone(),
                        connect_timeout: Duration::from_secs(5),
                        rpc_timeout: Duration::from_secs(if quick { 10 } else { 60 }),
                        max_retries: retry.max_retries,
                        retry_timeout: retry.retry_timeout,
                        connections: NFS_CONNECTIONS,
                    });
                    (Arc::new(nfs), String::new())
                }
            };
        let root = if prefix.is_empty() {
            ROOT.to_owned()
        } else {
            format!("{prefix}/{ROOT}")
        };
        Ok(Store {
            os,
            root,
            url,
            counters: Arc::new(Counters::default()),
        })
    }

    /// The same target with request counters of its own (one job's).
    pub fn with_own_counters(&self) -> Store {
        Store {
            counters: Arc::new(Counters::default()),
            ..self.clone()
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of one backup, Longhorn's form.
    pub fn backup_url(&self, volume: &str, name: &str) -> String {
        super::backup_url(&self.url, volume, name)
    }

    fn path(&self, rel: &str) -> Path {
        Path::from(format!("{}/{rel}", self.root))
    }

    fn block_path(&self, hash: &str) -> Path {
        self.path(&format!("blocks/{}/{hash}.blk", &hash[..2.min(hash.len())]))
    }

    fn manifest_path(&self, volume: &str, name: &str) -> Path {
        self.path(&format!("volumes/{volume}/backups/{name}.json"))
    }

    fn index_path(&self, volume: &str) -> Path {
        self.path(&format!("volumes/{volume}/index.json"))
    }

    fn marker_path(&self, volume: &str, name: &str) -> Path {
        self.path(&format!("inprogress/{volume}.{name}.json"))
    }

    fn gc_lock_path(&self) -> Path {
        self.path("gc.lock")
    }

    fn err(&self, what: &str, e: object_store::Error) -> BackupError {
        let reason = chain(&e);
        let lower = reason.to_ascii_lowercase();
        let target = self.url.clone();
        if let Some(n) = super::nfs::nfs_cause(&e) {
            use super::nfs::NfsError;
            // The NFS error names the operation and path itself.
            let reason = n.to_string();
            return match n {
                NfsError::Connect { .. }
                | NfsError::Resolve { .. }
                | NfsError::Timeout { .. }
                | NfsError::Portmap { .. } => BackupError::Unreachable { target, reason },
                NfsError::NoSuchExport { .. } => BackupError::NoSuchExport { target, reason },
                NfsError::NoNfsV3 { .. } => {
                    BackupError::Unsupported(format!("backup target {target}: {reason}"))
                }
                NfsError::PermissionDenied { .. } => {
                    BackupError::PermissionDenied { target, reason }
                }
                _ if matches!(e, object_store::Error::PermissionDenied { .. }) => {
                    BackupError::PermissionDenied { target, reason }
                }
                _ => BackupError::Store {
                    target,
                    op: what.to_owned(),
                    reason,
                },
            };
        }
        match e {
            object_store::Error::Unauthenticated { .. }
            | object_store::Error::PermissionDenied { .. } => {
                BackupError::AccessDenied { target, reason }
            }
            _ if lower.contains("nosuchbucket") || lower.contains("bucket does not exist") => {
                BackupError::NoSuchBucket { target, reason }
            }
            _ if lower.contains("invalidaccesskeyid")
                || lower.contains("signaturedoesnotmatch")
                || lower.contains("accessdenied")
                || lower.contains("access denied")
                || lower.contains("403 forbidden") =>
            {
                BackupError::AccessDenied { target, reason }
            }
            _ if lower.contains("error sending request")
                || lower.contains("connect")
                || lower.contains("timed out")
                || lower.contains("dns") =>
            {
                BackupError::Unreachable { target, reason }
            }
            _ => BackupError::Store {
                target,
                op: what.to_owned(),
                reason,
            },
        }
    }

    fn count(&self) {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
    }

    async fn put(&self, path: &Path, data: Bytes) -> Result<(), BackupError> {
        self.count();
        let len = data.len() as u64;
        self.os
            .put(path, PutPayload::from(data))
            .await
            .map_err(|e| self.err(&format!("put {path}"), e))?;
        self.counters.put_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// `Ok(None)` when the object does not exist.
    async fn get(&self, path: &Path) -> Result<Option<Bytes>, BackupError> {
        self.count();
        let r = match self.os.get(path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.err(&format!("get {path}"), e)),
        };
        let b = r
            .bytes()
            .await
            .map_err(|e| self.err(&format!("get {path}"), e))?;
        self.counters
            .get_bytes
            .fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(Some(b))
    }

    async fn delete(&self, path: &Path) -> Result<(), BackupError> {
        self.count();
        match self.os.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(&format!("delete {path}"), e)),
        }
    }

    /// Proves the target reachable, writable and the credentials valid: puts, reads back
    /// and deletes one small probe object (never lists anything). The error says why not.
    pub async fn check(&self) -> Result<(), BackupError> {
        let probe = self.path(&format!("probe/{}-{}", now_unix_ms(), std::process::id()));
        let body = Bytes::from(format!("shorthorn probe {}", now_unix_ms()));
        self.put(&probe, body.clone()).await?;
        let back = self.get(&probe).await?;
        self.delete(&probe).await?;
        if back.as_ref() != Some(&body) {
            return Err(BackupError::Store {
                target: self.url.clone(),
                op: "check".into(),
                reason: "the probe object read back differently from what was written".into(),
            });
        }
        Ok(())
    }

    /// Opens `target` for a quick [`Store::check`]: one attempt per request, short
    /// timeouts, so a bad target answers in seconds.
    pub async fn check_target(
        target: &BackupTarget,
        credentials: &Credentials,
    ) -> Result<(), BackupError> {
        let retry = RetryConfig {
            max_retries: 1,
            retry_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        Self::open_with_retry(target, credentials, retry)?
            .check()
            .await
    }

    /// Whether the target holds block `hash`.
    pub async fn has_block(&self, hash: &str) -> Result<bool, BackupError> {
        self.count();
        let path = self.block_path(hash);
        match self.os.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(&format!("head {path}"), e)),
        }
    }

    /// Stores `encoded` (from [`encode_block`]) as block `hash`.
    pub async fn put_block(&self, hash: &str, encoded: Bytes) -> Result<(), BackupError> {
        self.put(&self.block_path(hash), encoded).await
    }

    /// Reads block `hash`, decompresses it and checks its blake3. `Ok(Err(reason))` when the
    /// block is missing or does not match its name.
    pub async fn get_block(&self, hash: &str) -> Result<Result<Bytes, String>, BackupError> {
        let Some(raw) = self.get(&self.block_path(hash)).await? else {
            return Ok(Err("the block is missing from the target".into()));
        };
        Ok(tokio::task::spawn_blocking({
            let hash = hash.to_owned();
            move || decode_block(raw, &hash)
        })
        .await
        .unwrap_or_else(|e| Err(format!("decoding task failed: {e}"))))
    }

    /// Writes the manifest (the backup exists from here on), then the volume's index.
    pub async fn put_manifest(&self, m: &Manifest) -> Result<(), BackupError> {
        let body = serde_json::to_vec(m).map_err(|e| BackupError::Invalid(e.to_string()))?;
        self.put(&self.manifest_path(&m.volume, &m.name), Bytes::from(body))
            .await?;
        let mut index = self.read_index(&m.volume).await?;
        index.backups.retain(|b| b.name != m.name);
        index.backups.push(BackupSummary::from(m));
        index
            .backups
            .sort_by(|a, b| (a.created_unix_ms, &a.name).cmp(&(b.created_unix_ms, &b.name)));
        self.write_index(&index).await
    }

    async fn read_index(&self, volume: &str) -> Result<Index, BackupError> {
        match self.get(&self.index_path(volume)).await? {
            None => Ok(Index {
                format: 1,
                volume: volume.to_owned(),
                backups: Vec::new(),
            }),
            Some(b) => serde_json::from_slice(&b).map_err(|e| BackupError::Store {
                target: self.url.clone(),
                op: format!("read the index of {volume}"),
                reason: e.to_string(),
            }),
        }
    }

    async fn write_index(&self, index: &Index) -> Result<(), BackupError> {
        let body = serde_json::to_vec(index).map_err(|e| BackupError::Invalid(e.to_string()))?;
        self.put(&self.index_path(&index.volume), Bytes::from(body))
            .await
    }

    /// The backup volumes on the target (any cluster's): one listing of the volume
    /// directories, never of blocks.
    pub async fn list_volumes(&self) -> Result<Vec<String>, BackupError> {
        self.count();
        let prefix = self.path("volumes");
        let r = self
            .os
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| self.err("list backup volumes", e))?;
        let mut v: Vec<String> = r
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect();
        v.sort();
        Ok(v)
    }

    /// The backups of `volume`, oldest first, from its index (one request).
    pub async fn list_backups(&self, volume: &str) -> Result<Vec<BackupSummary>, BackupError> {
        if !super::valid_component(volume) {
            return Err(BackupError::Invalid(format!(
                "backup volume name {volume:?} must be 1-255 bytes of [A-Za-z0-9._-]"
            )));
        }
        Ok(self.read_index(volume).await?.backups)
    }

    pub async fn get_manifest(&self, volume: &str, name: &str) -> Result<Manifest, BackupError> {
        let not_found = || BackupError::BackupNotFound {
            volume: volume.to_owned(),
            name: name.to_owned(),
        };
        if !super::valid_component(volume) || !super::valid_component(name) {
            return Err(not_found());
        }
        let b = self
            .get(&self.manifest_path(volume, name))
            .await?
            .ok_or_else(not_found)?;
        serde_json::from_slice(&b).map_err(|e| BackupError::Store {
            target: self.url.clone(),
            op: format!("read the manifest of {volume}/{name}"),
            reason: e.to_string(),
        })
    }

    /// Deletes a backup: its manifest, then its index entry. Its blocks stay until
    /// [`Store::gc`] finds no manifest naming them.
    pub async fn delete_backup(&self, volume: &str, name: &str) -> Result<(), BackupError> {
        self.get_manifest(volume, name).await?;
        self.delete(&self.manifest_path(volume, name)).await?;
        let mut index = self.read_index(volume).await?;
        index.backups.retain(|b| b.name != name);
        self.write_index(&index).await
    }

    /// Reads every block of a backup and checks it; each bad one is returned.
    pub async fn verify(
        &self,
        volume: &str,
        name: &str,
        concurrency: usize,
    ) -> Result<Vec<BadBlock>, BackupError> {
        let m = self.get_manifest(volume, name).await?;
        self.verify_manifest(&m, concurrency, &AtomicU64::new(0))
            .await
    }

    /// As [`Store::verify`], for a manifest already read, counting the blocks checked so
    /// far in `checked` (for progress).
    pub async fn verify_manifest(
        &self,
        m: &Manifest,
        concurrency: usize,
        checked: &AtomicU64,
    ) -> Result<Vec<BadBlock>, BackupError> {
        let results: Vec<Result<Option<BadBlock>, BackupError>> =
            futures::stream::iter(m.blocks.iter().cloned())
                .map(|(offset, hash)| async move {
                    let block = self.get_block(&hash).await?;
                    checked.fetch_add(1, Ordering::Relaxed);
                    Ok(match block {
                        Ok(_) => None,
                        Err(reason) => Some(BadBlock {
                            offset,
                            hash,
                            reason,
                        }),
                    })
                })
                .buffered(concurrency.max(1))
                .collect()
                .await;
        let mut bad = Vec::new();
        for r in results {
            if let Some(b) = r? {
                bad.push(b);
            }
        }
        Ok(bad)
    }

    /// Records that backup `volume/name` is running (the collector waits for it).
    pub async fn mark_in_progress(&self, volume: &str, name: &str) -> Result<(), BackupError> {
        let m = Marker {
            volume: volume.to_owned(),
            backup: name.to_owned(),
            started_unix_ms: now_unix_ms(),
        };
        let body = serde_json::to_vec(&m).map_err(|e| BackupError::Invalid(e.to_string()))?;
        self.put(&self.marker_path(volume, name), Bytes::from(body))
            .await
    }

    pub async fn clear_in_progress(&self, volume: &str, name: &str) -> Result<(), BackupError> {
        self.delete(&self.marker_path(volume, name)).await
    }

    /// Waits while a collection holds the lock (a backup calls this after its marker is
    /// written, so any collection that started earlier either saw the marker or is seen
    /// here).
    pub async fn wait_for_gc(&self, within: Duration) -> Result<(), BackupError> {
        let start = std::time::Instant::now();
        loop {
            match self.get(&self.gc_lock_path()).await? {
                Some(b) if !expired(&b) => {}
                _ => return Ok(()),
            }
            if start.elapsed() > within {
                return Err(BackupError::Busy(format!(
                    "a collection on {} has held its lock for over {within:?}",
                    self.url
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The backups in progress on this target (their live markers; abandoned ones are
    /// removed on the way).
    pub async fn in_progress(&self) -> Result<Vec<String>, BackupError> {
        let prefix = self.path("inprogress");
        let metas: Vec<_> = {
            self.count();
            self.os
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(|e| self.err("list in-progress markers", e))?
        };
        let mut live = Vec::new();
        for meta in metas {
            match self.get(&meta.location).await? {
                Some(b) if !expired(&b) => {
                    live.push(meta.location.filename().unwrap_or_default().to_owned())
                }
                Some(_) => self.delete(&meta.location).await?,
                None => {}
            }
        }
        Ok(live)
    }

    /// Collects blocks no manifest names. Run by one actor (the Raft leader). It takes the
    /// collector's lock, and when any backup is in progress it deletes nothing (that
    /// backup may name any block, old or new) and says so; blocks younger than `grace`
    /// are kept too (covers clock skew between writers).
    pub async fn gc(&self, grace: Duration) -> Result<GcReport, BackupError> {
        let lock = Marker {
            volume: String::new(),
            backup: "gc".into(),
            started_unix_ms: now_unix_ms(),
        };
        let body = serde_json::to_vec(&lock).map_err(|e| BackupError::Invalid(e.to_string()))?;
        self.put(&self.gc_lock_path(), Bytes::from(body)).await?;
        let result = self.gc_locked(grace).await;
        let unlocked = self.delete(&self.gc_lock_path()).await;
        let report = result?;
        unlocked?;
        Ok(report)
    }

    async fn gc_locked(&self, grace: Duration) -> Result<GcReport, BackupError> {
        let mut report = GcReport {
            deferred_by: self.in_progress().await?,
            ..Default::default()
        };
        if !report.deferred_by.is_empty() {
            return Ok(report);
        }
        let mut referenced = HashSet::new();
        for volume in self.list_volumes().await? {
            // Every manifest, not only the indexed ones: a manifest written just before its
            // index entry still counts.
            let prefix = self.path(&format!("volumes/{volume}/backups"));
            self.count();
            let metas: Vec<_> = self
                .os
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(|e| self.err("list manifests", e))?;
            for meta in metas {
                let Some(b) = self.get(&meta.location).await? else {
                    continue;
                };
                let m: Manifest = serde_json::from_slice(&b).map_err(|e| BackupError::Store {
                    target: self.url.clone(),
                    op: format!("read manifest {}", meta.location),
                    reason: format!("{e}; collection stopped so no block is lost"),
                })?;
                referenced.extend(m.blocks.into_iter().map(|(_, h)| h));
            }
        }
        report.referenced = referenced.len() as u64;
        let cutoff = now_unix_ms().saturating_sub(grace.as_millis() as u64) as i64;
        let prefix = self.path("blocks");
        self.count();
        let blocks: Vec<_> = self
            .os
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.err("list blocks", e))?;
        for meta in blocks {
            let Some(file) = meta.location.filename() else {
                continue;
            };
            let Some(hash) = file.strip_suffix(".blk") else {
                continue;
            };
            if referenced.contains(hash) {
                continue;
            }
            if meta.last_modified.timestamp_millis() > cutoff {
                report.kept_young += 1;
                continue;
            }
            self.delete(&meta.location).await?;
            report.deleted += 1;
            report.deleted_bytes += meta.size;
        }
        Ok(report)
    }

    /// Test hook: the object path of a block (to corrupt or delete it in fault tests).
    pub fn block_location(&self, hash: &str) -> String {
        self.block_path(hash).to_string()
    }

    /// Replaces the stored bytes of block `hash` (fault tests: corruption).
    pub async fn overwrite_block_raw(&self, hash: &str, raw: Bytes) -> Result<(), BackupError> {
        self.put(&self.block_path(hash), raw).await
    }

    /// Removes block `hash` (fault tests).
    pub async fn remove_block(&self, hash: &str) -> Result<(), BackupError> {
        self.delete(&self.block_path(hash)).await
    }
}

fn expired(marker: &[u8]) -> bool {
    match serde_json::from_slice::<Marker>(marker) {
        Ok(m) => now_unix_ms().saturating_sub(m.started_unix_ms) > MARKER_EXPIRY.as_millis() as u64,
        Err(_) => true,
    }
}

fn data_retry() -> RetryConfig {
    RetryConfig {
        max_retries: 10,
        retry_timeout: Duration::from_secs(120),
        ..Default::default()
    }
}

/// Compresses a block with zstd (kept plain when that does not save at least 1/32) and
/// puts the header on. Returns the object's bytes.
pub fn encode_block(plain: &[u8]) -> Vec<u8> {
    let compressed = zstd::bulk::compress(plain, 1).ok();
    let (codec, body): (u8, &[u8]) = match &compressed {
        Some(c) if c.len() < plain.len() - plain.len() / 32 => (CODEC_ZSTD, c),
        _ => (CODEC_NONE, plain),
    };
    let mut out = Vec::with_capacity(BLOCK_HEADER + body.len());
    out.extend_from_slice(BLOCK_MAGIC);
    out.push(1);
    out.push(codec);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(plain.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Undoes [`encode_block`] and checks the content against `hash`. A plain block's content
/// is a slice of `raw` (no copy).
pub fn decode_block(raw: Bytes, hash: &str) -> Result<Bytes, String> {
    if raw.len() < BLOCK_HEADER || &raw[..4] != BLOCK_MAGIC {
        return Err("not a block (bad header)".into());
    }
    if raw[4] != 1 {
        return Err(format!("unknown block format version {}", raw[4]));
    }
    let plain_len = u32::from_be_bytes([raw[8], raw[9], raw[10], raw[11]]) as usize;
    let body = &raw[BLOCK_HEADER..];
    let plain = match raw[5] {
        CODEC_NONE => raw.slice(BLOCK_HEADER..),
        CODEC_ZSTD => Bytes::from(
            zstd::bulk::decompress(body, plain_len)
                .map_err(|e| format!("zstd decompression failed: {e}"))?,
        ),
        c => return Err(format!("unknown codec {c}")),
    };
    if plain.len() != plain_len {
        return Err(format!(
            "{} bytes after decompression, header says {plain_len}",
            plain.len()
        ));
    }
    let got = blake3::hash(&plain).to_hex();
    if got.as_str() != hash {
        return Err(format!("content hashes to {got}, not its name"));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_corruption_is_caught() {
        let compressible = vec![7u8; 1 << 20];
        let h = blake3::hash(&compressible).to_hex().to_string();
        let enc = encode_block(&compressible);
        assert_eq!(enc[5], CODEC_ZSTD);
        assert!(enc.len() < 10_000);
        let enc = Bytes::from(enc);
        assert_eq!(decode_block(enc.clone(), &h).unwrap(), compressible);
        let random: Vec<u8> = (0..65536u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let hr = blake3::hash(&random).to_hex().to_string();
        let enc_r = encode_block(&random);
        assert_eq!(decode_block(Bytes::from(enc_r), &hr).unwrap(), random);
        let mut bad = enc.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(decode_block(Bytes::from(bad), &h).is_err());
        assert!(decode_block(enc, &hr).unwrap_err().contains("not its name"));
    }

    #[tokio::test]
    async fn manifest_index_delete_and_gc_on_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let s = Store::open_url(&url, &Credentials::default()).unwrap();
        s.check().await.unwrap();
        let a = vec![1u8; 4096];
        let b = vec![2u8; 4096];
        let (ha, hb) = (
            blake3::hash(&a).to_hex().to_string(),
            blake3::hash(&b).to_hex().to_string(),
        );
        s.put_block(&ha, encode_block(&a).into()).await.unwrap();
        s.put_block(&hb, encode_block(&b).into()).await.unwrap();
        let m = |name: &str, blocks: Vec<(u64, String)>| Manifest {
            format: 1,
            name: name.into(),
            volume: "v".into(),
            snapshot: "s".into(),
            size: 8192,
            block_size: 4096,
            created_unix_ms: now_unix_ms(),
            labels: BTreeMap::new(),
            base_backup: None,
            uploaded_bytes: 0,
            blocks,
        };
        s.put_manifest(&m("b1", vec![(0, ha.clone())]))
            .await
            .unwrap();
        s.put_manifest(&m("b2", vec![(0, ha.clone()), (4096, hb.clone())]))
            .await
            .unwrap();
        assert_eq!(s.list_volumes().await.unwrap(), vec!["v".to_owned()]);
        let names: Vec<_> = s
            .list_backups("v")
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(names, ["b1", "b2"]);
        // An in-progress backup defers collection.
        s.mark_in_progress("v", "b3").await.unwrap();
        s.delete_backup("v", "b2").await.unwrap();
        let r = s.gc(Duration::ZERO).await.unwrap();
        assert_eq!(r.deferred_by.len(), 1);
        assert!(s.has_block(&hb).await.unwrap());
        s.clear_in_progress("v", "b3").await.unwrap();
        let r = s.gc(Duration::ZERO).await.unwrap();
        assert_eq!((r.deleted, r.referenced), (1, 1));
        assert!(!s.has_block(&hb).await.unwrap());
        assert!(s.verify("v", "b1", 2).await.unwrap().is_empty());
        s.remove_block(&ha).await.unwrap();
        let bad = s.verify("v", "b1", 2).await.unwrap();
        assert_eq!(bad.len(), 1);
        assert_eq!((bad[0].offset, bad[0].hash.as_str()), (0, ha.as_str()));
        assert!(matches!(
            s.get_manifest("v", "b2").await,
            Err(BackupError::BackupNotFound { .. })
        ));
    }
}
