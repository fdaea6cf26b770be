//! The engine <-> replica wire protocol: the handshake and the request and reply frames,
//! as laid out in `PROTOCOL.md`. This module only encodes and decodes; it never touches a
//! replica's data, and a frame it cannot decode is an error, never a panic.

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::volume::Epoch;

/// First bytes of the engine's hello.
pub const HELLO_MAGIC: &[u8; 8] = b"SHRNHELO";
/// First bytes of the replica's answer to a hello.
pub const WELCOME_MAGIC: &[u8; 8] = b"SHRNWELC";
/// The protocol version this build speaks.
pub const VERSION: u16 = 1;
/// Magic of every request header ("SHRQ").
pub const REQUEST_MAGIC: u32 = 0x5348_5251;
/// Magic of every reply header ("SHRP").
pub const REPLY_MAGIC: u32 = 0x5348_5250;
/// Request header length in bytes.
pub const REQUEST_HEADER_LEN: usize = 32;
/// Reply header length in bytes.
pub const REPLY_HEADER_LEN: usize = 24;
/// Largest payload either side accepts; anything larger is a malformed frame.
pub const MAX_PAYLOAD: u32 = 64 << 20;
/// Largest volume name or token in a hello.
pub const MAX_HELLO_FIELD: u16 = 1024;

/// Request flag: the write (or write-zeroes) must be durable before the reply.
pub const FLAG_FUA: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Read = 1,
    Write = 2,
    Flush = 3,
    Trim = 4,
    WriteZeroes = 5,
    Ping = 6,
    Info = 7,
    SnapshotCreate = 8,
    SnapshotList = 9,
    SnapshotDelete = 10,
    SnapshotRevert = 11,
    ChunkHashes = 12,
    Expand = 13,
    SetRevision = 14,
    /// Read as of a snapshot (payload: its name): for rebuilding the layer chain.
    ReadSnapshot = 15,
    /// Chunks changed between two snapshots (payload: chunk size, from, to).
    ChangedChunks = 16,
}

impl Op {
    pub fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Read,
            2 => Op::Write,
            3 => Op::Flush,
            4 => Op::Trim,
            5 => Op::WriteZeroes,
            6 => Op::Ping,
            7 => Op::Info,
            8 => Op::SnapshotCreate,
            9 => Op::SnapshotList,
            10 => Op::SnapshotDelete,
            11 => Op::SnapshotRevert,
            12 => Op::ChunkHashes,
            13 => Op::Expand,
            14 => Op::SetRevision,
            15 => Op::ReadSnapshot,
            16 => Op::ChangedChunks,
            _ => return None,
        })
    }
}

/// The outcome of a request or a hello, as carried in a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    /// The replica's disk failed the operation.
    Io = 1,
    /// Offset or length reaches past the end of the volume.
    OutOfRange = 2,
    /// The connection's epoch is older than the newest the replica has accepted.
    StaleEpoch = 3,
    /// Arguments the replica cannot act on (bad name, bad size, wrong volume, bad token).
    Invalid = 4,
    /// A named snapshot does not exist.
    NotFound = 5,
    /// A named snapshot already exists.
    Exists = 6,
}

impl Status {
    pub fn from_u32(v: u32) -> Status {
        match v {
            0 => Status::Ok,
            2 => Status::OutOfRange,
            3 => Status::StaleEpoch,
            4 => Status::Invalid,
            5 => Status::NotFound,
            6 => Status::Exists,
            _ => Status::Io,
        }
    }
}

/// Hello flag: the connection only reads snapshots (`PROTOCOL.md`, read-only connections).
pub const HELLO_READ_ONLY: u16 = 1;

/// What the engine says first on every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub epoch: Epoch,
    pub volume: String,
    pub token: String,
    /// A read-only connection: it reads snapshot layers only, is neither fenced nor
    /// recorded by epoch, and every other request on it is refused.
    pub read_only: bool,
}

