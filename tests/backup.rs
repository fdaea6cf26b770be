//! Backups and restores end to end on a `shorthorn dev up` cluster: real manager, replica
//! and engine processes, a real S3 server (s3s-fs; `scripts/build-tools` installs it) or a
//! directory as the target, qemu-img writing and reading the volumes over NBD, and the CLI
//! as a user runs it. Faults are real: the S3 server paused with SIGSTOP, an engine and a
//! manager SIGKILLed, a block on the target corrupted by hand.

mod testkit;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use testkit::nfs::NfsServer;
use testkit::s3::S3Server;
use testkit::{
    DevCluster, Written, export_size, random_file, read_image, run, sha256, text_of, write_random,
};

const MIB: u64 = 1 << 20;
const BUCKET: &str = "backupbucket";
const TARGET: &str = "s3://backupbucket@us-east-1/backupstore";

/// An S3 server and a dev cluster whose managers hold its credentials in a file.
struct S3Cluster {
    cluster: DevCluster,
    s3: S3Server,
    credentials: PathBuf,
    _dir: tempfile::TempDir,
}

/// `kind` is "s3s-fs" or "versitygw".
fn s3_cluster(kind: &str) -> S3Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(kind, dir.path(), BUCKET);
    let credentials = dir.path().join("credentials");
    std::fs::write(&credentials, s3.credential_lines(None)).expect("credentials file");
    let cluster = DevCluster::up_with(&[OsStr::new("--credentials"), credentials.as_os_str()]);
    S3Cluster {
        cluster,
        s3,
        credentials,
        _dir: dir,
    }
}

/// Volume `name` of `size_mib` MiB on 2 replicas, attached on node-1, with `data_mib` MiB
/// of random bytes written at its start.
fn volume_with_data(cluster: &DevCluster, name: &str, size_mib: u64, data_mib: u64) -> Written {
    cluster.create_volume(name, size_mib, 2, &[]);
    let endpoint = cluster.attach(name, "node-1");
    write_random(&endpoint, data_mib)
}

/// Waits (up to `secs`) until `backup get name` satisfies `done`; returns the backup.
fn wait_backup(
    cluster: &DevCluster,
    name: &str,
    secs: u64,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let backup = cluster.json(&["backup", "get", name]);
        if done(&backup) {
            return backup;
        }
        assert!(
            Instant::now() < deadline,
            "backup {name} never got there: {backup}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `backup create volume --name name --wait -o json`, which must complete.
fn backup(cluster: &DevCluster, volume: &str, name: &str) -> Value {
    let b = cluster.json(&["backup", "create", volume, "--name", name, "--wait"]);
    assert_eq!(b["state"], "completed", "{b}");
    b
}

/// Restores `url` into a new volume `name` (`--wait`), attaches it on `node`, reads it all
/// back with qemu-img into `into` and returns its SHA-256.
fn restore_and_read(
    cluster: &DevCluster,
    url: &str,
    name: &str,
    size: Option<&str>,
    node: &str,
    into: &Path,
) -> String {
    let mut args = vec![
        "volume",
        "create",
        name,
        "--from-backup",
        url,
        "--replicas",
        "2",
        "--wait",
    ];
    if let Some(size) = size {
        args.extend(["--size", size]);
    }
    let v = cluster.json(&args);
    assert_eq!(v["restore"]["state"], "completed", "{v}");
    assert_eq!(v["state"], "detached", "the restoring engine stopped: {v}");
    let endpoint = cluster.attach(name, node);
    read_image(&endpoint, into);
    cluster.detach(name);
    sha256(into)
}

/// Writes `mib` MiB of random bytes at `offset_mib` of the export (qemu-io) and of the
/// local copy.
fn overwrite(endpoint: &str, copy: &Path, offset_mib: u64, mib: u64) {
    let random = copy.with_extension("random");
    random_file(&random, mib);
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            &format!("write -s {} {offset_mib}M {mib}M", random.display()),
            "-c",
            "flush",
            endpoint,
        ],
    );
    let mut data = std::fs::read(copy).expect("copy");
    let (start, end) = (
        (offset_mib * MIB) as usize,
        ((offset_mib + mib) * MIB) as usize,
    );
    if data.len() < end {
        data.resize(end, 0);
    }
    data[start..end].copy_from_slice(&std::fs::read(&random).expect("random"));
    std::fs::write(copy, data).expect("copy");
}

/// `path` zero-extended to `size` bytes.
fn padded(path: &Path, size: u64, into: &Path) -> String {
    let mut data = std::fs::read(path).expect("read");
    data.resize(size as usize, 0);
    std::fs::write(into, data).expect("write");
    sha256(into)
}

#[test]
fn s3_backup_incremental_backup_and_restores_read_back_the_same_bytes() {
    backup_and_restore(&s3_cluster("s3s-fs"));
}

#[test]
fn versitygw_backup_incremental_backup_and_restores_read_back_the_same_bytes() {
    backup_and_restore(&s3_cluster("versitygw"));
}

