//! The replica store: one directory holding a chain of layers (oldest snapshot first, the
//! head last), the volume metadata with the newest accepted epoch, and the revision
//! counter (layout in `FORMAT.md`). It owns every byte of the replica's data and the
//! snapshot operations on it. It never talks to the network; `server` does that.

pub mod reader;
pub mod server;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::crash_point;
use crate::layer::{
    Layer, LayerError, LayerMeta, meta_path, now_unix_ms, write_atomic,
    write_meta as write_layer_meta,
};
use crate::protocol::Status;
use crate::volume::{BLOCK_SIZE, Epoch, valid_name};
use reader::ReadPlan;

pub const VOLUME_META: &str = "volume.meta";
/// The replica directory format this build writes and the newest it reads (`format` in
/// `volume.meta`; a `volume.meta` without it is format 1). See `FORMAT.md`.
pub const REPLICA_FORMAT: u32 = 1;
pub const REVISION_COUNTER: &str = "revision.counter";
/// Largest single buffer a zeroing or merge step writes at once.
const STEP: u64 = 1 << 20;

/// `volume.meta`, as JSON: the truth about which layers form the chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeMeta {
    /// The directory's format ([`REPLICA_FORMAT`] when written by this build).
    #[serde(default = "first_format")]
    pub format: u32,
    pub size: u64,
    /// The volume this replica belongs to, set by the first accepted engine.
    pub volume: Option<String>,
    /// The newest epoch accepted; older engines are refused.
    pub epoch: u64,
    /// Image file name of the head layer.
    pub head: String,
    /// Number in the head's name, bumped whenever a new head is opened.
    pub head_generation: u32,
    /// Snapshot names, oldest first.
    pub snapshots: Vec<String>,
}

fn first_format() -> u32 {
    1
}

/// The `format` of a `volume.meta`, read before the rest: a newer format's fields may not
/// parse as today's.
#[derive(Deserialize)]
struct FormatOnly {
    #[serde(default = "first_format")]
    format: u32,
}

/// A snapshot as listed to the engine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    pub parent: Option<String>,
    pub created_unix_ms: u64,
}

/// What `Info` reports about a replica.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaInfo {
    pub size: u64,
    pub revision: u64,
    pub epoch: u64,
    pub volume: Option<String>,
    pub head: String,
    pub snapshots: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupted: {reason}")]
    Corrupted { path: PathBuf, reason: String },
    #[error(
        "the replica directory {dir} has format {found}, written by a newer Shorthorn; this \
         build (Shorthorn {this}) reads replica formats up to {REPLICA_FORMAT}: run a newer \
         Shorthorn on it",
        this = env!("CARGO_PKG_VERSION")
    )]
    NewerFormat { dir: PathBuf, found: u32 },
    #[error("replica in {dir} has size {actual}, not the {requested} asked for")]
    SizeMismatch {
        dir: PathBuf,
        actual: u64,
        requested: u64,
    },
    #[error("{dir} holds no replica yet and no --size was given")]
    NoSize { dir: PathBuf },
    #[error("range {offset}+{length} reaches past the volume end {size}")]
    OutOfRange { offset: u64, length: u64, size: u64 },
    #[error("epoch {offered} is older than the newest accepted epoch {newest}")]
    StaleEpoch { offered: Epoch, newest: Epoch },
    #[error("replica belongs to volume {have:?}, not {asked:?}")]
    WrongVolume { have: String, asked: String },
    #[error("snapshot name {0:?} must be 1-255 bytes of [A-Za-z0-9._-]")]
    BadSnapshotName(String),
    #[error("snapshot {0:?} already exists")]
    SnapshotExists(String),
    #[error("snapshot {0:?} not found")]
    SnapshotNotFound(String),
    #[error("cannot shrink the volume from {size} to {requested} bytes")]
    Shrink { size: u64, requested: u64 },
    #[error("size {0} is not a multiple of 4096 bytes")]
    Unaligned(u64),
    #[error("{0:?} is refused on a read-only connection, which only reads snapshots")]
    ReadOnly(crate::protocol::Op),
}

