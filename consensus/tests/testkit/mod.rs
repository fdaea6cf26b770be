//! Shared helpers of the in-process cluster tests: a [`Router`] transport that can drop,
//! delay, duplicate and partition messages between members, and a [`Cluster`] of members
//! in temporary directories that can be killed and restarted.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shorthorn_consensus::{
    Envelope, Error, Handle, Member, NodeId, Reply, Rpc, Transport, TransportError, Tuning,
};
use shorthorn_state::{Command, Event, Request, State, Timestamp};

/// The seed of a randomized test: `SHORTHORN_SEED` if set, else drawn and printed.
pub fn seed() -> u64 {
    let seed = std::env::var("SHORTHORN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("seed: {seed} (rerun with SHORTHORN_SEED={seed})");
    seed
}

/// Fault rates of the router, for messages between members.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Probability that a request is lost (the sender times out).
    pub drop_request: f64,
    /// Probability that the reply is lost after the request was handled.
    pub drop_reply: f64,
    /// Probability that a Raft message is delivered a second time.
    pub duplicate: f64,
    /// Each message waits a uniform random time up to this.
    pub max_delay: Duration,
}

struct RouterState {
    members: HashMap<String, Handle>,
    /// Unordered pairs of node ids that cannot talk.
    cut: BTreeSet<(NodeId, NodeId)>,
    faults: Faults,
    rng: StdRng,
}

/// An in-process transport between members, with faults.
#[derive(Clone)]
pub struct Router {
    state: Arc<Mutex<RouterState>>,
}

enum Fate {
    Unreachable,
    DropRequest(Duration),
    Deliver {
        handle: Handle,
        delay: Duration,
        drop_reply: bool,
        duplicate: Option<Duration>,
    },
}

