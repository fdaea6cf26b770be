//! The API of the replicated log for the rest of the process: [`Handle`].
//!
//! - [`Handle::propose`] works on any member: a follower forwards the command to the
//!   leader. A proposal is retried only when it surely was not appended (no leader, the
//!   leader refused it as not-leader, the leader could not be connected to); a proposal
//!   whose fate is unknown fails with [`Error::TimedOut`] and may still be committed.
//! - [`Handle::read`] is linearizable: the leader confirms its leadership with a quorum
//!   (read index) and the reading member waits until it has applied up to that index.
//! - [`Handle::subscribe`] streams (log index, event) from any index still kept, following
//!   new entries as they are applied, across restarts of this member.
//! - [`Handle::status`] reports leader, term, commit and applied index, members.
//!
//! [`Handle::serve`] answers the requests other members and clients send to this member.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::Stream;
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::{Deserialize, Serialize};
use shorthorn_state::{CLUSTER_VERSION, ClusterVersion, Command, Event, Request, State};
use tokio::sync::mpsc;

use crate::cluster_version::Build;
use crate::disk::Disk;
use crate::error::Error;
use crate::log_store::LogStore;
use crate::membership::{self, Member};
use crate::network::{Envelope, NetworkFactory, Reply, Rpc, Transport, TransportError};
use crate::proposals::Proposals;
use crate::state_machine::{Machine, StateMachineStore};
use crate::{NodeId, Raft};

/// Timing and sizing of a member. The defaults suit managers on one LAN.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// A follower that hears nothing for a random time in this range starts an election.
    pub election_timeout: (Duration, Duration),
    /// How long a proposal, read or membership change may take before it fails.
    pub request_timeout: Duration,
    /// How many voters the group grows to as managers join (3 or 5); later joiners stay
    /// learners.
    pub voters: usize,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, for followers that lag a little.
    pub keep_behind_snapshot: u64,
    /// Log entries of proposals being committed at once on the leader; proposals that
    /// arrive meanwhile are batched into the next entry.
    pub batches_in_flight: usize,
    /// Most commands in one log entry.
    pub max_batch: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(400), Duration::from_millis(800)),
            request_timeout: Duration::from_secs(10),
            voters: 3,
            snapshot_every: 20_000,
            keep_behind_snapshot: 2_000,
            batches_in_flight: 4,
            max_batch: 256,
        }
    }
}

impl Tuning {
    fn raft_config(&self) -> Result<Config, Error> {
        let config = Config {
            cluster_name: "shorthorn".to_string(),
            heartbeat_interval: self.heartbeat.as_millis() as u64,
            election_timeout_min: self.election_timeout.0.as_millis() as u64,
            election_timeout_max: self.election_timeout.1.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_behind_snapshot,
            max_payload_entries: 1000,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| Error::Membership(format!("invalid Raft configuration: {e}")))
    }
}

/// One event of the log as subscribers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The log index of the entry that produced it.
    pub index: u64,
    /// The time of the command behind it (its proposer's clock); `None` for events kept
    /// before command times were recorded.
    pub at: Option<shorthorn_state::Timestamp>,
    pub event: Event,
}

/// What a member knows about the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub id: NodeId,
    pub addr: String,
    /// Leader, Follower, Candidate or Learner.
    pub role: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    /// Last committed index this member knows of.
    pub committed: Option<u64>,
    pub applied: Option<u64>,
    /// Last index covered by this member's snapshot.
    pub snapshot: Option<u64>,
    /// Last index purged from this member's log.
    pub purged: Option<u64>,
    pub voters: BTreeSet<NodeId>,
    /// Every member, voters and learners, with address and disk incarnation.
    pub members: BTreeMap<NodeId, Member>,
    /// This member's build; None from a build before cluster versions (which counts as
    /// supporting cluster version 1).
    #[serde(default)]
    pub build: Option<Build>,
}

struct Inner {
    id: NodeId,
    me: Member,
    raft: Raft,
    machine: Arc<Machine>,
    transport: Arc<dyn Transport>,
    tuning: Tuning,
    committed: Arc<AtomicU64>,
    /// Proposals waiting to be batched into log entries (used while leader).
    proposals: Proposals,
    /// Membership changes made through this member run one at a time.
    changing: tokio::sync::Mutex<()>,
    /// Seconds from proposing a command here to its outcome, for every proposal that was
    /// committed (applied or rejected by the state machine); failed proposals are not timed.
    proposal_latency: Histogram,
}

