//! The CLI's following and waiting commands (`watch`, `volume attach|wait`) as a user runs
//! them against one `shorthorn dev up` cluster: what they print and how they exit.

mod testkit;

use testkit::DevCluster;

#[test]
fn watch_follows_the_log_while_attach_wait_and_detach_return_when_done() {
    // A user follows the log while creating, attaching, waiting on, snapshotting and
    // detaching a volume; the watch resumes on another manager when its manager dies,
    // printing no event twice.
    let cluster = DevCluster::up_with_failover();
    let mut watch = cluster.spawn(&["watch", "-o", "json", "--from", "1"]);

    cluster.ok(&["volume", "create", "db", "--size", "64Mi", "--wait"]);
    let created = watch.until(|line| {
        line["event"]["type"] == "volumeCreated" && line["event"]["volume"]["name"] == "db"
    });
    assert!(created["index"].as_u64().is_some(), "{created}");
    // The event carries the time of the command behind it (ms since the epoch).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let at = created["event"]["loggedAt"].as_u64().unwrap_or_default();
    assert!(
        at <= now && now - at < 120_000,
        "loggedAt {at} is not the create's time (now {now}): {created}"
    );

    let (ok, stdout, stderr) = cluster.cli(&["volume", "attach", "db", "--node", "node-1"]);
    assert!(ok, "attach failed: {stdout}{stderr}");
    assert!(
        stdout.trim().starts_with("nbd://") && stdout.trim().ends_with("/db"),
        "attach prints the NBD URI once attached: {stdout:?}"
    );
    assert_eq!(
        cluster.json(&["volume", "get", "db"])["state"],
        "attached",
        "attach returned before the volume was attached"
    );

    let out = cluster.ok(&[
        "volume",
        "wait",
        "db",
        "--for",
        "healthy",
        "--timeout",
        "60",
    ]);
    assert!(out.contains("volume \"db\" is healthy"), "{out}");

    cluster.ok(&["snapshot", "create", "db", "s1"]);
    let listed = cluster.ok(&["snapshot", "ls", "db"]);
    let header = listed.lines().next().unwrap_or_default();
    assert!(
        header.contains("STATE") && listed.contains("ready"),
        "snapshot ls shows the snapshot's state: {listed}"
    );
    let out = cluster.ok(&["volume", "detach", "db"]);
    assert!(out.contains("volume \"db\" detached"), "{out}");
    assert_eq!(cluster.json(&["volume", "get", "db"])["state"], "detached");

    // volume update: replica count, data locality and stale replica timeout; bad values and
    // nothing to change say why.
    cluster.ok(&[
        "volume",
        "update",
        "db",
        "--replicas",
        "2",
        "--data-locality",
        "best-effort",
        "--stale-replica-timeout",
        "5",
    ]);
    let v = cluster.json(&["volume", "get", "db"]);
    assert_eq!(
        (
            &v["numberOfReplicas"],
            &v["dataLocality"],
            &v["staleReplicaTimeoutSecs"]
        ),
        (&2.into(), &"best-effort".into(), &300.into()),
        "{v}"
    );
    let (ok, _, stderr) = cluster.cli(&[
        "volume",
        "update",
        "db",
        "--stale-replica-timeout",
        "600000",
    ]);
    assert!(!ok && stderr.contains("out of range"), "{stderr}");
    let (ok, _, stderr) = cluster.cli(&["volume", "update", "db"]);
    assert!(!ok && stderr.contains("nothing to change"), "{stderr}");

    let (ok, _, stderr) = cluster.cli(&["volume", "attach", "nope", "--node", "node-1"]);
    assert!(
        !ok && stderr.contains("volume \"nope\" not found"),
        "attaching an unknown volume names it: {stderr}"
    );
    let (ok, _, stderr) = cluster.cli(&["volume", "wait", "nope", "--for", "attached"]);
    assert!(
        !ok && stderr.contains("volume \"nope\" not found"),
        "{stderr}"
    );

    // Manager 1 serves the watch's stream; it dies, and the watch goes on from manager 2.
    cluster.kill_node(1);
    cluster.ok(&["volume", "create", "db2", "--size", "64Mi"]);
    watch.until(|line| {
        line["event"]["type"] == "volumeCreated" && line["event"]["volume"]["name"] == "db2"
    });
    let mut seen = std::collections::BTreeSet::new();
    for line in &watch.lines {
        assert!(seen.insert(line.to_string()), "printed twice: {line}");
    }
    let indexes: Vec<u64> = watch
        .lines
        .iter()
        .filter_map(|l| l["index"].as_u64())
        .collect();
    assert!(
        indexes.windows(2).all(|w| w[0] <= w[1]),
        "events out of order: {indexes:?}"
    );

    // Ctrl-C ends the watch successfully.
    let status = watch.interrupt();
    assert!(status.success(), "watch exited with {status} on SIGINT");
}
