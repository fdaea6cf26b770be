//! Why a command was refused. A rejection is a value: it travels back to the proposer
//! through the log and becomes an API error (4xx) or a CLI message.

use serde::{Deserialize, Serialize};

/// The class of a rejection; the REST API maps each to one HTTP status.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum RejectionKind {
    /// The command itself is malformed: a bad name, size, count or setting value (400).
    InvalidArgument,
    /// Something the command names does not exist (404).
    NotFound,
    /// The thing the command would create exists already (409).
    AlreadyExists,
    /// The command contradicts the current state, e.g. attaching an attached volume (409).
    Conflict,
    /// The state does not allow it yet, e.g. deleting an attached volume (412).
    PreconditionFailed,
}

/// A refused command: its kind and a message a user can act on.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    thiserror::Error,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[error("{message}")]
pub struct Rejection {
    pub kind: RejectionKind,
    pub message: String,
}

impl Rejection {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(RejectionKind::InvalidArgument, message)
    }
    pub fn not_found(what: &str, name: &str) -> Self {
        Self::new(
            RejectionKind::NotFound,
            format!("{what} \"{name}\" not found"),
        )
    }
    pub fn already_exists(what: &str, name: &str) -> Self {
        Self::new(
            RejectionKind::AlreadyExists,
            format!("{what} \"{name}\" already exists"),
        )
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(RejectionKind::Conflict, message)
    }
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(RejectionKind::PreconditionFailed, message)
    }
    fn new(kind: RejectionKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}
