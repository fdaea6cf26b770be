//! Backups of snapshots to a target (S3, an NFS export, a directory) and restores from them.
//! The store's layout and formats are in `BACKUP.md`.
//!
//! # API for callers
//! - Targets: [`BackupTarget::parse`] (`s3://bucket@region/prefix`, `nfs://server:/path`,
//!   `file:///abs/path`), [`Credentials::parse_lines`] / [`Credentials::from_map`]
//!   (Longhorn's `AWS_*` keys).
//! - Store operations (the manager calls these directly): [`Store::open_url`], then
//!   [`Store::check`] (or [`Store::check_target`] for a quick answer at `setting set`
//!   time), [`Store::list_volumes`], [`Store::list_backups`], [`Store::get_manifest`],
//!   [`Store::delete_backup`], [`Store::verify`], [`Store::gc`] (one actor: the leader),
//!   [`Store::backup_url`] / [`parse_backup_url`] for `<target>?backup=NAME&volume=VOL`.
//! - Jobs run inside the engine of an attached volume, driven over its control API
//!   (`StartBackup`, `StartRestore`, `JobStatus` in `proto/control.proto`); the engine side
//!   is [`job::run_backup`] / [`job::run_restore`] with a [`job::Progress`].

pub mod job;
pub mod nfs;
pub mod store;
pub mod target;

pub use store::{BackupSummary, BadBlock, GcReport, Manifest, Store};
pub use target::{BackupTarget, Credentials};

use crate::engine::EngineError;

/// Why a backup operation failed, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup target {url:?} is malformed: {reason}")]
    BadTarget { url: String, reason: String },
    #[error("backup credentials: {0}")]
    BadCredentials(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("backup target {target} is unreachable: {reason}")]
    Unreachable { target: String, reason: String },
    #[error(
        "backup target {target} refused the credentials (wrong access key or secret?): {reason}"
    )]
    AccessDenied { target: String, reason: String },
    #[error("backup target {target}: the bucket does not exist: {reason}")]
    NoSuchBucket { target: String, reason: String },
    #[error("backup target {target}: the NFS export does not exist: {reason}")]
    NoSuchExport { target: String, reason: String },
    #[error("backup target {target}: permission denied: {reason}")]
    PermissionDenied { target: String, reason: String },
    #[error("backup target {target}: {op} failed: {reason}")]
    Store {
        target: String,
        op: String,
        reason: String,
    },
    #[error("backup {name:?} of volume {volume:?} not found")]
    BackupNotFound { volume: String, name: String },
    #[error("backup {backup}: block at offset {offset} (blake3 {hash}) is bad: {reason}")]
    BadBlock {
        backup: String,
        offset: u64,
        hash: String,
        reason: String,
    },
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0}")]
    Busy(String),
}

/// Names of volumes and backups on the target: what the path segments may hold.
pub fn valid_component(s: &str) -> bool {
    crate::volume::valid_name(s) && !s.starts_with('.')
}

pub(crate) fn now_unix_ms() -> u64 {
    crate::layer::now_unix_ms()
}

/// Splits a backup URL `<target>?backup=NAME&volume=VOL` into (target, volume, name). A
/// target's own options (`nfs://...?mountport=N`) stay with the target.
pub fn parse_backup_url(url: &str) -> Result<(String, String, String), BackupError> {
    let bad = |reason: &str| BackupError::BadTarget {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let (base, query) = url
        .split_once('?')
        .ok_or_else(|| bad("a backup URL is TARGET?backup=NAME&volume=VOLUME"))?;
    let (mut name, mut volume) = (None, None);
    let mut own = Vec::new();
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("backup", v)) => name = Some(v.to_owned()),
            Some(("volume", v)) => volume = Some(v.to_owned()),
            _ if kv.is_empty() => {}
            _ => own.push(kv),
        }
    }
    let target = if own.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", own.join("&"))
    };
    BackupTarget::parse(&target)?;
    match (volume, name) {
        (Some(v), Some(n)) if valid_component(&v) && valid_component(&n) => Ok((target, v, n)),
        _ => Err(bad("backup= and volume= must both name something")),
    }
}

/// The URL of backup `name` of `volume` on `target` (Longhorn's form).
pub fn backup_url(target: &str, volume: &str, name: &str) -> String {
    let sep = if target.contains('?') { '&' } else { '?' };
    format!("{target}{sep}backup={name}&volume={volume}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn backup_urls_split() {
        let (t, v, n) =
            super::parse_backup_url("s3://b@us-east-1/p?backup=backup-1&volume=vol1").unwrap();
        assert_eq!(
            (t.as_str(), v.as_str(), n.as_str()),
            ("s3://b@us-east-1/p", "vol1", "backup-1")
        );
        assert!(super::parse_backup_url("s3://b@r/p?backup=x").is_err());
        let nfs = "nfs://127.0.0.1:20490:/backups?mountport=20491";
        let url = super::backup_url(nfs, "vol1", "backup-1");
        assert_eq!(
            url,
            "nfs://127.0.0.1:20490:/backups?mountport=20491&backup=backup-1&volume=vol1"
        );
        let (t, v, n) = super::parse_backup_url(&url).unwrap();
        assert_eq!(
            (t.as_str(), v.as_str(), n.as_str()),
            (nfs, "vol1", "backup-1")
        );
        assert!(super::parse_backup_url("s3://b@r/p").is_err());
    }
}
