//! The node agent (Longhorn's instance manager): registers this node and its disk, then
//! keeps the replica and engine processes of this node in step with the log.
//!
//! It is level-triggered: every tick it reads the state, compares it with the processes it
//! runs, starts and stops `shorthorn replica serve` / `shorthorn engine serve` children, and
//! turns what it sees (a replica started, an engine serving, a replica the engine dropped, a
//! rebuild finished, an engine gone) into commands. It never decides placement or epochs:
//! those come from the log. Children outlive a manager crash; a restarted agent adopts the
//! ones its records name and that are still alive.
//!
//! This module owns the loop, registration and the cluster-wide timers (heartbeat, marking
//! nodes down, replacing stale replicas). `children` owns the processes and their records,
//! `replicas` and `engines` converge each kind with the log, `devices` holds the kernel
//! block devices in front of engines, and `snapshots` carries out snapshot operations on an
//! engine.

mod backups;
mod children;
mod devices;
mod engines;
mod jobs;
mod replicas;
mod snapshots;
mod standby;
mod upgrades;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::{FutureExt, Stream, StreamExt};
use shorthorn_consensus::{Error as LogError, Handle};

use children::Proc;
use shorthorn_state::{
    Command, DiskSpec, Event, NodeSpec, RejectionKind, Replica, ReplicaMode, Request, Robustness,
    State, Timestamp, Volume, VolumeState,
};

const TICK: Duration = Duration::from_millis(500);
/// The least time between two stale-replica replacements proposed by this agent.
const STALE_CHECK: Duration = Duration::from_secs(1);
/// How often the agent tells the log its node is alive.
const HEARTBEAT: Duration = Duration::from_secs(2);
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
    /// The backup target's credentials, handed to the engines' backup and restore jobs.
    pub credentials: crate::credentials::CredentialSource,
    /// Where the agent tells the metrics which engines and replicas it runs.
    pub local: crate::metrics::LocalProcesses,
}

/// The log's events, as the agent follows them.
type Events = std::pin::Pin<Box<dyn Stream<Item = Result<(u64, Event), LogError>> + Send>>;