impl ReplicaError {
    /// The wire status the engine sees for this error.
    pub fn status(&self) -> Status {
        match self {
            ReplicaError::OutOfRange { .. } => Status::OutOfRange,
            ReplicaError::StaleEpoch { .. } => Status::StaleEpoch,
            ReplicaError::SnapshotExists(_) => Status::Exists,
            ReplicaError::SnapshotNotFound(_) => Status::NotFound,
            ReplicaError::WrongVolume { .. }
            | ReplicaError::BadSnapshotName(_)
            | ReplicaError::Shrink { .. }
            | ReplicaError::Unaligned(_)
            | ReplicaError::ReadOnly(_)
            | ReplicaError::SizeMismatch { .. } => Status::Invalid,
            _ => Status::Io,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReplicaError + '_ {
    move |source| ReplicaError::Io {
        path: path.to_owned(),
        source,
    }
}

fn snap_image(name: &str) -> String {
    format!("volume-snap-{name}.img")
}

fn head_image(generation: u32) -> String {
    format!("volume-head-{generation:03}.img")
}

/// An open replica directory.
#[derive(Debug)]
pub struct Replica {
    dir: PathBuf,
    meta: VolumeMeta,
    head: Layer,
    /// Snapshot layers, oldest first.
    snapshots: Vec<Layer>,
    revision: u64,
    revision_file: File,
}

/// A chain of layers as a reader sees it: `lower` oldest first, then `head` (none for a
/// snapshot's view). Each block comes from the newest layer holding it.
#[derive(Clone, Copy)]
struct View<'a> {
    lower: &'a [Layer],
    head: Option<&'a Layer>,
}

impl View<'_> {
    fn source_of(&self, block: u64) -> Option<&Layer> {
        match self.head {
            Some(head) if head.blocks.get(block) => Some(head),
            _ => self.lower.iter().rev().find(|l| l.blocks.get(block)),
        }
    }

    /// Whether any layer holds a block of `[start, end)`.
    fn any(&self, start: u64, end: u64) -> bool {
        self.head.is_some_and(|h| h.blocks.any(start, end))
            || self.lower.iter().any(|l| l.blocks.any(start, end))
    }

    /// Where each byte of `[offset, offset+len)` (already range-checked) comes from: one
    /// layer file for the whole range when no older layer holds any of it, else runs of
    /// blocks from the newest layer holding each (none: zeros).
    fn plan(&self, offset: u64, len: usize) -> ReadPlan {
        let end = offset + len as u64;
        if let Some(head) = self.head
            && !self
                .lower
                .iter()
                .any(|l| l.blocks.any(offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE)))
        {
            return ReadPlan::One(head.file.clone());
        }
        let same = |a: Option<&Layer>, b: Option<&Layer>| match (a, b) {
            (Some(a), Some(b)) => std::ptr::eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let mut runs = Vec::new();
        let mut pos = offset;
        while pos < end {
            let block = pos / BLOCK_SIZE;
            let src = self.source_of(block);
            let mut next = block + 1;
            while next * BLOCK_SIZE < end && same(self.source_of(next), src) {
                next += 1;
            }
            let run_end = (next * BLOCK_SIZE).min(end);
            runs.push((src.map(|l| l.file.clone()), (run_end - pos) as usize));
            pos = run_end;
        }
        ReadPlan::Runs(runs)
    }

    /// Reads `buf.len()` bytes at `offset` (already range-checked); blocks no layer holds
    /// read as zeros.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReplicaError> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        if let Some(head) = self.head
            && !self
                .lower
                .iter()
                .any(|l| l.blocks.any(offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE)))
        {
            return Ok(head.read_at(buf, offset)?);
        }
        let same = |a: Option<&Layer>, b: Option<&Layer>| match (a, b) {
            (Some(a), Some(b)) => std::ptr::eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let mut pos = offset;
        while pos < end {
            let block = pos / BLOCK_SIZE;
            let src = self.source_of(block);
            let mut next = block + 1;
            while next * BLOCK_SIZE < end && same(self.source_of(next), src) {
                next += 1;
            }
            let run_end = (next * BLOCK_SIZE).min(end);
            let slice = &mut buf[(pos - offset) as usize..(run_end - offset) as usize];
            match src {
                Some(layer) => layer.read_at(slice, pos)?,
                None => slice.fill(0),
            }
            pos = run_end;
        }
        Ok(())
    }
}

