//! The format of a manager's data directory, recorded in `DATA_DIR/FORMAT`:
//! `{"format": 1, "writtenBy": "0.1.0"}` (the layout number, and the version of the last
//! build that opened it). A directory without the file is format 1, the layout of every
//! build before the file existed (`raft.sled` with the `log`, `meta` and `events` trees,
//! `node-id`). The state snapshot inside has a version of its own
//! ([`shorthorn_state::FORMAT_VERSION`]).
//!
//! A directory of a newer format than this build knows is refused before anything in it is
//! touched: an older build must never half-read, and then write, a layout it does not know.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The layout of the data directory this build writes and the newest it reads.
pub const DATA_FORMAT: u32 = 1;
/// The name of the file that records the format, inside the data directory.
pub const FORMAT_FILE: &str = "FORMAT";

/// What `FORMAT` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataFormat {
    pub format: u32,
    /// The Shorthorn version that last opened the directory ("" if unknown).
    #[serde(default)]
    pub written_by: String,
}

/// Why a data directory cannot be used by this build.
#[derive(Debug, thiserror::Error)]
pub enum DataFormatError {
    #[error(
        "the data directory {dir} has format {found}, written by Shorthorn {written_by}, a newer \
         version; this build (Shorthorn {this}) reads data directory formats up to {DATA_FORMAT}: \
         run Shorthorn {written_by} or newer on it",
        this = env!("CARGO_PKG_VERSION")
    )]
    Newer {
        dir: PathBuf,
        found: u32,
        written_by: String,
    },
    #[error("{path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
}

/// The format of `dir`: from its `FORMAT` file, 1 when there is none (or no directory).
pub fn read(dir: &Path) -> Result<DataFormat, DataFormatError> {
    let path = dir.join(FORMAT_FILE);
    let unreadable = |reason: String| DataFormatError::Unreadable {
        path: path.clone(),
        reason,
    };
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| unreadable(format!("not a data format record: {e}"))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(DataFormat {
            format: 1,
            written_by: String::new(),
        }),
        Err(err) => Err(unreadable(err.to_string())),
    }
}

/// Refuses `dir` if it has a format newer than this build's, without writing anything.
pub fn check(dir: &Path) -> Result<DataFormat, DataFormatError> {
    let found = read(dir)?;
    if found.format > DATA_FORMAT {
        return Err(DataFormatError::Newer {
            dir: dir.to_path_buf(),
            found: found.format,
            written_by: if found.written_by.is_empty() {
                "(unknown)".to_string()
            } else {
                found.written_by
            },
        });
    }
    Ok(found)
}

/// Checks `dir` ([`check`]) and records this build's format and version in it (creating the
/// directory), durably; unchanged records are not rewritten.
pub fn open(dir: &Path) -> Result<DataFormat, DataFormatError> {
    let found = check(dir)?;
    let current = DataFormat {
        format: DATA_FORMAT,
        written_by: env!("CARGO_PKG_VERSION").to_string(),
    };
    if found == current && dir.join(FORMAT_FILE).exists() {
        return Ok(current);
    }
    let failed = |what: &str, err: std::io::Error| DataFormatError::Unreadable {
        path: dir.join(FORMAT_FILE),
        reason: format!("{what}: {err}"),
    };
    std::fs::create_dir_all(dir).map_err(|e| failed("creating the data directory", e))?;
    let tmp = dir.join("FORMAT.tmp");
    let mut bytes = serde_json::to_vec(&current).expect("a data format record encodes");
    bytes.push(b'\n');
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(FORMAT_FILE))?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| failed("writing", e))?;
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_the_file_is_format_1_and_gets_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap().format, 1);
        let opened = open(dir.path()).unwrap();
        assert_eq!(opened.format, DATA_FORMAT);
        assert_eq!(read(dir.path()).unwrap(), opened);
        assert_eq!(opened.written_by, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn a_newer_format_is_refused_naming_both_versions_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let record = br#"{"format": 2, "writtenBy": "9.1.0"}"#;
        std::fs::write(dir.path().join(FORMAT_FILE), record).unwrap();
        let err = open(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the data directory {} has format 2, written by Shorthorn 9.1.0, a newer version; \
                 this build (Shorthorn {}) reads data directory formats up to 1: run Shorthorn \
                 9.1.0 or newer on it",
                dir.path().display(),
                env!("CARGO_PKG_VERSION")
            )
        );
        assert_eq!(std::fs::read(dir.path().join(FORMAT_FILE)).unwrap(), record);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
