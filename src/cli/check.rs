//! `shorthorn check`: the environment check to run on a node before installing (Longhorn's
//! `environment_check.sh`). One line per check; a failure says what to do about it. Exits
//! non-zero when a check that blocks volumes fails.

use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The directory replicas will live in (the defaultDataPath setting).
    #[arg(long, default_value = "/var/lib/shorthorn")]
    pub data_path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    /// Works, with a limit worth knowing.
    Warn,
    /// Volumes cannot work on this node until it is fixed.
    Fail,
}

struct Check {
    level: Level,
    name: &'static str,
    detail: String,
}

fn check(level: Level, name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        level,
        name,
        detail: detail.into(),
    }
}

pub fn run(args: CheckArgs) -> anyhow::Result<()> {
    let checks = vec![
        root(),
        frontends(),
        mount_propagation(&args.data_path),
        seek_data(&args.data_path),
        tools(&["mkfs.ext4", "resize2fs"], "ext4 tools", "e2fsprogs"),
        tools(&["mkfs.xfs", "xfs_growfs"], "xfs tools", "xfsprogs"),
        tools(
            &["blkid", "losetup", "mount", "umount"],
            "block tools",
            "util-linux and mount",
        ),
    ];
    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    for c in &checks {
        let tag = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => {
                failed += 1;
                "FAIL"
            }
        };
        writeln!(out, "{tag} {}: {}", c.name, c.detail)?;
    }
    anyhow::ensure!(failed == 0, "{failed} check(s) failed");
    Ok(())
}

fn root() -> Check {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        check(Level::Ok, "root", "running as root")
    } else {
        check(
            Level::Fail,
            "root",
            "not root: the node agent attaches loop devices and mounts; run the manager privileged",
        )
    }
}

fn exists(path: &str) -> bool {
    Path::new(path).exists()
}

fn module_loaded(name: &str) -> bool {
    exists(&format!("/sys/module/{name}"))
}

fn frontends() -> Check {
    let mut have = Vec::new();
    if module_loaded("nbd") || exists("/dev/nbd0") {
        have.push("nbd");
    }
    if exists("/dev/ublk-control") {
        have.push("ublk");
    }
    let fuse = exists("/dev/fuse");
    let loop_ok = exists("/dev/loop-control");
    if fuse && loop_ok {
        have.push("fuse");
    }
    if have.is_empty() {
        let mut missing = Vec::new();
        if !fuse {
            missing.push("/dev/fuse (modprobe fuse)");
        }
        if !loop_ok {
            missing.push("/dev/loop-control (modprobe loop)");
        }
        return check(
            Level::Fail,
            "block frontends",
            format!(
                "no kernel block device frontend: missing {}; or modprobe nbd",
                missing.join(", ")
            ),
        );
    }
    let level = if have.contains(&"nbd") {
        Level::Ok
    } else {
        Level::Warn
    };
    let detail = if level == Level::Ok {
        format!("available: {}", have.join(", "))
    } else {
        format!(
            "available: {} (modprobe nbd for the kernel NBD client, the faster path)",
            have.join(", ")
        )
    };
    check(level, "block frontends", detail)
}

/// The mount propagation of the mount that holds `path` (from /proc/self/mountinfo).
fn mount_propagation(path: &Path) -> Check {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return check(
            Level::Warn,
            "mount propagation",
            "cannot read /proc/self/mountinfo",
        );
    };
    let target = existing_ancestor(path);
    let mut best: Option<(&str, bool)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(mount_point) = fields.get(4) else {
            continue;
        };
        if target.starts_with(mount_point) && best.is_none_or(|(m, _)| mount_point.len() >= m.len())
        {
            let sep = fields
                .iter()
                .position(|f| *f == "-")
                .unwrap_or(fields.len());
            let shared = fields[6..sep].iter().any(|f| f.starts_with("shared:"));
            best = Some((mount_point, shared));
        }
    }
    match best {
        Some((m, true)) => check(
            Level::Ok,
            "mount propagation",
            format!("{m} is a shared mount"),
        ),
        Some((m, false)) => check(
            Level::Fail,
            "mount propagation",
            format!(
                "{m} is not a shared mount: pods would not see the volumes' mounts; run `mount --make-rshared {m}` (or fix the container runtime's MountFlags)"
            ),
        ),
        None => check(
            Level::Warn,
            "mount propagation",
            "no mount found for the data path",
        ),
    }
}

fn existing_ancestor(path: &Path) -> PathBuf {
    let mut p = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

/// Whether the data path's filesystem reports holes (replicas are sparse files).
fn seek_data(path: &Path) -> Check {
    let dir = existing_ancestor(path);
    let probe = dir.join(format!(".shorthorn-check-{}", std::process::id()));
    let result = (|| -> std::io::Result<bool> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&probe)?;
        file.write_all_at(b"x", 1 << 20)?;
        use std::os::fd::AsRawFd as _;
        // SAFETY: a valid fd; lseek has no memory effects.
        let data = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_DATA) };
        Ok(data == 1 << 20)
    })();
    let _ = std::fs::remove_file(&probe);
    match result {
        Ok(true) => check(
            Level::Ok,
            "SEEK_DATA",
            format!("{} keeps holes (sparse replicas)", dir.display()),
        ),
        Ok(false) => check(
            Level::Warn,
            "SEEK_DATA",
            format!(
                "{} does not report holes: replicas take their full size and rebuilds copy zeros; use ext4 or xfs",
                dir.display()
            ),
        ),
        Err(e) => check(
            Level::Fail,
            "SEEK_DATA",
            format!("cannot write in {}: {e}", dir.display()),
        ),
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

fn tools(names: &[&'static str], what: &'static str, package: &str) -> Check {
    let missing: Vec<&str> = names.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        check(Level::Ok, what, names.join(", "))
    } else {
        check(
            Level::Fail,
            what,
            format!("missing {}: install {package}", missing.join(", ")),
        )
    }
}
