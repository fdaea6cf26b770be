//! `GET /metrics`: what a manager tells Prometheus, in the Prometheus text format (0.0.4),
//! with names parallel to Longhorn's (`longhorn_volume_read_iops` is
//! `shorthorn_volume_read_iops`) so that its dashboards port. It never proposes anything and
//! never shows data, tokens or credentials.
//!
//! Who reports what, so that nothing is counted twice when every manager is scraped:
//! - **Every manager, about itself**: the log as this member sees it (`shorthorn_log_*`:
//!   term, leader, commit and applied index, snapshot size, proposal latency).
//! - **Every manager, about its node**: the engines its node agent runs for volumes the log
//!   has attached on this node (I/O rates and counters, rebuild progress; an engine being
//!   stopped after the volume moved is left out) and the space its replicas take on its
//!   disk (`shorthorn_volume_actual_size_bytes`, as Longhorn's: "space used by each
//!   replica of the volume on the corresponding node"). These carry `node`, the node they
//!   were measured on.
//! - **The Raft leader only, about the cluster**: what the log holds (volume capacity,
//!   state and robustness, nodes, disks, backups), read linearizably, so a leader that lost
//!   its quorum reports none. `shorthorn_log_is_leader` says which manager that is; while
//!   leadership moves a scrape may find none or two for a moment.
//!
//! Labels are `volume`, `node`, `disk`, `replica`, `backup`, and `pvc` and `pvc_namespace`
//! on a volume's figures when the log knows its PersistentVolumeClaim (see
//! [`volume_labels`]). `shorthorn_volume_state` and `shorthorn_volume_robustness` have one
//! series per state (`state` label; 1 for the current one, 0 for the others), as Longhorn
//! 1.11's do (Longhorn 1.9 and before gave one number); `shorthorn_backup_state` keeps
//! Longhorn's numbering. `shorthorn_nodes` is Longhorn's `longhorn_node_count_total`
//! (Prometheus keeps `_total` for counters and `_count` for histograms).
//! The per-second gauges (`*_iops`, `*_throughput`, `*_latency` in ns) are the engine's own
//! figures over its last full second, as Longhorn's are; the `*_total` counters are
//! cumulative since the engine started (a restarted engine starts again from zero, which
//! `rate()` takes as a counter reset).
//!
//! A scrape never fails because a part of it did: an engine that does not answer within
//! [`ENGINE_TIMEOUT`] is left out (`shorthorn_engine_up` is 0), a log without quorum leaves
//! out the cluster-wide families.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shorthorn_consensus::Handle;
use shorthorn_dataplane::control::ControlClient;
use shorthorn_dataplane::proto;
use shorthorn_state::{BackupState, Robustness, State, VolumeState};

/// How long one engine may take to answer its stats and replica list.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the leader's linearizable read of the log may take.
const LOG_TIMEOUT: Duration = Duration::from_secs(3);

/// The processes the node agent runs on this node, as it last published them: what the
/// metrics ask for the node's volumes. Cheap to clone; empty without an agent.
#[derive(Debug, Clone, Default)]
pub struct LocalProcesses {
    inner: Arc<RwLock<Local>>,
}

#[derive(Debug, Default)]
struct Local {
    /// The control address (`tcp:host:port`) of each engine, by volume.
    engines: BTreeMap<String, String>,
    /// The directory of each replica, by replica id.
    replicas: BTreeMap<String, PathBuf>,
}

impl LocalProcesses {
    /// Replaces what this node runs: engines (volume, control address) and replicas (id,
    /// directory).
    pub fn publish(
        &self,
        engines: impl IntoIterator<Item = (String, String)>,
        replicas: impl IntoIterator<Item = (String, PathBuf)>,
    ) {
        let mut local = self.inner.write().unwrap_or_else(|e| e.into_inner());
        local.engines = engines.into_iter().collect();
        local.replicas = replicas.into_iter().collect();
    }

    fn get(&self) -> (BTreeMap<String, String>, BTreeMap<String, PathBuf>) {
        let local = self.inner.read().unwrap_or_else(|e| e.into_inner());
        (local.engines.clone(), local.replicas.clone())
    }
}

/// What a manager needs to answer a scrape.
pub struct Metrics {
    log: Handle,
    /// This manager's node name.
    node: String,
    local: LocalProcesses,
    /// Control connections to this node's engines, by control address.
    clients: tokio::sync::Mutex<BTreeMap<String, ControlClient>>,
}