impl Replica {
    /// Opens the replica in `dir`, creating an empty one of `size` bytes if the directory
    /// holds none. Every layer is checked; the first bad one is named in the error.
    pub fn open(dir: &Path, size: Option<u64>) -> Result<Replica, ReplicaError> {
        let meta_file = dir.join(VOLUME_META);
        if meta_file.exists() {
            // Before anything in the directory is touched: a newer build's is refused as is.
            let text = std::fs::read(&meta_file).map_err(io_err(&meta_file))?;
            let found = serde_json::from_slice::<FormatOnly>(&text)
                .map_err(|e| ReplicaError::Corrupted {
                    path: meta_file.clone(),
                    reason: e.to_string(),
                })?
                .format;
            if found > REPLICA_FORMAT {
                return Err(ReplicaError::NewerFormat {
                    dir: dir.to_owned(),
                    found,
                });
            }
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let (meta, head, snapshots) = if meta_file.exists() {
            let text = std::fs::read(&meta_file).map_err(io_err(&meta_file))?;
            let meta: VolumeMeta =
                serde_json::from_slice(&text).map_err(|e| ReplicaError::Corrupted {
                    path: meta_file.clone(),
                    reason: e.to_string(),
                })?;
            if meta.format == 0 || !meta.size.is_multiple_of(BLOCK_SIZE) {
                return Err(ReplicaError::Corrupted {
                    path: meta_file,
                    reason: format!("format {} size {}", meta.format, meta.size),
                });
            }
            if let Some(requested) = size
                && requested != meta.size
            {
                return Err(ReplicaError::SizeMismatch {
                    dir: dir.to_owned(),
                    actual: meta.size,
                    requested,
                });
            }
            remove_unreferenced_layers(dir, &meta);
            let mut snapshots = Vec::with_capacity(meta.snapshots.len());
            let mut parent: Option<String> = None;
            for name in &meta.snapshots {
                let mut layer = Layer::open(dir, &snap_image(name))?;
                check_link(&mut layer, Some(name), &parent)?;
                parent = Some(layer.meta.image.clone());
                snapshots.push(layer);
            }
            let mut head = Layer::open(dir, &meta.head)?;
            check_link(&mut head, None, &parent)?;
            if head.meta.size != meta.size {
                return Err(ReplicaError::Corrupted {
                    path: meta_path(&head.path),
                    reason: format!(
                        "head size {} differs from volume size {}",
                        head.meta.size, meta.size
                    ),
                });
            }
            (meta, head, snapshots)
        } else {
            let size = size.ok_or_else(|| ReplicaError::NoSize {
                dir: dir.to_owned(),
            })?;
            if size == 0 || size % BLOCK_SIZE != 0 {
                return Err(ReplicaError::Unaligned(size));
            }
            let head = Layer::create(
                dir,
                LayerMeta {
                    format: 1,
                    image: head_image(1),
                    snapshot: None,
                    parent: None,
                    size,
                    created_unix_ms: now_unix_ms(),
                },
            )?;
            let meta = VolumeMeta {
                format: REPLICA_FORMAT,
                size,
                volume: None,
                epoch: 0,
                head: head_image(1),
                head_generation: 1,
                snapshots: Vec::new(),
            };
            save_volume_meta(dir, &meta)?;
            (meta, head, Vec::new())
        };
        let rpath = dir.join(REVISION_COUNTER);
        let revision_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&rpath)
            .map_err(io_err(&rpath))?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut &revision_file, &mut text).map_err(io_err(&rpath))?;
        let revision = if text.trim().is_empty() {
            0
        } else {
            text.trim().parse().map_err(|_| ReplicaError::Corrupted {
                path: rpath.clone(),
                reason: format!("{:?} is not a number", text.trim()),
            })?
        };
        Ok(Replica {
            dir: dir.to_owned(),
            meta,
            head,
            snapshots,
            revision,
            revision_file,
        })
    }

    pub fn size(&self) -> u64 {
        self.meta.size
    }

    pub fn epoch(&self) -> Epoch {
        Epoch(self.meta.epoch)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn info(&self) -> ReplicaInfo {
        ReplicaInfo {
            size: self.meta.size,
            revision: self.revision,
            epoch: self.meta.epoch,
            volume: self.meta.volume.clone(),
            head: self.meta.head.clone(),
            snapshots: self.meta.snapshots.clone(),
        }
    }

    /// Accepts a read-only connection of `volume`: only the volume name must match (a
    /// replica that never served a volume has no snapshot to read anyway). Nothing is
    /// recorded.
    pub fn check_volume(&self, volume: &str) -> Result<(), ReplicaError> {
        match &self.meta.volume {
            Some(have) if have != volume => Err(ReplicaError::WrongVolume {
                have: have.clone(),
                asked: volume.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Accepts a connection of `volume` at `epoch`: refuses an epoch older than the newest
    /// accepted one, and persists (fsynced) a newer epoch and a first volume name before
    /// returning.
    pub fn accept_epoch(&mut self, volume: &str, epoch: Epoch) -> Result<(), ReplicaError> {
        if epoch.0 < self.meta.epoch {
            return Err(ReplicaError::StaleEpoch {
                offered: epoch,
                newest: Epoch(self.meta.epoch),
            });
        }
        match &self.meta.volume {
            Some(have) if have != volume => {
                return Err(ReplicaError::WrongVolume {
                    have: have.clone(),
                    asked: volume.to_owned(),
                });
            }
            Some(_) if epoch.0 == self.meta.epoch => return Ok(()),
            _ => {}
        }
        let mut meta = self.meta.clone();
        meta.volume = Some(volume.to_owned());
        meta.epoch = epoch.0;
        save_volume_meta(&self.dir, &meta)?;
        self.meta = meta;
        Ok(())
    }

    fn check_range(&self, offset: u64, length: u64) -> Result<(), ReplicaError> {
        match offset.checked_add(length) {
            Some(end) if end <= self.meta.size => Ok(()),
            _ => Err(ReplicaError::OutOfRange {
                offset,
                length,
                size: self.meta.size,
            }),
        }
    }

    /// What a reader sees now: every snapshot and the head.
    fn view(&self) -> View<'_> {
        View {
            lower: &self.snapshots,
            head: Some(&self.head),
        }
    }

    /// What a reader saw when snapshot `name` was taken: it and the snapshots before it.
    fn view_at(&self, name: &str) -> Result<View<'_>, ReplicaError> {
        Ok(View {
            lower: &self.snapshots[..=self.snapshot_index(name)?],
            head: None,
        })
    }

    fn lower_has(&self, block: u64) -> bool {
        self.snapshots.iter().any(|l| l.blocks.get(block))
    }

    fn lower_any(&self, start: u64, end: u64) -> bool {
        self.snapshots.iter().any(|l| l.blocks.any(start, end))
    }

    /// Reads `buf.len()` bytes at `offset`, each block from the newest layer holding it;
    /// blocks no layer holds read as zeros.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReplicaError> {
        self.check_range(offset, buf.len() as u64)?;
        self.view().read(offset, buf)
    }

    /// Reads as [`Self::read`] does, but as of snapshot `name`: only it and the snapshots
    /// before it count (for rebuilding another replica's layer chain).
    pub fn read_at_snapshot(
        &self,
        name: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ReplicaError> {
        self.check_range(offset, buf.len() as u64)?;
        self.view_at(name)?.read(offset, buf)
    }

    /// Where the bytes of a read of `len` bytes at `offset` come from, now or (with `at`)
    /// as of snapshot `at`: the read itself runs without the store (see `reader`). The
    /// plan stays right until the next write, snapshot or revert; a write that lands
    /// meanwhile may or may not be seen, as with any two overlapping requests in flight.
    pub fn read_plan(
        &self,
        at: Option<&str>,
        offset: u64,
        len: usize,
    ) -> Result<ReadPlan, ReplicaError> {
        self.check_range(offset, len as u64)?;
        let view = match at {
            Some(name) => self.view_at(name)?,
            None => self.view(),
        };
        Ok(view.plan(offset, len))
    }

    /// Writes `data` at `offset` into the head. A partial block that only a lower layer
    /// holds is first copied up, so the head always holds whole, correct blocks.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ReplicaError> {
        self.check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.revision += 1;
        let end = offset + data.len() as u64;
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        let copy_up =
            |b: u64, partial: bool| partial && !self.head.blocks.get(b) && self.lower_has(b);
        let cow_first = copy_up(first, !offset.is_multiple_of(BLOCK_SIZE));
        let cow_last = copy_up(last, !end.is_multiple_of(BLOCK_SIZE));
        if !cow_first && !cow_last {
            self.head.write_at(data, offset)?;
            return Ok(());
        }
        let astart = first * BLOCK_SIZE;
        let aend = (last + 1) * BLOCK_SIZE;
        let mut buf = vec![0u8; (aend - astart) as usize];
        let bs = BLOCK_SIZE as usize;
        self.read(astart, &mut buf[..bs])?;
        let tail = buf.len() - bs;
        if last != first {
            self.read(last * BLOCK_SIZE, &mut buf[tail..])?;
        }
        let at = (offset - astart) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        self.head.write_at(&buf, astart)?;
        Ok(())
    }

    /// Makes `[offset, offset+length)` read as zeros: whole blocks are punched out of the
    /// head (and written as zeros where a lower layer holds data), partial blocks are
    /// written.
    pub fn zero(&mut self, offset: u64, length: u64) -> Result<(), ReplicaError> {
        self.check_range(offset, length)?;
        if length == 0 {
            return Ok(());
        }
        let end = offset + length;
        let full_start = offset.div_ceil(BLOCK_SIZE);
        let full_end = end / BLOCK_SIZE;
        if full_start >= full_end {
            let zeros = vec![0u8; length as usize];
            return self.write(offset, &zeros);
        }
        if offset < full_start * BLOCK_SIZE {
            let zeros = vec![0u8; (full_start * BLOCK_SIZE - offset) as usize];
            self.write(offset, &zeros)?;
        }
        if end > full_end * BLOCK_SIZE {
            let zeros = vec![0u8; (end - full_end * BLOCK_SIZE) as usize];
            self.write(full_end * BLOCK_SIZE, &zeros)?;
        }
        self.revision += 1;
        self.head.punch(full_start, full_end)?;
        if self.lower_any(full_start, full_end) {
            let zeros = vec![0u8; STEP as usize];
            let mut b = full_start;
            while b < full_end {
                if !self.lower_has(b) {
                    b += 1;
                    continue;
                }
                let mut e = b + 1;
                while e < full_end && self.lower_has(e) && (e - b) * BLOCK_SIZE < STEP {
                    e += 1;
                }
                let n = ((e - b) * BLOCK_SIZE) as usize;
                self.head.write_at(&zeros[..n], b * BLOCK_SIZE)?;
                b = e;
            }
        }
        Ok(())
    }

    /// The head file and the revision to persist: the caller fsyncs without holding the
    /// replica, then calls [`Replica::persist_revision`].
    pub fn flush_target(&self) -> (Arc<File>, u64) {
        (self.head.file.clone(), self.revision)
    }

    /// Records `revision` in `revision.counter` (written, not fsynced: it survives a
    /// process crash, and is only a hint for choosing the freshest replica).
    pub fn persist_revision(&self, revision: u64) -> Result<(), ReplicaError> {
        let text = format!("{revision:020}\n");
        let path = self.dir.join(REVISION_COUNTER);
        self.revision_file
            .write_all_at(text.as_bytes(), 0)
            .map_err(io_err(&path))
    }

    /// Sets the revision counter (after a rebuild, to the source's) and records it.
    pub fn set_revision(&mut self, revision: u64) -> Result<(), ReplicaError> {
        self.revision = revision;
        self.persist_revision(revision)
    }

    /// Fsyncs the head and records the revision.
    pub fn flush(&self) -> Result<(), ReplicaError> {
        self.head.sync()?;
        self.persist_revision(self.revision)
    }

    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.snapshots
            .iter()
            .map(|l| SnapshotInfo {
                name: l.meta.snapshot.clone().unwrap_or_default(),
                parent: l.meta.parent.as_deref().and_then(|p| {
                    p.strip_prefix("volume-snap-")
                        .and_then(|p| p.strip_suffix(".img"))
                        .map(str::to_owned)
                }),
                created_unix_ms: l.meta.created_unix_ms,
            })
            .collect()
    }

    /// Freezes the head into snapshot `name` and opens a new, empty head on top of it.
    pub fn snapshot_create(&mut self, name: &str) -> Result<(), ReplicaError> {
        if !valid_name(name) {
            return Err(ReplicaError::BadSnapshotName(name.to_owned()));
        }
        if self.meta.snapshots.iter().any(|s| s == name) {
            return Err(ReplicaError::SnapshotExists(name.to_owned()));
        }
        self.flush()?;
        // Crash-safe order: the new names and sidecars first, then `volume.meta` (the commit
        // point: atomically replaced), then the old head's name goes. A crash before the
        // commit leaves the old chain intact plus unreferenced files that `open` removes.
        let image = snap_image(name);
        let snap_path = self.dir.join(&image);
        remove_layer_files_if_present(&snap_path);
        std::fs::hard_link(&self.head.path, &snap_path).map_err(io_err(&snap_path))?;
        let mut snap_meta = self.head.meta.clone();
        snap_meta.image = image.clone();
        snap_meta.snapshot = Some(name.to_owned());
        write_layer_meta(&snap_path, &snap_meta)?;
        crash_point("snapshot-create:linked");
        let generation = self.meta.head_generation + 1;
        remove_layer_files_if_present(&self.dir.join(head_image(generation)));
        let new_head = Layer::create(
            &self.dir,
            LayerMeta {
                format: 1,
                image: head_image(generation),
                snapshot: None,
                parent: Some(image.clone()),
                size: self.meta.size,
                created_unix_ms: now_unix_ms(),
            },
        )?;
        let mut meta = self.meta.clone();
        meta.head = head_image(generation);
        meta.head_generation = generation;
        meta.snapshots.push(name.to_owned());
        save_volume_meta(&self.dir, &meta)?;
        crash_point("snapshot-create:committed");
        self.meta = meta;
        let mut old = std::mem::replace(&mut self.head, new_head);
        remove_layer_files(&old.path);
        // The same inode under its snapshot name: the open file stays valid.
        old.path = snap_path;
        old.meta = snap_meta;
        self.snapshots.push(old);
        Ok(())
    }

    fn snapshot_index(&self, name: &str) -> Result<usize, ReplicaError> {
        self.meta
            .snapshots
            .iter()
            .position(|s| s == name)
            .ok_or_else(|| ReplicaError::SnapshotNotFound(name.to_owned()))
    }

    /// Deletes snapshot `name` by merging its blocks into its child (the next snapshot or
    /// the head) wherever the child does not already hold them.
    pub fn snapshot_delete(&mut self, name: &str) -> Result<(), ReplicaError> {
        let idx = self.snapshot_index(name)?;
        let removed = self.snapshots.remove(idx);
        let child: &mut Layer = match self.snapshots.get_mut(idx) {
            Some(l) => l,
            None => &mut self.head,
        };
        let blocks = removed.blocks.blocks();
        let mut buf = Vec::new();
        let mut b = 0;
        while b < blocks {
            if !removed.blocks.get(b) || child.blocks.get(b) {
                b += 1;
                continue;
            }
            let mut e = b + 1;
            while e < blocks
                && removed.blocks.get(e)
                && !child.blocks.get(e)
                && (e - b) * BLOCK_SIZE < STEP
            {
                e += 1;
            }
            buf.resize(((e - b) * BLOCK_SIZE) as usize, 0);
            removed.read_at(&mut buf, b * BLOCK_SIZE)?;
            child.write_at(&buf, b * BLOCK_SIZE)?;
            b = e;
        }
        child.sync()?;
        crash_point("snapshot-delete:merged");
        // The commit point; a crash after it leaves the child's sidecar naming the removed
        // layer as its parent, which `open` repairs from `volume.meta`.
        let mut meta = self.meta.clone();
        meta.snapshots.retain(|s| s != name);
        save_volume_meta(&self.dir, &meta)?;
        crash_point("snapshot-delete:committed");
        self.meta = meta;
        child.meta.parent = removed.meta.parent.clone();
        child.save_meta()?;
        remove_layer_files(&removed.path);
        Ok(())
    }

    /// Makes snapshot `name` the base of a new, empty head. The old head and every
    /// snapshot newer than `name` are discarded (the chain is linear).
    pub fn snapshot_revert(&mut self, name: &str) -> Result<(), ReplicaError> {
        let idx = self.snapshot_index(name)?;
        let generation = self.meta.head_generation + 1;
        remove_layer_files_if_present(&self.dir.join(head_image(generation)));
        let new_head = Layer::create(
            &self.dir,
            LayerMeta {
                format: 1,
                image: head_image(generation),
                snapshot: None,
                parent: Some(snap_image(name)),
                size: self.meta.size,
                created_unix_ms: now_unix_ms(),
            },
        )?;
        let mut meta = self.meta.clone();
        meta.head = head_image(generation);
        meta.head_generation = generation;
        meta.snapshots.truncate(idx + 1);
        crash_point("snapshot-revert:created");
        save_volume_meta(&self.dir, &meta)?;
        crash_point("snapshot-revert:committed");
        self.meta = meta;
        let old_head = std::mem::replace(&mut self.head, new_head);
        remove_layer_files(&old_head.path);
        for l in self.snapshots.drain(idx + 1..) {
            remove_layer_files(&l.path);
        }
        self.revision += 1;
        Ok(())
    }

    /// blake3 of `count` chunks of `chunk` bytes from `offset` (the last may be short at
    /// the volume end), as the engine sees the data now, or as of snapshot `at`.
    pub fn chunk_hashes(
        &self,
        offset: u64,
        count: u64,
        chunk: u64,
        at: Option<&str>,
    ) -> Result<Vec<u8>, ReplicaError> {
        if chunk == 0 || !chunk.is_multiple_of(BLOCK_SIZE) || chunk > STEP * 16 {
            return Err(ReplicaError::Unaligned(chunk));
        }
        if offset > self.meta.size {
            return Err(ReplicaError::OutOfRange {
                offset,
                length: chunk,
                size: self.meta.size,
            });
        }
        let view = match at {
            Some(name) => self.view_at(name)?,
            None => self.view(),
        };
        let mut out = Vec::with_capacity(count as usize * 32);
        let mut buf = vec![0u8; chunk as usize];
        let mut zero_hash: Option<(usize, blake3::Hash)> = None;
        for i in 0..count {
            let start = offset + i * chunk;
            if start >= self.meta.size {
                break;
            }
            let len = chunk.min(self.meta.size - start) as usize;
            let (sb, eb) = (
                start / BLOCK_SIZE,
                (start + len as u64).div_ceil(BLOCK_SIZE),
            );
            let hash = if !view.any(sb, eb) {
                match zero_hash {
                    Some((l, h)) if l == len => h,
                    _ => {
                        let h = blake3::hash(&vec![0u8; len]);
                        zero_hash = Some((len, h));
                        h
                    }
                }
            } else {
                view.read(start, &mut buf[..len])?;
                blake3::hash(&buf[..len])
            };
            out.extend_from_slice(hash.as_bytes());
        }
        Ok(out)
    }

    /// A bitmap (one bit per `chunk` bytes of the volume, least significant bit first) of
    /// the chunks any snapshot layer newer than `from` up to and including `to` holds a
    /// block of: what changed between the two snapshots. With no `from`, every layer up to
    /// `to` counts (every chunk ever written). For incremental backups.
    pub fn changed_chunks(
        &self,
        chunk: u64,
        from: Option<&str>,
        to: &str,
    ) -> Result<Vec<u8>, ReplicaError> {
        if chunk == 0 || !chunk.is_multiple_of(BLOCK_SIZE) {
            return Err(ReplicaError::Unaligned(chunk));
        }
        let hi = self.snapshot_index(to)?;
        let lo = match from {
            Some(name) => self.snapshot_index(name)? + 1,
            None => 0,
        };
        let layers = self.snapshots.get(lo..=hi).unwrap_or(&[]);
        let count = self.meta.size.div_ceil(chunk);
        let mut out = vec![0u8; count.div_ceil(8) as usize];
        let per = chunk / BLOCK_SIZE;
        for i in 0..count {
            let (sb, eb) = (i * per, (i * per + per).min(self.meta.size / BLOCK_SIZE));
            if layers.iter().any(|l| l.blocks.any(sb, eb)) {
                out[(i / 8) as usize] |= 1 << (i % 8);
            }
        }
        Ok(out)
    }

    /// Grows the volume to `size` bytes; the new range reads as zeros.
    pub fn expand(&mut self, size: u64) -> Result<(), ReplicaError> {
        if !size.is_multiple_of(BLOCK_SIZE) {
            return Err(ReplicaError::Unaligned(size));
        }
        if size < self.meta.size {
            return Err(ReplicaError::Shrink {
                size: self.meta.size,
                requested: size,
            });
        }
        if size == self.meta.size {
            return Ok(());
        }
        self.head.grow(size)?;
        let mut meta = self.meta.clone();
        meta.size = size;
        save_volume_meta(&self.dir, &meta)?;
        self.meta = meta;
        Ok(())
    }
}