/// What the replica answers to a hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub status: Status,
    /// The newest epoch the replica has accepted (after this hello, if it was accepted).
    pub newest_epoch: Epoch,
    /// The volume size in bytes.
    pub size: u64,
    /// Why the hello was refused, empty when accepted.
    pub message: String,
}

/// A decoded request header; the payload follows it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub op: Op,
    pub flags: u8,
    pub id: u64,
    pub offset: u64,
    pub length: u32,
    pub payload_len: u32,
}

/// A decoded reply header; the payload follows it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyHeader {
    pub status: Status,
    pub id: u64,
    pub payload_len: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    #[error("unknown op {0}")]
    UnknownOp(u8),
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    PayloadTooLarge(u32),
    #[error("protocol version {0} is not {VERSION}")]
    BadVersion(u16),
    #[error("hello field of {0} bytes exceeds the {MAX_HELLO_FIELD}-byte limit")]
    FieldTooLong(u16),
    #[error("text field is not UTF-8")]
    NotUtf8,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(24 + self.volume.len() + self.token.len());
        b.extend_from_slice(HELLO_MAGIC);
        b.extend_from_slice(&VERSION.to_be_bytes());
        b.extend_from_slice(&(self.volume.len() as u16).to_be_bytes());
        b.extend_from_slice(&(self.token.len() as u16).to_be_bytes());
        let flags = if self.read_only { HELLO_READ_ONLY } else { 0 };
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&self.epoch.0.to_be_bytes());
        b.extend_from_slice(self.volume.as_bytes());
        b.extend_from_slice(self.token.as_bytes());
        b
    }

    pub async fn decode<R: AsyncRead + Unpin>(r: &mut R) -> Result<Hello, FrameError> {
        let mut h = [0u8; 24];
        r.read_exact(&mut h).await?;
        if &h[0..8] != HELLO_MAGIC {
            return Err(FrameError::BadMagic(be64(&h[0..8])));
        }
        let version = be16(&h[8..10]);
        if version != VERSION {
            return Err(FrameError::BadVersion(version));
        }
        let volume_len = be16(&h[10..12]);
        let token_len = be16(&h[12..14]);
        let flags = be16(&h[14..16]);
        let epoch = Epoch(be64(&h[16..24]));
        let volume = read_text(r, volume_len).await?;
        let token = read_text(r, token_len).await?;
        Ok(Hello {
            epoch,
            volume,
            token,
            read_only: flags & HELLO_READ_ONLY != 0,
        })
    }
}

impl Welcome {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(32 + self.message.len());
        b.extend_from_slice(WELCOME_MAGIC);
        b.extend_from_slice(&(self.status as u32).to_be_bytes());
        let msg = truncate(&self.message, MAX_HELLO_FIELD as usize);
        b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        b.extend_from_slice(&self.newest_epoch.0.to_be_bytes());
        b.extend_from_slice(&self.size.to_be_bytes());
        b.extend_from_slice(msg.as_bytes());
        b
    }

    pub async fn decode<R: AsyncRead + Unpin>(r: &mut R) -> Result<Welcome, FrameError> {
        let mut h = [0u8; 32];
        r.read_exact(&mut h).await?;
        if &h[0..8] != WELCOME_MAGIC {
            return Err(FrameError::BadMagic(be64(&h[0..8])));
        }
        let status = Status::from_u32(be32(&h[8..12]));
        let msg_len = be32(&h[12..16]);
        if msg_len > MAX_HELLO_FIELD as u32 {
            return Err(FrameError::FieldTooLong(MAX_HELLO_FIELD));
        }
        let newest_epoch = Epoch(be64(&h[16..24]));
        let size = be64(&h[24..32]);
        let message = read_text(r, msg_len as u16).await?;
        Ok(Welcome {
            status,
            newest_epoch,
            size,
            message,
        })
    }
}

