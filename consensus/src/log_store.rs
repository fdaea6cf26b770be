//! openraft's log storage over [`Disk`]: entries, the vote, the committed log id and the
//! purge point. An append or a vote is reported to openraft only after it is flushed.
//!
//! Group commit: `append` writes the entries and hands openraft's completion callback to a
//! flusher task, which flushes once for every callback that queued up meanwhile and then
//! completes them in order. openraft keeps appending while a flush runs, so one flush
//! covers many entries under load; nothing is reported durable before its flush returned.
//!
//! Purging the log also trims the events of the purged entries (they are covered by the
//! snapshot the purge follows), see [`crate::state_machine`].

// openraft's `StorageError` is large; its size is openraft's choice, not ours.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};

use tokio::sync::mpsc;

use crate::disk::Disk;
use crate::{NodeId, TypeConfig};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";

/// The Raft log of one member. Cloning gives another reader of the same log.
#[derive(Clone)]
pub struct LogStore {
    disk: Disk,
    /// Index of the last committed entry plus one (0 = nothing committed), for status.
    committed: Arc<AtomicU64>,
    flusher: mpsc::UnboundedSender<LogFlushed<TypeConfig>>,
}

/// Flushes for every batch of appends that queued up, then reports them durable in order.
async fn run_flusher(disk: Disk, mut pending: mpsc::UnboundedReceiver<LogFlushed<TypeConfig>>) {
    let mut batch = Vec::new();
    while pending.recv_many(&mut batch, 4096).await > 0 {
        let flushed = disk.flush().await.map_err(|e| e.to_string());
        for callback in batch.drain(..) {
            callback.log_io_completed(flushed.clone().map_err(std::io::Error::other));
        }
    }
}

impl LogStore {
    /// A log store over `disk`; must be called inside a tokio runtime (it starts the
    /// flusher task, which ends when the last clone of the store is dropped).
    pub fn new(disk: Disk) -> LogStore {
        let (flusher, pending) = mpsc::unbounded_channel();
        tokio::spawn(run_flusher(disk.clone(), pending));
        LogStore {
            disk,
            committed: Arc::new(AtomicU64::new(0)),
            flusher,
        }
    }

    /// A shared view of the committed index this store last saved (None before any).
    pub fn committed_view(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StorageError<NodeId>> {
        let Some(bytes) = self
            .disk
            .meta_get(name)
            .map_err(|e| StorageIOError::read(&e))?
        else {
            return Ok(None);
        };
        let value = serde_json::from_slice(&bytes).map_err(|e| StorageIOError::read(&e))?;
        Ok(Some(value))
    }

    fn write_meta<T: serde::Serialize>(
        &self,
        name: &str,
        value: &T,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(value).map_err(|e| StorageIOError::write(&e))?;
        self.disk
            .meta_put(name, &bytes)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }
}

fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, StorageError<NodeId>> {
    serde_json::from_slice(bytes).map_err(|e| {
        let err = std::io::Error::other(undecodable_entry(bytes, &e));
        StorageIOError::read_logs(&err).into()
    })
}

/// Why a log entry (its JSON in `bytes`) does not decode, in words: its log index, and
/// whether a newer Shorthorn wrote it (a command or event this build does not know). Older
/// entries always decode: new fields have serde defaults and no command type refuses
/// unknown fields, so only a newer build's entries end here.
pub fn undecodable_entry(bytes: &[u8], err: &serde_json::Error) -> String {
    let index = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.pointer("/log_id/index").and_then(|i| i.as_u64()));
    let at = index.map_or_else(|| "a log entry".to_string(), |i| format!("log entry {i}"));
    explain(&at, err)
}

/// [`undecodable_entry`] for a message from another member: names the first entry it
/// carries that does not decode.
pub fn undecodable_message(bytes: &[u8], err: &serde_json::Error) -> String {
    let value = serde_json::from_slice::<serde_json::Value>(bytes).ok();
    let entries = value
        .as_ref()
        .and_then(|v| v.pointer("/rpc/AppendEntries/entries"))
        .and_then(|v| v.as_array());
    for entry in entries.into_iter().flatten() {
        if let Err(entry_err) = serde_json::from_value::<Entry<TypeConfig>>(entry.clone()) {
            let bytes = serde_json::to_vec(entry).unwrap_or_default();
            return format!(
                "a message from another manager: {}",
                undecodable_entry(&bytes, &entry_err)
            );
        }
    }
    explain("a message from another manager", err)
}

