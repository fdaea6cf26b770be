//! The OpenAPI 3.1 document served at `/v1/openapi.json`. A test checks that it names every
//! route the router serves, and only those.

use axum::Json;
use serde_json::{Value, json};

/// Every (path, method) the router serves under authentication, as OpenAPI writes them.
#[cfg(test)]
pub const OPERATIONS: &[(&str, &str)] = &[
    ("/v1/openapi.json", "get"),
    ("/v1/cluster", "get"),
    ("/v1/volumes", "get"),
    ("/v1/volumes", "post"),
    ("/v1/volumes/{name}", "get"),
    ("/v1/volumes/{name}", "delete"),
    ("/v1/volumes/{name}/attach", "post"),
    ("/v1/volumes/{name}/detach", "post"),
    ("/v1/volumes/{name}/activate", "post"),
    ("/v1/volumes/{name}/engine", "get"),
    ("/v1/volumes/{name}/engine-upgrade", "get"),
    ("/v1/volumes/{name}/engine-upgrade", "post"),
    ("/v1/engine-upgrades", "get"),
    ("/v1/engine-upgrades", "post"),
    ("/v1/volumes/{name}/expand", "post"),
    ("/v1/volumes/{name}/update", "post"),
    ("/v1/volumes/{name}/snapshots", "get"),
    ("/v1/volumes/{name}/snapshots", "post"),
    ("/v1/volumes/{name}/snapshots/{snapshot}", "delete"),
    ("/v1/volumes/{name}/snapshots/{snapshot}/revert", "post"),
    ("/v1/nodes", "get"),
    ("/v1/nodes/{id}", "get"),
    ("/v1/nodes/{id}/update", "post"),
    ("/v1/nodes/{id}/disks/{disk}/update", "post"),
    ("/v1/replicas", "get"),
    ("/v1/settings", "get"),
    ("/v1/settings/{key}", "get"),
    ("/v1/settings/{key}", "put"),
    ("/v1/backups", "get"),
    ("/v1/backups", "post"),
    ("/v1/backups/{name}", "get"),
    ("/v1/backups/{name}", "delete"),
    ("/v1/backups/{name}/verify", "post"),
    ("/v1/backupvolumes", "get"),
    ("/v1/backupvolumes/{name}", "get"),
    ("/v1/backupvolumes/{name}/verify", "post"),
    ("/v1/recurringjobs", "get"),
    ("/v1/recurringjobs", "post"),
    ("/v1/recurringjobs/{name}", "get"),
    ("/v1/recurringjobs/{name}", "put"),
    ("/v1/recurringjobs/{name}", "delete"),
    ("/v1/events", "get"),
];

pub async fn document() -> Json<Value> {
    Json(build())
}

fn reference(name: &str) -> Value {
    reference_to("schemas", name)
}

fn reference_to(section: &str, name: &str) -> Value {
    json!({ "$ref": format!("#/components/{section}/{name}") })
}

/// The methods of writes: each takes an `Idempotency-Key` header.
const MUTATING: &[&str] = &["post", "put", "delete", "patch"];

fn ok(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn body(schema: Value) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema } } })
}

fn errors() -> Value {
    let error = json!({ "description": "error", "content": { "application/json": { "schema": reference("Error") } } });
    json!({ "400": error, "401": error, "404": error, "409": error, "412": error, "503": error, "504": error })
}

/// `op` with a 202 answer for work the engine has not finished within the wait.
fn accepted(mut op: Value, response: Value) -> Value {
    op["responses"]["202"] = response;
    op
}

fn snapshot_params() -> Value {
    json!([
        { "name": "name", "in": "path", "required": true, "schema": { "type": "string" } },
        { "name": "snapshot", "in": "path", "required": true, "schema": { "type": "string" } }
    ])
}

fn operation(summary: &str, success: (&str, Value), request: Option<Value>) -> Value {
    let mut responses = errors();
    responses[success.0] = success.1;
    let mut op = json!({ "summary": summary, "responses": responses });
    if let Some(request) = request {
        op["requestBody"] = body(request);
    }
    op
}

fn with_parameters(mut op: Value, parameters: Value) -> Value {
    op["parameters"] = parameters;
    op
}