/// Checks that `layer` is the one `volume.meta` names at this place of the chain. The
/// parent pointer is repaired from `volume.meta` (the commit point of every layer
/// operation: a crash right after a snapshot delete committed leaves the child pointing at
/// the removed layer); a layer that is not the one expected is corrupted.
fn check_link(
    layer: &mut Layer,
    snapshot: Option<&String>,
    parent: &Option<String>,
) -> Result<(), ReplicaError> {
    if layer.meta.snapshot.as_ref() != snapshot {
        return Err(ReplicaError::Corrupted {
            path: meta_path(&layer.path),
            reason: format!(
                "sidecar says snapshot {:?} with parent {:?}, volume.meta expects {:?} with parent {:?}",
                layer.meta.snapshot, layer.meta.parent, snapshot, parent
            ),
        });
    }
    if &layer.meta.parent != parent {
        tracing::warn!(
            layer = %layer.path.display(),
            was = ?layer.meta.parent,
            now = ?parent,
            "repairing the layer's parent from volume.meta (an interrupted snapshot operation)"
        );
        layer.meta.parent = parent.clone();
        layer.save_meta()?;
    }
    Ok(())
}

/// Removes layer files (`volume-head-*.img`, `volume-snap-*.img`, their sidecars and
/// temporary files) that `volume.meta` does not name: what an interrupted snapshot
/// create, delete or revert left before or after its commit.
fn remove_unreferenced_layers(dir: &Path, meta: &VolumeMeta) {
    let mut wanted: Vec<String> = meta.snapshots.iter().map(|n| snap_image(n)).collect();
    wanted.push(meta.head.clone());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if !(file.starts_with("volume-head-") || file.starts_with("volume-snap-")) {
            continue;
        }
        let image = file
            .trim_end_matches(".tmp")
            .trim_end_matches(".meta")
            .to_owned();
        if wanted.contains(&image) {
            if file.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
            continue;
        }
        tracing::warn!(file = %entry.path().display(), "removing a layer file volume.meta does not name (an interrupted snapshot operation)");
        if let Err(e) = std::fs::remove_file(entry.path()) {
            tracing::warn!(file = %entry.path().display(), error = %e, "could not remove it");
        }
    }
}