type Labels = Vec<(&'static str, String)>;
type GaugeFamily = Family<Labels, Gauge>;

/// One scrape's metrics, registered as they are filled.
struct Sheet {
    registry: Registry,
}

impl Sheet {
    fn new() -> Self {
        Self {
            registry: Registry::with_prefix("shorthorn"),
        }
    }

    fn gauge(&mut self, name: &str, help: &str) -> GaugeFamily {
        let family = GaugeFamily::default();
        self.registry.register(name, sentence(help), family.clone());
        family
    }

    fn counter(&mut self, name: &str, help: &str) -> Family<Labels, Counter> {
        let family = Family::<Labels, Counter>::default();
        self.registry.register(name, sentence(help), family.clone());
        family
    }

    fn seconds_counter(&mut self, name: &str, help: &str) -> Family<Labels, Counter<f64>> {
        let family = Family::<Labels, Counter<f64>>::default();
        self.registry.register(name, sentence(help), family.clone());
        family
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        family: Family<Labels, Histogram, HistogramOf>,
    ) {
        self.registry.register(name, sentence(help), family);
    }

    fn text(&self) -> String {
        let mut text = String::new();
        if let Err(err) = prometheus_text::encode(&mut text, &self.registry) {
            tracing::warn!("encoding the metrics: {err}");
        }
        text
    }
}

/// A help text as the registry wants it: it ends every help with a full stop itself.
fn sentence(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

/// A u64 figure as a gauge value (values past i64::MAX are clamped).
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn set(family: &GaugeFamily, labels: Labels, value: u64) {
    family.get_or_create(&labels).set(int(value));
}

/// Every volume state, in Longhorn's order.
const VOLUME_STATES: [VolumeState; 6] = [
    VolumeState::Creating,
    VolumeState::Attached,
    VolumeState::Detached,
    VolumeState::Attaching,
    VolumeState::Detaching,
    VolumeState::Deleting,
];

/// The `state` label of a volume state (Longhorn's words).
fn state_name(state: VolumeState) -> &'static str {
    match state {
        VolumeState::Creating => "creating",
        VolumeState::Attached => "attached",
        VolumeState::Detached => "detached",
        VolumeState::Attaching => "attaching",
        VolumeState::Detaching => "detaching",
        VolumeState::Deleting => "deleting",
    }
}

/// The `state` labels of robustness, in Longhorn's order; the log never says "unknown" (it
/// derives robustness from the replicas' modes), so that series is always 0.
const ROBUSTNESS_STATES: [&str; 4] = ["unknown", "healthy", "degraded", "faulted"];

fn robustness_name(robustness: Robustness) -> &'static str {
    match robustness {
        Robustness::Healthy => "healthy",
        Robustness::Degraded => "degraded",
        Robustness::Faulted => "faulted",
    }
}

/// Longhorn's numbering of backup states (`longhorn_backup_state`: 0=New, 1=Pending,
/// 2=InProgress, 3=Completed, 4=Error, 5=Unknown).
fn backup_state_number(state: BackupState) -> u64 {
    match state {
        BackupState::InProgress => 2,
        BackupState::Completed => 3,
        BackupState::Error => 4,
    }
}

/// The labels of a volume's figures: `volume`, then `pvc` and `pvc_namespace` when the log
/// knows the volume's PersistentVolumeClaim (the labels the CSI driver gives a volume it
/// creates for a claim; never guessed from the volume name).
fn volume_labels(state: Option<&State>, volume: &str) -> Labels {
    let mut labels = vec![("volume", volume.to_string())];
    let volume_labels = state.and_then(|s| s.volumes.get(volume)).map(|v| &v.labels);
    for (key, label) in [
        (shorthorn_csi::controller::PVC_NAME_LABEL, "pvc"),
        (
            shorthorn_csi::controller::PVC_NAMESPACE_LABEL,
            "pvc_namespace",
        ),
    ] {
        if let Some(value) = volume_labels.and_then(|l| l.get(key)) {
            labels.push((label, value.clone()));
        }
    }
    labels
}

/// What one engine answered.
pub struct EngineReport {
    pub volume: String,
    /// None when the engine did not answer within [`ENGINE_TIMEOUT`].
    pub stats: Option<proto::VolumeStats>,
    pub replicas: Vec<proto::ReplicaInfo>,
}

impl Metrics {
    pub fn new(log: Handle, node: &str, local: LocalProcesses) -> Self {
        Self {
            log,
            node: node.to_string(),
            local,
            clients: Default::default(),
        }
    }