fn backup_and_restore(S3Cluster { cluster, .. }: &S3Cluster) {
    // A user backs a volume up to S3 twice (the second only uploads what changed), sees both
    // on the target, restores each into a new volume and reads back exactly what was
    // written; deleting the first leaves the second restorable.
    cluster.ok(&["setting", "set", "backupTarget", TARGET]);
    let mut watch = cluster.spawn(&["watch", "-o", "json"]);
    let written = volume_with_data(cluster, "src", 64, 16);

    let b1 = backup(cluster, "src", "b1");
    for field in [
        "name",
        "volume",
        "snapshot",
        "url",
        "size",
        "blocks",
        "uploadedBytes",
        "state",
    ] {
        assert!(!b1[field].is_null(), "-o json lacks {field}: {b1}");
    }
    assert_eq!(b1["url"], format!("{TARGET}?backup=b1&volume=src"));
    assert_eq!(
        (b1["size"].as_u64(), b1["blocks"].as_u64()),
        (Some(64 * MIB), Some(8)),
        "{b1}"
    );
    assert!(
        b1["uploadedBytes"].as_u64().unwrap() >= 16 * MIB,
        "random data is stored whole: {b1}"
    );
    watch.until(|l| l["event"]["type"] == "backupCompleted" && l["event"]["name"] == "b1");

    // One 2 MiB block changes: the incremental backup uploads that block only.
    let expected = written.work.path().join("expected.img");
    std::fs::copy(&written.data, &expected).expect("copy");
    overwrite(&written.endpoint, &expected, 32, 2);
    let b2 = backup(cluster, "src", "b2");
    assert_eq!(b2["base"], "b1", "{b2}");
    assert_eq!(b2["blocks"], 9, "{b2}");
    let uploaded = b2["uploadedBytes"].as_u64().unwrap();
    assert!(
        (2 * MIB..=2 * MIB + 4096).contains(&uploaded),
        "only the changed (random) block is uploaded, got {uploaded}"
    );

    let listed = cluster.json(&["backup", "ls", "src"]);
    let names: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| text_of(&b["name"]))
        .collect();
    assert_eq!(names, ["b1", "b2"]);
    let volumes = cluster.json(&["backup", "volume", "ls"]);
    assert_eq!(volumes[0]["name"], "src", "{volumes}");
    assert_eq!(volumes[0]["backupCount"], 2, "{volumes}");
    let on_target = cluster.json(&["backup", "volume", "get", "src"]);
    assert_eq!(on_target[1]["url"], b2["url"], "{on_target}");

    let work = written.work.path();
    let want2 = padded(&expected, 64 * MIB, &work.join("want2.img"));
    let got2 = restore_and_read(
        cluster,
        b2["url"].as_str().unwrap(),
        "dst2",
        None,
        "node-2",
        &work.join("dst2.img"),
    );
    assert_eq!(
        got2, want2,
        "the restore of b2 differs from what was written"
    );
    // b1, into a larger volume: the data of then, zeros after.
    let want1 = padded(&written.data, 96 * MIB, &work.join("want1.img"));
    let got1 = restore_and_read(
        cluster,
        b1["url"].as_str().unwrap(),
        "dst1",
        Some("96Mi"),
        "node-3",
        &work.join("dst1.img"),
    );
    assert_eq!(
        got1, want1,
        "the restore of b1 differs from what was written then"
    );

    cluster.ok(&["backup", "rm", "b1"]);
    let (ok, _, err) = cluster.cli(&["backup", "get", "b1"]);
    assert!(!ok && err.contains("not found"), "{err}");
    let on_target = cluster.json(&["backup", "volume", "get", "src"]);
    assert_eq!(
        on_target.as_array().map(Vec::len),
        Some(1),
        "b1 is gone from the target: {on_target}"
    );
    let again = restore_and_read(
        cluster,
        b2["url"].as_str().unwrap(),
        "dst3",
        None,
        "node-1",
        &work.join("dst3.img"),
    );
    assert_eq!(again, want2, "b2 restores without b1's manifest");
    watch.until(|l| l["event"]["type"] == "restoreCompleted" && l["event"]["name"] == "dst3");
}

#[test]
fn bad_targets_and_credentials_are_refused_with_the_reason() {
    // `setting set backupTarget` probes the target and says why it cannot take backups;
    // the setting keeps its value after a refusal. Credentials are read from the file at
    // each use, so fixing the file fixes the target. (versitygw, which refuses a bucket
    // that does not exist; s3s-fs creates it.)
    let S3Cluster {
        cluster,
        s3,
        credentials,
        ..
    } = &s3_cluster("versitygw");
    let refused = |value: &str| {
        let (ok, _, err) = cluster.cli(&["setting", "set", "backupTarget", value]);
        assert!(!ok, "{value} was accepted");
        err
    };
    let err = refused("s3://nobucket");
    assert!(
        err.contains("malformed") && err.contains("HTTP 400"),
        "{err}"
    );
    let err = refused("nfs://server");
    assert!(err.contains("export path is missing"), "{err}");
    let err = refused("ftp://x");
    assert!(err.contains("ftp://x"), "{err}");
    let err = refused("s3://nosuchbucket@us-east-1/backupstore");
    assert!(err.contains("bucket does not exist"), "{err}");

    std::fs::write(credentials, s3.credential_lines(Some("wrong-secret"))).expect("credentials");
    let err = refused(TARGET);
    assert!(err.contains("refused the credentials"), "{err}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        credentials,
        format!("AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\nAWS_ENDPOINTS=http://127.0.0.1:{closed}\n", s3.access_key, s3.secret_key),
    )
    .expect("credentials");
    let err = refused(TARGET);
    assert!(err.contains("unreachable"), "{err}");
    assert_eq!(
        cluster.json(&["setting", "get", "backupTarget"])["value"],
        ""
    );
    let (ok, _, err) = cluster.cli(&["backup", "volume", "ls"]);
    assert!(!ok && err.contains("no backup target is set"), "{err}");

    std::fs::write(credentials, s3.credential_lines(None)).expect("credentials");
    cluster.ok(&["setting", "set", "backupTarget", TARGET]);
    assert_eq!(
        cluster.json(&["setting", "get", "backupTarget"])["value"],
        TARGET
    );
    assert_eq!(
        cluster.json(&["backup", "volume", "ls"]),
        Value::Array(vec![])
    );
    // A restore of a backup that is not there is refused before any volume is created.
    let (ok, _, err) = cluster.cli(&[
        "volume",
        "create",
        "x",
        "--from-backup",
        &format!("{TARGET}?backup=none&volume=src"),
    ]);
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, _, err) = cluster.cli(&[
        "volume",
        "create",
        "x",
        "--from-backup",
        "s3://b@r/p?backup=none",
    ]);
    assert!(!ok && err.contains("backup= and volume="), "{err}");
    assert_eq!(cluster.json(&["volume", "ls"]), Value::Array(vec![]));
}

