//! Identity and units of a volume as the data path sees them: its name, its size in bytes,
//! the epoch that fences stale engines, and the block size every layer is indexed in.

use std::fmt;
use std::str::FromStr;

/// Every layer is indexed in blocks of this many bytes; a volume size is a multiple of it.
pub const BLOCK_SIZE: u64 = 4096;

/// The name of a volume, as the manager knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeName(String);

impl VolumeName {
    /// Refuses names that are empty, longer than 255 bytes, or have bytes outside
    /// `[A-Za-z0-9._-]`, so a name is always safe in a path and a log line.
    pub fn new(name: &str) -> Result<Self, VolumeError> {
        if valid_name(name) {
            Ok(Self(name.to_owned()))
        } else {
            Err(VolumeError::BadName(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// True for names made of `[A-Za-z0-9._-]`, 1..=255 bytes, not starting with a dot.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The generation of the engine that owns a volume. A replica accepts connections only
/// from the newest epoch it has seen, so a stale engine can never write after a newer one
/// took over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A size in bytes, parsed from `1073741824`, `512M`, `1G`, `1GiB`, `4k` (binary units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = VolumeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| VolumeError::BadSize(s.to_owned()))?;
        let shift = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            _ => return Err(VolumeError::BadSize(s.to_owned())),
        };
        n.checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(|| VolumeError::BadSize(s.to_owned()))
    }
}

impl ByteSize {
    /// Refuses zero and sizes that are not a multiple of [`BLOCK_SIZE`].
    pub fn volume_size(self) -> Result<u64, VolumeError> {
        if self.0 == 0 || !self.0.is_multiple_of(BLOCK_SIZE) {
            Err(VolumeError::Unaligned(self.0))
        } else {
            Ok(self.0)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume name {0:?} must be 1-255 bytes of [A-Za-z0-9._-], not starting with '.'")]
    BadName(String),
    #[error("size {0:?} is not a number of bytes with an optional K, M, G or T suffix")]
    BadSize(String),
    #[error("size {0} is not a non-zero multiple of 4096 bytes")]
    Unaligned(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!("4k".parse::<ByteSize>().unwrap(), ByteSize(4096));
        assert_eq!("256MiB".parse::<ByteSize>().unwrap(), ByteSize(256 << 20));
        assert_eq!("1G".parse::<ByteSize>().unwrap(), ByteSize(1 << 30));
        assert!("12q".parse::<ByteSize>().is_err());
        assert!(ByteSize(4097).volume_size().is_err());
    }

    #[test]
    fn names_are_path_safe() {
        assert!(VolumeName::new("db-1.a_b").is_ok());
        assert!(VolumeName::new("../x").is_err());
        assert!(VolumeName::new("").is_err());
    }
}
