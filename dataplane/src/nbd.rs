//! The NBD frontend: the fixed newstyle handshake (options GO, INFO, EXPORT_NAME, LIST,
//! ABORT) and the transmission phase with simple replies (READ, WRITE, FLUSH, TRIM,
//! WRITE_ZEROES, DISC, the FUA flag), several connections at once. Requests on one
//! connection run concurrently and are answered as they complete. A request beyond the
//! export or otherwise wrong gets the NBD error the spec names; a frame that cannot be
//! parsed closes its connection with the reason logged. It never touches a replica; every
//! request goes through the engine.
//!
//! Multi-conn is safe because every write is acknowledged only after all healthy replicas
//! have it, and a FLUSH fsyncs every healthy replica: a flush on any connection covers every
//! write any connection had completed before it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{Semaphore, mpsc};

use crate::address::{Listener, Stream};
use crate::engine::{Engine, EngineError};

const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const CLIENT_NO_ZEROES: u32 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

const INFO_EXPORT: u16 = 0;
const INFO_NAME: u16 = 1;
const INFO_BLOCK_SIZE: u16 = 3;

const TF_HAS_FLAGS: u16 = 1;
const TF_SEND_FLUSH: u16 = 4;
const TF_SEND_FUA: u16 = 8;
const TF_SEND_TRIM: u16 = 32;
const TF_SEND_WRITE_ZEROES: u16 = 64;
const TF_CAN_MULTI_CONN: u16 = 256;
const TRANSMISSION_FLAGS: u16 = TF_HAS_FLAGS
    | TF_SEND_FLUSH
    | TF_SEND_FUA
    | TF_SEND_TRIM
    | TF_SEND_WRITE_ZEROES
    | TF_CAN_MULTI_CONN;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_FLAG_FUA: u16 = 1;

const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

/// Largest READ or WRITE payload accepted (what INFO_BLOCK_SIZE advertises as maximum).
pub const MAX_REQUEST: u32 = 32 << 20;
/// Largest option payload read during the handshake.
const MAX_OPTION: u32 = 64 << 10;
/// Requests of one connection in flight at once.
const IN_FLIGHT: usize = 256;

#[derive(Debug, thiserror::Error)]
enum NbdError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    #[error("option of {0} bytes exceeds the {MAX_OPTION}-byte limit")]
    OptionTooLarge(u32),
    #[error("write of {0} bytes exceeds the {MAX_REQUEST}-byte limit")]
    WriteTooLarge(u32),
}

/// Serves NBD clients of `engine` on `listener` until the listener fails.
pub async fn serve(engine: Arc<Engine>, listener: Listener) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let stream = match stream.detach() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot take over the nbd connection");
                continue;
            }
        };
        let engine = engine.clone();
        crate::runtime::handle().spawn(async move {
            let served = match Stream::attach(stream) {
                Ok(stream) => connection(engine, stream).await,
                Err(e) => Err(NbdError::Io(e)),
            };
            match served {
                Ok(()) => tracing::debug!(%peer, "nbd client disconnected"),
                Err(e) => tracing::warn!(%peer, reason = %e, "closing nbd connection"),
            }
        });
    }
}

struct ClientGuard(Arc<Engine>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn connection(engine: Arc<Engine>, stream: Stream) -> Result<(), NbdError> {
    let (r, w) = stream.into_split();
    let mut r = BufReader::with_capacity(256 << 10, r);
    let mut w = BufWriter::with_capacity(256 << 10, w);
    // Counted from the start of the handshake: a client that has its export's reply is a
    // client (revert refuses while one is connected), with no moment in between.
    engine.clients.fetch_add(1, Ordering::AcqRel);
    let _guard = ClientGuard(engine.clone());
    if !handshake(&engine, &mut r, &mut w).await? {
        return Ok(());
    }
    transmission(engine, r, w).await
}

async fn option_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    option: u32,
    kind: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    w.write_all(&b).await
}

