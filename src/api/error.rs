//! How failures become HTTP responses: one place maps rejections and log errors to status
//! codes, and every error body is `{"error": kind, "message": text}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use shorthorn_consensus::Error as LogError;
use shorthorn_state::RejectionKind;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Log(#[from] LogError),
    /// The engine (through its node agent) could not do what the log asked.
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Precondition(String),
    /// The backup target failed (unreachable, refused, answered with an error).
    #[error("{0}")]
    Target(String),
}

impl ApiError {
    fn status_and_kind(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalidArgument"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "notFound"),
            ApiError::Failed(_) => (StatusCode::CONFLICT, "failed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Precondition(_) => (StatusCode::PRECONDITION_FAILED, "preconditionFailed"),
            ApiError::Target(_) => (StatusCode::BAD_GATEWAY, "backupTargetFailed"),
            ApiError::Log(err) => match err {
                LogError::Rejected { kind, .. } => match kind {
                    RejectionKind::InvalidArgument => (StatusCode::BAD_REQUEST, "invalidArgument"),
                    RejectionKind::NotFound => (StatusCode::NOT_FOUND, "notFound"),
                    RejectionKind::AlreadyExists => (StatusCode::CONFLICT, "alreadyExists"),
                    RejectionKind::Conflict => (StatusCode::CONFLICT, "conflict"),
                    RejectionKind::PreconditionFailed => {
                        (StatusCode::PRECONDITION_FAILED, "preconditionFailed")
                    }
                },
                LogError::NoLeader { .. }
                | LogError::QuorumLost { .. }
                | LogError::Unreachable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                LogError::TimedOut { .. } => (StatusCode::GATEWAY_TIMEOUT, "timedOut"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
        }
    }

    fn message(&self) -> String {
        match self {
            // The state machine's own words, without the layer's prefix.
            ApiError::Log(LogError::Rejected { message, .. }) => message.clone(),
            other => other.to_string(),
        }
    }
}

impl ApiError {
    /// The error as the body of an error answer says it.
    pub(super) fn as_json(&self) -> serde_json::Value {
        let (_, kind) = self.status_and_kind();
        serde_json::json!({ "error": kind, "message": self.message() })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_kind();
        (status, Json(self.as_json())).into_response()
    }
}
