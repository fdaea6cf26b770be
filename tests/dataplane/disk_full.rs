use std::path::PathBuf;
use std::process::Command;

use crate::testkit::{Cluster, Control, qemu_io, random_file, run_ok, sha256};

/// A tmpfs of `mib` MiB mounted at `path` for the test, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    /// `None` where this machine does not let us mount (the test then says it skipped).
    fn mount(path: PathBuf, mib: u64) -> Option<SmallDisk> {
        std::fs::create_dir_all(&path).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("runs mount");
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(SmallDisk(path))
    }

    fn grow(&self, mib: u64) {
        run_ok(Command::new("mount").args([
            "-o",
            &format!("remount,size={mib}m"),
            self.0.to_str().expect("utf-8 path"),
        ]));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A replica whose disk fills up fails (ENOSPC is an I/O error) and the writes go on on
/// the other one with no error to the client and nothing lost; alone on a full disk no
/// engine starts over it (it cannot record the epoch), the replica process stays up, and
/// once there is room again it serves.
#[test]
fn replica_on_a_full_disk_fails_cleanly_and_serves_again_once_there_is_room() {
    let c = Cluster::new(16 << 20);
    let Some(disk) = SmallDisk::mount(c.path("r1"), 4) else {
        return;
    };
    let _r0 = c.replica(0);
    let mut r1 = c.replica(1);
    let _e1 = c.engine(1, &[0, 1]);
    let data = c.path("data.img");
    random_file(&data, 16 << 20, 7);
    run_ok(Command::new("qemu-img").args([
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        "raw",
        data.to_str().expect("path"),
        &c.nbd_uri(1),
    ]));
    let mut ctl = Control::connect(&c, 1);
    let info = ctl.replica(&c, 1);
    assert_eq!(
        info.mode, 3,
        "the replica on the full disk is ERR: {info:?}"
    );
    let back = c.path("back.img");
    run_ok(Command::new("qemu-img").args([
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        &c.nbd_uri(1),
        back.to_str().expect("path"),
    ]));
    assert_eq!(sha256(&data), sha256(&back), "a write was lost");
    assert!(r1.exited().is_none(), "the full disk crashed the replica");

    // Alone on the full disk it cannot even record a new epoch: an engine over it refuses
    // to start and says why; the replica stays up.
    let mut e2 = c.engine_process(2, &[1], &[]);
    crate::testkit::eventually(15, "the engine over the full disk to exit", || {
        e2.exited().is_some()
    });
    let log = e2.log_text();
    assert!(log.contains("No space left on device"), "{log}");
    assert!(r1.exited().is_none(), "the full disk crashed the replica");

    // Room again: a new engine over it takes the same writes.
    disk.grow(64);
    let _e3 = c.engine(3, &[1]);
    qemu_io(
        &c.nbd_uri(3),
        &[
            "write -P 0x44 8388608 4194304",
            "flush",
            "read -P 0x44 8388608 4194304",
        ],
    );
}
