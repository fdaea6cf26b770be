//! Kernel block devices for an attached volume: the per-volume device process that holds a
//! `/dev/loopN` (over a file in its own FUSE mount) or a `/dev/nbdN`, and forwards every
//! request to the volume's engine over NBD.
//!
//! The device outlives its engine: [`upstream`] keeps every request that has no reply yet
//! and sends it again to the next engine the node agent starts (it reads the engine's
//! endpoint from a file the agent rewrites), so an engine that dies is a pause for the
//! application, not an I/O error. It never talks to a replica and never decides which
//! engine serves: the agent does, from the log.
//!
//! [`choose`] picks the frontend from what the kernel offers; it is pure, and
//! [`KernelSupport::probe`] is the only place that looks at the running kernel.

pub mod fuse;
pub mod kernel_nbd;
pub mod loopdev;
pub mod upstream;

use std::path::Path;

/// A kernel block device frontend the device process can set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A file in a FUSE mount, attached to a loop device with direct I/O: `/dev/loopN`.
    Fuse,
    /// The kernel NBD client on a socket pair: `/dev/nbdN`.
    Nbd,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Fuse => "fuse",
            Kind::Nbd => "nbd",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = DeviceError;

    fn from_str(text: &str) -> Result<Self, DeviceError> {
        match text {
            "fuse" => Ok(Kind::Fuse),
            "nbd" => Ok(Kind::Nbd),
            other => Err(DeviceError::UnknownFrontend(other.to_string())),
        }
    }
}

/// What the running kernel offers for block device frontends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelSupport {
    /// `/dev/fuse` exists.
    pub fuse: bool,
    /// `/dev/loop-control` exists (loop devices can be made).
    pub loop_control: bool,
    /// `/dev/nbd0` exists (the `nbd` driver is loaded).
    pub nbd: bool,
}

impl KernelSupport {
    /// Looks at the device nodes of this machine.
    pub fn probe() -> KernelSupport {
        KernelSupport::probe_under(Path::new("/dev"))
    }

    /// Looks at the device nodes under `dev` (a test can point it elsewhere).
    pub fn probe_under(dev: &Path) -> KernelSupport {
        KernelSupport {
            fuse: dev.join("fuse").exists(),
            loop_control: dev.join("loop-control").exists(),
            nbd: dev.join("nbd0").exists(),
        }
    }

    /// Whether `kind` can run here; if not, an error naming what the kernel lacks.
    pub fn check(&self, kind: Kind) -> Result<(), DeviceError> {
        match kind {
            Kind::Fuse if !self.fuse => Err(DeviceError::KernelLacks {
                frontend: "fuse",
                lacks: "FUSE (/dev/fuse is missing: load the fuse module)",
            }),
            Kind::Fuse if !self.loop_control => Err(DeviceError::KernelLacks {
                frontend: "fuse",
                lacks: "loop devices (/dev/loop-control is missing: load the loop module)",
            }),
            Kind::Nbd if !self.nbd => Err(DeviceError::KernelLacks {
                frontend: "nbd",
                lacks: "the nbd driver (/dev/nbd0 is missing: `modprobe nbd`, or use the fuse \
                        frontend)",
            }),
            _ => Ok(()),
        }
    }
}

/// Picks the frontend for an attach. `asked` is what the attach asked for (`None`: any);
/// `forced` is the `blockDeviceFrontend` setting (`None` for `auto`). An explicit ask wins
/// over the setting; with neither, the kernel NBD client is preferred where the kernel has
/// it (no FUSE round trip), and FUSE + loop everywhere else.
pub fn choose(
    asked: Option<Kind>,
    forced: Option<Kind>,
    kernel: &KernelSupport,
) -> Result<Kind, DeviceError> {
    if let Some(kind) = asked.or(forced) {
        kernel.check(kind)?;
        return Ok(kind);
    }
    [Kind::Nbd, Kind::Fuse]
        .into_iter()
        .find(|kind| kernel.check(*kind).is_ok())
        .ok_or(DeviceError::NoFrontend)
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("\"{0}\" is not a block device frontend (fuse or nbd)")]
    UnknownFrontend(String),
    #[error("the {frontend} frontend cannot run here: this kernel lacks {lacks}")]
    KernelLacks {
        frontend: &'static str,
        lacks: &'static str,
    },
    #[error(
        "this kernel offers no block device frontend: it has neither the nbd driver \
         (/dev/nbd0) nor FUSE with loop devices (/dev/fuse, /dev/loop-control)"
    )]
    NoFrontend,
    #[error("{doing}: {source}")]
    Io {
        doing: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Command(String),
}

impl DeviceError {
    pub(crate) fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> DeviceError {
        let doing = doing.into();
        move |source| DeviceError::Io { doing, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: KernelSupport = KernelSupport {
        fuse: true,
        loop_control: true,
        nbd: true,
    };
    // This machine's kernel: FUSE and loop, no nbd.
    const NO_NBD: KernelSupport = KernelSupport {
        fuse: true,
        loop_control: true,
        nbd: false,
    };

    #[test]
    fn auto_prefers_the_kernel_nbd_client_and_falls_back_to_fuse() {
        assert_eq!(choose(None, None, &ALL).unwrap(), Kind::Nbd);
        assert_eq!(choose(None, None, &NO_NBD).unwrap(), Kind::Fuse);
        let nothing = KernelSupport::default();
        let err = choose(None, None, &nothing).unwrap_err().to_string();
        assert!(err.contains("neither the nbd driver"), "{err}");
        let fuse_only = KernelSupport {
            fuse: true,
            ..Default::default()
        };
        let err = choose(None, None, &fuse_only).unwrap_err().to_string();
        assert!(err.contains("no block device frontend"), "{err}");
    }

    #[test]
    fn the_setting_forces_a_frontend_and_an_explicit_ask_wins_over_it() {
        assert_eq!(choose(None, Some(Kind::Fuse), &ALL).unwrap(), Kind::Fuse);
        assert_eq!(
            choose(Some(Kind::Nbd), Some(Kind::Fuse), &ALL).unwrap(),
            Kind::Nbd
        );
        assert_eq!(
            choose(Some(Kind::Fuse), Some(Kind::Nbd), &NO_NBD).unwrap(),
            Kind::Fuse
        );
    }

    #[test]
    fn nbd_on_a_kernel_without_it_names_the_missing_driver() {
        for (asked, forced) in [(Some(Kind::Nbd), None), (None, Some(Kind::Nbd))] {
            let err = choose(asked, forced, &NO_NBD).unwrap_err().to_string();
            assert_eq!(
                err,
                "the nbd frontend cannot run here: this kernel lacks the nbd driver \
                 (/dev/nbd0 is missing: `modprobe nbd`, or use the fuse frontend)"
            );
        }
        let no_loop = KernelSupport {
            fuse: true,
            loop_control: false,
            nbd: false,
        };
        let err = choose(Some(Kind::Fuse), None, &no_loop)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lacks loop devices"), "{err}");
    }

    #[test]
    fn probing_reads_the_device_nodes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            KernelSupport::probe_under(dir.path()),
            KernelSupport::default()
        );
        for node in ["fuse", "loop-control", "nbd0"] {
            std::fs::write(dir.path().join(node), b"").unwrap();
        }
        assert_eq!(KernelSupport::probe_under(dir.path()), ALL);
    }
}
