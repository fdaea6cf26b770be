use crate::testkit::{Cluster, Control, eventually, qemu_io};

/// A replica killed (abort) at each step of a snapshot create, delete or revert reopens
/// with either the whole operation or none of it, its data intact, and takes the next
/// snapshot operation (no leftover file collides).
#[test]
fn replica_crashed_mid_snapshot_operation_reopens_consistent() {
    // (crash point, operation, snapshots after the restart, revert took effect)
    let cases = [
        ("snapshot-create:linked", "create", &[][..], false),
        ("snapshot-create:committed", "create", &["a"][..], false),
        ("snapshot-delete:merged", "delete", &["a"][..], false),
        ("snapshot-delete:committed", "delete", &[][..], false),
        ("snapshot-revert:created", "revert", &["a"][..], false),
        ("snapshot-revert:committed", "revert", &["a"][..], true),
    ];
    for (point, op, left, reverted) in cases {
        let c = Cluster::new(8 << 20);
        let mut r0 = c.replica_with_env(0, &[("SHORTHORN_CRASH_POINT", point)]);
        let mut e1 = c.engine(1, &[0]);
        let mut ctl = Control::connect(&c, 1);
        qemu_io(&c.nbd_uri(1), &["write -P 0xaa 0 1048576", "flush"]);
        if op != "create" {
            ctl.snapshot("create", "a").expect("snapshot a");
            qemu_io(&c.nbd_uri(1), &["write -P 0xbb 0 4096", "flush"]);
        }
        if op == "revert" {
            // qemu-io has gone, but the engine may not have seen its connection close.
            eventually(
                10,
                "revert attempted once no client is attached",
                || !matches!(ctl.snapshot("revert", "a"), Err(e) if e.contains("detached")),
            );
        } else {
            let _ = ctl.snapshot(op, "a");
        }
        eventually(10, &format!("the replica aborted at {point}"), || {
            r0.exited().is_some()
        });
        e1.kill();

        let _r0 = c.replica(0);
        let _e2 = c.engine(2, &[0]);
        let mut ctl = Control::connect(&c, 2);
        let names = ctl.snapshots();
        assert_eq!(names, left, "{point}: snapshots after the restart");
        let first_block = if op == "create" || reverted {
            "read -P 0xaa 0 4096"
        } else {
            "read -P 0xbb 0 4096"
        };
        qemu_io(&c.nbd_uri(2), &[first_block, "read -P 0xaa 4096 1044480"]);
        // The next operation finds no leftover in its way.
        ctl.snapshot("create", "b")
            .unwrap_or_else(|e| panic!("{point}: snapshot b after the restart: {e}"));
        ctl.snapshot("delete", "b")
            .unwrap_or_else(|e| panic!("{point}: delete b after the restart: {e}"));
    }
}
