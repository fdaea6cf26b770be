//! Upgrades: a dev cluster started with the binary of an earlier commit (8983096, the
//! support floor; built by `tools/shorthorn-previous/build.sh`, found through
//! `SHORTHORN_BIN_8983096`) has its managers replaced one at a time by this build while fio
//! writes and verifies through an attached kernel device; and directories written by a
//! newer Shorthorn are refused, untouched, with both versions named.

mod testkit;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use testkit::{BIN, DevCluster, free_port_base, read_image, sha256, text, text_of, write_random};

/// The previous release's binary, from scripts/build-tools' environment or its cache path.
fn previous_binary() -> PathBuf {
    let path = std::env::var("SHORTHORN_BIN_8983096")
        .map(PathBuf::from)
        .unwrap_or_else(|_| "/var/tmp/shorthorn-tools/shorthorn-8983096/shorthorn".into());
    assert!(
        path.exists(),
        "the shorthorn binary of commit 8983096 is not at {}: run scripts/build-tools (it builds \
         it with tools/shorthorn-previous/build.sh, from this clone's history)",
        path.display()
    );
    path
}

/// GET `path` on manager `n`; (status, JSON body or null).
fn get(cluster: &DevCluster, n: u16, path: &str) -> (u16, Value) {
    cluster.get_of(n, path)
}

/// POST `body` to `path` on manager `n`; (status, JSON body or null).
fn post(cluster: &DevCluster, n: u16, path: &str, body: &str) -> (u16, Value) {
    cluster.post_of(n, path, body)
}

