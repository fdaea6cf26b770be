//! The encoded form of [`State`]: `b"SHST"`, the format version (u32, little endian), then
//! the rkyv archive of the state. Used for Raft snapshots; a round trip is identical.
//!
//! Formats this build reads: [`OLDEST_FORMAT_VERSION`] to [`FORMAT_VERSION`].
//! - 11: the state before cluster versions (commit 8983096 and earlier releases; the support
//!   floor of upgrades: older snapshots were never readable across releases). Read through
//!   a frozen copy of the top-level state of then ([`v11`]), fields added since take their
//!   "as before" values.
//! - 12: adds [`State::cluster_version`].
//!
//! What this build writes: format 11 while the state holds nothing format 11 cannot say
//! (the cluster still runs cluster version 1), so that managers of the older build can read
//! the snapshots a newer leader sends them during a rolling upgrade, and a manager taken back
//! to the older build still starts; format 12 once the cluster version rose.
//!
//! Rule for a new release: add fields to [`State`] only at the top level (a changed nested
//! type needs its own frozen copy in the older format's module); bump [`FORMAT_VERSION`],
//! freeze the previous top-level shape in a module like [`v11`], and add one line per new
//! field to its conversions.

mod v11;

use crate::State;

/// Version of the encoded state this build writes once the cluster version allows it.
/// Bump it when a change to the state types changes the archive layout, and teach
/// [`State::decode`] to read the old one.
pub const FORMAT_VERSION: u32 = 12;
/// The oldest version of the encoded state this build reads.
pub const OLDEST_FORMAT_VERSION: u32 = 11;
const MAGIC: &[u8; 4] = b"SHST";
const HEADER: usize = 8;

/// Why bytes could not be turned back into a [`State`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("encoded state is too short ({0} bytes)")]
    TooShort(usize),
    #[error("encoded state does not start with the SHST magic")]
    BadMagic,
    #[error(
        "the state snapshot has format version {found}, written by a newer Shorthorn; this build \
         ({}) reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}",
        env!("CARGO_PKG_VERSION")
    )]
    Newer { found: u32 },
    #[error(
        "the state snapshot has format version {found}, written by a Shorthorn older than this \
         build supports upgrading from; this build ({}) reads versions {OLDEST_FORMAT_VERSION} \
         to {FORMAT_VERSION} (upgrade through an intermediate release, or recreate the data \
         directory)",
        env!("CARGO_PKG_VERSION")
    )]
    Older { found: u32 },
    #[error("encoded state (format version {version}) is corrupt: {reason}")]
    Corrupt { version: u32, reason: String },
}

impl State {
    /// Encodes the state; the same state always gives the same bytes. The format is the
    /// oldest that holds everything the state says (see the module's comment).
    pub fn encode(&self) -> Vec<u8> {
        match v11::StateV11::lossless(self) {
            Some(old) => frame(11, rkyv::to_bytes::<rkyv::rancor::Error>(&old)),
            None => frame(FORMAT_VERSION, rkyv::to_bytes::<rkyv::rancor::Error>(self)),
        }
    }

    /// Encodes the state in [`FORMAT_VERSION`] whatever it holds (for tests and tools).
    pub fn encode_current(&self) -> Vec<u8> {
        frame(FORMAT_VERSION, rkyv::to_bytes::<rkyv::rancor::Error>(self))
    }

    /// Decodes bytes made by [`State::encode`] of this build or of an older one down to
    /// [`OLDEST_FORMAT_VERSION`], checking the header and the archive.
    pub fn decode(bytes: &[u8]) -> Result<State, DecodeError> {
        let found = format_version(bytes)?;
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len() - HEADER);
        aligned.extend_from_slice(&bytes[HEADER..]);
        let corrupt = |err: rkyv::rancor::Error| DecodeError::Corrupt {
            version: found,
            reason: err.to_string(),
        };
        match found {
            FORMAT_VERSION => {
                rkyv::from_bytes::<State, rkyv::rancor::Error>(&aligned).map_err(corrupt)
            }
            11 => rkyv::from_bytes::<v11::StateV11, rkyv::rancor::Error>(&aligned)
                .map(State::from)
                .map_err(corrupt),
            newer if newer > FORMAT_VERSION => Err(DecodeError::Newer { found }),
            _ => Err(DecodeError::Older { found }),
        }
    }
}