/// The buckets of [`Handle::proposal_latency`]: 0.5 ms to about 16 s, doubling.
fn proposal_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 16)
}

/// A running member of the group; cheap to clone.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

fn stopped(id: NodeId, err: impl std::fmt::Display) -> Error {
    Error::Stopped {
        node: id,
        reason: err.to_string(),
    }
}

impl Handle {
    /// Opens the data directory and starts the Raft member `node_id`, reachable by the
    /// others at `addr` through `transport`. The member is idle until it is initialized
    /// ([`Handle::bootstrap`]) or added by a member of an existing group.
    pub async fn open(
        node_id: NodeId,
        data_dir: &Path,
        addr: String,
        transport: Arc<dyn Transport>,
        tuning: Tuning,
    ) -> Result<Handle, Error> {
        crate::data_format::open(data_dir).map_err(|e| Error::Storage(e.to_string()))?;
        let disk = Disk::open(data_dir).map_err(|e| Error::Storage(e.to_string()))?;
        let identity = membership::identity(&disk, node_id)
            .await
            .map_err(|e| Error::Storage(e.to_string()))?;
        let me = Member {
            addr,
            incarnation: identity.incarnation,
        };
        let machine = Machine::open(disk.clone())?;
        let log_store = LogStore::new(disk);
        let committed = log_store.committed_view();
        let network = NetworkFactory {
            me: node_id,
            transport: transport.clone(),
        };
        let config = Arc::new(tuning.raft_config()?);
        let raft = Raft::new(
            node_id,
            config,
            network,
            log_store,
            StateMachineStore::new(machine.clone()),
        )
        .await
        .map_err(|e| stopped(node_id, e))?;
        let proposals = Proposals::start(
            raft.clone(),
            node_id,
            tuning.batches_in_flight,
            tuning.max_batch,
        );
        Ok(Handle {
            inner: Arc::new(Inner {
                id: node_id,
                me,
                raft,
                machine,
                transport,
                tuning,
                committed,
                proposals,
                changing: tokio::sync::Mutex::new(()),
                proposal_latency: Histogram::new(proposal_buckets()),
            }),
        })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// This member as the membership records it.
    pub fn member(&self) -> &Member {
        &self.inner.me
    }

    /// The underlying openraft instance, for tests and tools.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Whether this member has ever been part of a group (its log holds a membership).
    pub async fn is_initialized(&self) -> Result<bool, Error> {
        self.inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| stopped(self.id(), e))
    }

    /// Makes this member the first voter of a new group. Does nothing on a member that is
    /// already initialized.
    pub async fn bootstrap(&self) -> Result<(), Error> {
        if self.is_initialized().await? {
            return Ok(());
        }
        let mut members = BTreeMap::new();
        members.insert(self.id(), self.inner.me.clone());
        self.inner
            .raft
            .initialize(members)
            .await
            .map_err(|e| Error::Membership(e.to_string()))
    }

    /// Starts a new group of several voters at once (in-process tests do this).
    pub async fn bootstrap_with(&self, members: BTreeMap<NodeId, Member>) -> Result<(), Error> {
        self.inner
            .raft
            .initialize(members)
            .await
            .map_err(|e| Error::Membership(e.to_string()))
    }

