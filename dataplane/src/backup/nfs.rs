//! An NFSv3 export as an [`ObjectStore`], reached from userspace over TCP (the
//! `nfs3_client` crate): no kernel NFS client, no mount, no privileges, no `nfs-common` on
//! the node. An object is a file under the mounted directory and each `/` of its path a
//! directory (created on demand). How the backup store uses it is in `BACKUP.md`.
//!
//! What it guarantees: a `put` writes a temporary file next to the object, commits it to
//! stable storage on the server (UNSTABLE writes, then COMMIT with the write verifier
//! checked) and renames it over the object, so an object appears whole or not at all and is
//! durable once `put` returns. What it must never do: return a partly read object, or let a
//! failed mount look like a missing object (a mount failure is never `NotFound`).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use nfs3_client::nfs3_types::mount::{dirpath, mountstat3};
use nfs3_client::nfs3_types::nfs3::{
    COMMIT3args, CREATE3args, FSINFO3args, GETATTR3args, LINK3args, LOOKUP3args, MKDIR3args,
    Nfs3Option, Nfs3Result, READ3args, READDIRPLUS3args, REMOVE3args, RENAME3args, WRITE3args,
    cookieverf3, createhow3, diropargs3, fattr3, filename3, ftype3, nfs_fh3, nfsstat3, sattr3,
    stable_how,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::TokioIo;
use nfs3_client::{MountClient, MountError, Nfs3Client, PortmapError, PortmapperClient, RpcError};
use object_store::path::Path;
use object_store::{
    CopyMode, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    RenameTargetMode,
};
use tokio::net::{TcpSocket, TcpStream};

type Client = Nfs3Client<TokioIo<TcpStream>>;

/// The RPC port of the portmapper (rpcbind).
pub const PORTMAPPER_PORT: u16 = 111;
/// Where an NFSv4 server listens (RFC 7530: no portmapper), asked when no MOUNT is found.
const NFS4_PORT: u16 = 2049;
/// Temporary files of unfinished puts start with this; listings skip them.
const TMP_PREFIX: &str = ".shorthorn-tmp.";
/// A temporary file not modified for this long was left by a client that died mid-put
/// (a put of one block or manifest takes seconds): a full listing removes it.
const STALE_TMP: Duration = Duration::from_secs(24 * 3600);
/// The most a READ or WRITE carries (servers may offer more; 1 MiB is what ganesha and
/// the Linux server default to).
const MAX_IO: u32 = 1 << 20;
/// How much of a directory one READDIRPLUS asks for.
const READDIR_BYTES: u32 = 64 << 10;

/// Where and how to reach one export.
#[derive(Debug, Clone)]
pub struct NfsConfig {
    /// Host name or address (IPv6 without brackets).
    pub server: String,
    /// The NFS service's port; `None` asks the portmapper.
    pub port: Option<u16>,
    /// The MOUNT service's port; `None` asks the portmapper.
    pub mount_port: Option<u16>,
    /// The directory to mount (an export or a directory below one), absolute.
    pub export: String,
    /// The target's URL, for messages.
    pub url: String,
    pub connect_timeout: Duration,
    /// One RPC's deadline; a server that does not answer in time counts as unreachable.
    pub rpc_timeout: Duration,
    /// Retries of one operation while the server is unreachable or the handle stale.
    pub max_retries: usize,
    pub retry_timeout: Duration,
    /// TCP connections kept open to the NFS service (one RPC in flight on each).
    pub connections: usize,
}

/// Why an NFS operation failed; carried inside `object_store::Error` as its source so the
/// store can tell the user which it was.
#[derive(Debug, thiserror::Error)]
pub enum NfsError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot resolve NFS server {server:?}: {reason}")]
    Resolve { server: String, reason: String },
    #[error("{op} on {addr}: no answer within {secs} s")]
    Timeout { op: String, addr: String, secs: u64 },
    #[error("the portmapper on {addr}: {reason}")]
    Portmap { addr: String, reason: String },
    #[error("the server has no export {export:?} open to this host ({status})")]
    NoSuchExport { export: String, status: String },
    #[error("{what}")]
    PermissionDenied { what: String },
    #[error("{op} {path}: {} ({status})", words(*status))]
    Status {
        op: &'static str,
        path: String,
        status: nfsstat3,
    },
    #[error("{op} {path}: {source}")]
    Rpc {
        op: &'static str,
        path: String,
        source: RpcError,
    },
    #[error(
        "{path}: the server's write verifier changed (it restarted before the data was committed)"
    )]
    VerifierChanged { path: String },
    #[error("{op}: the connection to {addr} broke earlier in this operation")]
    Broken { op: &'static str, addr: String },
    #[error("{0}")]
    Protocol(String),
    #[error(
        "the NFS server at {addr} does not serve NFSv3 (it serves NFS versions {low} to {high}): \
         Shorthorn's userspace NFS client speaks NFSv3 with the MOUNT protocol; enable NFSv3 on \
         the server, or mount the export on every node and use a file:// target"
    )]
    NoNfsV3 { addr: String, low: u32, high: u32 },
}

/// What an NFS status means, in words.
fn words(status: nfsstat3) -> &'static str {
    match status {
        nfsstat3::NFS3ERR_PERM | nfsstat3::NFS3ERR_ACCES => {
            "access denied (is root squashed, or the directory not writable by the exported uid?)"
        }
        nfsstat3::NFS3ERR_ROFS => "the export is read-only",
        nfsstat3::NFS3ERR_NOENT => "no such file or directory",
        nfsstat3::NFS3ERR_EXIST => "already exists",
        nfsstat3::NFS3ERR_NOSPC => "no space left on the export",
        nfsstat3::NFS3ERR_DQUOT => "over quota",
        nfsstat3::NFS3ERR_STALE | nfsstat3::NFS3ERR_BADHANDLE => {
            "stale file handle (the export changed under us)"
        }
        nfsstat3::NFS3ERR_IO => "I/O error on the server",
        nfsstat3::NFS3ERR_NOTDIR => "not a directory",
        nfsstat3::NFS3ERR_ISDIR => "is a directory",
        nfsstat3::NFS3ERR_NAMETOOLONG => "name too long",
        nfsstat3::NFS3ERR_JUKEBOX => "the server is busy; try again",
        _ => "the server refused",
    }
}

