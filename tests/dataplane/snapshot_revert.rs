use crate::testkit::{Cluster, Control, eventually, qemu_io};

/// Write A, snapshot, write B, revert: A reads back and B is gone. Snapshots list, a second
/// snapshot is deleted (merged) without changing the data, revert is refused while a client
/// is attached, and everything survives an engine restart.
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
}
