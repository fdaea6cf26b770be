//! Prometheus metrics on a `shorthorn dev up` cluster, scraped by a real Prometheus and
//! queried through its HTTP API as a dashboard would; every manager's scrape checked by
//! `promtool check metrics`; fio (its nbd engine) writes to the volume.

mod testkit;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use testkit::prometheus::{Prometheus, label, value};
use testkit::{DevCluster, text};

/// fio writing 4 KiB random blocks to an NBD export until it is killed (on drop).
struct Fio(Child);

impl Fio {
    fn writing(endpoint: &str, dir: &std::path::Path) -> Fio {
        let child = Command::new("fio")
            .current_dir(dir)
            .args([
                "--name=metrics",
                "--ioengine=nbd",
                "--rw=randwrite",
                "--bs=4k",
                "--size=32M",
                "--iodepth=8",
                "--time_based",
                "--runtime=3600",
            ])
            .arg(format!("--uri={endpoint}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fio");
        Fio(child)
    }

    fn still_running(&mut self) -> bool {
        self.0.try_wait().expect("fio status").is_none()
    }
}

impl Drop for Fio {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `host:port` of manager `n`'s API, as Prometheus names the target (`instance`).
fn target(cluster: &DevCluster, n: u16) -> String {
    cluster.api_of(n).trim_start_matches("http://").to_string()
}

/// Manager `n`'s scrape, as Prometheus gets it.
fn scrape(cluster: &DevCluster, n: u16) -> String {
    ureq::get(&format!("{}/metrics", cluster.api_of(n)))
        .timeout(Duration::from_secs(10))
        .call()
        .unwrap_or_else(|e| panic!("GET /metrics of manager {n}: {e}"))
        .into_string()
        .expect("metrics text")
}

/// `promtool check metrics` on manager `n`'s scrape: no lint output at all.
fn promtool_is_clean(cluster: &DevCluster, n: u16) {
    use std::io::Write;
    let text_in = scrape(cluster, n);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text_in.as_bytes())
        .expect("promtool stdin");
    let out = child.wait_with_output().expect("promtool");
    let lint = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && lint.trim().is_empty(),
        "promtool check metrics on manager {n}: {lint}\nscrape:\n{text_in}"
    );
}

/// The `instance` labels of a result, sorted.
fn instances(result: &[Value]) -> Vec<String> {
    let mut all: Vec<String> = result.iter().map(|e| label(e, "instance")).collect();
    all.sort();
    all
}