fn path_param(name: &str) -> Value {
    json!([{ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }])
}

pub fn build() -> Value {
    let volume = reference("Volume");
    let image_body = json!({
        "type": "object", "required": ["image"], "additionalProperties": false,
        "properties": { "image": { "type": "string", "description": "absolute path of the new shorthorn binary on every node" } }
    });
    let list = |item: Value| json!({ "type": "array", "items": item });
    let labels = json!({ "type": "object", "additionalProperties": { "type": "string" },
        "description": "recurring-job.shorthorn.io/<job>: enabled and recurring-job-group.shorthorn.io/<group>: enabled join recurring jobs" });
    let verify_progress = json!([{ "name": "progress", "in": "query", "required": false, "schema": { "type": "boolean" } }]);
    let job_body = json!({
        "type": "object", "required": ["name", "task", "cron"], "additionalProperties": false,
        "properties": {
            "name": { "type": "string", "description": "DNS-1123 label of at most 40 characters" },
            "task": { "enum": ["snapshot", "snapshot-cleanup", "snapshot-delete", "backup", "backup-force-create"] },
            "cron": { "type": "string", "description": "UTC; 5 fields, or 6 with seconds first" },
            "retain": { "type": "integer", "minimum": 1, "maximum": 100, "default": 1 },
            "concurrency": { "type": "integer", "minimum": 1, "default": 1 },
            "groups": { "type": "array", "items": { "type": "string" }, "description": "'default' applies the job to volumes that name no job or group" },
            "labels": { "type": "object", "additionalProperties": { "type": "string" }, "description": "put on the snapshots and backups it makes" }
        }
    });
    let size = json!({ "oneOf": [{ "type": "integer", "minimum": 0 }, { "type": "string", "examples": ["10Gi"] }] });
    let mut paths = json!({
        "/v1/openapi.json": { "get": operation("This document", ("200", ok("OpenAPI document", json!({"type": "object"}))), None) },
        "/v1/cluster": { "get": operation("Raft status of this manager", ("200", ok("status", json!({"type": "object"}))), None) },
        "/v1/volumes": {
            "get": operation("List volumes", ("200", ok("volumes", list(volume.clone()))), None),
            "post": operation("Create a volume; its replicas are scheduled at once. With fromBackup it is restored from that backup (checked first: 404 when it is not on the target, 400 when size is smaller) by an engine with no frontend; with dataSource it is copied from a snapshot of another volume (or, with no snapshot, cloned: a snapshot clone-<name> of the source is taken first) from the source's replicas (404 for an unknown volume or snapshot, 400 when size is smaller, 409 while the snapshot is still being taken); either way it can be attached once restore.state is completed, and while a copy runs its snapshot cannot be deleted nor its source deleted or reverted past it (412)", ("201", ok("created", volume.clone())), Some(json!({
                "type": "object", "required": ["name"], "additionalProperties": false,
                "properties": {
                    "name": { "type": "string", "description": "DNS-1123 label" },
                    "size": size.clone(),
                    "numberOfReplicas": { "type": "integer", "minimum": 1, "maximum": 20 },
                    "dataLocality": { "enum": ["disabled", "best-effort"] },
                    "nodeSelector": { "type": "array", "items": { "type": "string" } },
                    "diskSelector": { "type": "array", "items": { "type": "string" } },
                    "staleReplicaTimeout": { "type": "integer", "description": "minutes" },
                    "standby": { "type": "boolean", "description": "a disaster-recovery standby following fromBackup's backup volume (fromBackup may then be <target>?volume=<volume>: its newest backup)" },
                    "fromBackup": { "type": "string", "description": "backup URL <target>?backup=<name>&volume=<volume>; size defaults to the backup's" },
                    "dataSource": { "type": "object", "required": ["volume"], "additionalProperties": false,
                        "description": "copy the data from a snapshot of another volume; size defaults to the snapshot's (a clone: the source's)",
                        "properties": {
                            "volume": { "type": "string", "description": "the source volume" },
                            "snapshot": { "type": "string", "description": "its snapshot; none: clone the volume as it is now" } } },
                    "labels": labels.clone()
                }
            }))),
        },
        "/v1/volumes/{name}": {
            "parameters": path_param("name"),
            "get": operation("Get a volume", ("200", ok("volume", volume.clone())), None),
            "delete": operation("Delete a detached volume", ("202", json!({"description": "deleting"})), None),
        },
        "/v1/volumes/{name}/attach": {
            "parameters": path_param("name"),
            "post": operation("Attach on a node under a new epoch, with a kernel block device unless frontend is none (the device path shows in attachment.device once set up; attachment.error says why the node cannot)", ("200", ok("volume", volume.clone())), Some(json!({
                "type": "object", "required": ["node"], "additionalProperties": false,
                "properties": {
                    "node": { "type": "string" },
                    "frontend": { "enum": ["none", "auto", "fuse", "nbd"], "default": "none" }
                }
            }))),
        },
        "/v1/volumes/{name}/detach": {
            "parameters": path_param("name"),
            "post": operation("Detach", ("200", ok("volume", volume.clone())), None),
        },
        "/v1/volumes/{name}/activate": {
            "parameters": path_param("name"),
            "post": operation("Activate a disaster-recovery standby: what is newer in its backup volume is restored, then it becomes a normal detached volume (`standby` false)", ("200", ok("volume", volume.clone())), None),
        },
        "/v1/volumes/{name}/engine": {
            "parameters": path_param("name"),
            "get": operation("What the engine of an attached volume says now: its replicas (RW, WO while rebuilt with the rebuild's progress, ERR with the reason) and its I/O over its last second. Any manager answers; the manager of the engine's node is asked for it (409 when the volume is not attached or its engine not running yet)", ("200", ok("engine", reference("Engine"))), None),
        },
        "/v1/volumes/{name}/expand": {
            "parameters": path_param("name"),
            "post": operation("Grow a volume", ("200", ok("volume", volume.clone())), Some(json!({
                "type": "object", "required": ["size"], "additionalProperties": false, "properties": { "size": size.clone() }
            }))),
        },
        "/v1/volumes/{name}/update": {
            "parameters": path_param("name"),
            "post": operation("Change replica count, data locality, stale replica timeout (minutes) or labels", ("200", ok("volume", volume.clone())), Some(json!({
                "type": "object", "additionalProperties": false,
                "properties": {
                    "numberOfReplicas": { "type": "integer", "minimum": 1, "maximum": 20 },
                    "dataLocality": { "enum": ["disabled", "best-effort"] },
                    "staleReplicaTimeout": { "type": "integer", "minimum": 0, "maximum": 525600 },
                    "labels": labels.clone()
                }
            }))),
        },
        "/v1/volumes/{name}/snapshots": {
            "parameters": path_param("name"),
            "get": operation("List snapshots", ("200", ok("snapshots", list(reference("Snapshot")))), None),
            "post": accepted(operation("Take a snapshot of an attached volume; waits up to 30 s for its engine (409 when the engine failed it)", ("201", ok("taken", reference("Snapshot"))), Some(json!({
                "type": "object", "required": ["name"], "additionalProperties": false, "properties": { "name": { "type": "string" }, "labels": labels.clone() }
            }))), ok("still pending", reference("Snapshot"))),
        },
        "/v1/volumes/{name}/snapshots/{snapshot}": {
            "parameters": snapshot_params(),
            "delete": accepted(operation("Delete a snapshot (merge it into its child)", ("204", json!({"description": "merged away"})), None),
                json!({"description": "recorded; merged when the engine runs (at the next attach for a detached volume)"})),
        },
        "/v1/volumes/{name}/snapshots/{snapshot}/revert": {
            "parameters": snapshot_params(),
            "post": accepted(operation("Revert an attached volume with no frontend client to a snapshot; newer snapshots are dropped (409 with the engine's reason when refused)", ("200", ok("reverted", volume.clone())), Some(json!({
                "type": "object", "additionalProperties": false
            }))), ok("still pending", volume.clone())),
        },
        "/v1/nodes": { "get": operation("List nodes with their disks and usage", ("200", ok("nodes", list(reference("Node")))), None) },
        "/v1/nodes/{id}": { "parameters": path_param("id"), "get": operation("Get a node", ("200", ok("node", reference("Node"))), None) },
        "/v1/nodes/{id}/update": {
            "parameters": path_param("id"),
            "post": operation("Turn scheduling on or off (a node with it off takes no new replica; those it has stay) or replace the node's tags", ("200", ok("node", reference("Node"))), Some(json!({
                "type": "object", "additionalProperties": false, "minProperties": 1,
                "properties": {
                    "schedulable": { "type": "boolean" },
                    "tags": { "type": "array", "items": { "type": "string" }, "description": "replaces the tags; volumes' nodeSelector must all match" }
                }
            }))),
        },
        "/v1/nodes/{id}/disks/{disk}/update": {
            "parameters": json!([
                { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } },
                { "name": "disk", "in": "path", "required": true, "schema": { "type": "string" } }
            ]),
            "post": operation("Turn a disk's scheduling on or off, replace its tags, or change the space kept out of scheduling; answers with its node", ("200", ok("node", reference("Node"))), Some(json!({
                "type": "object", "additionalProperties": false, "minProperties": 1,
                "properties": {
                    "schedulable": { "type": "boolean" },
                    "tags": { "type": "array", "items": { "type": "string" }, "description": "replaces the tags; volumes' diskSelector must all match" },
                    "reserved": size.clone()
                }
            }))),
        },
        "/v1/replicas": {
            "get": {
                "summary": "List replicas",
                "parameters": [{ "name": "volume", "in": "query", "required": false, "schema": { "type": "string" } }],
                "responses": { "200": ok("replicas", list(reference("Replica"))), "401": errors()["401"] }
            }
        },
        "/v1/settings": { "get": operation("List settings", ("200", ok("settings", list(reference("Setting")))), None) },
        "/v1/settings/{key}": {
            "parameters": path_param("key"),
            "get": operation("Get a setting", ("200", ok("setting", reference("Setting"))), None),
            "put": operation("Change a setting; a new backupTarget is probed first (one put, get and delete of a small object, never a listing) and refused with the reason (400) when it is unreachable, refuses the credentials or has no such bucket", ("200", ok("setting", reference("Setting"))), Some(json!({
                "type": "object", "required": ["value"], "additionalProperties": false, "properties": { "value": { "type": "string" } }
            }))),
        },
        "/v1/backups": {
            "get": {
                "summary": "List this cluster's backups (from the log), oldest first",
                "parameters": [{ "name": "volume", "in": "query", "required": false, "schema": { "type": "string" } }],
                "responses": { "200": ok("backups", list(reference("Backup"))), "401": errors()["401"] }
            },
            "post": operation("Back up a snapshot of an attached volume to the backup target (a new snapshot named like the backup when none is named); the engine uploads it in the background", ("201", ok("in progress", reference("Backup"))), Some(json!({
                "type": "object", "required": ["volume"], "additionalProperties": false,
                "properties": {
                    "volume": { "type": "string" },
                    "name": { "type": "string", "description": "DNS-1123 label; default backup-XXXXXXXX (from the Idempotency-Key when sent)" },
                    "snapshot": { "type": "string" },
                    "labels": { "type": "object", "additionalProperties": { "type": "string" } }
                }
            }))),
        },
        "/v1/backups/{name}": {
            "parameters": path_param("name"),
            "get": operation("Get a backup", ("200", ok("backup", reference("Backup"))), None),
            "delete": operation("Delete a backup that is not in progress: its manifest from the target, then the record from the log (blocks no manifest names are collected later)", ("204", json!({"description": "deleted"})), None),
        },
        "/v1/backups/{name}/verify": {
            "parameters": path_param("name"),
            "post": with_parameters(
                operation("Read every block of a completed backup from the target and check its blake3; names each bad one. With progress=true the answer is NDJSON: {\"checked\", \"blocks\"} every second, then {\"report\": VerifyReport} or {\"error\", \"message\"}", ("200", ok("report", reference("VerifyReport"))), None),
                verify_progress.clone(),
            ),
        },
        "/v1/backupvolumes": {
            "get": with_parameters(
                operation("The backup volumes on the backup target, including those other clusters wrote (read from the target; with synced=true, the log's copy the leader syncs every backupstorePollInterval seconds)", ("200", ok("backup volumes", list(reference("BackupVolume")))), None),
                json!([{ "name": "synced", "in": "query", "required": false, "schema": { "type": "boolean" } }]),
            ),
        },
        "/v1/backupvolumes/{name}": {
            "parameters": path_param("name"),
            "get": operation("The backups of one backup volume on the target, oldest first, with the URL a restore takes", ("200", ok("backups", list(reference("TargetBackup")))), None),
        },
        "/v1/backupvolumes/{name}/verify": {
            "parameters": path_param("name"),
            "post": with_parameters(
                operation("Verify one backup of this backup volume on the target (any cluster's): every block read and checked, each bad one named (progress=true: NDJSON as for a backup's verify)", ("200", ok("report", reference("VerifyReport"))), Some(json!({
                    "type": "object", "required": ["backup"], "additionalProperties": false, "properties": { "backup": { "type": "string" } }
                }))),
                verify_progress,
            ),
        },
        "/v1/recurringjobs": {
            "get": operation("List recurring jobs", ("200", ok("jobs", list(reference("RecurringJob")))), None),
            "post": operation("Create a recurring job; the Raft leader runs each slot of its schedule once", ("201", ok("created", reference("RecurringJob"))), Some(job_body.clone())),
        },
        "/v1/recurringjobs/{name}": {
            "parameters": path_param("name"),
            "get": operation("Get a recurring job", ("200", ok("job", reference("RecurringJob"))), None),
            "put": operation("Replace a recurring job's spec (a run in progress finishes under the old one)", ("200", ok("job", reference("RecurringJob"))), Some(job_body)),
            "delete": operation("Delete a recurring job (what it made is kept)", ("204", json!({"description": "deleted"})), None),
        },
        "/v1/events": {
            "get": {
                "summary": "Server-sent events from the log, from a log index on",
                "parameters": [{ "name": "from", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 0 } }],
                "responses": { "200": { "description": "text/event-stream: `id` is the log index, `data` the event as JSON (field `type`) with `loggedAt`, the time in ms of the command behind it", "content": { "text/event-stream": { "schema": { "type": "string" } } } } }
            }
        }
    });
    paths["/v1/volumes/{name}/engine-upgrade"] = json!({
        "parameters": path_param("name"),
        "get": operation("The volume's engine image (\"\" = each node's own binary) and its last engine upgrade: phase checking, engine, replicas, replica (one at a time), done or failed (with the error)", ("200", ok("engine upgrade", reference("VolumeEngineUpgrade"))), None),
        "post": operation("Upgrade the volume's engine, then its replicas one at a time, to an engine image without detaching it; the image is checked (run with --version) on the volume's node first", ("202", ok("engine upgrade", reference("VolumeEngineUpgrade"))), Some(image_body.clone())),
    });
    paths["/v1/engine-upgrades"] = json!({
        "get": operation("The engine upgrade job and every volume's image and last upgrade", ("200", ok("engine upgrades", reference("EngineUpgrades"))), None),
        "post": operation("Upgrade every volume to an engine image, at most concurrentAutomaticEngineUpgradePerNodeLimit volumes per node at once (412 when it is 0); the job starts no new volume after the first failure", ("202", ok("engine upgrades", reference("EngineUpgrades"))), Some(image_body)),
    });
    for (_, item) in paths.as_object_mut().into_iter().flatten() {
        for (method, op) in item.as_object_mut().into_iter().flatten() {
            if op.get("responses").is_some() {
                op["security"] = json!([{ "bearer": [] }]);
            }
            if MUTATING.contains(&method.as_str()) {
                let key = reference_to("parameters", "IdempotencyKey");
                match op["parameters"].as_array_mut() {
                    Some(parameters) => parameters.push(key),
                    None => op["parameters"] = json!([key]),
                }
            }
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Shorthorn manager API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "parameters": {
                "IdempotencyKey": {
                    "name": "Idempotency-Key", "in": "header", "required": false,
                    "description": "A key the client chooses for one write and sends on every retry of it (to any manager): the write is applied at most once, and a retry within 15 minutes gets the first outcome (a success is answered from the current state, a refusal is repeated). Reusing a key for a different write returns the first write's outcome.",
                    "schema": { "type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[ -~]+$" }
                }
            },
            "schemas": {
                "Error": { "type": "object", "required": ["error", "message"], "properties": {
                    "error": { "type": "string" }, "message": { "type": "string" } } },
                "Volume": { "type": "object", "properties": {
                    "name": { "type": "string" }, "size": { "type": "integer" },
                    "numberOfReplicas": { "type": "integer" },
                    "state": { "enum": ["creating", "detached", "attaching", "attached", "detaching", "deleting"] },
                    "robustness": { "enum": ["healthy", "degraded", "faulted"] },
                    "epoch": { "type": "integer" },
                    "attachment": { "type": ["object", "null"] },
                    "replicas": { "type": "array", "items": { "type": "string" } },
                    "condition": { "type": ["string", "null"] },
                    "restore": { "type": ["object", "null"], "properties": {
                        "url": { "type": "string", "description": "the backup restored from; empty for a copy" },
                        "snapshot": { "type": "object", "description": "the snapshot copied from (a volume created from a snapshot, or a clone)",
                            "properties": { "volume": { "type": "string" }, "snapshot": { "type": "string" } } },
                        "state": { "enum": ["inProgress", "completed", "error"] },
                        "progress": { "type": "integer" }, "error": { "type": ["string", "null"] } } } } },
                "Node": { "type": "object", "properties": {
                    "id": { "type": "string" }, "address": { "type": "string" }, "zone": { "type": "string" },
                    "schedulable": { "type": "boolean" }, "disks": { "type": "object" } } },
                "VolumeEngineUpgrade": { "type": "object", "properties": {
                    "volume": { "type": "string" },
                    "image": { "type": "string" },
                    "upgrade": { "type": ["object", "null"], "properties": {
                        "image": { "type": "string" }, "from": { "type": "string" },
                        "phase": { "type": "object", "properties": { "phase": { "enum": ["checking", "engine", "replicas", "replica", "done", "failed"] } } },
                        "job": { "type": "boolean" },
                        "replicasDone": { "type": "array", "items": { "type": "string" } },
                        "startedAt": { "type": "integer" }, "finishedAt": { "type": ["integer", "null"] },
                        "error": { "type": ["string", "null"] }
                    } }
                } },
                "EngineUpgrades": { "type": "object", "properties": {
                    "job": { "type": ["object", "null"], "properties": {
                        "image": { "type": "string" },
                        "volumes": { "type": "array", "items": { "type": "string" } },
                        "done": { "type": "array", "items": { "type": "string" } },
                        "failed": { "type": ["array", "null"], "items": { "type": "string" } },
                        "startedAt": { "type": "integer" }, "finishedAt": { "type": ["integer", "null"] }
                    } },
                    "volumes": { "type": "array", "items": reference("VolumeEngineUpgrade") }
                } },
                "Engine": { "type": "object", "properties": {
                    "volume": { "type": "string" }, "node": { "type": "string", "description": "the node whose engine answered" },
                    "replicas": { "type": "array", "items": { "type": "object", "properties": {
                        "id": { "type": ["string", "null"], "description": "the log's replica at that address" },
                        "address": { "type": "string" }, "mode": { "enum": ["RW", "WO", "ERR"] },
                        "rebuild": { "type": ["object", "null"], "description": "while rebuilt (WO)", "properties": {
                            "doneBytes": { "type": "integer" }, "totalBytes": { "type": "integer" },
                            "copiedBytes": { "type": "integer" }, "progress": { "type": "integer", "minimum": 0, "maximum": 100 } } },
                        "error": { "type": ["string", "null"] } } } },
                    "stats": { "type": ["object", "null"], "description": "null when the engine did not answer in time", "properties": {
                        "epoch": { "type": "integer" }, "uptimeMs": { "type": "integer" },
                        "readIops": { "type": "integer" }, "writeIops": { "type": "integer" },
                        "readThroughput": { "type": "integer", "description": "bytes/s" }, "writeThroughput": { "type": "integer", "description": "bytes/s" },
                        "readLatencyNs": { "type": "integer" }, "writeLatencyNs": { "type": "integer" } } } } },
                "Replica": { "type": "object", "properties": {
                    "id": { "type": "string" }, "volume": { "type": "string" }, "node": { "type": "string" },
                    "disk": { "type": "string" }, "mode": { "enum": ["RW", "WO", "ERR"] } } },
                "Snapshot": { "type": "object", "properties": {
                    "name": { "type": "string" }, "volume": { "type": "string" }, "createdAt": { "type": "integer" },
                    "size": { "type": "integer" }, "state": { "enum": ["pending", "ready", "deleting"] } } },
                "Backup": { "type": "object", "properties": {
                    "name": { "type": "string" }, "volume": { "type": "string" }, "snapshot": { "type": "string" },
                    "target": { "type": "string" },
                    "url": { "type": "string", "description": "<target>?backup=<name>&volume=<volume>" },
                    "state": { "enum": ["inProgress", "completed", "error"] },
                    "progress": { "type": "integer", "minimum": 0, "maximum": 100 },
                    "error": { "type": ["string", "null"] },
                    "base": { "type": ["string", "null"], "description": "the backup this one is incremental from" },
                    "size": { "type": "integer" }, "blocks": { "type": "integer" },
                    "uploadedBytes": { "type": "integer" }, "createdAt": { "type": "integer" },
                    "labels": { "type": "object" } } },
                "VerifyReport": { "type": "object", "properties": {
                    "name": { "type": "string" }, "volume": { "type": "string" }, "url": { "type": "string" },
                    "blocks": { "type": "integer" },
                    "bad": { "type": "array", "items": { "type": "object", "properties": {
                        "offset": { "type": "integer" }, "hash": { "type": "string" }, "reason": { "type": "string" } } } } } },
                "BackupVolume": { "type": "object", "properties": {
                    "name": { "type": "string" }, "backupCount": { "type": "integer" },
                    "lastBackup": { "type": ["string", "null"] }, "lastBackupAt": { "type": ["integer", "null"] },
                    "size": { "type": ["integer", "null"] }, "syncedAt": { "type": "integer" } } },
                "TargetBackup": { "type": "object", "properties": {
                    "name": { "type": "string" }, "volume": { "type": "string" }, "snapshot": { "type": "string" },
                    "size": { "type": "integer" }, "createdAt": { "type": "integer" }, "blocks": { "type": "integer" },
                    "labels": { "type": "object" }, "url": { "type": "string" } } },
                "RecurringJob": { "type": "object", "properties": {
                    "spec": { "type": "object", "description": "as created" },
                    "createdAt": { "type": "integer" },
                    "lastSlot": { "type": ["integer", "null"], "description": "the newest slot run (ms since the epoch)" },
                    "nextSlot": { "type": ["integer", "null"] },
                    "volumes": { "type": "array", "items": { "type": "string" }, "description": "the volumes it applies to now" },
                    "run": { "type": ["object", "null"], "description": "the run in progress: slot, pending, running, outcomes" },
                    "history": { "type": "array", "description": "finished runs, oldest first (recurringSuccessfulJobsHistoryLimit, recurringFailedJobsHistoryLimit)" },
                    "unchangedSince": { "type": "object" } } },
                "Setting": { "type": "object", "properties": {
                    "key": { "type": "string" }, "value": { "type": "string" }, "default": { "type": "string" } } }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_exactly_the_served_operations() {
        let doc = build();
        let mut listed = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in ["get", "post", "put", "delete", "patch"] {
                if item.get(method).is_some() {
                    listed.push((path.clone(), method.to_string()));
                }
            }
        }
        let mut served: Vec<(String, String)> = OPERATIONS
            .iter()
            .map(|(p, m)| (p.to_string(), m.to_string()))
            .collect();
        listed.sort();
        served.sort();
        assert_eq!(listed, served);
    }

    #[test]
    fn every_write_documents_the_idempotency_key_header() {
        let doc = build();
        let header = &doc["components"]["parameters"]["IdempotencyKey"];
        assert_eq!(header["name"], "Idempotency-Key");
        assert_eq!(header["in"], "header");
        for (path, method) in OPERATIONS {
            let parameters = doc["paths"][path][method]["parameters"].as_array();
            let documented = parameters.is_some_and(|p| {
                p.contains(&json!({ "$ref": "#/components/parameters/IdempotencyKey" }))
            });
            assert_eq!(
                documented,
                MUTATING.contains(method),
                "{method} {path}: {parameters:?}"
            );
        }
    }
}
