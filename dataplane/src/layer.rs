//! One layer of a replica: a sparse image file plus its `.meta` sidecar (see `FORMAT.md`).
//! The set of 4 KiB blocks a layer holds is read from the file's extents at open
//! (SEEK_DATA / SEEK_HOLE) and kept in memory as a bitmap; nothing else records it.
//! A layer never decides which layer a read comes from; that is the replica's chain.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::volume::BLOCK_SIZE;

/// Which 4 KiB blocks of a layer hold data.
#[derive(Debug, Clone, Default)]
pub struct BlockMap {
    bits: Vec<u64>,
    blocks: u64,
}

impl BlockMap {
    pub fn new(blocks: u64) -> Self {
        BlockMap {
            bits: vec![0; blocks.div_ceil(64) as usize],
            blocks,
        }
    }

    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Grows the map to `blocks`; new blocks are empty.
    pub fn grow(&mut self, blocks: u64) {
        if blocks > self.blocks {
            self.bits.resize(blocks.div_ceil(64) as usize, 0);
            self.blocks = blocks;
        }
    }

    pub fn get(&self, block: u64) -> bool {
        block < self.blocks && self.bits[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    /// Marks `[start, end)` present (`true`) or absent; blocks past the end are ignored.
    pub fn set_range(&mut self, start: u64, end: u64, present: bool) {
        let end = end.min(self.blocks);
        let mut b = start;
        while b < end {
            let word = (b / 64) as usize;
            if b.is_multiple_of(64) && end - b >= 64 {
                self.bits[word] = if present { u64::MAX } else { 0 };
                b += 64;
                continue;
            }
            let mask = 1u64 << (b % 64);
            if present {
                self.bits[word] |= mask;
            } else {
                self.bits[word] &= !mask;
            }
            b += 1;
        }
    }

    /// True when any block of `[start, end)` is present.
    pub fn any(&self, start: u64, end: u64) -> bool {
        let end = end.min(self.blocks);
        let mut b = start;
        while b < end {
            let word = self.bits[(b / 64) as usize];
            if b.is_multiple_of(64) && end - b >= 64 {
                if word != 0 {
                    return true;
                }
                b += 64;
                continue;
            }
            if word & (1 << (b % 64)) != 0 {
                return true;
            }
            b += 1;
        }
        false
    }

    /// Number of present blocks.
    pub fn count(&self) -> u64 {
        self.bits.iter().map(|w| w.count_ones() as u64).sum()
    }
}

/// The `.meta` sidecar of a layer image, as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerMeta {
    /// Format version of the sidecar; always 1 here.
    pub format: u32,
    /// The image file name this sidecar describes.
    pub image: String,
    /// The snapshot name for a snapshot layer; `None` for the head.
    pub snapshot: Option<String>,
    /// The image file of the layer below, `None` for the base.
    pub parent: Option<String>,
    /// The image length in bytes; a shorter file is truncated.
    pub size: u64,
    pub created_unix_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("layer file {path} is corrupted: {reason}")]
    Corrupted { path: PathBuf, reason: String },
    #[error("layer file {path} is truncated: {actual} bytes, expected {expected}")]
    Truncated {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
}

/// An open layer: its image, its sidecar and its block map.
#[derive(Debug)]
pub struct Layer {
    pub path: PathBuf,
    pub file: Arc<File>,
    pub meta: LayerMeta,
    pub blocks: BlockMap,
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LayerError + '_ {
    move |source| LayerError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The sidecar path of an image: `NAME.img` -> `NAME.img.meta`.
pub fn meta_path(image: &Path) -> PathBuf {
    let mut p = image.as_os_str().to_owned();
    p.push(".meta");
    PathBuf::from(p)
}

impl Layer {
    /// Creates an empty sparse image of `meta.size` bytes and its sidecar, both fsynced.
    pub fn create(dir: &Path, meta: LayerMeta) -> Result<Layer, LayerError> {
        let path = dir.join(&meta.image);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.set_len(meta.size).map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
        write_meta(&path, &meta)?;
        let blocks = BlockMap::new(meta.size.div_ceil(BLOCK_SIZE));
        Ok(Layer {
            path,
            file: Arc::new(file),
            meta,
            blocks,
        })
    }

