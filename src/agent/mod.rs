//! The node agent (Longhorn's instance manager): registers this node and its disk, then
//! keeps the replica and engine processes of this node in step with the log.
//!
//! It is level-triggered: every tick it reads the state, compares it with the processes it
//! runs, starts and stops `shorthorn replica serve` / `shorthorn engine serve` children, and
//! turns what it sees (a replica started, an engine serving, a replica the engine dropped, a
//! rebuild finished, an engine gone) into commands. It never decides placement or epochs:
//! those come from the log. Children outlive a manager crash; a restarted agent adopts the
//! ones its records name and that are still alive.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::{FutureExt, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use shorthorn_consensus::{Error as LogError, Handle};

use crate::process;
use shorthorn_dataplane::proto::ReplicaMode as EngineMode;
use shorthorn_state::{
    Command, DiskSpec, Event, NodeSpec, RejectionKind, Replica, ReplicaMode, Request, Robustness,
    SnapshotState, State, Timestamp, Volume, VolumeState,
};

const TICK: Duration = Duration::from_millis(500);
/// The least time between two stale-replica replacements proposed by this agent.
const STALE_CHECK: Duration = Duration::from_secs(1);
/// How often the agent tells the log its node is alive.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node not heard from for this long is marked down by the leader's agent.
const NODE_DOWN_AFTER: Duration = Duration::from_secs(10);
/// A failed replica that answers again is taken back for a delta rebuild at most this often.
const RETRY_FAILED: Duration = Duration::from_secs(5);
/// How long an engine start waits for every read-write replica to report its address.
const ADDRESS_GRACE: Duration = Duration::from_secs(15);

/// Who this agent is and where it keeps things.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Node id in the log.
    pub node: String,
    /// The node's manager API address, recorded on the node.
    pub address: String,
    /// The disk directory replicas live under (`<disk>/replicas/<replica id>`).
    pub disk: PathBuf,
    /// Host the replica and engine processes listen on.
    pub host: String,
    /// The `shorthorn` executable to start children from.
    pub exe: PathBuf,
    /// This manager's Raft member id (the leader runs the cluster-wide timers).
    pub member: u64,
}

/// The log's events, as the agent follows them.
type Events = std::pin::Pin<Box<dyn Stream<Item = Result<(u64, Event), LogError>> + Send>>;

/// What the agent records about a child so a restarted agent can adopt it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    pid: i32,
    /// Replica: wire-protocol address. Engine: the NBD endpoint URI.
    address: String,
    /// Engine only: epoch and control address.
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    control: String,
}

struct Proc {
    record: Record,
    child: Option<Child>,
}

impl Proc {
    fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => process::is_shorthorn(self.record.pid),
        }
    }

    /// SIGTERM, then SIGKILL after 10 s. It blocks, so the runtime moves this thread's
    /// other tasks (Raft, the API) elsewhere meanwhile.
    fn stop(&mut self) {
        tokio::task::block_in_place(|| {
            process::terminate(self.record.pid, Duration::from_secs(10));
            if let Some(child) = &mut self.child {
                let _ = child.wait();
            }
        });
    }
}

pub struct Agent {
    log: Handle,
    config: AgentConfig,
    replicas: BTreeMap<String, Proc>,
    engines: BTreeMap<String, Proc>,
    /// When this agent first saw each volume attaching here.
    attach_seen: BTreeMap<String, Instant>,
    /// Orphaned replica directories already reported.
    orphans_reported: std::collections::BTreeSet<String>,
    last_stale_check: Instant,
    last_heartbeat: Instant,
    /// Since when this manager has been the Raft leader, as far as this agent saw.
    leader_since: Option<Instant>,
}

impl Agent {
    pub fn new(log: Handle, config: AgentConfig) -> Self {
        Self {
            log,
            config,
            replicas: BTreeMap::new(),
            engines: BTreeMap::new(),
            attach_seen: BTreeMap::new(),
            orphans_reported: Default::default(),
            last_stale_check: Instant::now(),
            last_heartbeat: Instant::now() - HEARTBEAT,
            leader_since: None,
        }
    }

