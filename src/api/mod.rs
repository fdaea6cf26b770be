//! The REST API of a manager (axum, JSON): volumes, nodes, replicas, settings, backups and
//! the backup volumes on the target, the event stream, health checks and the OpenAPI
//! document.
//!
//! Every write becomes one command proposed to the replicated log (from any manager; a
//! follower forwards it to the leader); every read is a linearizable read of the state.
//! A write sent with an `Idempotency-Key` header is applied at most once: a retry with the
//! same key (to any manager, within 15 minutes) gets the first outcome, a success answered
//! from the current state.
//! Every route but `/healthz`, `/readyz`, `/metrics` and the web UI's files (`/`, `/ui/...`,
//! see [`crate::ui`]) needs `Authorization: Bearer <token>`. `/metrics` is open, as Longhorn's is and as Prometheus scrapes by default: it
//! shows names, sizes and rates, never data, tokens or credentials (keep the API port off
//! untrusted networks, as for Longhorn's).
//! Nothing a client sends can crash the manager: bad input is a 4xx with a JSON body
//! `{"error": kind, "message": text}`.

mod backups;
mod engine;
mod error;
mod jobs;
mod nodes;
mod openapi;
mod snapshots;
mod upgrades;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request as HttpRequest, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use shorthorn_consensus::Handle;
use shorthorn_state::{
    Command, DataLocality, DataSource, Event, Replica, Request, Settings, Timestamp, Volume,
    VolumeSpec,
};

pub use error::ApiError;

use crate::credentials::CredentialSource;
use crate::metrics::{LocalProcesses, Metrics};
use crate::size::parse_size;

/// What every handler needs: the log and who this manager is.
#[derive(Clone)]
pub struct Api {
    log: Handle,
    token: Arc<str>,
    /// Name stamped on proposed commands as their proposer.
    proposer: Arc<str>,
    /// The backup target's credentials.
    credentials: CredentialSource,
    /// What `/metrics` reports.
    metrics: Arc<Metrics>,
}

impl Api {
    pub fn new(log: Handle, token: &str, proposer: &str) -> Self {
        Self {
            log: log.clone(),
            token: token.into(),
            proposer: proposer.into(),
            credentials: CredentialSource::default(),
            metrics: Arc::new(Metrics::new(log, "", LocalProcesses::default())),
        }
    }

    /// Serves `metrics` at `/metrics` (by default: the log's figures only, under no node).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Uses `credentials` for the backup target instead of this process's environment.
    pub fn with_credentials(mut self, credentials: CredentialSource) -> Self {
        self.credentials = credentials;
        self
    }

    /// Stamps `request` with this manager's clock and name, and the HTTP request's
    /// `Idempotency-Key` as its request id, and proposes it.
    async fn propose(&self, request: Request) -> Result<Vec<Event>, ApiError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut command = Command::new(Timestamp(now), self.proposer.as_ref(), request);
        // Only the first command a request proposes carries its key: a second one under the
        // same id would be taken for a retry of the first.
        if let Some(key) = IDEMPOTENCY_KEY.try_with(|key| key.take()).ok().flatten() {
            command = command.with_id(key);
        }
        Ok(self.log.propose(command).await?)
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&shorthorn_state::State) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        Ok(self.log.read(f).await?)
    }
}