impl NfsError {
    /// Worth another try: the server went away, is restarting, or dropped a handle.
    fn transient(&self) -> bool {
        match self {
            NfsError::Connect { .. } | NfsError::Timeout { .. } | NfsError::Broken { .. } => true,
            NfsError::Rpc { source, .. } => !source.is_connection_reusable(),
            NfsError::Status { status, .. } => matches!(
                status,
                nfsstat3::NFS3ERR_STALE
                    | nfsstat3::NFS3ERR_BADHANDLE
                    | nfsstat3::NFS3ERR_JUKEBOX
                    | nfsstat3::NFS3ERR_SERVERFAULT
                    | nfsstat3::NFS3ERR_IO
            ),
            NfsError::VerifierChanged { .. } => true,
            _ => false,
        }
    }

    fn stale(&self) -> bool {
        matches!(
            self,
            NfsError::Status {
                status: nfsstat3::NFS3ERR_STALE | nfsstat3::NFS3ERR_BADHANDLE,
                ..
            }
        )
    }

    fn status(&self) -> Option<nfsstat3> {
        match self {
            NfsError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// As object_store sees it: missing objects are `NotFound`, refusals
    /// `PermissionDenied`, everything else `Generic` (with this as the source).
    fn into_store(self, path: &str) -> object_store::Error {
        let path = path.to_owned();
        match self.status() {
            Some(nfsstat3::NFS3ERR_NOENT | nfsstat3::NFS3ERR_NOTDIR) => {
                object_store::Error::NotFound {
                    path,
                    source: Box::new(self),
                }
            }
            Some(nfsstat3::NFS3ERR_EXIST) => object_store::Error::AlreadyExists {
                path,
                source: Box::new(self),
            },
            Some(nfsstat3::NFS3ERR_ACCES | nfsstat3::NFS3ERR_PERM | nfsstat3::NFS3ERR_ROFS) => {
                object_store::Error::PermissionDenied {
                    path,
                    source: Box::new(self),
                }
            }
            _ if matches!(self, NfsError::PermissionDenied { .. }) => {
                object_store::Error::PermissionDenied {
                    path,
                    source: Box::new(self),
                }
            }
            _ => object_store::Error::Generic {
                store: "NFS",
                source: Box::new(self),
            },
        }
    }
}

/// The [`NfsError`] inside an object_store error, if it came from here.
pub fn nfs_cause(e: &object_store::Error) -> Option<&NfsError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cur {
        if let Some(n) = c.downcast_ref::<NfsError>() {
            return Some(n);
        }
        cur = c.source();
    }
    None
}

fn check<T, E>(r: Nfs3Result<T, E>, op: &'static str, path: &str) -> Result<T, NfsError> {
    match r {
        Nfs3Result::Ok(v) => Ok(v),
        Nfs3Result::Err((status, _)) => Err(NfsError::Status {
            op,
            path: path.to_owned(),
            status,
        }),
    }
}

/// An export, opened lazily: the first operation mounts it (and a failed mount is tried
/// again by the next one).
pub struct NfsStore {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: NfsConfig,
    credential: opaque_auth<'static>,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    tmp_seq: AtomicU64,
}

/// A mounted export: its root handle, the sizes the server takes, a pool of connections
/// and the handles of the directories seen so far.
struct Session {
    addr: SocketAddr,
    root: nfs_fh3,
    rsize: u32,
    wsize: u32,
    credential: opaque_auth<'static>,
    connect_timeout: Duration,
    rpc_timeout: Duration,
    idle: Mutex<Vec<Client>>,
    permits: Arc<tokio::sync::Semaphore>,
    dirs: Mutex<HashMap<String, nfs_fh3>>,
}

impl fmt::Debug for NfsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NfsStore")
            .field("url", &self.inner.cfg.url)
            .finish()
    }
}

impl fmt::Display for NfsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NfsStore({})", self.inner.cfg.url)
    }
}

impl NfsStore {
    /// No I/O: the export is mounted by the first operation.
    pub fn new(cfg: NfsConfig) -> NfsStore {
        // AUTH_SYS as this process: the server maps (or squashes) the ids as it exports.
        let machinename = hostname();
        // SAFETY: geteuid/getegid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let credential = opaque_auth::auth_unix(&auth_unix {
            stamp: (crate::backup::now_unix_ms() / 1000) as u32,
            machinename: Opaque::owned(machinename.into_bytes()),
            uid,
            gid,
            gids: vec![gid],
        });
        NfsStore {
            inner: Arc::new(Inner {
                cfg,
                credential,
                session: tokio::sync::Mutex::new(None),
                tmp_seq: AtomicU64::new(0),
            }),
        }
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    if name.is_empty() {
        "shorthorn".into()
    } else {
        name.chars().take(255).collect()
    }
}

/// Connects to `addr`; as root from a reserved port (665-1023, the Linux client's range),
/// as servers that export with `secure` (the Linux default) demand.
async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TokioIo<TcpStream>, NfsError> {
    let err = |source: std::io::Error| NfsError::Connect {
        addr: addr.to_string(),
        source,
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let attempt = async {
        if root {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let start = u64::from(std::process::id()) * 7 + crate::backup::now_unix_ms();
            for _ in 0..64 {
                let port = 665 + ((start + NEXT.fetch_add(1, Ordering::Relaxed)) % 359) as u16;
                let socket = if addr.is_ipv4() {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                }?;
                let local: SocketAddr = if addr.is_ipv4() {
                    ([0, 0, 0, 0], port).into()
                } else {
                    ([0u16; 8], port).into()
                };
                if let Err(e) = socket.bind(local) {
                    if e.kind() == std::io::ErrorKind::AddrInUse {
                        continue;
                    }
                    return Err(e);
                }
                match socket.connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable
                        ) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        TcpStream::connect(addr).await
    };
    let stream = tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| {
            err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {} s", timeout.as_secs()),
            ))
        })?
        .map_err(err)?;
    let _ = stream.set_nodelay(true);
    Ok(TokioIo::new(stream))
}