    /// Registers the node, adopts surviving children, then converges forever.
    pub async fn run(mut self) -> anyhow::Result<()> {
        self.register().await?;
        self.adopt();
        let mut events = self.follow();
        loop {
            if let Err(err) = self.tick().await {
                tracing::warn!("node agent: {err:#}");
            }
            // Converge again at the next event that is not a heartbeat (a volume attached
            // here, a replica placed here...), or after TICK at the latest: children are
            // watched by polling.
            let woken = tokio::time::timeout(TICK, async {
                loop {
                    match events.next().await {
                        Some(Ok((_, Event::NodeHeartbeat { .. }))) => continue,
                        Some(Ok(_)) => return true,
                        // Trimmed events or a stopped log: follow again from now.
                        Some(Err(_)) | None => return false,
                    }
                }
            })
            .await;
            match woken {
                Ok(true) => {
                    // Let the rest of a burst (one command's events) arrive first.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    while let Some(Some(_)) = events.next().now_or_never() {}
                }
                Ok(false) => {
                    tokio::time::sleep(TICK).await;
                    events = self.follow();
                }
                Err(_) => {}
            }
        }
    }

    /// The log's events from now on.
    fn follow(&self) -> Events {
        let from = self.log.status().applied.unwrap_or(0) + 1;
        Box::pin(self.log.subscribe(from))
    }

    async fn propose(&self, request: Request) -> Result<(), LogError> {
        let command = Command::new(
            Timestamp(now_millis()),
            format!("agent/{}", self.config.node),
            request,
        );
        self.log.propose(command).await.map(|_| ())
    }

