//! `shorthorn device`: the per-volume device process the node agent starts for an
//! attachment that asked for a kernel block device. It holds the device (`/dev/loopN` over
//! its FUSE mount, or `/dev/nbdN`) and forwards its requests to whichever engine the agent
//! last wrote to the endpoint file, so the device outlives engine restarts.

use std::path::PathBuf;

use anyhow::Context;
use shorthorn_dataplane::device::fuse::FuseDevice;
use shorthorn_dataplane::device::kernel_nbd::NbdDevice;
use shorthorn_dataplane::device::upstream::{EndpointFile, Upstream};
use shorthorn_dataplane::device::{DeviceError, KernelSupport, Kind};

#[derive(Debug, clap::Subcommand)]
pub enum DeviceCommand {
    /// Serve one volume as a kernel block device until SIGTERM.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The volume name (the FUSE file's name and the NBD export).
    #[arg(long)]
    volume: String,
    /// fuse (FUSE file + loop device) or nbd (the kernel NBD client).
    #[arg(long)]
    frontend: Kind,
    /// The file holding the engine's endpoint (`nbd://HOST:PORT/EXPORT`), read again at
    /// every reconnection.
    #[arg(long)]
    endpoint_file: PathBuf,
    /// Where the FUSE filesystem is mounted (fuse frontend).
    #[arg(long)]
    mountpoint: PathBuf,
    /// Where the device path is written once the device is ready.
    #[arg(long)]
    device_file: PathBuf,
}

pub fn run(cmd: DeviceCommand) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::Serve(args) => serve(args),
    }
}

enum Held {
    Fuse(FuseDevice),
    Nbd(NbdDevice),
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    KernelSupport::probe().check(args.frontend)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    runtime.block_on(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let upstream = tokio::select! {
            upstream = Upstream::start(EndpointFile(args.endpoint_file.clone())) => upstream,
            _ = terminate.recv() => return Ok(()),
        };
        let volume = args.volume.clone();
        let mountpoint = args.mountpoint.clone();
        let (up, rt) = (upstream.clone(), handle.clone());
        let held = tokio::task::spawn_blocking(move || match args.frontend {
            Kind::Fuse => FuseDevice::attach(&volume, &mountpoint, up, rt).map(Held::Fuse),
            Kind::Nbd => NbdDevice::attach(up, rt).map(Held::Nbd),
        })
        .await??;
        let device = match &held {
            Held::Fuse(d) => d.device.clone(),
            Held::Nbd(d) => d.device.clone(),
        };
        let tmp = args.device_file.with_extension("tmp");
        std::fs::write(&tmp, device.display().to_string())
            .and_then(|()| std::fs::rename(&tmp, &args.device_file))
            .with_context(|| format!("writing {}", args.device_file.display()))?;
        tracing::info!(volume = %args.volume, device = %device.display(), frontend = args.frontend.as_str(), "block device ready");
        let mut interrupt =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        // SIGUSR1 from the agent: the volume was expanded.
        let mut expanded =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
        let endpoint = EndpointFile(args.endpoint_file.clone());
        loop {
            tokio::select! {
                _ = terminate.recv() => {
                    // Taking the device from under a mounted filesystem would lose what it
                    // has not written back yet: refuse until it is unmounted.
                    if shorthorn_dataplane::device::loopdev::in_use(&device) {
                        tracing::warn!(device = %device.display(), "refusing to detach: the device is in use (a filesystem is mounted on it?); unmount it and the detach completes");
                        continue;
                    }
                    break;
                }
                _ = interrupt.recv() => break,
                _ = expanded.recv() => {
                    match upstream.refresh_size(&endpoint).await {
                        Ok(size) => {
                            let resized = match &held {
                                Held::Fuse(d) => tokio::task::block_in_place(|| d.resize()),
                                Held::Nbd(_) => Err(DeviceError::Command(
                                    "online expansion of the nbd frontend is not supported; \
                                     detach and attach again"
                                        .into(),
                                )),
                            };
                            match resized {
                                Ok(()) => tracing::info!(size, device = %device.display(), "the device took the volume's new size"),
                                Err(err) => tracing::warn!(size, device = %device.display(), "resizing the device: {err}"),
                            }
                        }
                        Err(err) => tracing::warn!("reading the expanded size: {err}"),
                    }
                }
            }
        }
        tracing::info!(volume = %args.volume, device = %device.display(), "detaching the block device");
        let detached = tokio::task::spawn_blocking(move || match held {
            Held::Fuse(d) => d.detach(),
            Held::Nbd(d) => d.detach(),
        })
        .await?;
        // Whatever the kernel sent before the detach is answered by now; make it durable.
        if let Err(code) = upstream.flush().await {
            tracing::warn!(errno = code, "the engine failed the last flush");
        }
        let _ = std::fs::remove_file(&args.device_file);
        detached?;
        Ok(())
    })
}