fn explain(at: &str, err: &serde_json::Error) -> String {
    let build = crate::Build::this();
    let text = err.to_string();
    if text.contains("unknown variant") {
        format!(
            "{at} was written by a newer Shorthorn: it holds a command this build (Shorthorn {}, \
             cluster versions up to {}) does not know ({text}); run a build that supports the \
             cluster's version",
            build.version, build.cluster_version
        )
    } else {
        format!("{at} does not decode (Shorthorn {}): {text}", build.version)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        let rows = self
            .disk
            .log_range(start, end)
            .map_err(|e| StorageIOError::read_logs(&e))?;
        rows.iter().map(|(_, bytes)| decode_entry(bytes)).collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.read_meta(PURGED)?;
        let last = self
            .disk
            .log_last()
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let last_log_id = match last {
            Some(bytes) => Some(decode_entry(&bytes)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_meta(VOTE, vote)?;
        self.disk
            .flush()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(VOTE)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not flushed: a lost committed id only makes a restarted member re-learn it from the
        // leader; it is flushed with the next append or vote anyway.
        self.write_meta(COMMITTED, &committed)?;
        if let Some(id) = committed {
            self.committed.store(id.index + 1, Ordering::Release);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let committed: Option<Option<LogId<NodeId>>> = self.read_meta(COMMITTED)?;
        let committed = committed.flatten();
        if let Some(id) = committed {
            self.committed.store(id.index + 1, Ordering::Release);
        }
        Ok(committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            rows.push((entry.log_id.index, bytes));
        }
        self.disk
            .log_put(rows)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // Reported durable only by the flusher, after a flush that started after this write:
        // openraft counts this member's copy towards a commit only then.
        if let Err(unsent) = self.flusher.send(callback) {
            let flushed = self.disk.flush().await;
            unsent
                .0
                .log_io_completed(flushed.map_err(std::io::Error::other));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.disk
            .log_remove_from(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.disk
            .flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // The purge point is written first: a crash in between leaves entries that are
        // simply ignored behind it.
        self.write_meta(PURGED, &log_id)?;
        self.disk
            .flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.disk
            .log_remove_upto(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        crate::state_machine::trim_events(&self.disk, log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry whose command a newer build added, as it would sit in the log.
    const NEWER_ENTRY: &str = r#"{"log_id":{"leader_id":{"term":3,"node_id":1},"index":42},
        "payload":{"Normal":[{"at":5,"proposer":"test","request":{"type":"upgradeTheMoon","moon":1}}]}}"#;

    #[test]
    fn an_entry_of_a_newer_build_is_named_by_index_and_the_newer_writer() {
        let err = decode_entry(NEWER_ENTRY.as_bytes()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(
                "log entry 42 was written by a newer Shorthorn: it holds a command this \
                 build (Shorthorn "
            ) && text.contains("does not know (unknown variant `upgradeTheMoon`"),
            "{text}"
        );
    }

    #[test]
    fn a_message_carrying_such_an_entry_names_it_too() {
        let message = format!(
            r#"{{"from":1,"to":[2,7],"rpc":{{"AppendEntries":{{"vote":{{"leader_id":{{"term":3,"node_id":1}},"committed":true}},
            "prev_log_id":null,"leader_commit":null,"entries":[{NEWER_ENTRY}]}}}}}}"#
        );
        let err = serde_json::from_str::<crate::Envelope>(&message).unwrap_err();
        let text = undecodable_message(message.as_bytes(), &err);
        assert!(
            text.starts_with(
                "a message from another manager: log entry 42 was written by a newer Shorthorn"
            ),
            "{text}"
        );
    }

    #[test]
    fn an_entry_of_the_previous_release_still_decodes() {
        // A command of commit 8983096, without the fields added since.
        let old = r#"{"log_id":{"leader_id":{"term":1,"node_id":1},"index":7},
            "payload":{"Normal":[{"at":5,"proposer":"test","request":{"type":"createVolume","name":"db","size":1073741824}}]}}"#;
        decode_entry(old.as_bytes()).expect("an old entry decodes");
    }
}
