//! The replica's side of the wire protocol (`PROTOCOL.md`): accepts engine connections,
//! fences stale epochs, and executes pipelined requests against the store in arrival
//! order. A malformed frame closes only its connection, with the reason logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use std::pin::Pin;

use tokio::io::{AsyncBufRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};

use super::{Replica, ReplicaError};
use crate::address::{Listener, Stream};
use crate::protocol::{
    FLAG_FUA, FrameError, Hello, MAX_PAYLOAD, Op, REQUEST_HEADER_LEN, ReplyHeader, RequestHeader,
    Status, Welcome,
};
use crate::volume::Epoch;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const BUFFER: usize = 256 << 10;

/// A replica being served: the store, the newest accepted epoch (mirrored for a cheap
/// per-request check) and the token engines must present, if any.
pub struct ReplicaServer {
    replica: Mutex<Replica>,
    newest_epoch: AtomicU64,
    token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("no hello within {HELLO_TIMEOUT:?}")]
    HelloTimeout,
    #[error("epoch {0} was superseded by epoch {1}")]
    Superseded(Epoch, Epoch),
}

impl ReplicaServer {
    pub fn new(replica: Replica, token: Option<String>) -> Arc<Self> {
        let epoch = replica.epoch().0;
        Arc::new(ReplicaServer {
            replica: Mutex::new(replica),
            newest_epoch: AtomicU64::new(epoch),
            token,
        })
    }