    /// The text of one scrape.
    pub async fn render(&self) -> String {
        let mut sheet = Sheet::new();
        let status = self.log.status();
        let leader = status.leader.is_some() && status.leader == Some(status.id);
        self.log_metrics(&mut sheet, &status, leader);

        // The leader's figures about the cluster need a current state; this node's own
        // figures are labelled from whatever this member has applied (it answers without a
        // quorum, and the agent runs what that state says).
        let cluster = if leader {
            tokio::time::timeout(LOG_TIMEOUT, self.log.read(State::clone))
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        let state = match &cluster {
            Some(state) => state.clone(),
            None => self.log.read_local(State::clone),
        };
        let (engines, replicas) = self.local.get();
        let engines = attached_here(engines, &state, &self.node);
        let (reports, sizes) = tokio::join!(
            self.ask_engines(engines),
            replica_sizes(replicas.into_iter().collect())
        );
        engine_metrics(&mut sheet, &self.node, &reports, &state);
        actual_sizes(&mut sheet, &self.node, &sizes, &state);
        if let Some(state) = &cluster {
            cluster_metrics(&mut sheet, state);
        }
        sheet.text()
    }

    fn log_metrics(&self, sheet: &mut Sheet, status: &shorthorn_consensus::Status, leader: bool) {
        let me = || vec![("node", self.node.clone())];
        let gauges: [(&str, &str, Option<u64>); 7] = [
            (
                "log_term",
                "Raft term this manager's log member is in.",
                Some(status.term),
            ),
            (
                "log_leader",
                "Raft member id of the leader this manager knows of (absent when none).",
                status.leader,
            ),
            (
                "log_is_leader",
                "1 on the Raft leader, which alone reports the cluster-wide metrics, else 0.",
                Some(u64::from(leader)),
            ),
            (
                "log_commit_index",
                "Last log index this member knows to be committed.",
                status.committed,
            ),
            (
                "log_applied_index",
                "Last log index applied to this member's state.",
                status.applied,
            ),
            (
                "log_last_index",
                "Last log index this member holds.",
                status.last_log_index,
            ),
            (
                "log_snapshot_index",
                "Last log index covered by this member's snapshot.",
                status.snapshot,
            ),
        ];
        for (name, help, value) in gauges {
            let family = sheet.gauge(name, help);
            if let Some(value) = value {
                set(&family, me(), value);
            }
        }
        let snapshot = sheet.gauge(
            "log_snapshot_size_bytes",
            "Size of the encoded state in this member's current snapshot.",
        );
        if let Some(bytes) = self.log.snapshot_bytes() {
            set(&snapshot, me(), bytes);
        }
        // The live histogram, labelled with this node like the rest.
        let latency = Family::<Labels, Histogram, HistogramOf>::new_with_constructor(HistogramOf {
            histogram: self.log.proposal_latency(),
        });
        drop(latency.get_or_create(&me()));
        sheet.histogram(
            "log_proposal_latency_seconds",
            "Time from proposing a command through this manager to its outcome, for commands \
             the log committed.",
            latency,
        );
    }

    /// This manager's node name (empty without a node agent).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// What the engine of `volume` on this node answers now (its stats and replicas with
    /// their rebuild progress), or None when this node runs no engine for it.
    pub async fn engine(&self, volume: &str) -> Option<EngineReport> {
        let (engines, _) = self.local.get();
        let address = engines.get(volume)?.clone();
        Some(self.ask_engine(volume.to_string(), address).await)
    }

    /// Asks every engine of this node for its stats and replicas, all at once.
    async fn ask_engines(&self, engines: BTreeMap<String, String>) -> Vec<EngineReport> {
        {
            let mut clients = self.clients.lock().await;
            clients.retain(|address, _| engines.values().any(|a| a == address));
        }
        let asks = engines
            .into_iter()
            .map(|(volume, address)| self.ask_engine(volume, address));
        futures::future::join_all(asks).await
    }

    async fn ask_engine(&self, volume: String, address: String) -> EngineReport {
        let Some(mut client) = self.client(&address).await else {
            return EngineReport {
                volume,
                stats: None,
                replicas: Vec::new(),
            };
        };
        let mut other = client.clone();
        let (stats, list) = tokio::join!(
            tokio::time::timeout(ENGINE_TIMEOUT, client.stats(proto::Empty {})),
            tokio::time::timeout(ENGINE_TIMEOUT, other.list_replicas(proto::Empty {}))
        );
        let stats = match stats {
            Ok(Ok(reply)) => Some(reply.into_inner()),
            _ => {
                // Connect again next time: the engine may have been replaced.
                self.clients.lock().await.remove(&address);
                None
            }
        };
        let replicas = match list {
            Ok(Ok(reply)) => reply.into_inner().replicas,
            _ => Vec::new(),
        };
        EngineReport {
            volume,
            stats,
            replicas,
        }
    }

    async fn client(&self, address: &str) -> Option<ControlClient> {
        if let Some(client) = self.clients.lock().await.get(address) {
            return Some(client.clone());
        }
        let parsed = address
            .parse::<shorthorn_dataplane::address::Address>()
            .ok()?;
        let client = tokio::time::timeout(
            ENGINE_TIMEOUT,
            shorthorn_dataplane::control::connect(&parsed),
        )
        .await
        .ok()?
        .ok()?;
        self.clients
            .lock()
            .await
            .insert(address.to_string(), client.clone());
        Some(client)
    }
}

/// The engines (volume, control address) of volumes the log has attached on `node`: an
/// engine still running for a volume attached elsewhere now is being stopped, and the new
/// node reports that volume.
fn attached_here(
    engines: BTreeMap<String, String>,
    state: &State,
    node: &str,
) -> BTreeMap<String, String> {
    engines
        .into_iter()
        .filter(|(volume, _)| {
            state
                .volumes
                .get(volume)
                .and_then(|v| v.attachment.as_ref())
                .is_some_and(|a| a.node == node)
        })
        .collect()
}

/// The I/O figures and rebuild progress of the engines on `node`.
fn engine_metrics(sheet: &mut Sheet, node: &str, reports: &[EngineReport], state: &State) {
    let up = sheet.gauge(
        "engine_up",
        "1 when the engine of a volume attached on this node answered this scrape, else 0.",
    );
    let gauges = [
        (
            "volume_read_throughput",
            "Read throughput of this volume over the engine's last full second (bytes/s).",
        ),
        (
            "volume_write_throughput",
            "Write throughput of this volume over the engine's last full second (bytes/s).",
        ),
        (
            "volume_read_iops",
            "Read operations per second of this volume over the engine's last full second.",
        ),
        (
            "volume_write_iops",
            "Write operations per second of this volume over the engine's last full second.",
        ),
        (
            "volume_read_latency",
            "Mean read latency of this volume over the engine's last full second (ns).",
        ),
        (
            "volume_write_latency",
            "Mean write latency of this volume over the engine's last full second (ns).",
        ),
    ]
    .map(|(name, help)| sheet.gauge(name, help));
    let counters = [
        (
            "volume_read_ops",
            "Read operations completed by this volume's engine since it started.",
        ),
        (
            "volume_write_ops",
            "Write operations completed by this volume's engine since it started.",
        ),
        (
            "volume_flush_ops",
            "Flushes completed by this volume's engine since it started.",
        ),
        (
            "volume_read_bytes",
            "Bytes read through this volume's engine since it started.",
        ),
        (
            "volume_written_bytes",
            "Bytes written through this volume's engine since it started.",
        ),
    ]
    .map(|(name, help)| sheet.counter(name, help));
    let seconds = [
        (
            "volume_read_time_seconds",
            "Sum of the latencies of the reads completed since the engine started.",
        ),
        (
            "volume_write_time_seconds",
            "Sum of the latencies of the writes completed since the engine started.",
        ),
        (
            "volume_flush_time_seconds",
            "Sum of the latencies of the flushes completed since the engine started.",
        ),
    ]
    .map(|(name, help)| sheet.seconds_counter(name, help));
    let rebuild = sheet.gauge(
        "engine_rebuild_progress",
        "Percent of the volume a replica being rebuilt has compared and copied so far \
         (present only while it is rebuilt).",
    );
    for report in reports {
        let mut labels = volume_labels(Some(state), &report.volume);
        labels.push(("node", node.to_string()));
        set(&up, labels.clone(), u64::from(report.stats.is_some()));
        if let Some(s) = &report.stats {
            let figures = [
                s.read_bytes_per_sec,
                s.write_bytes_per_sec,
                s.read_iops,
                s.write_iops,
                s.read_latency_last_ns,
                s.write_latency_last_ns,
            ];
            for (family, value) in gauges.iter().zip(figures) {
                set(family, labels.clone(), value);
            }
            let totals = [
                s.read_ops,
                s.write_ops,
                s.flush_ops,
                s.read_bytes,
                s.write_bytes,
            ];
            for (family, value) in counters.iter().zip(totals) {
                family.get_or_create(&labels).inc_by(value);
            }
            for (family, ns) in seconds.iter().zip([s.read_ns, s.write_ns, s.flush_ns]) {
                family.get_or_create(&labels).inc_by(ns as f64 / 1e9);
            }
        }
        for info in &report.replicas {
            if info.mode() != proto::ReplicaMode::Wo || info.rebuild_total_bytes == 0 {
                continue;
            }
            let address = info.address.trim_start_matches("tcp:");
            // The replica's id from the log, or its address when the log does not know it.
            let replica = state
                .replicas
                .values()
                .find(|r| r.volume == report.volume && r.address.as_deref() == Some(address))
                .map_or_else(|| address.to_string(), |r| r.id.clone());
            let mut labels = labels.clone();
            labels.push(("replica", replica));
            set(
                &rebuild,
                labels,
                percent(info.rebuild_done_bytes, info.rebuild_total_bytes),
            );
        }
    }
}

/// `done` of `total` in whole percent, at most 100 (0 of 0 is 0).
pub(crate) fn percent(done: u64, total: u64) -> u64 {
    let percent = (u128::from(done) * 100)
        .checked_div(u128::from(total))
        .unwrap_or(0);
    percent.min(100) as u64
}

/// `volume_actual_size_bytes`: the space each volume's replicas on `node` take, by disk.
/// Replicas the log does not know (being removed) are left out.
fn actual_sizes(sheet: &mut Sheet, node: &str, sizes: &[(String, u64)], state: &State) {
    let family = sheet.gauge(
        "volume_actual_size_bytes",
        "Disk space the replicas of this volume take on this node's disk (allocated blocks).",
    );
    let mut by_volume: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (replica, bytes) in sizes {
        if let Some(r) = state.replicas.get(replica) {
            *by_volume
                .entry((r.volume.as_str(), r.disk.as_str()))
                .or_default() += bytes;
        }
    }
    for ((volume, disk), bytes) in by_volume {
        let mut labels = volume_labels(Some(state), volume);
        labels.push(("node", node.to_string()));
        labels.push(("disk", disk.to_string()));
        set(&family, labels, bytes);
    }
}

/// Builds the one labelled child of the proposal latency family: the live histogram.
#[derive(Clone)]
struct HistogramOf {
    histogram: Histogram,
}

impl MetricConstructor<Histogram> for HistogramOf {
    fn new_metric(&self) -> Histogram {
        self.histogram.clone()
    }
}

/// The allocated bytes of each replica directory (files one level down included), read off
/// the runtime's threads.
async fn replica_sizes(replicas: Vec<(String, PathBuf)>) -> Vec<(String, u64)> {
    tokio::task::spawn_blocking(move || {
        replicas
            .into_iter()
            .filter_map(|(id, dir)| allocated(&dir).map(|bytes| (id, bytes)))
            .collect()
    })
    .await
    .unwrap_or_default()
}

fn allocated(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.is_dir() {
            for inner in std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(meta) = inner.metadata() {
                    total += meta.blocks() * 512;
                }
            }
        } else {
            total += meta.blocks() * 512;
        }
    }
    Some(total)
}