/// The router with every route, authentication included.
pub fn router(api: Api) -> Router {
    let v1 = Router::new()
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/version", post(raise_cluster_version))
        .route("/v1/version", get(version))
        .route("/v1/volumes", get(list_volumes).post(create_volume))
        .route("/v1/volumes/{name}", get(get_volume).delete(delete_volume))
        .route("/v1/volumes/{name}/attach", post(attach_volume))
        .route("/v1/volumes/{name}/detach", post(detach_volume))
        .route("/v1/volumes/{name}/expand", post(expand_volume))
        .route("/v1/volumes/{name}/update", post(update_volume))
        .route("/v1/volumes/{name}/activate", post(activate_volume))
        .route("/v1/volumes/{name}/engine", get(engine::get))
        .route(
            "/v1/volumes/{name}/engine-upgrade",
            get(upgrades::get_volume).post(upgrades::upgrade_volume),
        )
        .route(
            "/v1/engine-upgrades",
            get(upgrades::get_job).post(upgrades::start_job),
        )
        .route(
            "/v1/volumes/{name}/snapshots",
            get(snapshots::list).post(snapshots::create),
        )
        .route(
            "/v1/volumes/{name}/snapshots/{snapshot}",
            axum::routing::delete(snapshots::delete),
        )
        .route(
            "/v1/volumes/{name}/snapshots/{snapshot}/revert",
            post(snapshots::revert),
        )
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{id}", get(get_node))
        .route("/v1/nodes/{id}/update", post(nodes::update))
        .route(
            "/v1/nodes/{id}/disks/{disk}/update",
            post(nodes::update_disk),
        )
        .route("/v1/replicas", get(list_replicas))
        .route("/v1/settings", get(list_settings))
        .route("/v1/settings/{key}", get(get_setting).put(set_setting))
        .route("/v1/backups", get(backups::list).post(backups::create))
        .route(
            "/v1/backups/{name}",
            get(backups::get).delete(backups::delete),
        )
        .route("/v1/backups/{name}/verify", post(backups::verify))
        .route("/v1/backupvolumes", get(backups::list_volumes))
        .route("/v1/backupvolumes/{name}", get(backups::get_volume))
        .route(
            "/v1/backupvolumes/{name}/verify",
            post(backups::verify_on_target),
        )
        .route("/v1/recurringjobs", get(jobs::list).post(jobs::create))
        .route(
            "/v1/recurringjobs/{name}",
            get(jobs::get).put(jobs::update).delete(jobs::delete),
        )
        .route("/v1/events", get(events))
        .route_layer(middleware::from_fn(idempotency_key))
        .route_layer(middleware::from_fn_with_state(api.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(crate::ui::routes())
        .merge(v1)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(api)
}

async fn authenticate(State(api): State<Api>, request: HttpRequest, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), api.token.as_bytes()) => {
            next.run(request).await
        }
        Some(_) => ApiError::Unauthorized("the bearer token is not valid for this cluster".into())
            .into_response(),
        None => ApiError::Unauthorized("missing `Authorization: Bearer <token>` header".into())
            .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The header a client sets to one value on every try of one write.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

tokio::task_local! {
    /// The `Idempotency-Key` of the HTTP request being served, until [`Api::propose`] takes
    /// it for the request's command.
    static IDEMPOTENCY_KEY: std::cell::Cell<Option<String>>;
}

/// Checks the `Idempotency-Key` header (up to 64 printable ASCII characters) and serves the
/// request with it in reach of [`Api::propose`].
async fn idempotency_key(request: HttpRequest, next: Next) -> Response {
    let key = match request.headers().get(IDEMPOTENCY_KEY_HEADER) {
        None => None,
        Some(value) => {
            let checked = match value.to_str() {
                Ok(key) => shorthorn_state::check_request_id(key).map(|()| key.to_string()),
                Err(_) => Err(shorthorn_state::Rejection::invalid(
                    "request id must be printable ASCII",
                )),
            };
            match checked {
                Ok(key) => Some(key),
                Err(rejection) => {
                    return ApiError::BadRequest(format!(
                        "bad Idempotency-Key header: {}",
                        rejection.message
                    ))
                    .into_response();
                }
            }
        }
    };
    IDEMPOTENCY_KEY
        .scope(std::cell::Cell::new(key), next.run(request))
        .await
}

/// JSON body extractor whose rejections are [`ApiError`]s (JSON, 400) instead of text.
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(request: HttpRequest, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(ApiError::BadRequest(json_problem(&rejection))),
        }
    }
}

fn json_problem(rejection: &JsonRejection) -> String {
    format!("invalid request body: {}", rejection.body_text())
}

async fn ready(State(api): State<Api>) -> Response {
    let status = api.log.status();
    match status.leader {
        Some(leader) => {
            (StatusCode::OK, format!("ready: leader is member {leader}")).into_response()
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no leader known",
        )
            .into_response(),
    }
}

/// The Prometheus text format of [`Metrics::render`].
async fn metrics(State(api): State<Api>) -> Response {
    let text = api.metrics.render().await;
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        text,
    )
        .into_response()
}