    /// Opens `dir/image`, checks its sidecar and length, and scans its extents.
    /// A sidecar that does not parse or does not match is reported as corrupted, a short
    /// image as truncated; both name the file.
    pub fn open(dir: &Path, image: &str) -> Result<Layer, LayerError> {
        let path = dir.join(image);
        let mpath = meta_path(&path);
        let text = std::fs::read(&mpath).map_err(io_err(&mpath))?;
        let meta: LayerMeta = serde_json::from_slice(&text).map_err(|e| LayerError::Corrupted {
            path: mpath.clone(),
            reason: e.to_string(),
        })?;
        if meta.format != 1 || meta.image != image || !meta.size.is_multiple_of(BLOCK_SIZE) {
            return Err(LayerError::Corrupted {
                path: mpath,
                reason: format!(
                    "sidecar describes {:?} (format {}, size {})",
                    meta.image, meta.format, meta.size
                ),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len < meta.size {
            return Err(LayerError::Truncated {
                path,
                actual: len,
                expected: meta.size,
            });
        }
        if len > meta.size {
            return Err(LayerError::Corrupted {
                path,
                reason: format!(
                    "{len} bytes, longer than the {} its sidecar records",
                    meta.size
                ),
            });
        }
        let blocks = scan_extents(&file, meta.size).map_err(io_err(&path))?;
        Ok(Layer {
            path,
            file: Arc::new(file),
            meta,
            blocks,
        })
    }

    /// Rewrites the sidecar (fsynced, atomically replaced).
    pub fn save_meta(&self) -> Result<(), LayerError> {
        write_meta(&self.path, &self.meta)
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), LayerError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(io_err(&self.path))
    }

    /// Writes `data` at `offset` and marks the blocks it touches present.
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), LayerError> {
        self.file
            .write_all_at(data, offset)
            .map_err(io_err(&self.path))?;
        let end = offset + data.len() as u64;
        self.blocks
            .set_range(offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE), true);
        Ok(())
    }

    /// Deallocates whole blocks `[start, end)`; they read as zeros and are absent after.
    pub fn punch(&mut self, start_block: u64, end_block: u64) -> Result<(), LayerError> {
        if end_block <= start_block {
            return Ok(());
        }
        let off = (start_block * BLOCK_SIZE) as libc::off_t;
        let len = ((end_block - start_block) * BLOCK_SIZE) as libc::off_t;
        // SAFETY: fallocate on an fd we own with plain integer arguments.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        if rc != 0 {
            return Err(LayerError::Io {
                path: self.path.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        self.blocks.set_range(start_block, end_block, false);
        Ok(())
    }

    pub fn sync(&self) -> Result<(), LayerError> {
        self.file.sync_data().map_err(io_err(&self.path))
    }

    /// Grows the image to `size` bytes (sparse) and records it in the sidecar.
    pub fn grow(&mut self, size: u64) -> Result<(), LayerError> {
        self.file.set_len(size).map_err(io_err(&self.path))?;
        self.meta.size = size;
        self.blocks.grow(size.div_ceil(BLOCK_SIZE));
        self.save_meta()
    }
}

pub fn write_meta(image: &Path, meta: &LayerMeta) -> Result<(), LayerError> {
    let path = meta_path(image);
    let bytes = serde_json::to_vec_pretty(meta).map_err(|e| LayerError::Corrupted {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(&path, &bytes).map_err(io_err(&path))
}

/// Writes `bytes` to `path` through a temporary file, fsyncs it, renames it into place
/// and fsyncs the directory, so a crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Finds the allocated 4 KiB blocks of `file` with SEEK_DATA / SEEK_HOLE.
fn scan_extents(file: &File, size: u64) -> std::io::Result<BlockMap> {
    let mut map = BlockMap::new(size.div_ceil(BLOCK_SIZE));
    let fd = file.as_raw_fd();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        // SAFETY: lseek on an fd we own.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(err);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let start = data as u64 / BLOCK_SIZE;
        let end = (hole as u64).min(size).div_ceil(BLOCK_SIZE);
        map.set_range(start, end, true);
        if hole <= data {
            break;
        }
        pos = hole;
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(image: &str, size: u64) -> LayerMeta {
        LayerMeta {
            format: 1,
            image: image.into(),
            snapshot: None,
            parent: None,
            size,
            created_unix_ms: 0,
        }
    }

    #[test]
    fn block_map_ranges() {
        let mut m = BlockMap::new(200);
        m.set_range(3, 130, true);
        assert!(!m.get(2) && m.get(3) && m.get(129) && !m.get(130));
        assert_eq!(m.count(), 127);
        m.set_range(64, 128, false);
        assert!(m.any(0, 64) && !m.any(64, 128) && m.any(128, 200));
        assert!(!m.get(1000));
    }

    #[test]
    fn extents_are_found_again_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Layer::create(dir.path(), meta("a.img", 1 << 20)).unwrap();
        l.write_at(&[1u8; 10], 8192 + 5).unwrap();
        l.write_at(&[2u8; 8192], 65536).unwrap();
        l.sync().unwrap();
        drop(l);
        let l = Layer::open(dir.path(), "a.img").unwrap();
        assert!(l.blocks.get(2) && l.blocks.get(16) && l.blocks.get(17));
        assert_eq!(l.blocks.count(), 3);
    }

    #[test]
    fn truncated_and_corrupted_layers_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        drop(Layer::create(dir.path(), meta("a.img", 1 << 20)).unwrap());
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join("a.img"))
            .unwrap();
        f.set_len(4096).unwrap();
        let err = Layer::open(dir.path(), "a.img").unwrap_err().to_string();
        assert!(err.contains("a.img is truncated"), "{err}");
        std::fs::write(dir.path().join("a.img.meta"), b"{not json").unwrap();
        let err = Layer::open(dir.path(), "a.img").unwrap_err().to_string();
        assert!(err.contains("a.img.meta is corrupted"), "{err}");
    }
}