/// Waits (60 s at most) until every manager sees the same leader, three voters, and has
/// applied what the leader had committed when the wait began: the replaced manager is back
/// in the group and caught up.
fn wait_healthy(cluster: &DevCluster) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut target: Option<u64> = None;
    loop {
        let statuses: Vec<Value> = (1..=3).map(|n| get(cluster, n, "/v1/cluster").1).collect();
        let leader = &statuses[0]["leader"];
        let agreed = !leader.is_null()
            && statuses
                .iter()
                .all(|s| &s["leader"] == leader && s["voters"].as_array().map(Vec::len) == Some(3));
        if agreed {
            let leading = statuses
                .iter()
                .find(|s| &s["id"] == leader)
                .and_then(|s| s["committed"].as_u64());
            let wanted = *target.get_or_insert(leading.unwrap_or(0));
            if statuses
                .iter()
                .all(|s| s["applied"].as_u64().is_some_and(|a| a >= wanted))
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the group did not become healthy: {statuses:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The member id of the current leader.
fn leader(cluster: &DevCluster) -> u16 {
    let status = get(cluster, 1, "/v1/cluster").1;
    status["leader"].as_u64().expect("a leader") as u16
}

/// The checksum of the first `mib` MiB of the NBD export at `endpoint`.
fn checksum(endpoint: &str, mib: u64, work: &Path, name: &str) -> String {
    let image = work.join(name);
    read_image(endpoint, &image);
    let size = mib << 20;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .expect("image");
    file.set_len(size).expect("truncate to the written size");
    sha256(&image)
}

/// fio verifying what it writes through `device`, paced to outlast the three replacements
/// (about 50 s of writes).
fn start_fio(device: &str, log: &Path) -> Child {
    testkit::fio_verify(device, log, 500)
}

/// The last lines of manager `n`'s log, for failure messages.
fn log_tail(cluster: &DevCluster, n: u16) -> String {
    let log = std::fs::read_to_string(cluster.dir().join(format!("m{n}/manager.log")))
        .unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

#[test]
fn managers_replaced_one_at_a_time_by_the_new_build_keep_volumes_and_fio_writing() {
    // A cluster of the previous release (8983096) with three volumes: "db" attached as
    // /dev/loopN under fio --verify, "data" attached over NBD with a snapshot, "cold"
    // detached with a snapshot. Each manager in turn (followers first) is stopped with
    // SIGTERM and started with this build on its data directory; the next waits until the
    // group is whole again. fio ends clean, every volume and snapshot is there with the
    // same bytes, the cluster version rises to 2 only once the last manager runs this build
    // (raising it before is refused, naming the old manager), and once it did, the previous
    // build refuses the data directory a new snapshot was written to.
    let old = previous_binary();
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_port_base();
    let out = Command::new(&old)
        .args(["dev", "up", "--detach", "--port-base", &base.to_string()])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("runs the previous build's dev up");
    let cluster = DevCluster::adopt(dir, base);
    assert!(
        out.status.success(),
        "the previous build's dev up failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    cluster.ok(&["setting", "set", "storageMinimalAvailablePercentage", "0"]);
    let (status, version) = get(&cluster, 1, "/v1/version");
    assert_eq!(
        status, 404,
        "the previous build has no version route: {version}"
    );

    // "data": random bytes over NBD, a snapshot, more bytes; stays attached.
    let data = cluster.volume_with_data("data", 64, 3, &[]);
    cluster.ok(&["snapshot", "create", "data", "before-upgrade"]);
    let more = write_random(&data.endpoint, 16);
    let work = tempfile::tempdir().expect("tempdir");
    let data_sum = checksum(&data.endpoint, 64, work.path(), "data-before.img");
    // "cold": written, snapshotted and detached.
    let cold = cluster.volume_with_data("cold", 32, 2, &[]);
    cluster.ok(&["snapshot", "create", "cold", "kept"]);
    let cold_sum = checksum(&cold.endpoint, 32, work.path(), "cold-before.img");
    cluster.detach("cold");
    drop(more);
    // "db": a kernel device, with fio writing and verifying through it.
    cluster.create_volume("db", 128, 3, &[]);
    let device = cluster
        .ok(&[
            "volume",
            "attach",
            "db",
            "--node",
            "node-1",
            "--frontend",
            "fuse",
        ])
        .trim()
        .to_string();
    assert!(device.starts_with("/dev/loop"), "attach printed {device:?}");
    let engine_before = cluster.engine_pid(1, "db");
    let fio_log = work.path().join("fio.out");
    let mut fio = start_fio(&device, &fio_log);
    eprintln!("old cluster ready in {:.0?}", started.elapsed());

    let first_leader = leader(&cluster);
    let mut order: Vec<u16> = (1..=3).filter(|n| *n != first_leader).collect();
    order.push(first_leader);
    let upgrade_started = Instant::now();
    for (i, n) in order.iter().copied().enumerate() {
        if let Some(status) = fio.try_wait().expect("fio") {
            panic!(
                "fio ended ({status}) before manager {n} was replaced: {}",
                std::fs::read_to_string(&fio_log).unwrap_or_default()
            );
        }
        // The last one replaced builds state snapshots often, for the downgrade check below.
        let extra: &[&str] = if i == 2 {
            &["--snapshot-every", "20"]
        } else {
            &[]
        };
        cluster.restart_manager_as(n, "-TERM", Path::new(BIN), extra);
        wait_healthy(&cluster);
        let (status, version) = get(&cluster, n, "/v1/version");
        assert_eq!(status, 200, "{version}");
        assert_eq!(version["clusterVersionSupported"], 2, "{version}");
        if i < 2 {
            // An old manager is still a member: the cluster stays at version 1, and a raise
            // is refused with the reason.
            std::thread::sleep(Duration::from_secs(3));
            assert_eq!(version["clusterVersion"], 1, "{version}");
            let (status, body) = post(&cluster, n, "/v1/cluster/version", r#"{"version": 2}"#);
            assert_eq!(status, 409, "{body}");
            let message = text_of(&body["message"]);
            assert!(
                message.contains("runs a build before cluster versions (or does not answer), which supports cluster version 1; the cluster stays at version 1 until every manager supports 2"),
                "{message}"
            );
            assert_eq!(get(&cluster, n, "/v1/version").1["clusterVersion"], 1);
            // What needs cluster version 2 waits for it, with the reason.
            // (Asked of the replaced manager: the others may still be the previous build.)
            let out = cluster
                .command(&["upgrade", "volume", "db", "--image", BIN])
                .env("SHORTHORN_API", cluster.api_of(n))
                .output()
                .expect("runs the CLI");
            let stderr = text(&out.stderr);
            assert!(
                !out.status.success(),
                "an engine upgrade was taken at cluster version 1"
            );
            assert!(
                stderr.contains("this needs cluster version 2; the cluster runs version 1"),
                "{stderr}"
            );
        }
        eprintln!(
            "manager {n} replaced ({:.0?} into the upgrade)",
            upgrade_started.elapsed()
        );
    }
    // Every manager runs this build: the leader raises the cluster version by itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let version = get(&cluster, 1, "/v1/version").1;
        if version["clusterVersion"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster version did not rise: {version}\n{}",
            log_tail(&cluster, leader(&cluster))
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!("cluster version 2 after {:.0?}", upgrade_started.elapsed());

    let out = fio.wait_with_output().expect("fio");
    let report = std::fs::read_to_string(&fio_log).unwrap_or_default();
    assert!(
        out.status.success(),
        "fio failed across the upgrade: {report}{}",
        text(&out.stderr)
    );
    assert!(report.contains("err= 0"), "{report}");
    // The engine was adopted, not restarted: same process, same device.
    assert_eq!(cluster.engine_pid(1, "db"), engine_before);
    let db = cluster.json(&["volume", "get", "db"]);
    assert_eq!(db["state"], "attached", "{db}");
    assert_eq!(db["attachment"]["device"], device.as_str(), "{db}");

    // The adopted engine and replicas of "db" still run the previous build: a live engine
    // upgrade moves them to this one under fio, through the same device.
    let exe = |pid: &str| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    assert_eq!(exe(&engine_before), old, "the adopted engine");
    let fio_log = work.path().join("fio-engine-upgrade.out");
    let mut fio = start_fio(&device, &fio_log);
    std::thread::sleep(Duration::from_secs(2));
    let upgrade_started = Instant::now();
    cluster.ok(&[
        "upgrade",
        "volume",
        "db",
        "--image",
        BIN,
        "--wait",
        "--timeout",
        "240",
    ]);
    eprintln!(
        "engine and replicas of db upgraded from the previous build in {:.0?}",
        upgrade_started.elapsed()
    );
    assert!(
        fio.try_wait().expect("fio").is_none(),
        "fio finished before the engine upgrade did: it was not under load"
    );
    let out = fio.wait_with_output().expect("fio");
    let report = std::fs::read_to_string(&fio_log).unwrap_or_default();
    assert!(
        out.status.success() && report.contains("err= 0"),
        "fio failed across the live engine upgrade: {report}{}",
        text(&out.stderr)
    );
    assert_eq!(exe(&cluster.engine_pid(1, "db")), Path::new(BIN));
    for pid in cluster.replica_pids("db") {
        assert_eq!(exe(&pid), Path::new(BIN), "replica {pid} of db");
    }

    // Every volume and snapshot, and the same bytes.
    let volumes = cluster.json(&["volume", "ls"]);
    let mut names: Vec<String> = volumes
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| text_of(&v["name"]))
        .collect();
    names.sort();
    assert_eq!(names, ["cold", "data", "db"]);
    let snapshots = |volume: &str| -> Vec<String> {
        cluster
            .json(&["snapshot", "ls", volume])
            .as_array()
            .expect("snapshots")
            .iter()
            .map(|s| text_of(&s["name"]))
            .collect()
    };
    assert!(snapshots("data").contains(&"before-upgrade".to_string()));
    assert!(snapshots("cold").contains(&"kept".to_string()));
    assert_eq!(
        checksum(&data.endpoint, 64, work.path(), "data-after.img"),
        data_sum,
        "the attached volume's bytes changed"
    );
    let endpoint = cluster.attach("cold", "node-2");
    assert_eq!(
        checksum(&endpoint, 32, work.path(), "cold-after.img"),
        cold_sum,
        "the detached volume's bytes changed"
    );

    // Back to the previous build once the format moved: the last replaced manager wrote a
    // snapshot at cluster version 2 (format 12), which the previous build refuses.
    let last = order[2];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Entries keep coming (heartbeats); a snapshot follows every 20.
        let status = get(&cluster, last, "/v1/cluster").1;
        let raised_at = status["applied"].as_u64().unwrap_or(0);
        std::thread::sleep(Duration::from_secs(2));
        let status = get(&cluster, last, "/v1/cluster").1;
        if status["snapshot"].as_u64().is_some_and(|s| s > raised_at) {
            break;
        }
        assert!(Instant::now() < deadline, "no new snapshot: {status}");
    }
    let args = cluster.stop_manager(last, "-TERM");
    let mut downgraded = Command::new(&old)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts the previous build");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = downgraded.try_wait().expect("waits") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = downgraded.kill();
            panic!("the previous build started on a data directory of format 12");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = text(&downgraded.wait_with_output().expect("stderr").stderr);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("encoded state has format version 12; this build reads version 11"),
        "{stderr}"
    );
    cluster.start_manager_as(last, Path::new(BIN), &args, &[]);
    wait_healthy(&cluster);
    cluster.detach("cold");
    cluster.detach("db");
    eprintln!("whole test {:.0?}", started.elapsed());
}

/// The files under `dir` with their bytes, sorted, to compare before and after.
fn listing(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read");
                files.push((path, bytes));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn a_data_directory_of_a_newer_format_is_refused_untouched_naming_both_versions() {
    // A manager data directory whose FORMAT says format 2, written by Shorthorn 9.1.0:
    // `shorthorn manager` exits non-zero with both versions named, and the directory holds
    // the same files, byte for byte (no sled database, no node id).
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(
        data.join("FORMAT"),
        r#"{"format": 2, "writtenBy": "9.1.0"}"#,
    )
    .expect("FORMAT");
    std::fs::write(dir.path().join("token"), "t0ken\n").expect("token");
    let before = listing(&data);
    let base = free_port_base();
    let out = Command::new(BIN)
        .args(["manager", "--node-id", "1"])
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{}", base + 11)])
        .args(["--api-listen", &format!("127.0.0.1:{}", base + 1)])
        .arg("--token-file")
        .arg(dir.path().join("token"))
        .output()
        .expect("runs the manager");
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let expected = format!(
        "the data directory {} has format 2, written by Shorthorn 9.1.0, a newer version; this \
         build (Shorthorn {}) reads data directory formats up to 1: run Shorthorn 9.1.0 or newer \
         on it",
        data.display(),
        env!("CARGO_PKG_VERSION")
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(listing(&data), before, "the refused directory was changed");
}

#[test]
fn a_replica_directory_of_a_newer_format_is_refused_untouched_naming_both_versions() {
    // A replica directory made by this build, its volume.meta then marked format 2 (with a
    // field this build does not know): `shorthorn replica serve` exits non-zero with both
    // versions named and leaves every file as it was.
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = dir.path().join("r1");
    let port = free_port_base() + 1;
    let mut first = Command::new(BIN)
        .args(["replica", "serve", "--size", "4M"])
        .arg("--dir")
        .arg(&replica)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts a replica");
    let meta = replica.join("volume.meta");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !meta.exists() {
        assert!(
            Instant::now() < deadline,
            "the replica never wrote volume.meta"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = first.kill();
    let _ = first.wait();
    let mut record: Value =
        serde_json::from_slice(&std::fs::read(&meta).expect("meta")).expect("JSON");
    record["format"] = 2.into();
    record["layers"] = "a field of format 2".into();
    std::fs::write(&meta, serde_json::to_vec(&record).expect("JSON")).expect("meta");
    let before = listing(&replica);
    let out = Command::new(BIN)
        .args(["replica", "serve"])
        .arg("--dir")
        .arg(&replica)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .output()
        .expect("runs the replica");
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let expected = format!(
        "the replica directory {} has format 2, written by a newer Shorthorn; this build \
         (Shorthorn {}) reads replica formats up to 1: run a newer Shorthorn on it",
        replica.display(),
        env!("CARGO_PKG_VERSION")
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(
        listing(&replica),
        before,
        "the refused directory was changed"
    );
}
