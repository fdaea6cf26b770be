//! Kernel block devices on a `shorthorn dev up` cluster: volumes attached with the fuse
//! frontend (a FUSE file attached to a loop device with direct I/O) are formatted with
//! mkfs.ext4 / mkfs.xfs, mounted and written by the real kernel, moved between nodes and
//! grown online; an engine SIGKILLed under fio or a file writer is restarted behind the
//! same device (and, without a device, at the same NBD endpoint); devices left by a
//! crashed agent are cleaned up, and a mounted device is not detached from under its
//! filesystem.
//!
//! These tests need root, /dev/fuse and loop devices (this machine has them); nbd is not
//! in this kernel, and the nbd frontend's refusal is tested here too.

mod testkit;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use testkit::{DevCluster, random_file, read_image, run, sha256, text, write_random};

/// A filesystem mounted by the test, unmounted on drop (lazily when a test failed while
/// it was busy), so that a failure leaves no mount behind.
struct Mounted {
    at: tempfile::TempDir,
    mounted: bool,
}

impl Mounted {
    fn new(device: &str) -> Mounted {
        let at = tempfile::tempdir().expect("mount point");
        run("mount", &[device, at.path().to_str().expect("utf-8")]);
        Mounted { at, mounted: true }
    }

    fn path(&self) -> &Path {
        self.at.path()
    }

    fn unmount(mut self) {
        run("umount", &[self.at.path().to_str().expect("utf-8")]);
        self.mounted = false;
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.at.path())
                .status();
        }
    }
}

/// `volume attach NAME --node NODE --frontend FRONTEND`; returns the device it printed.
fn attach_device(cluster: &DevCluster, name: &str, node: &str, frontend: &str) -> String {
    let device = cluster
        .ok(&[
            "volume",
            "attach",
            name,
            "--node",
            node,
            "--frontend",
            frontend,
        ])
        .trim()
        .to_string();
    assert!(
        device.starts_with("/dev/loop"),
        "attach printed {device:?}, not a loop device"
    );
    let volume = cluster.json(&["volume", "get", name]);
    assert_eq!(volume["attachment"]["device"], device.as_str(), "{volume}");
    assert_eq!(volume["attachment"]["frontend"], "fuse", "{volume}");
    device
}

/// The loop devices whose backing file is under `dir`.
fn loops_under(dir: &Path) -> Vec<String> {
    run(
        "losetup",
        &[
            "--list",
            "--noheadings",
            "--raw",
            "--output",
            "NAME,BACK-FILE",
        ],
    )
    .lines()
    .filter(|l| l.contains(dir.to_str().expect("utf-8")))
    .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
    .collect()
}

/// The mounts (mount points) under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/mounts")
        .expect("mounts")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .filter(|m| m.starts_with(dir.to_str().expect("utf-8")))
        .collect()
}

/// Writes `count` files of `mib` MiB of random bytes into `dir`; returns their checksums.
fn write_files(dir: &Path, count: usize, mib: u64) -> Vec<(PathBuf, String)> {
    (0..count)
        .map(|i| {
            let path = dir.join(format!("file-{i}"));
            random_file(&path, mib);
            let sum = sha256(&path);
            (path.strip_prefix(dir).expect("under").to_path_buf(), sum)
        })
        .collect()
}

fn check_files(dir: &Path, files: &[(PathBuf, String)]) {
    for (name, sum) in files {
        assert_eq!(
            &sha256(&dir.join(name)),
            sum,
            "{} read back different bytes",
            name.display()
        );
    }
}

fn engine_pid(cluster: &DevCluster, n: u16, volume: &str) -> i32 {
    let record = cluster
        .dir()
        .join(format!("m{n}/disk/engines/{volume}/process.json"));
    let text = std::fs::read_to_string(&record).expect("engine record");
    serde_json::from_str::<Value>(&text).expect("JSON")["pid"]
        .as_i64()
        .expect("pid") as i32
}