/// Parses the data of an INFO or GO option: the export name and the info types asked for.
fn parse_info_request(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let name_len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(data.get(4..4 + name_len)?)
        .ok()?
        .to_owned();
    let rest = data.get(4 + name_len..)?;
    let n = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    let list = rest.get(2..)?;
    if list.len() != n * 2 {
        return None;
    }
    Some((
        name,
        list.chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect(),
    ))
}

fn known_export(engine: &Engine, name: &str) -> bool {
    name.is_empty() || name == engine.volume.as_str()
}

/// Runs the fixed newstyle handshake; true when the client entered transmission.
async fn handshake<R, W>(engine: &Engine, r: &mut R, w: &mut W) -> Result<bool, NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBD_MAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&hello).await?;
    w.flush().await?;
    let client_flags = r.read_u32().await?;
    let no_zeroes = client_flags & CLIENT_NO_ZEROES != 0;
    loop {
        let magic = r.read_u64().await?;
        if magic != IHAVEOPT {
            return Err(NbdError::BadMagic(magic));
        }
        let option = r.read_u32().await?;
        let len = r.read_u32().await?;
        if len > MAX_OPTION {
            return Err(NbdError::OptionTooLarge(len));
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data).await?;
        let size = engine.size();
        match option {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data);
                if !known_export(engine, &name) {
                    // This option has no error reply: the spec says to close.
                    tracing::warn!(export = %name, "nbd client asked for an unknown export");
                    return Ok(false);
                }
                let mut b = Vec::with_capacity(134);
                b.extend_from_slice(&size.to_be_bytes());
                b.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                if !no_zeroes {
                    b.extend_from_slice(&[0u8; 124]);
                }
                w.write_all(&b).await?;
                w.flush().await?;
                return Ok(true);
            }
            OPT_ABORT => {
                option_reply(w, option, REP_ACK, &[]).await?;
                w.flush().await?;
                return Ok(false);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    option_reply(w, option, REP_ERR_INVALID, b"LIST takes no data").await?;
                } else {
                    let name = engine.volume.as_str().as_bytes();
                    let mut b = Vec::with_capacity(4 + name.len());
                    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    b.extend_from_slice(name);
                    option_reply(w, option, REP_SERVER, &b).await?;
                    option_reply(w, option, REP_ACK, &[]).await?;
                }
            }
            OPT_INFO | OPT_GO => match parse_info_request(&data) {
                None => {
                    option_reply(w, option, REP_ERR_INVALID, b"malformed INFO/GO request").await?
                }
                Some((name, _)) if !known_export(engine, &name) => {
                    option_reply(
                        w,
                        option,
                        REP_ERR_UNKNOWN,
                        format!("no export {name:?}").as_bytes(),
                    )
                    .await?
                }
                Some((_, infos)) => {
                    let mut b = Vec::with_capacity(12);
                    b.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                    b.extend_from_slice(&size.to_be_bytes());
                    b.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                    option_reply(w, option, REP_INFO, &b).await?;
                    if infos.contains(&INFO_NAME) {
                        let mut b = INFO_NAME.to_be_bytes().to_vec();
                        b.extend_from_slice(engine.volume.as_str().as_bytes());
                        option_reply(w, option, REP_INFO, &b).await?;
                    }
                    if infos.contains(&INFO_BLOCK_SIZE) {
                        let mut b = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                        b.extend_from_slice(&1u32.to_be_bytes());
                        b.extend_from_slice(&4096u32.to_be_bytes());
                        b.extend_from_slice(&MAX_REQUEST.to_be_bytes());
                        option_reply(w, option, REP_INFO, &b).await?;
                    }
                    option_reply(w, option, REP_ACK, &[]).await?;
                    if option == OPT_GO {
                        w.flush().await?;
                        return Ok(true);
                    }
                }
            },
            _ => option_reply(w, option, REP_ERR_UNSUP, b"option not supported").await?,
        }
        w.flush().await?;
    }
}

/// One reply on its way to the client.
struct Reply {
    handle: u64,
    error: u32,
    data: Option<Vec<u8>>,
}

fn errno(e: &EngineError, writing: bool) -> u32 {
    match e {
        EngineError::OutOfRange { .. } if writing => ENOSPC,
        EngineError::OutOfRange { .. } | EngineError::Invalid(_) => EINVAL,
        _ => EIO,
    }
}

