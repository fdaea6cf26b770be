//! The data directory: the only module that touches sled. Everything else sees typed
//! operations on three keyspaces, so the embedded database can be replaced in one place.
//!
//! Keyspaces (sled trees):
//! - `log`: Raft log entries by index (u64 big endian) → JSON of the openraft entry.
//! - `meta`: small records by name: vote, committed log id, last purged log id, the node id
//!   and disk incarnation, the current snapshot (meta and bytes), the events floor.
//! - `events`: events produced by applied entries by (index u64 BE, seq u32 BE) → JSON event.
//!
//! Durability: sled makes writes durable only at [`Disk::flush`]. Callers flush before they
//! acknowledge a log append, a vote, a truncation or a snapshot to openraft. On Linux
//! sled 0.34 syncs with `sync_file_range`, which writes the pages back but neither the
//! file's metadata nor the device's cache: enough for a crash of the process, not for a
//! power loss or a kernel crash. So [`Disk::flush`] then `fdatasync`s sled's data file
//! itself, as etcd does its WAL: a flushed write survives a power loss too.

use std::path::Path;

/// A failure of the embedded database.
#[derive(Debug, thiserror::Error)]
#[error("data directory: {0}")]
pub struct DiskError(String);

impl DiskError {
    /// An error found in the stored bytes rather than reported by the database.
    pub fn corrupt(what: impl std::fmt::Display) -> DiskError {
        DiskError(format!("corrupt record: {what}"))
    }
}

impl From<sled::Error> for DiskError {
    fn from(err: sled::Error) -> Self {
        DiskError(err.to_string())
    }
}

/// One manager's data directory.
#[derive(Clone)]
pub struct Disk {
    db: sled::Db,
    /// sled's data file, opened again to `fdatasync` it after sled's own flush.
    file: std::sync::Arc<std::fs::File>,
    log: sled::Tree,
    meta: sled::Tree,
    events: sled::Tree,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Result<u64, DiskError> {
    let bytes: [u8; 8] = key
        .get(..8)
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| DiskError(format!("malformed key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

fn event_key(index: u64, seq: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&index.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

impl Disk {
    /// Opens (or creates) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Disk, DiskError> {
        std::fs::create_dir_all(dir)
            .map_err(|err| DiskError(format!("creating {}: {err}", dir.display())))?;
        let db = sled::Config::new()
            .path(dir.join("raft.sled"))
            .cache_capacity(64 << 20)
            .open()?;
        let path = dir.join("raft.sled").join("db");
        let file = std::fs::File::open(&path)
            .map_err(|err| DiskError(format!("opening {}: {err}", path.display())))?;
        Ok(Disk {
            file: std::sync::Arc::new(file),
            log: db.open_tree("log")?,
            meta: db.open_tree("meta")?,
            events: db.open_tree("events")?,
            db,
        })
    }

    /// Makes every write made so far durable (see the module docs for what that means).
    pub async fn flush(&self) -> Result<(), DiskError> {
        self.db.flush_async().await?;
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|err| DiskError(format!("fdatasync of the data file: {err}")))?
            .map_err(|err| DiskError(format!("fdatasync of the data file: {err}")))?;
        Ok(())
    }

    /// Writes log entries (index, encoded entry) in one atomic batch. Not durable until
    /// [`Disk::flush`].
    pub fn log_put(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<(), DiskError> {
        let mut batch = sled::Batch::default();
        for (index, bytes) in entries {
            batch.insert(&index_key(index), bytes);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    /// Entries with `start <= index < end`, in order.
    pub fn log_range(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, DiskError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for item in self.log.range(index_key(start)..index_key(end)) {
            let (key, value) = item?;
            out.push((key_index(&key)?, value.to_vec()));
        }
        Ok(out)
    }

    /// The last entry of the log, if any.
    pub fn log_last(&self) -> Result<Option<Vec<u8>>, DiskError> {
        Ok(self.log.last()?.map(|(_, value)| value.to_vec()))
    }

    /// Removes entries with index >= `from`.
    pub fn log_remove_from(&self, from: u64) -> Result<(), DiskError> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(index_key(from)..) {
            let (key, _) = item?;
            batch.remove(key);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    /// Removes entries with index <= `upto`.
    pub fn log_remove_upto(&self, upto: u64) -> Result<(), DiskError> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=index_key(upto)) {
            let (key, _) = item?;
            batch.remove(key);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    /// Reads a named record.
    pub fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>, DiskError> {
        Ok(self.meta.get(name)?.map(|v| v.to_vec()))
    }

    /// Writes a named record. Not durable until [`Disk::flush`].
    pub fn meta_put(&self, name: &str, value: &[u8]) -> Result<(), DiskError> {
        self.meta.insert(name, value)?;
        Ok(())
    }

    /// Writes several named records in one atomic batch. Not durable until [`Disk::flush`].
    pub fn meta_put_many(&self, records: &[(&str, &[u8])]) -> Result<(), DiskError> {
        let mut batch = sled::Batch::default();
        for (name, value) in records {
            batch.insert(*name, *value);
        }
        self.meta.apply_batch(batch)?;
        Ok(())
    }

    /// Records the events produced by the entry at `index` (none is a valid list).
    pub fn events_put(&self, batch_items: Vec<(u64, Vec<Vec<u8>>)>) -> Result<(), DiskError> {
        let mut batch = sled::Batch::default();
        for (index, events) in batch_items {
            for (seq, bytes) in events.into_iter().enumerate() {
                let seq = u32::try_from(seq)
                    .map_err(|_| DiskError(format!("entry {index} produced too many events")))?;
                batch.insert(&event_key(index, seq), bytes);
            }
        }
        self.events.apply_batch(batch)?;
        Ok(())
    }

    /// Up to `limit` events from key (entry `from`, position `seq`) on, as
    /// (index, position, encoded event).
    pub fn events_from(
        &self,
        from: u64,
        seq: u32,
        limit: usize,
    ) -> Result<Vec<(u64, u32, Vec<u8>)>, DiskError> {
        let mut out = Vec::new();
        for item in self.events.range(event_key(from, seq)..).take(limit) {
            let (key, value) = item?;
            let seq = key
                .get(8..12)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| DiskError::corrupt("event key"))?;
            out.push((key_index(&key)?, seq, value.to_vec()));
        }
        Ok(out)
    }

    /// Drops the events of entries with index <= `upto`.
    pub fn events_remove_upto(&self, upto: u64) -> Result<(), DiskError> {
        let mut batch = sled::Batch::default();
        for item in self.events.range(..=event_key(upto, u32::MAX)) {
            let (key, _) = item?;
            batch.remove(key);
        }
        self.events.apply_batch(batch)?;
        Ok(())
    }

    /// Drops every event (a snapshot replaced the state this member had).
    pub fn events_clear(&self) -> Result<(), DiskError> {
        self.events.clear()?;
        Ok(())
    }
}
