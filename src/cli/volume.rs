//! `shorthorn volume|snapshot|node|replica|setting`: the cluster's objects over the REST API.

use anyhow::Context;
use serde_json::{Value, json};

use super::client::{Client, Failure, Output, Target, print_table, text};
use crate::size::{display_size, format_size, parse_size};

#[derive(Debug, clap::Subcommand)]
pub enum VolumeCommand {
    /// Create a volume; its replicas are placed at once.
    Create {
        name: String,
        /// Size with Ki, Mi, Gi or Ti (a multiple of 2 MiB).
        #[arg(long)]
        size: String,
        /// Number of replicas (default: the defaultReplicaCount setting).
        #[arg(long)]
        replicas: Option<u8>,
        /// Minutes a failed replica is kept for a delta rebuild before it is replaced
        /// (default: the staleReplicaTimeout setting).
        #[arg(long)]
        stale_replica_timeout: Option<u64>,
    },
    /// List volumes.
    Ls,
    /// Show one volume.
    Get { name: String },
    /// Attach on a node under a new epoch.
    Attach {
        name: String,
        #[arg(long)]
        node: String,
    },
    /// Detach.
    Detach { name: String },
    /// Grow a volume.
    Expand {
        name: String,
        #[arg(long)]
        size: String,
    },
    /// Delete a detached volume and its replicas.
    Delete { name: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a volume.
    Create { volume: String, name: String },
    /// List a volume's snapshots.
    Ls { volume: String },
    /// Delete a snapshot.
    Delete { volume: String, name: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum SettingCommand {
    /// List every setting with its value and default.
    Ls,
    /// Show one setting.
    Get { key: String },
    /// Change a setting.
    Set { key: String, value: String },
}

pub fn volume(cmd: VolumeCommand, target: &Target) -> anyhow::Result<()> {
    let client = Client::connect(target)?;
    let shown = match cmd {
        VolumeCommand::Create {
            name,
            size,
            replicas,
            stale_replica_timeout,
        } => {
            let size = parse_size(&size).map_err(anyhow::Error::msg)?;
            let mut body = json!({ "name": name, "size": size });
            if let Some(replicas) = replicas {
                body["numberOfReplicas"] = json!(replicas);
            }
            if let Some(minutes) = stale_replica_timeout {
                body["staleReplicaTimeout"] = json!(minutes);
            }
            create_once(&client, &name, body)?
        }
        VolumeCommand::Ls => client.get("/v1/volumes")?,
        VolumeCommand::Get { name } => client.get(&format!("/v1/volumes/{name}"))?,
        VolumeCommand::Attach { name, node } => client.post(
            &format!("/v1/volumes/{name}/attach"),
            json!({ "node": node }),
        )?,
        VolumeCommand::Detach { name } => {
            client.post(&format!("/v1/volumes/{name}/detach"), json!({}))?
        }
        VolumeCommand::Expand { name, size } => {
            let size = parse_size(&size).map_err(anyhow::Error::msg)?;
            client.post(
                &format!("/v1/volumes/{name}/expand"),
                json!({ "size": size }),
            )?
        }
        VolumeCommand::Delete { name } => {
            client.delete(&format!("/v1/volumes/{name}"))?;
            println!("volume \"{name}\" is being deleted");
            return Ok(());
        }
    };
    show(
        target.output,
        &shown,
        &[
            "NAME",
            "SIZE",
            "REPLICAS",
            "STATE",
            "ROBUSTNESS",
            "NODE",
            "EPOCH",
            "CONDITION",
        ],
        |v| {
            vec![
                text(&v["name"]),
                v["size"].as_u64().map_or("-".into(), format_size),
                text(&v["numberOfReplicas"]),
                text(&v["state"]),
                text(&v["robustness"]),
                text(&v["attachment"]["node"]),
                text(&v["epoch"]),
                text(&v["condition"]),
            ]
        },
    )
}

pub fn snapshot(cmd: SnapshotCommand, target: &Target) -> anyhow::Result<()> {
    let client = Client::connect(target)?;
    let shown = match cmd {
        SnapshotCommand::Create { volume, name } => client.post(
            &format!("/v1/volumes/{volume}/snapshots"),
            json!({ "name": name }),
        )?,
        SnapshotCommand::Ls { volume } => client.get(&format!("/v1/volumes/{volume}/snapshots"))?,
        SnapshotCommand::Delete { volume, name } => {
            client.delete(&format!("/v1/volumes/{volume}/snapshots/{name}"))?;
            println!("snapshot \"{volume}/{name}\" deleted");
            return Ok(());
        }
    };
    show(
        target.output,
        &shown,
        &["VOLUME", "NAME", "SIZE", "CREATED (ms)"],
        |s| {
            vec![
                text(&s["volume"]),
                text(&s["name"]),
                s["size"].as_u64().map_or("-".into(), format_size),
                text(&s["createdAt"]),
            ]
        },
    )
}

pub fn nodes(target: &Target) -> anyhow::Result<()> {
    let client = Client::connect(target)?;
    let nodes = client.get("/v1/nodes")?;
    show(
        target.output,
        &nodes,
        &[
            "NODE",
            "ADDRESS",
            "ZONE",
            "SCHEDULABLE",
            "DISKS",
            "SCHEDULED",
            "CAPACITY",
        ],
        |n| {
            let disks = n["disks"].as_object().cloned().unwrap_or_default();
            let sum = |field: &str| {
                disks
                    .values()
                    .filter_map(|d| d[field].as_u64())
                    .sum::<u64>()
            };
            vec![
                text(&n["id"]),
                text(&n["address"]),
                text(&n["zone"]),
                text(&n["schedulable"]),
                disks.len().to_string(),
                display_size(sum("scheduled")),
                display_size(sum("capacity")),
            ]
        },
    )
}

pub fn replicas(target: &Target) -> anyhow::Result<()> {
    let client = Client::connect(target)?;
    let replicas = client.get("/v1/replicas")?;
    show(
        target.output,
        &replicas,
        &["REPLICA", "VOLUME", "NODE", "DISK", "MODE", "FAILURE"],
        |r| {
            vec![
                text(&r["id"]),
                text(&r["volume"]),
                text(&r["node"]),
                text(&r["disk"]),
                text(&r["mode"]),
                text(&r["failure"]),
            ]
        },
    )
}

pub fn setting(cmd: SettingCommand, target: &Target) -> anyhow::Result<()> {
    let client = Client::connect(target)?;
    let shown = match cmd {
        SettingCommand::Ls => client.get("/v1/settings")?,
        SettingCommand::Get { key } => client.get(&format!("/v1/settings/{key}"))?,
        SettingCommand::Set { key, value } => {
            client.put(&format!("/v1/settings/{key}"), json!({ "value": value }))?
        }
    };
    show(target.output, &shown, &["KEY", "VALUE", "DEFAULT"], |s| {
        vec![text(&s["key"]), text(&s["value"]), text(&s["default"])]
    })
}

/// Creates a volume and says definitely whether it was: the request is retried on the
/// other managers under one idempotency key until one answers (the cluster applies it at
/// most once and tells a retry the first outcome). Only when no manager answered at all in
/// time is the outcome unknown.
fn create_once(client: &Client, name: &str, body: Value) -> anyhow::Result<Value> {
    match client.post("/v1/volumes", body) {
        Ok(volume) => {
            eprintln!("volume \"{name}\" created");
            Ok(volume)
        }
        Err(err) => match err.downcast_ref::<Failure>() {
            Some(failure) if failure.status < 500 => Err(anyhow::anyhow!(
                "volume \"{name}\" was not created: {failure}"
            )),
            _ => Err(err.context(format!(
                "no manager answered in time: volume \"{name}\" may or may not be created; \
                 check with `shorthorn volume get {name}`"
            ))),
        },
    }
}

/// Prints an object or a list of objects: as JSON unchanged, or as a table of `row`s.
fn show(
    output: Output,
    value: &Value,
    headers: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> anyhow::Result<()> {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).context("printing JSON")?
        ),
        Output::Table => {
            let items = match value {
                Value::Array(items) => items.iter().map(row).collect(),
                one => vec![row(one)],
            };
            print_table(headers, items);
        }
    }
    Ok(())
}
