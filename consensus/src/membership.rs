//! Who is in the group. A [`Member`] is a manager as the Raft membership records it: its
//! address and the incarnation of its disk.
//!
//! The incarnation is a random number drawn the first time a data directory is opened and
//! kept in it forever. Raft's safety rests on a member remembering its vote and its log; a
//! manager that lost its disk and came back under the same node id would break that
//! silently. So every Raft message carries the incarnation the sender expects, and a member
//! with another incarnation refuses it: a wiped manager cannot take part until it has been
//! removed and joined again (and gets its new incarnation recorded).

use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::disk::{Disk, DiskError};

/// A manager as recorded in the Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The address its gRPC service listens on (`host:port`).
    pub addr: String,
    /// The incarnation of its data directory.
    pub incarnation: u64,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (disk {:016x})", self.addr, self.incarnation)
    }
}

/// The identity recorded in a data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: NodeId,
    pub incarnation: u64,
}

/// Why a data directory cannot be used as this node.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the data directory belongs to node {found}, not node {wanted}")]
    WrongNode { found: NodeId, wanted: NodeId },
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("the identity record is corrupt: {0}")]
    Corrupt(String),
}

const IDENTITY: &str = "identity";

/// Reads the identity of the data directory, or records a new one for `node_id` with a fresh
/// incarnation (flushed before it is returned).
pub async fn identity(disk: &Disk, node_id: NodeId) -> Result<Identity, IdentityError> {
    if let Some(bytes) = disk.meta_get(IDENTITY)? {
        let found: Identity = serde_json::from_slice(&bytes)
            .map_err(|err| IdentityError::Corrupt(err.to_string()))?;
        if found.node_id != node_id {
            return Err(IdentityError::WrongNode {
                found: found.node_id,
                wanted: node_id,
            });
        }
        return Ok(found);
    }
    let identity = Identity {
        node_id,
        incarnation: rand::random::<u64>() | 1,
    };
    let bytes =
        serde_json::to_vec(&identity).map_err(|err| IdentityError::Corrupt(err.to_string()))?;
    disk.meta_put(IDENTITY, &bytes)?;
    disk.flush().await?;
    Ok(identity)
}
