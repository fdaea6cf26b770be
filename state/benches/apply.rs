//! Apply throughput and placement latency on a large state: 1,000 nodes and 100,000
//! 3-replica volumes. Run with `bench/state` (or `cargo bench -p shorthorn-state`).
//! Goals (issue 2): ≥ 200,000 simple commands/s, < 200 µs per 3-replica placement,
//! encoded state < 200 MB.

use std::time::Instant;

use shorthorn_state::{Command, DiskSpec, NodeSpec, Request, State, Timestamp, VolumeSpec, apply};

const NODES: usize = 1_000;
const VOLUMES: usize = 100_000;
const GIB: u64 = 1 << 30;

fn main() {
    let mut state = State::default();
    let mut clock = 0u64;
    let mut run = |state: &mut State, request: Request| {
        clock += 1;
        apply(state, &Command::new(Timestamp(clock), "bench", request))
    };

    let started = Instant::now();
    for n in 0..NODES {
        let node = NodeSpec {
            id: format!("node-{n:04}"),
            address: format!("10.0.{}.{}:9500", n / 250, n % 250),
            zone: format!("zone-{}", n % 10),
            disks: vec![DiskSpec {
                id: "disk-1".into(),
                path: "/var/lib/shorthorn".into(),
                capacity: 1 << 50,
                ..Default::default()
            }],
            ..Default::default()
        };
        run(&mut state, Request::RegisterNode(node)).expect("node registers");
    }
    let t = Instant::now();
    for v in 0..VOLUMES {
        let spec = VolumeSpec {
            name: format!("pvc-{v:06}"),
            size: 10 * GIB,
            number_of_replicas: Some(3),
            ..Default::default()
        };
        run(&mut state, Request::CreateVolume(spec)).expect("volume is placed");
    }
    let create = t.elapsed();
    println!(
        "built {NODES} nodes, {VOLUMES} volumes, {} replicas in {:.1?}",
        state.replicas.len(),
        started.elapsed()
    );
    println!(
        "create + place 3 replicas, averaged over {VOLUMES} volumes: {:.1} µs",
        create.as_secs_f64() * 1e6 / VOLUMES as f64
    );

    // One more placement on the full state, timed alone, several times.
    let mut samples = Vec::new();
    for i in 0..200 {
        let spec = VolumeSpec {
            name: format!("probe-{i}"),
            size: 10 * GIB,
            number_of_replicas: Some(3),
            ..Default::default()
        };
        let t = Instant::now();
        run(&mut state, Request::CreateVolume(spec)).expect("probe is placed");
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "place one 3-replica volume on the full state: p50 {:.1} µs, p99 {:.1} µs (goal < 200 µs)",
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100]
    );

    // Simple commands: the reports a running cluster sends most.
    let replica_ids: Vec<String> = state.replicas.keys().take(50_000).cloned().collect();
    let rounds = replica_ids.len();
    let t = Instant::now();
    for (i, id) in replica_ids.iter().enumerate() {
        let node = format!("node-{:04}", i % NODES);
        let requests = [
            Request::ReportReplicaFailed {
                id: id.clone(),
                reason: "bench".into(),
            },
            Request::ReportReplicaRebuilding { id: id.clone() },
            Request::ReportReplicaRebuilt { id: id.clone() },
            Request::UpdateDisk {
                node,
                disk: "disk-1".into(),
                capacity: None,
                reserved: None,
                available: Some((1 << 50) - (i as u64) * GIB),
                tags: None,
            },
        ];
        for request in requests {
            run(&mut state, request).expect("simple command applies");
        }
    }
    let simple = t.elapsed();
    let commands = rounds * 4;
    println!(
        "simple commands (replica failed / rebuilding / rebuilt, disk usage): {commands} in {simple:.2?} = {:.0} commands/s (goal ≥ 200,000)",
        commands as f64 / simple.as_secs_f64()
    );

    let t = Instant::now();
    let encoded = state.encode();
    let encode = t.elapsed();
    let t = Instant::now();
    let decoded = State::decode(&encoded).expect("decodes");
    let decode = t.elapsed();
    assert_eq!(decoded, state);
    println!(
        "encoded state: {:.1} MB (goal < 200 MB), encode {encode:.2?}, decode {decode:.2?}",
        encoded.len() as f64 / 1e6
    );
}
