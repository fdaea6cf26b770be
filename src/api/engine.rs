//! `GET /v1/volumes/{name}/engine`: what the engine of an attached volume says now — its
//! replicas as it sees them, with the progress of each rebuild, and its I/O figures over
//! its last second. Only the node the volume is attached on runs that engine, so any other
//! manager forwards the request to that node's manager (its address in the log) once; the
//! forwarded request is answered from that node alone. It reads; it never proposes.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use shorthorn_dataplane::proto;

use super::{Api, ApiError};
use crate::metrics::{EngineReport, percent};

/// Set on a request one manager forwards to another: answer it from this node only.
const FORWARDED: &str = "x-shorthorn-forwarded";
/// How long the manager of the engine's node may take to answer a forwarded request.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EngineView {
    volume: String,
    /// The node whose engine answered.
    node: String,
    /// The engine's replicas in its own words; `id` is the log's replica at that address.
    replicas: Vec<ReplicaView>,
    /// None when the engine did not answer in time (it may be restarting).
    stats: Option<StatsView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ReplicaView {
    id: Option<String>,
    address: String,
    /// RW, WO (being rebuilt) or ERR, as the replicas of the log.
    mode: &'static str,
    /// While the replica is rebuilt (WO).
    rebuild: Option<RebuildView>,
    /// Why the engine dropped it, in ERR.
    error: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RebuildView {
    /// Bytes of the volume compared so far, of `total_bytes`.
    done_bytes: u64,
    total_bytes: u64,
    /// Bytes copied because they differed.
    copied_bytes: u64,
    /// `done_bytes` of `total_bytes`, in whole percent.
    progress: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatsView {
    epoch: u64,
    uptime_ms: u64,
    read_iops: u64,
    write_iops: u64,
    /// Bytes per second over the engine's last full second.
    read_throughput: u64,
    write_throughput: u64,
    /// Mean latency over the last full second, in ns (0 with no operation).
    read_latency_ns: u64,
    write_latency_ns: u64,
}

pub(super) async fn get(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let wanted = name.clone();
    let (node, address, known) = api
        .read(move |s| {
            let volume = s.volumes.get(&wanted)?;
            let node = volume.attachment.as_ref().map(|a| a.node.clone());
            let address = node
                .as_ref()
                .and_then(|n| s.nodes.get(n))
                .map(|n| n.address.clone());
            let known: Vec<(String, Option<String>)> = s
                .replicas_of(volume)
                .map(|r| (r.id.clone(), r.address.clone()))
                .collect();
            Some((node, address, known))
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("volume \"{name}\" not found")))?;
    let Some(node) = node else {
        return Err(ApiError::Conflict(format!(
            "volume \"{name}\" is not attached: it has no engine"
        )));
    };
    if node != api.metrics.node() {
        if headers.contains_key(FORWARDED) {
            return Err(ApiError::Conflict(format!(
                "volume \"{name}\" is attached on {node}, not on {}",
                api.metrics.node()
            )));
        }
        let address = address.filter(|a| !a.is_empty()).ok_or_else(|| {
            ApiError::Failed(format!("node \"{node}\" has no API address in the log"))
        })?;
        return forward(&api, &address, &name).await;
    }
    let report = api.metrics.engine(&name).await.ok_or_else(|| {
        ApiError::Conflict(format!(
            "the engine of volume \"{name}\" is not running on {node} yet"
        ))
    })?;
    Ok(Json(view(report, node, &known)).into_response())
}

fn view(report: EngineReport, node: String, known: &[(String, Option<String>)]) -> EngineView {
    let replicas = report
        .replicas
        .iter()
        .map(|info| {
            let address = info.address.trim_start_matches("tcp:").to_string();
            let id = known
                .iter()
                .find(|(_, a)| a.as_deref() == Some(address.as_str()))
                .map(|(id, _)| id.clone());
            let mode = match info.mode() {
                proto::ReplicaMode::Rw => "RW",
                proto::ReplicaMode::Wo => "WO",
                _ => "ERR",
            };
            let rebuild = (mode == "WO" && info.rebuild_total_bytes > 0).then(|| RebuildView {
                done_bytes: info.rebuild_done_bytes,
                total_bytes: info.rebuild_total_bytes,
                copied_bytes: info.rebuild_copied_bytes,
                progress: percent(info.rebuild_done_bytes, info.rebuild_total_bytes),
            });
            ReplicaView {
                id,
                address,
                mode,
                rebuild,
                error: (!info.error.is_empty()).then(|| info.error.clone()),
            }
        })
        .collect();
    EngineView {
        volume: report.volume,
        node,
        replicas,
        stats: report.stats.map(|s| StatsView {
            epoch: s.epoch,
            uptime_ms: s.uptime_ms,
            read_iops: s.read_iops,
            write_iops: s.write_iops,
            read_throughput: s.read_bytes_per_sec,
            write_throughput: s.write_bytes_per_sec,
            read_latency_ns: s.read_latency_last_ns,
            write_latency_ns: s.write_latency_last_ns,
        }),
    }
}

/// Asks the manager at `address` (the engine's node) and answers with what it said.
async fn forward(api: &Api, address: &str, name: &str) -> Result<Response, ApiError> {
    let url = format!("http://{address}/v1/volumes/{name}/engine");
    let bearer = format!("Bearer {}", api.token);
    let answer = tokio::task::spawn_blocking(move || {
        let result = ureq::get(&url)
            .set("Authorization", &bearer)
            .set(FORWARDED, "1")
            .timeout(FORWARD_TIMEOUT)
            .call();
        match result {
            Ok(response) => Ok((response.status(), response.into_json::<Value>())),
            Err(ureq::Error::Status(status, response)) => {
                Ok((status, response.into_json::<Value>()))
            }
            Err(err) => Err(err.to_string()),
        }
    })
    .await
    .map_err(|e| ApiError::Failed(e.to_string()))?;
    match answer {
        Ok((status, Ok(body))) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            Ok((status, Json(body)).into_response())
        }
        Ok((status, Err(err))) => Err(ApiError::Failed(format!(
            "the manager at {address} answered {status} without JSON: {err}"
        ))),
        Err(err) => Err(ApiError::Failed(format!(
            "the manager at {address}, where the engine runs, did not answer: {err}"
        ))),
    }
}
