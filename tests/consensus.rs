//! Multi-process tests of the replicated log: real `shorthorn manager` processes on
//! 127.0.0.1, SIGKILL of the leader, restarts from the data directory, catch-up through a
//! snapshot, and a manager that lost its disk.

#[path = "consensus/harness.rs"]
mod harness;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use harness::{Manager, addrs, client, converge, create_volume, leader, start_group, wait_status};
use shorthorn_consensus::Error;
use tokio::sync::Mutex;

/// Proposes `create_volume(prefix-i)` from `workers` tasks until stopped; returns the
/// acknowledged names.
fn propose_stream(
    addrs: Vec<String>,
    prefix: &'static str,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(BTreeSet<String>, Vec<String>)> {
    tokio::spawn(async move {
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (addrs, stop, acked, failed) =
                (addrs.clone(), stop.clone(), acked.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                let client = client();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("{prefix}-{w}-{i}");
                    i += 1;
                    match client.propose(&addrs, create_volume(&name)).await {
                        Ok(_) => {
                            acked.lock().await.insert(name);
                        }
                        Err(err) => failed.lock().await.push(format!("{name}: {err}")),
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        let acked = acked.lock().await.clone();
        let failed = failed.lock().await.clone();
        (acked, failed)
    })
}

async fn wait_acked(addrs: &[String], count: usize) {
    // Waits until `count` more commands commit, proving the group accepts commands.
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut done = 0;
    let mut i = 0;
    while done < count {
        i += 1;
        if client
            .propose(
                addrs,
                create_volume(&format!("probe-{}-{i}", std::process::id())),
            )
            .await
            .is_ok()
        {
            done += 1;
        }
        assert!(
            Instant::now() < deadline,
            "the group stopped accepting commands"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkilled_mid_stream_survivors_continue_and_it_catches_up() {
    // Three managers take a stream of commands; the leader is SIGKILLed in the middle; the
    // two others elect a leader and keep committing; the killed one restarts from its data
    // directory and ends with the same state, holding every acknowledged command.
    let root = tempfile::tempdir().expect("temporary directory");
    let mut managers = start_group(root.path(), 3).await;
    let client = client();
    let all = addrs(&managers);
    let stop = Arc::new(AtomicBool::new(false));
    let stream = propose_stream(all.clone(), "vol", 4, stop.clone());
    wait_acked(&all, 20).await;

    let old = leader(&client, &managers, Duration::from_secs(10)).await;
    managers[(old - 1) as usize].kill();
    let survivors: Vec<String> = managers
        .iter()
        .filter(|m| m.id != old)
        .map(|m| m.addr.clone())
        .collect();
    wait_acked(&survivors, 20).await;
    let status = client.status(&survivors[0]).await.expect("status");
    assert_ne!(status.leader, Some(old), "a new leader took over");

    managers[(old - 1) as usize].restart(None);
    wait_acked(&all, 20).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = stream.await.expect("proposers");
    eprintln!(
        "{} acknowledged, {} failed: {:?}",
        acked.len(),
        failed.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        acked.len() >= 20,
        "only {} commands acknowledged",
        acked.len()
    );

    let members: Vec<&Manager> = managers.iter().collect();
    let state = converge(&client, &members, Duration::from_secs(30)).await;
    for name in &acked {
        assert!(
            state.volumes.contains_key(name),
            "acknowledged volume {name} is missing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_member_catches_up_through_a_snapshot_after_the_log_was_purged() {
    // A follower is SIGKILLed; the group commits more; the leader snapshots and purges its
    // log; the follower restarts and can only catch up by installing the snapshot.
    let root = tempfile::tempdir().expect("temporary directory");
    let mut managers = start_group(root.path(), 3).await;
    let client = client();
    let all = addrs(&managers);
    for i in 0..10 {
        client
            .propose(&all, create_volume(&format!("early-{i}")))
            .await
            .expect("commit");
    }
    let lead = leader(&client, &managers, Duration::from_secs(10)).await;
    let follower = managers
        .iter()
        .map(|m| m.id)
        .find(|id| *id != lead)
        .expect("a follower");
    managers[(follower - 1) as usize].kill();
    for i in 0..30 {
        client
            .propose(&all, create_volume(&format!("late-{i}")))
            .await
            .expect("commit");
    }
    let lead = leader(&client, &managers, Duration::from_secs(10)).await;
    let leader_addr = managers[(lead - 1) as usize].addr.clone();
    let status = client
        .snapshot(&leader_addr, true)
        .await
        .expect("snapshot and purge");
    let purged = status.purged.expect("the leader purged its log");
    assert!(purged >= 40, "purged only up to {purged}");

    managers[(follower - 1) as usize].restart(None);
    let addr = managers[(follower - 1) as usize].addr.clone();
    let caught = wait_status(&client, &addr, Duration::from_secs(30), "caught up", |s| {
        s.snapshot.is_some_and(|i| i >= purged) && s.applied >= Some(purged)
    })
    .await;
    assert!(caught.snapshot >= Some(purged), "{caught:?}");
    let members: Vec<&Manager> = managers.iter().collect();
    let state = converge(&client, &members, Duration::from_secs(30)).await;
    assert!(state.volumes.contains_key("early-0") && state.volumes.contains_key("late-29"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_with_a_wiped_disk_cannot_rejoin_until_removed() {
    // Manager 3 loses its data directory and comes back with the same node id: the group
    // refuses it (it cannot have kept its vote and log), keeps its data with two voters,
    // and lets it in again only after it was removed.
    let root = tempfile::tempdir().expect("temporary directory");
    let mut managers = start_group(root.path(), 3).await;
    let client = client();
    let all = addrs(&managers);
    for i in 0..10 {
        client
            .propose(&all, create_volume(&format!("kept-{i}")))
            .await
            .expect("commit");
    }
    let first = managers[0].addr.clone();
    managers[2].kill();
    std::fs::remove_dir_all(&managers[2].dir).expect("wipe the data directory");
    managers[2].restart(Some(&first));
    let exited = managers[2].wait_exit(Duration::from_secs(30));
    let log = managers[2].log_text();
    assert_eq!(
        exited,
        Some(false),
        "the wiped manager must exit with an error; log:\n{log}"
    );
    assert!(log.contains("already a member"), "log:\n{log}");

    // Nothing was lost and the two others still commit.
    let two = vec![managers[0].addr.clone(), managers[1].addr.clone()];
    client
        .propose(&two, create_volume("after-wipe"))
        .await
        .expect("commit with 2 of 3");

    // Remove node 3, then it can join again as a new disk.
    let status = client.remove(&first, 3).await.expect("remove node 3");
    assert!(!status.members.contains_key(&3), "{status:?}");
    std::fs::remove_dir_all(&managers[2].dir).ok();
    managers[2].restart(Some(&first));
    let addr = managers[2].addr.clone();
    wait_status(
        &client,
        &addr,
        Duration::from_secs(30),
        "a voter again",
        |s| s.voters.contains(&3),
    )
    .await;
    let members: Vec<&Manager> = managers.iter().collect();
    let state = converge(&client, &members, Duration::from_secs(30)).await;
    assert!(state.volumes.contains_key("kept-9") && state.volumes.contains_key("after-wipe"));
    let err = client
        .propose(&two, create_volume("kept-0"))
        .await
        .expect_err("a duplicate volume is rejected");
    assert!(matches!(err, Error::Rejected { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_manager_cleanly_and_it_restarts_with_its_data() {
    // A one-manager group commits, is stopped with SIGTERM (exit status 0), and restarts
    // from its data directory with everything it acknowledged.
    let root = tempfile::tempdir().expect("temporary directory");
    let mut managers = start_group(root.path(), 1).await;
    let client = client();
    let all = addrs(&managers);
    for i in 0..5 {
        client
            .propose(&all, create_volume(&format!("term-{i}")))
            .await
            .expect("commit");
    }
    managers[0].terminate();
    let exited = managers[0].wait_exit(Duration::from_secs(15));
    assert_eq!(exited, Some(true), "log:\n{}", managers[0].log_text());
    managers[0].restart(None);
    let addr = managers[0].addr.clone();
    wait_status(
        &client,
        &addr,
        Duration::from_secs(20),
        "leader again",
        |s| s.role == "Leader",
    )
    .await;
    let members: Vec<&Manager> = managers.iter().collect();
    let state = converge(&client, &members, Duration::from_secs(10)).await;
    assert!(state.volumes.contains_key("term-4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_whose_port_is_still_held_waits_for_it_and_starts() {
    // A manager started again while its Raft port is still held (as by the exiting threads
    // of the process it replaces) waits, and serves once the port is let go; it does not
    // quit with "Address already in use".
    let root = tempfile::tempdir().expect("temporary directory");
    let mut managers = start_group(root.path(), 1).await;
    let client = client();
    let all = addrs(&managers);
    client
        .propose(&all, create_volume("before"))
        .await
        .expect("commit");
    managers[0].kill();
    let held = std::net::TcpListener::bind(managers[0].addr.as_str()).expect("hold the port");
    managers[0].restart(None);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        managers[0].wait_exit(Duration::from_millis(100)),
        None,
        "it quit while the port was held; log:\n{}",
        managers[0].log_text()
    );
    assert!(
        managers[0]
            .log_text()
            .contains("the address is in use; retrying"),
        "log:\n{}",
        managers[0].log_text()
    );
    drop(held);
    let addr = managers[0].addr.clone();
    wait_status(
        &client,
        &addr,
        Duration::from_secs(20),
        "leader again",
        |s| s.role == "Leader",
    )
    .await;
    let members: Vec<&Manager> = managers.iter().collect();
    let state = converge(&client, &members, Duration::from_secs(10)).await;
    assert!(state.volumes.contains_key("before"));
}
