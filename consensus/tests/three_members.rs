//! A healthy in-process group of three members: proposals through any member, rejections,
//! linearizable reads, subscriptions, status, and a new leader after the old one stops.

mod testkit;

use std::time::Duration;

use futures::StreamExt;
use shorthorn_consensus::Error;
use shorthorn_state::{Command, Event, Request, Timestamp, VolumeSpec};
use testkit::{Cluster, events_of, test_tuning, token_command, tokens};

fn create_volume(name: &str) -> Command {
    Command::new(
        Timestamp(1_700_000_000_000),
        "test",
        Request::CreateVolume(VolumeSpec {
            name: name.to_string(),
            size: 64 << 20,
            ..Default::default()
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_through_any_member_are_applied_everywhere() {
    // Three members; every member proposes; all apply the same commands in the same order.
    let cluster = Cluster::start(3, 1, test_tuning(3)).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let follower = cluster
        .ids
        .iter()
        .copied()
        .find(|id| *id != leader)
        .unwrap();

    for (i, handle) in cluster.members.values().enumerate() {
        let events = handle
            .propose(token_command(&format!("token-{i}")))
            .await
            .expect("proposal through any member commits");
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::SettingChanged { value, .. } if *value == format!("token-{i}"))),
            "events of the proposal: {events:?}"
        );
    }

    // A rejection comes back with the state machine's words, from a follower too.
    let bad = Command::new(
        Timestamp(1),
        "test",
        Request::SetSetting {
            key: "noSuchSetting".to_string(),
            value: "1".to_string(),
        },
    );
    let err = cluster.members[&follower].propose(bad).await.unwrap_err();
    assert!(
        matches!(&err, Error::Rejected { message, .. } if message.contains("noSuchSetting")),
        "{err}"
    );

    // A linearizable read on a follower sees the last acknowledged proposal.
    let value = cluster.members[&follower]
        .read(|state| state.settings.get("backupTargetCredentialSecret"))
        .await
        .expect("linearizable read");
    assert_eq!(value.as_deref(), Some("token-2"));

    cluster.converge(Duration::from_secs(10)).await;
    cluster.assert_identical_states();
    let applied = cluster.members[&leader].status().applied.unwrap_or(0);
    for handle in cluster.members.values() {
        let events = events_of(handle, applied).await;
        assert_eq!(tokens(&events), vec!["token-0", "token-1", "token-2"]);
    }

    let status = cluster.members[&follower].status();
    assert_eq!(status.leader, Some(leader));
    assert_eq!(status.voters.len(), 3);
    assert_eq!(status.committed, status.applied);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_follows_new_entries_and_resumes_from_an_index() {
    // A subscriber sees events as they are applied, and can resume from a later index.
    let cluster = Cluster::start(3, 2, test_tuning(3)).await;
    cluster.leader(Duration::from_secs(10)).await;
    let handle = cluster.any();
    let mut stream = Box::pin(handle.subscribe(0));
    handle
        .propose(create_volume("vol-a"))
        .await
        .expect("create vol-a");
    let (first_index, first) = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event in time")
        .expect("stream open")
        .expect("no error");
    assert!(matches!(first, Event::VolumeCreated { .. }), "{first:?}");

    handle
        .propose(create_volume("vol-b"))
        .await
        .expect("create vol-b");
    let mut resumed = Box::pin(handle.subscribe(first_index + 1));
    let (index, event) = tokio::time::timeout(Duration::from_secs(5), resumed.next())
        .await
        .expect("an event in time")
        .expect("stream open")
        .expect("no error");
    assert!(index > first_index);
    assert!(
        matches!(&event, Event::VolumeCreated { .. }),
        "resumed stream starts after vol-a: {event:?}"
    );
    let text = format!("{event:?}");
    assert!(text.contains("vol-b"), "{text}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_when_the_leader_stops() {
    // The leader stops; the two others elect a leader and keep committing; the old leader
    // restarts from its data directory and catches up.
    let mut cluster = Cluster::start(3, 3, test_tuning(3)).await;
    let old = cluster.leader(Duration::from_secs(10)).await;
    cluster
        .any()
        .propose(token_command("before"))
        .await
        .expect("commit");
    cluster.kill(old).await;
    let new = cluster.leader(Duration::from_secs(10)).await;
    assert_ne!(new, old);
    cluster
        .any()
        .propose(token_command("after"))
        .await
        .expect("commit after failover");
    cluster.start_member(old).await;
    cluster.converge(Duration::from_secs(15)).await;
    let state = cluster.assert_identical_states();
    assert_eq!(
        state
            .settings
            .get("backupTargetCredentialSecret")
            .as_deref(),
        Some("after")
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_a_purged_log_installs_the_snapshot() {
    // A member misses commands while the leader snapshots and purges its log; on restart it
    // catches up through the snapshot, ends with the same state, and its subscriptions say
    // which events it no longer has instead of silently skipping them.
    let mut cluster = Cluster::start(3, 4, test_tuning(3)).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let lagging = cluster
        .ids
        .iter()
        .copied()
        .find(|id| *id != leader)
        .unwrap();
    cluster.kill(lagging).await;
    for i in 0..20 {
        cluster.members[&leader]
            .propose(create_volume(&format!("vol-{i}")))
            .await
            .expect("commit without the lagging member");
    }
    let status = cluster.members[&leader]
        .snapshot(true)
        .await
        .expect("snapshot and purge");
    let purged = status.purged.expect("purged");

    let restarted = cluster.start_member(lagging).await;
    cluster.converge(Duration::from_secs(15)).await;
    let state = cluster.assert_identical_states();
    assert!(state.volumes.contains_key("vol-19"));
    assert!(restarted.status().snapshot >= Some(purged));

    let mut from_start = Box::pin(restarted.subscribe(0));
    let first = tokio::time::timeout(Duration::from_secs(5), from_start.next())
        .await
        .expect("an answer in time")
        .expect("stream open");
    assert!(
        matches!(first, Err(Error::EventsTrimmed { .. })),
        "{first:?}"
    );
    cluster
        .any()
        .propose(create_volume("after"))
        .await
        .expect("commit");
    let mut tail = Box::pin(restarted.subscribe(purged + 1));
    let (_, event) = tokio::time::timeout(Duration::from_secs(5), tail.next())
        .await
        .expect("an event in time")
        .expect("stream open")
        .expect("kept events");
    assert!(format!("{event:?}").contains("after"), "{event:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_after_the_member_restarts() {
    // Events are kept by log index on disk: after a restart a subscriber can resume from
    // index 0 (or any later index) on the same member and sees the same events.
    let mut cluster = Cluster::start(3, 5, test_tuning(3)).await;
    cluster.leader(Duration::from_secs(10)).await;
    for i in 0..3 {
        cluster
            .any()
            .propose(token_command(&format!("before-{i}")))
            .await
            .expect("commit");
    }
    cluster.converge(Duration::from_secs(10)).await;
    let member = 2;
    let applied = cluster.members[&member].status().applied.unwrap_or(0);
    let before = events_of(&cluster.members[&member], applied).await;
    cluster.kill(member).await;
    let restarted = cluster.start_member(member).await;
    cluster.converge(Duration::from_secs(15)).await;
    let after = events_of(&restarted, applied).await;
    assert_eq!(tokens(&after), vec!["before-0", "before-1", "before-2"]);
    assert_eq!(after, before);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_retried_under_one_request_id_is_applied_once() {
    // The same create, under one request id, is proposed at once through every member
    // (forwarded and batched with the others on the leader): one creates the volume, every
    // other gets the first success with no events. A retried rejection repeats it.
    let cluster = Cluster::start(3, 6, test_tuning(3)).await;
    cluster.leader(Duration::from_secs(10)).await;
    let proposals = cluster.members.values().flat_map(|handle| {
        (0..3).map(move |_| handle.propose(create_volume("db").with_id("req-db")))
    });
    let outcomes = futures::future::join_all(proposals).await;
    let events: Vec<Vec<Event>> = outcomes
        .into_iter()
        .map(|outcome| outcome.expect("every proposal succeeds"))
        .collect();
    assert_eq!(
        events.iter().filter(|e| !e.is_empty()).count(),
        1,
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .flatten()
            .any(|e| matches!(e, Event::VolumeCreated { .. }))
    );

    let first = cluster
        .any()
        .propose(create_volume("db").with_id("req-again"))
        .await
        .unwrap_err();
    assert!(
        matches!(&first, Error::Rejected { message, .. } if message.contains("already exists")),
        "{first}"
    );
    for handle in cluster.members.values() {
        let retry = handle
            .propose(create_volume("db").with_id("req-again"))
            .await
            .unwrap_err();
        assert_eq!(retry, first);
    }
    cluster.converge(Duration::from_secs(10)).await;
    let state = cluster.assert_identical_states();
    assert_eq!(state.volumes.len(), 1);
    assert!(state.requests.get("req-db").is_some());
    cluster.shutdown().await;
}