#[test]
fn a_corrupted_block_is_named_by_verify_and_fails_the_restore() {
    // On a directory target: a backup verifies clean; one of its blocks is damaged on the
    // target; `backup verify` names that block, and a restore over it fails naming it and
    // leaves a volume nobody can attach, instead of returning bad data.
    let cluster = DevCluster::up();
    let store = tempfile::tempdir().expect("store dir");
    let target = format!("file://{}", store.path().display());
    cluster.ok(&["setting", "set", "backupTarget", &target]);
    volume_with_data(&cluster, "src", 32, 8);
    let b1 = backup(&cluster, "src", "b1");
    let (ok, out, err) = cluster.cli(&["backup", "verify", "b1"]);
    assert!(ok && out.contains("all 4 blocks are good"), "{out}{err}");
    // Through the API with progress: NDJSON lines ending with the report; a backup that
    // is not there is a plain 404 before any line.
    let verify = |backup: &str| {
        ureq::post(&format!(
            "{}/v1/backups/{backup}/verify?progress=true",
            cluster.api()
        ))
        .set("Authorization", &format!("Bearer {}", cluster.token()))
        .send_json(serde_json::json!({}))
        .map_err(Box::new)
    };
    let answer = verify("b1").expect("verify with progress");
    assert_eq!(answer.content_type(), "application/x-ndjson");
    let text = answer.into_string().expect("answer");
    let last: Value = serde_json::from_str(text.lines().last().expect("a line")).expect("JSON");
    assert_eq!(last["report"]["blocks"], 4, "{text}");
    assert_eq!(last["report"]["bad"], Value::Array(vec![]), "{text}");
    assert!(
        matches!(
            verify("nope").map_err(|e| *e),
            Err(ureq::Error::Status(404, _))
        ),
        "a missing backup"
    );

    // The block at offset 2 MiB: flip a byte of its body on the target.
    let root = store.path().join("shorthorn-backupstore");
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(root.join("volumes/src/backups/b1.json")).expect("manifest on the target"),
    )
    .expect("manifest JSON");
    let entry = manifest["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b[0] == 2 * MIB)
        .expect("a block at 2 MiB");
    let hash = text_of(&entry[1]);
    let block = root.join(format!("blocks/{}/{hash}.blk", &hash[..2]));
    let mut raw = std::fs::read(&block).expect("block on the target");
    let at = raw.len() / 2;
    raw[at] ^= 0xff;
    std::fs::write(&block, raw).expect("corrupt the block");

    let (ok, out, err) = cluster.cli(&["backup", "verify", "b1"]);
    assert!(!ok, "verify passed over a corrupt block: {out}");
    assert!(
        out.contains(&(2 * MIB).to_string()) && out.contains(&hash),
        "{out}"
    );
    assert!(err.contains("1 bad block of 4"), "{err}");
    let report = cluster
        .command(&["backup", "verify", "b1", "-o", "json"])
        .output()
        .expect("verify");
    let report: Value = serde_json::from_slice(&report.stdout).expect("JSON report");
    assert_eq!(report["bad"].as_array().map(Vec::len), Some(1), "{report}");
    assert_eq!(report["bad"][0]["offset"], 2 * MIB, "{report}");

    let url = text_of(&b1["url"]);
    let (ok, _, err) = cluster.cli(&[
        "volume",
        "create",
        "dst",
        "--from-backup",
        &url,
        "--replicas",
        "2",
        "--wait",
    ]);
    assert!(!ok, "a restore over a corrupt block succeeded");
    assert!(
        err.contains("offset 2097152") && err.contains(&hash),
        "{err}"
    );
    let v = cluster.wait_volume("dst", "detached", |v| v["state"] == "detached");
    assert_eq!(v["restore"]["state"], "error", "{v}");
    let (ok, _, err) = cluster.cli(&["volume", "attach", "dst", "--node", "node-1"]);
    assert!(
        !ok && err.contains("restore") && err.contains("failed"),
        "{err}"
    );
    // Deleting the failed volume works; the backup itself is still listed.
    cluster.ok(&["volume", "delete", "dst"]);
    assert_eq!(cluster.json(&["backup", "get", "b1"])["state"], "completed");
}

