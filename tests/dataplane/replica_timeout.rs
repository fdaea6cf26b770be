use std::process::Command;

use crate::testkit::{Cluster, Control, qemu_io, run, signal};

/// A replica that stops answering (SIGSTOP) is marked ERR after the --timeout and I/O goes
/// on without error; when the last replica dies, I/O fails with EIO instead of wrong data.
#[test]
fn hung_replica_times_out_and_last_loss_gives_eio() {
    let c = Cluster::new(16 << 20);
    let mut r0 = c.replica(0);
    let r1 = c.replica(1);
    let mut e = c.engine_process(1, &[0, 1], &["--timeout", "1"]);
    crate::testkit::wait_for_socket(&c.nbd_socket(1), &mut e);
    let uri = c.nbd_uri(1);
    qemu_io(&uri, &["write -P 0x11 0 65536"]);
    signal(&r1, libc::SIGSTOP);
    qemu_io(&uri, &["write -P 0x22 0 65536", "read -P 0x22 0 65536"]);
    let mut ctl = Control::connect(&c, 1);
    let info = ctl.replica(&c, 1);
    assert_eq!(info.mode, 3, "the hung replica is ERR: {info:?}");
    assert!(info.error.contains("no answer"), "{}", info.error);
    assert!(e.log_text().contains("replica_failed"));
    r0.kill();
    let out = run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read 0 4096"])
        .arg(&uri));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Input/output error"), "{text}");
    signal(&r1, libc::SIGCONT);
}
