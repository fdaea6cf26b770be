use shorthorn_dataplane::proto;

use crate::testkit::{Cluster, Control, qemu_io};

const MIB: u64 = 1 << 20;

/// Write A, snapshot s1, write B over part of it: copying s1 into a second volume, through
/// its engine from the first volume's replicas (one of them down), gives A and zeros, never
/// B; only the blocks that hold data are written; a snapshot the replicas lack and a volume
/// too small for the snapshot are refused with the reason.
#[test]
fn a_snapshot_copied_into_another_volume_reads_as_of_the_snapshot() {
    let src = Cluster::new(32 * MIB);
    let _r0 = src.replica(0);
    let mut r1 = src.replica(1);
    let _e = src.engine(1, &[0, 1]);
    let mut ctl = Control::connect(&src, 1);
    let uri = src.nbd_uri(1);
    qemu_io(
        &uri,
        &[
            "write -P 0xaa 0 1048576",
            "write -P 0xa1 8000000 12345",
            "write -P 0xa2 33550336 4096",
            "flush",
        ],
    );
    ctl.snapshot("create", "s1").expect("snapshot s1");
    qemu_io(
        &uri,
        &[
            "write -P 0xbb 4096 8192",
            "write -P 0xbb 16777216 1048576",
            "write -z 8000000 100",
        ],
    );

    let mut dst = Cluster::new(64 * MIB);
    dst.volume = "dst".into();
    let _d0 = dst.replica(0);
    let _d1 = dst.replica(1);
    let _de = dst.engine(1, &[0, 1]);
    let mut copy = Control::connect(&dst, 1);
    let request = |snapshot: &str, size: u64| proto::StartCopyRequest {
        source_volume: "vol".into(),
        snapshot: snapshot.into(),
        source_replicas: (0..2)
            .map(|i| format!("unix:{}", src.replica_socket(i).display()))
            .collect(),
        size_bytes: size,
        concurrency: 4,
    };

    let job = copy.start_copy(request("nope", 32 * MIB)).expect("starts");
    let status = copy.wait_job(&job, 60);
    assert_eq!(status.state, proto::JobState::Error as i32, "{status:?}");
    assert!(
        status
            .error
            .contains("\"nope\" of volume \"vol\" is on none of its replicas"),
        "{status:?}"
    );
    let too_big = copy.start_copy(request("s1", 128 * MIB)).expect("starts");
    let status = copy.wait_job(&too_big, 60);
    assert!(status.error.contains("cannot be copied into"), "{status:?}");

    // One source replica is down: the other serves every read.
    r1.kill();
    let job = copy.start_copy(request("s1", 32 * MIB)).expect("starts");
    let status = copy.wait_job(&job, 120);
    assert_eq!(
        status.state,
        proto::JobState::Completed as i32,
        "{status:?}"
    );
    assert_eq!(
        status.uploaded_bytes,
        MIB + 4 * 4096 + 4096,
        "only the 4 KiB blocks holding data are written: {status:?}"
    );
    qemu_io(
        &dst.nbd_uri(1),
        &[
            "read -P 0xaa 0 1048576",
            "read -P 0x00 1048576 6951424",
            "read -P 0xa1 8000000 12345",
            "read -P 0x00 16777216 1048576",
            "read -P 0xa2 33550336 4096",
            "read -P 0x00 33554432 33554432",
        ],
    );
}
