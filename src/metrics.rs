//! `GET /metrics`: what a manager tells Prometheus, in the Prometheus text format (0.0.4),
//! with names parallel to Longhorn's (`longhorn_volume_read_iops` is
//! `shorthorn_volume_read_iops`) so that its dashboards port.
//!
//! Who reports what, so that nothing is counted twice when every manager is scraped:
//! - **Every manager, about itself**: the log as this member sees it (`shorthorn_log_*`:
//!   term, leader, commit and applied index, snapshot size, proposal latency).
//! - **Every manager, about its node**: the engines its node agent runs (the volumes
//!   attached on this node: I/O rates and counters, rebuild progress) and the space its
//!   replicas take on disk. These carry `node`, the node they were measured on.
//! - **The Raft leader only, about the cluster**: what the log holds (volume capacity,
//!   state and robustness, nodes, disks, backups). `shorthorn_log_is_leader` says which
//!   manager that is; while leadership moves a scrape may find none or two for a moment.
//!
//! Labels are `volume`, `node`, `disk`, `replica`, `backup`: the log keeps no
//! PersistentVolumeClaim names, so Longhorn's `pvc` and `pvc_namespace` are not given.
//! The per-second gauges (`*_iops`, `*_throughput`, `*_latency`) are the engine's own
//! figures over its last full second, as Longhorn's are; the `*_total` counters are
//! cumulative since the engine started (a restarted engine starts again from zero, which
//! `rate()` takes as a counter reset).
//!
//! A scrape never fails because a part of it did: an engine that does not answer within
//! [`ENGINE_TIMEOUT`] is left out (`shorthorn_engine_up` is 0), a log without quorum leaves
//! out the cluster-wide families. It never proposes anything.

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
/// How long the read of the log may take.
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
    fn gauge(&mut self, name: &str, help: &str) -> GaugeFamily {
        let family = GaugeFamily::default();
        self.registry.register(name, help, family.clone());
        family
    }

    fn counter(&mut self, name: &str, help: &str) -> Family<Labels, Counter> {
        let family = Family::<Labels, Counter>::default();
        self.registry.register(name, help, family.clone());
        family
    }

    fn seconds_counter(&mut self, name: &str, help: &str) -> Family<Labels, Counter<f64>> {
        let family = Family::<Labels, Counter<f64>>::default();
        self.registry.register(name, help, family.clone());
        family
    }
}

/// A u64 figure as a gauge value (values past i64::MAX are clamped).
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn set(family: &GaugeFamily, labels: Labels, value: u64) {
    family.get_or_create(&labels).set(int(value));
}

/// Longhorn's numbering of volume states (`longhorn_volume_state`).
fn state_number(state: VolumeState) -> u64 {
    match state {
        VolumeState::Creating => 1,
        VolumeState::Attached => 2,
        VolumeState::Detached => 3,
        VolumeState::Attaching => 4,
        VolumeState::Detaching => 5,
        VolumeState::Deleting => 6,
    }
}

/// Longhorn's numbering of robustness (`longhorn_volume_robustness`; 0 is unknown).
fn robustness_number(robustness: Robustness) -> u64 {
    match robustness {
        Robustness::Healthy => 1,
        Robustness::Degraded => 2,
        Robustness::Faulted => 3,
    }
}

/// Longhorn's numbering of backup states (`longhorn_backup_state`).
fn backup_state_number(state: BackupState) -> u64 {
    match state {
        BackupState::InProgress => 2,
        BackupState::Completed => 3,
        BackupState::Error => 4,
    }
}

/// What one engine answered.
struct EngineReport {
    volume: String,
    stats: Option<proto::VolumeStats>,
    replicas: Vec<proto::ReplicaInfo>,
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
        let mut sheet = Sheet {
            registry: Registry::with_prefix("shorthorn"),
        };
        let status = self.log.status();
        let leader = status.leader.is_some() && status.leader == Some(status.id);
        self.log_metrics(&mut sheet, &status, leader);

        let state = tokio::time::timeout(LOG_TIMEOUT, self.log.read(State::clone))
            .await
            .ok()
            .and_then(Result::ok);
        let (engines, replicas) = self.local.get();
        let (reports, sizes) = tokio::join!(
            self.ask_engines(engines),
            replica_sizes(replicas.into_iter().collect())
        );
        self.engine_metrics(&mut sheet, &reports, state.as_ref());
        self.actual_sizes(&mut sheet, &sizes, state.as_ref());
        if leader && let Some(state) = &state {
            cluster_metrics(&mut sheet, state);
        }

