//! Live engine upgrades on a `shorthorn dev up` cluster: a volume attached as a kernel
//! device (fuse + loop) moves its engine and then its replicas, one at a time, to a new
//! shorthorn binary while fio verifies every block it writes, and while MariaDB commits
//! on an ext4 filesystem on it; an image that cannot start leaves the old engine serving;
//! the upgrade job upgrades every volume, at most `concurrentAutomaticEngineUpgradePerNodeLimit`
//! per node, and stops at the first failure.
//!
//! The "new binary" is a copy of the binary under test at another path: the processes
//! are seen to run it through /proc/PID/exe. (tests/upgrade.rs upgrades from the binary of
//! an older commit.)

mod testkit;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use testkit::mariadb::{MariaDb, mariadb_sql};
use testkit::{BIN, DevCluster, run, text, text_of};

/// A dev cluster at cluster version 2, which engine upgrades need (the leader raises it
/// once it has seen every manager run this build).
fn up() -> DevCluster {
    let cluster = DevCluster::up();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, version) = cluster.get_of(1, "/v1/version");
        if version["clusterVersion"] == 2 {
            return cluster;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster version did not rise: {version}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A copy of the binary under test at `dir/NAME/shorthorn`: a new engine image.
fn image(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name).join("shorthorn");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("image dir");
    std::fs::copy(BIN, &path).expect("copies the binary");
    path
}

/// A shell script at `dir/NAME/shorthorn`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name).join("shorthorn");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("image dir");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    path
}

/// The binary process `pid` runs.
fn exe(pid: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default()
}

fn attach_device(cluster: &DevCluster, name: &str) -> String {
    let device = cluster
        .ok(&[
            "volume",
            "attach",
            name,
            "--node",
            "node-1",
            "--frontend",
            "fuse",
        ])
        .trim()
        .to_string();
    assert!(device.starts_with("/dev/loop"), "attach printed {device:?}");
    device
}

/// fio verifying what it writes through `device`, paced to last about `secs` seconds.
fn start_fio(device: &str, log: &Path, secs: u64) -> Child {
    testkit::fio_verify(device, log, 24_576 / secs)
}

fn fio_clean(fio: Child, log: &Path, what: &str) {
    let out = fio.wait_with_output().expect("fio");
    let report = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        out.status.success(),
        "fio failed {what}: {report}{}",
        text(&out.stderr)
    );
    assert!(report.contains("err= 0"), "{report}");
}

