//! The driver's view of the managers' REST API: a blocking JSON client (the binary's, with
//! its retries across managers and idempotency keys) behind a trait, and the mapping of its
//! failures onto gRPC codes.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tonic::{Code, Status};

/// One failed call to the managers.
#[derive(Debug, Clone)]
pub struct ApiFailure {
    /// The HTTP status of a definite answer; `None` when no manager answered.
    pub status: Option<u16>,
    pub message: String,
}

/// The managers' REST API as the driver uses it. Calls block; the driver runs them off the
/// async runtime.
pub trait ManagerApi: Send + Sync + 'static {
    /// `method` is GET, POST, PUT or DELETE; `path` starts with `/v1/`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, ApiFailure>;
}

impl ApiFailure {
    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
    }

    /// The gRPC status for this failure, prefixed with what the driver was doing.
    pub fn to_status(&self, doing: &str) -> Status {
        let code = match self.status {
            None => Code::Unavailable,
            Some(400) => Code::InvalidArgument,
            Some(404) => Code::NotFound,
            Some(409) => Code::FailedPrecondition,
            Some(412) => Code::FailedPrecondition,
            Some(401) | Some(403) => Code::Unauthenticated,
            Some(503) | Some(504) => Code::Unavailable,
            Some(_) => Code::Internal,
        };
        Status::new(code, format!("{doing}: {}", self.message))
    }
}

/// Runs one blocking API call on the blocking pool and decodes its answer.
pub async fn call<T: DeserializeOwned>(
    api: &Arc<dyn ManagerApi>,
    method: &'static str,
    path: String,
    body: Option<Value>,
) -> Result<T, ApiFailure> {
    let api = api.clone();
    let value = tokio::task::spawn_blocking(move || api.call(method, &path, body))
        .await
        .map_err(|e| ApiFailure {
            status: None,
            message: format!("the API call did not finish: {e}"),
        })??;
    serde_json::from_value(value).map_err(|e| ApiFailure {
        status: Some(500),
        message: format!("the manager's answer could not be read: {e}"),
    })
}

/// Percent-encodes a path segment (names are DNS labels, but ids come from clients).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
