//! A client of the managers' gRPC service for processes that are not members (tools,
//! tests, the benchmark): propose through any manager, status, snapshots, removal.

use std::time::{Duration, Instant};

use shorthorn_state::{Command, Event};

use crate::error::Error;
use crate::grpc::GrpcTransport;
use crate::handle::Status;
use crate::network::{Envelope, Reply, Rpc, Transport, TransportError};
use crate::{NodeId, Tuning};

/// Talks to managers by address; cheap to clone.
#[derive(Clone)]
pub struct Client {
    transport: GrpcTransport,
    timeout: Duration,
}

impl Default for Client {
    fn default() -> Self {
        Client::new(Tuning::default().request_timeout)
    }
}

fn unreachable(addr: &str, err: TransportError) -> Error {
    match err {
        TransportError::TimedOut(t) => Error::TimedOut {
            what: format!("an answer from {addr}"),
            millis: t.as_millis() as u64,
        },
        other => Error::Unreachable {
            addr: addr.to_string(),
            reason: other.to_string(),
        },
    }
}

impl Client {
    /// A client whose calls fail after `timeout`.
    pub fn new(timeout: Duration) -> Client {
        Client {
            transport: GrpcTransport::new(),
            timeout,
        }
    }

    /// Sends one request to the manager at `addr`.
    pub async fn call(&self, addr: &str, rpc: Rpc) -> Result<Reply, Error> {
        let envelope = Envelope {
            from: 0,
            to: None,
            rpc,
        };
        self.transport
            .call(addr, envelope, self.timeout)
            .await
            .map_err(|e| unreachable(addr, e))
    }

    /// The status as the manager at `addr` sees it.
    pub async fn status(&self, addr: &str) -> Result<Status, Error> {
        match self.call(addr, Rpc::Status).await? {
            Reply::Status(status) => Ok(status),
            other => Err(Error::Protocol(format!(
                "{addr} answered status with {other:?}"
            ))),
        }
    }

    /// The encoded state as applied at `addr`, with its applied index (not linearizable).
    pub async fn local_state(&self, addr: &str) -> Result<(Option<u64>, Vec<u8>), Error> {
        match self.call(addr, Rpc::LocalState).await? {
            Reply::LocalState { applied, state } => Ok((applied, state)),
            other => Err(Error::Protocol(format!("{addr} answered with {other:?}"))),
        }
    }

    /// Builds a snapshot on the manager at `addr` (and purges its log with `purge`).
    pub async fn snapshot(&self, addr: &str, purge: bool) -> Result<Status, Error> {
        match self.call(addr, Rpc::Snapshot { purge }).await? {
            Reply::Membership(result) => result,
            other => Err(Error::Protocol(format!("{addr} answered with {other:?}"))),
        }
    }

    /// Commits `command` through the managers in `addrs`, following the leader. Retries
    /// only while the command surely was not appended.
    pub async fn propose(&self, addrs: &[String], command: Command) -> Result<Vec<Event>, Error> {
        let deadline = Instant::now() + self.timeout;
        let mut target = addrs.first().cloned().unwrap_or_default();
        let mut next = 0usize;
        loop {
            match self.call(&target, Rpc::Propose(command.clone())).await {
                Ok(Reply::Proposed(Err(Error::NotLeader { addr, .. }))) => target = addr,
                Ok(Reply::Proposed(Err(Error::NoLeader { .. })))
                | Err(Error::Unreachable { .. }) => {
                    next = (next + 1) % addrs.len().max(1);
                    target = addrs.get(next).cloned().unwrap_or_default();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Reply::Proposed(result)) => return result,
                Ok(other) => {
                    return Err(Error::Protocol(format!("{target} answered with {other:?}")));
                }
                Err(err) => return Err(err),
            }
            if Instant::now() >= deadline {
                return Err(Error::TimedOut {
                    what: "a leader to accept the proposal".to_string(),
                    millis: self.timeout.as_millis() as u64,
                });
            }
        }
    }

    /// Takes `node_id` out of the group, asking the manager at `addr` (which follows the
    /// leader).
    pub async fn remove(&self, addr: &str, node_id: NodeId) -> Result<Status, Error> {
        let deadline = Instant::now() + self.timeout;
        let mut target = addr.to_string();
        loop {
            match self.call(&target, Rpc::Remove { node_id }).await? {
                Reply::Membership(Err(Error::NotLeader { addr, .. })) => target = addr,
                Reply::Membership(Err(Error::NoLeader { .. })) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Reply::Membership(result) => return result,
                other => return Err(Error::Protocol(format!("{target} answered with {other:?}"))),
            }
            if Instant::now() >= deadline {
                return Err(Error::NoLeader { node: 0 });
            }
        }
    }
}