/// The format version in the header of an encoded state.
pub fn format_version(bytes: &[u8]) -> Result<u32, DecodeError> {
    if bytes.len() < HEADER {
        return Err(DecodeError::TooShort(bytes.len()));
    }
    if &bytes[..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    Ok(u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]))
}

fn frame(version: u32, body: Result<rkyv::util::AlignedVec, rkyv::rancor::Error>) -> Vec<u8> {
    let body = match body {
        Ok(body) => body,
        // The in-memory serializer fails only when allocation fails, which aborts anyway.
        Err(err) => panic!("encoding the state in memory failed: {err}"),
    };
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CLUSTER_VERSION, ClusterVersion};

    /// The bytes of a format 11 snapshot as commit 8983096's encoder wrote them, and the same
    /// state in JSON (see `state/fixtures/README.md`).
    const V11_BYTES: &[u8] = include_bytes!("../../fixtures/state-v11.bin");
    const V11_JSON: &str = include_str!("../../fixtures/state-v11.json");

    #[test]
    fn empty_state_round_trips() {
        let state = State::default();
        let bytes = state.encode();
        assert_eq!(&bytes[..4], b"SHST");
        assert_eq!(State::decode(&bytes).unwrap(), state);
    }

    #[test]
    fn a_format_11_snapshot_of_the_previous_release_decodes() {
        assert_eq!(format_version(V11_BYTES).unwrap(), 11);
        let decoded = State::decode(V11_BYTES).expect("format 11 decodes");
        let expected: State = serde_json::from_str(V11_JSON).expect("fixture JSON decodes");
        assert_eq!(decoded, expected);
        assert_eq!(decoded.cluster_version, ClusterVersion::FIRST);
        assert_eq!(decoded.volumes.len(), 2);
        assert!(
            decoded.volumes["db"]
                .snapshots
                .contains_key("before-upgrade")
        );
        assert!(decoded.recurring_jobs.contains_key("nightly"));
        // Still at cluster version 1, it is written back in format 11, byte for byte.
        assert_eq!(decoded.encode(), V11_BYTES);
    }

    #[test]
    fn a_raised_cluster_version_is_written_in_format_12() {
        let mut state: State = serde_json::from_str(V11_JSON).unwrap();
        state.cluster_version = CLUSTER_VERSION;
        let bytes = state.encode();
        assert_eq!(format_version(&bytes).unwrap(), FORMAT_VERSION);
        assert_eq!(State::decode(&bytes).unwrap(), state);
        // Format 12 of a cluster-version-1 state reads back the same as its format 11.
        state.cluster_version = ClusterVersion::FIRST;
        assert_eq!(State::decode(&state.encode_current()).unwrap(), state);
    }

    #[test]
    fn bad_headers_are_refused() {
        assert!(matches!(
            State::decode(b"SHS"),
            Err(DecodeError::TooShort(3))
        ));
        assert!(matches!(
            State::decode(b"XXXX\x01\0\0\0"),
            Err(DecodeError::BadMagic)
        ));
        let mut bytes = State::default().encode();
        bytes.truncate(bytes.len() - 3);
        assert!(matches!(
            State::decode(&bytes),
            Err(DecodeError::Corrupt { version: 11, .. })
        ));
    }

    #[test]
    fn newer_and_older_formats_are_refused_naming_both_versions() {
        let version = env!("CARGO_PKG_VERSION");
        let mut bytes = State::default().encode_current();
        bytes[4..8].copy_from_slice(&13u32.to_le_bytes());
        let err = State::decode(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::Newer { found: 13 }));
        assert_eq!(
            err.to_string(),
            format!(
                "the state snapshot has format version 13, written by a newer Shorthorn; \
                 this build ({version}) reads versions 11 to 12"
            )
        );
        bytes[4..8].copy_from_slice(&10u32.to_le_bytes());
        let err = State::decode(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::Older { found: 10 }));
        assert!(
            err.to_string().starts_with(&format!(
                "the state snapshot has format version 10, written by a Shorthorn older than \
                 this build supports upgrading from; this build ({version}) reads versions 11 to 12"
            )),
            "{err}"
        );
    }
}
