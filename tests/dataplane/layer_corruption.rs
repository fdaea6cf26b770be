use std::process::Command;

use crate::testkit::{Cluster, run};

/// A truncated head image and then a corrupted sidecar are each reported when the replica
/// opens, naming the file, and the replica refuses to serve.
#[test]
fn truncated_or_corrupted_layer_is_named_at_open() {
    let c = Cluster::new(16 << 20);
    let mut r = c.replica(0);
    r.kill();
    let dir = c.path("r0");
    let head = dir.join("volume-head-001.img");
    let serve = || {
        run(Command::new(crate::testkit::BIN)
            .args(["replica", "serve", "--listen"])
            .arg(format!("unix:{}", c.replica_socket(0).display()))
            .arg("--dir")
            .arg(&dir))
    };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&head)
        .expect("head image");
    f.set_len(1 << 20).expect("truncate");
    let out = serve();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("volume-head-001.img is truncated"), "{err}");
    f.set_len(16 << 20).expect("restore length");
    std::fs::write(
        dir.join("volume-head-001.img.meta"),
        b"{\"format\": 1, garbage",
    )
    .expect("corrupt");
    let out = serve();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("volume-head-001.img.meta is corrupted"),
        "{err}"
    );
}