/// Formats, fills, moves and reads back one filesystem type.
fn filesystem_survives_detach_and_reattach_elsewhere(fs: &str, mkfs: &[&str]) {
    let cluster = DevCluster::up();
    cluster.create_volume("db", 512, 3, &[]);
    let device = attach_device(&cluster, "db", "node-1", "fuse");
    let mut args = mkfs.to_vec();
    args.push(&device);
    run(args[0], &args[1..]);
    let mounted = Mounted::new(&device);
    let files = write_files(mounted.path(), 4, 8);
    run("sync", &["-f", mounted.path().to_str().expect("utf-8")]);
    check_files(mounted.path(), &files);
    mounted.unmount();
    cluster.detach("db");
    let m1 = cluster.dir().join("m1");
    assert_eq!(
        loops_under(&m1),
        Vec::<String>::new(),
        "detach left a loop device"
    );
    assert_eq!(
        mounts_under(&m1),
        Vec::<String>::new(),
        "detach left a FUSE mount"
    );

    // On another node, asking for whatever the kernel offers (fuse here: no nbd).
    let device = attach_device(&cluster, "db", "node-2", "auto");
    let blkid = run("blkid", &["-o", "value", "-s", "TYPE", &device]);
    assert_eq!(blkid.trim(), fs, "blkid sees no {fs} on {device}");
    let mounted = Mounted::new(&device);
    check_files(mounted.path(), &files);
    mounted.unmount();
    cluster.detach("db");

    // And back on the first node: the same bytes.
    let device = attach_device(&cluster, "db", "node-1", "fuse");
    let mounted = Mounted::new(&device);
    check_files(mounted.path(), &files);
    mounted.unmount();
    cluster.detach("db");
    let m2 = cluster.dir().join("m2");
    assert_eq!(
        loops_under(&m2),
        Vec::<String>::new(),
        "detach left a loop device"
    );
}

#[test]
fn ext4_on_the_fuse_device_survives_detach_and_reattach_on_another_node() {
    // mkfs.ext4 on /dev/loopN of node-1, files written and synced, unmounted and detached;
    // attached on node-2 (frontend auto) and again on node-1: the same files, byte for byte.
    filesystem_survives_detach_and_reattach_elsewhere("ext4", &["mkfs.ext4", "-q", "-F"]);
}

#[test]
fn xfs_on_the_fuse_device_survives_detach_and_reattach_on_another_node() {
    // The same with XFS, whose log writes use flush + FUA.
    filesystem_survives_detach_and_reattach_elsewhere("xfs", &["mkfs.xfs", "-q", "-f"]);
}

#[test]
fn the_nbd_frontend_on_a_kernel_without_nbd_is_refused_with_the_reason() {
    // This kernel has no nbd driver: asking for the nbd frontend fails with a sentence
    // naming what is missing, and the volume can be detached and attached with fuse.
    if Path::new("/dev/nbd0").exists() {
        eprintln!("this kernel has nbd; the refusal cannot be tested here");
        return;
    }
    let cluster = DevCluster::up();
    cluster.create_volume("db", 64, 1, &[]);
    let (ok, _, stderr) = cluster.cli(&[
        "volume",
        "attach",
        "db",
        "--node",
        "node-1",
        "--frontend",
        "nbd",
    ]);
    assert!(!ok, "attaching with nbd succeeded on a kernel without nbd");
    assert!(
        stderr.contains("this kernel lacks the nbd driver (/dev/nbd0 is missing"),
        "{stderr}"
    );
    let volume = cluster.json(&["volume", "get", "db"]);
    assert!(
        volume["attachment"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("nbd driver")),
        "{volume}"
    );
    cluster.detach("db");
    attach_device(&cluster, "db", "node-1", "fuse");
    cluster.detach("db");
}

/// Waits until the volume is attached again under an epoch above `above` and returns it.
fn wait_restarted(cluster: &DevCluster, above: u64) -> Value {
    cluster.wait_volume("db", "attached under a bigger epoch", |v| {
        v["state"] == "attached" && v["epoch"].as_u64().is_some_and(|e| e > above)
    })
}

