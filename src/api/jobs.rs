//! Recurring job routes: the jobs in the log, with the volumes each applies to now and its
//! next slot. The leader runs them (see `crate::agent::jobs`).

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use shorthorn_state::{JobTask, RecurringJob, RecurringJobSpec, Request, Timestamp};

use super::{Api, ApiError, Body};

/// A job as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct JobView {
    #[serde(flatten)]
    job: RecurringJob,
    /// The first slot not run yet (ms since the epoch, UTC).
    next_slot: Option<Timestamp>,
    /// The volumes it applies to now.
    volumes: Vec<String>,
}

fn view(state: &shorthorn_state::State, job: &RecurringJob) -> JobView {
    JobView {
        job: job.clone(),
        next_slot: job.next_slot(),
        volumes: shorthorn_state::members(state, &job.spec),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct JobBody {
    name: String,
    task: String,
    cron: String,
    #[serde(default = "one")]
    retain: u32,
    #[serde(default = "one")]
    concurrency: u32,
    #[serde(default)]
    groups: BTreeSet<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

impl JobBody {
    fn spec(self) -> Result<RecurringJobSpec, ApiError> {
        let task = JobTask::parse(&self.task).ok_or_else(|| {
            let known: Vec<&str> = JobTask::ALL.iter().map(|t| t.as_str()).collect();
            ApiError::BadRequest(format!(
                "task \"{}\" is unknown; tasks: {}",
                self.task,
                known.join(", ")
            ))
        })?;
        Ok(RecurringJobSpec {
            name: self.name,
            task,
            cron: self.cron,
            retain: self.retain,
            concurrency: self.concurrency,
            groups: self.groups,
            labels: self.labels,
        })
    }
}

pub(super) async fn list(State(api): State<Api>) -> Result<Json<Vec<JobView>>, ApiError> {
    Ok(Json(
        api.read(|s| s.recurring_jobs.values().map(|j| view(s, j)).collect())
            .await?,
    ))
}

pub(super) async fn get(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let found = api
        .read(move |s| s.recurring_jobs.get(&name).map(|j| view(s, j)).ok_or(name))
        .await?;
    found
        .map(Json)
        .map_err(|name| ApiError::NotFound(format!("recurring job \"{name}\" not found")))
}

pub(super) async fn create(
    State(api): State<Api>,
    Body(body): Body<JobBody>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let spec = body.spec()?;
    let name = spec.name.clone();
    api.propose(Request::CreateRecurringJob(spec)).await?;
    let Json(job) = get(State(api), Path(name)).await?;
    Ok((StatusCode::CREATED, Json(job)))
}

pub(super) async fn update(
    State(api): State<Api>,
    Path(name): Path<String>,
    Body(body): Body<JobBody>,
) -> Result<Json<JobView>, ApiError> {
    if body.name != name {
        return Err(ApiError::BadRequest(format!(
            "the body names job \"{}\" but the path names \"{name}\"",
            body.name
        )));
    }
    api.propose(Request::UpdateRecurringJob(body.spec()?))
        .await?;
    get(State(api), Path(name)).await
}

pub(super) async fn delete(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    api.propose(Request::DeleteRecurringJob { name }).await?;
    Ok(StatusCode::NO_CONTENT)
}