#[test]
fn engine_killed_mid_backup_fails_it_with_a_reason_and_a_retry_completes() {
    // The S3 server is paused so the backup is certainly under way when its engine is
    // SIGKILLed; the backup ends in error with a reason, writes no manifest, and a new
    // backup of the same volume completes and restores what was written.
    let S3Cluster { cluster, s3, .. } = &s3_cluster("s3s-fs");
    cluster.ok(&["setting", "set", "backupTarget", TARGET]);
    let written = volume_with_data(cluster, "src", 32, 8);
    s3.pause();
    cluster.ok(&["backup", "create", "src", "--name", "b1"]);
    wait_backup(cluster, "b1", 60, |b| b["started"] == true);
    let pid = cluster.engine_pid(1, "src");
    run("kill", &["-9", &pid]);
    let failed = wait_backup(cluster, "b1", 60, |b| b["state"] == "error");
    assert!(!text_of(&failed["error"]).is_empty(), "no reason: {failed}");
    s3.unpause();

    // The volume gets an engine again (its agent restarts it, or the user re-attaches).
    let v = cluster.json(&["volume", "get", "src"]);
    if v["state"] == "detached" {
        cluster.attach("src", "node-1");
    }
    cluster.wait_volume("src", "attached", |v| v["state"] == "attached");
    let b2 = backup(cluster, "src", "b2");
    let on_target = cluster.json(&["backup", "volume", "get", "src"]);
    let names: Vec<String> = on_target
        .as_array()
        .unwrap()
        .iter()
        .map(|b| text_of(&b["name"]))
        .collect();
    assert_eq!(names, ["b2"], "the killed backup left no manifest");
    let work = written.work.path();
    let want = padded(&written.data, 32 * MIB, &work.join("want.img"));
    let got = restore_and_read(
        cluster,
        b2["url"].as_str().unwrap(),
        "dst",
        None,
        "node-2",
        &work.join("dst.img"),
    );
    assert_eq!(got, want);
    // And the source volume itself is untouched.
    let endpoint = cluster.json(&["volume", "get", "src"])["attachment"]["endpoint"].clone();
    read_image(endpoint.as_str().unwrap(), &work.join("src.img"));
    assert_eq!(sha256(&work.join("src.img")), want);
}