fn kill(pid: i32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

#[test]
fn engine_killed_under_fio_is_restarted_behind_the_same_device() {
    // fio writes through /dev/loopN with direct I/O and verifies what it wrote; the engine
    // is SIGKILLed twice meanwhile. fio sees no I/O error and every block verifies; the
    // volume stays attached on node-1 under a bigger epoch, on the same device.
    let cluster = DevCluster::up();
    cluster.create_volume("db", 128, 3, &[]);
    let device = attach_device(&cluster, "db", "node-1", "fuse");
    let work = tempfile::tempdir().expect("tempdir");
    let log = work.path().join("fio.out");
    let mut fio: Child = Command::new("fio")
        .args([
            "--name=verify",
            &format!("--filename={device}"),
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=16",
            "--rw=randwrite",
            "--bs=4k",
            "--size=96M",
            // Paced so that the run outlasts both kills however fast the device is
            // (about 20 s of writes; fio catches up after a stall, so a slow restart
            // does not stretch it).
            "--rate_iops=1200",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            "--verify_state_save=0",
            "--output-format=normal",
        ])
        .stdout(std::fs::File::create(&log).expect("fio log"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs fio");
    let mut epoch = cluster.json(&["volume", "get", "db"])["epoch"]
        .as_u64()
        .expect("epoch");
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(2));
        if let Some(status) = fio.try_wait().expect("fio") {
            panic!(
                "fio ended ({status}) before the engine was killed: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        kill(engine_pid(&cluster, 1, "db"));
        let volume = wait_restarted(&cluster, epoch);
        assert_eq!(volume["attachment"]["node"], "node-1", "{volume}");
        assert_eq!(volume["attachment"]["device"], device.as_str(), "{volume}");
        epoch = volume["epoch"].as_u64().expect("epoch");
    }
    let out = fio.wait_with_output().expect("fio");
    let report = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.success(),
        "fio failed across the engine restarts: {report}{}",
        text(&out.stderr)
    );
    assert!(report.contains("err= 0"), "{report}");
    let device_log = std::fs::read_to_string(cluster.dir().join("m1/disk/devices/db/device.log"))
        .unwrap_or_default();
    assert!(
        device_log.contains("replaying requests to the new engine")
            || device_log.contains("connected to the new engine"),
        "the device never reconnected: the kill was not under load\n{device_log}"
    );
    cluster.detach("db");
}

#[test]
fn engine_killed_under_a_file_writer_loses_no_fsynced_file() {
    engine_lost_under_a_file_writer(false);
}

#[test]
fn engine_hung_under_a_file_writer_is_replaced_and_loses_no_fsynced_file() {
    engine_lost_under_a_file_writer(true);
}

/// A writer creates files on ext4 over the fuse device and fsyncs each one; the engine is
/// SIGKILLed while it runs (or, with `hang`, SIGSTOPped: the agent sees it stop answering,
/// kills it and starts another). The writer sees no error, and after unmount, detach and
/// attach on another node every file it fsynced reads back with its checksum.
fn engine_lost_under_a_file_writer(hang: bool) {
    // At most this many files of 1 MiB fit the volume's filesystem with room to spare.
    const MAX_FILES: u32 = 180;
    // A hung engine is replaced after 3 s without an answer here (20 s by default).
    let cluster = if hang {
        DevCluster::up_with_env(&[("SHORTHORN_ENGINE_HANG_SECS", "3")])
    } else {
        DevCluster::up()
    };
    cluster.create_volume("db", 256, 3, &[]);
    let device = attach_device(&cluster, "db", "node-1", "fuse");
    run("mkfs.ext4", &["-q", "-F", &device]);
    let mounted = Mounted::new(&device);
    let source = tempfile::tempdir().expect("tempdir");
    let data = source.path().join("data");
    random_file(&data, 32);
    let dir = mounted.path().to_str().expect("utf-8").to_string();
    let data_path = data.to_str().expect("utf-8").to_string();
    // Files of 1 MiB taken from the source, each written and fsynced (dd conv=fsync),
    // until told to stop; the count written is its result.
    let written = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (written, stop) = (written.clone(), stop.clone());
        std::thread::spawn(move || {
            for i in 0..MAX_FILES {
                if stop.load(Ordering::SeqCst) {
                    return Ok(i);
                }
                let out = Command::new("dd")
                    .arg(format!("if={data_path}"))
                    .arg(format!("of={dir}/f{i}"))
                    .args(["bs=1M", "count=1", "conv=fsync", "status=none"])
                    .arg(format!("skip={}", i % 32))
                    .output()
                    .expect("dd");
                if !out.status.success() {
                    return Err(format!("file {i}: {}", text(&out.stderr)));
                }
                written.store(i + 1, Ordering::SeqCst);
            }
            Err(format!("wrote all {MAX_FILES} files before being stopped"))
        })
    };
    let wait_written = |at_least: u32, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while written.load(Ordering::SeqCst) < at_least {
            assert!(!writer.is_finished(), "the writer ended {what}");
            assert!(Instant::now() < deadline, "the writer hangs {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_written(4, "before the engine was killed");
    let epoch = cluster.json(&["volume", "get", "db"])["epoch"]
        .as_u64()
        .expect("epoch");
    let pid = engine_pid(&cluster, 1, "db");
    if hang {
        let _ = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status();
    } else {
        kill(pid);
    }
    let volume = wait_restarted(&cluster, epoch);
    assert_eq!(volume["attachment"]["device"], device.as_str(), "{volume}");
    assert_ne!(engine_pid(&cluster, 1, "db"), pid, "a new engine process");
    if hang {
        let log = std::fs::read_to_string(cluster.dir().join("m1/manager.log")).unwrap_or_default();
        assert!(
            log.contains("the engine has not answered"),
            "restarted without the hang being seen"
        );
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|stat| stat.contains(") Z ")),
            "the hung engine {pid} is still there"
        );
    }
    let after = written.load(Ordering::SeqCst);
    wait_written(after + 8, "after the restart");
    stop.store(true, Ordering::SeqCst);
    let files = writer
        .join()
        .expect("writer")
        .expect("the writer saw an I/O error");
    mounted.unmount();
    cluster.detach("db");

    let device = attach_device(&cluster, "db", "node-2", "fuse");
    run("fsck.ext4", &["-n", &device]);
    let mounted = Mounted::new(&device);
    let piece = source.path().join("piece");
    for i in 0..files {
        run(
            "dd",
            &[
                &format!("if={}", data.display()),
                &format!("of={}", piece.display()),
                "bs=1M",
                "count=1",
                &format!("skip={}", i % 32),
                "status=none",
            ],
        );
        assert_eq!(
            sha256(&mounted.path().join(format!("f{i}"))),
            sha256(&piece),
            "file f{i} differs after the engine restart"
        );
    }
    mounted.unmount();
    cluster.detach("db");
}

/// The engine's flush count, from its control endpoint.
fn engine_flushes(cluster: &DevCluster, n: u16, volume: &str) -> u64 {
    let record = cluster
        .dir()
        .join(format!("m{n}/disk/engines/{volume}/process.json"));
    let text = std::fs::read_to_string(&record).expect("engine record");
    let control = serde_json::from_str::<Value>(&text).expect("JSON")["control"]
        .as_str()
        .expect("control")
        .to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let address = format!("tcp:{control}").parse().expect("address");
        let mut client = shorthorn_dataplane::control::connect(&address)
            .await
            .expect("engine control");
        client
            .stats(shorthorn_dataplane::proto::Empty {})
            .await
            .expect("stats")
            .into_inner()
            .flush_ops
    })
}

