//! The engine's connection to one replica: a pipelined client of the wire protocol
//! (`PROTOCOL.md`). Requests carry ids; a writer task batches frames onto the socket and a
//! reader task hands each reply to its waiting caller. It never decides whether a replica
//! is healthy; the engine does that from the errors it returns.

use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::address::{Address, Stream};
use crate::protocol::{
    FrameError, Hello, Op, REPLY_HEADER_LEN, ReplyHeader, RequestHeader, Status, Welcome,
};
use crate::volume::Epoch;

const BUFFER: usize = 256 << 10;
const QUEUE: usize = 1024;
/// Most frames sent in one `writev` (two slices each; the kernel takes at most 1024).
const BATCH: usize = 256;

#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    #[error("connect to {0}: {1}")]
    Connect(String, String),
    #[error("replica refused the connection ({status:?}, newest epoch {newest_epoch}): {message}")]
    Refused {
        status: Status,
        newest_epoch: Epoch,
        message: String,
    },
    #[error("connection closed: {0}")]
    Closed(String),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// A reply: its status and payload.
#[derive(Debug)]
pub struct Reply {
    pub status: Status,
    pub payload: Vec<u8>,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Reply, LinkError>>>>>;

struct Frame {
    header: [u8; 32],
    payload: Bytes,
}

/// One connected, handshaken replica connection.
pub struct ReplicaLink {
    tx: mpsc::Sender<Frame>,
    pending: Pending,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
    /// The volume size the replica reported in its welcome.
    pub size: u64,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for ReplicaLink {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lock(
    p: &Pending,
) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<Reply, LinkError>>>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

fn fail_all(pending: &Pending, closed: &AtomicBool, reason: &str) {
    closed.store(true, Ordering::Release);
    for (_, tx) in lock(pending).drain() {
        let _ = tx.send(Err(LinkError::Closed(reason.to_owned())));
    }
}

impl ReplicaLink {
    /// Connects to `addr` and says hello with `epoch`; a refused hello is an error that
    /// carries the replica's reason. The connection lives on the data path runtime
    /// (`crate::runtime`), whichever runtime calls this.
    pub async fn connect(
        addr: &Address,
        volume: &str,
        epoch: Epoch,
        token: &str,
    ) -> Result<ReplicaLink, LinkError> {
        let hello = Hello {
            epoch,
            volume: volume.to_owned(),
            token: token.to_owned(),
            read_only: false,
        };
        Self::connect_with(addr, hello).await
    }

    /// Connects to `addr` read-only (`PROTOCOL.md`): the connection reads `volume`'s
    /// snapshot layers and nothing else, and neither takes nor is fenced by an epoch, so it
    /// disturbs no engine of that volume. For copying a snapshot into another volume.
    pub async fn connect_read_only(
        addr: &Address,
        volume: &str,
        token: &str,
    ) -> Result<ReplicaLink, LinkError> {
        let hello = Hello {
            epoch: Epoch(0),
            volume: volume.to_owned(),
            token: token.to_owned(),
            read_only: true,
        };
        Self::connect_with(addr, hello).await
    }

    async fn connect_with(addr: &Address, hello: Hello) -> Result<ReplicaLink, LinkError> {
        let addr = addr.clone();
        let dial = async move { Self::dial(&addr, hello).await };
        let connecting = crate::runtime::handle().spawn(dial);
        // Dropping the caller's future (a timeout) must not leave a connection behind.
        let _abort = AbortOnDrop(connecting.abort_handle());
        connecting
            .await
            .map_err(|e| LinkError::Closed(format!("connect task: {e}")))?
    }

    async fn dial(addr: &Address, hello: Hello) -> Result<ReplicaLink, LinkError> {
        let stream = Stream::connect(addr)
            .await
            .map_err(|e| LinkError::Connect(addr.to_string(), e.to_string()))?;
        let (r, w) = stream.into_split();
        let mut r = BufReader::with_capacity(BUFFER, r);
        let mut w = BufWriter::with_capacity(BUFFER, w);
        let closed_err = |e: FrameError| LinkError::Closed(e.to_string());
        w.write_all(&hello.encode())
            .await
            .map_err(|e| closed_err(e.into()))?;
        w.flush().await.map_err(|e| closed_err(e.into()))?;
        let welcome = Welcome::decode(&mut r).await.map_err(closed_err)?;
        if welcome.status != Status::Ok {
            return Err(LinkError::Refused {
                status: welcome.status,
                newest_epoch: welcome.newest_epoch,
                message: welcome.message,
            });
        }
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = tokio::spawn(write_loop(
            w.into_inner(),
            rx,
            pending.clone(),
            closed.clone(),
        ));
        let reader = tokio::spawn(read_loop(r, pending.clone(), closed.clone()));
        Ok(ReplicaLink {
            tx,
            pending,
            next_id: AtomicU64::new(1),
            closed,
            size: welcome.size,
            reader,
            writer,
        })
    }

    /// Sends one request and waits for its reply (no timeout here; the engine adds one).
    pub async fn call(
        &self,
        op: Op,
        flags: u8,
        offset: u64,
        length: u32,
        payload: Bytes,
    ) -> Result<Reply, LinkError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let header = RequestHeader {
            op,
            flags,
            id,
            offset,
            length,
            payload_len: payload.len() as u32,
        }
        .encode();
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        if self.closed.load(Ordering::Acquire) {
            lock(&self.pending).remove(&id);
            return Err(LinkError::Closed("connection already closed".into()));
        }
        if self.tx.send(Frame { header, payload }).await.is_err() {
            lock(&self.pending).remove(&id);
            return Err(LinkError::Closed("writer stopped".into()));
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(LinkError::Closed("reply dropped".into())),
        }
    }

    /// Whether the connection ended (the replica closed it, or a read or write failed).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Forgets a request that timed out, so its late reply is dropped.
    pub fn shutdown(&self) {
        self.reader.abort();
        self.writer.abort();
        fail_all(&self.pending, &self.closed, "link shut down");
    }
}

/// Sends queued frames: every frame waiting in the queue goes out in one `writev`, headers
/// and payloads straight from the callers' buffers (a payload is shared by all replicas and
/// never copied in user space).
async fn write_loop(
    mut w: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    mut rx: mpsc::Receiver<Frame>,
    pending: Pending,
    closed: Arc<AtomicBool>,
) {
    let result: std::io::Result<()> = async {
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            let mut slices = Vec::with_capacity(batch.len() * 2);
            for f in &batch {
                slices.push(IoSlice::new(&f.header));
                if !f.payload.is_empty() {
                    slices.push(IoSlice::new(&f.payload));
                }
            }
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                let n = w.write_vectored(rest).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                IoSlice::advance_slices(&mut rest, n);
            }
            drop(slices);
            batch.clear();
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        fail_all(&pending, &closed, &e.to_string());
    }
}

async fn read_loop(
    mut r: BufReader<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    pending: Pending,
    closed: Arc<AtomicBool>,
) {
    let result: Result<(), FrameError> = async {
        loop {
            let mut hb = [0u8; REPLY_HEADER_LEN];
            r.read_exact(&mut hb).await?;
            let h = ReplyHeader::decode(&hb)?;
            let mut payload = vec![0u8; h.payload_len as usize];
            r.read_exact(&mut payload).await?;
            if let Some(tx) = lock(&pending).remove(&h.id) {
                let _ = tx.send(Ok(Reply {
                    status: h.status,
                    payload,
                }));
            }
        }
    }
    .await;
    let reason = match result {
        Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "replica closed the connection".to_owned()
        }
        Err(e) => e.to_string(),
        Ok(()) => "done".to_owned(),
    };
    fail_all(&pending, &closed, &reason);
}
