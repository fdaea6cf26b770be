use std::os::unix::fs::FileExt;

use crate::testkit::{Cluster, Control, qemu_io};

/// Overwrites 4 KiB at `offset` of replica `i`'s head image behind its back: a bit rot,
/// a bad sector, a stray write by something else on the node.
fn corrupt(c: &Cluster, i: usize, offset: u64) {
    let image = c.path(&format!("r{i}/volume-head-001.img"));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .expect("head image");
    file.write_all_at(&[0xee; 4096], offset).expect("corrupt");
}

/// A block corrupted on one of three replicas is found by a scrub: that replica is failed
/// out of the set (reads come from the two that agree) and the chunk is named. With two
/// replicas that disagree there is no majority: the chunk is reported, nothing is failed.
#[test]
fn scrub_finds_a_corrupted_block_and_fails_the_replica_the_majority_contradicts() {
    let c = Cluster::new(8 << 20);
    let _r0 = c.replica(0);
    let _r1 = c.replica(1);
    let _r2 = c.replica(2);
    let _e1 = c.engine(1, &[0, 1, 2]);
    qemu_io(&c.nbd_uri(1), &["write -P 0x5c 0 4194304", "flush"]);
    let mut ctl = Control::connect(&c, 1);
    let clean = ctl.scrub();
    assert_eq!(clean.chunks_compared, 8, "{clean:?}");
    assert!(clean.mismatched_chunks.is_empty(), "{clean:?}");

    corrupt(&c, 1, (1 << 20) + 8192);
    let report = ctl.scrub();
    assert_eq!(report.mismatched_chunks, vec![1], "{report:?}");
    let r1 = format!("unix:{}", c.replica_socket(1).display());
    assert_eq!(report.failed, vec![r1], "{report:?}");
    assert!(report.undecided_chunks.is_empty(), "{report:?}");
    assert_eq!(ctl.replica(&c, 1).mode, 3, "the corrupted replica is ERR");
    // Every read now comes from the replicas that agree.
    qemu_io(&c.nbd_uri(1), &["read -P 0x5c 0 4194304"]);

    // Two replicas left; one goes bad: no majority.
    corrupt(&c, 2, 3 << 20);
    let report = ctl.scrub();
    assert_eq!(report.mismatched_chunks, vec![3], "{report:?}");
    assert_eq!(report.undecided_chunks, vec![3], "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
}