#[test]
fn fsync_on_the_device_and_on_its_filesystem_reaches_the_engine_as_a_flush() {
    // Direct writes to /dev/loopN without fsync send the engine no FLUSH; with fsync they
    // do (the engine acknowledges a FLUSH only once every healthy replica fsynced). The
    // same for a file on ext4 over the device (journal commits held off by commit=600).
    let cluster = DevCluster::up();
    cluster.create_volume("db", 128, 3, &[]);
    let device = attach_device(&cluster, "db", "node-1", "fuse");
    let dd = |extra: &str| {
        run(
            "dd",
            &[
                "if=/dev/urandom",
                &format!("of={device}"),
                "bs=64k",
                "count=16",
                "oflag=direct",
                extra,
                "status=none",
            ],
        )
    };
    let start = engine_flushes(&cluster, 1, "db");
    dd("conv=notrunc");
    let unflushed = engine_flushes(&cluster, 1, "db");
    assert_eq!(unflushed, start, "a write without fsync was flushed");
    dd("conv=fsync");
    let flushed = engine_flushes(&cluster, 1, "db");
    assert!(
        flushed > unflushed,
        "fsync of the device reached the engine as no flush"
    );

    run("mkfs.ext4", &["-q", "-F", &device]);
    let at = tempfile::tempdir().expect("mount point");
    let mount_at = at.path().to_str().expect("utf-8");
    run("mount", &["-o", "commit=600", &device, mount_at]);
    let mounted = Mounted { at, mounted: true };
    let file = mounted.path().join("data");
    random_file(&file, 4);
    let before = engine_flushes(&cluster, 1, "db");
    run(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", file.display()),
            "bs=64k",
            "count=16",
            "conv=fsync,notrunc",
            "status=none",
        ],
    );
    let after = engine_flushes(&cluster, 1, "db");
    assert!(
        after > before,
        "fsync on ext4 reached the engine as no flush ({before} before, {after} after)"
    );
    mounted.unmount();
    cluster.detach("db");
}