fn remove_layer_files_if_present(image: &Path) {
    for p in [image.to_owned(), meta_path(image)] {
        let _ = std::fs::remove_file(p);
    }
}

fn save_volume_meta(dir: &Path, meta: &VolumeMeta) -> Result<(), ReplicaError> {
    let path = dir.join(VOLUME_META);
    let bytes = serde_json::to_vec_pretty(meta).map_err(|e| ReplicaError::Corrupted {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(&path, &bytes).map_err(io_err(&path))
}

fn remove_layer_files(image: &Path) {
    for p in [image.to_owned(), meta_path(image)] {
        if let Err(e) = std::fs::remove_file(&p) {
            tracing::warn!(file = %p.display(), error = %e, "could not remove a discarded layer file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(r: &Replica, off: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        r.read(off, &mut b).unwrap();
        b
    }

    #[test]
    fn a_replica_of_a_newer_format_is_refused_naming_both_versions_and_left_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let r = Replica::open(dir.path(), Some(1 << 20)).unwrap();
        drop(r);
        let meta_file = dir.path().join(VOLUME_META);
        let mut meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&meta_file).unwrap()).unwrap();
        meta["format"] = 2.into();
        meta["layers"] = "a field of format 2".into();
        std::fs::write(&meta_file, serde_json::to_vec(&meta).unwrap()).unwrap();
        let listing = |dir: &Path| {
            let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
                .collect();
            files.sort();
            files
        };
        let before = listing(dir.path());
        let err = Replica::open(dir.path(), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the replica directory {} has format 2, written by a newer Shorthorn; this build \
                 (Shorthorn {}) reads replica formats up to 1: run a newer Shorthorn on it",
                dir.path().display(),
                env!("CARGO_PKG_VERSION")
            )
        );
        assert_eq!(listing(dir.path()), before);
    }

    #[test]
    fn a_volume_meta_without_a_format_is_format_1() {
        let dir = tempfile::tempdir().unwrap();
        drop(Replica::open(dir.path(), Some(1 << 20)).unwrap());
        let meta_file = dir.path().join(VOLUME_META);
        let mut meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&meta_file).unwrap()).unwrap();
        meta.as_object_mut().unwrap().remove("format");
        std::fs::write(&meta_file, serde_json::to_vec(&meta).unwrap()).unwrap();
        let r = Replica::open(dir.path(), None).unwrap();
        assert_eq!(r.meta.format, 1);
    }

    #[test]
    fn reads_come_from_the_newest_layer() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Replica::open(dir.path(), Some(1 << 20)).unwrap();
        r.write(0, &[1u8; 16384]).unwrap();
        r.snapshot_create("s1").unwrap();
        r.write(4096 + 100, &[2u8; 10]).unwrap();
        let b = read(&r, 0, 16384);
        assert!(b[..4196].iter().all(|&x| x == 1));
        assert!(b[4196..4206].iter().all(|&x| x == 2));
        assert!(b[4206..].iter().all(|&x| x == 1));
        r.zero(8192, 4096).unwrap();
        assert!(read(&r, 8192, 4096).iter().all(|&x| x == 0));
        assert!(read(&r, 12288, 4096).iter().all(|&x| x == 1));
        drop(r);
        let mut r = Replica::open(dir.path(), None).unwrap();
        assert!(read(&r, 8192, 4096).iter().all(|&x| x == 0));
        assert_eq!(read(&r, 4196, 10), vec![2u8; 10]);
        r.snapshot_revert("s1").unwrap();
        assert!(read(&r, 0, 16384).iter().all(|&x| x == 1));
        r.write(0, &[3u8; 4096]).unwrap();
        r.snapshot_create("s2").unwrap();
        r.snapshot_delete("s1").unwrap();
        let b = read(&r, 0, 16384);
        assert!(b[..4096].iter().all(|&x| x == 3) && b[4096..].iter().all(|&x| x == 1));
        drop(r);
        let r = Replica::open(dir.path(), None).unwrap();
        assert_eq!(r.info().snapshots, vec!["s2".to_owned()]);
        assert_eq!(read(&r, 0, 16384), b);
    }

    #[test]
    fn stale_epochs_are_refused_and_newer_ones_persist() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Replica::open(dir.path(), Some(1 << 20)).unwrap();
        r.accept_epoch("v", Epoch(5)).unwrap();
        assert!(matches!(
            r.accept_epoch("v", Epoch(4)),
            Err(ReplicaError::StaleEpoch { .. })
        ));
        assert!(matches!(
            r.accept_epoch("w", Epoch(6)),
            Err(ReplicaError::WrongVolume { .. })
        ));
        drop(r);
        let mut r = Replica::open(dir.path(), None).unwrap();
        assert_eq!(r.epoch(), Epoch(5));
        assert!(r.accept_epoch("v", Epoch(4)).is_err());
    }
}