/// Runs one RPC under the deadline. A connection whose RPC did not end cleanly (timed out,
/// broke, or answered out of turn) is marked broken: never used again, never pooled.
macro_rules! rpc {
    ($conn:expr, $op:literal, $path:expr, $method:ident, $args:expr) => {{
        let conn: &mut Conn = $conn;
        let timeout = conn.session.rpc_timeout;
        let addr = conn.session.addr;
        if conn.broken {
            Err(NfsError::Broken {
                op: $op,
                addr: addr.to_string(),
            })
        } else {
            conn.broken = true;
            match tokio::time::timeout(timeout, conn.client().$method($args)).await {
                Ok(Ok(r)) => {
                    conn.broken = false;
                    Ok(r)
                }
                Ok(Err(e)) => {
                    conn.broken = !e.is_connection_reusable()
                        || matches!(e, RpcError::UnexpectedXid | RpcError::NotFullyParsed { .. });
                    Err(NfsError::Rpc {
                        op: $op,
                        path: $path.to_string(),
                        source: e,
                    })
                }
                Err(_) => Err(NfsError::Timeout {
                    op: $op.to_string(),
                    addr: addr.to_string(),
                    secs: timeout.as_secs(),
                }),
            }
        }
    }};
}

/// One pooled connection, given back on drop unless it broke (an RPC on it did not end
/// cleanly, or its future was dropped mid-call).
struct Conn {
    session: Arc<Session>,
    client: Option<Client>,
    broken: bool,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Conn {
    fn client(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("a connection holds its client until dropped")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !self.broken
            && let Some(c) = self.client.take()
            && let Ok(mut idle) = self.session.idle.lock()
        {
            idle.push(c);
        }
    }
}

/// An object path as directory names and a file name (the encoded parts, as on disk).
fn split(location: &Path) -> Result<(Vec<String>, String), NfsError> {
    let mut parts: Vec<String> = location.parts().map(|p| p.as_ref().to_owned()).collect();
    let name = parts
        .pop()
        .ok_or_else(|| NfsError::Protocol("an object needs a name".into()))?;
    Ok((parts, name))
}

fn mtime(a: &fattr3) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(i64::from(a.mtime.seconds), a.mtime.nseconds)
        .unwrap_or_default()
}

/// Whether a temporary file with attributes `a` was last modified [`STALE_TMP`] or more
/// before `now`.
fn stale_since(a: &fattr3, now: std::time::SystemTime) -> bool {
    let modified = std::time::UNIX_EPOCH + Duration::from_secs(u64::from(a.mtime.seconds));
    now.duration_since(modified)
        .is_ok_and(|age| age >= STALE_TMP)
}

fn meta(location: Path, a: &fattr3) -> ObjectMeta {
    ObjectMeta {
        location,
        last_modified: mtime(a),
        size: a.size,
        e_tag: Some(format!(
            "{:x}-{:x}.{:x}-{:x}",
            a.fileid, a.mtime.seconds, a.mtime.nseconds, a.size
        )),
        version: None,
    }
}

fn mode(bits: u32) -> sattr3 {
    sattr3 {
        mode: Nfs3Option::Some(bits),
        ..Default::default()
    }
}

fn name3(s: &str) -> filename3<'_> {
    filename3(Opaque::borrowed(s.as_bytes()))
}

