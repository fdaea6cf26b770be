use std::process::Command;

use crate::testkit::{Cluster, run_ok};

/// qemu-io writes patterns at odd offsets and sizes (crossing 4 KiB blocks), zeroes and
/// discards odd ranges, and reads every one back with pattern checks, over two connections.
#[test]
fn qemu_io_patterns_at_odd_offsets_read_back() {
    let c = Cluster::new(64 << 20);
    let _r0 = c.replica(0);
    let _r1 = c.replica(1);
    let _e = c.engine(1, &[0, 1]);
    let write = [
        "write -P 0x11 1 1",
        "write -P 0x22 4095 2",
        "write -P 0x33 12345 70001",
        "write -P 0x44 1048575 1048577",
        "write -P 0x55 67100000 8863",
        "write -z 20000 5000",
        "write -P 0x77 4194304 1048576",
        "discard 4198400 524288",
        "aio_write -P 0x66 3000000 333",
        "aio_flush",
        "flush",
    ];
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for w in write {
        cmd.args(["-c", w]);
    }
    cmd.arg(c.nbd_uri(1));
    let out = run_ok(&mut cmd);
    assert!(!out.contains("error") && !out.contains("failed"), "{out}");
    // Read back on a fresh connection.
    let read = [
        "read -P 0x00 0 1",
        "read -P 0x11 1 1",
        "read -P 0x00 2 4093",
        "read -P 0x22 4095 2",
        "read -P 0x33 12345 7655",
        "read -P 0x00 20000 5000",
        "read -P 0x33 25000 57346",
        "read -P 0x44 1048575 1048577",
        "read -P 0x77 4194304 4096",
        "read -P 0x00 4198400 524288",
        "read -P 0x77 4722688 520192",
        "read -P 0x66 3000000 333",
        "read -P 0x55 67100000 8863",
    ];
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw", "-r"]);
    for r in read {
        cmd.args(["-c", r]);
    }
    cmd.arg(c.nbd_uri(1));
    let out = run_ok(&mut cmd);
    assert!(
        !out.contains("Pattern verification failed") && !out.contains("error"),
        "{out}"
    );
    assert_eq!(out.matches("read ").count(), read.len(), "{out}");
}
