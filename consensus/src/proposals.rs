//! Group commit of proposals on the leader.
//!
//! Proposals reach the leader one by one (from its own process or forwarded by followers).
//! Each log entry costs a round of replication, so the leader packs the proposals that
//! queue up while earlier entries are being committed into one [`Batch`]: at most
//! `in_flight` entries are being written at a time, and everything that arrived meanwhile
//! (up to `max_batch` commands) goes into the next one. Under light load every entry holds
//! one command and nothing waits; under heavy load entries grow instead of the queue.
//! Each command keeps its own outcome; a batch is never retried, so a command is proposed
//! at most once.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use shorthorn_state::{Command, Event};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::Error;
use crate::membership::Member;
use crate::state_machine::{Batch, Outcome};
use crate::{NodeId, Raft};

type Answer = Result<Vec<Event>, Error>;
type Pending = (Command, oneshot::Sender<Answer>);

/// The leader-side queue of proposals.
pub(crate) struct Proposals {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Proposals {
    /// Starts the batching task over `raft`. It ends when the queue is dropped.
    pub(crate) fn start(raft: Raft, node: NodeId, in_flight: usize, max_batch: usize) -> Self {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, node, pending, in_flight.max(1), max_batch.max(1)));
        Proposals { queue }
    }

    /// Queues `command`; the receiver answers once its batch is applied or refused.
    pub(crate) fn submit(&self, command: Command) -> Option<oneshot::Receiver<Answer>> {
        let (tx, rx) = oneshot::channel();
        self.queue.send((command, tx)).ok()?;
        Some(rx)
    }
}

async fn run(
    raft: Raft,
    node: NodeId,
    mut pending: mpsc::UnboundedReceiver<Pending>,
    in_flight: usize,
    max_batch: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::new();
        if pending.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let (commands, waiters): (Vec<Command>, Vec<oneshot::Sender<Answer>>) =
                batch.into_iter().unzip();
            let count = commands.len();
            let written = raft.client_write(Batch(commands)).await;
            drop(slot);
            match written {
                Ok(response) => {
                    let outcomes = response.data.0;
                    if outcomes.len() != count {
                        let err = Error::Protocol(format!(
                            "a batch of {count} commands gave {} outcomes",
                            outcomes.len()
                        ));
                        for waiter in waiters {
                            let _ = waiter.send(Err(err.clone()));
                        }
                        return;
                    }
                    for (waiter, Outcome(result)) in waiters.into_iter().zip(outcomes) {
                        let _ = waiter.send(result.map_err(|rejection| Error::Rejected {
                            kind: rejection.kind,
                            message: rejection.message,
                        }));
                    }
                }
                Err(err) => {
                    let err = write_error(node, err);
                    for waiter in waiters {
                        let _ = waiter.send(Err(err.clone()));
                    }
                }
            }
        });
    }
}

/// What a failed `client_write` means for the proposer.
fn write_error(node: NodeId, err: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> Error {
    match err {
        // Not appended here (or truncated away): safe to send to the leader.
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            match (forward.leader_id, forward.leader_node) {
                (Some(leader), Some(member)) if leader != node => Error::NotLeader {
                    node,
                    leader,
                    addr: member.addr,
                },
                _ => Error::NoLeader { node },
            }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Error::Membership(e.to_string())
        }
        RaftError::Fatal(fatal) => Error::Stopped {
            node,
            reason: fatal.to_string(),
        },
    }
}
