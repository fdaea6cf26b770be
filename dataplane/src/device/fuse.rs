//! The fuse frontend: the volume as one file (`<mountpoint>/<volume>`) in a FUSE mount this
//! process serves, attached to a loop device with direct I/O so that the kernel sees
//! `/dev/loopN`. The loop device sends reads and writes straight to the file (no page cache
//! in between) and turns a flush of the block device (a filesystem's fsync, a FUA write)
//! into an fsync of the file, which becomes an NBD FLUSH to the engine.
//!
//! It holds no data: every read and write is a request to the engine through [`Upstream`],
//! answered when the engine answers. It never truncates or grows the file on request: the
//! size is the engine's.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, Session, WriteFlags,
};
use tokio::runtime::Handle;

use super::DeviceError;
use super::loopdev;
use super::upstream::Upstream;

const VOLUME_INODE: INodeNo = INodeNo(2);
/// Attributes are cached this long; the size changes only when the volume is expanded.
const TTL: Duration = Duration::from_secs(1);
/// Largest READ or WRITE the kernel sends us (its limit is 256 pages with FUSE_MAX_PAGES).
const MAX_IO: u32 = 1 << 20;

/// The FUSE filesystem: a root directory holding the volume's file.
struct VolumeFs {
    file_name: OsString,
    upstream: Arc<Upstream>,
    runtime: Handle,
    mounted_at: SystemTime,
}

impl VolumeFs {
    fn attr(&self, ino: INodeNo) -> FileAttr {
        let (kind, perm, size, nlink) = if ino == VOLUME_INODE {
            (FileType::RegularFile, 0o600, self.upstream.size(), 1)
        } else {
            (FileType::Directory, 0o700, 0, 2)
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        }
    }
}

fn errno(code: u32) -> Errno {
    Errno::from_i32(code as i32)
}

impl Filesystem for VolumeFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_background(128);
        let _ = config.set_congestion_threshold(96);
        // Direct I/O from the loop device arrives asynchronously; let the kernel send it
        // as it comes instead of one request at a time.
        let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == self.file_name {
            reply.entry(&TTL, &self.attr(VOLUME_INODE), fuser::Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT || ino == VOLUME_INODE {
            reply.attr(&TTL, &self.attr(ino));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // The size is the volume's: `shorthorn volume expand` changes it, a truncate cannot.
        if size.is_some_and(|s| s != self.upstream.size()) {
            reply.error(Errno::EPERM);
        } else {
            reply.attr(&TTL, &self.attr(ino));
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino == VOLUME_INODE {
            // No page cache for the volume's file: every read and write reaches the engine.
            reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        } else {
            reply.error(Errno::EISDIR);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != VOLUME_INODE {
            return reply.error(Errno::EISDIR);
        }
        let end = self.upstream.size();
        let length = (end.saturating_sub(offset)).min(u64::from(size)) as u32;
        if length == 0 {
            return reply.data(&[]);
        }
        let upstream = self.upstream.clone();
        self.runtime.spawn(async move {
            match upstream.read(offset, length).await {
                Ok(data) => reply.data(&data),
                Err(code) => reply.error(errno(code)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino != VOLUME_INODE {
            return reply.error(Errno::EISDIR);
        }
        if offset.saturating_add(data.len() as u64) > self.upstream.size() {
            return reply.error(Errno::ENOSPC);
        }
        // O_SYNC / O_DSYNC opens ask for every write to be durable: FUA.
        let fua = flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0;
        let length = data.len() as u32;
        let data = Bytes::copy_from_slice(data);
        let upstream = self.upstream.clone();
        self.runtime.spawn(async move {
            match upstream.write(offset, data, fua).await {
                Ok(()) => reply.written(length),
                Err(code) => reply.error(errno(code)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(): nothing is cached here, and close is no durability point (fsync is).
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let upstream = self.upstream.clone();
        self.runtime.spawn(async move {
            match upstream.flush().await {
                Ok(()) => reply.ok(),
                Err(code) => reply.error(errno(code)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, OsStr::new(".")),
            (INodeNo::ROOT, FileType::Directory, OsStr::new("..")),
            (
                VOLUME_INODE,
                FileType::RegularFile,
                self.file_name.as_os_str(),
            ),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// A volume served as `/dev/loopN`: the FUSE mount and the loop device over its file.
pub struct FuseDevice {
    pub device: PathBuf,
    pub mountpoint: PathBuf,
    /// The volume's file in the mount.
    file: PathBuf,
    session: Option<BackgroundSession>,
}

impl FuseDevice {
    /// Mounts the FUSE filesystem at `mountpoint` (created if missing) and attaches its
    /// volume file to a new loop device with direct I/O.
    pub fn attach(
        volume: &str,
        mountpoint: &Path,
        upstream: Arc<Upstream>,
        runtime: Handle,
    ) -> Result<FuseDevice, DeviceError> {
        std::fs::create_dir_all(mountpoint).map_err(DeviceError::io(format!(
            "creating {}",
            mountpoint.display()
        )))?;
        let fs = VolumeFs {
            file_name: OsString::from(volume),
            upstream,
            runtime,
            mounted_at: SystemTime::now(),
        };
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(format!("shorthorn:{volume}")),
            MountOption::Subtype("shorthorn".into()),
            MountOption::NoAtime,
            MountOption::NoDev,
            MountOption::NoSuid,
        ];
        config.n_threads = Some(2);
        config.clone_fd = true;
        let session = Session::new(fs, mountpoint, &config)
            .and_then(Session::spawn)
            .map_err(DeviceError::io(format!(
                "mounting FUSE at {}",
                mountpoint.display()
            )))?;
        let file = mountpoint.join(volume);
        let mut attached = FuseDevice {
            device: PathBuf::new(),
            mountpoint: mountpoint.to_path_buf(),
            file: file.clone(),
            session: Some(session),
        };
        attached.device = loopdev::attach(&file)?;
        Ok(attached)
    }

    /// Makes the kernel see a new size of the volume file (after [`Upstream::refresh_size`]):
    /// drops the cached attributes, reads them again, and has the loop device take the
    /// file's size (`losetup --set-capacity`).
    pub fn resize(&self) -> Result<(), DeviceError> {
        if let Some(session) = &self.session {
            session
                .notifier()
                .inval_inode(VOLUME_INODE, 0, 0)
                .map_err(DeviceError::io("invalidating the FUSE file's attributes"))?;
        }
        std::fs::metadata(&self.file)
            .map_err(DeviceError::io(format!("stat {}", self.file.display())))?;
        loopdev::set_capacity(&self.device)
    }

    /// Detaches the loop device and unmounts. The loop device goes at once when nothing
    /// holds it open; when a filesystem is still mounted on it, the kernel detaches it
    /// when that is unmounted, and the FUSE mount is unmounted lazily.
    pub fn detach(mut self) -> Result<(), DeviceError> {
        let detached = loopdev::detach(&self.device);
        if let Some(session) = self.session.take()
            && let Err(e) = session.umount_and_join()
        {
            tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "the FUSE mount is busy (a filesystem is still mounted on the loop device?); unmounting it lazily");
            loopdev::unmount_lazily(&self.mountpoint);
        }
        detached
    }
}

impl Drop for FuseDevice {
    fn drop(&mut self) {
        if self.session.is_some() {
            let _ = loopdev::detach(&self.device);
        }
    }
}
