use crate::testkit::{Cluster, Control, eventually, qemu_io};

/// A replica rebuilt from scratch gets the volume's snapshot layers, not only its data:
/// once the original replicas are gone, it alone lists the snapshots and reverts to each.
#[test]
fn a_rebuilt_replica_carries_the_snapshot_layers() {
    let c = Cluster::new(8 << 20);
    let mut r0 = c.replica(0);
    let mut r1 = c.replica(1);
    let mut e1 = c.engine(1, &[0, 1]);
    let uri = c.nbd_uri(1);
    let mut ctl = Control::connect(&c, 1);
    qemu_io(&uri, &["write -P 0xa1 0 1048576", "flush"]);
    ctl.snapshot("create", "s1").expect("s1");
    qemu_io(&uri, &["write -P 0xb2 0 524288", "flush"]);
    ctl.snapshot("create", "s2").expect("s2");
    qemu_io(&uri, &["write -P 0xc3 0 4096", "flush"]);

    let _r2 = c.replica(2);
    ctl.add_replica(&c, 2).expect("add r2");
    // It joins the set once it has the layers, then rebuilds its head.
    let address = format!("unix:{}", c.replica_socket(2).display());
    eventually(30, "r2 read-write", || {
        ctl.replicas()
            .iter()
            .any(|r| r.address == address && r.mode == 1)
    });
    e1.kill();
    r0.kill();
    r1.kill();

    let _e2 = c.engine(2, &[2]);
    let mut ctl = Control::connect(&c, 2);
    assert_eq!(ctl.snapshots(), vec!["s1".to_owned(), "s2".to_owned()]);
    let uri = c.nbd_uri(2);
    qemu_io(
        &uri,
        &[
            "read -P 0xc3 0 4096",
            "read -P 0xb2 4096 520192",
            "read -P 0xa1 524288 524288",
        ],
    );
    for (snapshot, checks) in [
        (
            "s2",
            &["read -P 0xb2 0 524288", "read -P 0xa1 524288 524288"][..],
        ),
        ("s1", &["read -P 0xa1 0 1048576"][..]),
    ] {
        // qemu-io has gone, but the engine may not have seen its connection close yet.
        eventually(10, &format!("revert to {snapshot}"), || {
            match ctl.snapshot("revert", snapshot) {
                Ok(()) => true,
                Err(e) if e.contains("detached") => false,
                Err(e) => panic!("revert to {snapshot}: {e}"),
            }
        });
        qemu_io(&uri, checks);
    }
}
