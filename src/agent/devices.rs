//! The device processes of the volumes attached to this node with a kernel block device
//! (`shorthorn device serve`, one per attachment): which frontend the node uses, starting
//! the process once the engine serves, telling it where the engine is after a restart,
//! stopping it on detach, and cleaning up what a device process that died left (its loop
//! device and FUSE mount). The process lives in `<disk>/devices/<volume>/`, apart from the
//! engine's directory, because it outlives engines. It never decides attachments.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use shorthorn_dataplane::device::{self, KernelSupport, Kind, loopdev};
use shorthorn_state::{Frontend, Volume};

use super::Agent;
use super::children::{Proc, Record, spawn_logged, write_record};

/// What the agent learns from a device process that is ready.
pub(super) struct Ready {
    pub(super) frontend: Frontend,
    pub(super) device: String,
}

impl Agent {
    pub(super) fn device_dir(&self, volume: &str) -> PathBuf {
        self.config.disk.join("devices").join(volume)
    }

    /// Makes sure the device process of `volume` runs and points at `endpoint`; returns the
    /// device once the process reports it ready, `Ok(None)` while it is being set up, and
    /// an error a user can act on when the node cannot give this attachment a device.
    pub(super) fn ensure_device(
        &mut self,
        volume: &Volume,
        endpoint: &str,
        setting: &str,
    ) -> anyhow::Result<Option<Ready>> {
        let asked = volume
            .attachment
            .as_ref()
            .map_or(Frontend::None, |a| a.frontend);
        let dir = self.device_dir(&volume.name);
        let endpoint_file = dir.join("endpoint");
        // Point the device at the current engine (it reads the file at every reconnect).
        if fs::read_to_string(&endpoint_file).ok().as_deref() != Some(endpoint) {
            fs::create_dir_all(&dir)?;
            let tmp = dir.join("endpoint.tmp");
            fs::write(&tmp, endpoint)?;
            fs::rename(&tmp, &endpoint_file)?;
        }
        if let Some(proc) = self.devices.get_mut(&volume.name) {
            if proc.alive() {
                let device = fs::read_to_string(dir.join("device")).ok();
                let kind: Kind = proc.record.control.parse()?;
                return Ok(device.map(|device| Ready {
                    frontend: frontend_of(kind),
                    device,
                }));
            }
            // The device is gone with its process: what the kernel had open on it fails.
            tracing::error!(volume = %volume.name, "the device process exited; setting up a new device");
            self.devices.remove(&volume.name);
            clean_up(&dir);
        }
        let kind = choose(asked, setting, &KernelSupport::probe())?;
        fs::create_dir_all(&dir)?;
        let _ = fs::remove_file(dir.join("device"));
        let mut process = Process::new(&self.config.exe);
        process
            .arg("device")
            .arg("serve")
            .arg("--volume")
            .arg(&volume.name)
            .arg("--frontend")
            .arg(kind.as_str())
            .arg("--endpoint-file")
            .arg(&endpoint_file)
            .arg("--mountpoint")
            .arg(dir.join("fuse"))
            .arg("--device-file")
            .arg(dir.join("device"));
        let child = spawn_logged(process, &dir.join("device.log"))?;
        let record = Record {
            pid: child.id() as i32,
            address: String::new(),
            epoch: 0,
            // The frontend, so that an adopted process is known by it too.
            control: kind.as_str().to_string(),
            image: String::new(),
        };
        write_record(&dir, &record)?;
        tracing::info!(volume = %volume.name, frontend = kind.as_str(), "device process started");
        self.devices.insert(
            volume.name.clone(),
            Proc {
                record,
                child: Some(child),
                control: Default::default(),
            },
        );
        Ok(None)
    }

    /// Stops the device process of `volume` (it detaches the device and flushes) and
    /// removes its directory; returns whether it is gone. A device still in use (a
    /// filesystem mounted on it) is not taken away: its process refuses, and this returns
    /// false so the detach waits; with `force` (the volume is no longer attached here) it
    /// is killed after a grace period instead.
    pub(super) fn stop_device(&mut self, volume: &str, force: bool) -> bool {
        if let Some(proc) = self.devices.get_mut(volume) {
            let pid = proc.record.pid;
            if force {
                proc.stop();
            } else {
                crate::process::signal(pid, libc::SIGTERM);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                tokio::task::block_in_place(|| {
                    while proc.alive() && std::time::Instant::now() < deadline {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                });
                if proc.alive() {
                    tracing::warn!(
                        volume,
                        "the block device is still in use (mounted?); the detach waits until it is unmounted"
                    );
                    return false;
                }
            }
            self.devices.remove(volume);
            tracing::info!(volume, "device detached");
        }
        let dir = self.device_dir(volume);
        if dir.exists() {
            clean_up(&dir);
            let _ = fs::remove_dir_all(&dir);
        }
        true
    }

    /// At start: adopts the device processes that still run, and cleans up after those
    /// that died with their loop device and mount still there.
    pub(super) fn adopt_devices(&mut self) {
        let Ok(entries) = fs::read_dir(self.config.disk.join("devices")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let dir = entry.path();
            match super::children::read_record(&dir) {
                Some(record) if crate::process::is_shorthorn(record.pid) => {
                    tracing::info!(volume = %name, pid = record.pid, "adopted a running device process");
                    self.devices.insert(
                        name,
                        Proc {
                            record,
                            child: None,
                            control: Default::default(),
                        },
                    );
                }
                _ => {
                    tracing::warn!(volume = %name, "a device process died: detaching its loop device and unmounting");
                    clean_up(&dir);
                    let _ = fs::remove_dir_all(&dir);
                }
            }
        }
    }
}

/// Detaches the loop devices over files under `dir` and unmounts its FUSE mount.
fn clean_up(dir: &Path) {
    match loopdev::clean_up(dir, &dir.join("fuse")) {
        Ok(detached) if !detached.is_empty() => {
            tracing::info!(dir = %dir.display(), ?detached, "detached stale loop devices")
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(dir = %dir.display(), "cleaning up a stale device: {err}"),
    }
}

fn frontend_of(kind: Kind) -> Frontend {
    match kind {
        Kind::Fuse => Frontend::Fuse,
        Kind::Nbd => Frontend::Nbd,
    }
}

/// The node's frontend for an attach that asked for `asked`, under the
/// `blockDeviceFrontend` setting `setting`, on a kernel offering `kernel`.
fn choose(
    asked: Frontend,
    setting: &str,
    kernel: &KernelSupport,
) -> Result<Kind, device::DeviceError> {
    let asked = match asked {
        Frontend::Fuse => Some(Kind::Fuse),
        Frontend::Nbd => Some(Kind::Nbd),
        Frontend::Auto | Frontend::None => None,
    };
    let forced = setting.parse::<Kind>().ok();
    device::choose(asked, forced, kernel)
}