#[test]
fn a_manager_restarted_and_an_engine_killed_mid_restore_do_not_leave_it_stuck() {
    // The restore of a new volume is under way (its S3 server paused) when the manager of
    // the restoring node is SIGKILLed and started again, and then its engine is SIGKILLed;
    // once the server answers again the restore completes and the volume reads back what
    // was backed up.
    let S3Cluster { cluster, s3, .. } = &s3_cluster("s3s-fs");
    cluster.ok(&["setting", "set", "backupTarget", TARGET]);
    let written = volume_with_data(cluster, "src", 32, 8);
    let b1 = backup(cluster, "src", "b1");
    let url = text_of(&b1["url"]);
    cluster.ok(&[
        "volume",
        "create",
        "dst",
        "--from-backup",
        &url,
        "--replicas",
        "2",
    ]);
    // The restoring engine needs its replicas started first: the pause comes before it
    // reads anything from the target.
    s3.pause();
    let v = cluster.json(&["volume", "get", "dst"]);
    assert_eq!(v["restore"]["state"], "inProgress", "{v}");
    let node = text_of(&v["attachment"]["node"]);
    let n: u16 = node
        .trim_start_matches("node-")
        .parse()
        .expect("node number");
    // Its engine runs with no frontend: nothing to connect to.
    cluster.wait_volume("dst", "attached for the restore", |v| {
        v["state"] == "attached"
    });
    let v = cluster.json(&["volume", "get", "dst"]);
    assert!(text_of(&v["attachment"]["endpoint"]).is_empty(), "{v}");
    let (ok, _, err) = cluster.cli(&["volume", "attach", "dst", "--node", &node]);
    assert!(!ok && err.contains("being restored"), "{err}");

    // The agent has handed the engine the job, which now waits on the paused server.
    let log = cluster.dir().join(format!("m{n}/manager.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("restore started")) {
        assert!(Instant::now() < deadline, "the restore never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.restart_manager(n);
    let v = cluster.json(&["volume", "get", "dst"]);
    assert_eq!(
        v["restore"]["state"], "inProgress",
        "it cannot finish while the server is paused: {v}"
    );
    // Then its engine dies too: the agent starts another (a new epoch), which restores
    // from the start.
    let epoch = v["epoch"].as_u64().expect("epoch");
    run("kill", &["-9", &cluster.engine_pid(n, "dst")]);
    let v = cluster.wait_volume("dst", "under a new engine", |v| {
        v["epoch"].as_u64() > Some(epoch) && v["state"] == "attached"
    });
    assert_eq!(v["restore"]["state"], "inProgress", "{v}");
    s3.unpause();
    let v = cluster.json(&[
        "volume",
        "wait",
        "dst",
        "--for",
        "restored",
        "--timeout",
        "300",
    ]);
    assert_eq!(v["restore"]["state"], "completed", "{v}");
    let endpoint = cluster.attach("dst", "node-1");
    assert_eq!(export_size(&endpoint), 32 * MIB);
    let work = written.work.path();
    read_image(&endpoint, &work.join("dst.img"));
    assert_eq!(
        sha256(&work.join("dst.img")),
        padded(&written.data, 32 * MIB, &work.join("want.img"))
    );
}

#[test]
fn nfs_backup_and_restore_read_back_the_same_bytes() {
    // A user points the cluster at an NFS export (nfs-ganesha, reached from userspace: no
    // kernel client, no mount), backs a volume up, restores it by URL into a new volume and
    // reads back the same bytes; the manifest is on the export where BACKUP.md says. A
    // missing export and a read-only one are refused at `setting set` with the reason.
    let dir = tempfile::tempdir().expect("dir");
    let nfs = NfsServer::start(dir.path());
    let cluster = DevCluster::up();
    let refused = |value: &str| {
        let (ok, _, err) = cluster.cli(&["setting", "set", "backupTarget", value]);
        assert!(!ok, "{value} was accepted");
        err
    };
    let err = refused(&nfs.url("nosuchexport"));
    assert!(err.contains("the NFS export does not exist"), "{err}");
    let err = refused(&nfs.url("readonly"));
    assert!(
        err.contains("permission denied") && err.contains("read-only"),
        "{err}"
    );

    let target = nfs.url("backups");
    cluster.ok(&["setting", "set", "backupTarget", &target]);
    let written = volume_with_data(&cluster, "src", 48, 10);
    let b1 = backup(&cluster, "src", "b1");
    assert_eq!(b1["url"], format!("{target}&backup=b1&volume=src"), "{b1}");
    assert_eq!(b1["blocks"], 5, "{b1}");
    assert!(
        nfs.export_dir("backups")
            .join("shorthorn-backupstore/volumes/src/backups/b1.json")
            .is_file()
    );
    let volumes = cluster.json(&["backup", "volume", "ls"]);
    assert_eq!(volumes[0]["name"], "src", "{volumes}");
    let work = written.work.path();
    let want = padded(&written.data, 48 * MIB, &work.join("want.img"));
    let got = restore_and_read(
        &cluster,
        b1["url"].as_str().unwrap(),
        "copy",
        None,
        "node-2",
        &work.join("copy.img"),
    );
    assert_eq!(
        got, want,
        "the restore from NFS differs from what was written"
    );
    let (ok, out, err) = cluster.cli(&["backup", "verify", b1["url"].as_str().unwrap()]);
    assert!(ok && out.contains("all 5 blocks are good"), "{out}{err}");
}

#[test]
fn a_second_cluster_sees_and_restores_the_first_ones_backups() {
    // Two clusters share a directory target: the second lists the backup volume the first
    // wrote, and restores its backup by URL into a volume that reads back the same bytes.
    let store = tempfile::tempdir().expect("store dir");
    let target = format!("file://{}", store.path().display());
    let first = DevCluster::up();
    first.ok(&["setting", "set", "backupTarget", &target]);
    let written = volume_with_data(&first, "src", 32, 6);
    let b1 = backup(&first, "src", "b1");
    drop(first);

    let second = DevCluster::up();
    second.ok(&["setting", "set", "backupstorePollInterval", "1"]);
    second.ok(&["setting", "set", "backupTarget", &target]);
    assert_eq!(
        second.json(&["backup", "ls"]),
        Value::Array(vec![]),
        "not in its log"
    );
    let volumes = second.json(&["backup", "volume", "ls"]);
    assert_eq!(volumes[0]["name"], "src", "{volumes}");
    assert_eq!(volumes[0]["lastBackup"], "b1", "{volumes}");
    // The leader syncs them into the log too.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let synced = second.json(&["backup", "volume", "ls", "--synced"]);
        if synced[0]["name"] == "src" && synced[0]["lastBackup"] == "b1" {
            assert!(synced[0]["syncedAt"].is_u64(), "{synced}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never synced into the log: {synced}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let backups = second.json(&["backup", "volume", "get", "src"]);
    assert_eq!(backups[0]["url"], b1["url"], "{backups}");
    let work = written.work.path();
    let want = padded(&written.data, 32 * MIB, &work.join("want.img"));
    let url = text_of(&backups[0]["url"]);
    let (ok, out, err) = second.cli(&["backup", "verify", &url]);
    assert!(ok && out.contains("all 3 blocks are good"), "{out}{err}");
    let got = restore_and_read(
        &second,
        &url,
        "copy",
        None,
        "node-1",
        &work.join("copy.img"),
    );
    assert_eq!(got, want);
}

#[test]
fn the_leader_collects_the_blocks_of_deleted_backups_and_the_rest_still_restores() {
    // Two volumes back up on one directory target, sharing some blocks; one backup is
    // deleted: the leader collects the blocks only it named (no grace, for the test), and
    // every remaining backup restores byte-identical.
    let cluster = DevCluster::up_with_env(&[("SHORTHORN_BACKUP_GC_GRACE_SECS", "0")]);
    let store = tempfile::tempdir().expect("store dir");
    let target = format!("file://{}", store.path().display());
    cluster.ok(&["setting", "set", "backupTarget", &target]);
    let a = volume_with_data(&cluster, "va", 16, 8);
    let a1 = backup(&cluster, "va", "a1");
    assert_eq!(a1["blocks"], 4, "{a1}");
    // vb holds the same first 8 MiB: its backup shares all of a1's blocks.
    cluster.create_volume("vb", 16, 2, &[]);
    let vb = cluster.attach("vb", "node-1");
    testkit::write_image(&a.data, &vb);
    let b1 = backup(&cluster, "vb", "b1");
    assert_eq!(
        b1["uploadedBytes"], 0,
        "every block was on the target: {b1}"
    );
    // va is rewritten: a2 names new blocks only; a1's are still b1's.
    let work = a.work.path();
    let second = work.join("second.img");
    random_file(&second, 8);
    testkit::write_image(&second, &a.endpoint);
    let a2 = backup(&cluster, "va", "a2");
    let blocks_dir = store.path().join("shorthorn-backupstore/blocks");
    let count = || {
        walk(&blocks_dir)
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "blk"))
            .count()
    };
    assert_eq!(count(), 8, "a1/b1's 4 blocks and a2's 4");

    // Deleting a1 frees nothing (b1 names the same blocks); deleting b1 then frees them.
    let collections = || {
        (1..=3)
            .map(|n| {
                std::fs::read_to_string(cluster.dir().join(format!("m{n}/manager.log")))
                    .unwrap_or_default()
                    .matches("collected unreferenced backup blocks")
                    .count()
            })
            .sum::<usize>()
    };
    cluster.ok(&["backup", "rm", "a1"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while collections() == 0 {
        assert!(
            Instant::now() < deadline,
            "no collection ran after a1 was deleted"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(count(), 8, "a collection took blocks b1 still names");
    cluster.ok(&["backup", "rm", "b1"]);
    // The leader collects at most once a minute.
    let deadline = Instant::now() + Duration::from_secs(180);
    while count() != 4 {
        assert!(
            Instant::now() < deadline,
            "the unreferenced blocks were never collected: {} left",
            count()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let want = padded(&second, 16 * MIB, &work.join("want.img"));
    let got = restore_and_read(
        &cluster,
        a2["url"].as_str().unwrap(),
        "back",
        None,
        "node-2",
        &work.join("back.img"),
    );
    assert_eq!(got, want, "a2 restores after the collection");
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Every event in manager `n`'s log so far (the stream is read for a few seconds).
fn logged_events(cluster: &DevCluster, n: u16) -> Vec<Value> {
    use std::io::BufRead;
    let Ok(response) = ureq::get(&format!("{}/v1/events?from=0", cluster.api_of(n)))
        .set("Authorization", &format!("Bearer {}", cluster.token()))
        .timeout(Duration::from_secs(4))
        .call()
    else {
        return vec![];
    };
    std::io::BufReader::new(response.into_reader())
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| {
            let data = line.strip_prefix("data:")?;
            serde_json::from_str(data.trim()).ok()
        })
        .collect()
}

/// The slots `job` fired, in log order.
fn fired_slots(events: &[Value], job: &str) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e["type"] == "recurringJobFired" && e["name"] == job)
        .map(|e| e["slot"].as_u64().expect("slot"))
        .collect()
}

fn cluster_leader(cluster: &DevCluster, alive: &[u16]) -> Option<u16> {
    alive.iter().find_map(|n| {
        let status: Value = ureq::get(&format!("{}/v1/cluster", cluster.api_of(*n)))
            .set("Authorization", &format!("Bearer {}", cluster.token()))
            .timeout(Duration::from_secs(2))
            .call()
            .ok()?
            .into_json()
            .ok()?;
        status["leader"].as_u64().map(|l| l as u16)
    })
}

#[test]
fn recurring_jobs_run_each_slot_once_across_a_leader_kill_and_keep_retain() {
    let cluster = DevCluster::up_with_failover();
    let store = tempfile::tempdir().expect("store dir");
    let target = format!("file://{}", store.path().display());
    cluster.ok(&["setting", "set", "backupTarget", &target]);

    // Bad jobs are refused with the reason, and nothing is created.
    let long = "a".repeat(41);
    for (args, word) in [
        (
            vec!["Bad_Name", "--task", "snapshot", "--cron", "* * * * *"],
            "DNS-1123",
        ),
        (
            vec![long.as_str(), "--task", "snapshot", "--cron", "* * * * *"],
            "at most 40",
        ),
        (
            vec!["x", "--task", "snapshot", "--cron", "* * *"],
            "3 fields",
        ),
        (
            vec!["x", "--task", "snapshot", "--cron", "99 * * * *"],
            "invalid",
        ),
        (
            vec!["x", "--task", "nope", "--cron", "* * * * *"],
            "unknown",
        ),
        (
            vec![
                "x",
                "--task",
                "snapshot",
                "--cron",
                "* * * * *",
                "--retain",
                "0",
            ],
            "retain 0",
        ),
        (
            vec![
                "x",
                "--task",
                "backup",
                "--cron",
                "* * * * *",
                "--concurrency",
                "0",
            ],
            "concurrency",
        ),
    ] {
        let mut full = vec!["job", "create"];
        full.extend(args.iter().copied());
        let (ok, _, err) = cluster.cli(&full);
        assert!(!ok && err.contains(word), "{full:?}: {err}");
    }
    assert_eq!(cluster.json(&["job", "ls"]), Value::Array(vec![]));

    cluster.ok(&[
        "job",
        "create",
        "snap",
        "--task",
        "snapshot",
        "--cron",
        "*/2 * * * * *",
        "--retain",
        "2",
    ]);
    cluster.ok(&[
        "job",
        "create",
        "bk",
        "--task",
        "backup",
        "--cron",
        "*/4 * * * * *",
        "--retain",
        "2",
    ]);
    // The volume is attached away from the leader, which is killed later.
    let leader = cluster_leader(&cluster, &[1, 2, 3]).expect("a leader");
    let node = (1..=3).find(|n| *n != leader).unwrap();
    let others: Vec<u16> = (1..=3).filter(|n| *n != leader).collect();
    cluster.create_volume(
        "vj",
        16,
        2,
        &["--recurring-job", "snap", "--recurring-job", "bk"],
    );
    let endpoint = cluster.attach("vj", &format!("node-{node}"));
    write_random(&endpoint, 4);
    let job = cluster.json(&["job", "get", "snap"]);
    assert_eq!(job["volumes"], serde_json::json!(["vj"]), "{job}");

    let job_snapshots = || -> Vec<Value> {
        let snapshots = cluster.json(&["snapshot", "ls", "vj"]);
        snapshots
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["labels"]["RecurringJob"] == "snap" && s["state"] != "deleting")
            .cloned()
            .collect()
    };
    let completed_backups = || -> Vec<String> {
        let backups = cluster.json(&["backup", "ls", "vj"]);
        backups
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["labels"]["RecurringJob"] == "bk" && b["state"] == "completed")
            .map(|b| text_of(&b["name"]))
            .collect()
    };
    // Runs go on; the job never holds more than `retain` snapshots of the volume.
    let wait_runs = |alive: &[u16], snaps: usize, backups: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let kept = job_snapshots();
            assert!(kept.len() <= 2, "more than retain: {kept:?}");
            let events = logged_events(&cluster, alive[0]);
            let made_backups = events
                .iter()
                .filter(|e| {
                    e["type"] == "backupCompleted" && text_of(&e["name"]).starts_with("bk-")
                })
                .count();
            if fired_slots(&events, "snap").len() >= snaps && made_backups >= backups {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "jobs did not run: {:?}",
                fired_slots(&events, "snap")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    wait_runs(&[1, 2, 3], 3, 1);
    let before = fired_slots(&logged_events(&cluster, others[0]), "snap").len();

    // The leader dies; a new one goes on with the next slots, none run twice.
    cluster.kill_node(leader);
    wait_runs(&others, before + 4, 3);
    let events = logged_events(&cluster, others[0]);
    for (job, period) in [("snap", 2000), ("bk", 4000)] {
        let slots = fired_slots(&events, job);
        assert!(
            slots.windows(2).all(|w| w[0] < w[1]),
            "{job} ran a slot twice or out of order: {slots:?}"
        );
        assert!(slots.iter().all(|s| s % period == 0), "{job}: {slots:?}");
    }
    assert_eq!(job_snapshots().len(), 2, "retain 2 after many runs");

    // Detached (and allowRecurringJobWhileVolumeDetached off), the volume is skipped with
    // the reason; backups beyond retain are removed from the target and the log.
    cluster.detach("vj");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = cluster.json(&["job", "get", "bk"]);
        let newest = job["history"].as_array().and_then(|h| h.last()).cloned();
        let reason = text_of(&newest.unwrap_or_default()["outcomes"]["vj"]["reason"]);
        let on_target = cluster.json(&["backup", "volume", "get", "vj"]);
        let on_target = on_target.as_array().map_or(0, Vec::len);
        if reason.contains("allowRecurringJobWhileVolumeDetached")
            && completed_backups().len() == 2
            && on_target == 2
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not skipped or not trimmed: {job}, {:?}, {on_target} on the target",
            completed_backups()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    cluster.ok(&["job", "rm", "snap"]);
    let (ok, _, err) = cluster.cli(&["job", "get", "snap"]);
    assert!(!ok && err.contains("not found"), "{err}");
}

/// Milliseconds since the epoch, the log's clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// A timestamp field (ms), which must be there.
fn ms(field: &Value) -> u64 {
    field
        .as_u64()
        .unwrap_or_else(|| panic!("not a timestamp: {field}"))
}

/// The first completed backup of `volume` created after `after` (ms), waited for.
fn backup_after(cluster: &DevCluster, volume: &str, after: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let backups = cluster.json(&["backup", "ls", volume]);
        if let Some(b) = backups.as_array().unwrap().iter().find(|b| {
            b["state"] == "completed" && b["createdAt"].as_u64().is_some_and(|t| t > after)
        }) {
            return b.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no backup of {volume} after {after}: {backups}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_standby_in_a_second_cluster_follows_the_backups_and_activates_with_the_last() {
    // Cluster A backs volume src up to S3 every 3 s (a recurring job keeping 3); cluster
    // B, on the same target, holds two standbys of src's backup volume. B refuses to
    // attach, detach, expand, snapshot or back up a standby, follows each new backup with
    // an incremental restore, reports the S3 server stopped and catches up once it is
    // back, and goes on when the backup it holds is deleted on A. B stops following (standbyPollInterval 0), A writes and backs up once more,
    // then every node of A is SIGKILLed: activating the first standby restores that last
    // backup, and it reads back exactly A's last data as a normal volume. With the S3
    // server stopped as well, the second is activated with the backup it holds and a
    // note saying so.
    let S3Cluster {
        cluster: a,
        s3,
        credentials,
        ..
    } = &mut s3_cluster("s3s-fs");
    a.ok(&["setting", "set", "backupTarget", TARGET]);
    a.ok(&[
        "job",
        "create",
        "bk",
        "--task",
        "backup",
        "--cron",
        "*/3 * * * * *",
        "--retain",
        "3",
    ]);
    a.create_volume("src", 32, 2, &["--recurring-job", "bk"]);
    let endpoint = a.attach("src", "node-1");
    let written = write_random(&endpoint, 8);
    let work = written.work.path();
    let expected = work.join("expected.img");
    std::fs::copy(&written.data, &expected).expect("copy");
    let first = backup_after(a, "src", now_ms());

    let b = DevCluster::up_with(&[OsStr::new("--credentials"), credentials.as_os_str()]);
    b.ok(&["setting", "set", "backupTarget", TARGET]);
    b.ok(&["setting", "set", "standbyPollInterval", "1"]);
    let followed = format!("{TARGET}?volume=src");
    let (ok, _, err) = b.cli(&["volume", "create", "bad", "--size", "32Mi", "--standby"]);
    assert!(!ok && err.contains("--from-backup"), "{err}");
    let v = b.json(&[
        "volume",
        "create",
        "dr",
        "--from-backup",
        &followed,
        "--standby",
        "--replicas",
        "2",
        "--wait",
    ]);
    assert_eq!(v["standby"], true, "{v}");
    assert_eq!(v["size"].as_u64(), Some(32 * MIB), "{v}");
    assert!(v["dr"]["lastRestored"].is_string(), "{v}");
    assert!(
        ms(&v["dr"]["lastRestoredCreated"]) >= ms(&first["createdAt"]),
        "{v} {first}"
    );
    // A second standby of the same backup volume, activated later with the target down.
    let v = b.json(&[
        "volume",
        "create",
        "dr2",
        "--from-backup",
        &followed,
        "--standby",
        "--replicas",
        "1",
        "--wait",
    ]);
    assert_eq!(v["standby"], true, "{v}");
    for args in [
        vec!["volume", "attach", "dr", "--node", "node-1"],
        vec!["volume", "detach", "dr"],
        vec!["volume", "expand", "dr", "--size", "64Mi"],
        vec!["snapshot", "create", "dr", "s1"],
        vec!["backup", "create", "dr"],
    ] {
        let (ok, _, err) = b.cli(&args);
        assert!(
            !ok && err.contains("disaster-recovery standby"),
            "{args:?}: {err}"
        );
    }

    // A new write on A reaches B with the next backup.
    overwrite(&endpoint, &expected, 4, 2);
    let next = backup_after(a, "src", now_ms());
    let wait_restored = |name: &str, backup: &Value| {
        let created = ms(&backup["createdAt"]);
        b.wait_volume(name, "restored the backup", |v| {
            v["dr"]["lastRestoredCreated"].as_u64().unwrap_or(0) >= created
                && v["dr"]["restoring"].is_null()
                && v["dr"]["error"].is_null()
        })
    };
    wait_restored("dr", &next);
    wait_restored("dr2", &next);

    // The S3 server stops: B says why it cannot follow, and catches up once it is back.
    s3.stop();
    let v = b.wait_volume("dr", "reporting the target down", |v| {
        v["dr"]["error"].is_string()
    });
    let (_, out, _) = b.cli(&["volume", "ls"]);
    assert!(
        out.contains("error"),
        "the listing hides the error: {out}\n{v}"
    );
    s3.resume();
    overwrite(&endpoint, &expected, 10, 2);
    overwrite(&endpoint, &expected, 30, 2);
    let last = backup_after(a, "src", now_ms());
    wait_restored("dr", &last);
    wait_restored("dr2", &last);

    // The backup the standbys hold is deleted on A (a standby wedges on this in
    // Longhorn): they stay clear, and the next backup is restored over their own data,
    // compared block by block since its base is gone.
    let held = text_of(&b.json(&["volume", "get", "dr"])["dr"]["lastRestored"]);
    a.ok(&["backup", "rm", &held]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while a
        .json(&["backup", "volume", "get", "src"])
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["name"] == held.as_str())
    {
        assert!(Instant::now() < deadline, "{held} still on the target");
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(2));
    for name in ["dr", "dr2"] {
        let v = b.json(&["volume", "get", name]);
        assert!(
            v["standby"] == true && v["dr"]["error"].is_null(),
            "{name} after its backup {held} was deleted: {v}"
        );
    }
    overwrite(&endpoint, &expected, 12, 2);
    let after = backup_after(a, "src", now_ms());
    wait_restored("dr", &after);
    wait_restored("dr2", &after);
    let at_last = work.join("at-last.img");
    std::fs::copy(&expected, &at_last).expect("copy");

    // B stops following; A writes once more and backs it up; then A dies whole. The
    // activation itself must restore that last backup.
    b.ok(&["setting", "set", "standbyPollInterval", "0"]);
    std::thread::sleep(Duration::from_secs(2));
    overwrite(&endpoint, &expected, 20, 2);
    let fin = backup_after(a, "src", now_ms());
    std::thread::sleep(Duration::from_secs(3));
    let v = b.json(&["volume", "get", "dr"]);
    assert!(
        ms(&v["dr"]["lastRestoredCreated"]) < ms(&fin["createdAt"]),
        "followed with standbyPollInterval 0: {v}"
    );
    for n in 1..=3 {
        a.kill_node(n);
    }
    let (activated, endpoint) = activate_and_read(&b, "dr", "node-2", &expected);
    assert!(activated["dr"]["activatedAt"].is_u64(), "{activated}");
    assert!(activated["dr"]["activationNote"].is_null(), "{activated}");
    assert!(
        ms(&activated["dr"]["lastRestoredCreated"]) >= ms(&fin["createdAt"]),
        "{activated} {fin}"
    );
    // A normal volume now: snapshots and writes work.
    b.ok(&["snapshot", "create", "dr", "after"]);
    write_random(&endpoint, 1);
    b.detach("dr");

    // With the target gone too, the other standby is activated with what it holds, and
    // says so.
    s3.stop();
    // It holds the backup it had restored.
    let (activated, _) = activate_and_read(&b, "dr2", "node-3", &at_last);
    assert!(activated["dr"]["activationNote"].is_string(), "{activated}");
}

/// `volume activate name --wait` in `cluster`, then attached on `node` and read back whole:
/// it must equal `expected` zero-extended to 32 MiB. The activated volume and its endpoint.
fn activate_and_read(
    cluster: &DevCluster,
    name: &str,
    node: &str,
    expected: &Path,
) -> (Value, String) {
    let activated = cluster.json(&["volume", "activate", name, "--wait", "--timeout", "120"]);
    assert_eq!(activated["standby"], false, "{activated}");
    let want = padded(expected, 32 * MIB, &expected.with_extension("want"));
    let endpoint = cluster.attach(name, node);
    let got = expected.with_extension("got");
    read_image(&endpoint, &got);
    assert_eq!(
        sha256(&got),
        want,
        "activated volume {name} differs from the data of the backup it should hold"
    );
    (activated, endpoint)
}
