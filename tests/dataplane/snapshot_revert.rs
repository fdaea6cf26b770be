use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use crate::testkit::{Cluster, Control, eventually, qemu_io};

/// Write A, snapshot, write B, revert: A reads back and B is gone. Snapshots list, a second
/// snapshot is deleted (merged) without changing the data, revert is refused while a client
/// is attached, everything survives an engine restart, and the volume then expands.
#[test]
fn snapshot_write_revert_reads_back_a() {
    let c = Cluster::new(32 << 20);
    let _r0 = c.replica(0);
    let _r1 = c.replica(1);
    let mut e1 = c.engine(1, &[0, 1]);
    let uri = c.nbd_uri(1);
    let mut ctl = Control::connect(&c, 1);
    qemu_io(
        &uri,
        &[
            "write -P 0xaa 0 1048576",
            "write -P 0xa1 8000000 12345",
            "flush",
        ],
    );
    ctl.snapshot("create", "a").expect("snapshot a");
    assert_eq!(
        ctl.snapshot("create", "a")
            .err()
            .map(|e| e.contains("already exists")),
        Some(true)
    );
    qemu_io(
        &uri,
        &[
            "write -P 0xbb 4096 8192",
            "write -P 0xbb 2097152 1048576",
            "write -z 8000000 100",
        ],
    );
    qemu_io(
        &uri,
        &[
            "read -P 0xbb 4096 8192",
            "read -P 0x00 8000000 100",
            "read -P 0xa1 8000100 12245",
        ],
    );
    assert_eq!(ctl.snapshots(), vec!["a".to_owned()]);
    assert!(ctl.snapshot("revert", "nope").is_err());
    {
        // An attached client (EXPORT_NAME handshake, left open) blocks revert.
        let mut s = UnixStream::connect(c.nbd_socket(1)).expect("connect");
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).expect("hello");
        s.write_all(&3u32.to_be_bytes()).expect("flags");
        let mut opt = b"IHAVEOPT".to_vec();
        opt.extend_from_slice(&1u32.to_be_bytes());
        opt.extend_from_slice(&3u32.to_be_bytes());
        opt.extend_from_slice(b"vol");
        s.write_all(&opt).expect("export name");
        let mut export = [0u8; 10];
        s.read_exact(&mut export).expect("export info");
        let err = ctl
            .snapshot("revert", "a")
            .expect_err("revert with a client attached");
        assert!(err.contains("detached"), "{err}");
    }
    // qemu-io has exited, but the engine may not have seen its connection close yet.
    eventually(10, "revert once no client is attached", || {
        match ctl.snapshot("revert", "a") {
            Ok(()) => true,
            Err(e) if e.contains("detached") => false,
            Err(e) => panic!("revert to a: {e}"),
        }
    });
    qemu_io(
        &uri,
        &[
            "read -P 0xaa 0 1048576",
            "read -P 0x00 2097152 1048576",
            "read -P 0xa1 8000000 12345",
        ],
    );

    // A second snapshot, more writes, then delete it: the data is unchanged.
    ctl.snapshot("create", "b").expect("snapshot b");
    qemu_io(&uri, &["write -P 0xcc 100 100"]);
    ctl.snapshot("delete", "b").expect("delete b");
    ctl.snapshot("delete", "a").expect("delete a");
    assert!(ctl.snapshots().is_empty());
    let expect = [
        "read -P 0xaa 0 100",
        "read -P 0xcc 100 100",
        "read -P 0xaa 200 1048376",
        "read -P 0xa1 8000000 12345",
    ];
    qemu_io(&uri, &expect);

    // Restart the engine at a higher epoch: the layers reopen with the same content.
    e1.kill();
    let _e2 = c.engine(2, &[0, 1]);
    qemu_io(&c.nbd_uri(2), &expect);

    // Expand: new connections see the new size, the new range reads as zeros and takes
    // writes, the old data stays.
    let mut ctl = Control::connect(&c, 2);
    assert!(ctl.expand(16 << 20).is_err(), "shrinking is refused");
    ctl.expand(48 << 20).expect("expand");
    assert_eq!(ctl.stats().size_bytes, 48 << 20);
    let info = crate::testkit::run_ok(
        std::process::Command::new("nbdinfo")
            .arg("--size")
            .arg(c.nbd_uri(2)),
    );
    assert_eq!(info.trim(), (48u64 << 20).to_string());
    qemu_io(
        &c.nbd_uri(2),
        &[
            "read -P 0 33554432 16777216",
            "write -P 0xdd 50000000 4096",
            "read -P 0xdd 50000000 4096",
        ],
    );
    qemu_io(&c.nbd_uri(2), &expect);
}
