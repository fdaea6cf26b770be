//! The one error type of the consensus layer. Every variant says what happened in words a
//! user can act on, and crosses the wire between members unchanged (it is serde-encoded),
//! so a proposal forwarded to the leader fails with the leader's own words.

use serde::{Deserialize, Serialize};
use shorthorn_state::RejectionKind;

use crate::NodeId;

/// What went wrong with a request to the replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Error {
    /// This member is not the leader and does not know one yet (an election is running or
    /// the member cannot reach a quorum).
    #[error("member {node} is not the leader and no leader is known yet")]
    NoLeader { node: NodeId },
    /// This member is not the leader; the request must go to `leader`. Only returned by the
    /// member-to-member calls; [`crate::Handle`] follows it by itself.
    #[error("member {node} is not the leader; the leader is member {leader} at {addr}")]
    NotLeader {
        node: NodeId,
        leader: NodeId,
        addr: String,
    },
    /// The leader could not hear from a majority of the voters.
    #[error("quorum lost: leader {node} has not heard from a majority of the voters")]
    QuorumLost { node: NodeId },
    /// No answer in time. For a proposal the command may still be committed later.
    #[error("timed out after {millis} ms waiting for {what}")]
    TimedOut { what: String, millis: u64 },
    /// The state machine refused the command; nothing changed.
    #[error("rejected by the state machine ({kind:?}): {message}")]
    Rejected {
        kind: RejectionKind,
        message: String,
    },
    /// Another member could not be reached.
    #[error("member at {addr} is unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    /// A join was refused because the node id is already a member with another disk.
    #[error(
        "node {node} is already a member of the cluster (at {addr}, disk incarnation {incarnation}); \
         a manager whose data directory was lost must be removed and added again"
    )]
    AlreadyMember {
        node: NodeId,
        addr: String,
        incarnation: u64,
    },
    /// A membership change could not be made.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// Reading or writing the data directory failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The events asked for were trimmed behind a snapshot on this member.
    #[error(
        "events before log index {first_kept} were trimmed behind a snapshot (asked from {from})"
    )]
    EventsTrimmed { from: u64, first_kept: u64 },
    /// The Raft member has stopped (shut down or hit a fatal storage error).
    #[error("the Raft member {node} has stopped: {reason}")]
    Stopped { node: NodeId, reason: String },
    /// The other side sent something this member does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
}
