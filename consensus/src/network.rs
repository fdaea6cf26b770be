//! The messages between members and the [`Transport`] that carries them.
//!
//! A request is an [`Envelope`] around an [`Rpc`]; the answer is a [`Reply`]. Both are
//! serde types: the gRPC transport ([`crate::grpc`]) sends their JSON inside protobuf
//! frames, and the in-process test transport hands them over directly (and may drop,
//! delay, duplicate or partition them). openraft talks to peers through [`NetworkFactory`],
//! which turns its calls into envelopes.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RPCTypes, RaftNetwork, RaftNetworkFactory};
use serde::{Deserialize, Serialize};
use shorthorn_state::{Command, Event};

use crate::error::Error;
use crate::handle::Status;
use crate::membership::Member;
use crate::{NodeId, TypeConfig};

/// A request from one member (or a client) to a member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender's node id (0 for a client that is not a member).
    pub from: NodeId,
    /// For Raft traffic: the node the sender means to reach, and the disk incarnation it
    /// expects there. A member refuses Raft traffic meant for another node or disk.
    pub to: Option<(NodeId, u64)>,
    pub rpc: Rpc,
}

/// What is asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Rpc {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Commit a command; only the leader accepts it (a forwarded proposal).
    Propose(Command),
    /// Confirm leadership and return the index a linearizable read must wait for.
    ReadIndex,
    /// Add a manager as a learner, then as a voter while there are fewer than configured.
    Join {
        node_id: NodeId,
        member: Member,
        /// The joiner's build; absent from builds before cluster versions.
        #[serde(default)]
        build: Option<crate::cluster_version::Build>,
    },
    /// Take a manager out of the group.
    Remove {
        node_id: NodeId,
    },
    Status,
    /// Build a snapshot now; with `purge`, also purge the log it covers.
    Snapshot {
        purge: bool,
    },
    /// This member's encoded state as applied here (not linearizable; for checks).
    LocalState,
}

impl Rpc {
    /// The gRPC method that carries this request.
    pub fn method(&self) -> &'static str {
        match self {
            Rpc::AppendEntries(_) => "AppendEntries",
            Rpc::Vote(_) => "Vote",
            Rpc::InstallSnapshot(_) => "InstallSnapshot",
            Rpc::Propose(_) => "Propose",
            Rpc::ReadIndex => "ReadIndex",
            Rpc::Join { .. } => "Join",
            Rpc::Remove { .. } => "Remove",
            Rpc::Status => "Status",
            Rpc::Snapshot { .. } => "Snapshot",
            Rpc::LocalState => "LocalState",
        }
    }
}

/// The answer to an [`Rpc`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Proposed(Result<Vec<Event>, Error>),
    ReadIndex(Result<u64, Error>),
    Membership(Result<Status, Error>),
    Status(Status),
    LocalState {
        /// Index of the last applied entry (None before any).
        applied: Option<u64>,
        state: Vec<u8>,
    },
    /// Raft traffic refused: meant for another node id or another disk incarnation.
    Refused(String),
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect: {0}")]
    Unreachable(String),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("bad frame: {0}")]
    Protocol(String),
}

/// Carries envelopes to a member's address and brings back its reply.
pub trait Transport: Send + Sync + 'static {
    fn call(
        &self,
        addr: &str,
        envelope: Envelope,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Reply, TransportError>>;
}

/// openraft's factory of peer clients over a [`Transport`].
pub struct NetworkFactory {
    pub me: NodeId,
    pub transport: Arc<dyn Transport>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            me: self.me,
            target,
            member: node.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// openraft's view of one peer.
pub struct PeerClient {
    me: NodeId,
    target: NodeId,
    member: Member,
    transport: Arc<dyn Transport>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn send(
        &self,
        rpc: Rpc,
        action: RPCTypes,
        option: &RPCOption,
    ) -> Result<Reply, RPCError<NodeId, Member, openraft::error::Infallible>> {
        let envelope = Envelope {
            from: self.me,
            to: Some((self.target, self.member.incarnation)),
            rpc,
        };
        let timeout = option.hard_ttl();
        match self
            .transport
            .call(&self.member.addr, envelope, timeout)
            .await
        {
            Ok(Reply::Refused(reason)) => Err(RPCError::Unreachable(Unreachable::new(
                &Error::Unreachable {
                    addr: self.member.addr.clone(),
                    reason,
                },
            ))),
            Ok(reply) => Ok(reply),
            Err(TransportError::TimedOut(_)) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.me,
                target: self.target,
                timeout,
            })),
            Err(err @ TransportError::Unreachable(_)) => {
                Err(RPCError::Unreachable(Unreachable::new(&err)))
            }
            Err(err @ TransportError::Protocol(_)) => {
                Err(RPCError::Network(NetworkError::new(&err)))
            }
        }
    }

    fn unexpected<E: std::error::Error>(&self, reply: &Reply) -> RPCError<NodeId, Member, E> {
        let err = Error::Protocol(format!(
            "member {} answered with an unexpected {:?}",
            self.target,
            std::mem::discriminant(reply)
        ));
        RPCError::Network(NetworkError::new(&err))
    }
}

fn widen<E: std::error::Error>(
    err: RPCError<NodeId, Member, openraft::error::Infallible>,
) -> RPCError<NodeId, Member, RaftError<NodeId, E>> {
    match err {
        RPCError::Timeout(t) => RPCError::Timeout(t),
        RPCError::Unreachable(u) => RPCError::Unreachable(u),
        RPCError::PayloadTooLarge(p) => RPCError::PayloadTooLarge(p),
        RPCError::Network(n) => RPCError::Network(n),
        RPCError::RemoteError(r) => match r.source {},
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let reply = self
            .send(Rpc::AppendEntries(rpc), RPCTypes::AppendEntries, &option)
            .await
            .map_err(widen)?;
        match reply {
            Reply::AppendEntries(Ok(resp)) => Ok(resp),
            Reply::AppendEntries(Err(err)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, err)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let reply = self
            .send(
                Rpc::InstallSnapshot(rpc),
                RPCTypes::InstallSnapshot,
                &option,
            )
            .await
            .map_err(widen)?;
        match reply {
            Reply::InstallSnapshot(Ok(resp)) => Ok(resp),
            Reply::InstallSnapshot(Err(err)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, err)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let reply = self
            .send(Rpc::Vote(rpc), RPCTypes::Vote, &option)
            .await
            .map_err(widen)?;
        match reply {
            Reply::Vote(Ok(resp)) => Ok(resp),
            Reply::Vote(Err(err)) => Err(RPCError::RemoteError(RemoteError::new(self.target, err))),
            other => Err(self.unexpected(&other)),
        }
    }
}
