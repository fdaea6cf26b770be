//! Node and disk edits: scheduling on or off, tags, and a disk's reserved space — the same
//! commands the Kubernetes mirror proposes for edits of a Node object's spec. A node or
//! disk with scheduling off takes no new replica; those it has stay.
//!
//! One request may propose two commands (scheduling, then the rest). Only the first carries
//! the request's `Idempotency-Key`; both set values rather than change them by a step, so a
//! retry of the whole request leaves the same result.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use shorthorn_state::{Node, Request};

use super::{Api, ApiError, Body, SizeField, get_node};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct NodeBody {
    #[serde(default)]
    schedulable: Option<bool>,
    /// Replaces the node's tags (volumes' node selectors must all match).
    #[serde(default)]
    tags: Option<BTreeSet<String>>,
}

pub(super) async fn update(
    State(api): State<Api>,
    Path(id): Path<String>,
    Body(body): Body<NodeBody>,
) -> Result<Json<Node>, ApiError> {
    if body.schedulable.is_none() && body.tags.is_none() {
        return Err(ApiError::BadRequest(
            "nothing to change: give schedulable or tags".into(),
        ));
    }
    if let Some(schedulable) = body.schedulable {
        api.propose(Request::SetNodeSchedulable {
            id: id.clone(),
            schedulable,
        })
        .await?;
    }
    if let Some(tags) = body.tags {
        api.propose(Request::UpdateNode {
            id: id.clone(),
            address: None,
            zone: None,
            labels: None,
            tags: Some(tags),
        })
        .await?;
    }
    get_node(State(api), Path(id)).await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DiskBody {
    #[serde(default)]
    schedulable: Option<bool>,
    /// Replaces the disk's tags (volumes' disk selectors must all match).
    #[serde(default)]
    tags: Option<BTreeSet<String>>,
    /// Bytes kept out of scheduling (or `"10Gi"`).
    #[serde(default)]
    reserved: Option<SizeField>,
}

pub(super) async fn update_disk(
    State(api): State<Api>,
    Path((id, disk)): Path<(String, String)>,
    Body(body): Body<DiskBody>,
) -> Result<Json<Node>, ApiError> {
    if body.schedulable.is_none() && body.tags.is_none() && body.reserved.is_none() {
        return Err(ApiError::BadRequest(
            "nothing to change: give schedulable, tags or reserved".into(),
        ));
    }
    let reserved = body.reserved.as_ref().map(SizeField::bytes).transpose()?;
    if let Some(schedulable) = body.schedulable {
        api.propose(Request::SetDiskSchedulable {
            node: id.clone(),
            disk: disk.clone(),
            schedulable,
        })
        .await?;
    }
    if body.tags.is_some() || reserved.is_some() {
        api.propose(Request::UpdateDisk {
            node: id.clone(),
            disk,
            capacity: None,
            reserved,
            available: None,
            tags: body.tags,
        })
        .await?;
    }
    get_node(State(api), Path(id)).await
}
