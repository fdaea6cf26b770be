//! The nbd frontend: the kernel's NBD client (`/dev/nbdN`, the `nbd` driver) connected,
//! with the classic ioctls, to one end of a socket pair whose other end this process
//! serves. Serving the kernel here rather than pointing it at the engine keeps the device
//! across engine restarts: the kernel's socket never breaks, and requests go to the engine
//! through [`Upstream`], which replays them to the next engine.
//!
//! The transmission phase it speaks with the kernel is the one in `nbd.rs` (simple
//! replies); the kernel skips the handshake in ioctl mode. Machines without the driver get
//! [`DeviceError::KernelLacks`] before anything is opened.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::upstream::{self, Upstream};
use super::{DeviceError, KernelSupport, Kind};

// The ioctls of linux/nbd.h: _IO(0xab, n).
const NBD_SET_SOCK: libc::c_ulong = 0xab00;
const NBD_SET_BLKSIZE: libc::c_ulong = 0xab01;
const NBD_DO_IT: libc::c_ulong = 0xab03;
const NBD_CLEAR_SOCK: libc::c_ulong = 0xab04;
const NBD_SET_SIZE_BLOCKS: libc::c_ulong = 0xab07;
const NBD_DISCONNECT: libc::c_ulong = 0xab08;
const NBD_SET_FLAGS: libc::c_ulong = 0xab0a;

const NBD_FLAG_HAS_FLAGS: libc::c_ulong = 1;
const NBD_FLAG_SEND_FLUSH: libc::c_ulong = 4;
const NBD_FLAG_SEND_FUA: libc::c_ulong = 8;
const NBD_FLAG_SEND_TRIM: libc::c_ulong = 32;

const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const CMD_DISC: u16 = 2;
const BLOCK: u64 = 4096;

/// A volume served as `/dev/nbdN`.
pub struct NbdDevice {
    pub device: PathBuf,
    file: std::fs::File,
    doing: Option<std::thread::JoinHandle<()>>,
}

impl NbdDevice {
    /// Connects a free `/dev/nbdN` to this process, which forwards its requests to
    /// `upstream` on `runtime`.
    pub fn attach(
        upstream: Arc<Upstream>,
        runtime: tokio::runtime::Handle,
    ) -> Result<NbdDevice, DeviceError> {
        KernelSupport::probe().check(Kind::Nbd)?;
        let device = free_device(Path::new("/sys/block"))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&device)
            .map_err(DeviceError::io(format!("opening {}", device.display())))?;
        let (kernel_end, our_end) = std::os::unix::net::UnixStream::pair()
            .map_err(DeviceError::io("making the socket pair for the nbd driver"))?;
        let fd = file.as_raw_fd();
        let size = upstream.size();
        let flags =
            NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM;
        for (request, arg, what) in [
            (NBD_SET_BLKSIZE, BLOCK as libc::c_ulong, "NBD_SET_BLKSIZE"),
            (
                NBD_SET_SIZE_BLOCKS,
                (size / BLOCK) as libc::c_ulong,
                "NBD_SET_SIZE_BLOCKS",
            ),
            (NBD_SET_FLAGS, flags, "NBD_SET_FLAGS"),
            (
                NBD_SET_SOCK,
                kernel_end.as_raw_fd() as libc::c_ulong,
                "NBD_SET_SOCK",
            ),
        ] {
            ioctl(fd, request, arg)
                .map_err(DeviceError::io(format!("{what} on {}", device.display())))?;
        }
        // NBD_DO_IT returns only when the device is disconnected.
        let doing_fd = file
            .try_clone()
            .map_err(DeviceError::io("duplicating the nbd device"))?;
        let doing = std::thread::Builder::new()
            .name("nbd-do-it".into())
            .spawn(move || {
                let _kernel_end = kernel_end;
                if let Err(e) = ioctl(doing_fd.as_raw_fd(), NBD_DO_IT, 0) {
                    tracing::info!(error = %e, "NBD_DO_IT returned");
                }
            })
            .map_err(DeviceError::io("starting the nbd thread"))?;
        our_end
            .set_nonblocking(true)
            .map_err(DeviceError::io("socket pair"))?;
        runtime.spawn(async move {
            let stream = match tokio::net::UnixStream::from_std(our_end) {
                Ok(s) => s,
                Err(e) => return tracing::error!(error = %e, "serving the nbd driver"),
            };
            let (r, w) = stream.into_split();
            if let Err(e) = serve_kernel(r, w, upstream).await {
                tracing::warn!(error = %e, "the nbd driver's connection ended");
            }
        });
        Ok(NbdDevice {
            device,
            file,
            doing: Some(doing),
        })
    }

    /// Disconnects the device (the kernel fails what is still queued once we stop).
    pub fn detach(mut self) -> Result<(), DeviceError> {
        let fd = self.file.as_raw_fd();
        let disconnected = ioctl(fd, NBD_DISCONNECT, 0);
        let _ = ioctl(fd, NBD_CLEAR_SOCK, 0);
        if let Some(doing) = self.doing.take() {
            let _ = doing.join();
        }
        disconnected.map_err(DeviceError::io(format!(
            "NBD_DISCONNECT on {}",
            self.device.display()
        )))
    }
}

