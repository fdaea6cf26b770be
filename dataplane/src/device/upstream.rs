//! The device process's NBD client of its engine, which survives the engine.
//!
//! Requests are pipelined on one connection with handles. Every request stays in the
//! in-flight table until its reply arrives; when the connection breaks (the engine died or
//! was replaced), the client reconnects, to whatever endpoint the node agent has written to
//! the endpoint file by then, and sends every request of the table again, in the order they
//! were first sent, before any new one. Replaying is safe because READ, WRITE, TRIM,
//! WRITE_ZEROES and FLUSH are idempotent, and requests that were in flight together had no
//! order among them anyway; a FLUSH is answered only by an engine that has had every write
//! sent before it, so "flushed" still means "on every healthy replica's disk".
//!
//! It never answers a request itself: a reply comes from an engine, and an engine's error
//! (EIO, ENOSPC) is passed on as it is. While no engine answers, requests wait.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};

use crate::address::{Address, Stream};

const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const FLAG_FIXED_NEWSTYLE: u32 = 1;
const FLAG_NO_ZEROES: u32 = 2;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const INFO_EXPORT: u16 = 0;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_FLAG_FUA: u16 = 1;

/// The errno sent to the application when the engine's reply cannot be had at all (the
/// device is shutting down).
pub const EIO: u32 = 5;

/// One block request, as NBD carries it.
#[derive(Debug, Clone)]
pub struct Request {
    pub kind: u16,
    pub flags: u16,
    pub offset: u64,
    pub length: u32,
    /// WRITE only.
    pub data: Bytes,
}

/// The answer: the data of a READ (empty otherwise), or the engine's NBD error (an errno).
pub type Reply = Result<Bytes, u32>;

struct Pending {
    request: Request,
    reply: oneshot::Sender<Reply>,
}

type InFlight = Arc<Mutex<BTreeMap<u64, Pending>>>;

/// Where the engine is: `nbd://HOST:PORT/EXPORT` (the endpoint the agent reports), read
/// from a file on every connection attempt so that a restarted engine is found.
#[derive(Debug, Clone)]
pub struct EndpointFile(pub PathBuf);

impl EndpointFile {
    fn read(&self) -> Result<(Address, String), String> {
        let text = std::fs::read_to_string(&self.0)
            .map_err(|e| format!("reading {}: {e}", self.0.display()))?;
        parse_endpoint(text.trim())
    }
}

/// Splits `nbd://HOST:PORT/EXPORT` (or `nbd+unix:///EXPORT?socket=PATH`) into the address
/// and the export name.
pub fn parse_endpoint(uri: &str) -> Result<(Address, String), String> {
    if let Some(rest) = uri.strip_prefix("nbd+unix:///") {
        let (export, socket) = rest
            .split_once("?socket=")
            .ok_or_else(|| format!("\"{uri}\" names no socket"))?;
        return Ok((Address::Unix(socket.into()), export.to_string()));
    }
    let rest = uri
        .strip_prefix("nbd://")
        .ok_or_else(|| format!("\"{uri}\" is not an nbd://HOST:PORT/EXPORT endpoint"))?;
    let (host, export) = rest
        .split_once('/')
        .ok_or_else(|| format!("\"{uri}\" names no export"))?;
    let address = format!("tcp:{host}")
        .parse::<Address>()
        .map_err(|e| format!("\"{uri}\": {e}"))?;
    Ok((address, export.to_string()))
}

/// The client. Cheap to share; every method may be called from any thread.
pub struct Upstream {
    submit: mpsc::UnboundedSender<Pending>,
    size: AtomicU64,
    /// Connections made so far (the first one included).
    connections: AtomicU64,
}

impl Upstream {
    /// Connects (waiting as long as it takes for an engine to answer) and starts the task
    /// that keeps the connection, on the current runtime.
    pub async fn start(endpoint: EndpointFile) -> Arc<Upstream> {
        let (submit, requests) = mpsc::unbounded_channel();
        let (stream, size) = connect_forever(&endpoint, None).await;
        let upstream = Arc::new(Upstream {
            submit,
            size: AtomicU64::new(size),
            connections: AtomicU64::new(1),
        });
        tokio::spawn(keep(upstream.clone(), endpoint, stream, requests));
        upstream
    }

    /// The export size the engine announced, in bytes.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Asks the engine for the export size again (on a connection of its own, so the
    /// data path is not disturbed): after an online expansion. Returns the new size.
    pub async fn refresh_size(&self, endpoint: &EndpointFile) -> Result<u64, String> {
        let (address, export) = endpoint.read()?;
        let mut stream = Stream::connect(&address)
            .await
            .map_err(|e| format!("connecting to {address}: {e}"))?;
        let size = handshake(&mut stream, &export)
            .await
            .map_err(|e| format!("handshake with {address}: {e}"))?;
        self.size.fetch_max(size, Ordering::AcqRel);
        Ok(self.size())
    }