#[test]
fn prometheus_sees_write_iops_from_the_engines_node_alone_and_a_killed_manager_down() {
    // Prometheus scrapes all three managers; fio writes to a volume attached on a node that
    // is not the leader's; its write IOPS come from that node's manager alone, cluster
    // figures from the leader alone, and a SIGKILLed manager is marked down while the
    // others keep serving.
    let cluster = DevCluster::up();
    let targets: Vec<String> = (1..=3).map(|n| target(&cluster, n)).collect();
    let prometheus = Prometheus::scraping(&targets);
    let up = prometheus.wait("up{job=\"shorthorn\"} == 1", "3 targets up", |r| {
        r.len() == 3
    });
    assert_eq!(instances(&up), targets);

    // Exactly one leader reports itself, and only it gives the cluster-wide figures.
    let leaders = prometheus.wait("shorthorn_log_is_leader == 1", "one leader", |r| {
        r.len() == 1
    });
    let leader = label(&leaders[0], "instance");
    let leader_n = (1..=3)
        .find(|n| target(&cluster, *n) == leader)
        .expect("the leader is a manager");
    let all = prometheus.query("shorthorn_log_is_leader");
    assert_eq!(all.len(), 3, "every manager says whether it leads: {all:?}");
    assert_eq!(all.iter().map(value).sum::<f64>(), 1.0, "{all:?}");

    let node = if leader_n == 2 { 3 } else { 2 };
    let node_name = format!("node-{node}");
    cluster.create_volume("web", 64, 3, &[]);
    let endpoint = cluster.attach("web", &node_name);
    let mut fio = Fio::writing(&endpoint, cluster.dir());

    let iops = prometheus.wait(
        "shorthorn_volume_write_iops{volume=\"web\"} > 0",
        "> 0 while fio writes",
        |r| !r.is_empty(),
    );
    assert!(fio.still_running(), "fio stopped early");
    // From one target, the engine's node's manager, and labelled with that node.
    let every = prometheus.query("shorthorn_volume_write_iops{volume=\"web\"}");
    assert_eq!(every.len(), 1, "write IOPS from one target only: {every:?}");
    assert_eq!(label(&iops[0], "instance"), target(&cluster, node));
    assert_eq!(label(&iops[0], "node"), node_name);
    let rate = prometheus.wait(
        "rate(shorthorn_volume_write_ops_total{volume=\"web\"}[5s]) > 0",
        "a positive write rate",
        |r| !r.is_empty(),
    );
    assert_eq!(instances(&rate), [target(&cluster, node)]);
    eprintln!(
        "write IOPS {} (gauge), {:.0}/s (rate of the counter)",
        value(&iops[0]),
        value(&rate[0])
    );
    let throughput = prometheus.wait(
        "shorthorn_volume_write_throughput{volume=\"web\"} > 0",
        "> 0 while fio writes",
        |r| !r.is_empty(),
    );
    assert_eq!(throughput.len(), 1);
    let latency = prometheus.wait(
        "shorthorn_volume_write_latency{volume=\"web\"} > 0",
        "> 0 while fio writes",
        |r| !r.is_empty(),
    );
    assert_eq!(instances(&latency), [target(&cluster, node)]);
    let up = prometheus.query("shorthorn_engine_up{volume=\"web\"}");
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(value(&up[0]), 1.0);

    // Cluster figures: from the leader alone, with the log's values.
    let capacity = prometheus.query("shorthorn_volume_capacity_bytes{volume=\"web\"}");
    assert_eq!(instances(&capacity), [leader.as_str()]);
    assert_eq!(value(&capacity[0]), (64u64 << 20) as f64);
    let attached = prometheus.wait(
        "shorthorn_volume_state{volume=\"web\"} == 1",
        "one current state",
        |r| r.len() == 1,
    );
    assert_eq!(label(&attached[0], "state"), "attached");
    let healthy = prometheus.wait(
        "shorthorn_volume_robustness{volume=\"web\"} == 1",
        "one current robustness",
        |r| r.len() == 1,
    );
    assert_eq!(label(&healthy[0], "state"), "healthy");
    let nodes = prometheus.query("shorthorn_node_storage_capacity_bytes");
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    for n in &nodes {
        assert!(value(n) > 0.0, "{n}");
        assert_eq!(label(n, "instance"), leader);
    }
    let disks = prometheus.query("shorthorn_disk_capacity_bytes > 0");
    assert_eq!(disks.len(), 3, "one disk per node: {disks:?}");
    let ready = prometheus.query("shorthorn_node_status{condition=\"ready\"} == 1");
    assert_eq!(ready.len(), 3, "{ready:?}");
    let count = prometheus.query("shorthorn_nodes");
    assert_eq!(count.len(), 1);
    assert_eq!(value(&count[0]), 3.0);
    let replicas = prometheus.query("sum(shorthorn_disk_replicas)");
    assert_eq!(value(&replicas[0]), 3.0, "the volume's 3 replicas");
    // Each node's manager reports the space its own replica of the volume takes.
    let actual = prometheus.wait(
        "shorthorn_volume_actual_size_bytes{volume=\"web\"} > 0",
        "> 0 on every node",
        |r| r.len() == 3,
    );
    assert_eq!(instances(&actual), targets);
    for a in &actual {
        assert_eq!(label(a, "instance"), target(&cluster, node_number(a)));
    }

    // The log's own figures, from every manager.
    let applied = prometheus.query("shorthorn_log_applied_index > 0");
    assert_eq!(instances(&applied), targets);
    let terms = prometheus.query("count(count by (node) (shorthorn_log_term >= 1))");
    assert_eq!(value(&terms[0]), 3.0);
    let proposals = prometheus.query("sum(shorthorn_log_proposal_latency_seconds_count)");
    assert!(value(&proposals[0]) > 0.0, "{proposals:?}");

    for n in 1..=3 {
        promtool_is_clean(&cluster, n);
    }

    // SIGKILL the leader's manager (its replica keeps running): Prometheus marks it down,
    // the other two keep serving, a new leader reports the cluster figures alone, and the
    // engine's node still reports the I/O.
    let pid = std::fs::read_to_string(cluster.dir().join(format!("m{leader_n}/pid")))
        .expect("manager pid");
    testkit::run("kill", &["-9", pid.trim()]);
    prometheus.wait(
        &format!("up{{instance=\"{leader}\"}} == 0"),
        "down after SIGKILL",
        |r| r.len() == 1,
    );
    let alive: Vec<String> = targets.iter().filter(|t| **t != leader).cloned().collect();
    let up = prometheus.wait("up == 1", "the two others up", |r| instances(r) == alive);
    assert_eq!(up.len(), 2);
    let leaders = prometheus.wait("shorthorn_log_is_leader == 1", "a new leader", |r| {
        r.len() == 1 && label(&r[0], "instance") != leader
    });
    let new_leader = label(&leaders[0], "instance");
    prometheus.wait(
        "shorthorn_volume_capacity_bytes{volume=\"web\"}",
        "from the new leader alone",
        |r| instances(r) == [new_leader.clone()],
    );
    prometheus.wait(
        "shorthorn_volume_write_iops{volume=\"web\"} > 0",
        "still > 0 from the engine's node",
        |r| instances(r) == [target(&cluster, node)],
    );
    assert!(fio.still_running(), "fio stopped");
    for n in (1..=3).filter(|n| *n != leader_n) {
        promtool_is_clean(&cluster, n);
    }
}

/// The manager number of a result element's `node` label (`node-N`).
fn node_number(element: &Value) -> u16 {
    label(element, "node")
        .trim_start_matches("node-")
        .parse()
        .expect("node-N")
}
