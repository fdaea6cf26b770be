//! Property tests over random command sequences: replay is deterministic, and after every
//! step the scheduler's rules and the state's own bookkeeping hold.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::testkit::GIB;
use crate::{
    Command, DiskSpec, Epoch, Event, NodeSpec, ReplicaMode, Request, State, Timestamp, VolumeSpec,
    VolumeState, apply, decide, evolve,
};

const NODES: usize = 6;
const VOLUMES: usize = 6;
const MIB2: u64 = 2 << 20;

/// A step of a test run; replica-directed steps pick a replica by index at run time.
#[derive(Debug, Clone)]
enum Step {
    Register {
        node: usize,
        zone: usize,
        disks: Vec<u64>,
    },
    NodeSchedulable {
        node: usize,
        on: bool,
    },
    DiskSchedulable {
        node: usize,
        disk: usize,
        on: bool,
    },
    DiskAvailable {
        node: usize,
        disk: usize,
        percent: u64,
    },
    AddDisk {
        node: usize,
        disk: usize,
        gib: u64,
    },
    RemoveNode {
        node: usize,
    },
    RemoveDisk {
        node: usize,
        disk: usize,
    },
    Create {
        volume: usize,
        units: u64,
        replicas: u8,
        stale_minutes: u64,
    },
    Replicas {
        volume: usize,
        replicas: u8,
    },
    Expand {
        volume: usize,
        units: u64,
    },
    Delete {
        volume: usize,
    },
    Attach {
        volume: usize,
        node: usize,
    },
    Detach {
        volume: usize,
    },
    EngineStarted {
        volume: usize,
    },
    EngineStopped {
        volume: usize,
    },
    ReplicaFailed {
        pick: usize,
    },
    Rebuilding {
        pick: usize,
    },
    Rebuilt {
        pick: usize,
    },
    Healthy {
        pick: usize,
    },
    RemoveReplica {
        pick: usize,
    },
    ReplaceStale,
    Heartbeat {
        node: usize,
    },
    MarkDead {
        timeout_secs: u64,
    },
    Setting {
        which: usize,
        choice: usize,
    },
    Snapshot {
        volume: usize,
        name: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let n = 0..NODES;
    let v = 0..VOLUMES;
    prop_oneof![
        3 => (n.clone(), 0..4usize, prop::collection::vec(1..200u64, 1..3))
            .prop_map(|(node, zone, disks)| Step::Register { node, zone, disks }),
        1 => (n.clone(), any::<bool>()).prop_map(|(node, on)| Step::NodeSchedulable { node, on }),
        1 => (n.clone(), 0..2usize, any::<bool>()).prop_map(|(node, disk, on)| Step::DiskSchedulable { node, disk, on }),
        1 => (n.clone(), 0..2usize, 0..=100u64).prop_map(|(node, disk, percent)| Step::DiskAvailable { node, disk, percent }),
        1 => (n.clone(), 0..3usize, 1..100u64).prop_map(|(node, disk, gib)| Step::AddDisk { node, disk, gib }),
        1 => n.clone().prop_map(|node| Step::RemoveNode { node }),
        1 => (n.clone(), 0..3usize).prop_map(|(node, disk)| Step::RemoveDisk { node, disk }),
        4 => (v.clone(), 1..20_000u64, 1..5u8, 0..3u64)
            .prop_map(|(volume, units, replicas, stale_minutes)| Step::Create { volume, units, replicas, stale_minutes }),
        1 => (v.clone(), 1..5u8).prop_map(|(volume, replicas)| Step::Replicas { volume, replicas }),
        1 => (v.clone(), 0..5_000u64).prop_map(|(volume, units)| Step::Expand { volume, units }),
        1 => v.clone().prop_map(|volume| Step::Delete { volume }),
        2 => (v.clone(), n.clone()).prop_map(|(volume, node)| Step::Attach { volume, node }),
        1 => v.clone().prop_map(|volume| Step::Detach { volume }),
        2 => v.clone().prop_map(|volume| Step::EngineStarted { volume }),
        1 => v.clone().prop_map(|volume| Step::EngineStopped { volume }),
        2 => any::<usize>().prop_map(|pick| Step::ReplicaFailed { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Rebuilding { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Rebuilt { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Healthy { pick }),
        1 => any::<usize>().prop_map(|pick| Step::RemoveReplica { pick }),
        2 => Just(Step::ReplaceStale),
        1 => n.clone().prop_map(|node| Step::Heartbeat { node }),
        1 => (0..200u64).prop_map(|timeout_secs| Step::MarkDead { timeout_secs }),
        2 => (0..6usize, 0..3usize).prop_map(|(which, choice)| Step::Setting { which, choice }),
        1 => (v, 0..3usize).prop_map(|(volume, name)| Step::Snapshot { volume, name }),
    ]
}

fn node(i: usize) -> String {
    format!("n{i}")
}
fn volume(i: usize) -> String {
    format!("v{i}")
}
fn disk(i: usize) -> String {
    format!("d{i}")
}

/// Turns a step into a request against the current state.
fn request(state: &State, step: &Step) -> Request {
    let replica = |pick: usize| -> String {
        let ids: Vec<&String> = state.replicas.keys().collect();
        if ids.is_empty() {
            "none".to_string()
        } else {
            ids[pick % ids.len()].clone()
        }
    };
    let epoch = |v: usize| state.volumes.get(&volume(v)).map_or(Epoch(0), |v| v.epoch);
    match step.clone() {
        Step::Register {
            node: n,
            zone,
            disks,
        } => Request::RegisterNode(NodeSpec {
            id: node(n),
            address: format!("127.0.0.{n}:9500"),
            zone: if zone == 0 {
                String::new()
            } else {
                format!("z{zone}")
            },
            disks: disks
                .iter()
                .enumerate()
                .map(|(i, gib)| DiskSpec {
                    id: disk(i),
                    path: format!("/d{i}"),
                    capacity: gib * GIB,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        Step::NodeSchedulable { node: n, on } => Request::SetNodeSchedulable {
            id: node(n),
            schedulable: on,
        },
        Step::DiskSchedulable {
            node: n,
            disk: d,
            on,
        } => Request::SetDiskSchedulable {
            node: node(n),
            disk: disk(d),
            schedulable: on,
        },
        Step::DiskAvailable {
            node: n,
            disk: d,
            percent,
        } => {
            let capacity = state
                .nodes
                .get(&node(n))
                .and_then(|x| x.disks.get(&disk(d)))
                .map_or(GIB, |d| d.capacity);
            Request::UpdateDisk {
                node: node(n),
                disk: disk(d),
                capacity: None,
                reserved: None,
                available: Some(capacity / 100 * percent),
                tags: None,
            }
        }
        Step::AddDisk {
            node: n,
            disk: d,
            gib,
        } => Request::AddDisk {
            node: node(n),
            disk: DiskSpec {
                id: disk(d),
                path: format!("/d{d}"),
                capacity: gib * GIB,
                ..Default::default()
            },
        },
        Step::RemoveNode { node: n } => Request::RemoveNode { id: node(n) },
        Step::RemoveDisk { node: n, disk: d } => Request::RemoveDisk {
            node: node(n),
            disk: disk(d),
        },
        Step::Create {
            volume: v,
            units,
            replicas,
            stale_minutes,
        } => Request::CreateVolume(VolumeSpec {
            name: volume(v),
            size: units * MIB2,
            number_of_replicas: Some(replicas),
            stale_replica_timeout: Some(stale_minutes),
            ..Default::default()
        }),
        Step::Replicas {
            volume: v,
            replicas,
        } => Request::UpdateVolume {
            labels: Default::default(),
            name: volume(v),
            number_of_replicas: Some(replicas),
            data_locality: None,
            stale_replica_timeout_secs: None,
        },
        Step::Expand { volume: v, units } => {
            let size = state.volumes.get(&volume(v)).map_or(MIB2, |x| x.size);
            Request::ExpandVolume {
                name: volume(v),
                size: size + units * MIB2,
            }
        }
        Step::Delete { volume: v } => Request::DeleteVolume { name: volume(v) },
        Step::Attach { volume: v, node: n } => Request::AttachVolume {
            name: volume(v),
            node: node(n),
            frontend: Default::default(),
        },
        Step::Detach { volume: v } => Request::DetachVolume { name: volume(v) },
        Step::EngineStarted { volume: v } => Request::ReportEngineStarted {
            name: volume(v),
            epoch: epoch(v),
            endpoint: "nbd://e".into(),
            frontend: Default::default(),
            device: None,
        },
        Step::EngineStopped { volume: v } => Request::ReportEngineStopped {
            name: volume(v),
            epoch: epoch(v),
        },
        Step::ReplicaFailed { pick } => Request::ReportReplicaFailed {
            id: replica(pick),
            reason: "test".into(),
        },
        Step::Rebuilding { pick } => Request::ReportReplicaRebuilding { id: replica(pick) },
        Step::Rebuilt { pick } => Request::ReportReplicaRebuilt { id: replica(pick) },
        Step::Healthy { pick } => Request::ReportReplicaHealthy { id: replica(pick) },
        Step::RemoveReplica { pick } => Request::RemoveReplica { id: replica(pick) },
        Step::ReplaceStale => Request::ReplaceStaleReplicas,
        Step::Heartbeat { node: n } => Request::Heartbeat { node: node(n) },
        Step::MarkDead { timeout_secs } => Request::MarkDeadNodes { timeout_secs },
        Step::Setting { which, choice } => {
            let (key, values): (&str, [&str; 3]) = match which {
                0 => ("replicaSoftAntiAffinity", ["false", "true", "false"]),
                1 => ("replicaZoneSoftAntiAffinity", ["false", "true", "false"]),
                2 => ("replicaDiskSoftAntiAffinity", ["false", "true", "false"]),
                3 => ("storageOverProvisioningPercentage", ["50", "100", "300"]),
                4 => ("storageMinimalAvailablePercentage", ["0", "10", "25"]),
                _ => (
                    "defaultDataLocality",
                    ["disabled", "best-effort", "disabled"],
                ),
            };
            Request::SetSetting {
                key: key.into(),
                value: values[choice].into(),
            }
        }
        Step::Snapshot { volume: v, name } => Request::CreateSnapshot {
            labels: Default::default(),
            volume: volume(v),
            name: format!("s{name}"),
        },
    }
}

/// Checks one placement against the state it was decided on.
fn check_placement(before: &State, event: &Event) -> Result<(), TestCaseError> {
    let Event::ReplicaScheduled { replica } = event else {
        return Ok(());
    };
    let settings = &before.settings;
    let volume = &before.volumes[&replica.volume];
    let node = &before.nodes[&replica.node];
    let disk = &node.disks[&replica.disk];
    prop_assert!(
        node.schedulable,
        "replica {} on unschedulable node {}",
        replica.id,
        node.id
    );
    prop_assert!(
        node.ready,
        "replica {} on down node {}",
        replica.id,
        node.id
    );
    prop_assert!(
        disk.schedulable,
        "replica {} on unschedulable disk",
        replica.id
    );
    prop_assert!(
        disk.scheduled + volume.size <= disk.schedulable_limit(settings),
        "disk {}/{} over its limit",
        node.id,
        disk.id
    );
    prop_assert!(disk.has_minimal_available(settings));
    for other in before.replicas_of(volume) {
        if !settings.replica_soft_anti_affinity {
            prop_assert_ne!(
                &other.node,
                &replica.node,
                "hard node anti-affinity violated for {}",
                volume.name
            );
        }
        let other_zone = &before.nodes[&other.node].zone;
        if !settings.replica_zone_soft_anti_affinity && !node.zone.is_empty() {
            prop_assert_ne!(
                other_zone,
                &node.zone,
                "hard zone anti-affinity violated for {}",
                volume.name
            );
        }
        if !settings.replica_disk_soft_anti_affinity {
            prop_assert!(
                other.node != replica.node || other.disk != replica.disk,
                "hard disk anti-affinity violated"
            );
        }
    }
    Ok(())
}

/// Checks what must hold after every step.
fn check_state(state: &State, epochs: &mut BTreeMap<String, Epoch>) -> Result<(), TestCaseError> {
    let mut scheduled: BTreeMap<(String, String), u64> = BTreeMap::new();
    for replica in state.replicas.values() {
        let volume = &state.volumes[&replica.volume];
        prop_assert!(volume.replicas.contains(&replica.id));
        *scheduled
            .entry((replica.node.clone(), replica.disk.clone()))
            .or_default() += volume.size;
    }
    for node in state.nodes.values() {
        for disk in node.disks.values() {
            let expected = scheduled
                .remove(&(node.id.clone(), disk.id.clone()))
                .unwrap_or(0);
            prop_assert_eq!(
                disk.scheduled,
                expected,
                "derived usage of {}/{}",
                node.id,
                disk.id
            );
        }
    }
    prop_assert!(
        scheduled.is_empty(),
        "replicas on unknown disks: {:?}",
        scheduled
    );
    // A deleted volume's name may be used again; its epochs start over with new replicas.
    epochs.retain(|name, _| state.volumes.contains_key(name));
    for volume in state.volumes.values() {
        let live = state
            .replicas_of(volume)
            .filter(|r| r.mode != ReplicaMode::Error)
            .count();
        prop_assert!(
            live <= usize::from(volume.number_of_replicas),
            "{} has {} RW+WO replicas",
            volume.name,
            live
        );
        prop_assert!(volume.replicas.len() <= usize::from(volume.number_of_replicas));
        let short = volume.state != VolumeState::Deleting
            && volume.replicas.len() < usize::from(volume.number_of_replicas);
        prop_assert_eq!(state.unscheduled.contains(&volume.name), short);
        if let Some(previous) = epochs.insert(volume.name.clone(), volume.epoch) {
            prop_assert!(
                volume.epoch >= previous,
                "epoch of {} went back",
                volume.name
            );
        }
        if let Some(attachment) = &volume.attachment {
            prop_assert_eq!(attachment.epoch, volume.epoch);
        }
    }
    Ok(())
}

/// Runs `steps`, checking every step; returns the accepted log and every event.
fn run(steps: &[Step]) -> Result<(Vec<Command>, Vec<Event>, State), TestCaseError> {
    let mut state = State::default();
    let mut log = Vec::new();
    let mut all_events = Vec::new();
    let mut epochs = BTreeMap::new();
    for (i, step) in steps.iter().enumerate() {
        let command = Command::new(
            Timestamp(1_000 + i as u64 * 30_000),
            "prop",
            request(&state, step),
        );
        let Ok(events) = decide(&state, &command) else {
            continue;
        };
        for event in &events {
            check_placement(&state, event)?;
            evolve(&mut state, event);
        }
        check_state(&state, &mut epochs)?;
        log.push(command);
        all_events.extend(events);
    }
    Ok((log, all_events, state))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn scheduler_rules_and_bookkeeping_hold_after_every_step(steps in prop::collection::vec(step(), 1..120)) {
        run(&steps)?;
    }

    #[test]
    fn replaying_the_same_log_gives_byte_identical_states(steps in prop::collection::vec(step(), 1..120)) {
        let (log, events, state) = run(&steps)?;
        let encoded = state.encode();
        for _ in 0..2 {
            let mut replayed = State::default();
            for command in &log {
                prop_assert!(apply(&mut replayed, command).is_ok(), "{:?} rejected on replay", command);
            }
            prop_assert_eq!(&replayed.encode(), &encoded);
        }
        let mut from_events = State::default();
        for event in &events {
            evolve(&mut from_events, event);
        }
        prop_assert_eq!(&from_events.encode(), &encoded);
        prop_assert_eq!(&State::decode(&encoded).expect("decodes"), &state);
        // The log survives a serde round trip (a later version reads it back the same).
        let json = serde_json::to_string(&log).expect("serializes");
        let back: Vec<Command> = serde_json::from_str(&json).expect("deserializes");
        prop_assert_eq!(back, log);
    }
}

/// Guards the properties above against passing vacuously: random runs must actually place,
/// fail to place, fail, remove and attach replicas and volumes.
#[test]
fn random_runs_exercise_every_path() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let strategy = prop::collection::vec(step(), 100..120);
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for _ in 0..64 {
        let steps = strategy.new_tree(&mut runner).expect("generates").current();
        let (_, events, _) = run(&steps).expect("invariants hold");
        for event in events {
            let kind = match event {
                Event::ReplicaScheduled { .. } => "scheduled",
                Event::SchedulingFailed { .. } => "scheduling failed",
                Event::ReplicaFailed { .. } => "failed",
                Event::ReplicaRemoved { .. } => "removed",
                Event::ReplicaRebuilding { .. } => "rebuilding",
                Event::VolumeAttached { .. } => "attached",
                Event::VolumeDeleted { .. } => "deleted",
                Event::VolumeExpanded { .. } => "expanded",
                _ => continue,
            };
            *counts.entry(kind).or_default() += 1;
        }
    }
    for kind in [
        "scheduled",
        "scheduling failed",
        "failed",
        "removed",
        "rebuilding",
        "attached",
        "deleted",
        "expanded",
    ] {
        assert!(
            counts.get(kind).copied().unwrap_or(0) >= 5,
            "too few {kind} events: {counts:?}"
        );
    }
}
