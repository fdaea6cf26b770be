//! The replica's side of the wire protocol (`PROTOCOL.md`): accepts engine connections,
//! fences stale epochs, and executes pipelined requests against the store in arrival
//! order. A malformed frame closes only its connection, with the reason logged.
//!
//! A flush (or a FUA write) does not hold up the requests behind it: its fsync runs on the
//! blocking pool while the connection goes on, and its reply is sent when the fsync is
//! done; a flush with nothing behind it (queue depth 1) fsyncs on the data path thread.
//! Flushes that arrive while an fsync is running share the next one (group commit).
//! A connection that has written `SYNC_WINDOW` bytes while an fsync runs waits for it,
//! so a steady stream of writes cannot keep growing the dirty data every flush must write.
//!
//! A read the page cache holds is answered at once; one that must wait for the disk runs
//! on a reader thread (`reader`) and is answered when it is done, while the requests
//! behind it go on, so the disk sees the client's queue depth.

use std::fs::File;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::oneshot;

use super::{Replica, ReplicaError, reader};
use crate::address::{Listener, Stream};
use crate::protocol::{
    FLAG_FUA, FrameError, Hello, MAX_PAYLOAD, Op, REQUEST_HEADER_LEN, ReplyHeader, RequestHeader,
    Status, Welcome,
};
use crate::volume::Epoch;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const BUFFER: usize = 256 << 10;
/// Bytes a connection writes while one of its fsyncs is running before it waits for it.
const SYNC_WINDOW: u64 = 4 << 20;
/// Bytes of reads a connection has waiting for the disk before it takes no more requests:
/// each holds its own buffer until answered, and the replica must stay within 24 MiB.
const READ_WINDOW: u64 = 4 << 20;

/// A replica being served: the store, the newest accepted epoch (mirrored for a cheap
/// per-request check) and the token engines must present, if any.
pub struct ReplicaServer {
    replica: Mutex<Replica>,
    newest_epoch: AtomicU64,
    token: Option<String>,
    syncs: Mutex<SyncQueue>,
    /// The replica's directory, named in the errors of deferred requests.
    dir: std::path::PathBuf,
}

/// Flushes waiting for an fsync of the head. `running` is true while a blocking task
/// works through the queue; a flush queued meanwhile is served by its next fsync.
#[derive(Default)]
struct SyncQueue {
    running: bool,
    waiting: Vec<SyncWaiter>,
}

/// One flush: the head it must make durable (the head when it arrived), the revision to
/// record once it is, and where to say so.
struct SyncWaiter {
    file: Arc<File>,
    revision: u64,
    done: oneshot::Sender<Result<(), String>>,
}

/// Whether a connection takes no more requests until deferred replies are done: it wrote
/// more than `SYNC_WINDOW` while fsyncs are awaited, or more than `READ_WINDOW` of its
/// reads wait for the disk.
fn throttled(syncs: usize, written_during_sync: u64, reading: u64) -> bool {
    (syncs > 0 && written_during_sync > SYNC_WINDOW) || reading > READ_WINDOW
}

/// A reply that waits for an fsync or for a read from the disk.
type Deferred = Pin<Box<dyn Future<Output = Done> + Send>>;

/// A deferred request done: its id, whether it waited for an fsync, and its outcome (the
/// reply payload: the data of a read, empty after an fsync).
struct Done {
    id: u64,
    sync: bool,
    /// The length of a read (its buffer), 0 after an fsync.
    read: u64,
    result: Result<Vec<u8>, ReplicaError>,
}

impl Done {
    /// The reply's status and payload; a failure is logged.
    fn reply(&self) -> (Status, &[u8]) {
        match &self.result {
            Ok(payload) => (Status::Ok, payload),
            Err(e) => {
                let what = if self.sync { "fsync" } else { "read" };
                tracing::error!(error = %e, "replica {what} failed");
                (e.status(), &[])
            }
        }
    }
}

