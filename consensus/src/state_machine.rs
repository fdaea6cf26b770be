//! openraft's state machine: applies committed [`Command`]s with [`shorthorn_state::apply`],
//! records the events each entry produced by log index, and builds and installs snapshots
//! of the state in its rkyv encoding ([`State::encode`]).
//!
//! What is on disk: the current snapshot (meta and encoded state, written atomically and
//! flushed) and the events of applied entries. The state itself lives in memory and is
//! rebuilt on start from the snapshot plus the committed log tail, which openraft re-applies
//! (the log store keeps the committed log id). Applying is deterministic, so the rebuilt
//! state and the re-recorded events are the same bytes as before the restart.
//!
//! Events are kept from the "events floor" on: entries covered by an installed snapshot, or
//! purged from the log, have no events here any more.

use std::borrow::Cow;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use shorthorn_state::{Command, Event, Rejection, State};
use tokio::sync::watch;

use crate::disk::{Disk, DiskError};
use crate::error::Error;
use crate::membership::Member;
use crate::{NodeId, TypeConfig};

const SNAPSHOT_META: &str = "snapshot_meta";
const SNAPSHOT_DATA: &str = "snapshot_data";
const EVENTS_FLOOR: &str = "events_floor";

/// (log index, position in its entry, command time in ms if recorded, event).
pub type EventRow = (u64, u32, Option<u64>, Event);

/// An event as the events tree keeps it: with the time of the command that produced it.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredEvent<'a> {
    at: Option<u64>,
    event: Cow<'a, Event>,
}

/// What applying one command gave: the events, or the state machine's rejection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome(pub Result<Vec<Event>, Rejection>);

/// The payload of a log entry: commands proposed together, applied in order. The leader
/// groups proposals that arrive while earlier ones are being committed (see
/// [`crate::handle`]); each command still succeeds or fails on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Command>);

/// What applying one log entry gave: one [`Outcome`] per command of its [`Batch`]; none for
/// entries without commands (blank, membership).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcomes(pub Vec<Outcome>);

struct Applied {
    state: State,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
}

/// The state machine shared between openraft and the [`crate::Handle`].
pub struct Machine {
    disk: Disk,
    applied: RwLock<Applied>,
    /// Index of the last applied entry plus one (0 = nothing applied yet).
    applied_next: watch::Sender<u64>,
    snapshots_built: AtomicU64,
    /// Bytes of the encoded state in the current snapshot plus one (0 = no snapshot).
    snapshot_bytes: AtomicU64,
}

/// Drops the events of entries up to `upto` and raises the events floor past it.
pub fn trim_events(disk: &Disk, upto: u64) -> Result<(), DiskError> {
    let floor = read_floor(disk)?.max(upto + 1);
    disk.meta_put(EVENTS_FLOOR, &floor.to_be_bytes())?;
    disk.events_remove_upto(upto)
}

fn read_floor(disk: &Disk) -> Result<u64, DiskError> {
    Ok(match disk.meta_get(EVENTS_FLOOR)? {
        Some(bytes) => bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0),
        None => 0,
    })
}

fn next_of(log_id: &Option<LogId<NodeId>>) -> u64 {
    log_id.map(|id| id.index + 1).unwrap_or(0)
}

impl Machine {
    /// Opens the state machine from the snapshot in `disk`, if any.
    pub fn open(disk: Disk) -> Result<Arc<Machine>, Error> {
        let storage = |e: DiskError| Error::Storage(e.to_string());
        let mut applied = Applied {
            state: State::default(),
            last_applied: None,
            membership: StoredMembership::default(),
        };
        let mut snapshot_bytes = 0;
        if let Some((meta, data)) = load_snapshot(&disk).map_err(storage)? {
            snapshot_bytes = data.len() as u64 + 1;
            applied.state = State::decode(&data)
                .map_err(|e| Error::Storage(format!("snapshot {}: {e}", meta.snapshot_id)))?;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership;
        }
        let next = next_of(&applied.last_applied);
        Ok(Arc::new(Machine {
            disk,
            applied: RwLock::new(applied),
            applied_next: watch::Sender::new(next),
            snapshots_built: AtomicU64::new(0),
            snapshot_bytes: AtomicU64::new(snapshot_bytes),
        }))
    }