impl RequestHeader {
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut b = [0u8; REQUEST_HEADER_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4] = self.op as u8;
        b[5] = self.flags;
        b[8..16].copy_from_slice(&self.id.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b[28..32].copy_from_slice(&self.payload_len.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; REQUEST_HEADER_LEN]) -> Result<RequestHeader, FrameError> {
        let magic = be32(&b[0..4]);
        if magic != REQUEST_MAGIC {
            return Err(FrameError::BadMagic(magic as u64));
        }
        let op = Op::from_u8(b[4]).ok_or(FrameError::UnknownOp(b[4]))?;
        let payload_len = be32(&b[28..32]);
        if payload_len > MAX_PAYLOAD {
            return Err(FrameError::PayloadTooLarge(payload_len));
        }
        Ok(RequestHeader {
            op,
            flags: b[5],
            id: be64(&b[8..16]),
            offset: be64(&b[16..24]),
            length: be32(&b[24..28]),
            payload_len,
        })
    }
}

impl ReplyHeader {
    pub fn encode(&self) -> [u8; REPLY_HEADER_LEN] {
        let mut b = [0u8; REPLY_HEADER_LEN];
        b[0..4].copy_from_slice(&REPLY_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&(self.status as u32).to_be_bytes());
        b[8..16].copy_from_slice(&self.id.to_be_bytes());
        b[16..20].copy_from_slice(&self.payload_len.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; REPLY_HEADER_LEN]) -> Result<ReplyHeader, FrameError> {
        let magic = be32(&b[0..4]);
        if magic != REPLY_MAGIC {
            return Err(FrameError::BadMagic(magic as u64));
        }
        let payload_len = be32(&b[16..20]);
        if payload_len > MAX_PAYLOAD {
            return Err(FrameError::PayloadTooLarge(payload_len));
        }
        Ok(ReplyHeader {
            status: Status::from_u32(be32(&b[4..8])),
            id: be64(&b[8..16]),
            payload_len,
        })
    }
}

async fn read_text<R: AsyncRead + Unpin>(r: &mut R, len: u16) -> Result<String, FrameError> {
    if len > MAX_HELLO_FIELD {
        return Err(FrameError::FieldTooLong(len));
    }
    let mut v = vec![0u8; len as usize];
    r.read_exact(&mut v).await?;
    String::from_utf8(v).map_err(|_| FrameError::NotUtf8)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn be16(b: &[u8]) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[..2]);
    u16::from_be_bytes(a)
}

pub(crate) fn be32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

pub(crate) fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_round_trips() {
        let h = RequestHeader {
            op: Op::Write,
            flags: FLAG_FUA,
            id: 7,
            offset: 4096,
            length: 512,
            payload_len: 512,
        };
        assert_eq!(RequestHeader::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut b = RequestHeader {
            op: Op::Read,
            flags: 0,
            id: 1,
            offset: 0,
            length: 1,
            payload_len: 0,
        }
        .encode();
        b[4] = 99;
        assert!(matches!(
            RequestHeader::decode(&b),
            Err(FrameError::UnknownOp(99))
        ));
        b[0] = 0;
        assert!(matches!(
            RequestHeader::decode(&b),
            Err(FrameError::BadMagic(_))
        ));
        let mut b = RequestHeader {
            op: Op::Write,
            flags: 0,
            id: 1,
            offset: 0,
            length: 1,
            payload_len: MAX_PAYLOAD + 1,
        }
        .encode();
        assert!(RequestHeader::decode(&b).is_err());
        b[28..32].copy_from_slice(&1u32.to_be_bytes());
        assert!(RequestHeader::decode(&b).is_ok());
    }

    #[tokio::test]
    async fn hello_round_trips() {
        for read_only in [false, true] {
            let h = Hello {
                epoch: Epoch(3),
                volume: "db".into(),
                token: "t".into(),
                read_only,
            };
            let bytes = h.encode();
            assert_eq!(Hello::decode(&mut bytes.as_slice()).await.unwrap(), h);
        }
        let w = Welcome {
            status: Status::StaleEpoch,
            newest_epoch: Epoch(4),
            size: 8192,
            message: "old".into(),
        };
        let bytes = w.encode();
        assert_eq!(Welcome::decode(&mut bytes.as_slice()).await.unwrap(), w);
    }
}