    /// How many connections to an engine were made (1 + reconnects).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
    }

    /// Sends `request` and waits for an engine's reply.
    pub async fn call(&self, request: Request) -> Reply {
        let (reply, answer) = oneshot::channel();
        if self.submit.send(Pending { request, reply }).is_err() {
            return Err(EIO);
        }
        answer.await.unwrap_or(Err(EIO))
    }

    pub async fn read(&self, offset: u64, length: u32) -> Reply {
        self.call(Request {
            kind: CMD_READ,
            flags: 0,
            offset,
            length,
            data: Bytes::new(),
        })
        .await
    }

    pub async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), u32> {
        let request = Request {
            kind: CMD_WRITE,
            flags: if fua { CMD_FLAG_FUA } else { 0 },
            offset,
            length: data.len() as u32,
            data,
        };
        self.call(request).await.map(|_| ())
    }

    pub async fn flush(&self) -> Result<(), u32> {
        self.call(Request {
            kind: CMD_FLUSH,
            flags: 0,
            offset: 0,
            length: 0,
            data: Bytes::new(),
        })
        .await
        .map(|_| ())
    }
}

/// Keeps a connection to an engine for as long as the [`Upstream`] lives.
async fn keep(
    upstream: Arc<Upstream>,
    endpoint: EndpointFile,
    mut stream: Stream,
    mut requests: mpsc::UnboundedReceiver<Pending>,
) {
    let in_flight: InFlight = Arc::default();
    let mut next_handle: u64 = 1;
    loop {
        let (r, w) = stream.into_split();
        let mut w = BufWriter::with_capacity(256 << 10, w);
        let mut reader = tokio::spawn(read_replies(r, in_flight.clone()));
        let replayed = replay(&in_flight, &mut w).await;
        let broken = match replayed {
            Err(e) => e.to_string(),
            Ok(()) => loop {
                tokio::select! {
                    biased;
                    done = &mut reader => {
                        break match done {
                            Ok(e) => e.to_string(),
                            Err(e) => e.to_string(),
                        };
                    }
                    next = requests.recv() => {
                        let Some(first) = next else {
                            // Every user is gone: the device is shutting down.
                            reader.abort();
                            return;
                        };
                        let mut batch = vec![first];
                        while batch.len() < 64 {
                            match requests.try_recv() {
                                Ok(p) => batch.push(p),
                                Err(_) => break,
                            }
                        }
                        if let Err(e) = send_batch(&in_flight, &mut next_handle, batch, &mut w).await {
                            break e.to_string();
                        }
                    }
                }
            },
        };
        reader.abort();
        let waiting = in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        tracing::warn!(reason = %broken, waiting, "lost the engine; reconnecting and replaying the requests in flight");
        let (next, size) = connect_forever(&endpoint, Some(&broken)).await;
        upstream.size.store(size, Ordering::Release);
        upstream.connections.fetch_add(1, Ordering::AcqRel);
        stream = next;
    }
}

/// Records each request as in flight, then writes it; one flush for the batch.
async fn send_batch<W: AsyncWrite + Unpin>(
    in_flight: &InFlight,
    next_handle: &mut u64,
    batch: Vec<Pending>,
    w: &mut W,
) -> std::io::Result<()> {
    let mut frames = Vec::with_capacity(batch.len());
    {
        let mut table = in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        for pending in batch {
            let handle = *next_handle;
            *next_handle += 1;
            frames.push((
                header(handle, &pending.request),
                pending.request.data.clone(),
            ));
            table.insert(handle, pending);
        }
    }
    for (head, data) in frames {
        w.write_all(&head).await?;
        if !data.is_empty() {
            w.write_all(&data).await?;
        }
    }
    w.flush().await
}

/// Sends again, in handle order, every request that has no reply.
async fn replay<W: AsyncWrite + Unpin>(in_flight: &InFlight, w: &mut W) -> std::io::Result<()> {
    let frames: Vec<([u8; 28], Bytes)> = in_flight
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(handle, p)| (header(*handle, &p.request), p.request.data.clone()))
        .collect();
    if !frames.is_empty() {
        tracing::info!(
            requests = frames.len(),
            "replaying requests to the new engine"
        );
    }
    for (head, data) in frames {
        w.write_all(&head).await?;
        w.write_all(&data).await?;
    }
    w.flush().await
}