        let mut text = String::new();
        if let Err(err) = prometheus_text::encode(&mut text, &sheet.registry) {
            tracing::warn!("encoding the metrics: {err}");
        }
        text
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
        sheet.registry.register(
            "log_proposal_latency_seconds",
            "Time from proposing a command through this manager to its outcome, for commands \
             the log committed.",
            latency,
        );
    }

    /// Asks every engine of this node for its stats and replicas, all at once.
    async fn ask_engines(&self, engines: BTreeMap<String, String>) -> Vec<EngineReport> {
        {
            let mut clients = self.clients.lock().await;
            clients.retain(|address, _| engines.values().any(|a| a == address));
        }
        let asks = engines.into_iter().map(|(volume, address)| async move {
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
        });
        futures::future::join_all(asks).await
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

    fn engine_metrics(&self, sheet: &mut Sheet, reports: &[EngineReport], state: Option<&State>) {
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
            "Percent of the volume a replica being rebuilt has compared and copied so far.",
        );
        for report in reports {
            let labels = vec![
                ("volume", report.volume.clone()),
                ("node", self.node.clone()),
            ];
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
                // The replica's id from the log, or its address when the log did not answer.
                let replica = state
                    .and_then(|s| {
                        s.replicas.values().find(|r| {
                            r.volume == report.volume && r.address.as_deref() == Some(address)
                        })
                    })
                    .map_or_else(|| address.to_string(), |r| r.id.clone());
                let mut labels = labels.clone();
                labels.push(("replica", replica));
                let percent = u128::from(info.rebuild_done_bytes) * 100
                    / u128::from(info.rebuild_total_bytes);
                set(&rebuild, labels, percent.min(100) as u64);
            }
        }
    }

    /// `volume_actual_size_bytes`: the space the volume's replicas on this node take.
    fn actual_sizes(&self, sheet: &mut Sheet, sizes: &[(String, u64)], state: Option<&State>) {
        let family = sheet.gauge(
            "volume_actual_size_bytes",
            "Disk space the replicas of this volume take on this node (allocated blocks).",
        );
        let Some(state) = state else {
            return;
        };
        let mut by_volume: BTreeMap<&str, u64> = BTreeMap::new();
        for (replica, bytes) in sizes {
            if let Some(r) = state.replicas.get(replica) {
                *by_volume.entry(r.volume.as_str()).or_default() += bytes;
            }
        }
        for (volume, bytes) in by_volume {
            let labels = vec![("volume", volume.to_string()), ("node", self.node.clone())];
            set(&family, labels, bytes);
        }
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
        "State of this volume: 1=creating, 2=attached, 3=detached, 4=attaching, \
         5=detaching, 6=deleting (Longhorn's numbering).",
    );
    let robustness = sheet.gauge(
        "volume_robustness",
        "Robustness of this volume: 0=unknown, 1=healthy, 2=degraded, 3=faulted.",
    );
    for volume in state.volumes.values() {
        let labels = vec![("volume", volume.name.clone())];
        set(&capacity, labels.clone(), volume.size);
        set(&volume_state, labels.clone(), state_number(volume.state));
        set(&robustness, labels, robustness_number(volume.robustness));
    }

    let node_status = sheet.gauge(
        "node_status",
        "Status of this node: 1 when the condition holds, else 0 (conditions ready, \
         allowScheduling, schedulable).",
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
        "Storage of this node kept out of scheduling.",
    );
    let disk_capacity = sheet.gauge("disk_capacity_bytes", "Capacity of this disk.");
    let disk_usage = sheet.gauge(
        "disk_usage_bytes",
        "Used space of this disk (capacity less the free space last reported).",
    );
    let disk_reservation = sheet.gauge(
        "disk_reservation_bytes",
        "Space of this disk kept out of scheduling.",
    );
    let disk_scheduled = sheet.gauge(
        "disk_scheduled_bytes",
        "Sum of the sizes of the replicas scheduled on this disk.",
    );
    let disk_replicas = sheet.gauge("disk_replicas", "Replicas scheduled on this disk.");
    let disk_status = sheet.gauge(
        "disk_status",
        "Status of this disk: 1 when the condition holds, else 0 (condition schedulable).",
    );
    for node in state.nodes.values() {
        let labels = |condition: &str| {
            vec![
                ("node", node.id.clone()),
                ("condition", condition.to_string()),
            ]
        };
        let any_disk = node.disks.values().any(|d| d.schedulable);
        set(&node_status, labels("ready"), u64::from(node.ready));
        set(
            &node_status,
            labels("allowScheduling"),
            u64::from(node.schedulable),
        );
        set(
            &node_status,
            labels("schedulable"),
            u64::from(node.ready && node.schedulable && any_disk),
        );
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
            let mut labels = labels;
            labels.push(("condition", "schedulable".to_string()));
            set(
                &disk_status,
                labels,
                u64::from(disk.schedulable && node.ready && node.schedulable),
            );
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
        let labels = vec![
            ("volume", backup.volume.clone()),
            ("backup", backup.name.clone()),
        ];
        set(&backup_size, labels.clone(), backup.uploaded_bytes);
        set(&backup_state, labels, backup_state_number(backup.state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_follows_longhorns() {
        assert_eq!(state_number(VolumeState::Attached), 2);
        assert_eq!(state_number(VolumeState::Detached), 3);
        assert_eq!(robustness_number(Robustness::Degraded), 2);
        assert_eq!(backup_state_number(BackupState::Completed), 3);
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
