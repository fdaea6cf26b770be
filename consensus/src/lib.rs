//! The replicated log: openraft over sled, carrying `state` commands between the managers.
//!
//! Every manager runs one member of a Raft group. The log carries batches of
//! [`shorthorn_state::Command`]s;
//! the state machine applies them with [`shorthorn_state::apply`] and keeps the events each
//! entry produced by log index, for subscribers. The rest of the process talks to the group
//! through a [`Handle`]: propose, linearizable read, subscribe, status, join and remove.
//!
//! Layout, one idea per module:
//! - [`disk`]: the only module that touches sled; durability rules live there.
//! - [`log_store`]: openraft's log storage (entries, vote, committed, purge).
//! - [`state_machine`]: openraft's state machine (apply, events, snapshots).
//! - [`network`]: the messages between members and the [`Transport`] that carries them.
//! - [`grpc`]: the tonic server and client for [`Transport`] over TCP.
//! - [`membership`]: who is in the group, join and removal, disk incarnations.
//! - [`handle`]: the API for the rest of the process; `proposals` batches on the leader.
//! - [`client`]: calls to managers from processes that are not members.
//! - [`cluster_version`]: the builds of the members and the leader's raising of the cluster
//!   version; [`data_format`]: the data directory's `FORMAT` record.
//!
//! This crate never decides anything about volumes or nodes: that is `state`'s job.

pub mod client;
pub mod cluster_version;
pub mod data_format;
pub mod disk;
pub mod error;
pub mod grpc;
pub mod handle;
pub mod log_store;
pub mod membership;
pub mod network;
mod proposals;
pub mod state_machine;

use std::io::Cursor;

pub use client::Client;
pub use cluster_version::Build;
pub use error::Error;
pub use handle::{Handle, Logged, Status, Tuning};
pub use membership::Member;
pub use network::{Envelope, Reply, Rpc, Transport, TransportError};
pub use state_machine::{Batch, Outcome, Outcomes};

/// A manager's Raft node id: unique in the group and never reused for another disk.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The openraft type configuration of Shorthorn's log.
    pub TypeConfig:
        D = state_machine::Batch,
        R = state_machine::Outcomes,
        NodeId = NodeId,
        Node = membership::Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft instance of this crate's type configuration.
pub type Raft = openraft::Raft<TypeConfig>;