fn upgrade_of(cluster: &DevCluster, volume: &str) -> Value {
    cluster.json(&["upgrade", "status"])["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["volume"] == volume)
        .cloned()
        .unwrap_or_else(|| panic!("no volume {volume} in the upgrade status"))
}

fn replica_exes(cluster: &DevCluster, volume: &str) -> Vec<(String, PathBuf)> {
    cluster
        .replica_pids(volume)
        .into_iter()
        .map(|pid| {
            let exe = exe(&pid);
            (pid, exe)
        })
        .collect()
}

#[test]
fn an_attached_volume_moves_to_a_new_engine_image_under_fio_without_an_error() {
    let cluster = up();
    let work = tempfile::tempdir().expect("tempdir");
    let new = image(work.path(), "v2");
    cluster.create_volume("db", 128, 3, &[]);
    let device = attach_device(&cluster, "db");
    let engine_before = cluster.engine_pid(1, "db");
    let replicas_before = replica_exes(&cluster, "db");
    assert!(
        replicas_before
            .iter()
            .all(|(_, e)| e.as_path() == Path::new(BIN)),
        "{replicas_before:?}"
    );
    let epoch = cluster.json(&["volume", "get", "db"])["epoch"]
        .as_u64()
        .expect("epoch");

    let log = work.path().join("fio.out");
    let mut fio = start_fio(&device, &log, 45);
    std::thread::sleep(Duration::from_secs(2));
    let (ok, stdout, stderr) = cluster.cli(&[
        "upgrade",
        "volume",
        "db",
        "--image",
        new.to_str().expect("utf-8"),
        "--wait",
        "--timeout",
        "240",
    ]);
    assert!(ok, "the upgrade failed: {stdout}{stderr}");
    if let Some(status) = fio.try_wait().expect("fio") {
        panic!(
            "fio finished ({status}) before the upgrade did: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    fio_clean(fio, &log, "across the live engine upgrade");

    let volume = cluster.json(&["volume", "get", "db"]);
    assert_eq!(volume["state"], "attached", "{volume}");
    assert_eq!(volume["attachment"]["device"], device.as_str(), "{volume}");
    assert!(volume["epoch"].as_u64().expect("epoch") > epoch, "{volume}");
    assert_eq!(volume["robustness"], "healthy", "{volume}");
    let engine = cluster.engine_pid(1, "db");
    assert_ne!(engine, engine_before, "the engine process was not replaced");
    assert_eq!(exe(&engine), new, "the engine does not run the new image");
    let replicas = replica_exes(&cluster, "db");
    for (pid, exe) in &replicas {
        assert!(
            !replicas_before.iter().any(|(before, _)| before == pid),
            "replica {pid} was not restarted: {replicas:?}"
        );
        assert_eq!(
            exe, &new,
            "a replica does not run the new image: {replicas:?}"
        );
    }
    let status = upgrade_of(&cluster, "db");
    assert_eq!(status["image"], new.to_str().expect("utf-8"), "{status}");
    assert_eq!(status["upgrade"]["phase"]["phase"], "done", "{status}");
    assert_eq!(
        status["upgrade"]["replicasDone"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    let device_log = std::fs::read_to_string(cluster.dir().join("m1/disk/devices/db/device.log"))
        .unwrap_or_default();
    assert!(
        device_log.contains("replaying requests to the new engine")
            || device_log.contains("connected to the new engine"),
        "the device never went over to the new engine\n{device_log}"
    );
    cluster.detach("db");
}

#[test]
fn an_image_that_cannot_start_leaves_the_old_engine_serving() {
    let cluster = up();
    let work = tempfile::tempdir().expect("tempdir");
    cluster.create_volume("db", 128, 2, &[]);
    let device = attach_device(&cluster, "db");
    let log = work.path().join("fio.out");
    let fio = start_fio(&device, &log, 25);
    std::thread::sleep(Duration::from_secs(1));

    // Does not run at all: refused by the check, before anything stops.
    let engine = cluster.engine_pid(1, "db");
    let epoch = cluster.json(&["volume", "get", "db"])["epoch"].clone();
    let broken = script(work.path(), "broken", "echo 'cannot start' >&2\nexit 1");
    let (ok, stdout, stderr) = cluster.cli(&[
        "upgrade",
        "volume",
        "db",
        "--image",
        broken.to_str().expect("utf-8"),
        "--wait",
        "--timeout",
        "60",
    ]);
    assert!(!ok, "an image that exits 1 was taken: {stdout}");
    assert!(
        stderr.contains("failed") && stderr.contains("cannot start"),
        "{stderr}"
    );
    assert_eq!(
        cluster.engine_pid(1, "db"),
        engine,
        "the engine was replaced"
    );
    assert_eq!(exe(&engine), Path::new(BIN));
    assert_eq!(cluster.json(&["volume", "get", "db"])["epoch"], epoch);

    // Passes the check, but its engine exits at once: the old image comes back.
    let serves_nothing = script(
        work.path(),
        "serves-nothing",
        &format!(
            "if [ \"$1\" = --version ]; then exec {BIN} --version; fi\necho 'no engine here' >&2\nexit 1"
        ),
    );
    let (ok, stdout, stderr) = cluster.cli(&[
        "upgrade",
        "volume",
        "db",
        "--image",
        serves_nothing.to_str().expect("utf-8"),
        "--wait",
        "--timeout",
        "120",
    ]);
    assert!(!ok, "an image whose engine exits was taken: {stdout}");
    assert!(stderr.contains("did not start"), "{stderr}");
    let volume = cluster.wait_volume("db", "attached again", |v| v["state"] == "attached");
    assert_eq!(volume["attachment"]["device"], device.as_str(), "{volume}");
    let engine = cluster.engine_pid(1, "db");
    assert_eq!(exe(&engine), Path::new(BIN), "the old image is not back");
    let status = upgrade_of(&cluster, "db");
    assert_eq!(status["image"], "", "{status}");
    assert_eq!(status["upgrade"]["phase"]["phase"], "failed", "{status}");
    fio_clean(fio, &log, "across the failed upgrades");
    cluster.detach("db");
}

#[test]
fn mariadb_keeps_every_commit_across_a_live_engine_upgrade() {
    let cluster = up();
    let work = tempfile::tempdir().expect("tempdir");
    let new = image(work.path(), "v2");
    cluster.create_volume("db", 256, 3, &[]);
    let device = attach_device(&cluster, "db");
    run("mkfs.ext4", &["-q", &device]);
    let datadir = work.path().join("mnt");
    let rundir = work.path().join("run");
    std::fs::create_dir_all(&datadir).expect("mount point");
    std::fs::create_dir_all(&rundir).expect("run dir");
    run(
        "mount",
        &[device.as_str(), datadir.to_str().expect("utf-8")],
    );
    let unmount = Unmount(datadir.clone());
    let db = MariaDb::start(&datadir.join("mysql-data"), &rundir);
    db.sql("create database shop").expect("create database");
    db.sql("create table shop.t (id int primary key, pad varchar(200)) engine=innodb")
        .expect("create table");
    let socket = db.socket.clone();
    let upgraded = Arc::new(AtomicBool::new(false));
    let writer = {
        let upgraded = upgraded.clone();
        std::thread::spawn(move || {
            // One transaction a statement (autocommit, flushed at commit): each Ok is a
            // commit MariaDB acknowledged. Goes on for 100 commits after the upgrade.
            let mut committed = 0usize;
            let mut after = 0;
            for id in 0.. {
                let sql = format!("insert into shop.t values ({id}, repeat('x', 200))");
                if let Err(e) = mariadb_sql(&socket, &sql) {
                    return Err(format!("insert {id} failed: {e}"));
                }
                committed += 1;
                if upgraded.load(Ordering::SeqCst) {
                    after += 1;
                    if after == 100 {
                        break;
                    }
                }
            }
            Ok(committed)
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    cluster.ok(&[
        "upgrade",
        "volume",
        "db",
        "--image",
        new.to_str().expect("utf-8"),
        "--wait",
        "--timeout",
        "240",
    ]);
    upgraded.store(true, Ordering::SeqCst);
    let committed = writer
        .join()
        .expect("writer thread")
        .unwrap_or_else(|e| panic!("MariaDB stopped serving across the engine upgrade: {e}"));
    assert_eq!(exe(&cluster.engine_pid(1, "db")), new);
    let count = |db: &MariaDb| -> usize {
        db.sql("select count(*) from shop.t")
            .expect("count")
            .trim()
            .parse()
            .expect("a number")
    };
    assert_eq!(count(&db), committed, "rows lost while serving");
    db.stop();
    let db = MariaDb::start(&datadir.join("mysql-data"), &rundir);
    assert_eq!(count(&db), committed, "rows lost after a restart");
    db.stop();
    eprintln!("{committed} commits, the last 100 after the upgrade");
    drop(unmount);
    cluster.detach("db");
}

#[test]
fn the_upgrade_job_upgrades_every_volume_and_stops_at_the_first_failure() {
    let cluster = up();
    let work = tempfile::tempdir().expect("tempdir");
    let new = image(work.path(), "v2");
    cluster.create_volume("attached", 64, 2, &[]);
    cluster.create_volume("idle", 64, 2, &[]);
    attach_device(&cluster, "attached");
    let (ok, _, stderr) = cluster.cli(&["upgrade", "all", "--image", new.to_str().expect("utf-8")]);
    assert!(!ok, "the job ran with the limit at 0");
    assert!(
        stderr.contains("concurrentAutomaticEngineUpgradePerNodeLimit"),
        "{stderr}"
    );
    cluster.ok(&[
        "setting",
        "set",
        "concurrentAutomaticEngineUpgradePerNodeLimit",
        "1",
    ]);
    cluster.ok(&[
        "upgrade",
        "all",
        "--image",
        new.to_str().expect("utf-8"),
        "--wait",
        "--timeout",
        "240",
    ]);
    let status = cluster.json(&["upgrade", "status"]);
    let job = &status["job"];
    assert_eq!(job["done"].as_array().map(Vec::len), Some(2), "{status}");
    for volume in ["attached", "idle"] {
        assert_eq!(
            upgrade_of(&cluster, volume)["image"],
            new.to_str().expect("utf-8")
        );
    }
    assert_eq!(exe(&cluster.engine_pid(1, "attached")), new);
    // The detached volume's replica processes were restarted from the new image.
    let replicas = {
        let mut replicas = replica_exes(&cluster, "idle");
        for _ in 0..100 {
            if replicas.iter().all(|(_, e)| e == &new) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            replicas = replica_exes(&cluster, "idle");
        }
        replicas
    };
    assert!(replicas.iter().all(|(_, e)| e == &new), "{replicas:?}");

    // A job to an image that cannot start stops at its first volume; the other, on the
    // same node (so it waits its turn under the limit of 1), keeps its image.
    cluster.ok(&["volume", "attach", "idle", "--node", "node-1"]);
    let broken = script(work.path(), "broken", "exit 1");
    let (ok, _, stderr) = cluster.cli(&[
        "upgrade",
        "all",
        "--image",
        broken.to_str().expect("utf-8"),
        "--wait",
        "--timeout",
        "120",
    ]);
    assert!(!ok, "a job to a broken image succeeded");
    assert!(
        stderr.contains("stopped: volume attached failed"),
        "{stderr}"
    );
    let status = cluster.json(&["upgrade", "status"]);
    assert_eq!(status["job"]["done"], serde_json::json!([]), "{status}");
    for volume in ["attached", "idle"] {
        let v = upgrade_of(&cluster, volume);
        assert_eq!(v["image"], new.to_str().expect("utf-8"), "{v}");
    }
    assert_eq!(
        text_of(&upgrade_of(&cluster, "idle")["upgrade"]["image"]),
        new.to_str().expect("utf-8"),
        "the job started the second volume after the first failed"
    );
    cluster.detach("attached");
    cluster.detach("idle");
}

/// Unmounts `at` (lazily) when dropped, so a failed test leaves no mount behind.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
