//! Engine upgrade routes: one volume's upgrade (`/v1/volumes/{name}/engine-upgrade`) and
//! the job that upgrades every volume (`/v1/engine-upgrades`). The log runs the phases and
//! the node agents run the binaries (see `shorthorn_state::UpgradePhase`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use shorthorn_state::{EngineUpgrade, EngineUpgradeJob, Request};

use super::{Api, ApiError, Body};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct UpgradeBody {
    /// The absolute path of the new shorthorn binary on every node.
    image: String,
}

/// A volume's engine image and its last upgrade.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct VolumeUpgradeView {
    volume: String,
    /// "" = each node's own binary.
    image: String,
    upgrade: Option<EngineUpgrade>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct JobView {
    job: Option<EngineUpgradeJob>,
    /// Every volume with its image and last upgrade.
    volumes: Vec<VolumeUpgradeView>,
}

fn volume_view(state: &shorthorn_state::State, name: &str) -> VolumeUpgradeView {
    VolumeUpgradeView {
        volume: name.to_string(),
        image: state.engine_image(name).to_string(),
        upgrade: state.engine_upgrades.get(name).cloned(),
    }
}

pub(super) async fn get_volume(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<VolumeUpgradeView>, ApiError> {
    let found = api
        .read(move |s| {
            if s.volumes.contains_key(&name) {
                Ok(volume_view(s, &name))
            } else {
                Err(name)
            }
        })
        .await?;
    found
        .map(Json)
        .map_err(|name| ApiError::NotFound(format!("volume \"{name}\" not found")))
}

pub(super) async fn upgrade_volume(
    State(api): State<Api>,
    Path(name): Path<String>,
    Body(body): Body<UpgradeBody>,
) -> Result<(StatusCode, Json<VolumeUpgradeView>), ApiError> {
    api.propose(Request::UpgradeEngine {
        name: name.clone(),
        image: body.image,
    })
    .await?;
    let Json(view) = get_volume(State(api), Path(name)).await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

pub(super) async fn get_job(State(api): State<Api>) -> Result<Json<JobView>, ApiError> {
    Ok(Json(
        api.read(|s| JobView {
            job: s.engine_upgrade_job.clone(),
            volumes: s.volumes.keys().map(|v| volume_view(s, v)).collect(),
        })
        .await?,
    ))
}

pub(super) async fn start_job(
    State(api): State<Api>,
    Body(body): Body<UpgradeBody>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    api.propose(Request::StartEngineUpgradeJob { image: body.image })
        .await?;
    let Json(view) = get_job(State(api)).await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}