fn header(handle: u64, request: &Request) -> [u8; 28] {
    let mut head = [0u8; 28];
    head[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    head[4..6].copy_from_slice(&request.flags.to_be_bytes());
    head[6..8].copy_from_slice(&request.kind.to_be_bytes());
    head[8..16].copy_from_slice(&handle.to_be_bytes());
    head[16..24].copy_from_slice(&request.offset.to_be_bytes());
    head[24..28].copy_from_slice(&request.length.to_be_bytes());
    head
}

/// Reads simple replies and answers their requests; returns why the connection ended.
async fn read_replies<R: AsyncRead + Unpin>(mut r: R, in_flight: InFlight) -> std::io::Error {
    let mut r = tokio::io::BufReader::with_capacity(256 << 10, &mut r);
    loop {
        let mut head = [0u8; 16];
        if let Err(e) = r.read_exact(&mut head).await {
            return e;
        }
        let magic = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let error = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let handle = u64::from_be_bytes(head[8..16].try_into().expect("8 bytes"));
        if magic != SIMPLE_REPLY_MAGIC {
            return protocol(format!("reply magic {magic:#x}"));
        }
        let length = {
            let table = in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            match table.get(&handle) {
                Some(p) if p.request.kind == CMD_READ && error == 0 => p.request.length as usize,
                Some(_) => 0,
                None => return protocol(format!("reply to unknown handle {handle}")),
            }
        };
        let mut data = BytesMut::zeroed(length);
        if length > 0
            && let Err(e) = r.read_exact(&mut data).await
        {
            return e;
        }
        let pending = in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&handle);
        if let Some(p) = pending {
            let _ = p.reply.send(if error == 0 {
                Ok(data.freeze())
            } else {
                Err(error)
            });
        }
    }
}

fn protocol(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Connects to the endpoint in the file, retrying until an engine completes the
/// handshake; returns the stream and the export size.
async fn connect_forever(endpoint: &EndpointFile, after: Option<&str>) -> (Stream, u64) {
    let mut delay = Duration::from_millis(20);
    let mut attempts = 0u64;
    loop {
        let attempt = async {
            let (address, export) = endpoint.read()?;
            let mut stream =
                tokio::time::timeout(Duration::from_secs(5), Stream::connect(&address))
                    .await
                    .map_err(|_| format!("connecting to {address}: timed out"))?
                    .map_err(|e| format!("connecting to {address}: {e}"))?;
            let size =
                tokio::time::timeout(Duration::from_secs(10), handshake(&mut stream, &export))
                    .await
                    .map_err(|_| format!("handshake with {address}: timed out"))?
                    .map_err(|e| format!("handshake with {address}: {e}"))?;
            Ok::<_, String>((stream, size, address))
        };
        match attempt.await {
            Ok((stream, size, address)) => {
                if after.is_some() {
                    tracing::info!(%address, attempts, "connected to the new engine");
                }
                return (stream, size);
            }
            Err(e) => {
                attempts += 1;
                if attempts % 50 == 1 {
                    tracing::info!(reason = %e, attempts, "waiting for an engine");
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// The fixed newstyle handshake with NBD_OPT_GO; returns the export size.
async fn handshake(stream: &mut Stream, export: &str) -> std::io::Result<u64> {
    let mut hello = [0u8; 18];
    stream.read_exact(&mut hello).await?;
    let magic = u64::from_be_bytes(hello[0..8].try_into().expect("8 bytes"));
    let opt = u64::from_be_bytes(hello[8..16].try_into().expect("8 bytes"));
    if magic != NBD_MAGIC || opt != IHAVEOPT {
        return Err(protocol("not an NBD newstyle server".into()));
    }
    stream
        .write_all(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes())
        .await?;
    let mut go = BytesMut::new();
    go.put_u64(IHAVEOPT);
    go.put_u32(OPT_GO);
    go.put_u32(4 + export.len() as u32 + 2);
    go.put_u32(export.len() as u32);
    go.put_slice(export.as_bytes());
    go.put_u16(0);
    stream.write_all(&go).await?;
    let mut size = None;
    loop {
        let mut head = [0u8; 20];
        stream.read_exact(&mut head).await?;
        let magic = u64::from_be_bytes(head[0..8].try_into().expect("8 bytes"));
        let kind = u32::from_be_bytes(head[12..16].try_into().expect("4 bytes"));
        let length = u32::from_be_bytes(head[16..20].try_into().expect("4 bytes"));
        if magic != OPT_REPLY_MAGIC || length > 64 << 10 {
            return Err(protocol("bad option reply".into()));
        }
        let mut data = vec![0u8; length as usize];
        stream.read_exact(&mut data).await?;
        match kind {
            REP_ACK => {
                return size.ok_or_else(|| protocol("the server sent no export size".into()));
            }
            REP_INFO
                if data.len() >= 12 && u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT =>
            {
                size = Some(u64::from_be_bytes(data[2..10].try_into().expect("8 bytes")));
            }
            REP_INFO => {}
            error if error & (1 << 31) != 0 => {
                let message = String::from_utf8_lossy(&data).to_string();
                return Err(protocol(format!(
                    "export \"{export}\" refused ({error:#x}): {message}"
                )));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let (address, export) = parse_endpoint("nbd://127.0.0.1:10809/db").unwrap();
        assert_eq!(address, Address::Tcp("127.0.0.1:10809".into()));
        assert_eq!(export, "db");
        let (address, export) = parse_endpoint("nbd+unix:///vol?socket=/tmp/e.sock").unwrap();
        assert_eq!(address, Address::Unix("/tmp/e.sock".into()));
        assert_eq!(export, "vol");
        assert!(parse_endpoint("nbd+unix:///vol").is_err());
        assert!(parse_endpoint("127.0.0.1:10809/db").is_err());
        assert!(parse_endpoint("nbd://127.0.0.1:10809").is_err());
    }
}