#[test]
fn a_device_left_by_a_crashed_agent_is_cleaned_up_and_set_up_again_at_start() {
    // The node agent and the device process of an attached volume both die (SIGKILL); the
    // loop device over the dead FUSE mount stays behind. The restarted agent detaches it,
    // unmounts the stale mount, and sets the device up again behind the running engine:
    // one loop device, one mount, the same bytes.
    let cluster = DevCluster::up();
    cluster.create_volume("db", 64, 3, &[]);
    let device = attach_device(&cluster, "db", "node-1", "fuse");
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("data");
    random_file(&data, 8);
    run(
        "dd",
        &[
            &format!("if={}", data.display()),
            &format!("of={device}"),
            "bs=1M",
            "oflag=direct",
            "conv=fsync",
            "status=none",
        ],
    );
    let m1 = cluster.dir().join("m1");
    assert_eq!(loops_under(&m1).len(), 1, "one loop device");

    // Stop the agent first, so that only its restart can notice the dead device.
    let manager = std::fs::read_to_string(m1.join("pid")).expect("pid");
    let _ = Command::new("kill")
        .args(["-STOP", manager.trim()])
        .status();
    let record = std::fs::read_to_string(m1.join("disk/devices/db/process.json")).expect("record");
    let device_pid = serde_json::from_str::<Value>(&record).expect("JSON")["pid"]
        .as_i64()
        .expect("pid") as i32;
    kill(device_pid);
    cluster.restart_manager(1);

    let volume = cluster.wait_volume("db", "given a device again", |v| {
        v["state"] == "attached"
            && v["attachment"]["device"]
                .as_str()
                .is_some_and(|d| d.starts_with("/dev/loop"))
            && std::fs::read_to_string(m1.join("disk/devices/db/device"))
                .is_ok_and(|d| v["attachment"]["device"] == d.as_str())
    });
    let log = std::fs::read_to_string(m1.join("manager.log")).unwrap_or_default();
    assert!(
        log.contains("a device process died"),
        "the restarted agent did not see the dead device:\n{log}"
    );
    assert_eq!(
        loops_under(&m1).len(),
        1,
        "stale loop devices: {:?}",
        loops_under(&m1)
    );
    assert_eq!(
        mounts_under(&m1).len(),
        1,
        "stale mounts: {:?}",
        mounts_under(&m1)
    );
    let device = volume["attachment"]["device"].as_str().expect("device");
    let back = work.path().join("back");
    run(
        "dd",
        &[
            &format!("if={device}"),
            &format!("of={}", back.display()),
            "bs=1M",
            "count=8",
            "iflag=direct",
            "status=none",
        ],
    );
    assert_eq!(sha256(&data), sha256(&back), "the device reads other bytes");
    cluster.detach("db");
    assert_eq!(
        loops_under(&m1),
        Vec::<String>::new(),
        "detach left a loop device"
    );
}