impl Router {
    pub fn new(seed: u64) -> Router {
        Router {
            state: Arc::new(Mutex::new(RouterState {
                members: HashMap::new(),
                cut: BTreeSet::new(),
                faults: Faults::default(),
                rng: StdRng::seed_from_u64(seed),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn attach(&self, addr: &str, handle: Handle) {
        self.lock().members.insert(addr.to_string(), handle);
    }

    pub fn detach(&self, addr: &str) {
        self.lock().members.remove(addr);
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Cuts `node` off from every other member.
    pub fn isolate(&self, node: NodeId, all: &[NodeId]) {
        let mut state = self.lock();
        for other in all {
            if *other != node {
                state.cut.insert((node.min(*other), node.max(*other)));
            }
        }
    }

    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    fn fate(&self, addr: &str, envelope: &Envelope, timeout: Duration) -> Fate {
        let mut state = self.lock();
        let Some(handle) = state.members.get(addr).cloned() else {
            return Fate::Unreachable;
        };
        // Clients (from 0) are outside the faulty network.
        if envelope.from == 0 {
            return Fate::Deliver {
                handle,
                delay: Duration::ZERO,
                drop_reply: false,
                duplicate: None,
            };
        }
        let to = handle.id();
        let pair = (envelope.from.min(to), envelope.from.max(to));
        if state.cut.contains(&pair) {
            return Fate::Unreachable;
        }
        let faults = state.faults;
        let raft_traffic = matches!(
            envelope.rpc,
            Rpc::AppendEntries(_) | Rpc::Vote(_) | Rpc::InstallSnapshot(_)
        );
        let rng = &mut state.rng;
        if rng.random_bool(faults.drop_request.clamp(0.0, 1.0)) {
            return Fate::DropRequest(timeout.min(Duration::from_millis(50)));
        }
        let max = faults.max_delay.as_micros() as u64;
        let delay = Duration::from_micros(if max == 0 {
            0
        } else {
            rng.random_range(0..max)
        });
        let drop_reply = rng.random_bool(faults.drop_reply.clamp(0.0, 1.0));
        // Proposals are never duplicated: no Raft can tell a resent proposal from a new one.
        let duplicate =
            (raft_traffic && rng.random_bool(faults.duplicate.clamp(0.0, 1.0))).then(|| {
                Duration::from_micros(if max == 0 {
                    0
                } else {
                    rng.random_range(0..max)
                })
            });
        Fate::Deliver {
            handle,
            delay,
            drop_reply,
            duplicate,
        }
    }
}

impl Transport for Router {
    fn call(
        &self,
        addr: &str,
        envelope: Envelope,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Reply, TransportError>> {
        let fate = self.fate(addr, &envelope, timeout);
        let addr = addr.to_string();
        async move {
            match fate {
                Fate::Unreachable => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Err(TransportError::Unreachable(format!(
                        "{addr} is not reachable"
                    )))
                }
                Fate::DropRequest(wait) => {
                    tokio::time::sleep(wait).await;
                    Err(TransportError::TimedOut(wait))
                }
                Fate::Deliver {
                    handle,
                    delay,
                    drop_reply,
                    duplicate,
                } => {
                    if let Some(again) = duplicate {
                        let copy = envelope.clone();
                        let handle = handle.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(again).await;
                            let _ = handle.serve(copy).await;
                        });
                    }
                    tokio::time::sleep(delay).await;
                    let served = tokio::time::timeout(timeout, handle.serve(envelope)).await;
                    match served {
                        Ok(_) if drop_reply => Err(TransportError::TimedOut(timeout)),
                        Ok(reply) => Ok(reply),
                        Err(_) => Err(TransportError::TimedOut(timeout)),
                    }
                }
            }
        }
        .boxed()
    }
}

/// Fast timings for tests on a loaded 2-core machine.
pub fn test_tuning(voters: usize) -> Tuning {
    Tuning {
        heartbeat: Duration::from_millis(50),
        election_timeout: (Duration::from_millis(300), Duration::from_millis(600)),
        request_timeout: Duration::from_secs(3),
        voters,
        snapshot_every: 1_000_000,
        keep_behind_snapshot: 1_000,
        ..Tuning::default()
    }
}

/// A group of in-process members over a [`Router`].
pub struct Cluster {
    pub router: Router,
    pub dir: tempfile::TempDir,
    pub tuning: Tuning,
    pub members: BTreeMap<NodeId, Handle>,
    pub ids: Vec<NodeId>,
}

pub fn addr_of(id: NodeId) -> String {
    format!("member-{id}")
}

impl Cluster {
    /// Starts `n` members (ids 1..=n) as one group of `n` voters.
    pub async fn start(n: u64, seed: u64, tuning: Tuning) -> Cluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut cluster = Cluster {
            router: Router::new(seed),
            dir,
            tuning,
            members: BTreeMap::new(),
            ids: (1..=n).collect(),
        };
        for id in 1..=n {
            cluster.start_member(id).await;
        }
        let members: BTreeMap<NodeId, Member> = cluster
            .members
            .iter()
            .map(|(id, h)| (*id, h.member().clone()))
            .collect();
        cluster.members[&1]
            .bootstrap_with(members)
            .await
            .expect("bootstrap");
        cluster
    }

    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("member-{id}"))
    }

    /// Opens member `id` from its data directory (retrying while the previous instance
    /// still holds the database lock) and attaches it to the router.
    pub async fn start_member(&mut self, id: NodeId) -> Handle {
        let deadline = Instant::now() + Duration::from_secs(10);
        let handle = loop {
            match Handle::open(
                id,
                &self.data_dir(id),
                addr_of(id),
                Arc::new(self.router.clone()),
                self.tuning.clone(),
            )
            .await
            {
                Ok(handle) => break handle,
                Err(err) if Instant::now() < deadline => {
                    eprintln!("member {id} not reopened yet: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("member {id} cannot restart: {err}"),
            }
        };
        self.router.attach(&addr_of(id), handle.clone());
        self.members.insert(id, handle.clone());
        handle
    }

    /// Stops member `id` abruptly (as far as the others can tell) and releases its disk.
    pub async fn kill(&mut self, id: NodeId) {
        self.router.detach(&addr_of(id));
        if let Some(handle) = self.members.remove(&id) {
            let _ = handle.shutdown().await;
        }
    }

    pub fn any(&self) -> Handle {
        self.members
            .values()
            .next()
            .expect("a running member")
            .clone()
    }

    /// Waits until the running members agree on one leader and returns its id.
    pub async fn leader(&self, within: Duration) -> NodeId {
        let deadline = Instant::now() + within;
        loop {
            let leaders: BTreeSet<Option<NodeId>> =
                self.members.values().map(|h| h.status().leader).collect();
            if leaders.len() == 1
                && let Some(Some(leader)) = leaders.into_iter().next()
                && self.members.contains_key(&leader)
                && self.members[&leader].status().role == "Leader"
            {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every running member has applied everything the leader has.
    pub async fn converge(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let applied: BTreeSet<Option<u64>> =
                self.members.values().map(|h| h.status().applied).collect();
            let last: BTreeSet<Option<u64>> = self
                .members
                .values()
                .map(|h| h.status().last_log_index)
                .collect();
            if applied.len() == 1 && last.len() == 1 && applied == last {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "members did not converge within {within:?}: applied {applied:?}, last log {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every running member's encoded state is the same bytes; returns the decoded state.
    pub fn assert_identical_states(&self) -> State {
        let mut states = self.members.iter().map(|(id, h)| (*id, h.local_state()));
        let (first_id, (first_applied, first)) = states.next().expect("a running member");
        for (id, (applied, bytes)) in states {
            assert_eq!(
                (applied, bytes.len()),
                (first_applied, first.len()),
                "member {id} and member {first_id} differ in applied index or state size"
            );
            assert!(
                bytes == first,
                "member {id} and member {first_id} have different states"
            );
        }
        State::decode(&first).expect("decodable state")
    }

    pub async fn shutdown(self) {
        for handle in self.members.values() {
            let _ = handle.shutdown().await;
        }
    }
}

/// A command whose every application is visible as one `SettingChanged` event with `token`.
pub fn token_command(token: &str) -> Command {
    Command::new(
        Timestamp(1_700_000_000_000),
        "test",
        Request::SetSetting {
            key: "backupTargetCredentialSecret".to_string(),
            value: token.to_string(),
        },
    )
}

/// All events a member kept from index 0, in order (waits for `count` of them at most 10 s).
pub async fn events_of(handle: &Handle, until_applied: u64) -> Vec<(u64, Event)> {
    let mut stream = Box::pin(handle.subscribe(0));
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let next = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
        match next {
            Ok(Some(Ok(item))) => out.push(item),
            Ok(Some(Err(err))) => panic!("subscription failed: {err}"),
            Ok(None) => break,
            Err(_) => {
                let applied = handle.status().applied.unwrap_or(0);
                if applied >= until_applied || Instant::now() > deadline {
                    break;
                }
            }
        }
    }
    out
}

/// Tokens of every `SettingChanged` event, in order.
pub fn tokens(events: &[(u64, Event)]) -> Vec<String> {
    events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::SettingChanged { value, .. } => Some(value.clone()),
            _ => None,
        })
        .collect()
}

pub fn is_ambiguous(err: &Error) -> bool {
    matches!(err, Error::TimedOut { .. } | Error::QuorumLost { .. })
}
