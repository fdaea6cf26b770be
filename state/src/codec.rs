//! The encoded form of [`State`]: `b"SHST"`, the format version (u32, little endian), then
//! the rkyv archive of the state. Used for Raft snapshots; a round trip is identical.

use crate::State;

/// Version of the encoded state. Bump it when a change to the state types changes the
/// archive layout, and teach [`State::decode`] to read the old one.
pub const FORMAT_VERSION: u32 = 11;
const MAGIC: &[u8; 4] = b"SHST";
const HEADER: usize = 8;

/// Why bytes could not be turned back into a [`State`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("encoded state is too short ({0} bytes)")]
    TooShort(usize),
    #[error("encoded state does not start with the SHST magic")]
    BadMagic,
    #[error("encoded state has format version {found}; this build reads version {FORMAT_VERSION}")]
    UnknownVersion { found: u32 },
    #[error("encoded state is corrupt: {0}")]
    Corrupt(String),
}

impl State {
    /// Encodes the state; the same state always gives the same bytes.
    pub fn encode(&self) -> Vec<u8> {
        let body = match rkyv::to_bytes::<rkyv::rancor::Error>(self) {
            Ok(body) => body,
            // The in-memory serializer fails only when allocation fails, which aborts anyway.
            Err(err) => panic!("encoding the state in memory failed: {err}"),
        };
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes bytes made by [`State::encode`], checking the header and the archive.
    pub fn decode(bytes: &[u8]) -> Result<State, DecodeError> {
        if bytes.len() < HEADER {
            return Err(DecodeError::TooShort(bytes.len()));
        }
        if &bytes[..4] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let found = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if found != FORMAT_VERSION {
            return Err(DecodeError::UnknownVersion { found });
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len() - HEADER);
        aligned.extend_from_slice(&bytes[HEADER..]);
        rkyv::from_bytes::<State, rkyv::rancor::Error>(&aligned)
            .map_err(|err| DecodeError::Corrupt(err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_state_round_trips() {
        let state = State::default();
        let bytes = state.encode();
        assert_eq!(&bytes[..4], b"SHST");
        assert_eq!(State::decode(&bytes).unwrap(), state);
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
        bytes[4] = 99;
        assert!(matches!(
            State::decode(&bytes),
            Err(DecodeError::UnknownVersion { found: 99 })
        ));
        let mut bytes = State::default().encode();
        bytes.truncate(bytes.len() - 3);
        assert!(matches!(
            State::decode(&bytes),
            Err(DecodeError::Corrupt(_))
        ));
    }
}