async fn transmission<R, W>(
    engine: Arc<Engine>,
    mut r: BufReader<R>,
    mut w: BufWriter<W>,
) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Reply>(IN_FLIGHT);
    let writer = tokio::spawn(async move {
        let mut head = [0u8; 16];
        head[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        while let Some(reply) = rx.recv().await {
            let mut next = Some(reply);
            while let Some(reply) = next {
                head[4..8].copy_from_slice(&reply.error.to_be_bytes());
                head[8..16].copy_from_slice(&reply.handle.to_be_bytes());
                w.write_all(&head).await?;
                if let Some(d) = &reply.data {
                    w.write_all(d).await?;
                }
                next = rx.try_recv().ok();
            }
            w.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let result = async {
        loop {
            let mut h = [0u8; 28];
            match r.read_exact(&mut h).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(NbdError::Io(e)),
            }
            let magic = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
            if magic != REQUEST_MAGIC {
                return Err(NbdError::BadMagic(magic as u64));
            }
            let flags = u16::from_be_bytes([h[4], h[5]]);
            let kind = u16::from_be_bytes([h[6], h[7]]);
            let handle = u64::from_be_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
            let offset =
                u64::from_be_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]);
            let length = u32::from_be_bytes([h[24], h[25], h[26], h[27]]);
            let fua = flags & CMD_FLAG_FUA != 0;
            let mut data = None;
            if kind == CMD_WRITE {
                if length > MAX_REQUEST {
                    return Err(NbdError::WriteTooLarge(length));
                }
                data = Some(read_payload(&mut r, length as usize).await?);
            }
            if kind == CMD_DISC {
                return Ok(());
            }
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return Ok(());
            };
            let engine = engine.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let reply = run(&engine, kind, offset, length, fua, data, handle).await;
                let _ = tx.send(reply).await;
                drop(permit);
            });
        }
    }
    .await;
    // Wait for every request in flight to be answered before closing.
    let _ = slots.acquire_many(IN_FLIGHT as u32).await;
    drop(tx);
    match writer.await {
        Ok(Ok(())) | Err(_) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "nbd reply writer stopped"),
    }
    result
}

/// Reads a write payload of `len` bytes into a fresh buffer, without zeroing it first.
async fn read_payload<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        let mut rest = (&mut *r).take((len - buf.len()) as u64);
        if rest.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf.freeze())
}

async fn run(
    engine: &Engine,
    kind: u16,
    offset: u64,
    length: u32,
    fua: bool,
    data: Option<Bytes>,
    handle: u64,
) -> Reply {
    let ok = |data| Reply {
        handle,
        error: 0,
        data,
    };
    let err = |error| Reply {
        handle,
        error,
        data: None,
    };
    match kind {
        CMD_READ => {
            if length > MAX_REQUEST {
                return err(EINVAL);
            }
            match engine.read(offset, length).await {
                Ok(d) => ok(Some(d)),
                Err(e) => err(errno(&e, false)),
            }
        }
        CMD_WRITE => match engine.write(offset, data.unwrap_or_default(), fua).await {
            Ok(()) => ok(None),
            Err(e) => err(errno(&e, true)),
        },
        CMD_FLUSH => match engine.flush().await {
            Ok(()) => ok(None),
            Err(e) => err(errno(&e, false)),
        },
        CMD_TRIM | CMD_WRITE_ZEROES => {
            match engine.zero(offset, length, kind == CMD_TRIM, fua).await {
                Ok(()) => ok(None),
                Err(e) => err(errno(&e, kind == CMD_WRITE_ZEROES)),
            }
        }
        _ => err(EINVAL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_requests_parse_and_reject_garbage() {
        let mut d = 2u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"db");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(
            parse_info_request(&d),
            Some(("db".into(), vec![INFO_BLOCK_SIZE]))
        );
        assert_eq!(parse_info_request(&d[..d.len() - 1]), None);
        assert_eq!(parse_info_request(&[0xff, 0xff, 0xff, 0xff]), None);
    }
}
