//! Snapshot routes. The log records what is asked (attaching a detached volume internally
//! for it); the node agent of the attached volume carries it out on the engine and reports
//! back through the log. These handlers propose,
//! then follow the event stream for the outcome, so a client sees the engine's answer
//! (or 202 when the work is still pending after the wait).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use shorthorn_state::{Event, Request, Snapshot, SnapshotState};

use super::{Api, ApiError, Body, get_volume};

/// How long a create or delete waits for the engine before answering 202.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(30);
/// A revert reads and rewrites nothing, but may wait for a slow engine.
const REVERT_WAIT: Duration = Duration::from_secs(60);

impl Api {
    /// Proposes `request`, then follows the log from just before it until `outcome` picks
    /// an event about it, or `within` passes (`Ok(None)`). `settled` is asked first, on the
    /// state after the proposal: a retried request (same Idempotency-Key) whose work was
    /// done before this subscription started is answered at once.
    async fn propose_and_await<T: Send + 'static>(
        &self,
        request: Request,
        within: Duration,
        settled: impl FnOnce(&shorthorn_state::State) -> Option<T> + Send + 'static,
        mut outcome: impl FnMut(&Event) -> Option<T>,
    ) -> Result<Option<T>, ApiError> {
        // Subscribe from this member's applied index: the proposal's events come after it.
        let from = self.log.status().applied.unwrap_or(0) + 1;
        let mut events = Box::pin(self.log.subscribe(from));
        self.propose(request).await?;
        if let Some(done) = self.read(settled).await? {
            return Ok(Some(done));
        }
        let wait = async {
            while let Some(item) = events.next().await {
                if let Ok((_, event)) = item
                    && let Some(found) = outcome(&event)
                {
                    return Some(found);
                }
            }
            None
        };
        Ok(tokio::time::timeout(within, wait).await.ok().flatten())
    }
}

pub(super) async fn list(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<Vec<Snapshot>>, ApiError> {
    let Json(volume) = get_volume(State(api), Path(name)).await?;
    Ok(Json(volume.snapshots.into_values().collect()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    name: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

enum Outcome {
    Done,
    Failed(String),
}

fn about(volume: &str, name: &str, v: &str, n: &str) -> bool {
    volume == v && name == n
}

/// 201 with the ready snapshot; 409 when the engine failed it; 202 while still pending.
pub(super) async fn create(
    State(api): State<Api>,
    Path(volume): Path<String>,
    Body(body): Body<CreateBody>,
) -> Result<Response, ApiError> {
    let name = body.name;
    let request = Request::CreateSnapshot {
        volume: volume.clone(),
        name: name.clone(),
        labels: body.labels,
    };
    let (v, n) = (volume.clone(), name.clone());
    let taken = move |s: &shorthorn_state::State| {
        let snapshot = s.volumes.get(&v)?.snapshots.get(&n)?;
        (snapshot.state == SnapshotState::Ready).then_some(Outcome::Done)
    };
    let outcome = api
        .propose_and_await(request, SNAPSHOT_WAIT, taken, |event| match event {
            Event::SnapshotTaken { volume: v, name: n } if about(&volume, &name, v, n) => {
                Some(Outcome::Done)
            }
            Event::SnapshotFailed {
                volume: v,
                name: n,
                reason,
            } if about(&volume, &name, v, n) => Some(Outcome::Failed(reason.clone())),
            Event::VolumeDetached { name: v } if v == &volume => Some(Outcome::Failed(
                "the volume was detached before its engine took the snapshot".into(),
            )),
            _ => None,
        })
        .await?;
    if let Some(Outcome::Failed(reason)) = outcome {
        return Err(ApiError::Failed(format!(
            "snapshot \"{volume}/{name}\" was not taken: {reason}"
        )));
    }
    let Json(current) = get_volume(State(api), Path(volume.clone())).await?;
    let snapshot = current.snapshots.get(&name).cloned().ok_or_else(|| {
        ApiError::NotFound(format!("snapshot \"{volume}/{name}\" is gone already"))
    })?;
    let status = match snapshot.state {
        SnapshotState::Pending => StatusCode::ACCEPTED,
        _ => StatusCode::CREATED,
    };
    Ok((status, Json(snapshot)).into_response())
}

/// 204 once merged away; 202 while it waits for an engine (a detached volume is attached
/// internally for it; one that cannot be now merges it at its next attach).
pub(super) async fn delete(
    State(api): State<Api>,
    Path((volume, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    // A detached volume is attached internally for the merge: wait for it as well.
    let within = SNAPSHOT_WAIT;
    let request = Request::DeleteSnapshot {
        volume: volume.clone(),
        name: name.clone(),
    };
    let (v, n) = (volume.clone(), name.clone());
    let gone = move |s: &shorthorn_state::State| {
        let volume = s.volumes.get(&v)?;
        (!volume.snapshots.contains_key(&n)).then_some(())
    };
    let merged = api
        .propose_and_await(request, within, gone, |event| match event {
            Event::SnapshotDeleted { volume: v, name: n } if about(&volume, &name, v, n) => {
                Some(())
            }
            _ => None,
        })
        .await?;
    Ok(match merged {
        Some(()) => StatusCode::NO_CONTENT,
        None => StatusCode::ACCEPTED,
    })
}

/// 200 with the volume once its engine reverted; 409 with the engine's reason when it
/// refused (e.g. a frontend client is connected); 202 while still pending.
pub(super) async fn revert(
    State(api): State<Api>,
    Path((volume, name)): Path<(String, String)>,
    Body(_): Body<serde_json::Map<String, serde_json::Value>>,
) -> Result<Response, ApiError> {
    let request = Request::RevertSnapshot {
        volume: volume.clone(),
        name: name.clone(),
    };
    // The state cannot tell a finished revert from a failed one: follow the events.
    let outcome = api
        .propose_and_await(
            request,
            REVERT_WAIT,
            |_| None,
            |event| match event {
                Event::SnapshotReverted {
                    volume: v, name: n, ..
                } if about(&volume, &name, v, n) => Some(Outcome::Done),
                Event::RevertFailed {
                    volume: v,
                    name: n,
                    reason,
                } if about(&volume, &name, v, n) => Some(Outcome::Failed(reason.clone())),
                Event::VolumeDetached { name: v } if v == &volume => Some(Outcome::Failed(
                    "the volume was detached before its engine reverted it".into(),
                )),
                _ => None,
            },
        )
        .await?;
    if let Some(Outcome::Failed(reason)) = outcome {
        return Err(ApiError::Failed(format!(
            "volume \"{volume}\" was not reverted to snapshot \"{name}\": {reason}"
        )));
    }
    let status = if outcome.is_some() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let Json(current) = get_volume(State(api), Path(volume)).await?;
    Ok((status, Json(current)).into_response())
}