#[test]
fn xfs_on_the_fuse_device_grows_online_with_its_volume() {
    // A mounted XFS on /dev/loopN; the volume is expanded from 320 to 512 MiB while
    // mounted: the device takes the new size, xfs_growfs grows the filesystem online, and
    // the files written before are intact. (XFS rather than ext4: ext4's online resize
    // needs CAP_SYS_RESOURCE, which the test machines' containers do not grant.)
    let cluster = DevCluster::up();
    cluster.create_volume("db", 320, 3, &[]);
    let device = attach_device(&cluster, "db", "node-1", "fuse");
    run("mkfs.xfs", &["-q", "-f", &device]);
    let mounted = Mounted::new(&device);
    let files = write_files(mounted.path(), 2, 8);
    let bytes = || -> u64 {
        run(
            "stat",
            &["-f", "-c", "%b %S", mounted.path().to_str().expect("utf-8")],
        )
        .split_whitespace()
        .map(|n| n.parse::<u64>().expect("number"))
        .product()
    };
    let before = bytes();
    cluster.ok(&["volume", "expand", "db", "--size", "512Mi"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let size: u64 = run("blockdev", &["--getsize64", &device])
            .trim()
            .parse()
            .expect("size");
        if size == 512 << 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{device} still has {size} bytes after the expansion"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    run("xfs_growfs", &[mounted.path().to_str().expect("utf-8")]);
    let after = bytes();
    assert!(
        after > before + (150 << 20),
        "the filesystem did not grow: {before} -> {after} bytes"
    );
    check_files(mounted.path(), &files);
    // And the new space takes data.
    let grown = mounted.path().join("grown");
    std::fs::create_dir(&grown).expect("mkdir");
    let more = write_files(&grown, 1, 200);
    check_files(&grown, &more);
    mounted.unmount();
    cluster.detach("db");
}

#[test]
fn detaching_a_mounted_device_waits_until_it_is_unmounted() {
    // `volume detach` while ext4 is still mounted on /dev/loopN: the device is not taken
    // from under the filesystem (that would lose what it has not written back). The volume
    // stays detaching and the filesystem keeps working; once it is unmounted the detach
    // completes, and on another node every file is there, the unsynced one too.
    let cluster = DevCluster::up();
    cluster.create_volume("db", 128, 3, &[]);
    let device = attach_device(&cluster, "db", "node-1", "fuse");
    run("mkfs.ext4", &["-q", "-F", &device]);
    let mounted = Mounted::new(&device);
    // Written, not synced: in the page cache only.
    let files = write_files(mounted.path(), 2, 4);
    cluster.ok(&["volume", "detach", "db", "--no-wait"]);
    std::thread::sleep(Duration::from_secs(4));
    let volume = cluster.json(&["volume", "get", "db"]);
    assert_eq!(volume["state"], "detaching", "{volume}");
    let m1 = cluster.dir().join("m1");
    assert_eq!(loops_under(&m1).len(), 1, "the device was taken away");
    let later = mounted.path().join("later");
    std::fs::create_dir(&later).expect("mkdir");
    let more = write_files(&later, 1, 4);
    check_files(mounted.path(), &files);
    mounted.unmount();
    cluster.wait_volume("db", "detached", |v| v["state"] == "detached");
    assert_eq!(
        loops_under(&m1),
        Vec::<String>::new(),
        "detach left a loop device"
    );

    let device = attach_device(&cluster, "db", "node-2", "fuse");
    let mounted = Mounted::new(&device);
    check_files(mounted.path(), &files);
    check_files(&mounted.path().join("later"), &more);
    mounted.unmount();
    cluster.detach("db");
}

#[test]
fn engine_killed_behind_the_nbd_endpoint_comes_back_at_the_same_endpoint() {
    // Without a kernel device (the default frontend none) an engine that dies is also
    // restarted on its node under a bigger epoch, at the same nbd:// endpoint when its port
    // is free, with every acknowledged write.
    let cluster = DevCluster::up();
    cluster.create_volume("db", 16, 3, &[]);
    let endpoint = cluster.attach("db", "node-1");
    let written = write_random(&endpoint, 16);
    let epoch = cluster.json(&["volume", "get", "db"])["epoch"]
        .as_u64()
        .expect("epoch");
    kill(engine_pid(&cluster, 1, "db"));
    let volume = wait_restarted(&cluster, epoch);
    assert_eq!(
        volume["attachment"]["endpoint"],
        endpoint.as_str(),
        "{volume}"
    );
    assert!(volume["attachment"]["device"].is_null(), "{volume}");
    let back = written.work.path().join("back.img");
    read_image(&endpoint, &back);
    assert_eq!(sha256(&written.data), sha256(&back));
}

#[test]
fn a_device_process_killed_under_a_running_agent_is_set_up_again() {
    // The device process alone is SIGKILLed (its device goes with it): the agent notices,
    // detaches the dead loop device, unmounts the stale FUSE mount and sets up a new
    // device behind the same engine; the log's attachment names the new one, and it reads
    // the bytes written before.
    let cluster = DevCluster::up();
    cluster.create_volume("db", 32, 3, &[]);
    let device = attach_device(&cluster, "db", "node-1", "fuse");
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("data");
    random_file(&data, 4);
    run(
        "dd",
        &[
            &format!("if={}", data.display()),
            &format!("of={device}"),
            "bs=1M",
            "oflag=direct",
            "conv=fsync",
            "status=none",
        ],
    );
    let m1 = cluster.dir().join("m1");
    let record = std::fs::read_to_string(m1.join("disk/devices/db/process.json")).expect("record");
    let old_pid = serde_json::from_str::<Value>(&record).expect("JSON")["pid"]
        .as_i64()
        .expect("pid");
    kill(old_pid as i32);
    let volume = cluster.wait_volume("db", "given a new device", |v| {
        let pid = std::fs::read_to_string(m1.join("disk/devices/db/process.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|r| r["pid"].as_i64());
        pid.is_some_and(|p| p != old_pid)
            && std::fs::read_to_string(m1.join("disk/devices/db/device"))
                .is_ok_and(|d| v["attachment"]["device"] == d.as_str())
    });
    assert_eq!(volume["state"], "attached", "{volume}");
    assert_eq!(
        loops_under(&m1).len(),
        1,
        "stale loop devices: {:?}",
        loops_under(&m1)
    );
    assert_eq!(
        mounts_under(&m1).len(),
        1,
        "stale mounts: {:?}",
        mounts_under(&m1)
    );
    let device = volume["attachment"]["device"].as_str().expect("device");
    let back = work.path().join("back");
    run(
        "dd",
        &[
            &format!("if={device}"),
            &format!("of={}", back.display()),
            "bs=1M",
            "count=4",
            "iflag=direct",
            "status=none",
        ],
    );
    assert_eq!(
        sha256(&data),
        sha256(&back),
        "the new device reads other bytes"
    );
    cluster.detach("db");
}