    fn store(&self) -> MutexGuard<'_, Replica> {
        // A panic while holding the lock is a bug; the data is still consistent with the
        // files, so keep serving rather than poisoning every later request.
        self.replica.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Accepts connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: Listener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = listener.accept().await?;
            let stream = match stream.detach() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot take over the engine connection");
                    continue;
                }
            };
            let me = self.clone();
            crate::runtime::handle().spawn(async move {
                let served = match Stream::attach(stream) {
                    Ok(stream) => me.connection(stream).await,
                    Err(e) => Err(ConnError::Io(e)),
                };
                match served {
                    Ok(()) => tracing::debug!(%peer, "engine connection closed"),
                    Err(e) => tracing::warn!(%peer, reason = %e, "closing engine connection"),
                }
            });
        }
    }

    async fn connection(self: Arc<Self>, stream: Stream) -> Result<(), ConnError> {
        let (r, w) = stream.into_split();
        let mut r = BufReader::with_capacity(BUFFER, r);
        let mut w = BufWriter::with_capacity(BUFFER, w);
        let hello = tokio::time::timeout(HELLO_TIMEOUT, Hello::decode(&mut r))
            .await
            .map_err(|_| ConnError::HelloTimeout)??;
        let (welcome, accepted) = self.welcome(&hello);
        w.write_all(&welcome.encode()).await?;
        w.flush().await?;
        if !accepted {
            tracing::warn!(volume = %hello.volume, epoch = %hello.epoch, reason = %welcome.message, "refused engine");
            return Ok(());
        }
        tracing::info!(volume = %hello.volume, epoch = %hello.epoch, "accepted engine");
        let epoch = hello.epoch;
        let mut payload = Vec::new();
        let mut out = Vec::new();
        loop {
            let mut hb = [0u8; REQUEST_HEADER_LEN];
            match r.read_exact(&mut hb).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            let h = RequestHeader::decode(&hb)?;
            let len = h.payload_len as usize;
            // A payload already in the read buffer is used where it lies (no copy); a
            // larger one is read into the connection's payload buffer.
            let buffered = r.buffer().len() >= len;
            if !buffered {
                r.read_exact(grow(&mut payload, len)).await?;
            }
            let body = if buffered {
                &r.buffer()[..len]
            } else {
                &payload[..len]
            };
            let newest = Epoch(self.newest_epoch.load(Ordering::Acquire));
            if newest > epoch {
                let reply = ReplyHeader {
                    status: Status::StaleEpoch,
                    id: h.id,
                    payload_len: 0,
                };
                w.write_all(&reply.encode()).await?;
                w.flush().await?;
                return Err(ConnError::Superseded(epoch, newest));
            }
            let (status, out_len) = match self.execute(&h, body, &mut out).await {
                Ok(n) => (Status::Ok, n),
                Err(e) => {
                    if e.status() == Status::Io {
                        tracing::error!(op = ?h.op, offset = h.offset, error = %e, "replica I/O failed");
                    }
                    (e.status(), 0)
                }
            };
            let reply = ReplyHeader {
                status,
                id: h.id,
                payload_len: out_len as u32,
            };
            if buffered {
                Pin::new(&mut r).consume(len);
            }
            w.write_all(&reply.encode()).await?;
            w.write_all(&out[..out_len]).await?;
            if r.buffer().is_empty() {
                w.flush().await?;
            }
        }
    }

    fn welcome(&self, hello: &Hello) -> (Welcome, bool) {
        let mut store = self.store();
        let size = store.size();
        let refuse = |status, message: String, newest| {
            (
                Welcome {
                    status,
                    newest_epoch: newest,
                    size,
                    message,
                },
                false,
            )
        };
        if let Some(token) = &self.token
            && *token != hello.token
        {
            return refuse(Status::Invalid, "bad token".into(), store.epoch());
        }
        match store.accept_epoch(&hello.volume, hello.epoch) {
            Ok(()) => {
                self.newest_epoch.fetch_max(hello.epoch.0, Ordering::AcqRel);
                (
                    Welcome {
                        status: Status::Ok,
                        newest_epoch: store.epoch(),
                        size,
                        message: String::new(),
                    },
                    true,
                )
            }
            Err(e) => refuse(e.status(), e.to_string(), store.epoch()),
        }
    }

    /// Runs one request; the reply payload is the first returned-length bytes of `out`.
    async fn execute(
        &self,
        h: &RequestHeader,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, ReplicaError> {
        if h.op == Op::Read {
            if h.length > MAX_PAYLOAD {
                return Err(ReplicaError::OutOfRange {
                    offset: h.offset,
                    length: h.length as u64,
                    size: 0,
                });
            }
            let buf = grow(out, h.length as usize);
            self.store().read(h.offset, buf)?;
            return Ok(buf.len());
        }
        out.clear();
        self.execute_other(h, payload, out).await?;
        Ok(out.len())
    }

    async fn execute_other(
        &self,
        h: &RequestHeader,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ReplicaError> {
        match h.op {
            Op::Read => Ok(()),
            Op::Write => {
                self.store().write(h.offset, payload)?;
                if h.flags & FLAG_FUA != 0 {
                    self.flush().await?;
                }
                Ok(())
            }
            Op::Trim | Op::WriteZeroes => {
                self.store().zero(h.offset, h.length as u64)?;
                if h.flags & FLAG_FUA != 0 {
                    self.flush().await?;
                }
                Ok(())
            }
            Op::Flush => self.flush().await,
            Op::Ping => Ok(()),
            Op::Info => json(out, &self.store().info()),
            Op::SnapshotList => json(out, &self.store().snapshots()),
            Op::SnapshotCreate => self.store().snapshot_create(&text(payload)?),
            Op::SnapshotDelete => self.store().snapshot_delete(&text(payload)?),
            Op::SnapshotRevert => self.store().snapshot_revert(&text(payload)?),
            Op::Expand => self.store().expand(h.offset),
            Op::SetRevision => self.store().set_revision(h.offset),
            Op::ChunkHashes => {
                if payload.len() != 4 || h.length as usize * 32 > MAX_PAYLOAD as usize {
                    return Err(ReplicaError::Unaligned(0));
                }
                let chunk = crate::protocol::be32(payload) as u64;
                let hashes = self
                    .store()
                    .chunk_hashes(h.offset, h.length as u64, chunk)?;
                out.extend_from_slice(&hashes);
                Ok(())
            }
        }
    }

    /// Fsyncs the head outside the store lock, so reads and writes go on meanwhile.
    async fn flush(&self) -> Result<(), ReplicaError> {
        let (file, revision) = self.store().flush_target();
        let dir = self.store().dir().to_owned();
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|e| ReplicaError::Io {
                path: dir.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| ReplicaError::Io { path: dir, source })?;
        self.store().persist_revision(revision)
    }
}

/// The first `n` bytes of `buf`, growing it (zeroed, never shrinking) when it is shorter;
/// the block path reuses one buffer per connection instead of allocating per request.
fn grow(buf: &mut Vec<u8>, n: usize) -> &mut [u8] {
    if buf.len() < n {
        *buf = vec![0u8; n];
    }
    &mut buf[..n]
}

fn text(payload: &[u8]) -> Result<String, ReplicaError> {
    String::from_utf8(payload.to_vec())
        .map_err(|_| ReplicaError::BadSnapshotName(String::from_utf8_lossy(payload).into_owned()))
}

fn json<T: serde::Serialize>(out: &mut Vec<u8>, value: &T) -> Result<(), ReplicaError> {
    serde_json::to_writer(out, value).map_err(|e| ReplicaError::Io {
        path: ".".into(),
        source: std::io::Error::other(e),
    })
}
