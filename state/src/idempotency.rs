//! Request ids: a retried command is applied at most once, and the retry learns the first
//! outcome.
//!
//! A proposer whose reply was lost (its manager was killed, the request timed out) cannot
//! tell whether the command was committed. It sends the command again under the same
//! request id ([`Command::id`]); [`crate::apply`] finds the id among the recently applied
//! ones and answers with the first outcome instead of deciding again: a first success is
//! `Ok` with no new events (the caller reads the current state), a first rejection is the
//! same rejection.
//!
//! The record is kept by `apply`, not by events: [`crate::evolve`] never touches it and no
//! event mentions it. It is part of the [`State`] and of its encoding, so every member, and
//! a member restored from a snapshot, answers a retry the same way.
//!
//! Records expire by command time, never by a clock: a command with an id first drops every
//! record more than [`REQUEST_ID_RETENTION_SECS`] older than its own `at`; past
//! [`REQUEST_ID_CAPACITY`] records the oldest go first. A retry later than that is decided
//! again as a new command.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{Command, Event, Rejection, State, Timestamp};

/// The longest request id, in bytes.
pub const REQUEST_ID_MAX_LEN: usize = 64;
/// How long an applied request id is remembered, in seconds of command time.
pub const REQUEST_ID_RETENTION_SECS: u64 = 15 * 60;
/// The most request ids remembered at once; the oldest are forgotten first.
pub const REQUEST_ID_CAPACITY: usize = 100_000;

/// The request ids applied recently, with their outcomes.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct RecentRequests {
    by_id: BTreeMap<String, AppliedRequest>,
    /// The same records as (command time in ms, id) in time order, for expiry.
    by_time: BTreeSet<(u64, String)>,
}

/// When a request id was first applied and what came of it.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct AppliedRequest {
    /// The `at` of the first command with the id.
    pub at: Timestamp,
    /// `None` when it was accepted, else its rejection.
    pub rejection: Option<Rejection>,
}

impl RecentRequests {
    /// The first outcome of request `id`, while it is remembered.
    pub fn get(&self, id: &str) -> Option<&AppliedRequest> {
        self.by_id.get(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Forgets every request applied more than the retention before `now`.
    fn expire(&mut self, now: Timestamp) {
        let cutoff = now.0.saturating_sub(REQUEST_ID_RETENTION_SECS * 1000);
        while let Some((at, _)) = self.by_time.first()
            && *at < cutoff
        {
            self.forget_oldest();
        }
    }

    fn record(&mut self, id: &str, at: Timestamp, rejection: Option<Rejection>) {
        self.by_id
            .insert(id.to_string(), AppliedRequest { at, rejection });
        self.by_time.insert((at.0, id.to_string()));
        while self.by_id.len() > REQUEST_ID_CAPACITY {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, id)) = self.by_time.pop_first() {
            self.by_id.remove(&id);
        }
    }
}

/// Refuses a request id that is empty, longer than [`REQUEST_ID_MAX_LEN`] bytes or not
/// printable ASCII.
pub fn check_request_id(id: &str) -> Result<(), Rejection> {
    if id.is_empty() || id.len() > REQUEST_ID_MAX_LEN {
        return Err(Rejection::invalid(format!(
            "request id must be 1 to {REQUEST_ID_MAX_LEN} characters long, not {}",
            id.len()
        )));
    }
    if !id.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(Rejection::invalid(
            "request id must be printable ASCII".to_string(),
        ));
    }
    Ok(())
}