    /// Stops the Raft member. Acknowledged writes are already on disk.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| stopped(self.id(), e))
    }

    /// What this member knows about the group now.
    pub fn status(&self) -> Status {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let members: BTreeMap<NodeId, Member> = membership
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect();
        let committed = match self.inner.committed.load(Ordering::Acquire) {
            0 => None,
            n => Some(n - 1),
        };
        Status {
            id: self.id(),
            addr: self.inner.me.addr.clone(),
            role: format!("{:?}", metrics.state),
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index,
            committed,
            applied: metrics.last_applied.map(|id| id.index),
            snapshot: metrics.snapshot.map(|id| id.index),
            purged: metrics.purged.map(|id| id.index),
            voters: membership.voter_ids().collect(),
            members,
            build: Some(Build::this()),
        }
    }

    fn leader(&self) -> Option<(NodeId, Member)> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let member = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .clone();
        Some((leader, member))
    }

    async fn wait_for_leader(&self, deadline: Instant) -> Result<(NodeId, Member), Error> {
        loop {
            if let Some(leader) = self.leader() {
                return Ok(leader);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::NoLeader { node: self.id() });
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            let _ = self
                .inner
                .raft
                .wait(Some(wait))
                .metrics(|m| m.current_leader.is_some(), "a leader is known")
                .await;
        }
    }

    fn quorum_or_timeout(&self, what: &str, waited: Duration) -> Error {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let limit = self.inner.tuning.election_timeout.1.as_millis() as u64 * 2;
        if metrics.state == ServerState::Leader
            && metrics.millis_since_quorum_ack.is_none_or(|ms| ms > limit)
        {
            return Error::QuorumLost { node: self.id() };
        }
        Error::TimedOut {
            what: what.to_string(),
            millis: waited.as_millis() as u64,
        }
    }

    async fn call(&self, addr: &str, rpc: Rpc, timeout: Duration) -> Result<Reply, TransportError> {
        let envelope = Envelope {
            from: self.id(),
            to: None,
            rpc,
        };
        self.inner.transport.call(addr, envelope, timeout).await
    }

    /// Commits `command` and returns the events it produced, or the state machine's
    /// rejection as [`Error::Rejected`]. Works on any member.
    pub async fn propose(&self, command: Command) -> Result<Vec<Event>, Error> {
        self.check_cluster_version(&command.request).await?;
        let start = Instant::now();
        let outcome = self.propose_untimed(command).await;
        if matches!(outcome, Ok(_) | Err(Error::Rejected { .. })) {
            self.inner
                .proposal_latency
                .observe(start.elapsed().as_secs_f64());
        }
        outcome
    }

    /// Refuses, before it reaches the log, a request that needs a cluster version the
    /// cluster does not run yet (a member of an older build could not apply it), and a raise
    /// of the cluster version beyond what this build or any member supports. The cluster
    /// version only rises, so this member's state, even behind the leader's, never lets
    /// through what the leader would refuse; the state machine checks again
    /// ([`shorthorn_state::decide`]).
    async fn check_cluster_version(&self, request: &Request) -> Result<(), Error> {
        let current = self.read_local(|state| state.cluster_version);
        let rejected = |rejection: shorthorn_state::Rejection| Error::Rejected {
            kind: rejection.kind,
            message: rejection.message,
        };
        let required = request.cluster_version_required();
        if required > current {
            return Err(rejected(shorthorn_state::cluster_version_too_new(
                required, current,
            )));
        }
        let Request::RaiseClusterVersion { version } = request else {
            return Ok(());
        };
        if *version <= current {
            return Ok(());
        }
        if *version > CLUSTER_VERSION {
            return Err(rejected(shorthorn_state::Rejection::invalid(format!(
                "this build (Shorthorn {}) supports cluster versions up to {CLUSTER_VERSION}; it \
                 cannot raise the cluster to {version}",
                env!("CARGO_PKG_VERSION")
            ))));
        }
        for (id, build) in self.member_builds().await {
            let supported = Build::supported(build.as_ref());
            if supported < *version {
                let runs = match &build {
                    Some(build) => format!("Shorthorn {}", build.version),
                    None => "a build before cluster versions (or does not answer)".to_string(),
                };
                return Err(rejected(shorthorn_state::Rejection::conflict(format!(
                    "manager {id} runs {runs}, which supports cluster version {supported}; the \
                     cluster stays at version {current} until every manager supports {version}"
                ))));
            }
        }
        Ok(())
    }

    /// What build every member runs, as each answers for itself (this member without a
    /// call); None for a member of a build before cluster versions or one that does not
    /// answer within a second.
    pub async fn member_builds(&self) -> BTreeMap<NodeId, Option<Build>> {
        let members = self.status().members;
        let asks = members.into_iter().map(|(id, member)| async move {
            if id == self.id() {
                return (id, Some(Build::this()));
            }
            let answer = self
                .call(&member.addr, Rpc::Status, Duration::from_secs(1))
                .await;
            match answer {
                Ok(Reply::Status(status)) if status.id == id => (id, status.build),
                _ => (id, None),
            }
        });
        futures::future::join_all(asks).await.into_iter().collect()
    }

    /// The newest cluster version every member supports (at most this build's).
    pub async fn cluster_version_supported(&self) -> ClusterVersion {
        self.member_builds()
            .await
            .values()
            .map(|build| Build::supported(build.as_ref()))
            .fold(CLUSTER_VERSION, std::cmp::min)
    }

    /// The latencies of the proposals made through this member that were committed, in
    /// seconds (a handle on the live histogram, for the manager's metrics).
    pub fn proposal_latency(&self) -> Histogram {
        self.inner.proposal_latency.clone()
    }

    /// The size in bytes of the encoded state in this member's current snapshot (None before
    /// its first).
    pub fn snapshot_bytes(&self) -> Option<u64> {
        self.inner.machine.snapshot_bytes()
    }

    async fn propose_untimed(&self, command: Command) -> Result<Vec<Event>, Error> {
        let timeout = self.inner.tuning.request_timeout;
        let start = Instant::now();
        let deadline = start + timeout;
        loop {
            let (leader, member) = self.wait_for_leader(deadline).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if leader == self.id() {
                match self.propose_here(command.clone(), remaining).await {
                    Err(Error::NotLeader { .. } | Error::NoLeader { .. }) => {}
                    other => return other,
                }
            } else {
                match self
                    .call(&member.addr, Rpc::Propose(command.clone()), remaining)
                    .await
                {
                    Ok(Reply::Proposed(Err(Error::NotLeader { .. } | Error::NoLeader { .. }))) => {}
                    Ok(Reply::Proposed(result)) => return result,
                    Ok(other) => {
                        return Err(Error::Protocol(format!(
                            "leader {leader} answered a proposal with {other:?}"
                        )));
                    }
                    // Not connected: the command was not sent, so trying again is safe.
                    Err(TransportError::Unreachable(_)) => {}
                    Err(TransportError::TimedOut(_)) => {
                        return Err(self.quorum_or_timeout("the leader to commit", start.elapsed()));
                    }
                    Err(TransportError::Protocol(reason)) => return Err(Error::Protocol(reason)),
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::TimedOut {
                    what: "a leader to accept the proposal".to_string(),
                    millis: start.elapsed().as_millis() as u64,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Commits `command` through this member's Raft, which must be the leader.
    async fn propose_here(&self, command: Command, timeout: Duration) -> Result<Vec<Event>, Error> {
        let Some(answer) = self.inner.proposals.submit(command) else {
            return Err(stopped(self.id(), "the proposal queue is closed"));
        };
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(stopped(self.id(), "the proposal was dropped")),
            Err(_) => Err(self.quorum_or_timeout("the proposal to commit", timeout)),
        }
    }

    /// Runs `f` on a state that includes every command committed before the call
    /// (linearizable). Works on any member.
    pub async fn read<T>(&self, f: impl FnOnce(&State) -> T) -> Result<T, Error> {
        let timeout = self.inner.tuning.request_timeout;
        let start = Instant::now();
        let deadline = start + timeout;
        let index = loop {
            let (leader, member) = self.wait_for_leader(deadline).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if leader == self.id() {
                match self.read_index_here(remaining).await {
                    Err(Error::NotLeader { .. } | Error::NoLeader { .. }) => {}
                    other => break other?,
                }
            } else {
                match self.call(&member.addr, Rpc::ReadIndex, remaining).await {
                    Ok(Reply::ReadIndex(Err(Error::NotLeader { .. } | Error::NoLeader { .. }))) => {
                    }
                    Ok(Reply::ReadIndex(result)) => break result?,
                    Ok(other) => {
                        return Err(Error::Protocol(format!(
                            "leader {leader} answered a read index with {other:?}"
                        )));
                    }
                    Err(TransportError::Unreachable(_)) => {}
                    Err(_) => {
                        return Err(
                            self.quorum_or_timeout("the leader's read index", start.elapsed())
                        );
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::NoLeader { node: self.id() });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut applied = self.inner.machine.applied_watch();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let caught_up =
            tokio::time::timeout(remaining, applied.wait_for(|next| *next >= index)).await;
        match caught_up {
            Ok(Ok(_)) => Ok(self.inner.machine.read(f)),
            Ok(Err(_)) => Err(stopped(self.id(), "the state machine closed")),
            Err(_) => Err(Error::TimedOut {
                what: format!("this member to apply up to index {index}"),
                millis: start.elapsed().as_millis() as u64,
            }),
        }
    }

    /// On the leader: confirms leadership with a quorum and returns how many entries a
    /// reader must have applied (index of the read log id plus one).
    async fn read_index_here(&self, timeout: Duration) -> Result<u64, Error> {
        let check = self.inner.raft.get_read_log_id();
        match tokio::time::timeout(timeout, check).await {
            Ok(Ok((read_log_id, _))) => Ok(read_log_id.map(|id| id.index + 1).unwrap_or(0)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
                match (forward.leader_id, forward.leader_node) {
                    (Some(leader), Some(node)) => Err(Error::NotLeader {
                        node: self.id(),
                        leader,
                        addr: node.addr,
                    }),
                    _ => Err(Error::NoLeader { node: self.id() }),
                }
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                Err(Error::QuorumLost { node: self.id() })
            }
            Ok(Err(RaftError::Fatal(fatal))) => Err(stopped(self.id(), fatal)),
            Err(_) => Err(self.quorum_or_timeout("leadership confirmation", timeout)),
        }
    }

    /// Runs `f` on the state as applied on this member now, without any coordination: it
    /// may lag the leader, and answers without a quorum. For what describes this member's
    /// own node (its metrics); use [`Handle::read`] for current data.
    pub fn read_local<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        self.inner.machine.read(f)
    }

    /// The state as applied on this member, without any coordination, with the index of the
    /// last applied entry. For checks and tools; use [`Handle::read`] for current data.
    pub fn local_state(&self) -> (Option<u64>, Vec<u8>) {
        self.inner.machine.encoded()
    }

    /// Streams (log index, event) for every event of entries from index `from` on, then
    /// follows new entries as they are applied. The stream ends with
    /// [`Error::EventsTrimmed`] if `from` is behind what this member keeps.
    pub fn subscribe(&self, from: u64) -> impl Stream<Item = Result<(u64, Event), Error>> + use<> {
        tokio_stream::StreamExt::map(self.subscribe_logged(from), |item| {
            item.map(|logged| (logged.index, logged.event))
        })
    }

    /// [`Handle::subscribe`] with the time of the command behind each event.
    pub fn subscribe_logged(&self, from: u64) -> impl Stream<Item = Result<Logged, Error>> + use<> {
        let (tx, rx) = mpsc::channel(256);
        let machine = self.inner.machine.clone();
        tokio::spawn(async move {
            let mut applied = machine.applied_watch();
            // The key of the next event to send: (log index, position in the entry).
            let mut cursor = (from, 0u32);
            loop {
                applied.borrow_and_update();
                let batch = match machine.events_from(cursor, 512) {
                    Ok(batch) => batch,
                    Err(err) => {
                        let _ = tx.send(Err(err)).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    // Wait for new entries, but end as soon as the subscriber goes away:
                    // this task holds the state machine (and its database) open.
                    tokio::select! {
                        changed = applied.changed() => {
                            if changed.is_err() {
                                return;
                            }
                        }
                        () = tx.closed() => return,
                    }
                    continue;
                }
                for (index, seq, at, event) in batch {
                    cursor = (index, seq.saturating_add(1));
                    let logged = Logged {
                        index,
                        at: at.map(shorthorn_state::Timestamp),
                        event,
                    };
                    if tx.send(Ok(logged)).await.is_err() {
                        return;
                    }
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// Asks the member at `addr` to add this member to its group; follows the leader.
    pub async fn join(&self, addr: &str) -> Result<Status, Error> {
        let rpc = Rpc::Join {
            node_id: self.id(),
            member: self.inner.me.clone(),
            build: Some(Build::this()),
        };
        self.call_leader_via(addr, rpc).await
    }

    /// Sends a membership request to `addr`, following `NotLeader` answers to the leader.
    async fn call_leader_via(&self, addr: &str, rpc: Rpc) -> Result<Status, Error> {
        let timeout = self.inner.tuning.request_timeout * 3;
        let deadline = Instant::now() + timeout;
        let mut target = addr.to_string();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.call(&target, rpc.clone(), remaining).await {
                Ok(Reply::Membership(Err(Error::NotLeader { addr, .. }))) => target = addr,
                Ok(Reply::Membership(Err(Error::NoLeader { .. })))
                | Err(TransportError::Unreachable(_)) => {
                    target = addr.to_string();
                }
                Ok(Reply::Membership(result)) => return result,
                Ok(other) => {
                    return Err(Error::Protocol(format!(
                        "{target} answered a membership request with {other:?}"
                    )));
                }
                Err(err) => {
                    return Err(Error::Unreachable {
                        addr: target,
                        reason: err.to_string(),
                    });
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::TimedOut {
                    what: format!("a leader to accept {}", rpc.method()),
                    millis: timeout.as_millis() as u64,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn not_leader(&self) -> Error {
        match self.leader() {
            Some((leader, member)) if leader != self.id() => Error::NotLeader {
                node: self.id(),
                leader,
                addr: member.addr,
            },
            _ => Error::NoLeader { node: self.id() },
        }
    }

    fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().state == ServerState::Leader
    }

    /// On the leader: adds `node_id` as a learner, waits for it to catch up, and promotes
    /// it to voter while the group has fewer voters than configured.
    pub async fn add_member(&self, node_id: NodeId, member: Member) -> Result<Status, Error> {
        self.add_member_of(node_id, member, Some(&Build::this()))
            .await
    }

    /// [`Handle::add_member`] of a manager that runs `build` (None: a build before cluster
    /// versions): refused when the build does not support the cluster version the cluster
    /// runs, since it could not apply the log.
    pub async fn add_member_of(
        &self,
        node_id: NodeId,
        member: Member,
        build: Option<&Build>,
    ) -> Result<Status, Error> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let current = self.read_local(|state| state.cluster_version);
        let supported = Build::supported(build);
        if supported < current {
            let runs = match build {
                Some(build) => format!("Shorthorn {}", build.version),
                None => "a build before cluster versions".to_string(),
            };
            return Err(Error::Membership(format!(
                "manager {node_id} runs {runs}, which supports cluster version {supported}; the \
                 cluster runs cluster version {current}: upgrade the manager before it joins"
            )));
        }
        let _one_at_a_time = self.inner.changing.lock().await;
        let status = self.status();
        if let Some(known) = status.members.get(&node_id) {
            if known.incarnation != member.incarnation {
                return Err(Error::AlreadyMember {
                    node: node_id,
                    addr: known.addr.clone(),
                    incarnation: known.incarnation,
                });
            }
            if known.addr != member.addr {
                return Err(Error::Membership(format!(
                    "node {node_id} is a member at {}, not at {}; remove it first",
                    known.addr, member.addr
                )));
            }
        } else {
            let raft = &self.inner.raft;
            let add = raft.add_learner(node_id, member, true);
            match tokio::time::timeout(self.inner.tuning.request_timeout * 3, add).await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return Err(Error::Membership(err.to_string())),
                Err(_) => {
                    return Err(Error::TimedOut {
                        what: format!("learner {node_id} to catch up"),
                        millis: (self.inner.tuning.request_timeout * 3).as_millis() as u64,
                    });
                }
            }
        }
        let status = self.status();
        if !status.voters.contains(&node_id) && status.voters.len() < self.inner.tuning.voters {
            let ids: BTreeSet<NodeId> = [node_id].into();
            let change = self
                .inner
                .raft
                .change_membership(ChangeMembers::AddVoterIds(ids), true);
            match tokio::time::timeout(self.inner.tuning.request_timeout, change).await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return Err(Error::Membership(err.to_string())),
                Err(_) => {
                    return Err(Error::TimedOut {
                        what: format!("promotion of {node_id} to voter"),
                        millis: self.inner.tuning.request_timeout.as_millis() as u64,
                    });
                }
            }
        }
        Ok(self.status())
    }

    /// On the leader: takes `node_id` out of the group (voter or learner).
    pub async fn remove_member_here(&self, node_id: NodeId) -> Result<Status, Error> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let _one_at_a_time = self.inner.changing.lock().await;
        let status = self.status();
        let ids: BTreeSet<NodeId> = [node_id].into();
        let change = if status.voters.contains(&node_id) {
            if status.voters.len() == 1 {
                return Err(Error::Membership(format!(
                    "node {node_id} is the only voter; it cannot be removed"
                )));
            }
            ChangeMembers::RemoveVoters(ids)
        } else if status.members.contains_key(&node_id) {
            ChangeMembers::RemoveNodes(ids)
        } else {
            return Ok(status);
        };
        let change = self.inner.raft.change_membership(change, false);
        match tokio::time::timeout(self.inner.tuning.request_timeout, change).await {
            Ok(Ok(_)) => Ok(self.status()),
            Ok(Err(err)) => Err(Error::Membership(err.to_string())),
            Err(_) => Err(Error::TimedOut {
                what: format!("removal of {node_id}"),
                millis: self.inner.tuning.request_timeout.as_millis() as u64,
            }),
        }
    }

    /// Takes `node_id` out of the group, through the leader.
    pub async fn remove_member(&self, node_id: NodeId) -> Result<Status, Error> {
        let addr = self.inner.me.addr.clone();
        self.call_leader_via(&addr, Rpc::Remove { node_id }).await
    }

    /// Builds a snapshot of this member's state now and, with `purge`, purges the log it
    /// covers (followers that lag behind it then catch up through the snapshot).
    pub async fn snapshot(&self, purge: bool) -> Result<Status, Error> {
        let raft = &self.inner.raft;
        let applied = self.status().applied;
        raft.trigger()
            .snapshot()
            .await
            .map_err(|e| stopped(self.id(), e))?;
        let timeout = self.inner.tuning.request_timeout;
        raft.wait(Some(timeout))
            .metrics(
                |m| m.snapshot.map(|id| id.index) >= applied,
                "snapshot covers the applied index",
            )
            .await
            .map_err(|e| Error::TimedOut {
                what: format!("snapshot: {e}"),
                millis: timeout.as_millis() as u64,
            })?;
        if purge && let Some(upto) = self.status().snapshot {
            raft.trigger()
                .purge_log(upto)
                .await
                .map_err(|e| stopped(self.id(), e))?;
            raft.wait(Some(timeout))
                .metrics(
                    |m| m.purged.map(|id| id.index) >= Some(upto),
                    "log purged up to the snapshot",
                )
                .await
                .map_err(|e| Error::TimedOut {
                    what: format!("purge: {e}"),
                    millis: timeout.as_millis() as u64,
                })?;
        }
        Ok(self.status())
    }

    /// Answers one request sent to this member.
    pub async fn serve(&self, envelope: Envelope) -> Reply {
        if let Some((node, incarnation)) = envelope.to
            && (node != self.id() || incarnation != self.inner.me.incarnation)
        {
            return Reply::Refused(format!(
                "this is node {} with disk incarnation {:016x}; the sender ({}) expects node {node} \
                 with disk incarnation {incarnation:016x} (was the data directory lost?)",
                self.id(),
                self.inner.me.incarnation,
                envelope.from
            ));
        }
        let raft = &self.inner.raft;
        match envelope.rpc {
            Rpc::AppendEntries(req) => Reply::AppendEntries(raft.append_entries(req).await),
            Rpc::Vote(req) => Reply::Vote(raft.vote(req).await),
            Rpc::InstallSnapshot(req) => Reply::InstallSnapshot(raft.install_snapshot(req).await),
            Rpc::Propose(command) => {
                let timeout = self.inner.tuning.request_timeout;
                let checked = self.check_cluster_version(&command.request).await;
                Reply::Proposed(match checked {
                    Ok(()) => self.propose_here(command, timeout).await,
                    Err(err) => Err(err),
                })
            }
            Rpc::ReadIndex => {
                let timeout = self.inner.tuning.request_timeout;
                Reply::ReadIndex(self.read_index_here(timeout).await)
            }
            Rpc::Join {
                node_id,
                member,
                build,
            } => Reply::Membership(self.add_member_of(node_id, member, build.as_ref()).await),
            Rpc::Remove { node_id } => Reply::Membership(self.remove_member_here(node_id).await),
            Rpc::Status => Reply::Status(self.status()),
            Rpc::Snapshot { purge } => Reply::Membership(self.snapshot(purge).await),
            Rpc::LocalState => {
                let (applied, state) = self.local_state();
                Reply::LocalState { applied, state }
            }
        }
    }
}