async fn cluster(State(api): State<Api>) -> Json<shorthorn_consensus::Status> {
    Json(api.log.status())
}

/// What `GET /v1/version` answers: this manager's build, and the cluster version the
/// cluster runs (a linearizable read).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionView {
    /// The Shorthorn version of this manager's binary.
    version: String,
    /// The newest cluster version this build supports.
    cluster_version_supported: shorthorn_state::ClusterVersion,
    /// The cluster version the cluster runs.
    cluster_version: shorthorn_state::ClusterVersion,
    /// The state snapshot formats this build reads (oldest, newest).
    state_formats: (u32, u32),
    /// The data directory format this build writes (and the newest it reads).
    data_format: u32,
    /// The replica directory format this build writes (and the newest it reads).
    replica_format: u32,
}

async fn version(State(api): State<Api>) -> Result<Json<VersionView>, ApiError> {
    let build = shorthorn_consensus::Build::this();
    let cluster_version = api.read(|state| state.cluster_version).await?;
    Ok(Json(VersionView {
        version: build.version,
        cluster_version_supported: build.cluster_version,
        cluster_version,
        state_formats: build.state_formats,
        data_format: build.data_format,
        replica_format: shorthorn_dataplane::replica::REPLICA_FORMAT,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RaiseClusterVersionBody {
    version: shorthorn_state::ClusterVersion,
}

/// `POST /v1/cluster/version {"version": N}`: raises the cluster version now (the leader
/// does it by itself within seconds of every manager supporting it); refused (409) while a
/// manager runs a build that does not support it.
async fn raise_cluster_version(
    State(api): State<Api>,
    Body(body): Body<RaiseClusterVersionBody>,
) -> Result<Json<VersionView>, ApiError> {
    api.propose(Request::RaiseClusterVersion {
        version: body.version,
    })
    .await?;
    version(State(api)).await
}

/// A size in bytes, or a string with a binary suffix (`"10Gi"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeField {
    Bytes(u64),
    Text(String),
}

impl SizeField {
    fn bytes(&self) -> Result<u64, ApiError> {
        match self {
            SizeField::Bytes(bytes) => Ok(*bytes),
            SizeField::Text(text) => parse_size(text).map_err(ApiError::BadRequest),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateVolumeBody {
    name: String,
    /// Required unless restoring or copying; a restore defaults to the backup's size, a copy
    /// to its snapshot's (a clone: its source's).
    #[serde(default)]
    size: Option<SizeField>,
    #[serde(default)]
    number_of_replicas: Option<u8>,
    #[serde(default)]
    data_locality: Option<DataLocality>,
    #[serde(default)]
    node_selector: BTreeSet<String>,
    #[serde(default)]
    disk_selector: BTreeSet<String>,
    #[serde(default)]
    stale_replica_timeout: Option<u64>,
    #[serde(default)]
    standby: bool,
    /// Restore the new volume from this backup URL (`<target>?backup=NAME&volume=VOL`).
    #[serde(default)]
    from_backup: Option<String>,
    /// Copy the new volume from a snapshot of another volume (`{"volume", "snapshot"}`),
    /// or clone a volume (`{"volume"}`: a snapshot of it is taken first).
    #[serde(default)]
    data_source: Option<DataSource>,
    /// `recurring-job.shorthorn.io/<job>: enabled` or
    /// `recurring-job-group.shorthorn.io/<group>: enabled` join recurring jobs.
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

async fn list_volumes(State(api): State<Api>) -> Result<Json<Vec<Volume>>, ApiError> {
    Ok(Json(
        api.read(|s| s.volumes.values().cloned().collect()).await?,
    ))
}

async fn get_volume(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<Volume>, ApiError> {
    let found = api
        .read(move |s| s.volumes.get(&name).cloned().ok_or(name))
        .await?;
    found
        .map(Json)
        .map_err(|name| ApiError::NotFound(format!("volume \"{name}\" not found")))
}

async fn create_volume(
    State(api): State<Api>,
    Body(mut body): Body<CreateVolumeBody>,
) -> Result<(StatusCode, Json<Volume>), ApiError> {
    if body.standby
        && let Some(url) = body.from_backup.as_deref()
    {
        body.from_backup = Some(api.newest_backup_url(url).await?);
    }
    let size = match (&body.size, &body.from_backup, &body.data_source) {
        (Some(size), None, _) => size.bytes()?,
        (None, None, None) => return Err(ApiError::BadRequest("a volume needs a size".into())),
        (None, None, Some(source)) => api.copy_size(source.clone()).await?,
        (size, Some(url), _) => {
            let asked = size.as_ref().map(SizeField::bytes).transpose()?;
            api.restore_size(url, asked).await?
        }
    };
    let spec = VolumeSpec {
        name: body.name.clone(),
        size,
        number_of_replicas: body.number_of_replicas,
        data_locality: body.data_locality,
        node_selector: body.node_selector,
        disk_selector: body.disk_selector,
        stale_replica_timeout: body.stale_replica_timeout,
        standby: body.standby,
        from_backup: body.from_backup,
        data_source: body.data_source,
        labels: body.labels,
    };
    api.propose(Request::CreateVolume(spec)).await?;
    let Json(volume) = get_volume(State(api), Path(body.name)).await?;
    Ok((StatusCode::CREATED, Json(volume)))
}

impl Api {
    /// The size of a volume copied from `source` when none is asked: the snapshot's (the
    /// source's size when it was taken), or for a clone the source's now.
    async fn copy_size(&self, source: DataSource) -> Result<u64, ApiError> {
        self.read(move |s| {
            let volume = s
                .volumes
                .get(&source.volume)
                .ok_or_else(|| format!("volume \"{}\" not found", source.volume))?;
            match &source.snapshot {
                None => Ok(volume.size),
                Some(name) => volume
                    .snapshots
                    .get(name)
                    .map(|s| s.size)
                    .ok_or_else(|| format!("snapshot \"{}/{name}\" not found", source.volume)),
            }
        })
        .await?
        .map_err(ApiError::NotFound)
    }
}

async fn delete_volume(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    api.propose(Request::DeleteVolume { name }).await?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachBody {
    node: String,
    /// `none` (default: the NBD endpoint only), `auto`, `fuse` or `nbd`.
    #[serde(default)]
    frontend: shorthorn_state::Frontend,
}

async fn attach_volume(
    State(api): State<Api>,
    Path(name): Path<String>,
    Body(body): Body<AttachBody>,
) -> Result<Json<Volume>, ApiError> {
    api.propose(Request::AttachVolume {
        name: name.clone(),
        node: body.node,
        frontend: body.frontend,
    })
    .await?;
    get_volume(State(api), Path(name)).await
}

/// Turns a disaster-recovery standby into a normal volume once what is newer in its
/// backup volume is restored; `GET` the volume to follow it (`standby` turns false).
async fn activate_volume(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<Volume>, ApiError> {
    api.propose(Request::ActivateVolume { name: name.clone() })
        .await?;
    get_volume(State(api), Path(name)).await
}

async fn detach_volume(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<Volume>, ApiError> {
    api.propose(Request::DetachVolume { name: name.clone() })
        .await?;
    get_volume(State(api), Path(name)).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpandBody {
    size: SizeField,
}

async fn expand_volume(
    State(api): State<Api>,
    Path(name): Path<String>,
    Body(body): Body<ExpandBody>,
) -> Result<Json<Volume>, ApiError> {
    let size = body.size.bytes()?;
    api.propose(Request::ExpandVolume {
        name: name.clone(),
        size,
    })
    .await?;
    get_volume(State(api), Path(name)).await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateBody {
    #[serde(default)]
    number_of_replicas: Option<u8>,
    #[serde(default)]
    data_locality: Option<DataLocality>,
    /// Replaces the volume's labels.
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    /// Minutes a failed replica is kept for a delta rebuild before it is replaced.
    #[serde(default)]
    stale_replica_timeout: Option<u64>,
}

async fn update_volume(
    State(api): State<Api>,
    Path(name): Path<String>,
    Body(body): Body<UpdateBody>,
) -> Result<Json<Volume>, ApiError> {
    let request = Request::UpdateVolume {
        name: name.clone(),
        number_of_replicas: body.number_of_replicas,
        data_locality: body.data_locality,
        labels: body.labels,
        stale_replica_timeout_secs: body
            .stale_replica_timeout
            .map(|minutes| minutes.saturating_mul(60)),
    };
    api.propose(request).await?;
    get_volume(State(api), Path(name)).await
}

async fn list_nodes(State(api): State<Api>) -> Result<Json<Vec<shorthorn_state::Node>>, ApiError> {
    Ok(Json(
        api.read(|s| s.nodes.values().cloned().collect()).await?,
    ))
}

async fn get_node(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<shorthorn_state::Node>, ApiError> {
    let found = api
        .read(move |s| s.nodes.get(&id).cloned().ok_or(id))
        .await?;
    found
        .map(Json)
        .map_err(|id| ApiError::NotFound(format!("node \"{id}\" not found")))
}

#[derive(Debug, Deserialize)]
struct ReplicaFilter {
    volume: Option<String>,
}

async fn list_replicas(
    State(api): State<Api>,
    Query(filter): Query<ReplicaFilter>,
) -> Result<Json<Vec<Replica>>, ApiError> {
    let replicas = api
        .read(move |s| {
            s.replicas
                .values()
                .filter(|r| filter.volume.as_ref().is_none_or(|v| &r.volume == v))
                .cloned()
                .collect()
        })
        .await?;
    Ok(Json(replicas))
}

/// A setting as the API shows it.
#[derive(Debug, Serialize)]
struct SettingView {
    key: &'static str,
    value: String,
    default: String,
}

async fn list_settings(State(api): State<Api>) -> Result<Json<Vec<SettingView>>, ApiError> {
    let defaults = Settings::default();
    let entries = api.read(|s| s.settings.entries()).await?;
    Ok(Json(
        entries
            .into_iter()
            .map(|(key, value)| SettingView {
                key,
                value,
                default: defaults.get(key).unwrap_or_default(),
            })
            .collect(),
    ))
}

async fn get_setting(
    State(api): State<Api>,
    Path(key): Path<String>,
) -> Result<Json<SettingView>, ApiError> {
    let Some(canonical) = Settings::canonical_key(&key) else {
        return Err(ApiError::NotFound(format!("unknown setting \"{key}\"")));
    };
    let value = api
        .read(move |s| s.settings.get(canonical).unwrap_or_default())
        .await?;
    let default = Settings::default().get(canonical).unwrap_or_default();
    Ok(Json(SettingView {
        key: canonical,
        value,
        default,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingBody {
    value: String,
}

async fn set_setting(
    State(api): State<Api>,
    Path(key): Path<String>,
    Body(body): Body<SettingBody>,
) -> Result<Json<SettingView>, ApiError> {
    let mut value = body.value;
    if Settings::canonical_key(&key) == Some("backupTarget") {
        // Probed before the log records it: a target that cannot take backups is refused
        // with the reason (unreachable, credentials refused, no such bucket...).
        value = value.trim().to_string();
        api.check_target(&value).await?;
    }
    api.propose(Request::SetSetting {
        key: key.clone(),
        value,
    })
    .await?;
    get_setting(State(api), Path(key)).await
}

#[derive(Debug, Deserialize)]
struct EventsFrom {
    /// First log index to stream from; the stream follows new events after that.
    #[serde(default)]
    from: u64,
}

async fn events(
    State(api): State<Api>,
    Query(from): Query<EventsFrom>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = api.log.subscribe_logged(from.from).map(|item| {
        Ok(match item {
            Ok(logged) => {
                // The event, plus `loggedAt`: the time (ms) of the command behind it.
                let mut data = serde_json::to_value(&logged.event).unwrap_or_default();
                if let (Some(at), Some(fields)) = (logged.at, data.as_object_mut()) {
                    fields.insert("loggedAt".into(), at.0.into());
                }
                SseEvent::default()
                    .id(logged.index.to_string())
                    .event("event")
                    .json_data(&data)
                    .unwrap_or_else(|e| SseEvent::default().event("error").data(e.to_string()))
            }
            Err(err) => SseEvent::default().event("error").data(err.to_string()),
        })
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