    async fn register(&self) -> anyhow::Result<()> {
        fs::create_dir_all(self.config.disk.join("replicas"))
            .with_context(|| format!("creating {}", self.config.disk.display()))?;
        let (capacity, available) = disk_space(&self.config.disk)?;
        let spec = NodeSpec {
            id: self.config.node.clone(),
            address: self.config.address.clone(),
            disks: vec![DiskSpec {
                id: "disk-1".into(),
                path: self.config.disk.display().to_string(),
                capacity,
                available: Some(available),
                ..Default::default()
            }],
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match self.propose(Request::RegisterNode(spec.clone())).await {
                Ok(()) => {
                    tracing::info!(node = %self.config.node, "registered the node and its disk");
                    return Ok(());
                }
                Err(LogError::Rejected {
                    kind: RejectionKind::AlreadyExists,
                    ..
                }) => return Ok(()),
                Err(err @ LogError::Rejected { .. }) => {
                    return Err(err).context("registering the node");
                }
                Err(err) if Instant::now() > deadline => {
                    return Err(err).context("registering the node");
                }
                Err(err) => {
                    tracing::info!("registering the node: {err}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    fn replica_dir(&self, id: &str) -> PathBuf {
        self.config.disk.join("replicas").join(id)
    }

    fn engine_dir(&self, volume: &str) -> PathBuf {
        self.config.disk.join("engines").join(volume)
    }

    /// Picks up the children a previous run of this agent left running.
    fn adopt(&mut self) {
        for (kind, root) in [
            ("replica", self.config.disk.join("replicas")),
            ("engine", self.config.disk.join("engines")),
        ] {
            let Ok(entries) = fs::read_dir(&root) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let Some(record) = read_record(&entry.path()) else {
                    continue;
                };
                if !process::is_shorthorn(record.pid) {
                    continue;
                }
                tracing::info!(kind, name, pid = record.pid, "adopted a running child");
                let proc = Proc {
                    record,
                    child: None,
                };
                if kind == "replica" {
                    self.replicas.insert(name, proc);
                } else {
                    self.engines.insert(name, proc);
                }
            }
        }
    }

    async fn tick(&mut self) -> anyhow::Result<()> {
        if self.last_heartbeat.elapsed() >= HEARTBEAT {
            self.last_heartbeat = Instant::now();
            self.propose(Request::Heartbeat {
                node: self.config.node.clone(),
            })
            .await?;
        }
        let leader = self.log.status().leader == Some(self.config.member);
        match (leader, self.leader_since) {
            (true, None) => self.leader_since = Some(Instant::now()),
            (false, Some(_)) => self.leader_since = None,
            _ => {}
        }
        // Judge others' heartbeats only after leading for a whole timeout: a cluster that
        // just restarted has old heartbeat times everywhere.
        let node = self.config.node.clone();
        let view = self
            .log
            .read(move |state| NodeView::of(state, &node))
            .await?;
        let late = now_millis().saturating_sub(NODE_DOWN_AFTER.as_millis() as u64);
        if self
            .leader_since
            .is_some_and(|since| since.elapsed() >= NODE_DOWN_AFTER)
            && view
                .heartbeats
                .iter()
                .any(|(ready, at)| *ready && at.0 <= late)
        {
            let timeout_secs = NODE_DOWN_AFTER.as_secs();
            self.propose(Request::MarkDeadNodes { timeout_secs })
                .await?;
        }
        self.converge_replicas(&view).await;
        self.converge_engines(&view).await;
        // Only the leader's agent runs the cluster-wide stale-replica timer: when the first
        // failed replica's timeout has passed (the log decides which are stale, by the
        // command's time), at most once per STALE_CHECK.
        if leader
            && view.stale_due.is_some_and(|due| due <= now_millis())
            && self.last_stale_check.elapsed() >= STALE_CHECK
        {
            self.last_stale_check = Instant::now();
            self.propose(Request::ReplaceStaleReplicas).await?;
        }
        Ok(())
    }

    async fn converge_replicas(&mut self, view: &NodeView) {
        for (replica, volume) in &view.replicas {
            let dir = self.replica_dir(&replica.id);
            if volume.state == VolumeState::Deleting {
                if let Some(mut proc) = self.replicas.remove(&replica.id) {
                    proc.stop();
                }
                let _ = fs::remove_dir_all(&dir);
                if let Err(err) = self
                    .propose(Request::RemoveReplica {
                        id: replica.id.clone(),
                    })
                    .await
                {
                    tracing::warn!(replica = %replica.id, "reporting the removal: {err}");
                }
                continue;
            }
            let running = self
                .replicas
                .get_mut(&replica.id)
                .is_some_and(|p| p.alive());
            if !running {
                match self.start_replica(replica, volume.size, &dir) {
                    Ok(proc) => {
                        self.replicas.insert(replica.id.clone(), proc);
                    }
                    Err(err) => {
                        tracing::warn!(replica = %replica.id, "starting the replica: {err:#}");
                        continue;
                    }
                }
            }
            let address = self.replicas[&replica.id].record.address.clone();
            if replica.address.as_deref() != Some(address.as_str()) {
                let request = Request::ReportReplicaStarted {
                    id: replica.id.clone(),
                    address,
                };
                if let Err(err) = self.propose(request).await {
                    tracing::warn!(replica = %replica.id, "reporting the address: {err}");
                }
            }
            // Every replica of the volume failed: say how fresh this one is, so the log can
            // pick the one to salvage.
            if replica.mode == ReplicaMode::Error
                && volume.robustness == Robustness::Faulted
                && replica.revision.is_none()
            {
                match read_revision(&dir) {
                    Ok(revision) => {
                        tracing::info!(replica = %replica.id, revision, "volume faulted: reporting the revision for salvage");
                        let request = Request::ReportReplicaRevision {
                            id: replica.id.clone(),
                            revision,
                        };
                        if let Err(err) = self.propose(request).await {
                            tracing::warn!(replica = %replica.id, "reporting the revision: {err}");
                        }
                    }
                    Err(err) => {
                        tracing::warn!(replica = %replica.id, "reading the revision counter: {err:#}")
                    }
                }
            }
        }
        let wanted: Vec<&str> = view.replicas.iter().map(|(r, _)| r.id.as_str()).collect();
        let gone: Vec<String> = self
            .replicas
            .keys()
            .filter(|id| !wanted.contains(&id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            if let Some(mut proc) = self.replicas.remove(&id) {
                proc.stop();
            }
            tracing::info!(replica = %id, "replica removed from the log: its directory is deleted");
            let _ = fs::remove_dir_all(self.replica_dir(&id));
        }
        self.handle_orphans(&wanted, view.orphan_auto_deletion);
    }

    /// Replica directories no process of ours serves and the log does not place here: what
    /// a node that was down keeps of replicas replaced meanwhile. Deleted with the
    /// `orphanAutoDeletion` setting, else reported once each (a log that lost its state
    /// must not make agents wipe disks).
    fn handle_orphans(&mut self, wanted: &[&str], delete: bool) {
        let Ok(entries) = fs::read_dir(self.config.disk.join("replicas")) else {
            return;
        };
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if wanted.contains(&id.as_str()) || self.replicas.contains_key(&id) {
                continue;
            }
            if delete {
                tracing::info!(replica = %id, dir = %entry.path().display(), "orphaned replica directory deleted (orphanAutoDeletion)");
                let _ = fs::remove_dir_all(entry.path());
                self.orphans_reported.remove(&id);
            } else if self.orphans_reported.insert(id.clone()) {
                tracing::warn!(replica = %id, dir = %entry.path().display(), "orphaned replica directory: the log places no such replica on this node; kept (set orphanAutoDeletion to delete such directories)");
            }
        }
    }

    fn start_replica(&self, replica: &Replica, size: u64, dir: &Path) -> anyhow::Result<Proc> {
        fs::create_dir_all(dir)?;
        let address = format!("{}:{}", self.config.host, free_port(&self.config.host)?);
        let mut process = Process::new(&self.config.exe);
        process
            .arg("replica")
            .arg("serve")
            .arg("--dir")
            .arg(dir)
            .arg("--listen")
            .arg(format!("tcp:{address}"));
        // A new replica is created at the volume's size; an existing one opens at its own
        // (an engine grows it if the volume was expanded meanwhile).
        if !dir.join("volume.meta").exists() {
            process.arg("--size").arg(size.to_string());
        }
        let child = spawn_logged(process, &dir.join("replica.log"))?;
        let record = Record {
            pid: child.id() as i32,
            address,
            epoch: 0,
            control: String::new(),
        };
        write_record(dir, &record)?;
        wait_listening(&record.address, Duration::from_secs(10));
        tracing::info!(replica = %replica.id, address = %record.address, "replica started");
        Ok(Proc {
            record,
            child: Some(child),
        })
    }

    async fn converge_engines(&mut self, view: &NodeView) {
        for (volume, replicas) in &view.attached {
            let epoch = volume.epoch;
            // An engine of an older epoch is fenced by its replicas; stop it.
            if let Some(proc) = self.engines.get_mut(&volume.name)
                && (proc.record.epoch != epoch.0 || !proc.alive())
            {
                let mut proc = self.engines.remove(&volume.name).expect("present");
                let died = proc.record.epoch == epoch.0;
                proc.stop();
                if died && volume.state == VolumeState::Attached {
                    tracing::warn!(volume = %volume.name, "engine exited; the volume is detached");
                    let request = Request::ReportEngineStopped {
                        name: volume.name.clone(),
                        epoch,
                    };
                    if let Err(err) = self.propose(request).await {
                        tracing::warn!("reporting the engine exit: {err}");
                    }
                    continue;
                }
            }
            match volume.state {
                VolumeState::Attaching | VolumeState::Attached => {
                    self.attach_seen
                        .entry(volume.name.clone())
                        .or_insert_with(Instant::now);
                    if !self.engines.contains_key(&volume.name) {
                        match self.start_engine(volume, replicas) {
                            Ok(proc) => {
                                self.engines.insert(volume.name.clone(), proc);
                            }
                            Err(err) => {
                                tracing::warn!(volume = %volume.name, "starting the engine: {err:#}");
                                continue;
                            }
                        }
                    }
                    let endpoint = self.engines[&volume.name].record.address.clone();
                    if volume.state == VolumeState::Attaching {
                        let request = Request::ReportEngineStarted {
                            name: volume.name.clone(),
                            epoch,
                            endpoint,
                        };
                        if let Err(err) = self.propose(request).await {
                            tracing::warn!(volume = %volume.name, "reporting the engine: {err}");
                        }
                    }
                    self.watch_engine(volume, replicas).await;
                }
                VolumeState::Detaching => {
                    if let Some(mut proc) = self.engines.remove(&volume.name) {
                        proc.stop();
                        let _ = fs::remove_dir_all(self.engine_dir(&volume.name));
                    }
                    let request = Request::ReportEngineStopped {
                        name: volume.name.clone(),
                        epoch,
                    };
                    if let Err(err) = self.propose(request).await {
                        tracing::warn!(volume = %volume.name, "reporting the detach: {err}");
                    }
                }
                _ => {}
            }
        }
        let wanted: Vec<&str> = view.attached.iter().map(|(v, _)| v.name.as_str()).collect();
        self.attach_seen.retain(|v, _| wanted.contains(&v.as_str()));
        let gone: Vec<String> = self
            .engines
            .keys()
            .filter(|v| !wanted.contains(&v.as_str()))
            .cloned()
            .collect();
        for volume in gone {
            if let Some(mut proc) = self.engines.remove(&volume) {
                tracing::info!(volume = %volume, "volume no longer attached here: stopping its engine");
                proc.stop();
            }
            let _ = fs::remove_dir_all(self.engine_dir(&volume));
        }
    }

    fn start_engine(&self, volume: &Volume, replicas: &[Replica]) -> anyhow::Result<Proc> {
        let read_write: Vec<&Replica> = replicas
            .iter()
            .filter(|r| r.mode == ReplicaMode::ReadWrite)
            .collect();
        let healthy: Vec<&str> = read_write
            .iter()
            .filter_map(|r| r.address.as_deref())
            .collect();
        anyhow::ensure!(
            !healthy.is_empty(),
            "no read-write replica has reported its address yet"
        );
        // An engine started without a read-write replica would never write to it: wait for
        // every one to report its address; one that has not within the grace period is
        // reported failed by `watch_engine` and rebuilt later.
        let waited = self
            .attach_seen
            .get(&volume.name)
            .map_or(Duration::ZERO, Instant::elapsed);
        anyhow::ensure!(
            healthy.len() == read_write.len() || waited >= ADDRESS_GRACE,
            "waiting for {} of {} read-write replicas to report their address",
            read_write.len() - healthy.len(),
            read_write.len()
        );
        let dir = self.engine_dir(&volume.name);
        fs::create_dir_all(&dir)?;
        let nbd = format!("{}:{}", self.config.host, free_port(&self.config.host)?);
        let control = format!("{}:{}", self.config.host, free_port(&self.config.host)?);
        let mut process = Process::new(&self.config.exe);
        process
            .arg("engine")
            .arg("serve")
            .arg("--volume")
            .arg(&volume.name)
            .arg("--size")
            .arg(volume.size.to_string())
            .arg("--epoch")
            .arg(volume.epoch.0.to_string())
            .arg("--nbd")
            .arg(format!("tcp:{nbd}"))
            .arg("--control")
            .arg(format!("tcp:{control}"));
        for address in &healthy {
            process.arg("--replica").arg(format!("tcp:{address}"));
        }
        let child = spawn_logged(process, &dir.join("engine.log"))?;
        let endpoint = format!("nbd://{nbd}/{}", volume.name);
        let record = Record {
            pid: child.id() as i32,
            address: endpoint,
            epoch: volume.epoch.0,
            control,
        };
        write_record(&dir, &record)?;
        wait_listening(&nbd, Duration::from_secs(15));
        tracing::info!(volume = %volume.name, epoch = volume.epoch.0, nbd = %nbd, "engine started");
        Ok(Proc {
            record,
            child: Some(child),
        })
    }

    /// Reads the engine's replica list: reports replicas it dropped, adds write-only
    /// replicas for rebuild, and reports finished rebuilds.
    async fn watch_engine(&self, volume: &Volume, replicas: &[Replica]) {
        let Some(proc) = self.engines.get(&volume.name) else {
            return;
        };
        let Ok(address) = proc
            .record
            .control
            .parse::<shorthorn_dataplane::address::Address>()
        else {
            return;
        };
        let Ok(Ok(mut client)) = tokio::time::timeout(
            Duration::from_secs(2),
            shorthorn_dataplane::control::connect(&address),
        )
        .await
        else {
            return;
        };
        let Ok(Ok(list)) = tokio::time::timeout(
            Duration::from_secs(2),
            client.list_replicas(shorthorn_dataplane::proto::Empty {}),
        )
        .await
        else {
            return;
        };
        let seen = list.into_inner().replicas;
        let find = |addr: &str| {
            seen.iter()
                .find(|i| i.address.trim_start_matches("tcp:") == addr)
        };
        // Not while nothing is left to rebuild from (salvage decides then), and not more
        // often than every RETRY_FAILED for one replica: a replica that fails its rebuild
        // again is not hammered.
        let faulted = volume.robustness == Robustness::Faulted;
        let retry_due = |replica: &Replica| {
            !faulted
                && replica.failed_at.is_none_or(|at| {
                    now_millis().saturating_sub(at.0) >= RETRY_FAILED.as_millis() as u64
                })
        };
        for replica in replicas {
            let Some(addr) = replica.address.as_deref() else {
                continue;
            };
            let info = find(addr);
            let request = match (replica.mode, info.map(|i| i.mode())) {
                (ReplicaMode::ReadWrite | ReplicaMode::WriteOnly, Some(EngineMode::Err)) => {
                    let reason = info.map(|i| i.error.clone()).unwrap_or_default();
                    Some(Request::ReportReplicaFailed {
                        id: replica.id.clone(),
                        reason,
                    })
                }
                (ReplicaMode::ReadWrite, None) => Some(Request::ReportReplicaFailed {
                    id: replica.id.clone(),
                    reason: "not in the engine's replica set (no address when the engine started)"
                        .into(),
                }),
                (ReplicaMode::WriteOnly, Some(EngineMode::Rw)) => {
                    Some(Request::ReportReplicaRebuilt {
                        id: replica.id.clone(),
                    })
                }
                // A failed replica that is serving again at an address the engine does not
                // know (its process was restarted): rebuild it by delta instead of waiting
                // for the stale timeout to replace it.
                (ReplicaMode::Error, None) if retry_due(replica) && serving(addr).await => {
                    tracing::info!(replica = %replica.id, "failed replica is back: delta rebuild");
                    Some(Request::ReportReplicaRebuilding {
                        id: replica.id.clone(),
                    })
                }
                // The same, at the address the engine failed (a cut connection healed, a
                // stopped process resumed): the engine forgets it first, and the next tick
                // rebuilds it as above.
                (ReplicaMode::Error, Some(EngineMode::Err))
                    if retry_due(replica) && serving(addr).await =>
                {
                    let address = shorthorn_dataplane::proto::ReplicaAddress {
                        address: format!("tcp:{addr}"),
                    };
                    match client.remove_replica(address).await {
                        Ok(_) => {
                            tracing::info!(replica = %replica.id, "failed replica answers again: the engine forgets it before a delta rebuild")
                        }
                        Err(err) => {
                            tracing::warn!(replica = %replica.id, "removing the failed replica from the engine: {err}")
                        }
                    }
                    None
                }
                (ReplicaMode::WriteOnly, None) => {
                    let add = shorthorn_dataplane::proto::ReplicaAddress {
                        address: format!("tcp:{addr}"),
                    };
                    match client.add_replica(add).await {
                        Ok(_) => tracing::info!(replica = %replica.id, "rebuild started"),
                        Err(err) => {
                            tracing::warn!(replica = %replica.id, "adding the replica for rebuild: {err}")
                        }
                    }
                    None
                }
                _ => None,
            };
            if let Some(request) = request
                && let Err(err) = self.propose(request).await
            {
                tracing::warn!(replica = %replica.id, "reporting the replica: {err}");
            }
        }
        if volume.state == VolumeState::Attached {
            grow_engine(volume, &mut client).await;
            self.carry_out_snapshots(volume, &mut client).await;
        }
    }

    /// Takes pending snapshots, merges deleted ones and reverts, as the log asks, on the
    /// engine of this attached volume; each outcome goes back to the log.
    async fn carry_out_snapshots(&self, volume: &Volume, client: &mut EngineClient) {
        use shorthorn_dataplane::proto::SnapshotName;
        use tonic::Code;
        let name_of = |name: &str| SnapshotName {
            name: name.to_string(),
        };
        let (v, mut requests) = (volume.name.clone(), Vec::new());
        for snapshot in volume.snapshots.values() {
            let name = snapshot.name.clone();
            match snapshot.state {
                SnapshotState::Pending => {
                    let taken = client.create_snapshot(name_of(&name)).await;
                    tracing::info!(volume = %v, snapshot = %name, ok = taken.is_ok(), "snapshot create");
                    requests.push(match taken {
                        Ok(_) => Request::ReportSnapshotTaken {
                            volume: v.clone(),
                            name,
                        },
                        Err(status) if status.code() == Code::AlreadyExists => {
                            Request::ReportSnapshotTaken {
                                volume: v.clone(),
                                name,
                            }
                        }
                        Err(status) => Request::ReportSnapshotFailed {
                            volume: v.clone(),
                            name,
                            reason: status.message().to_string(),
                        },
                    });
                }
                SnapshotState::Deleting => match client.delete_snapshot(name_of(&name)).await {
                    Err(status) if status.code() != Code::NotFound => {
                        // Tried again next tick: a merge that failed half-way is redone.
                        tracing::warn!(volume = %v, snapshot = %name, "deleting the snapshot: {}", status.message());
                    }
                    _ => requests.push(Request::ReportSnapshotRemoved {
                        volume: v.clone(),
                        name,
                    }),
                },
                SnapshotState::Ready => {}
            }
        }
        if let Some(name) = volume.revert_to.clone() {
            let reverted = client.revert_snapshot(name_of(&name)).await;
            tracing::info!(volume = %v, snapshot = %name, ok = reverted.is_ok(), "snapshot revert");
            requests.push(match reverted {
                Ok(_) => Request::ReportRevertDone {
                    volume: v.clone(),
                    name,
                },
                Err(status) => Request::ReportRevertFailed {
                    volume: v.clone(),
                    name,
                    reason: status.message().to_string(),
                },
            });
        }
        for request in requests {
            if let Err(err) = self.propose(request).await {
                tracing::warn!(volume = %v, "reporting a snapshot operation: {err}");
            }
        }
    }
}

type EngineClient = shorthorn_dataplane::control::ControlClient;

/// Grows the engine (and through it every replica) when the log says the volume is larger
/// than the engine serves. A volume expanded while detached grows when its engine starts.
async fn grow_engine(volume: &Volume, client: &mut EngineClient) {
    let Ok(stats) = client.stats(shorthorn_dataplane::proto::Empty {}).await else {
        return;
    };
    let serving = stats.into_inner().size_bytes;
    if serving >= volume.size {
        return;
    }
    let request = shorthorn_dataplane::proto::ExpandRequest {
        size_bytes: volume.size,
    };
    match client.expand(request).await {
        Ok(_) => {
            tracing::info!(volume = %volume.name, from = serving, to = volume.size, "volume expanded online")
        }
        Err(status) => {
            tracing::warn!(volume = %volume.name, "expanding the engine: {}", status.message())
        }
    }
}

/// Whether something accepts connections at `addr` (within a second).
async fn serving(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// What the agent needs from the state, copied out of a linearizable read.
struct NodeView {
    /// Replicas on this node with their volume.
    replicas: Vec<(Replica, Volume)>,
    /// Volumes attached (or attaching, detaching) on this node, with all their replicas.
    attached: Vec<(Volume, Vec<Replica>)>,
    /// When the first failed replica becomes stale (ms since the epoch), if any.
    stale_due: Option<u64>,
    orphan_auto_deletion: bool,
    /// (ready, last heartbeat) of every node.
    heartbeats: Vec<(bool, Timestamp)>,
}

impl NodeView {
    fn of(state: &State, node: &str) -> NodeView {
        let replicas = state
            .replicas
            .values()
            .filter(|r| r.node == node)
            .filter_map(|r| state.volumes.get(&r.volume).map(|v| (r.clone(), v.clone())))
            .collect();
        let attached = state
            .volumes
            .values()
            .filter(|v| v.attachment.as_ref().is_some_and(|a| a.node == node))
            .map(|v| (v.clone(), state.replicas_of(v).cloned().collect()))
            .collect();
        // As `ReplaceStaleReplicas` judges: failed replicas of volumes that have a healthy
        // one to rebuild from and are not being deleted.
        let stale_due = state
            .replicas
            .values()
            .filter(|r| r.mode == ReplicaMode::Error)
            .filter_map(|r| {
                let volume = state.volumes.get(&r.volume)?;
                let replaceable = volume.robustness != Robustness::Faulted
                    && volume.state != VolumeState::Deleting;
                let failed = r.failed_at?.0;
                replaceable.then(|| failed + volume.stale_replica_timeout_secs * 1000)
            })
            .min();
        let heartbeats = state
            .nodes
            .values()
            .map(|n| (n.ready, n.last_heartbeat))
            .collect();
        NodeView {
            heartbeats,
            replicas,
            attached,
            stale_due,
            orphan_auto_deletion: state.settings.orphan_auto_deletion,
        }
    }
}

fn spawn_logged(mut process: Process, log: &Path) -> anyhow::Result<Child> {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    process
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    process.spawn().context("spawning the child process")
}

/// The replica's revision counter (see dataplane/FORMAT.md); 0 for a replica that never
/// took a write.
fn read_revision(dir: &Path) -> anyhow::Result<u64> {
    let path = dir.join("revision.counter");
    match fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("{} is not a number", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_record(dir: &Path, record: &Record) -> anyhow::Result<()> {
    let path = dir.join("process.json");
    fs::write(&path, serde_json::to_vec(record)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn read_record(dir: &Path) -> Option<Record> {
    serde_json::from_slice(&fs::read(dir.join("process.json")).ok()?).ok()
}

/// A free TCP port on `host`, found by binding port 0.
fn free_port(host: &str) -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((host, 0)).with_context(|| format!("finding a free port on {host}"))?;
    Ok(listener.local_addr()?.port())
}

/// Waits until `address` accepts connections; blocking, like [`Proc::stop`].
fn wait_listening(address: &str, within: Duration) {
    let deadline = Instant::now() + within;
    tokio::task::block_in_place(|| {
        while std::net::TcpStream::connect(address).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

/// (capacity, available) bytes of the filesystem holding `path`.
fn disk_space(path: &Path) -> anyhow::Result<(u64, u64)> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .context("disk path has a NUL byte")?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes into the struct we own; the path is a valid C string.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    anyhow::ensure!(
        rc == 0,
        "statvfs {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    let block = stat.f_frsize as u64;
    Ok((stat.f_blocks as u64 * block, stat.f_bavail as u64 * block))
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