pub struct Agent {
    log: Handle,
    config: AgentConfig,
    replicas: BTreeMap<String, Proc>,
    engines: BTreeMap<String, Proc>,
    /// Device processes (kernel block devices) by volume.
    devices: BTreeMap<String, Proc>,
    /// The NBD endpoint of each volume's engine that exited, for its successor.
    last_nbd: BTreeMap<String, String>,
    /// Engine deaths in a row per volume, to back off a crashing engine.
    engine_deaths: BTreeMap<String, engines::Deaths>,
    /// (volume, image) engine upgrade checks this agent ran and reported.
    upgrade_checked: BTreeSet<(String, String)>,
    /// The engine image checks running now, by (volume, image).
    running_checks: BTreeMap<(String, String), tokio::task::JoinHandle<Result<String, String>>>,
    /// Since when, and for how many probes in a row, each engine has not answered.
    engine_silence: BTreeMap<String, (Instant, u32)>,
    /// When this agent first saw each volume attaching here.
    attach_seen: BTreeMap<String, Instant>,
    /// Orphaned replica directories already reported.
    orphans_reported: std::collections::BTreeSet<String>,
    /// When this agent last started a scrub of each volume attached here.
    scrubbed: std::sync::Mutex<BTreeMap<String, Instant>>,
    /// When this agent last reported each backup's progress.
    progress_reported: std::sync::Mutex<BTreeMap<String, Instant>>,
    /// This agent's polls of the backup volumes its standbys follow.
    standby_polls: std::sync::Mutex<BTreeMap<String, standby::Poll>>,
    /// The leader's backup work: block collection, backup volume sync.
    leader_backups: backups::LeaderBackups,
    /// The leader's recurring job work.
    leader_jobs: jobs::LeaderJobs,
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
            devices: BTreeMap::new(),
            last_nbd: BTreeMap::new(),
            engine_deaths: BTreeMap::new(),
            upgrade_checked: Default::default(),
            running_checks: Default::default(),
            engine_silence: BTreeMap::new(),
            attach_seen: BTreeMap::new(),
            orphans_reported: Default::default(),
            scrubbed: Default::default(),
            progress_reported: Default::default(),
            standby_polls: Default::default(),
            leader_backups: Default::default(),
            leader_jobs: Default::default(),
            last_stale_check: Instant::now(),
            last_heartbeat: Instant::now() - HEARTBEAT,
            leader_since: None,
        }
    }

    /// Registers the node, adopts surviving children, then converges forever.
    pub async fn run(mut self) -> anyhow::Result<()> {
        self.register().await?;
        self.adopt();
        self.adopt_devices();
        let mut events = self.follow();
        loop {
            if let Err(err) = self.tick().await {
                tracing::warn!("node agent: {err:#}");
            }
            self.publish();
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

    /// Tells the metrics which engines and replicas run here now.
    fn publish(&self) {
        self.config.local.publish(
            self.engines
                .iter()
                .map(|(volume, proc)| (volume.clone(), proc.record.control.clone())),
            self.replicas
                .keys()
                .map(|id| (id.clone(), self.config.disk.join("replicas").join(id))),
        );
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
        let down_after = Duration::from_secs(view.node_down_timeout_secs);
        let late = now_millis().saturating_sub(down_after.as_millis() as u64);
        if self
            .leader_since
            .is_some_and(|since| since.elapsed() >= down_after)
            && view
                .heartbeats
                .iter()
                .any(|(ready, at)| *ready && at.0 <= late)
        {
            let timeout_secs = view.node_down_timeout_secs;
            self.propose(Request::MarkDeadNodes { timeout_secs })
                .await?;
        }
        self.check_upgrades(&view.upgrade_checks).await;
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
        if leader {
            self.leader_backup_tasks().await;
            self.leader_job_tasks().await;
            self.leader_standby_tasks().await;
        }
        Ok(())
    }
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
    /// The `nodeDownTimeout` setting.
    node_down_timeout_secs: u64,
    /// The `scrubInterval` setting.
    scrub_interval_secs: u64,
    /// The `blockDeviceFrontend` setting.
    block_device_frontend: String,
    /// Backups in progress of volumes attached here.
    backups: Vec<shorthorn_state::Backup>,
    /// The `backupConcurrentLimit` setting.
    backup_concurrency: u64,
    /// The `restoreConcurrentLimit` setting.
    restore_concurrency: u64,
    /// The `standbyPollInterval` setting: how often standbys poll their backup volume.
    standby_poll_secs: u64,
    /// What the volumes attached here that are being copied from a snapshot copy from, by
    /// volume.
    copy_sources: BTreeMap<String, backups::CopySource>,
    /// (ready, last heartbeat) of every node.
    heartbeats: Vec<(bool, Timestamp)>,
    /// The engine image of each volume attached here ("" = this agent's binary).
    engine_images: BTreeMap<String, String>,
    /// The image each replica here should run, and whether its process may be restarted
    /// for it now (see `State::replica_image`).
    replica_images: BTreeMap<String, (String, bool)>,
    /// Volumes attached here whose engine upgrade is starting the new engine.
    upgrading_engines: BTreeSet<String>,
    /// (volume, image) of the engine upgrades this node checks.
    upgrade_checks: Vec<(String, String)>,
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
                replaceable.then(|| failed + volume.replacement_wait_secs(&state.settings) * 1000)
            })
            .min();
        let heartbeats = state
            .nodes
            .values()
            .map(|n| (n.ready, n.last_heartbeat))
            .collect();
        let backups = state
            .backups
            .values()
            .filter(|b| b.state == shorthorn_state::BackupState::InProgress)
            .filter(|b| {
                state
                    .volumes
                    .get(&b.volume)
                    .and_then(|v| v.attachment.as_ref())
                    .is_some_and(|a| a.node == node)
            })
            .cloned()
            .collect();
        let copy_sources = state
            .volumes
            .values()
            .filter(|v| v.attachment.as_ref().is_some_and(|a| a.node == node))
            .filter_map(|v| {
                let from = v.restore.as_ref()?.snapshot.as_ref()?;
                Some((v.name.clone(), backups::CopySource::of(state, from)))
            })
            .collect();
        let engine_images = state
            .volumes
            .keys()
            .map(|v| (v.clone(), state.engine_image(v).to_string()))
            .collect();
        let replica_images = state
            .replicas
            .values()
            .filter(|r| r.node == node)
            .filter_map(|r| {
                let (image, now) = state.replica_image(&r.id)?;
                Some((r.id.clone(), (image.to_string(), now)))
            })
            .collect();
        let running = || state.engine_upgrades.iter().filter(|(_, u)| u.running());
        let upgrading_engines = running()
            .filter(|(v, u)| {
                matches!(u.phase, shorthorn_state::UpgradePhase::Engine { .. })
                    && state
                        .volumes
                        .get(*v)
                        .and_then(|v| v.attachment.as_ref())
                        .is_some_and(|a| a.node == node)
            })
            .map(|(v, _)| v.clone())
            .collect();
        let upgrade_checks = running()
            .filter(|(v, u)| {
                u.phase == shorthorn_state::UpgradePhase::Checking
                    && state.upgrade_checker(v) == Some(node)
            })
            .map(|(v, u)| (v.clone(), u.image.clone()))
            .collect();
        NodeView {
            engine_images,
            replica_images,
            upgrading_engines,
            upgrade_checks,
            backups,
            copy_sources,
            backup_concurrency: state.settings.backup_concurrent_limit,
            restore_concurrency: state.settings.restore_concurrent_limit,
            standby_poll_secs: state.settings.standby_poll_interval,
            heartbeats,
            replicas,
            attached,
            stale_due,
            orphan_auto_deletion: state.settings.orphan_auto_deletion,
            node_down_timeout_secs: state.settings.node_down_timeout,
            scrub_interval_secs: state.settings.scrub_interval,
            block_device_frontend: state.settings.block_device_frontend.clone(),
        }
    }
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