impl Session {
    async fn conn(self: &Arc<Self>) -> Result<Conn, NfsError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| NfsError::Protocol("the connection pool is closed".into()))?;
        let pooled = self.idle.lock().ok().and_then(|mut v| v.pop());
        let client = match pooled {
            Some(c) => c,
            None => {
                let io = connect(self.addr, self.connect_timeout).await?;
                Nfs3Client::new_with_auth(io, self.credential.clone(), opaque_auth::default())
            }
        };
        Ok(Conn {
            session: self.clone(),
            client: Some(client),
            broken: false,
            _permit: permit,
        })
    }

    fn forget_dirs(&self) {
        if let Ok(mut d) = self.dirs.lock() {
            d.clear();
        }
    }

    /// LOOKUP of `name` in `dir`: its handle and attributes.
    async fn lookup(
        &self,
        c: &mut Conn,
        dir: &nfs_fh3,
        name: &str,
        path: &str,
    ) -> Result<(nfs_fh3, fattr3), NfsError> {
        let args = LOOKUP3args {
            what: diropargs3 {
                dir: dir.clone(),
                name: name3(name),
            },
        };
        let ok = check(rpc!(c, "LOOKUP", path, lookup, &args)?, "LOOKUP", path)?;
        let attrs = match ok.obj_attributes {
            Nfs3Option::Some(a) => a,
            Nfs3Option::None => self.getattr(c, &ok.object, path).await?,
        };
        Ok((ok.object, attrs))
    }

    async fn getattr(&self, c: &mut Conn, fh: &nfs_fh3, path: &str) -> Result<fattr3, NfsError> {
        let args = GETATTR3args { object: fh.clone() };
        Ok(check(rpc!(c, "GETATTR", path, getattr, &args)?, "GETATTR", path)?.obj_attributes)
    }

    /// The handle of directory `dirs` (relative to the mount), made when `create`.
    async fn dir(&self, c: &mut Conn, dirs: &[String], create: bool) -> Result<nfs_fh3, NfsError> {
        let mut fh = self.root.clone();
        let mut path = String::new();
        for d in dirs {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(d);
            if let Some(known) = self.dirs.lock().ok().and_then(|m| m.get(&path).cloned()) {
                fh = known;
                continue;
            }
            let found = match self.lookup(c, &fh, d, &path).await {
                Ok((h, a)) if a.type_ == ftype3::NF3DIR => h,
                Ok(_) => {
                    return Err(NfsError::Status {
                        op: "LOOKUP",
                        path,
                        status: nfsstat3::NFS3ERR_NOTDIR,
                    });
                }
                Err(e) if create && e.status() == Some(nfsstat3::NFS3ERR_NOENT) => {
                    let args = MKDIR3args {
                        where_: diropargs3 {
                            dir: fh.clone(),
                            name: name3(d),
                        },
                        attributes: mode(0o755),
                    };
                    match check(rpc!(c, "MKDIR", &path, mkdir, &args)?, "MKDIR", &path) {
                        Ok(ok) => match ok.obj {
                            Nfs3Option::Some(h) => h,
                            Nfs3Option::None => self.lookup(c, &fh, d, &path).await?.0,
                        },
                        // Made meanwhile by another writer.
                        Err(e) if e.status() == Some(nfsstat3::NFS3ERR_EXIST) => {
                            self.lookup(c, &fh, d, &path).await?.0
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            if let Ok(mut m) = self.dirs.lock() {
                m.insert(path.clone(), found.clone());
            }
            fh = found;
        }
        Ok(fh)
    }

    async fn remove(
        &self,
        c: &mut Conn,
        dir: &nfs_fh3,
        name: &str,
        path: &str,
    ) -> Result<(), NfsError> {
        let args = REMOVE3args {
            object: diropargs3 {
                dir: dir.clone(),
                name: name3(name),
            },
        };
        check(rpc!(c, "REMOVE", path, remove, &args)?, "REMOVE", path).map(|_| ())
    }

    /// Reads `range` of file `fh` (whose size is `size`).
    async fn read(
        &self,
        c: &mut Conn,
        fh: &nfs_fh3,
        range: std::ops::Range<u64>,
        path: &str,
    ) -> Result<Bytes, NfsError> {
        let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
        let mut offset = range.start;
        while offset < range.end {
            let count = (range.end - offset).min(u64::from(self.rsize)) as u32;
            let args = READ3args {
                file: fh.clone(),
                offset,
                count,
            };
            let ok = check(rpc!(c, "READ", path, read, &args)?, "READ", path)?;
            let got = ok.data.0.len() as u64;
            out.extend_from_slice(&ok.data.0);
            offset += got;
            if got == 0 || ok.eof {
                break;
            }
        }
        if offset < range.end {
            // The file shrank under us (replaced meanwhile): read it again.
            return Err(NfsError::Status {
                op: "READ",
                path: path.to_owned(),
                status: nfsstat3::NFS3ERR_STALE,
            });
        }
        Ok(out.freeze())
    }

    /// Writes `data` into new file `fh` and makes it durable (COMMIT, verifier checked).
    async fn write_all(
        &self,
        c: &mut Conn,
        fh: &nfs_fh3,
        data: &[u8],
        path: &str,
    ) -> Result<(), NfsError> {
        let mut verf = None;
        let mut all_synced = true;
        let mut offset = 0usize;
        while offset < data.len() {
            let end = (offset + self.wsize as usize).min(data.len());
            let args = WRITE3args {
                file: fh.clone(),
                offset: offset as u64,
                count: (end - offset) as u32,
                stable: stable_how::UNSTABLE,
                data: Opaque::borrowed(&data[offset..end]),
            };
            let ok = check(rpc!(c, "WRITE", path, write, &args)?, "WRITE", path)?;
            if ok.count == 0 {
                return Err(NfsError::Protocol(format!(
                    "WRITE {path}: the server took no bytes"
                )));
            }
            all_synced &= ok.committed == stable_how::FILE_SYNC;
            match verf {
                None => verf = Some(ok.verf.0),
                Some(v) if v != ok.verf.0 => {
                    return Err(NfsError::VerifierChanged {
                        path: path.to_owned(),
                    });
                }
                Some(_) => {}
            }
            offset += ok.count as usize;
        }
        if !all_synced || data.is_empty() {
            let args = COMMIT3args {
                file: fh.clone(),
                offset: 0,
                count: 0,
            };
            let ok = check(rpc!(c, "COMMIT", path, commit, &args)?, "COMMIT", path)?;
            if verf.is_some_and(|v| v != ok.verf.0) {
                return Err(NfsError::VerifierChanged {
                    path: path.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Every entry of directory `fh`: (name, handle, attributes), without `.`, `..` and
    /// unfinished puts' temporary files; those last modified more than [`STALE_TMP`] ago
    /// are added to `stale` when given.
    async fn readdir(
        &self,
        c: &mut Conn,
        fh: &nfs_fh3,
        path: &str,
        mut stale: Option<&mut Vec<String>>,
    ) -> Result<Vec<(String, nfs_fh3, fattr3)>, NfsError> {
        let mut out = Vec::new();
        let mut cookie = 0;
        let mut cookieverf = cookieverf3::default();
        loop {
            let args = READDIRPLUS3args {
                dir: fh.clone(),
                cookie,
                cookieverf,
                dircount: READDIR_BYTES,
                maxcount: READDIR_BYTES * 4,
            };
            let ok = check(
                rpc!(c, "READDIRPLUS", path, readdirplus, &args)?,
                "READDIRPLUS",
                path,
            )?;
            cookieverf = ok.cookieverf;
            let n = ok.reply.entries.0.len();
            for e in ok.reply.entries.0 {
                cookie = e.cookie;
                let Ok(name) = std::str::from_utf8(e.name.as_ref()) else {
                    continue;
                };
                if name.starts_with(TMP_PREFIX) {
                    if let (Some(stale), Nfs3Option::Some(a)) =
                        (stale.as_deref_mut(), &e.name_attributes)
                        && stale_since(a, std::time::SystemTime::now())
                    {
                        stale.push(name.to_owned());
                    }
                    continue;
                }
                if name == "." || name == ".." {
                    continue;
                }
                let name = name.to_owned();
                let child = format!("{path}/{name}");
                let (h, a) = match (e.name_handle, e.name_attributes) {
                    (Nfs3Option::Some(h), Nfs3Option::Some(a)) => (h, a),
                    (Nfs3Option::Some(h), Nfs3Option::None) => {
                        let a = self.getattr(c, &h, &child).await?;
                        (h, a)
                    }
                    _ => match self.lookup(c, fh, &name, &child).await {
                        Ok(found) => found,
                        // Removed since the listing.
                        Err(e) if e.status() == Some(nfsstat3::NFS3ERR_NOENT) => continue,
                        Err(e) => return Err(e),
                    },
                };
                out.push((name, h, a));
            }
            if ok.reply.eof {
                return Ok(out);
            }
            if n == 0 {
                return Err(NfsError::Protocol(format!(
                    "READDIRPLUS {path}: no entries and no end"
                )));
            }
        }
    }
}

/// Asks the portmapper for the TCP port of `prog`/`vers`.
async fn getport(
    client: &mut PortmapperClient<TokioIo<TcpStream>>,
    prog: u32,
    vers: u32,
    what: &str,
    label: &str,
    timeout: Duration,
) -> Result<u16, NfsError> {
    let tcp = nfs3_client::nfs3_types::portmap::IPPROTO_TCP;
    match tokio::time::timeout(timeout, client.getport(prog, vers, tcp)).await {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(PortmapError::ProgramUnavailable)) => Err(NfsError::Portmap {
            addr: label.to_owned(),
            reason: format!(
                "no {what} service over TCP is registered (is the NFS server running, with NFSv3?)"
            ),
        }),
        Ok(Err(e)) => Err(NfsError::Portmap {
            addr: label.to_owned(),
            reason: e.to_string(),
        }),
        Err(_) => Err(NfsError::Timeout {
            op: "GETPORT".into(),
            addr: label.to_owned(),
            secs: timeout.as_secs(),
        }),
    }
}

impl Inner {
    /// Asks the NFS port for NFSv3's NULL procedure: Err naming the versions it serves
    /// when it answers that v3 is not one of them; Ok when it serves v3 or cannot tell.
    async fn refuse_without_v3(&self, addr: SocketAddr) -> Result<(), NfsError> {
        let Ok(io) = connect(addr, self.cfg.connect_timeout).await else {
            return Ok(());
        };
        let mut client = Nfs3Client::new(io);
        match tokio::time::timeout(self.cfg.rpc_timeout, client.null()).await {
            Ok(Err(RpcError::ProgMismatch { low, high })) => Err(NfsError::NoNfsV3 {
                addr: addr.to_string(),
                low,
                high,
            }),
            _ => Ok(()),
        }
    }

    fn addr_label(&self, port: u16) -> String {
        format!("{}:{port}", self.cfg.server)
    }

    /// The mounted session, mounting the export when there is none.
    async fn session(&self) -> Result<Arc<Session>, NfsError> {
        let mut s = self.session.lock().await;
        if let Some(s) = s.as_ref() {
            return Ok(s.clone());
        }
        let fresh = Arc::new(self.mount().await?);
        *s = Some(fresh.clone());
        Ok(fresh)
    }

    async fn reset(&self, stale: &Arc<Session>) {
        let mut s = self.session.lock().await;
        if s.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, stale)) {
            *s = None;
        }
    }

    async fn resolve(&self) -> Result<std::net::IpAddr, NfsError> {
        let server = self.cfg.server.as_str();
        if let Ok(ip) = server.parse() {
            return Ok(ip);
        }
        let lookup = tokio::time::timeout(
            self.cfg.connect_timeout,
            tokio::net::lookup_host((server, 0)),
        )
        .await;
        let err = |reason: String| NfsError::Resolve {
            server: server.to_owned(),
            reason,
        };
        match lookup {
            Err(_) => Err(err("no answer from the resolver".into())),
            Ok(Err(e)) => Err(err(e.to_string())),
            Ok(Ok(mut addrs)) => addrs
                .next()
                .map(|a| a.ip())
                .ok_or_else(|| err("no address".into())),
        }
    }

    /// The MOUNT and NFS ports (the portmapper's unless given) and a connection to MOUNT.
    async fn mount_connection(
        &self,
        ip: std::net::IpAddr,
    ) -> Result<(TokioIo<TcpStream>, SocketAddr, u16), NfsError> {
        let cfg = &self.cfg;
        let (mount_port, nfs_port) = match (cfg.mount_port, cfg.port) {
            (Some(m), Some(n)) => (m, n),
            (m, n) => {
                let pm = SocketAddr::new(ip, PORTMAPPER_PORT);
                let label = self.addr_label(PORTMAPPER_PORT);
                let io = connect(pm, cfg.connect_timeout).await?;
                let mut client = PortmapperClient::new(io);
                let m = match m {
                    Some(m) => m,
                    None => {
                        getport(
                            &mut client,
                            nfs3_client::nfs3_types::mount::PROGRAM,
                            nfs3_client::nfs3_types::mount::VERSION,
                            "MOUNT v3",
                            &label,
                            cfg.rpc_timeout,
                        )
                        .await?
                    }
                };
                let n = match n {
                    Some(n) => n,
                    None => {
                        getport(
                            &mut client,
                            nfs3_client::nfs3_types::nfs3::PROGRAM,
                            nfs3_client::nfs3_types::nfs3::VERSION,
                            "NFS v3",
                            &label,
                            cfg.rpc_timeout,
                        )
                        .await?
                    }
                };
                (m, n)
            }
        };

        let mount_addr = SocketAddr::new(ip, mount_port);
        let io = connect(mount_addr, cfg.connect_timeout).await?;
        Ok((io, mount_addr, nfs_port))
    }

    /// Finds the ports (portmapper unless given), mounts the export and asks FSINFO.
    async fn mount(&self) -> Result<Session, NfsError> {
        let cfg = &self.cfg;
        let ip = self.resolve().await?;
        let (io, mount_addr, nfs_port) = match self.mount_connection(ip).await {
            Ok(found) => found,
            Err(e) => {
                // No MOUNT service found: a server of NFSv4 alone says so on its NFS port.
                let port = cfg.port.unwrap_or(NFS4_PORT);
                self.refuse_without_v3(SocketAddr::new(ip, port)).await?;
                return Err(e);
            }
        };
        let mut mc =
            MountClient::new_with_auth(io, self.credential.clone(), opaque_auth::default());
        let (root, rest) = self.mnt(&mut mc, mount_addr).await?;
        let session = Session {
            addr: SocketAddr::new(ip, nfs_port),
            root,
            rsize: MAX_IO,
            wsize: MAX_IO,
            credential: self.credential.clone(),
            connect_timeout: cfg.connect_timeout,
            rpc_timeout: cfg.rpc_timeout,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(tokio::sync::Semaphore::new(cfg.connections.max(1))),
            dirs: Mutex::new(HashMap::new()),
        };
        let session = Arc::new(session);
        let mut c = session.conn().await?;
        let args = FSINFO3args {
            fsroot: session.root.clone(),
        };
        let info = check(
            rpc!(&mut c, "FSINFO", &cfg.export, fsinfo, &args)?,
            "FSINFO",
            &cfg.export,
        )?;
        // The directories below the mounted one that the server would not mount directly.
        let mut root = session.root.clone();
        let mut path = String::new();
        for d in &rest {
            path = format!("{path}/{d}");
            root = match session.lookup(&mut c, &root, d, &path).await {
                Ok((h, a)) if a.type_ == ftype3::NF3DIR => h,
                Ok(_)
                | Err(NfsError::Status {
                    status: nfsstat3::NFS3ERR_NOENT,
                    ..
                }) => {
                    return Err(NfsError::NoSuchExport {
                        export: cfg.export.clone(),
                        status: format!("{} has no directory {path}", mount_addr),
                    });
                }
                Err(e) => return Err(e),
            };
        }
        drop(c);
        let pick = |max: u32, pref: u32| {
            let mut v = if pref > 0 { pref } else { max };
            if max > 0 {
                v = v.min(max);
            }
            if v == 0 { 64 << 10 } else { v.min(MAX_IO) }
        };
        let mut session = Arc::try_unwrap(session)
            .map_err(|_| NfsError::Protocol("the new session is still in use".into()))?;
        session.root = root;
        session.rsize = pick(info.rtmax, info.rtpref);
        session.wsize = pick(info.wtmax, info.wtpref);
        session.forget_dirs();
        Ok(session)
    }

    /// MNT of the export. A directory below an export that the server will not mount
    /// itself is reached by mounting the longest exported prefix and looking up the rest.
    /// When nothing mounts, the server's export list (MOUNT's EXPORT, what `showmount -e`
    /// prints) tells a missing export from one this host may not mount: servers answer
    /// MNT3ERR_ACCES for both.
    async fn mnt(
        &self,
        mc: &mut MountClient<TokioIo<TcpStream>>,
        addr: SocketAddr,
    ) -> Result<(nfs_fh3, Vec<String>), NfsError> {
        let cfg = &self.cfg;
        let timeout = |op: &str| NfsError::Timeout {
            op: op.into(),
            addr: addr.to_string(),
            secs: cfg.rpc_timeout.as_secs(),
        };
        let parts: Vec<&str> = cfg.export.split('/').filter(|p| !p.is_empty()).collect();
        let mut refusal = None;
        for keep in (1.min(parts.len())..=parts.len()).rev() {
            let dir = format!("/{}", parts[..keep].join("/"));
            let r = tokio::time::timeout(
                cfg.rpc_timeout,
                mc.mnt(dirpath(Opaque::borrowed(dir.as_bytes()))),
            )
            .await
            .map_err(|_| timeout("MNT"))?;
            match r {
                Ok(ok) => {
                    // 0 = AUTH_NONE, 1 = AUTH_SYS; anything else (Kerberos) is not spoken here.
                    if !ok.auth_flavors.is_empty()
                        && !ok.auth_flavors.iter().any(|f| *f == 0 || *f == 1)
                    {
                        return Err(NfsError::PermissionDenied {
                            what: format!(
                                "{addr} exports {dir} only with security flavors {:?} (390003-390005 are Kerberos); Shorthorn's client speaks AUTH_SYS (sec=sys)",
                                ok.auth_flavors
                            ),
                        });
                    }
                    let rest = parts[keep..].iter().map(|s| (*s).to_owned()).collect();
                    let fh = nfs_fh3 {
                        data: Opaque::owned(ok.fhandle.0.to_vec()),
                    };
                    return Ok((fh, rest));
                }
                Err(MountError::Denied(s)) => {
                    refusal.get_or_insert(s);
                }
                Err(MountError::Rpc(e)) => {
                    return Err(NfsError::Rpc {
                        op: "MNT",
                        path: dir,
                        source: e,
                    });
                }
            }
        }
        let status = refusal.map_or_else(String::new, |s| s.to_string());
        let listed = tokio::time::timeout(cfg.rpc_timeout, mc.export())
            .await
            .map_err(|_| timeout("EXPORT"))?;
        let exports: Vec<String> = match listed {
            Ok(list) => list
                .0
                .iter()
                .map(|e| String::from_utf8_lossy(e.ex_dir.0.as_ref()).into_owned())
                .collect(),
            // No list to compare with: say what the server said.
            Err(_) if matches!(refusal, Some(mountstat3::MNT3ERR_NOENT)) => {
                return Err(NfsError::NoSuchExport {
                    export: cfg.export.clone(),
                    status,
                });
            }
            Err(_) => {
                return Err(NfsError::PermissionDenied {
                    what: format!(
                        "{addr} refused to mount {} ({status}): the export is missing or not open to this host",
                        cfg.export
                    ),
                });
            }
        };
        let under = |e: &str| {
            let e = e.trim_end_matches('/');
            cfg.export == e || cfg.export.starts_with(&format!("{e}/"))
        };
        if exports.iter().any(|e| under(e)) {
            Err(NfsError::PermissionDenied {
                what: format!(
                    "{addr} refused to mount {} ({status}; check the export's client list and access type)",
                    cfg.export
                ),
            })
        } else {
            Err(NfsError::NoSuchExport {
                export: cfg.export.clone(),
                status: format!("{status}; the server exports {}", exports.join(", ")),
            })
        }
    }

    /// Runs `op` on the mounted session, again while it fails transiently (a stale handle
    /// remounts first), within the configured retries.
    async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T, NfsError>
    where
        F: FnMut(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = Result<T, NfsError>>,
    {
        let start = Instant::now();
        let mut wait = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            let r = match self.session().await {
                Ok(s) => {
                    let r = op(s.clone()).await;
                    if let Err(e) = &r
                        && e.stale()
                    {
                        s.forget_dirs();
                        self.reset(&s).await;
                    }
                    r
                }
                Err(e) => Err(e),
            };
            match r {
                Err(e)
                    if e.transient()
                        && attempt < self.cfg.max_retries
                        && start.elapsed() + wait < self.cfg.retry_timeout =>
                {
                    tracing::debug!(target = %self.cfg.url, error = %e, "NFS operation failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    fn tmp_name(&self, name: &str) -> String {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let mut t = format!(
            "{TMP_PREFIX}{}.{n}.{:x}.{name}",
            std::process::id(),
            crate::backup::now_unix_ms()
        );
        while t.len() > 255 {
            t.pop();
        }
        t
    }

    async fn put(
        &self,
        location: &Path,
        data: Bytes,
        put_mode: &PutMode,
    ) -> Result<PutResult, NfsError> {
        let (dirs, name) = split(location)?;
        let path = location.to_string();
        self.retrying(|s| {
            let (dirs, name, path, data) = (&dirs, &name, &path, data.clone());
            async move {
                let mut c = s.conn().await?;
                let dir = s.dir(&mut c, dirs, true).await?;
                let tmp = self.tmp_name(name);
                let args = CREATE3args {
                    where_: diropargs3 {
                        dir: dir.clone(),
                        name: name3(&tmp),
                    },
                    how: createhow3::GUARDED(mode(0o644)),
                };
                let ok = check(rpc!(&mut c, "CREATE", path, create, &args)?, "CREATE", path)?;
                let fh = match ok.obj {
                    Nfs3Option::Some(h) => h,
                    Nfs3Option::None => s.lookup(&mut c, &dir, &tmp, path).await?.0,
                };
                let placed = async {
                    s.write_all(&mut c, &fh, &data, path).await?;
                    match put_mode {
                        PutMode::Create => {
                            let args = LINK3args {
                                file: fh.clone(),
                                link: diropargs3 {
                                    dir: dir.clone(),
                                    name: name3(name),
                                },
                            };
                            check(rpc!(&mut c, "LINK", path, link, &args)?, "LINK", path)?;
                            s.remove(&mut c, &dir, &tmp, path).await
                        }
                        _ => {
                            let args = RENAME3args {
                                from: diropargs3 {
                                    dir: dir.clone(),
                                    name: name3(&tmp),
                                },
                                to: diropargs3 {
                                    dir: dir.clone(),
                                    name: name3(name),
                                },
                            };
                            check(rpc!(&mut c, "RENAME", path, rename, &args)?, "RENAME", path)
                                .map(|_| ())
                        }
                    }
                }
                .await;
                if let Err(e) = placed {
                    // Best effort, on a connection that still works.
                    if c.broken {
                        drop(c);
                        if let Ok(mut fresh) = s.conn().await {
                            let _ = s.remove(&mut fresh, &dir, &tmp, path).await;
                        }
                    } else {
                        let _ = s.remove(&mut c, &dir, &tmp, path).await;
                    }
                    return Err(e);
                }
                let a = s.getattr(&mut c, &fh, path).await?;
                Ok(PutResult {
                    e_tag: meta(location.clone(), &a).e_tag,
                    version: None,
                    extensions: Default::default(),
                })
            }
        })
        .await
    }

    /// The object's handle and attributes; a directory is not an object (`NotFound`).
    async fn find(
        &self,
        s: &Session,
        c: &mut Conn,
        location: &Path,
    ) -> Result<(nfs_fh3, fattr3), NfsError> {
        let (dirs, name) = split(location)?;
        let path = location.to_string();
        let dir = s.dir(c, &dirs, false).await?;
        let (fh, a) = s.lookup(c, &dir, &name, &path).await?;
        if a.type_ != ftype3::NF3REG {
            return Err(NfsError::Status {
                op: "LOOKUP",
                path,
                status: nfsstat3::NFS3ERR_NOENT,
            });
        }
        Ok((fh, a))
    }

    async fn get(
        &self,
        location: &Path,
        options: &GetOptions,
    ) -> Result<(ObjectMeta, std::ops::Range<u64>, Bytes), object_store::Error> {
        let path = location.to_string();
        let label = &path;
        let r = self
            .retrying(|s| async move {
                let path = label;
                let mut c = s.conn().await?;
                let (fh, a) = self.find(&s, &mut c, location).await?;
                let m = meta(location.clone(), &a);
                if let Err(e) = options.check_preconditions(&m) {
                    return Ok(Err(e));
                }
                let range = match &options.range {
                    Some(r) => match r.as_range(a.size) {
                        Ok(r) => r,
                        Err(e) => {
                            return Ok(Err(object_store::Error::Generic {
                                store: "NFS",
                                source: Box::new(e),
                            }));
                        }
                    },
                    None => 0..a.size,
                };
                if options.head {
                    return Ok(Ok((m, range, Bytes::new())));
                }
                let data = s.read(&mut c, &fh, range.clone(), path).await?;
                Ok(Ok((m, range, data)))
            })
            .await;
        match r {
            Ok(inner) => inner,
            Err(e) => Err(e.into_store(&path)),
        }
    }

    async fn delete(&self, location: &Path) -> Result<(), NfsError> {
        let (dirs, name) = split(location)?;
        let path = location.to_string();
        self.retrying(|s| {
            let (dirs, name, path) = (&dirs, &name, &path);
            async move {
                let mut c = s.conn().await?;
                let dir = s.dir(&mut c, dirs, false).await?;
                s.remove(&mut c, &dir, name, path).await
            }
        })
        .await
    }

    /// Every object under `prefix`, depth first.
    async fn list(&self, prefix: Option<&Path>) -> Result<Vec<ObjectMeta>, NfsError> {
        let base: Vec<String> = prefix
            .map(|p| p.parts().map(|x| x.as_ref().to_owned()).collect())
            .unwrap_or_default();
        self.retrying(|s| {
            let base = &base;
            async move {
                let mut c = s.conn().await?;
                let top = match s.dir(&mut c, base, false).await {
                    Ok(fh) => fh,
                    Err(e)
                        if matches!(
                            e.status(),
                            Some(nfsstat3::NFS3ERR_NOENT | nfsstat3::NFS3ERR_NOTDIR)
                        ) =>
                    {
                        return Ok(Vec::new());
                    }
                    Err(e) => return Err(e),
                };
                let mut out = Vec::new();
                let mut todo = vec![(base.clone(), top)];
                while let Some((dir, fh)) = todo.pop() {
                    let label = dir.join("/");
                    let mut stale = Vec::new();
                    let entries = match s.readdir(&mut c, &fh, &label, Some(&mut stale)).await {
                        Ok(v) => v,
                        // Removed while we walked.
                        Err(e) if e.status() == Some(nfsstat3::NFS3ERR_NOENT) => continue,
                        Err(e) => return Err(e),
                    };
                    for name in stale {
                        let path = format!("{label}/{name}");
                        match s.remove(&mut c, &fh, &name, &path).await {
                            Ok(()) => tracing::info!(
                                path,
                                "removed a temporary file an unfinished put left over a day ago"
                            ),
                            Err(e) => tracing::warn!(path, "removing a stale temporary file: {e}"),
                        }
                    }
                    for (name, h, a) in entries {
                        let mut child = dir.clone();
                        child.push(name);
                        match a.type_ {
                            ftype3::NF3DIR => todo.push((child, h)),
                            ftype3::NF3REG => {
                                if let Ok(p) = Path::parse(child.join("/")) {
                                    out.push(meta(p, &a));
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Ok(out)
            }
        })
        .await
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult, NfsError> {
        let base: Vec<String> = prefix
            .map(|p| p.parts().map(|x| x.as_ref().to_owned()).collect())
            .unwrap_or_default();
        self.retrying(|s| {
            let base = &base;
            async move {
                let mut result = ListResult {
                    common_prefixes: Vec::new(),
                    objects: Vec::new(),
                    extensions: Default::default(),
                };
                let mut c = s.conn().await?;
                let fh = match s.dir(&mut c, base, false).await {
                    Ok(fh) => fh,
                    Err(e)
                        if matches!(
                            e.status(),
                            Some(nfsstat3::NFS3ERR_NOENT | nfsstat3::NFS3ERR_NOTDIR)
                        ) =>
                    {
                        return Ok(result);
                    }
                    Err(e) => return Err(e),
                };
                let entries = s.readdir(&mut c, &fh, &base.join("/"), None).await?;
                for (name, _, a) in entries {
                    let mut child = base.clone();
                    child.push(name);
                    let Ok(p) = Path::parse(child.join("/")) else {
                        continue;
                    };
                    match a.type_ {
                        ftype3::NF3DIR => result.common_prefixes.push(p),
                        ftype3::NF3REG => result.objects.push(meta(p, &a)),
                        _ => {}
                    }
                }
                result.common_prefixes.sort();
                result.objects.sort_by(|a, b| a.location.cmp(&b.location));
                Ok(result)
            }
        })
        .await
    }

    async fn rename(&self, from: &Path, to: &Path, create: bool) -> Result<(), NfsError> {
        let (fdirs, fname) = split(from)?;
        let (tdirs, tname) = split(to)?;
        let path = from.to_string();
        self.retrying(|s| {
            let (fdirs, fname, tdirs, tname, path) = (&fdirs, &fname, &tdirs, &tname, &path);
            async move {
                let mut c = s.conn().await?;
                let fdir = s.dir(&mut c, fdirs, false).await?;
                let tdir = s.dir(&mut c, tdirs, true).await?;
                if create {
                    let (fh, _) = s.lookup(&mut c, &fdir, fname, path).await?;
                    let args = LINK3args {
                        file: fh,
                        link: diropargs3 {
                            dir: tdir.clone(),
                            name: name3(tname),
                        },
                    };
                    check(rpc!(&mut c, "LINK", path, link, &args)?, "LINK", path)?;
                    return s.remove(&mut c, &fdir, fname, path).await;
                }
                let args = RENAME3args {
                    from: diropargs3 {
                        dir: fdir.clone(),
                        name: name3(fname),
                    },
                    to: diropargs3 {
                        dir: tdir.clone(),
                        name: name3(tname),
                    },
                };
                check(rpc!(&mut c, "RENAME", path, rename, &args)?, "RENAME", path).map(|_| ())
            }
        })
        .await
    }
}

#[async_trait]
impl object_store::ObjectStore for NfsStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if let PutMode::Update(_) = opts.mode {
            return Err(object_store::Error::NotImplemented {
                operation: "put with PutMode::Update".into(),
                implementer: "NfsStore".into(),
            });
        }
        let data = Bytes::from(payload);
        self.inner
            .put(location, data, &opts.mode)
            .await
            .map_err(|e| e.into_store(location.as_ref()))
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(object_store::Error::NotImplemented {
            operation: "put_multipart".into(),
            implementer: "NfsStore".into(),
        })
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let (meta, range, data) = self.inner.get(location, &options).await?;
        Ok(GetResult {
            payload: GetResultPayload::Stream(
                futures::stream::once(async move { Ok(data) }).boxed(),
            ),
            meta,
            range,
            attributes: Default::default(),
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let inner = self.inner.clone();
        locations
            .then(move |p| {
                let inner = inner.clone();
                async move {
                    let p = p?;
                    inner
                        .delete(&p)
                        .await
                        .map_err(|e| e.into_store(p.as_ref()))?;
                    Ok(p)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let inner = self.inner.clone();
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            let label = prefix.as_ref().map(|p| p.to_string()).unwrap_or_default();
            inner
                .list(prefix.as_ref())
                .await
                .map_err(|e| e.into_store(&label))
        })
        .flat_map(|r| match r {
            Ok(v) => futures::stream::iter(v.into_iter().map(Ok)).boxed(),
            Err(e) => futures::stream::iter([Err(e)]).boxed(),
        })
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let label = prefix.map(|p| p.to_string()).unwrap_or_default();
        self.inner
            .list_with_delimiter(prefix)
            .await
            .map_err(|e| e.into_store(&label))
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let (_, _, data) = self.inner.get(from, &GetOptions::default()).await?;
        let mode = match options.mode {
            CopyMode::Overwrite => PutMode::Overwrite,
            CopyMode::Create => PutMode::Create,
        };
        self.inner
            .put(to, data, &mode)
            .await
            .map(|_| ())
            .map_err(|e| e.into_store(to.as_ref()))
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        let create = matches!(options.target_mode, RenameTargetMode::Create);
        self.inner
            .rename(from, to, create)
            .await
            .map_err(|e| e.into_store(from.as_ref()))
    }
}
