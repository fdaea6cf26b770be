use std::process::Command;

use crate::testkit::{Cluster, Control, qemu_io, random_file, run_ok, sha256};

/// A fresh replica is added while writes go on, is rebuilt to RW, then the original
/// replicas are killed and the whole volume reads back from the rebuilt one, identical.
#[test]
fn rebuilt_replica_alone_serves_identical_data() {
    let size = 64 << 20;
    let c = Cluster::new(size);
    let mut r0 = c.replica(0);
    let mut r1 = c.replica(1);
    let _e = c.engine(1, &[0, 1]);
    let uri = c.nbd_uri(1);
    let src = c.path("src.img");
    random_file(&src, 48 << 20, 7);
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(&uri),
    );
    // What the volume holds: the image, zeros after it, and the writes made during rebuild.
    let mut expected = std::fs::read(&src).expect("src");
    expected.resize(size as usize, 0);
    let _r2 = c.replica(2);
    let mut ctl = Control::connect(&c, 1);
    let added = ctl.add_replica(&c, 2).expect("add replica");
    assert_eq!(added.rebuild_total_bytes, size);
    for (i, off) in [5u64 << 20, 30 << 20, 60 << 20].iter().enumerate() {
        let pattern = 0xc0 + i as u8;
        qemu_io(&uri, &[&format!("write -P {pattern:#x} {off} 65536")]);
        expected[*off as usize..*off as usize + 65536].fill(pattern);
    }
    let info = ctl.wait_rw(&c, 2, 120);
    assert_eq!(info.rebuild_done_bytes, size);
    r0.kill();
    r1.kill();
    let out = c.path("out.img");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(&uri)
            .arg(&out),
    );
    let want = c.path("want.img");
    std::fs::write(&want, &expected).expect("expected image");
    assert_eq!(sha256(&out), sha256(&want));
    let modes: Vec<i32> = ctl.replicas().iter().map(|r| r.mode).collect();
    assert_eq!(
        modes.iter().filter(|m| **m == 1).count(),
        1,
        "only the rebuilt replica is RW: {modes:?}"
    );
}

/// A replica that comes back after a short absence copies only the chunks written while it
/// was away, as the control stats show; then it alone serves the same data.
#[test]
fn returning_replica_copies_only_changed_chunks() {
    let size: u64 = 32 << 20;
    let c = Cluster::new(size);
    let mut r0 = c.replica(0);
    let mut r1 = c.replica(1);
    let mut r2 = c.replica(2);
    let _e = c.engine(1, &[0, 1, 2]);
    let uri = c.nbd_uri(1);
    let src = c.path("src.img");
    random_file(&src, size as usize, 11);
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(&uri),
    );
    r2.kill();
    // Two chunks change while replica 2 is away: one whole MiB and 10 bytes of another.
    qemu_io(
        &uri,
        &[
            "write -P 0x5a 5242880 1048576",
            "write -P 0x5b 20971620 10",
            "flush",
        ],
    );
    let mut ctl = Control::connect(&c, 1);
    assert_eq!(ctl.replica(&c, 2).mode, 3, "the killed replica is ERR");
    let _r2 = c.replica(2);
    ctl.add_replica(&c, 2).expect("add returning replica");
    let info = ctl.wait_rw(&c, 2, 120);
    assert_eq!(info.rebuild_chunks_compared, size >> 20);
    assert_eq!(info.rebuild_chunks_copied, 2, "{info:?}");
    assert_eq!(info.rebuild_copied_bytes, 2 << 20);
    r0.kill();
    r1.kill();
    qemu_io(
        &uri,
        &["read -P 0x5a 5242880 1048576", "read -P 0x5b 20971620 10"],
    );
    let out = c.path("out.img");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(&uri)
            .arg(&out),
    );
    let mut expected = std::fs::read(&src).expect("src");
    expected[5242880..5242880 + 1048576].fill(0x5a);
    expected[20971620..20971630].fill(0x5b);
    let want = c.path("want.img");
    std::fs::write(&want, &expected).expect("expected image");
    assert_eq!(sha256(&out), sha256(&want));
    assert!(ctl.stats().write_ops > 0);
}
