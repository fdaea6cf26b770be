//! Randomized in-process clusters of 3 and 5 members over a transport that drops, delays,
//! duplicates and partitions messages, with leader kills and restarts. Every acknowledged
//! command must be applied exactly once on every member, and all members must end with
//! identical encoded states. Seeds are fixed (override with SHORTHORN_SEED) and printed.

mod testkit;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shorthorn_consensus::{Error, Handle, NodeId};
use testkit::{Cluster, Faults, events_of, is_ambiguous, test_tuning, token_command, tokens};

struct Outcome {
    acked: BTreeSet<String>,
    ambiguous: usize,
    refused: usize,
}

/// Proposers that pick a random live member for each command until `until`.
async fn propose_until(
    live: Arc<Mutex<Vec<Handle>>>,
    seed: u64,
    workers: u64,
    until: Instant,
) -> Outcome {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let live = live.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (w + 1).wrapping_mul(0x9E37_79B9));
            let mut out = Outcome {
                acked: BTreeSet::new(),
                ambiguous: 0,
                refused: 0,
            };
            let mut i = 0;
            while Instant::now() < until {
                let handle = {
                    let live = live.lock().unwrap_or_else(|e| e.into_inner());
                    if live.is_empty() {
                        None
                    } else {
                        Some(live[rng.random_range(0..live.len())].clone())
                    }
                };
                let Some(handle) = handle else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let token = format!("t-{w}-{i}");
                i += 1;
                match handle.propose(token_command(&token)).await {
                    Ok(_) => {
                        out.acked.insert(token);
                    }
                    Err(err) if is_ambiguous(&err) || matches!(err, Error::Stopped { .. }) => {
                        out.ambiguous += 1
                    }
                    Err(_) => out.refused += 1,
                }
            }
            out
        }));
    }
    let mut total = Outcome {
        acked: BTreeSet::new(),
        ambiguous: 0,
        refused: 0,
    };
    for task in tasks {
        let out = task.await.expect("proposer task");
        total.acked.extend(out.acked);
        total.ambiguous += out.ambiguous;
        total.refused += out.refused;
    }
    total
}

fn publish(cluster: &Cluster, live: &Arc<Mutex<Vec<Handle>>>) {
    *live.lock().unwrap_or_else(|e| e.into_inner()) = cluster.members.values().cloned().collect();
}

async fn run_scenario(n: u64, seed: u64, duration: Duration) {
    eprintln!("scenario: {n} members, seed {seed} (rerun with SHORTHORN_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start(n, seed, test_tuning(n as usize)).await;
    cluster.leader(Duration::from_secs(15)).await;
    cluster.router.set_faults(Faults {
        drop_request: 0.03,
        drop_reply: 0.03,
        duplicate: 0.05,
        max_delay: Duration::from_millis(8),
    });
    let live = Arc::new(Mutex::new(Vec::new()));
    publish(&cluster, &live);
    let until = Instant::now() + duration;
    let proposers = tokio::spawn(propose_until(live.clone(), seed, 4, until));

    let mut log = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..800))).await;
        match rng.random_range(0..3) {
            0 => {
                // Kill the leader (or whoever a member believes leads), restart it later.
                let victim = cluster
                    .any()
                    .status()
                    .leader
                    .filter(|id| cluster.members.contains_key(id))
                    .unwrap_or_else(|| cluster.ids[rng.random_range(0..cluster.ids.len())]);
                log.push(format!("kill {victim}"));
                cluster.kill(victim).await;
                publish(&cluster, &live);
                tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
                cluster.start_member(victim).await;
                publish(&cluster, &live);
            }
            1 => {
                let victim: NodeId = cluster.ids[rng.random_range(0..cluster.ids.len())];
                log.push(format!("isolate {victim}"));
                cluster.router.isolate(victim, &cluster.ids);
                tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
                cluster.router.heal();
            }
            _ => {
                let loss = rng.random_range(0.0..0.15);
                log.push(format!("loss {loss:.2}"));
                cluster.router.set_faults(Faults {
                    drop_request: loss,
                    drop_reply: loss,
                    duplicate: 0.05,
                    max_delay: Duration::from_millis(rng.random_range(1..20)),
                });
            }
        }
    }
    let outcome = proposers.await.expect("proposers");
    eprintln!(
        "seed {seed}: {} acknowledged, {} ambiguous, {} refused; chaos: {log:?}",
        outcome.acked.len(),
        outcome.ambiguous,
        outcome.refused
    );

    // Heal everything and let the group settle, then commit a final command.
    cluster.router.heal();
    cluster.router.set_faults(Faults::default());
    cluster.leader(Duration::from_secs(20)).await;
    cluster
        .any()
        .propose(token_command("final"))
        .await
        .unwrap_or_else(|err| panic!("seed {seed}: the healed group does not commit: {err}"));
    cluster.converge(Duration::from_secs(30)).await;
    cluster.assert_identical_states();
    assert!(
        outcome.acked.len() >= 10,
        "seed {seed}: only {} commands acknowledged under faults",
        outcome.acked.len()
    );

    let applied = cluster.any().status().applied.unwrap_or(0);
    let mut reference: Option<Vec<String>> = None;
    for (id, handle) in &cluster.members {
        let seen = tokens(&events_of(handle, applied).await);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for token in &seen {
            *counts.entry(token.as_str()).or_default() += 1;
        }
        for token in &outcome.acked {
            assert_eq!(
                counts.get(token.as_str()).copied().unwrap_or(0),
                1,
                "seed {seed}: member {id} applied acknowledged {token} not exactly once"
            );
        }
        assert_eq!(counts.get("final"), Some(&1), "seed {seed}: member {id}");
        if let Some(dup) = counts.iter().find(|(_, c)| **c > 1) {
            panic!("seed {seed}: member {id} applied {} twice", dup.0);
        }
        match &reference {
            None => reference = Some(seen),
            Some(r) => assert!(
                *r == seen,
                "seed {seed}: member {id} saw another event order"
            ),
        }
    }
    cluster.shutdown().await;
}

fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("SHORTHORN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => vec![seed],
        None => default.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_under_random_faults_and_leader_kills() {
    // Three members, lossy and reordering network, partitions and leader kills.
    for seed in seeds(&[3_001, 3_002]) {
        run_scenario(3, seed, Duration::from_secs(8)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_under_random_faults_and_leader_kills() {
    // Five members, lossy and reordering network, partitions and leader kills.
    for seed in seeds(&[5_001]) {
        run_scenario(5, seed, Duration::from_secs(10)).await;
    }
}