    fn read_lock(&self) -> RwLockReadGuard<'_, Applied> {
        // A poisoned lock means a panic while applying; the data is still the last good
        // state because `apply` leaves the state untouched on rejection.
        self.applied.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_lock(&self) -> RwLockWriteGuard<'_, Applied> {
        self.applied.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state as applied on this member (not necessarily the newest).
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.read_lock().state)
    }

    /// The encoded state and the index of the last entry applied to it (None before any).
    pub fn encoded(&self) -> (Option<u64>, Vec<u8>) {
        let applied = self.read_lock();
        (
            applied.last_applied.map(|id| id.index),
            applied.state.encode(),
        )
    }

    /// Watches the index of the last applied entry plus one.
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.applied_next.subscribe()
    }

    /// Up to `limit` events from `(log index, position in its entry)` on, as
    /// (index, position, command time in ms if recorded, event).
    pub fn events_from(
        &self,
        (from, seq): (u64, u32),
        limit: usize,
    ) -> Result<Vec<EventRow>, Error> {
        let floor = read_floor(&self.disk).map_err(|e| Error::Storage(e.to_string()))?;
        if from < floor {
            return Err(Error::EventsTrimmed {
                from,
                first_kept: floor,
            });
        }
        let rows = self
            .disk
            .events_from(from, seq, limit)
            .map_err(|e| Error::Storage(e.to_string()))?;
        rows.into_iter()
            .map(|(index, seq, bytes)| {
                // Events stored before command times were kept are bare events.
                serde_json::from_slice::<StoredEvent>(&bytes)
                    .map(|s| (s.at, s.event.into_owned()))
                    .or_else(|_| serde_json::from_slice::<Event>(&bytes).map(|e| (None, e)))
                    .map(|(at, event)| (index, seq, at, event))
                    .map_err(|e| Error::Storage(format!("event of entry {index}: {e}")))
            })
            .collect()
    }

    fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, Member>,
        data: &[u8],
    ) -> Result<(), DiskError> {
        let meta_bytes = serde_json::to_vec(meta).map_err(DiskError::corrupt)?;
        self.disk
            .meta_put_many(&[(SNAPSHOT_META, &meta_bytes), (SNAPSHOT_DATA, data)])?;
        self.snapshot_bytes
            .store(data.len() as u64 + 1, Ordering::Relaxed);
        Ok(())
    }

    /// The size of the encoded state in the current snapshot (None before the first).
    pub fn snapshot_bytes(&self) -> Option<u64> {
        self.snapshot_bytes.load(Ordering::Relaxed).checked_sub(1)
    }
}

/// A stored snapshot: its meta and the encoded state.
type StoredSnapshot = (SnapshotMeta<NodeId, Member>, Vec<u8>);

fn load_snapshot(disk: &Disk) -> Result<Option<StoredSnapshot>, DiskError> {
    let (Some(meta), Some(data)) = (disk.meta_get(SNAPSHOT_META)?, disk.meta_get(SNAPSHOT_DATA)?)
    else {
        return Ok(None);
    };
    let meta = serde_json::from_slice(&meta)
        .map_err(|e| DiskError::corrupt(format!("snapshot meta: {e}")))?;
    Ok(Some((meta, data)))
}

/// The state machine as openraft drives it; clones share one [`Machine`].
#[derive(Clone)]
pub struct StateMachineStore {
    machine: Arc<Machine>,
}

impl StateMachineStore {
    pub fn new(machine: Arc<Machine>) -> StateMachineStore {
        StateMachineStore { machine }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (data, last_log_id, membership) = {
            let applied = self.machine.read_lock();
            (
                applied.state.encode(),
                applied.last_applied,
                applied.membership.clone(),
            )
        };
        let seq = self.machine.snapshots_built.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{seq}", id.leader_id.term, id.index),
            None => format!("empty-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership: membership,
            snapshot_id,
        };
        let fail = |e: DiskError| StorageIOError::write_snapshot(Some(meta.signature()), &e);
        self.machine.save_snapshot(&meta, &data).map_err(fail)?;
        self.machine.disk.flush().await.map_err(fail)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), StorageError<NodeId>>
    {
        let applied = self.machine.read_lock();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcomes>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        let mut recorded = Vec::new();
        let next = {
            let mut applied = self.machine.write_lock();
            for entry in entries {
                let log_id = entry.log_id;
                applied.last_applied = Some(log_id);
                match entry.payload {
                    EntryPayload::Blank => outcomes.push(Outcomes(Vec::new())),
                    EntryPayload::Normal(Batch(commands)) => {
                        let mut results = Vec::with_capacity(commands.len());
                        let mut encoded = Vec::new();
                        for command in &commands {
                            let result = shorthorn_state::apply(&mut applied.state, command);
                            if let Ok(events) = &result {
                                for event in events {
                                    let logged = StoredEvent {
                                        at: Some(command.at.0),
                                        event: Cow::Borrowed(event),
                                    };
                                    encoded.push(
                                        serde_json::to_vec(&logged)
                                            .map_err(|e| StorageIOError::apply(log_id, &e))?,
                                    );
                                }
                            }
                            results.push(Outcome(result));
                        }
                        if !encoded.is_empty() {
                            recorded.push((log_id.index, encoded));
                        }
                        outcomes.push(Outcomes(results));
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(log_id), membership);
                        outcomes.push(Outcomes(Vec::new()));
                    }
                }
            }
            next_of(&applied.last_applied)
        };
        if !recorded.is_empty() {
            self.machine
                .disk
                .events_put(recorded)
                .map_err(|e| StorageIOError::write_state_machine(&e))?;
        }
        self.machine.applied_next.send_replace(next);
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let state = State::decode(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let fail = |e: DiskError| StorageIOError::write_snapshot(Some(meta.signature()), &e);
        self.machine.save_snapshot(meta, &data).map_err(fail)?;
        let floor = next_of(&meta.last_log_id);
        self.machine
            .disk
            .meta_put(EVENTS_FLOOR, &floor.to_be_bytes())
            .map_err(fail)?;
        self.machine.disk.events_clear().map_err(fail)?;
        self.machine.disk.flush().await.map_err(fail)?;
        {
            let mut applied = self.machine.write_lock();
            applied.state = state;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
        }
        self.machine.applied_next.send_replace(floor);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let loaded = load_snapshot(&self.machine.disk)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(loaded.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
