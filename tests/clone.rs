//! Volumes created from a snapshot of another volume, and clones, end to end on a `shorthorn
//! dev up` cluster: real manager, replica and engine processes, qemu-img and qemu-io writing
//! and reading the volumes over NBD, the CLI as a user runs it, sha256 of what was written
//! against what the new volume reads. Faults are real: the source's replica processes
//! paused with SIGSTOP, the copying node's manager and the copying engine SIGKILLed.

mod testkit;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::{DevCluster, export_size, read_image, run, sha256, text_of, write_random};

const MIB: u64 = 1 << 20;

/// The first `len` bytes of `image` into `into`; its sha256. The rest of `image` must be
/// zeros.
fn head_and_zeros(image: &Path, len: u64, into: &Path) -> String {
    let bytes = std::fs::read(image).expect("read image");
    assert!(
        bytes[len as usize..].iter().all(|b| *b == 0),
        "past the copied data the volume reads zeros"
    );
    std::fs::write(into, &bytes[..len as usize]).expect("head");
    sha256(into)
}

/// Reads volume `name` (attached on `node` for it) into `path`.
fn read_volume(cluster: &DevCluster, name: &str, node: &str, path: &Path) -> String {
    let endpoint = cluster.attach(name, node);
    read_image(&endpoint, path);
    endpoint
}

#[test]
fn a_volume_from_a_snapshot_holds_the_snapshots_bytes_not_later_writes() {
    // 24 MiB of random bytes, snapshot s1, then 4 MiB overwritten: the volume created from
    // s1 reads the 24 MiB as they were at s1 and zeros after them; bad sources and sizes
    // are refused with the reason.
    let cluster = DevCluster::up();
    cluster.create_volume("src", 64, 2, &[]);
    let endpoint = cluster.attach("src", "node-1");
    let written = write_random(&endpoint, 24);
    cluster.ok(&["snapshot", "create", "src", "s1"]);
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x5a 8M 4M", &endpoint],
    );

    for (args, says) in [
        (
            vec!["--from-snapshot", "src/nope"],
            "snapshot \"src/nope\" not found",
        ),
        (
            vec!["--from-snapshot", "ghost/s1"],
            "volume \"ghost\" not found",
        ),
        (
            vec!["--from-snapshot", "src/s1", "--size", "32Mi"],
            "cannot hold snapshot \"src/s1\"",
        ),
        (vec!["--from-snapshot", "src"], "VOLUME/SNAPSHOT"),
        (vec!["--clone", "ghost"], "volume \"ghost\" not found"),
    ] {
        let mut all = vec!["volume", "create", "bad"];
        all.extend(args.iter().copied());
        let (ok, out, err) = cluster.cli(&all);
        assert!(!ok && err.contains(says), "{args:?}: {out}{err}");
    }
    let (_, out, _) = cluster.cli(&["volume", "get", "bad"]);
    assert!(out.is_empty(), "no volume was left behind: {out}");

    let v = cluster.json(&[
        "volume",
        "create",
        "dst",
        "--from-snapshot",
        "src/s1",
        "--replicas",
        "2",
        "--wait",
    ]);
    assert_eq!(v["restore"]["state"], "completed", "{v}");
    assert_eq!(v["restore"]["snapshot"]["volume"], "src", "{v}");
    assert_eq!(v["size"].as_u64(), Some(64 * MIB), "the snapshot's size");
    let work = written.work.path();
    let endpoint = read_volume(&cluster, "dst", "node-2", &work.join("dst.img"));
    assert_eq!(export_size(&endpoint), 64 * MIB);
    assert_eq!(
        head_and_zeros(&work.join("dst.img"), 24 * MIB, &work.join("head.img")),
        sha256(&written.data),
        "the copy holds the snapshot's bytes, not the later writes"
    );
    // The copy is a volume of its own: writes to it leave the source alone.
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x11 0 1M", &endpoint],
    );
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0x5a 8M 4M",
            &cluster_endpoint(&cluster, "src"),
        ],
    );
}

fn cluster_endpoint(cluster: &DevCluster, name: &str) -> String {
    text_of(&cluster.json(&["volume", "get", name])["attachment"]["endpoint"])
}