/// What the log holds about the cluster; reported by the leader only.
fn cluster_metrics(sheet: &mut Sheet, state: &State) {
    let capacity = sheet.gauge("volume_capacity_bytes", "Configured size of this volume.");
    let volume_state = sheet.gauge(
        "volume_state",
        "State of this volume: 1 for its current state (label state: creating, attached, \
         detached, attaching, detaching, deleting), 0 for the others.",
    );
    let robustness = sheet.gauge(
        "volume_robustness",
        "Robustness of this volume: 1 for its current robustness (label state: unknown, \
         healthy, degraded, faulted), 0 for the others.",
    );
    for volume in state.volumes.values() {
        let labels = volume_labels(Some(state), &volume.name);
        set(&capacity, labels.clone(), volume.size);
        for each in VOLUME_STATES {
            let mut labels = labels.clone();
            labels.push(("state", state_name(each).to_string()));
            set(&volume_state, labels, u64::from(each == volume.state));
        }
        let current = robustness_name(volume.robustness);
        for each in ROBUSTNESS_STATES {
            let mut labels = labels.clone();
            labels.push(("state", each.to_string()));
            set(&robustness, labels, u64::from(each == current));
        }
    }

    // Longhorn's `longhorn_node_count_total`: promtool refuses `_total` (counters') and
    // `_count` (histograms') on a gauge.
    let node_count = sheet.gauge("nodes", "Number of nodes registered in the log.");
    node_count
        .get_or_create(&Vec::new())
        .set(int(state.nodes.len() as u64));
    let node_status = sheet.gauge(
        "node_status",
        "Status of this node: 1 when the condition holds, else 0 (condition ready: its \
         agent is heard from; allowScheduling: scheduling is on; schedulable: ready, \
         scheduling on and a disk takes replicas).",
    );
    let node_capacity = sheet.gauge(
        "node_storage_capacity_bytes",
        "Storage capacity of this node (its disks' filesystems).",
    );
    let node_usage = sheet.gauge(
        "node_storage_usage_bytes",
        "Used storage of this node (capacity less the free space its agent last reported).",
    );
    let node_reservation = sheet.gauge(
        "node_storage_reservation_bytes",
        "Storage of this node kept out of scheduling for the system and other users.",
    );
    let disk_capacity = sheet.gauge("disk_capacity_bytes", "Capacity of this disk.");
    let disk_usage = sheet.gauge(
        "disk_usage_bytes",
        "Used space of this disk (capacity less the free space last reported).",
    );
    let disk_reservation = sheet.gauge(
        "disk_reservation_bytes",
        "Space of this disk kept out of scheduling for the system and other users.",
    );
    let disk_scheduled = sheet.gauge(
        "disk_scheduled_bytes",
        "Sum of the sizes of the replicas scheduled on this disk.",
    );
    let disk_replicas = sheet.gauge("disk_replicas", "Replicas scheduled on this disk.");
    let disk_status = sheet.gauge(
        "disk_status",
        "Status of this disk: 1 when the condition holds, else 0 (condition ready: its \
         node's agent is heard from; schedulable: ready, scheduling on for the disk and \
         its node, and free space above storageMinimalAvailablePercentage).",
    );
    for node in state.nodes.values() {
        let condition = |condition: &str, holds: bool| {
            let labels = vec![
                ("node", node.id.clone()),
                ("condition", condition.to_string()),
            ];
            set(&node_status, labels, u64::from(holds));
        };
        let disk_takes = |d: &shorthorn_state::Disk| {
            node.ready
                && node.schedulable
                && d.schedulable
                && d.has_minimal_available(&state.settings)
        };
        condition("ready", node.ready);
        condition("allowScheduling", node.schedulable);
        condition("schedulable", node.disks.values().any(disk_takes));
        let of = |f: fn(&shorthorn_state::Disk) -> u64| node.disks.values().map(f).sum::<u64>();
        let node_labels = vec![("node", node.id.clone())];
        set(&node_capacity, node_labels.clone(), of(|d| d.capacity));
        set(
            &node_usage,
            node_labels.clone(),
            of(|d| d.capacity.saturating_sub(d.available)),
        );
        set(&node_reservation, node_labels, of(|d| d.reserved));
        for disk in node.disks.values() {
            let labels = vec![("node", node.id.clone()), ("disk", disk.id.clone())];
            set(&disk_capacity, labels.clone(), disk.capacity);
            set(
                &disk_usage,
                labels.clone(),
                disk.capacity.saturating_sub(disk.available),
            );
            set(&disk_reservation, labels.clone(), disk.reserved);
            set(&disk_scheduled, labels.clone(), disk.scheduled);
            set(
                &disk_replicas,
                labels.clone(),
                u64::from(disk.replica_count),
            );
            for (condition, holds) in [("ready", node.ready), ("schedulable", disk_takes(disk))] {
                let mut labels = labels.clone();
                labels.push(("condition", condition.to_string()));
                set(&disk_status, labels, u64::from(holds));
            }
        }
    }

    let backup_size = sheet.gauge(
        "backup_actual_size_bytes",
        "Compressed bytes this backup added to the backup target (blocks the target \
         already held are not counted again).",
    );
    let backup_state = sheet.gauge(
        "backup_state",
        "State of this backup: 2=in progress, 3=completed, 4=error (Longhorn's numbering).",
    );
    for backup in state.backups.values() {
        let mut labels = volume_labels(Some(state), &backup.volume);
        labels.push(("backup", backup.name.clone()));
        set(&backup_size, labels.clone(), backup.uploaded_bytes);
        set(&backup_state, labels, backup_state_number(backup.state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shorthorn_state::{Command, DiskSpec, NodeSpec, Request, Timestamp, VolumeSpec, apply};

    /// The samples of a scrape: `name{label="value",...}` (labels as encoded) to value.
    fn samples(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("sample line");
                (series.to_string(), value.parse().expect("number"))
            })
            .collect()
    }

    /// The one sample of `name` whose labels include every `key="value"` of `labels`.
    fn sample(all: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
        let found: Vec<_> = all
            .iter()
            .filter(|(series, _)| {
                (series.as_str() == name || series.starts_with(&format!("{name}{{")))
                    && labels.iter().all(|l| series.contains(l))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
        *found[0].1
    }

    const GIB: u64 = 1 << 30;

    /// Three ready nodes with one 100 GiB disk each, and volume `v` (3 replicas).
    fn cluster() -> State {
        let mut state = State::default();
        let mut clock = 1_000_000;
        let mut run = |state: &mut State, request: Request| {
            clock += 1000;
            apply(state, &Command::new(Timestamp(clock), "test", request)).expect("applied");
        };
        for n in 1..=3 {
            run(
                &mut state,
                Request::RegisterNode(NodeSpec {
                    id: format!("node-{n}"),
                    address: format!("127.0.0.1:{n}"),
                    disks: vec![DiskSpec {
                        id: format!("disk-{n}"),
                        path: "/d".into(),
                        capacity: 100 * GIB,
                        reserved: 10 * GIB,
                        available: Some(60 * GIB),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            );
        }
        for node in state.nodes.values_mut() {
            node.ready = true;
        }
        run(
            &mut state,
            Request::CreateVolume(VolumeSpec {
                name: "v".into(),
                size: GIB,
                number_of_replicas: Some(3),
                ..Default::default()
            }),
        );
        state
    }

    #[test]
    fn cluster_figures_come_from_the_log() {
        let mut state = cluster();
        state.nodes.get_mut("node-3").expect("node").ready = false;
        let mut sheet = Sheet::new();
        cluster_metrics(&mut sheet, &state);
        let text = sheet.text();
        let help: Vec<&str> = text.lines().filter(|l| l.starts_with("# HELP")).collect();
        assert!(!help.is_empty());
        for line in help {
            assert!(line.ends_with('.') && !line.ends_with(".."), "{line}");
        }
        let all = samples(&text);
        let v = r#"volume="v""#;
        assert_eq!(
            sample(&all, "shorthorn_volume_capacity_bytes", &[v]),
            GIB as f64
        );
        // One state and one robustness hold, the others are 0.
        let current = state_name(state.volumes["v"].state);
        for each in VOLUME_STATES.map(state_name) {
            let label = format!(r#"state="{each}""#);
            let value = sample(&all, "shorthorn_volume_state", &[v, &label]);
            assert_eq!(value, f64::from(u8::from(each == current)), "{each}");
        }
        let robust: f64 = ROBUSTNESS_STATES
            .iter()
            .map(|s| {
                let label = format!(r#"state="{s}""#);
                sample(&all, "shorthorn_volume_robustness", &[v, &label])
            })
            .sum();
        assert_eq!(robust, 1.0);
        assert_eq!(sample(&all, "shorthorn_nodes", &[]), 3.0);
        let n1 = r#"node="node-1""#;
        let n3 = r#"node="node-3""#;
        assert_eq!(
            sample(&all, "shorthorn_node_storage_capacity_bytes", &[n1]),
            (100 * GIB) as f64
        );
        assert_eq!(
            sample(&all, "shorthorn_node_storage_usage_bytes", &[n1]),
            (40 * GIB) as f64
        );
        assert_eq!(
            sample(&all, "shorthorn_node_storage_reservation_bytes", &[n1]),
            (10 * GIB) as f64
        );
        let ready = r#"condition="ready""#;
        let schedulable = r#"condition="schedulable""#;
        assert_eq!(sample(&all, "shorthorn_node_status", &[n1, ready]), 1.0);
        assert_eq!(sample(&all, "shorthorn_node_status", &[n3, ready]), 0.0);
        assert_eq!(
            sample(&all, "shorthorn_node_status", &[n3, schedulable]),
            0.0
        );
        let d1 = r#"disk="disk-1""#;
        assert_eq!(
            sample(&all, "shorthorn_disk_capacity_bytes", &[n1, d1]),
            (100 * GIB) as f64
        );
        assert_eq!(
            sample(&all, "shorthorn_disk_status", &[n1, d1, schedulable]),
            1.0
        );
        assert_eq!(
            sample(&all, "shorthorn_disk_status", &[n3, schedulable]),
            0.0
        );
        // Every replica placed is counted on one disk.
        let placed: f64 = (1..=3)
            .map(|n| {
                let d = format!(r#"disk="disk-{n}""#);
                sample(&all, "shorthorn_disk_replicas", &[&d])
            })
            .sum();
        assert_eq!(placed, state.replicas.len() as f64);
    }

    #[test]
    fn a_volume_made_for_a_claim_carries_pvc_and_pvc_namespace() {
        let mut state = cluster();
        let labels = &mut state.volumes.get_mut("v").expect("volume").labels;
        labels.insert(
            shorthorn_csi::controller::PVC_NAME_LABEL.into(),
            "mysql-pvc".into(),
        );
        labels.insert(
            shorthorn_csi::controller::PVC_NAMESPACE_LABEL.into(),
            "default".into(),
        );
        let mut sheet = Sheet::new();
        cluster_metrics(&mut sheet, &state);
        let all = samples(&sheet.text());
        assert_eq!(
            sample(
                &all,
                "shorthorn_volume_capacity_bytes",
                &[
                    r#"volume="v""#,
                    r#"pvc="mysql-pvc""#,
                    r#"pvc_namespace="default""#
                ]
            ),
            GIB as f64
        );
        assert_eq!(
            volume_labels(Some(&cluster()), "v"),
            vec![("volume", "v".to_string())],
            "no claim, no pvc labels"
        );
    }

    #[test]
    fn a_full_disk_is_not_schedulable() {
        let mut state = cluster();
        state.settings.storage_minimal_available_percentage = 25;
        let disk = state
            .nodes
            .get_mut("node-2")
            .expect("node")
            .disks
            .get_mut("disk-2")
            .expect("disk");
        disk.available = 20 * GIB;
        let mut sheet = Sheet::new();
        cluster_metrics(&mut sheet, &state);
        let all = samples(&sheet.text());
        let sched = r#"condition="schedulable""#;
        assert_eq!(
            sample(&all, "shorthorn_disk_status", &[r#"disk="disk-2""#, sched]),
            0.0
        );
        assert_eq!(
            sample(&all, "shorthorn_disk_status", &[r#"disk="disk-1""#, sched]),
            1.0
        );
        assert_eq!(
            sample(
                &all,
                "shorthorn_disk_status",
                &[r#"disk="disk-2""#, r#"condition="ready""#]
            ),
            1.0
        );
    }

    fn attach(state: &mut State, volume: &str, node: &str) {
        let v = state.volumes.get_mut(volume).expect("volume");
        v.state = VolumeState::Attached;
        v.attachment = Some(shorthorn_state::Attachment {
            node: node.into(),
            epoch: Default::default(),
            endpoint: None,
            frontend: Default::default(),
            device: None,
            error: None,
            internal: false,
        });
    }

    #[test]
    fn only_engines_of_volumes_attached_here_are_asked() {
        let mut state = cluster();
        attach(&mut state, "v", "node-2");
        let engines: BTreeMap<String, String> = [
            ("v".to_string(), "tcp:127.0.0.1:1".to_string()),
            ("gone".to_string(), "tcp:127.0.0.1:2".to_string()),
        ]
        .into();
        assert!(attached_here(engines.clone(), &state, "node-1").is_empty());
        assert_eq!(
            attached_here(engines, &state, "node-2")
                .keys()
                .collect::<Vec<_>>(),
            ["v"]
        );
    }

    #[test]
    fn engine_figures_carry_volume_and_node_and_rebuild_progress_its_replica() {
        let mut state = cluster();
        attach(&mut state, "v", "node-1");
        let id = state.replicas.keys().next().expect("replica").clone();
        state.replicas.get_mut(&id).expect("replica").address = Some("127.0.0.1:9000".into());
        let stats = proto::VolumeStats {
            write_iops: 250,
            write_ops: 1000,
            write_bytes: 4096 * 1000,
            write_ns: 3_000_000_000,
            write_latency_last_ns: 40_000,
            ..Default::default()
        };
        let mut rebuilding = proto::ReplicaInfo {
            address: "tcp:127.0.0.1:9000".into(),
            rebuild_done_bytes: 3,
            rebuild_total_bytes: 4,
            ..Default::default()
        };
        rebuilding.set_mode(proto::ReplicaMode::Wo);
        let reports = [
            EngineReport {
                volume: "v".into(),
                stats: Some(stats),
                replicas: vec![rebuilding],
            },
            EngineReport {
                volume: "silent".into(),
                stats: None,
                replicas: Vec::new(),
            },
        ];
        let mut sheet = Sheet::new();
        engine_metrics(&mut sheet, "node-1", &reports, &state);
        let all = samples(&sheet.text());
        let here = [r#"volume="v""#, r#"node="node-1""#];
        assert_eq!(sample(&all, "shorthorn_volume_write_iops", &here), 250.0);
        assert_eq!(
            sample(&all, "shorthorn_volume_write_ops_total", &here),
            1000.0
        );
        assert_eq!(
            sample(&all, "shorthorn_volume_written_bytes_total", &here),
            4096000.0
        );
        assert_eq!(
            sample(&all, "shorthorn_volume_write_time_seconds_total", &here),
            3.0
        );
        assert_eq!(
            sample(&all, "shorthorn_volume_write_latency", &here),
            40000.0
        );
        assert_eq!(sample(&all, "shorthorn_engine_up", &here), 1.0);
        let replica = format!(r#"replica="{id}""#);
        assert_eq!(
            sample(
                &all,
                "shorthorn_engine_rebuild_progress",
                &[here[0], &replica]
            ),
            75.0
        );
        // An engine that did not answer is down and has no figures.
        assert_eq!(
            sample(&all, "shorthorn_engine_up", &[r#"volume="silent""#]),
            0.0
        );
        assert!(
            !all.keys()
                .any(|k| k.contains("silent") && k.contains("iops"))
        );
    }

    #[test]
    fn actual_size_is_per_volume_and_disk_of_known_replicas() {
        let state = cluster();
        let mut ids = state.replicas.keys();
        let (a, b) = (
            ids.next().expect("r").clone(),
            ids.next().expect("r").clone(),
        );
        let sizes = [(a.clone(), 1000), (b.clone(), 24), ("unknown".into(), 7)];
        let mut sheet = Sheet::new();
        actual_sizes(&mut sheet, "node-1", &sizes, &state);
        let all = samples(&sheet.text());
        let disk = |id: &str| format!(r#"disk="{}""#, state.replicas[id].disk);
        assert_eq!(
            sample(&all, "shorthorn_volume_actual_size_bytes", &[&disk(&a)]),
            1000.0
        );
        assert_eq!(
            sample(&all, "shorthorn_volume_actual_size_bytes", &[&disk(&b)]),
            24.0
        );
        assert_eq!(all.len(), 2, "{all:?}");
    }

    #[test]
    fn percent_is_whole_and_bounded() {
        assert_eq!(percent(0, 0), 0);
        assert_eq!(percent(1, 3), 33);
        assert_eq!(percent(5, 4), 100);
        assert_eq!(percent(u64::MAX, u64::MAX), 100);
    }

    #[test]
    fn backup_numbering_follows_longhorns() {
        assert_eq!(backup_state_number(BackupState::InProgress), 2);
        assert_eq!(backup_state_number(BackupState::Completed), 3);
        assert_eq!(backup_state_number(BackupState::Error), 4);
    }

    #[test]
    fn allocated_counts_the_blocks_written_not_the_apparent_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sparse = std::fs::File::create(dir.path().join("volume-head-000.img")).expect("file");
        sparse.set_len(64 << 20).expect("sparse length");
        std::fs::write(dir.path().join("data"), vec![7u8; 1 << 20]).expect("data");
        let bytes = allocated(dir.path()).expect("readable");
        assert!(bytes >= 1 << 20, "{bytes}");
        assert!(
            bytes < 8 << 20,
            "a sparse 64 MiB file counted as allocated: {bytes}"
        );
    }
}