/// Applies `command` with `apply_new` unless its request id was applied recently, and then
/// answers with the first outcome. A command without an id is always applied.
pub(crate) fn apply_at_most_once(
    state: &mut State,
    command: &Command,
    apply_new: impl FnOnce(&mut State, &Command) -> Result<Vec<Event>, Rejection>,
) -> Result<Vec<Event>, Rejection> {
    let Some(id) = &command.id else {
        return apply_new(state, command);
    };
    check_request_id(id)?;
    state.requests.expire(command.at);
    if let Some(first) = state.requests.get(id) {
        return match &first.rejection {
            None => Ok(Vec::new()),
            Some(rejection) => Err(rejection.clone()),
        };
    }
    let result = apply_new(state, command);
    state
        .requests
        .record(id, command.at, result.as_ref().err().cloned());
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{Cluster, GIB};
    use crate::{RejectionKind, Request, VolumeSpec, apply};

    fn create(name: &str) -> Request {
        Request::CreateVolume(VolumeSpec {
            name: name.into(),
            size: GIB,
            number_of_replicas: Some(1),
            ..Default::default()
        })
    }

    fn delete(name: &str) -> Request {
        Request::DeleteVolume { name: name.into() }
    }

    /// Applies `request` under request id `id`, `seconds` after the previous command.
    fn run(
        cluster: &mut Cluster,
        seconds: u64,
        id: &str,
        request: Request,
    ) -> Result<Vec<Event>, Rejection> {
        cluster.clock += seconds * 1000;
        let command = Command::new(Timestamp(cluster.clock), "test", request).with_id(id);
        apply(&mut cluster.state, &command)
    }

    #[test]
    fn a_retried_create_is_applied_once_and_succeeds_again() {
        let mut cluster = Cluster::new();
        cluster.node("n1", "", 100);
        let first = run(&mut cluster, 1, "req-1", create("db")).expect("created");
        assert!(
            first
                .iter()
                .any(|e| matches!(e, Event::VolumeCreated { .. }))
        );
        let after_first = cluster.state.clone();
        let retry = run(&mut cluster, 5, "req-1", create("db")).expect("the first success");
        assert!(retry.is_empty(), "a retry produced events: {retry:?}");
        assert_eq!(cluster.state, after_first, "a retry changed the state");
        // Another request for the same thing is a new command, and is refused.
        let other = run(&mut cluster, 1, "req-2", create("db")).expect_err("exists");
        assert_eq!(other.kind, RejectionKind::AlreadyExists);
        // So is one without a request id.
        cluster.rejected(create("db"), RejectionKind::AlreadyExists);
    }

    #[test]
    fn a_retry_after_a_rejection_is_rejected_the_same_way() {
        let mut cluster = Cluster::new();
        cluster.node("n1", "", 100);
        let first = run(&mut cluster, 1, "req-1", delete("db")).expect_err("no such volume");
        assert_eq!(first.kind, RejectionKind::NotFound);
        cluster.ok(create("db"));
        // The volume could be deleted now, but the request already failed.
        let retry = run(&mut cluster, 1, "req-1", delete("db")).expect_err("the first rejection");
        assert_eq!(retry, first);
        assert_ne!(
            cluster.state.volumes["db"].state,
            crate::VolumeState::Deleting
        );
        run(&mut cluster, 1, "req-2", delete("db")).expect("a new request is decided");
    }

    #[test]
    fn request_ids_expire_by_command_time() {
        let mut cluster = Cluster::new();
        cluster.node("n1", "", 100);
        run(&mut cluster, 1, "req-1", create("db")).expect("created");
        let window = REQUEST_ID_RETENTION_SECS;
        assert!(
            run(&mut cluster, window, "req-1", create("db"))
                .expect("still remembered")
                .is_empty()
        );
        // A command without an id forgets nothing.
        cluster.clock += 10_000;
        cluster.ok(Request::Heartbeat { node: "n1".into() });
        assert!(cluster.state.requests.get("req-1").is_some());
        // The next command with an id, past the window, drops the record: the retry is new.
        let late = run(&mut cluster, 1, "req-1", create("db")).expect_err("decided again");
        assert_eq!(late.kind, RejectionKind::AlreadyExists);
        assert_eq!(
            cluster.state.requests.len(),
            1,
            "only the new record is kept"
        );
        assert_eq!(
            cluster.state.requests.get("req-1").map(|r| r.at),
            Some(Timestamp(cluster.clock))
        );
    }

    #[test]
    fn the_oldest_request_ids_go_first_past_the_capacity() {
        let mut requests = RecentRequests::default();
        for i in 0..REQUEST_ID_CAPACITY + 2 {
            requests.record(&format!("r{i}"), Timestamp(1_000 + i as u64), None);
        }
        assert_eq!(requests.len(), REQUEST_ID_CAPACITY);
        assert!(requests.get("r0").is_none() && requests.get("r1").is_none());
        assert!(requests.get("r2").is_some());
        assert_eq!(requests.by_time.len(), REQUEST_ID_CAPACITY);
    }

    #[test]
    fn bad_request_ids_are_refused_and_not_recorded() {
        let mut cluster = Cluster::new();
        cluster.node("n1", "", 100);
        let before = cluster.state.encode();
        for id in ["", &"x".repeat(REQUEST_ID_MAX_LEN + 1), "tab\there", "é"] {
            let refused = run(&mut cluster, 1, id, create("db")).expect_err(id);
            assert_eq!(refused.kind, RejectionKind::InvalidArgument, "{id:?}");
        }
        assert_eq!(cluster.state.encode(), before);
        run(
            &mut cluster,
            1,
            &"x".repeat(REQUEST_ID_MAX_LEN),
            create("db"),
        )
        .expect("64 is fine");
    }

    #[test]
    fn commands_without_a_request_id_read_and_write_as_before() {
        let old = r#"{"at":5,"proposer":"m1","request":{"type":"deleteVolume","name":"db"}}"#;
        let command: Command = serde_json::from_str(old).expect("an old command decodes");
        assert_eq!(command.id, None);
        assert_eq!(serde_json::to_string(&command).expect("encodes"), old);
        let with_id = serde_json::to_value(command.with_id("k")).expect("encodes");
        assert_eq!(with_id["id"], "k");
    }

    #[test]
    fn replaying_a_log_with_retries_gives_identical_states() {
        // Retries, rejections and expiry happen the same way on every replay, and the
        // record survives the snapshot encoding.
        let mut log = Vec::new();
        let mut at = 1_000_000;
        let mut push = |seconds: u64, id: Option<&str>, request: Request| {
            at += seconds * 1000;
            let command = Command::new(Timestamp(at), "test", request);
            log.push(match id {
                Some(id) => command.with_id(id),
                None => command,
            });
        };
        push(1, Some("a"), delete("db"));
        push(
            1,
            None,
            Request::RegisterNode(crate::NodeSpec {
                id: "n1".into(),
                address: "n1:9500".into(),
                disks: vec![crate::testkit::disk("d1", 100)],
                ..Default::default()
            }),
        );
        push(1, Some("b"), create("db"));
        push(1, Some("a"), delete("db"));
        push(1, Some("b"), create("db"));
        push(1, Some("c"), create("db"));
        push(REQUEST_ID_RETENTION_SECS, Some("d"), create("other"));
        push(1, Some("b"), create("db"));
        let replay = || {
            let mut state = State::default();
            let outcomes: Vec<_> = log.iter().map(|c| apply(&mut state, c)).collect();
            (state, outcomes)
        };
        let (state, outcomes) = replay();
        let (again, outcomes_again) = replay();
        assert_eq!(outcomes, outcomes_again);
        assert_eq!(state.encode(), again.encode());
        assert_eq!(State::decode(&state.encode()).expect("decodes"), state);
        let kinds: Vec<_> = outcomes
            .iter()
            .map(|o| o.as_ref().map(|e| e.len()).map_err(|r| r.kind))
            .collect();
        assert_eq!(kinds[0], Err(RejectionKind::NotFound));
        assert!(matches!(kinds[2], Ok(n) if n > 0), "{kinds:?}");
        assert_eq!(kinds[3], kinds[0], "a retry of a rejection");
        assert_eq!(kinds[4], Ok(0), "a retry of a success");
        assert_eq!(kinds[5], Err(RejectionKind::AlreadyExists));
        assert_eq!(kinds[7], Err(RejectionKind::AlreadyExists), "b expired");
        let json = serde_json::to_string(&log).expect("serializes");
        let back: Vec<Command> = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, log);
    }
}