#[test]
fn a_clone_of_a_detached_volume_copies_it_as_it_is() {
    // A detached 3-replica volume with 16 MiB written: `--clone` snapshots it (attaching it
    // internally for that), copies the snapshot into the clone, and leaves the source
    // detached with the snapshot kept; the clone reads the same bytes.
    let cluster = DevCluster::up();
    cluster.create_volume("src", 32, 3, &[]);
    let endpoint = cluster.attach("src", "node-1");
    let written = write_random(&endpoint, 16);
    cluster.detach("src");

    let v = cluster.json(&["volume", "create", "twin", "--clone", "src", "--wait"]);
    assert_eq!(v["restore"]["state"], "completed", "{v}");
    assert_eq!(v["restore"]["snapshot"]["snapshot"], "clone-twin", "{v}");
    let src = cluster.wait_volume("src", "detached again", |v| v["state"] == "detached");
    assert_eq!(src["snapshots"]["clone-twin"]["state"], "ready", "{src}");
    let work = written.work.path();
    read_volume(&cluster, "twin", "node-3", &work.join("twin.img"));
    assert_eq!(
        head_and_zeros(&work.join("twin.img"), 16 * MIB, &work.join("head.img")),
        sha256(&written.data)
    );
    // Copied: the source is free to go, and the clone keeps its bytes.
    cluster.ok(&["volume", "delete", "src"]);
    cluster.ok(&["volume", "wait", "src", "--for", "deleted"]);
    let endpoint = cluster_endpoint(&cluster, "twin");
    read_image(&endpoint, &work.join("again.img"));
    assert_eq!(
        sha256(&work.join("again.img")),
        sha256(&work.join("twin.img"))
    );
}

#[test]
fn a_manager_restarted_and_an_engine_killed_mid_copy_do_not_leave_it_stuck() {
    // The source's replica processes are paused (SIGSTOP) while a volume is copied from
    // its snapshot: the copy waits; users cannot attach the new volume, delete the
    // snapshot or the source; the copying node's manager is SIGKILLed and started again,
    // then the copying engine is SIGKILLed. Once the replicas run again the copy completes
    // and the new volume reads the snapshot's bytes.
    let cluster = DevCluster::up();
    cluster.create_volume("src", 64, 2, &[]);
    let endpoint = cluster.attach("src", "node-1");
    let written = write_random(&endpoint, 48);
    cluster.ok(&["snapshot", "create", "src", "s1"]);
    cluster.detach("src");
    let paused = cluster.replica_pids("src");
    assert_eq!(paused.len(), 2);
    for pid in &paused {
        run("kill", &["-STOP", pid]);
    }
    // Whatever happens below, the replicas run again.
    struct Resume(Vec<String>);
    impl Drop for Resume {
        fn drop(&mut self) {
            for pid in &self.0 {
                let _ = std::process::Command::new("kill")
                    .args(["-CONT", pid])
                    .status();
            }
        }
    }
    let resume = Resume(paused);

    cluster.ok(&[
        "volume",
        "create",
        "dst",
        "--from-snapshot",
        "src/s1",
        "--replicas",
        "2",
    ]);
    let v = cluster.wait_volume("dst", "attached for its copy", |v| v["state"] == "attached");
    assert_eq!(v["restore"]["state"], "inProgress", "{v}");
    assert!(
        text_of(&v["attachment"]["endpoint"]).is_empty(),
        "no frontend: {v}"
    );
    let node = text_of(&v["attachment"]["node"]);
    let n: u16 = node
        .trim_start_matches("node-")
        .parse()
        .expect("node number");
    let (ok, _, err) = cluster.cli(&["volume", "attach", "dst", "--node", &node]);
    assert!(
        !ok && err.contains("being copied from snapshot \"src/s1\""),
        "{err}"
    );
    let (ok, _, err) = cluster.cli(&["snapshot", "delete", "src", "s1"]);
    assert!(
        !ok && err.contains("being copied into volume \"dst\""),
        "{err}"
    );
    let (ok, _, err) = cluster.cli(&["volume", "delete", "src"]);
    assert!(!ok && err.contains("source of volume \"dst\""), "{err}");

    let log = cluster.dir().join(format!("m{n}/manager.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("copy started")) {
        assert!(Instant::now() < deadline, "the copy never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.restart_manager(n);
    let v = cluster.json(&["volume", "get", "dst"]);
    assert_eq!(
        v["restore"]["state"], "inProgress",
        "it cannot finish while the source is paused: {v}"
    );
    let epoch = v["epoch"].as_u64().expect("epoch");
    run("kill", &["-9", &cluster.engine_pid(n, "dst")]);
    let v = cluster.wait_volume("dst", "under a new engine", |v| {
        v["epoch"].as_u64() > Some(epoch) && v["state"] == "attached"
    });
    assert_eq!(v["restore"]["state"], "inProgress", "{v}");
    drop(resume);

    let v: Value = cluster.json(&[
        "volume",
        "wait",
        "dst",
        "--for",
        "copied",
        "--timeout",
        "300",
    ]);
    assert_eq!(v["restore"]["state"], "completed", "{v}");
    let work = written.work.path();
    read_volume(&cluster, "dst", "node-1", &work.join("dst.img"));
    assert_eq!(
        head_and_zeros(&work.join("dst.img"), 48 * MIB, &work.join("head.img")),
        sha256(&written.data)
    );
    // Copied: the snapshot and the source can go now.
    cluster.ok(&["snapshot", "delete", "src", "s1"]);
}
