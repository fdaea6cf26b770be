//! End to end on a `shorthorn dev up` cluster (3 managers, their node agents, real replica
//! and engine processes), driven through the CLI and the REST API, with qemu-img as the
//! NBD client.

mod testkit;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use testkit::{
    DevCluster, Written, export_size, random_file, read_image, run, sha256, text, text_of,
    write_image, write_random,
};

#[test]
fn volume_restarted_on_another_node_keeps_its_filesystem() {
    // The seed's MySQL story: a pod's volume moves to another node and its data is there.
    let cluster = DevCluster::up();
    cluster.create_volume("db", 64, 3, &[]);
    let replicas = cluster.json(&["replica", "ls"]);
    let mut nodes: Vec<&str> = replicas
        .as_array()
        .expect("list")
        .iter()
        .map(|r| r["node"].as_str().expect("node"))
        .collect();
    nodes.sort();
    assert_eq!(
        nodes,
        ["node-1", "node-2", "node-3"],
        "replicas on three different nodes"
    );

    let work = tempfile::tempdir().expect("tempdir");
    let image = work.path().join("fs.img");
    run("truncate", &["-s", "64M", image.to_str().expect("path")]);
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            concat!(env!("CARGO_MANIFEST_DIR"), "/state/src"),
            image.to_str().expect("path"),
        ],
    );

    let endpoint = cluster.attach("db", "node-1");
    assert!(endpoint.starts_with("nbd://127.0.0.1:"), "{endpoint}");
    write_image(&image, &endpoint);
    cluster.detach("db");

    let endpoint = cluster.attach("db", "node-2");
    let back = work.path().join("back.img");
    read_image(&endpoint, &back);
    assert_eq!(
        sha256(&image),
        sha256(&back),
        "the filesystem read back on node-2 differs"
    );
    let volume = cluster.json(&["volume", "get", "db"]);
    assert_eq!(volume["epoch"], 2, "each attach takes a new epoch");

    cluster.detach("db");
    cluster.ok(&["volume", "delete", "db"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster
        .json(&["volume", "ls"])
        .as_array()
        .is_some_and(|v| !v.is_empty())
    {
        assert!(Instant::now() < deadline, "volume db was never deleted");
        std::thread::sleep(Duration::from_millis(200));
    }
    for n in 1..=3 {
        let replicas = cluster.dir().join(format!("m{n}/disk/replicas"));
        let left: Vec<_> = std::fs::read_dir(&replicas)
            .expect("replica root")
            .collect();
        assert!(
            left.is_empty(),
            "replica directories left on node-{n}: {left:?}"
        );
    }
}

#[test]
fn bad_input_gets_clear_errors() {
    let cluster = DevCluster::up();
    let (ok, _, err) = cluster.cli(&["volume", "create", "Bad_Name", "--size", "1Gi"]);
    assert!(
        !ok && err.contains("DNS-1123 label") && err.contains("HTTP 400"),
        "{err}"
    );
    let (ok, _, err) = cluster.cli(&["volume", "create", "odd", "--size", "3Mi"]);
    assert!(!ok && err.contains("not a multiple of 2 MiB"), "{err}");
    let (ok, _, err) = cluster.cli(&["volume", "create", "odd", "--size", "ten"]);
    assert!(!ok && err.contains("is not a size"), "{err}");
    let (ok, _, err) = cluster.cli(&["volume", "get", "nope"]);
    assert!(
        !ok && err.contains("volume \"nope\" not found") && err.contains("HTTP 404"),
        "{err}"
    );
    let (ok, _, err) = cluster.cli(&["setting", "set", "replicaSoftAntiAffinity", "maybe"]);
    assert!(
        !ok && err.contains("setting \"replicaSoftAntiAffinity\""),
        "{err}"
    );

    let url = format!("{}/v1/volumes", cluster.api());
    match ureq::get(&url).call() {
        Err(ureq::Error::Status(401, response)) => {
            let body: Value = response.into_json().expect("JSON error body");
            assert_eq!(body["error"], "unauthorized");
        }
        other => panic!("no token must give 401, got {other:?}"),
    }
    let auth = format!("Bearer {}", cluster.token());
    for garbage in [
        "{",
        "[]",
        "{\"name\": 5}",
        "{\"name\":\"x\",\"size\":1,\"extra\":true}",
    ] {
        match ureq::post(&url)
            .set("Authorization", &auth)
            .set("Content-Type", "application/json")
            .send_string(garbage)
        {
            Err(ureq::Error::Status(400 | 422, response)) => {
                let body: Value = response.into_json().expect("JSON error body");
                assert!(
                    body["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{body}"
                );
            }
            other => panic!("garbage {garbage:?} must give 4xx, got {other:?}"),
        }
    }
    // The managers are still there after all of that.
    let health = ureq::get(&format!("{}/healthz", cluster.api()))
        .call()
        .expect("healthz");
    assert_eq!(health.status(), 200);
}

#[test]
fn replica_node_killed_mid_write_is_replaced_and_rebuilt() {
    // A 4-replica volume is short of nodes until a 4th node joins; then the node of one
    // replica of an attached volume dies while a writer runs; the replica is replaced on
    // the free node, rebuilt, and every byte written is read back.
    let cluster = DevCluster::up();
    cluster.create_volume("wide", 8, 4, &[]);
    let wide = cluster.json(&["volume", "get", "wide"]);
    let condition = wide["condition"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        condition,
        "3 of 4 replicas scheduled: hard node anti-affinity, only 3 schedulable nodes"
    );
    let _node4 = cluster.add_node(4);
    cluster.wait_volume("wide", "fully scheduled", |v| {
        v["replicas"].as_array().is_some_and(|r| r.len() == 4) && v["condition"].is_null()
    });

    cluster.create_volume("db", 32, 3, &["--stale-replica-timeout", "0"]);
    let replica_nodes = |c: &DevCluster| -> Vec<(String, String)> {
        c.json(&["replica", "ls"])
            .as_array()
            .expect("list")
            .iter()
            .filter(|r| r["volume"] == "db")
            .map(|r| {
                (
                    r["node"].as_str().expect("node").to_string(),
                    r["mode"].as_str().expect("mode").to_string(),
                )
            })
            .collect()
    };
    let before = replica_nodes(&cluster);
    let victim = before
        .iter()
        .map(|(n, _)| n.clone())
        .find(|n| n != "node-1")
        .expect("a replica off node-1");
    let victim_n: u16 = victim
        .trim_start_matches("node-")
        .parse()
        .expect("node number");
    let endpoint = cluster.attach("db", "node-1");

    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("data.img");
    random_file(&data, 32);
    // The writer goes on until the node is dead and then makes one more full pass, so
    // writes are in flight across the kill and after it, however fast the machine is.
    let killed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (data, endpoint, killed) = (data.clone(), endpoint.clone(), killed.clone());
        std::thread::spawn(move || {
            while !killed.load(std::sync::atomic::Ordering::SeqCst) {
                write_image(&data, &endpoint);
            }
            write_image(&data, &endpoint);
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    cluster.kill_node(victim_n);
    killed.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().expect("the writer saw no I/O error");

    // Healthy is not enough: right after the kill the volume may still list the dead
    // node's replica as RW until the engine or the heartbeat notices.
    let deadline = Instant::now() + Duration::from_secs(60);
    while replica_nodes(&cluster)
        .iter()
        .any(|(node, mode)| node == &victim || mode != "RW")
    {
        assert!(
            Instant::now() < deadline,
            "the replica on {victim} was never replaced: {:?}",
            replica_nodes(&cluster)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let healthy = cluster.wait_volume("db", "healthy again", |v| {
        v["robustness"] == "healthy" && v["replicas"].as_array().is_some_and(|r| r.len() == 3)
    });
    let after = replica_nodes(&cluster);
    assert!(
        after
            .iter()
            .all(|(node, mode)| node != &victim && mode == "RW"),
        "{after:?}"
    );
    assert_eq!(healthy["epoch"], 1, "the engine kept serving: no re-attach");

    let back = work.path().join("back.img");
    read_image(&endpoint, &back);
    assert_eq!(
        sha256(&data),
        sha256(&back),
        "data read back after the rebuild differs"
    );
}

#[test]
fn attached_node_killed_volume_reattaches_elsewhere_with_its_data() {
    // The node running a volume's engine dies: after missed heartbeats the log marks it
    // down, the volume is detached, and it attaches on another node under a new epoch with
    // every byte that was written.
    let cluster = DevCluster::up();
    cluster.create_volume("db", 32, 3, &[]);
    let Written { work, data, .. } = write_random(&cluster.attach("db", "node-3"), 32);
    cluster.kill_node(3);

    cluster.wait_volume("db", "detached from the dead node", |v| {
        v["state"] == "detached"
    });
    let nodes = cluster.json(&["node", "ls"]);
    let node3 = nodes
        .as_array()
        .expect("list")
        .iter()
        .find(|n| n["id"] == "node-3")
        .expect("node-3");
    assert_eq!(node3["ready"], false, "node-3 is down: {node3}");
    let (ok, _, err) = cluster.cli(&["volume", "attach", "db", "--node", "node-3"]);
    assert!(!ok && err.contains("is down"), "{err}");

    let endpoint = cluster.attach("db", "node-1");
    let back = work.path().join("back.img");
    read_image(&endpoint, &back);
    assert_eq!(
        sha256(&data),
        sha256(&back),
        "data read back on node-1 differs"
    );
    assert_eq!(cluster.json(&["volume", "get", "db"])["epoch"], 2);
}

#[test]
fn leader_killed_during_volume_create_happens_once_or_not_at_all() {
    // `volume create` goes to the Raft leader's manager, which is SIGKILLed right after the
    // request leaves; the CLI fails over to the other managers and must report truthfully.
    let cluster = DevCluster::up();
    let status: Value = ureq::get(&format!("{}/v1/cluster", cluster.api()))
        .set("Authorization", &format!("Bearer {}", cluster.token()))
        .call()
        .expect("cluster status")
        .into_json()
        .expect("JSON");
    let leader = status["leader"].as_u64().expect("a leader") as u16;
    let order: Vec<String> = std::iter::once(leader)
        .chain((1..=3).filter(|n| *n != leader))
        .map(|n| cluster.api_of(n))
        .collect();
    let survivor = order[1].clone();

    let cli = cluster
        .command(&["volume", "create", "db", "--size", "8Mi", "-o", "json"])
        .env("SHORTHORN_API", order.join(","))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs the CLI");
    std::thread::sleep(Duration::from_millis(5));
    cluster.kill_node(leader);
    let out = cli.wait_with_output().expect("CLI finishes");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    eprintln!("the CLI said: {stderr}");

    // The survivors may still be electing a leader: their reads fail (503/504) until then.
    let deadline = Instant::now() + Duration::from_secs(30);
    let volumes: Value = loop {
        let read = ureq::get(&format!("{survivor}/v1/volumes"))
            .set("Authorization", &format!("Bearer {}", cluster.token()))
            .call();
        match read {
            Ok(response) => break response.into_json().expect("JSON"),
            Err(err) if Instant::now() < deadline => {
                eprintln!("survivor read: {err}; retrying");
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(err) => panic!("the survivors never answered: {err}"),
        }
    };
    let count = volumes
        .as_array()
        .expect("list")
        .iter()
        .filter(|v| v["name"] == "db")
        .count();
    // The survivors answer within the CLI's deadline, so its answer must be definite.
    if out.status.success() {
        assert_eq!(count, 1, "the CLI said created: {stdout}{stderr}");
        let created: Value = serde_json::from_str(&stdout).expect("JSON volume");
        assert_eq!(created["name"], "db");
        assert!(stderr.contains("volume \"db\" created"), "{stderr}");
    } else {
        assert!(
            stderr.contains("volume \"db\" was not created"),
            "the CLI must say whether the volume was created: {stderr}"
        );
        assert_eq!(count, 0, "the CLI said not created: {stderr}");
    }

    // The same write sent twice under one Idempotency-Key gets the same answer twice and
    // happens once; under a new key it is a new write.
    let create = |key: &str| -> (u16, Value) {
        let sent = ureq::post(&format!("{survivor}/v1/volumes"))
            .set("Authorization", &format!("Bearer {}", cluster.token()))
            .set("Idempotency-Key", key)
            .send_json(serde_json::json!({ "name": "logs", "size": "8Mi" }));
        match sent {
            Ok(response) => (response.status(), response.into_json().expect("JSON")),
            Err(ureq::Error::Status(status, response)) => {
                (status, response.into_json().expect("JSON error"))
            }
            Err(err) => panic!("the survivor did not answer: {err}"),
        }
    };
    let (first, volume) = create("test-key-1");
    assert_eq!(first, 201, "{volume}");
    let (again, same) = create("test-key-1");
    assert_eq!((again, &same["name"]), (201, &volume["name"]), "{same}");
    let (other, refused) = create("test-key-2");
    assert_eq!(
        (other, &refused["error"]),
        (409, &Value::from("alreadyExists"))
    );
}

#[test]
fn replica_process_killed_comes_back_and_is_rebuilt_by_delta() {
    // Only a replica process dies (its node stays up): the engine drops it, its agent
    // restarts it, and it is rebuilt in place — same replica, no replacement — with the data
    // written meanwhile.
    let cluster = DevCluster::up();
    cluster.create_volume("db", 32, 3, &[]);
    let endpoint = cluster.attach("db", "node-1");
    let replicas = |c: &DevCluster| -> Vec<(String, String, String)> {
        let mut all: Vec<(String, String, String)> = c
            .json(&["replica", "ls"])
            .as_array()
            .expect("list")
            .iter()
            .map(|r| (text_of(&r["id"]), text_of(&r["node"]), text_of(&r["mode"])))
            .collect();
        all.sort();
        all
    };
    let before = replicas(&cluster);
    let (victim_id, victim_node, _) = before
        .iter()
        .find(|(_, n, _)| n == "node-2")
        .cloned()
        .expect("a replica on node-2");
    let record = cluster
        .dir()
        .join(format!("m2/disk/replicas/{victim_id}/process.json"));
    let pid = serde_json::from_str::<Value>(&std::fs::read_to_string(&record).expect("record"))
        .expect("json")["pid"]
        .to_string();

    let Written { work, data, .. } = write_random(&endpoint, 32);
    let _ = Command::new("kill").args(["-9", &pid]).status();
    // While it is down, only the first 2 MiB change.
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x5a 0 2M", &endpoint],
    );
    let mut expected = std::fs::read(&data).expect("data");
    expected[..2 << 20].fill(0x5a);
    std::fs::write(&data, &expected).expect("expected image");

    // The log must show this replica failing, being rebuilt and serving again, in order.
    cluster.wait_events(&[
        ("replicaFailed", &victim_id),
        ("replicaRebuilding", &victim_id),
        ("replicaHealthy", &victim_id),
    ]);
    cluster.wait_volume("db", "healthy again", |v| v["robustness"] == "healthy");
    let after = replicas(&cluster);
    assert!(
        after
            .iter()
            .any(|(id, node, _)| id == &victim_id && node == &victim_node),
        "the replica was replaced, not rebuilt: {after:?}"
    );
    assert_eq!(after.len(), 3);
    let back = work.path().join("back.img");
    read_image(&endpoint, &back);
    assert_eq!(sha256(&data), sha256(&back));
    // Only the changed chunks were copied (1 MiB chunks; the engine logs the count).
    let log = std::fs::read_to_string(cluster.dir().join("m1/disk/engines/db/engine.log"))
        .expect("engine log");
    let copied: Vec<&str> = log.lines().filter(|l| l.contains("rebuild done")).collect();
    assert!(
        copied.iter().any(|l| l.contains("chunks_copied=2")),
        "rebuild copied more than the 2 changed chunks: {copied:?}"
    );
}

#[test]
fn snapshot_of_a_detached_volume_is_taken_internally_and_reverted_to() {
    // Data written, volume detached, `snapshot create` on it: the log attaches it without a
    // frontend, the engine takes the snapshot, the log detaches it again. Attached by the
    // user, written over, reverted to the snapshot: qemu-img reads the first data back.
    let cluster = DevCluster::up();
    let Written {
        endpoint,
        work,
        data,
    } = cluster.volume_with_data("db", 16, 2, &[]);
    cluster.detach("db");
    let taken = cluster.json(&["snapshot", "create", "db", "cold"]);
    assert_eq!(taken["state"], "ready", "the engine took it: {taken}");
    let volume = cluster.wait_volume("db", "detached again", |v| v["state"] == "detached");
    assert_eq!(volume["snapshots"]["cold"]["state"], "ready", "{volume}");

    drop(endpoint);
    let endpoint = cluster.attach("db", "node-1");
    let other = work.path().join("other.img");
    random_file(&other, 16);
    write_image(&other, &endpoint);
    let (status, body) = cluster.post("/v1/volumes/db/snapshots/cold/revert", "{}");
    assert_eq!(status, 200, "{body}");
    let back = work.path().join("back.img");
    read_image(&endpoint, &back);
    assert_eq!(
        sha256(&data),
        sha256(&back),
        "revert did not bring back the data of the snapshot taken while detached"
    );
    // Deleting it while detached merges it the same way and leaves the volume detached.
    cluster.detach("db");
    cluster.ok(&["snapshot", "delete", "db", "cold"]);
    let volume = cluster.wait_volume("db", "detached, without the snapshot", |v| {
        v["state"] == "detached" && v["snapshots"].as_object().is_some_and(|s| s.is_empty())
    });
    assert!(volume["attachment"].is_null(), "{volume}");
}

#[test]
fn snapshot_then_revert_brings_back_the_old_data() {
    let cluster = DevCluster::up();
    cluster.create_volume("db", 16, 2, &[]);
    let endpoint = cluster.attach("db", "node-1");
    let work = tempfile::tempdir().expect("tempdir");
    let (first, second) = (work.path().join("a.img"), work.path().join("b.img"));
    random_file(&first, 16);
    random_file(&second, 16);

    write_image(&first, &endpoint);
    let taken = cluster.json(&["snapshot", "create", "db", "s1"]);
    assert_eq!(taken["state"], "ready", "the engine took it: {taken}");
    write_image(&second, &endpoint);
    let taken = cluster.json(&["snapshot", "create", "db", "s2"]);
    assert_eq!(taken["state"], "ready", "{taken}");

    // The engine refuses to revert under a connected client, and the API says why.
    let holder = Command::new("qemu-io")
        .args(["-f", "raw", &endpoint, "-c", "sleep 4000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("qemu-io");
    std::thread::sleep(Duration::from_millis(1000));
    let (status, body) = cluster.post("/v1/volumes/db/snapshots/s1/revert", "{}");
    let mut holder = holder;
    let _ = holder.wait();
    assert_eq!(status, 409, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("volume \"db\" was not reverted to snapshot \"s1\": "),
        "{body}"
    );

    let (status, body) = cluster.post("/v1/volumes/db/snapshots/s1/revert", "{}");
    assert_eq!(status, 200, "{body}");
    let names: Vec<String> = cluster
        .json(&["snapshot", "ls", "db"])
        .as_array()
        .expect("list")
        .iter()
        .map(|s| text_of(&s["name"]))
        .collect();
    assert_eq!(names, ["s1"], "s2 was newer than the revert target");

    let back = work.path().join("back.img");
    read_image(&endpoint, &back);
    assert_eq!(
        sha256(&first),
        sha256(&back),
        "revert did not bring back s1"
    );

    cluster.ok(&["snapshot", "delete", "db", "s1"]);
    let left = cluster.json(&["snapshot", "ls", "db"]);
    assert_eq!(left.as_array().map(Vec::len), Some(0), "{left}");
    let back = work.path().join("after-delete.img");
    read_image(&endpoint, &back);
    assert_eq!(
        sha256(&first),
        sha256(&back),
        "merging the snapshot away changed the data"
    );
}

#[test]
fn volume_whose_replicas_all_died_is_salvaged_with_its_data() {
    // Every replica process of an attached volume is SIGKILLed: the volume faults, the agents
    // report the replicas' revision counters, the log picks the freshest, a new engine starts
    // under a new epoch and the other replica is rebuilt (or, past its stale timeout of 0,
    // replaced) from it. A faulted volume's failed replicas must never be replaced by empty
    // ones, whatever the timeout.
    let cluster = DevCluster::up();
    let Written {
        endpoint,
        work,
        data,
    } = cluster.volume_with_data("db", 16, 2, &["--stale-replica-timeout", "0"]);

    for pid in cluster.replica_pids("db") {
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
    }
    // The engine notices on its next I/O, which fails.
    let _ = Command::new("qemu-io")
        .args(["-f", "raw", &endpoint, "-c", "read 0 64k"])
        .output();
    let volume = cluster.wait_volume("db", "salvaged and healthy", |v| {
        v["state"] == "attached"
            && v["robustness"] == "healthy"
            && v["epoch"].as_u64().is_some_and(|e| e >= 2)
    });
    let replicas = cluster.json(&["replica", "ls"]);
    let ours: Vec<&Value> = replicas
        .as_array()
        .expect("list")
        .iter()
        .filter(|r| r["volume"] == "db")
        .collect();
    assert_eq!(ours.len(), 2, "{replicas}");
    assert!(ours.iter().all(|r| r["mode"] == "RW"), "{replicas}");

    let endpoint = volume["attachment"]["endpoint"]
        .as_str()
        .expect("endpoint")
        .to_string();
    let back = work.path().join("back.img");
    read_image(&endpoint, &back);
    assert_eq!(sha256(&data), sha256(&back), "salvage lost data");
}

#[test]
fn volume_expands_online_and_offline_keeping_its_data() {
    let cluster = DevCluster::up();
    let Written {
        endpoint,
        work,
        data,
    } = cluster.volume_with_data("db", 16, 2, &[]);

    // Online: the engine and its replicas grow while attached.
    cluster.ok(&["volume", "expand", "db", "--size", "32Mi"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while export_size(&endpoint) != 32 << 20 {
        assert!(Instant::now() < deadline, "the export never grew to 32 MiB");
        std::thread::sleep(Duration::from_millis(300));
    }
    cluster.detach("db");

    // Offline: the replicas grow when the next engine starts, on another node.
    cluster.ok(&["volume", "expand", "db", "--size", "48Mi"]);
    let endpoint = cluster.attach("db", "node-2");
    assert_eq!(export_size(&endpoint), 48 << 20);
    let back = work.path().join("back.img");
    read_image(&endpoint, &back);
    let bytes = std::fs::read(&back).expect("read back");
    assert_eq!(bytes.len(), 48 << 20);
    assert_eq!(
        bytes[..16 << 20],
        std::fs::read(&data).expect("data")[..],
        "the first 16 MiB changed"
    );
    assert!(
        bytes[16 << 20..].iter().all(|b| *b == 0),
        "the grown part reads as zeros"
    );
    let volume = cluster.json(&["volume", "get", "db"]);
    assert_eq!(volume["robustness"], "healthy", "{volume}");
}

#[test]
fn revert_after_a_replica_was_replaced_keeps_every_replica_identical() {
    // A replica rebuilt after its node died holds the volume's data but not the snapshot
    // layers taken before. Reverting must not leave it serving the newer data next to
    // siblings that reverted: it leaves the set and is rebuilt from them.
    let cluster = DevCluster::up();
    let Written {
        endpoint,
        work,
        data: first,
    } = cluster.volume_with_data("db", 16, 2, &["--stale-replica-timeout", "0"]);
    let second = work.path().join("b.img");
    random_file(&second, 16);
    cluster.ok(&["snapshot", "create", "db", "s1"]);
    write_image(&second, &endpoint);

    let replicas = cluster.json(&["replica", "ls"]);
    let victim = replicas
        .as_array()
        .expect("list")
        .iter()
        .map(|r| text_of(&r["node"]))
        .find(|n| n != "node-1")
        .unwrap_or_else(|| "node-2".into());
    let old: Vec<String> = replicas
        .as_array()
        .expect("list")
        .iter()
        .map(|r| text_of(&r["id"]))
        .collect();
    cluster.kill_node(victim.trim_start_matches("node-").parse().expect("n"));
    cluster.wait_volume("db", "healthy on a replacement", |v| {
        v["robustness"] == "healthy"
            && v["replicas"]
                .as_array()
                .is_some_and(|r| r.iter().any(|id| !old.contains(&text_of(id))))
    });

    let (status, body) = cluster.post("/v1/volumes/db/snapshots/s1/revert", "{}");
    assert_eq!(status, 200, "{body}");
    cluster.wait_volume("db", "healthy after the revert", |v| {
        v["robustness"] == "healthy"
    });
    for attempt in 0..2 {
        let back = work.path().join(format!("back{attempt}.img"));
        read_image(&endpoint, &back);
        assert_eq!(
            sha256(&first),
            sha256(&back),
            "read {attempt} after the revert differs from s1: replicas diverged"
        );
    }
}

#[test]
fn a_node_agent_without_a_disk_flag_uses_the_default_data_path_setting() {
    let cluster = DevCluster::up();
    let default = cluster.dir().join("m4/default-data");
    cluster.ok(&[
        "setting",
        "set",
        "defaultDataPath",
        default.to_str().expect("utf-8 path"),
    ]);
    let _node4 = cluster.add_node_with(4, &["--agent".as_ref()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let node = loop {
        let nodes = cluster.json(&["node", "ls"]);
        if let Some(node) = nodes
            .as_array()
            .and_then(|n| n.iter().find(|n| n["id"] == "node-4"))
        {
            break node.clone();
        }
        assert!(
            Instant::now() < deadline,
            "node-4 never registered: {nodes}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let paths: Vec<String> = node["disks"]
        .as_object()
        .expect("disks")
        .values()
        .map(|d| text_of(&d["path"]))
        .collect();
    assert_eq!(paths, [default.display().to_string()], "{node}");
    assert!(default.join("replicas").is_dir(), "the agent made its disk");
}

#[test]
fn replica_that_stalled_and_resumed_at_its_address_is_rebuilt_in_place() {
    // A replica process stops answering (SIGSTOP: a hung disk, a cut link) while writes
    // run; the engine times it out. When it answers again at the same address it is taken
    // back by a delta rebuild — no replacement — and holds every byte.
    let cluster = DevCluster::up();
    cluster.create_volume("db", 16, 2, &[]);
    let endpoint = cluster.attach("db", "node-1");
    let ids = |c: &DevCluster| -> Vec<String> {
        let mut ids: Vec<String> = c
            .json(&["replica", "ls"])
            .as_array()
            .expect("list")
            .iter()
            .map(|r| text_of(&r["id"]))
            .collect();
        ids.sort();
        ids
    };
    let before = ids(&cluster);
    let pid = cluster.replica_pids("db").remove(0);
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("data.img");
    random_file(&data, 16);

    let _ = Command::new("kill").args(["-STOP", pid.trim()]).status();
    write_image(&data, &endpoint);
    cluster.wait_volume("db", "degraded", |v| v["robustness"] == "degraded");
    let _ = Command::new("kill").args(["-CONT", pid.trim()]).status();
    cluster.wait_volume("db", "healthy again", |v| v["robustness"] == "healthy");
    assert_eq!(ids(&cluster), before, "rebuilt in place, not replaced");

    let back = work.path().join("back.img");
    read_image(&endpoint, &back);
    assert_eq!(sha256(&data), sha256(&back));
    // Both replicas serve reads now: read again so each one is asked for half the blocks.
    read_image(&endpoint, &back);
    assert_eq!(sha256(&data), sha256(&back));
}

#[test]
fn replica_replaced_while_its_node_was_down_is_an_orphan_deleted_only_on_request() {
    // A node dies, its replica is replaced elsewhere, the node comes back: its old replica
    // directory is reported, kept, and deleted once orphanAutoDeletion is set.
    let cluster = DevCluster::up();
    cluster.create_volume("db", 16, 2, &["--stale-replica-timeout", "0"]);
    cluster.attach("db", "node-1");
    let replicas = cluster.json(&["replica", "ls"]);
    let (victim_id, victim) = replicas
        .as_array()
        .expect("list")
        .iter()
        .map(|r| (text_of(&r["id"]), text_of(&r["node"])))
        .find(|(_, node)| node != "node-1")
        .expect("a replica off node-1");
    let n: u16 = victim.trim_start_matches("node-").parse().expect("n");
    cluster.kill_node(n);
    cluster.wait_volume("db", "healthy on a replacement", |v| {
        v["robustness"] == "healthy"
            && v["replicas"]
                .as_array()
                .is_some_and(|r| r.iter().all(|id| text_of(id) != victim_id))
    });

    let node_dir = cluster.dir().join(format!("m{n}"));
    let orphan = node_dir.join("disk/replicas").join(&victim_id);
    let disk = node_dir.join("disk");
    let _back = cluster.add_node_with(n, &["--disk".as_ref(), disk.as_os_str()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(node_dir.join("manager.log"))
        .unwrap_or_default()
        .contains("orphaned replica directory")
    {
        assert!(
            Instant::now() < deadline,
            "the returning node never reported its orphan"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(orphan.is_dir(), "kept while orphanAutoDeletion is off");

    cluster.ok(&["setting", "set", "orphanAutoDeletion", "true"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while orphan.exists() {
        assert!(Instant::now() < deadline, "the orphan was never deleted");
        std::thread::sleep(Duration::from_millis(200));
    }
    let healthy = cluster.json(&["volume", "get", "db"]);
    assert_eq!(healthy["robustness"], "healthy", "{healthy}");
}

#[test]
fn salvage_picks_the_replica_with_the_newest_data() {
    // Replica A's node dies; writes go on to replica B alone; then B's process dies too and
    // A's node comes back. Both report revision counters and the log must pick B (newer):
    // picking A would silently roll the volume back.
    // Any node may die here, the first manager's too: the CLI may use all three.
    let cluster = DevCluster::up_with_failover();
    cluster.create_volume("db", 16, 2, &[]);
    let replicas = cluster.json(&["replica", "ls"]);
    let placed: Vec<(String, u16)> = replicas
        .as_array()
        .expect("list")
        .iter()
        .map(|r| {
            let node = text_of(&r["node"]);
            (
                text_of(&r["id"]),
                node.trim_start_matches("node-").parse().expect("n"),
            )
        })
        .collect();
    let free = (1..=3u16)
        .find(|n| placed.iter().all(|(_, m)| m != n))
        .expect("a node without a replica");
    let (a, b) = (placed[0].1, placed[1].1);
    let endpoint = cluster.attach("db", &format!("node-{free}"));
    write_random(&endpoint, 16);

    cluster.kill_node(a);
    let newer = write_random(&endpoint, 16);
    cluster.wait_volume("db", "degraded", |v| v["robustness"] == "degraded");
    let record = cluster
        .dir()
        .join(format!("m{b}/disk/replicas/{}/process.json", placed[1].0));
    let pid = serde_json::from_str::<Value>(&std::fs::read_to_string(&record).expect("record"))
        .expect("JSON")["pid"]
        .to_string();
    let _ = Command::new("kill").args(["-9", &pid]).status();
    // Back well within the 10 s after which the log would mark it down: salvage must wait
    // for A's revision too.
    let disk = cluster.dir().join(format!("m{a}/disk"));
    let _back = cluster.add_node_with(a, &["--disk".as_ref(), disk.as_os_str()]);

    let volume = cluster.wait_volume("db", "salvaged and healthy", |v| {
        v["state"] == "attached"
            && v["robustness"] == "healthy"
            && v["epoch"].as_u64().is_some_and(|e| e >= 2)
    });
    let log_a = std::fs::read_to_string(cluster.dir().join(format!("m{a}/manager.log")))
        .unwrap_or_default();
    assert!(
        log_a.contains("reporting the revision for salvage"),
        "node-{a} never reported its replica's (older) revision: the choice was not tested"
    );
    let endpoint = volume["attachment"]["endpoint"]
        .as_str()
        .expect("endpoint")
        .to_string();
    let back = newer.work.path().join("back.img");
    read_image(&endpoint, &back);
    assert_eq!(
        sha256(&newer.data),
        sha256(&back),
        "salvage chose the replica with the older data"
    );
}

#[test]
fn manager_killed_alone_adopts_its_running_children_and_io_goes_on() {
    // Only the manager of the attached node is SIGKILLed: its engine and replica processes
    // keep serving, a writer sees no error, and the restarted manager adopts them (same
    // processes, same epoch and endpoint) instead of restarting them.
    let cluster = DevCluster::up_with_failover();
    cluster.create_volume("db", 16, 3, &[]);
    let endpoint = cluster.attach("db", "node-1");
    let pids_of = |n: u16, kind: &str| -> Vec<String> {
        let mut pids: Vec<String> =
            std::fs::read_dir(cluster.dir().join(format!("m{n}/disk/{kind}")))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("process.json")).ok())
                .map(|t| serde_json::from_str::<Value>(&t).expect("record")["pid"].to_string())
                .collect();
        pids.sort();
        pids
    };
    let (engines, replicas) = (pids_of(1, "engines"), pids_of(1, "replicas"));
    assert_eq!(engines.len(), 1, "one engine on node-1");

    let manager = std::fs::read_to_string(cluster.dir().join("m1/pid")).expect("pid");
    let _ = Command::new("kill").args(["-9", manager.trim()]).status();
    // The data path does not need its manager.
    let written = write_random(&endpoint, 16);

    let disk = cluster.dir().join("m1/disk");
    let _back = cluster.add_node_with(1, &["--disk".as_ref(), disk.as_os_str()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(cluster.dir().join("m1/manager.log"))
        .unwrap_or_default()
        .contains("adopted a running child")
    {
        assert!(
            Instant::now() < deadline,
            "the restarted manager adopted nothing"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A few agent ticks later nothing was restarted.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(pids_of(1, "engines"), engines, "the engine was restarted");
    assert_eq!(pids_of(1, "replicas"), replicas, "a replica was restarted");
    let volume = cluster.json(&["volume", "get", "db"]);
    assert_eq!(volume["state"], "attached", "{volume}");
    assert_eq!(volume["epoch"], 1, "{volume}");
    assert_eq!(
        volume["attachment"]["endpoint"],
        endpoint.as_str(),
        "{volume}"
    );
    assert_eq!(volume["robustness"], "healthy", "{volume}");

    let back = written.work.path().join("back.img");
    read_image(&endpoint, &back);
    assert_eq!(sha256(&written.data), sha256(&back));
}

#[test]
fn scrub_finds_a_corrupted_replica_and_it_is_repaired_in_place() {
    // A block of one replica is overwritten behind its back. With scrubInterval set, the
    // agent's scrub finds that replica contradicted by the other two, it is failed and
    // rebuilt by delta (the bad chunk copied back), and the volume is healthy again with
    // the same replicas.
    let cluster = DevCluster::up();
    let Written {
        endpoint,
        work,
        data,
    } = cluster.volume_with_data("db", 8, 3, &[]);
    let replicas = cluster.json(&["replica", "ls"]);
    let victim = &replicas.as_array().expect("list")[1];
    let (id, node) = (text_of(&victim["id"]), text_of(&victim["node"]));
    let n = node.trim_start_matches("node-");
    let image = cluster
        .dir()
        .join(format!("m{n}/disk/replicas/{id}/volume-head-001.img"));
    let offset = (5 << 20) + 4096;
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .expect("head image");
        file.write_all_at(&[0xee; 4096], offset).expect("corrupt");
    }
    cluster.ok(&["setting", "set", "scrubInterval", "2"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = cluster.dir().join("m1/manager.log");
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("scrub: replicas differ")
    {
        assert!(Instant::now() < deadline, "no scrub found the corruption");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The bad block is copied back by the delta rebuild.
    use std::os::unix::fs::FileExt;
    let block_at = |path: &std::path::Path| {
        let mut block = vec![0u8; 4096];
        std::fs::File::open(path)
            .expect("image")
            .read_exact_at(&mut block, offset)
            .expect("read");
        block
    };
    let original = block_at(&data);
    let deadline = Instant::now() + Duration::from_secs(60);
    while block_at(&image) != original {
        assert!(
            Instant::now() < deadline,
            "the bad block was never copied back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let volume = cluster.wait_volume("db", "healthy again", |v| v["robustness"] == "healthy");
    let ids: Vec<String> = cluster
        .json(&["replica", "ls"])
        .as_array()
        .expect("list")
        .iter()
        .map(|r| text_of(&r["id"]))
        .collect();
    assert!(
        ids.contains(&id),
        "repaired in place, not replaced: {ids:?}"
    );
    assert_eq!(volume["epoch"], 1, "{volume}");
    let back = work.path().join("back.img");
    read_image(&endpoint, &back);
    assert_eq!(sha256(&data), sha256(&back));
}
