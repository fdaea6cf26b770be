use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::testkit::{Cluster, Control, run, run_ok};

fn fio(c: &Cluster, epoch: u64, verify_only: bool) -> Command {
    let mut cmd = Command::new("fio");
    // fio leaves its verify state file in the working directory.
    cmd.current_dir(c.dir.path());
    cmd.args([
        "--name=verify",
        "--ioengine=nbd",
        "--rw=randwrite",
        "--bs=4k",
        "--size=96M",
        "--iodepth=32",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
        "--randseed=1234",
    ]);
    cmd.arg(format!("--uri={}", c.nbd_uri(epoch)));
    if verify_only {
        cmd.arg("--verify_only");
    }
    cmd
}

/// fio writes with crc32c verification on 3 replicas; one replica is SIGKILLed mid-run and
/// fio still finishes with no I/O error and no verify failure. The engine is then killed
/// and restarted with a higher epoch with the killed replica back (stale, kept out), and all
/// the data verifies again; an engine with the
/// old epoch is refused by the replicas, and an engine that is superseded while running
/// gets EIO instead of writing.
#[test]
fn fio_verify_survives_replica_sigkill_and_engine_restart() {
    let c = Cluster::new(128 << 20);
    let _r0 = c.replica(0);
    let mut r1 = c.replica(1);
    let _r2 = c.replica(2);
    let mut e1 = c.engine(1, &[0, 1, 2]);
    let log = c.path("fio1.log");
    let mut job = fio(&c, 1, false)
        .stdout(Stdio::from(std::fs::File::create(&log).expect("fio log")))
        .stderr(Stdio::from(
            std::fs::File::create(c.path("fio1.err")).expect("fio err"),
        ))
        .spawn()
        .expect("spawn fio");
    // Kill replica 1 once a quarter of the data has reached it.
    let head = c.path("r1").join("volume-head-001.img");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let used = std::fs::metadata(&head)
            .map(|m| m.blocks() * 512)
            .unwrap_or(0);
        if used >= 24 << 20 {
            break;
        }
        assert!(
            job.try_wait().expect("fio status").is_none(),
            "fio ended before the replica was killed"
        );
        assert!(Instant::now() < deadline, "fio made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    r1.kill();
    assert!(
        job.try_wait().expect("fio status").is_none(),
        "fio ended before the replica was killed"
    );
    let status = job.wait().expect("fio");
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let err = std::fs::read_to_string(c.path("fio1.err")).unwrap_or_default();
    assert!(
        status.success(),
        "fio failed:\n{out}\n{err}\nengine log:\n{}",
        e1.log_text()
    );
    assert!(out.contains("err= 0"), "fio reported errors:\n{out}");
    assert!(
        e1.log_text().contains("replica_failed"),
        "the engine did not report the failed replica"
    );

    // Restart the engine with a higher epoch. Replica 1 is back, but it missed writes: the
    // engine must see it is stale and keep it out; the others verify.
    e1.kill();
    let _r1 = c.replica(1);
    let mut e2 = c.engine(2, &[0, 1, 2]);
    let stale = Control::connect(&c, 2).replica(&c, 1);
    assert_eq!(stale.mode, 3, "the stale replica must not serve: {stale:?}");
    assert!(stale.error.contains("stale"), "{}", stale.error);
    let out = run(&mut fio(&c, 2, true));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "verify after restart failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("err= 0"), "{text}");
    e2.kill();

    // The old epoch is refused.
    let mut stale = c.engine_process(1, &[0, 2], &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = stale.exited() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "an engine with a stale epoch kept running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let log = stale.log_text();
    assert!(
        log.contains("older than the newest accepted epoch 2"),
        "{log}"
    );

    // An engine superseded while it runs can no longer write: EIO, not a silent write.
    let _e3 = c.engine(3, &[0, 2]);
    let _e4 = c.engine(4, &[0, 2]);
    let out = run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x99 0 4096"])
        .arg(c.nbd_uri(3)));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Input/output error"),
        "a superseded engine wrote:\n{text}"
    );
    run_ok(
        Command::new("qemu-io")
            .args([
                "-f",
                "raw",
                "-c",
                "write -P 0x98 0 4096",
                "-c",
                "read -P 0x98 0 4096",
            ])
            .arg(c.nbd_uri(4)),
    );
}
