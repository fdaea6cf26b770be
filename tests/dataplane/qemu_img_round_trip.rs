use std::process::Command;

use crate::testkit::{Cluster, random_file, run_ok, sha256};

/// qemu-img converts a 256 MiB random image into a 2-replica volume over NBD and back out;
/// both copies have the same sha256, and so does a read through nbdcopy.
#[test]
fn qemu_img_convert_256_mib_round_trip_is_identical() {
    let c = Cluster::new(256 << 20);
    let _r0 = c.replica(0);
    let _r1 = c.replica(1);
    let _e = c.engine(1, &[0, 1]);
    let src = c.path("src.img");
    random_file(&src, 256 << 20, 0x5eed);
    let info = run_ok(Command::new("nbdinfo").arg(c.nbd_uri(1)));
    assert!(
        info.contains("268435456"),
        "nbdinfo does not show the size:\n{info}"
    );
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(c.nbd_uri(1)),
    );
    let out = c.path("out.img");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(c.nbd_uri(1))
            .arg(&out),
    );
    assert_eq!(sha256(&src), sha256(&out));
    let out2 = c.path("out2.img");
    run_ok(Command::new("nbdcopy").arg(c.nbd_uri(1)).arg(&out2));
    assert_eq!(sha256(&src), sha256(&out2));
}