fn ioctl(fd: i32, request: libc::c_ulong, arg: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: the nbd ioctls take an integer argument, not a pointer.
    let rc = unsafe { libc::ioctl(fd, request as _, arg) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The first `/dev/nbdN` that no process serves (its sysfs `pid` file is absent).
fn free_device(sys_block: &Path) -> Result<PathBuf, DeviceError> {
    let mut names: Vec<(u32, String)> = std::fs::read_dir(sys_block)
        .map_err(DeviceError::io(format!("listing {}", sys_block.display())))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n = name.strip_prefix("nbd")?.parse().ok()?;
            Some((n, name))
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .find(|(_, name)| !sys_block.join(name).join("pid").exists())
        .map(|(_, name)| PathBuf::from("/dev").join(name))
        .ok_or_else(|| {
            DeviceError::Command(
                "every /dev/nbdN is in use (load nbd with a larger nbds_max)".into(),
            )
        })
}

/// Serves the kernel's NBD requests from `r`, forwarding each to `upstream` concurrently
/// and writing replies to `w` as they complete; returns at NBD_CMD_DISC or a broken socket.
pub async fn serve_kernel<R, W>(mut r: R, mut w: W, upstream: Arc<Upstream>) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (replies, mut outgoing) = mpsc::unbounded_channel::<(u64, upstream::Reply)>();
    let writer = tokio::spawn(async move {
        while let Some((handle, reply)) = outgoing.recv().await {
            let (error, data) = match reply {
                Ok(data) => (0u32, data),
                Err(code) => (code, bytes::Bytes::new()),
            };
            let mut head = [0u8; 16];
            head[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
            head[4..8].copy_from_slice(&error.to_be_bytes());
            head[8..16].copy_from_slice(&handle.to_be_bytes());
            w.write_all(&head).await?;
            w.write_all(&data).await?;
            w.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });
    loop {
        let mut head = [0u8; 28];
        r.read_exact(&mut head).await?;
        let magic = u32::from_be_bytes(head[0..4].try_into().expect("4 bytes"));
        if magic != REQUEST_MAGIC {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("request magic {magic:#x}"),
            ));
        }
        let flags = u16::from_be_bytes([head[4], head[5]]);
        let kind = u16::from_be_bytes([head[6], head[7]]);
        let handle = u64::from_be_bytes(head[8..16].try_into().expect("8 bytes"));
        let offset = u64::from_be_bytes(head[16..24].try_into().expect("8 bytes"));
        let length = u32::from_be_bytes(head[24..28].try_into().expect("4 bytes"));
        if kind == CMD_DISC {
            break;
        }
        let data = if kind == upstream::CMD_WRITE {
            let mut data = bytes::BytesMut::zeroed(length as usize);
            r.read_exact(&mut data).await?;
            data.freeze()
        } else {
            bytes::Bytes::new()
        };
        let request = upstream::Request {
            kind,
            flags,
            offset,
            length,
            data,
        };
        let (upstream, replies) = (upstream.clone(), replies.clone());
        tokio::spawn(async move {
            let reply = upstream.call(request).await;
            let _ = replies.send((handle, reply));
        });
    }
    drop(replies);
    writer.await.map_err(std::io::Error::other)??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_device_is_one_no_process_serves() {
        let sys = tempfile::tempdir().unwrap();
        let err = free_device(sys.path()).unwrap_err().to_string();
        assert!(err.contains("every /dev/nbdN is in use"), "{err}");
        for n in [0, 1, 10] {
            std::fs::create_dir(sys.path().join(format!("nbd{n}"))).unwrap();
        }
        std::fs::create_dir(sys.path().join("loop0")).unwrap();
        std::fs::write(sys.path().join("nbd0/pid"), "42").unwrap();
        assert_eq!(free_device(sys.path()).unwrap(), PathBuf::from("/dev/nbd1"));
        std::fs::write(sys.path().join("nbd1/pid"), "43").unwrap();
        assert_eq!(
            free_device(sys.path()).unwrap(),
            PathBuf::from("/dev/nbd10")
        );
    }
}