/// What executing a request gave: a reply now (payload in `out`), or one later (after an
/// fsync, or a read that waited for the disk).
enum Outcome {
    Now(Result<usize, ReplicaError>),
    Later(Deferred),
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
        let dir = replica.dir().to_owned();
        Arc::new(ReplicaServer {
            dir,
            replica: Mutex::new(replica),
            newest_epoch: AtomicU64::new(epoch),
            token,
            syncs: Mutex::new(SyncQueue::default()),
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
        let (mut r, w) = stream.into_split();
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
        tracing::info!(volume = %hello.volume, epoch = %hello.epoch, read_only = hello.read_only, "accepted engine");
        let epoch = hello.epoch;
        let read_only = hello.read_only;
        // Requests are parsed from `input` where they were read (a payload is written to
        // the layer from there, never copied); replies go out once per batch of requests.
        let mut input = BytesMut::with_capacity(BUFFER);
        let mut out = Vec::new();
        let mut deferred: FuturesUnordered<Deferred> = FuturesUnordered::new();
        // Fsyncs awaited, and the bytes written since the oldest of them was queued; past
        // SYNC_WINDOW the connection stops taking requests until they are done, so the
        // writes they overlap never grow the next fsync without bound.
        let mut syncs = 0usize;
        let mut written_during_sync = 0u64;
        // Bytes of reads waiting for the disk; past READ_WINDOW the connection waits too.
        let mut reading = 0u64;
        loop {
            let mut replied = false;
            loop {
                if throttled(syncs, written_during_sync, reading)
                    || input.len() < REQUEST_HEADER_LEN
                {
                    break;
                }
                let mut hb = [0u8; REQUEST_HEADER_LEN];
                hb.copy_from_slice(&input[..REQUEST_HEADER_LEN]);
                let h = RequestHeader::decode(&hb)?;
                let frame = REQUEST_HEADER_LEN + h.payload_len as usize;
                if input.len() < frame {
                    input.reserve(frame - input.len());
                    break;
                }
                let newest = Epoch(self.newest_epoch.load(Ordering::Acquire));
                if newest > epoch && !read_only {
                    reply(&mut w, Status::StaleEpoch, h.id, &[]).await?;
                    w.flush().await?;
                    return Err(ConnError::Superseded(epoch, newest));
                }
                let body = &input[REQUEST_HEADER_LEN..frame];
                let executed = if read_only && !reads_snapshots_only(h.op) {
                    Outcome::Now(Err(ReplicaError::ReadOnly(h.op)))
                } else {
                    // Alone: nothing else of this connection is waiting to be executed
                    // or answered, so a flush may fsync right here (see `sync`).
                    let alone = input.len() == frame && deferred.is_empty();
                    self.execute(&h, body, alone, &mut out)
                };
                match executed {
                    Outcome::Now(result) => {
                        let (status, len) = outcome(&h, result);
                        reply(&mut w, status, h.id, &out[..len]).await?;
                        replied = true;
                    }
                    Outcome::Later(d) => {
                        if matches!(h.op, Op::Read | Op::ReadSnapshot) {
                            reading += h.length as u64;
                        } else {
                            syncs += 1;
                        }
                        deferred.push(d);
                    }
                }
                if syncs > 0 && matches!(h.op, Op::Write | Op::WriteZeroes) {
                    written_during_sync += h.length.max(h.payload_len) as u64;
                }
                input.advance(frame);
            }
            if replied {
                w.flush().await?;
            }
            if input.capacity() - input.len() < 4096 {
                input.reserve(BUFFER);
            }
            tokio::select! {
                biased;
                Some(done) = deferred.next(), if !deferred.is_empty() => {
                    // Every other deferred reply ready now goes out in the same write.
                    let mut next = Some(done);
                    while let Some(done) = next {
                        let (status, payload) = done.reply();
                        reply(&mut w, status, done.id, payload).await?;
                        syncs -= usize::from(done.sync);
                        reading -= done.read;
                        next = futures::FutureExt::now_or_never(deferred.next()).flatten();
                    }
                    w.flush().await?;
                    if syncs == 0 {
                        written_during_sync = 0;
                    }
                }
                read = r.read_buf(&mut input), if !throttled(syncs, written_during_sync, reading) => {
                    if read? == 0 {
                        if input.is_empty() {
                            return Ok(());
                        }
                        return Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                }
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
        let accepted = if hello.read_only {
            // Reads of snapshot layers, which no engine changes under them: no epoch is
            // taken or checked.
            store.check_volume(&hello.volume)
        } else {
            store.accept_epoch(&hello.volume, hello.epoch)
        };
        match accepted {
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

    /// Runs one request. A reply now carries the first returned-length bytes of `out`; a
    /// flush, or a FUA write once written, replies after its fsync.
    fn execute(
        self: &Arc<Self>,
        h: &RequestHeader,
        payload: &[u8],
        alone: bool,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let fua = h.flags & FLAG_FUA != 0;
        let written = match h.op {
            Op::Read | Op::ReadSnapshot => return self.read(h, payload, out),
            Op::Write => self.store().write(h.offset, payload),
            Op::Trim | Op::WriteZeroes => self.store().zero(h.offset, h.length as u64),
            Op::Flush => Ok(()),
            _ => return Outcome::Now(self.execute_other(h, payload, out)),
        };
        match written {
            Ok(()) if fua || h.op == Op::Flush => Outcome::Later(self.sync(h.id, alone)),
            Ok(()) => Outcome::Now(Ok(0)),
            Err(e) => Outcome::Now(Err(e)),
        }
    }

    fn execute_other(
        &self,
        h: &RequestHeader,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, ReplicaError> {
        out.clear();
        match h.op {
            Op::Read
            | Op::ReadSnapshot
            | Op::Write
            | Op::Trim
            | Op::WriteZeroes
            | Op::Flush
            | Op::Ping => {}
            Op::Info => json(out, &self.store().info())?,
            Op::SnapshotList => json(out, &self.store().snapshots())?,
            Op::SnapshotCreate => self.store().snapshot_create(&text(payload)?)?,
            Op::SnapshotDelete => self.store().snapshot_delete(&text(payload)?)?,
            Op::SnapshotRevert => self.store().snapshot_revert(&text(payload)?)?,
            Op::Expand => self.store().expand(h.offset)?,
            Op::SetRevision => self.store().set_revision(h.offset)?,
            Op::ChunkHashes => {
                if payload.len() < 4 || h.length as usize * 32 > MAX_PAYLOAD as usize {
                    return Err(ReplicaError::Unaligned(0));
                }
                let chunk = crate::protocol::be32(payload) as u64;
                // A snapshot name after the chunk size: hashes as of that snapshot.
                let at = match &payload[4..] {
                    [] => None,
                    name => Some(text(name)?),
                };
                let hashes =
                    self.store()
                        .chunk_hashes(h.offset, h.length as u64, chunk, at.as_deref())?;
                out.extend_from_slice(&hashes);
            }
            Op::ChangedChunks => {
                // 4-byte chunk size, then `from` and `to` names separated by a 0 byte
                // (`from` empty: every layer up to `to`).
                let names = payload.get(4..).ok_or(ReplicaError::Unaligned(0))?;
                let chunk = crate::protocol::be32(payload) as u64;
                let sep = names.iter().position(|&b| b == 0).ok_or_else(|| {
                    ReplicaError::BadSnapshotName(text(names).unwrap_or_default())
                })?;
                let from = match &names[..sep] {
                    [] => None,
                    name => Some(text(name)?),
                };
                let to = text(&names[sep + 1..])?;
                let bits = self.store().changed_chunks(chunk, from.as_deref(), &to)?;
                out.extend_from_slice(&bits);
            }
        }
        Ok(out.len())
    }

    /// Runs a read (of the head's chain, or of a snapshot named in the payload): at once
    /// into `out` when the page cache holds every byte, else on a reader thread.
    fn read(&self, h: &RequestHeader, payload: &[u8], out: &mut Vec<u8>) -> Outcome {
        if h.length > MAX_PAYLOAD {
            return Outcome::Now(Err(ReplicaError::OutOfRange {
                offset: h.offset,
                length: h.length as u64,
                size: 0,
            }));
        }
        let at = match h.op {
            Op::ReadSnapshot => match text(payload) {
                Ok(name) => Some(name),
                Err(e) => return Outcome::Now(Err(e)),
            },
            _ => None,
        };
        let (offset, len) = (h.offset, h.length as usize);
        let plan = match self.store().read_plan(at.as_deref(), offset, len) {
            Ok(plan) => plan,
            Err(e) => return Outcome::Now(Err(e)),
        };
        let io_err = |dir: &std::path::Path, source| ReplicaError::Io {
            path: dir.to_owned(),
            source,
        };
        match plan.read(offset, grow(out, len), true) {
            Ok(true) => return Outcome::Now(Ok(len)),
            Ok(false) => {}
            Err(e) => return Outcome::Now(Err(io_err(&self.dir, e))),
        }
        // The buffer is allocated (and later freed) on this thread: a reader thread that
        // allocated would get an allocator arena of its own, megabytes of RSS each.
        let mut buf = vec![0u8; len];
        let (tx, rx) = oneshot::channel();
        reader::spawn(move || {
            let _ = tx.send(plan.read(offset, &mut buf, false).map(|_| buf));
        });
        let (id, dir) = (h.id, self.dir.clone());
        Outcome::Later(Box::pin(async move {
            let result = match rx.await {
                Ok(Ok(data)) => Ok(data),
                Ok(Err(e)) => Err(io_err(&dir, e)),
                Err(_) => Err(io_err(&dir, std::io::Error::other("the reader stopped"))),
            };
            Done {
                id,
                sync: false,
                read: len as u64,
                result,
            }
        }))
    }

    /// Queues an fsync of the head as it is now (every write executed so far is in it)
    /// and returns the reply to send once it is durable. The fsync runs outside the store
    /// lock and the connection, so reads and writes go on meanwhile; except when the
    /// request is `alone` (its connection has nothing else to execute or answer) and no
    /// fsync is running: then it runs here, saving the two thread hand-offs that cost more
    /// than the fsync at queue depth 1 (a write+flush loop).
    fn sync(self: &Arc<Self>, id: u64, alone: bool) -> Deferred {
        let (file, revision) = self.store().flush_target();
        let (done, rx) = oneshot::channel();
        let start = {
            let mut q = self.syncs.lock().unwrap_or_else(|p| p.into_inner());
            q.waiting.push(SyncWaiter {
                file,
                revision,
                done,
            });
            !std::mem::replace(&mut q.running, true)
        };
        if start && alone {
            self.run_syncs();
        } else if start {
            let me = self.clone();
            tokio::task::spawn_blocking(move || me.run_syncs());
        }
        let dir = self.dir.clone();
        Box::pin(async move {
            let result = match rx.await {
                Ok(Ok(())) => Ok(Vec::new()),
                Ok(Err(reason)) => Err(reason),
                Err(_) => Err("the fsync task stopped".to_owned()),
            };
            let result = result.map_err(|reason| ReplicaError::Io {
                path: dir,
                source: std::io::Error::other(reason),
            });
            Done {
                id,
                sync: true,
                read: 0,
                result,
            }
        })
    }

    /// Serves the sync queue until it is empty: each round takes every flush waiting,
    /// fsyncs each head they name once, records the newest revision, and answers them.
    fn run_syncs(&self) {
        loop {
            let batch = {
                let mut q = self.syncs.lock().unwrap_or_else(|p| p.into_inner());
                if q.waiting.is_empty() {
                    q.running = false;
                    return;
                }
                std::mem::take(&mut q.waiting)
            };
            let mut synced: Vec<(Arc<File>, Result<(), String>)> = Vec::new();
            for w in &batch {
                if !synced.iter().any(|(f, _)| Arc::ptr_eq(f, &w.file)) {
                    let r = w.file.sync_data().map_err(|e| e.to_string());
                    synced.push((w.file.clone(), r));
                }
            }
            let revision = batch.iter().map(|w| w.revision).max().unwrap_or(0);
            let recorded = self
                .store()
                .persist_revision(revision)
                .map_err(|e| e.to_string());
            for w in batch {
                let result = synced
                    .iter()
                    .find(|(f, _)| Arc::ptr_eq(f, &w.file))
                    .map(|(_, r)| r.clone())
                    .unwrap_or(Ok(()))
                    .and(recorded.clone());
                let _ = w.done.send(result);
            }
        }
    }
}

/// Whether `op` may run on a read-only connection: it reads snapshot layers (or the
/// replica's description) and changes nothing.
fn reads_snapshots_only(op: Op) -> bool {
    matches!(
        op,
        Op::ReadSnapshot | Op::ChangedChunks | Op::SnapshotList | Op::Info | Op::Ping
    )
}

/// The status and reply payload length of a request executed now.
fn outcome(h: &RequestHeader, result: Result<usize, ReplicaError>) -> (Status, usize) {
    match result {
        Ok(len) => (Status::Ok, len),
        Err(e) => {
            if e.status() == Status::Io {
                tracing::error!(op = ?h.op, offset = h.offset, error = %e, "replica I/O failed");
            }
            (e.status(), 0)
        }
    }
}

/// Queues one reply frame on `w`.
async fn reply<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    status: Status,
    id: u64,
    payload: &[u8],
) -> std::io::Result<()> {
    let header = ReplyHeader {
        status,
        id,
        payload_len: payload.len() as u32,
    };
    w.write_all(&header.encode()).await?;
    w.write_all(payload).await
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::address::Address;
    use crate::engine::link::{LinkError, ReplicaLink};

    /// A read-only connection reads a snapshot as of when it was taken, is refused every
    /// change, takes no epoch, and is not cut off when an engine of a newer epoch connects.
    #[tokio::test]
    async fn a_read_only_connection_reads_snapshots_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let replica = Replica::open(&dir.path().join("r"), Some(1 << 20)).unwrap();
        let addr = Address::Unix(dir.path().join("r.sock"));
        let listener = Listener::bind(&addr).await.unwrap();
        tokio::spawn(ReplicaServer::new(replica, None).serve(listener));
        let engine = ReplicaLink::connect(&addr, "v", Epoch(2), "")
            .await
            .unwrap();
        let write = |byte: u8| engine.call(Op::Write, 0, 0, 4096, Bytes::from(vec![byte; 4096]));
        assert_eq!(write(1).await.unwrap().status, Status::Ok);
        let snap = Bytes::from_static(b"s1");
        let taken = engine.call(Op::SnapshotCreate, 0, 0, 0, snap.clone());
        assert_eq!(taken.await.unwrap().status, Status::Ok);
        assert_eq!(write(2).await.unwrap().status, Status::Ok);

        let reader = ReplicaLink::connect_read_only(&addr, "v", "")
            .await
            .unwrap();
        let read = reader
            .call(Op::ReadSnapshot, 0, 0, 4096, snap.clone())
            .await
            .unwrap();
        assert_eq!((read.status, read.payload), (Status::Ok, vec![1u8; 4096]));
        for op in [
            Op::Write,
            Op::Read,
            Op::SnapshotDelete,
            Op::Trim,
            Op::Expand,
        ] {
            let refused = reader.call(op, 0, 0, 4096, Bytes::from(vec![9u8; 4096]));
            assert_eq!(refused.await.unwrap().status, Status::Invalid, "{op:?}");
        }
        let wrong = ReplicaLink::connect_read_only(&addr, "other", "").await;
        assert!(
            matches!(wrong, Err(LinkError::Refused { .. })),
            "another volume's"
        );

        // An engine of a newer epoch fences the old engine, not the reader.
        let newer = ReplicaLink::connect(&addr, "v", Epoch(3), "")
            .await
            .unwrap();
        let old = engine.call(Op::Write, 0, 0, 4096, Bytes::from(vec![3u8; 4096]));
        assert_eq!(old.await.unwrap().status, Status::StaleEpoch);
        let read = reader
            .call(Op::ReadSnapshot, 0, 0, 4096, snap)
            .await
            .unwrap();
        assert_eq!((read.status, read.payload), (Status::Ok, vec![1u8; 4096]));
        let head = newer
            .call(Op::Read, 0, 0, 4096, Bytes::new())
            .await
            .unwrap();
        assert_eq!(head.payload, vec![2u8; 4096], "the reader wrote nothing");
        let info = newer.call(Op::Info, 0, 0, 0, Bytes::new()).await.unwrap();
        let info: crate::replica::ReplicaInfo = serde_json::from_slice(&info.payload).unwrap();
        assert_eq!(info.epoch, 3, "the reader took no epoch");
    }

    /// Flushes and FUA writes pipelined among plain writes are all answered, and every
    /// write reads back: a flush holds up neither the requests behind it nor their replies.
    #[tokio::test]
    async fn pipelined_flushes_and_fua_writes_all_complete() {
        let dir = tempfile::tempdir().unwrap();
        let replica = Replica::open(&dir.path().join("r"), Some(1 << 20)).unwrap();
        let addr = Address::Unix(dir.path().join("r.sock"));
        let listener = Listener::bind(&addr).await.unwrap();
        tokio::spawn(ReplicaServer::new(replica, None).serve(listener));
        let link = ReplicaLink::connect(&addr, "v", Epoch(1), "")
            .await
            .unwrap();
        let calls = (0..64u64).map(|i| {
            let link = &link;
            async move {
                let (op, flags, offset, payload) = match i % 4 {
                    0 => (Op::Flush, 0, 0, Bytes::new()),
                    1 => (
                        Op::Write,
                        FLAG_FUA,
                        i * 4096,
                        Bytes::from(vec![i as u8; 4096]),
                    ),
                    _ => (Op::Write, 0, i * 4096, Bytes::from(vec![i as u8; 4096])),
                };
                let len = payload.len() as u32;
                link.call(op, flags, offset, len, payload)
                    .await
                    .unwrap()
                    .status
            }
        });
        let statuses = futures::future::join_all(calls).await;
        assert!(statuses.iter().all(|s| *s == Status::Ok), "{statuses:?}");
        for i in (0..64u64).filter(|i| i % 4 != 0) {
            let read = link.call(Op::Read, 0, i * 4096, 4096, Bytes::new());
            assert_eq!(read.await.unwrap().payload, vec![i as u8; 4096]);
        }
    }
}
