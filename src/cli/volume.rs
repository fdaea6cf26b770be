//! `shorthorn volume|snapshot|node|replica|setting`: the cluster's objects over the REST API.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use super::client::{Client, Failure, Output, Target, display_time, print_table, text};
use super::progress::{Goal, Progress, await_volume};
use super::watch::{Flow, follow, next_index};
use crate::size::{display_size, format_size, parse_size};

#[derive(Debug, clap::Subcommand)]
pub enum VolumeCommand {
    /// Create a volume; its replicas are placed at once.
    Create {
        name: String,
        /// Size with Ki, Mi, Gi or Ti (a multiple of 2 MiB); with --from-backup,
        /// --from-snapshot or --clone at least the source's (its size by default).
        #[arg(long, required_unless_present_any = ["from_backup", "from_snapshot", "clone"])]
        size: Option<String>,
        /// Restore the new volume from this backup: the URL `shorthorn backup get` prints
        /// (`<target>?backup=<name>&volume=<volume>`). With --wait, waits until restored.
        /// With --standby, a backup volume URL (`<target>?volume=<volume>`) starts from
        /// its newest backup.
        #[arg(long, conflicts_with_all = ["from_snapshot", "clone"])]
        from_backup: Option<String>,
        /// A disaster-recovery standby: it follows the backup volume of --from-backup,
        /// restoring each newer backup incrementally, and cannot be attached, snapshotted
        /// or backed up until `shorthorn volume activate`.
        #[arg(long, requires = "from_backup")]
        standby: bool,
        /// Copy the new volume from snapshot SNAP of volume VOL (`VOL/SNAP`): it can be
        /// attached once the copy completed. With --wait, waits until copied.
        #[arg(long, value_name = "VOL/SNAP", conflicts_with = "clone")]
        from_snapshot: Option<String>,
        /// Clone volume VOL as it is now: a snapshot of it (`clone-<name>`, kept on VOL) is
        /// taken and copied into the new volume. With --wait, waits until copied.
        #[arg(long, value_name = "VOL")]
        clone: Option<String>,
        /// Number of replicas (default: the defaultReplicaCount setting).
        #[arg(long)]
        replicas: Option<u8>,
        /// Minutes a failed replica is kept for a delta rebuild before it is replaced
        /// (default: the staleReplicaTimeout setting).
        #[arg(long)]
        stale_replica_timeout: Option<u64>,
        /// A label KEY=VALUE; repeatable.
        #[arg(long = "label", value_parser = super::backup::parse_label)]
        labels: Vec<(String, String)>,
        /// Join this recurring job (the label recurring-job.shorthorn.io/JOB=enabled);
        /// repeatable.
        #[arg(long = "recurring-job")]
        recurring_jobs: Vec<String>,
        /// Join this recurring job group (recurring-job-group.shorthorn.io/GROUP=enabled);
        /// repeatable.
        #[arg(long = "recurring-job-group")]
        recurring_job_groups: Vec<String>,
        /// Wait until every replica is placed (and, restoring or copying, until that
        /// completed, with a progress bar).
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait before failing (default: 120, 3600 for a restore or
        /// a copy).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// List volumes.
    Ls,
    /// Show one volume.
    Get { name: String },
    /// Attach on a node under a new epoch; waits until the engine serves and prints its
    /// NBD URI, or with --frontend the kernel block device (e.g. /dev/loop3).
    Attach {
        name: String,
        /// Node to attach on (default: the node named like this host, or the only node).
        #[arg(long)]
        node: Option<String>,
        /// none: only the NBD endpoint for userspace clients; auto: a kernel block device
        /// through what the node's kernel offers (the blockDeviceFrontend setting can force
        /// one); fuse: FUSE file + loop device; nbd: the kernel NBD client.
        #[arg(long, default_value = "none", value_parser = ["none", "auto", "fuse", "nbd"])]
        frontend: String,
        #[command(flatten)]
        wait: Waiting,
    },
    /// Activate a disaster-recovery standby: what is newer in its backup volume is
    /// restored, then it becomes a normal volume, detached, that can be attached.
    Activate {
        name: String,
        /// Wait until it is activated (and detached).
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait before failing.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Detach; waits until the engine stopped.
    Detach {
        name: String,
        #[command(flatten)]
        wait: Waiting,
    },
    /// Wait until a volume is healthy (e.g. a rebuild finished), attached, detached or
    /// deleted, showing its progress.
    Wait {
        name: String,
        /// The state to wait for.
        #[arg(long = "for", value_enum)]
        goal: Goal,
        /// Seconds to wait before failing.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Change a volume's replica count (replicas are added or removed at once), data
    /// locality or stale replica timeout.
    Update {
        name: String,
        #[arg(long)]
        replicas: Option<u8>,
        /// disabled or best-effort.
        #[arg(long)]
        data_locality: Option<String>,
        /// Minutes a failed replica is kept for a delta rebuild before it is replaced.
        #[arg(long)]
        stale_replica_timeout: Option<u64>,
    },
    /// Grow a volume.
    Expand {
        name: String,
        #[arg(long)]
        size: String,
    },
    /// Delete a detached volume and its replicas.
    Delete { name: String },
    /// Set (KEY=VALUE) or remove (KEY-) labels; `recurring-job.shorthorn.io/JOB=enabled`
    /// joins a recurring job, `recurring-job-group.shorthorn.io/GROUP=enabled` a group.
    Label {
        name: String,
        #[arg(required = true)]
        changes: Vec<String>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a volume.
    Create { volume: String, name: String },
    /// List a volume's snapshots.
    Ls { volume: String },
    /// Delete a snapshot.
    Delete { volume: String, name: String },
    /// Revert a volume to a snapshot (newer snapshots are dropped); waits for its engine.
    Revert {
        volume: String,
        name: String,
        /// Seconds to wait for the engine before failing.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
}

/// How a command that starts a change waits for it.
#[derive(Debug, clap::Args)]
pub struct Waiting {
    /// Return at once instead of waiting for the change.
    #[arg(long)]
    no_wait: bool,
    /// Seconds to wait before failing.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
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
            from_backup,
            standby,
            from_snapshot,
            clone,
            replicas,
            stale_replica_timeout,
            labels,
            recurring_jobs,
            recurring_job_groups,
            wait,
            timeout,
        } => {
            let mut body = json!({ "name": name });
            if standby {
                body["standby"] = json!(true);
            }
            let labels = volume_labels(labels, &recurring_jobs, &recurring_job_groups);
            if !labels.is_empty() {
                body["labels"] = json!(labels);
            }
            if let Some(size) = size {
                body["size"] = json!(parse_size(&size).map_err(anyhow::Error::msg)?);
            }
            let source = match (&from_snapshot, &clone) {
                (Some(path), _) => {
                    let Some((volume, snapshot)) = path
                        .split_once('/')
                        .filter(|(v, s)| !v.is_empty() && !s.is_empty())
                    else {
                        anyhow::bail!(
                            "--from-snapshot takes VOLUME/SNAPSHOT (as `shorthorn snapshot ls VOLUME` lists them), not \"{path}\""
                        );
                    };
                    Some(json!({ "volume": volume, "snapshot": snapshot }))
                }
                (None, Some(volume)) => Some(json!({ "volume": volume })),
                (None, None) => None,
            };
            let goal = match (&from_backup, source) {
                (Some(url), _) => {
                    body["fromBackup"] = json!(url);
                    Goal::Restored
                }
                (None, Some(source)) => {
                    body["dataSource"] = source;
                    Goal::Restored
                }
                (None, None) => Goal::Scheduled,
            };
            let timeout = timeout.unwrap_or(if goal == Goal::Restored { 3600 } else { 120 });
            if let Some(replicas) = replicas {
                body["numberOfReplicas"] = json!(replicas);
            }
            if let Some(minutes) = stale_replica_timeout {
                body["staleReplicaTimeout"] = json!(minutes);
            }
            let created = create_once(&client, &name, body)?;
            if !wait {
                created
            } else {
                await_volume(
                    &client,
                    &name,
                    goal,
                    Duration::from_secs(timeout),
                    target.output,
                )
                .with_context(|| match goal {
                    Goal::Restored if from_backup.is_none() => {
                        format!("volume \"{name}\" was created; it is not copied")
                    }
                    Goal::Restored => format!("volume \"{name}\" was created; it is not restored"),
                    _ => format!("volume \"{name}\" was created; its replicas are not all placed"),
                })?
            }
        }
        VolumeCommand::Ls => client.get("/v1/volumes")?,
        VolumeCommand::Get { name } => client.get(&format!("/v1/volumes/{name}"))?,
        VolumeCommand::Attach {
            name,
            node,
            frontend,
            wait,
        } => {
            let node = match node {
                Some(node) => node,
                None => default_node(&client)?,
            };
            let attaching = client
                .post(
                    &format!("/v1/volumes/{name}/attach"),
                    json!({ "node": node, "frontend": frontend }),
                )
                .with_context(|| format!("attaching volume \"{name}\" on {node}"))?;
            if wait.no_wait {
                attaching
            } else {
                let timeout = Duration::from_secs(wait.timeout);
                let attached = await_volume(&client, &name, Goal::Attached, timeout, target.output)
                    .with_context(|| format!("attaching volume \"{name}\" on {node}"))?;
                if target.output == Output::Table {
                    eprintln!(
                        "volume \"{name}\" attached on {node} under epoch {}",
                        text(&attached["epoch"])
                    );
                    let printed = match &attached["attachment"]["device"] {
                        Value::String(device) => device.clone(),
                        _ => text(&attached["attachment"]["endpoint"]),
                    };
                    println!("{printed}");
                    return Ok(());
                }
                attached
            }
        }
        VolumeCommand::Activate {
            name,
            wait,
            timeout,
        } => {
            let activating = client
                .post(&format!("/v1/volumes/{name}/activate"), json!({}))
                .with_context(|| format!("activating volume \"{name}\""))?;
            if !wait {
                activating
            } else {
                let activated =
                    await_activation(&client, &name, Duration::from_secs(timeout), target.output)?;
                if target.output == Output::Table {
                    let dr = &activated["dr"];
                    println!(
                        "volume \"{name}\" activated with backup \"{}\"{}",
                        text(&dr["lastRestored"]),
                        dr["activationNote"]
                            .as_str()
                            .map(|n| format!(" ({n})"))
                            .unwrap_or_default()
                    );
                    return Ok(());
                }
                activated
            }
        }
        VolumeCommand::Detach { name, wait } => {
            let detaching = client
                .post(&format!("/v1/volumes/{name}/detach"), json!({}))
                .with_context(|| format!("detaching volume \"{name}\""))?;
            if wait.no_wait {
                detaching
            } else {
                let timeout = Duration::from_secs(wait.timeout);
                let detached = await_volume(&client, &name, Goal::Detached, timeout, target.output)
                    .with_context(|| format!("detaching volume \"{name}\""))?;
                if target.output == Output::Table {
                    println!("volume \"{name}\" detached");
                    return Ok(());
                }
                detached
            }
        }
        VolumeCommand::Wait {
            name,
            goal,
            timeout,
        } => {
            let reached = await_volume(
                &client,
                &name,
                goal,
                Duration::from_secs(timeout),
                target.output,
            )?;
            if target.output == Output::Table || goal == Goal::Deleted {
                println!("volume \"{name}\" is {}", goal.name());
                return Ok(());
            }
            reached
        }
        VolumeCommand::Expand { name, size } => {
            let size = parse_size(&size).map_err(anyhow::Error::msg)?;
            client.post(
                &format!("/v1/volumes/{name}/expand"),
                json!({ "size": size }),
            )?
        }
        VolumeCommand::Update {
            name,
            replicas,
            data_locality,
            stale_replica_timeout,
        } => {
            let mut body = json!({});
            if let Some(n) = replicas {
                body["numberOfReplicas"] = json!(n);
            }
            if let Some(locality) = data_locality {
                body["dataLocality"] = json!(locality);
            }
            if let Some(minutes) = stale_replica_timeout {
                body["staleReplicaTimeout"] = json!(minutes);
            }
            anyhow::ensure!(
                body.as_object().is_some_and(|b| !b.is_empty()),
                "nothing to change: give --replicas, --data-locality or --stale-replica-timeout"
            );
            client.post(&format!("/v1/volumes/{name}/update"), body)?
        }
        VolumeCommand::Delete { name } => {
            client.delete(&format!("/v1/volumes/{name}"))?;
            println!("volume \"{name}\" is being deleted");
            return Ok(());
        }
        VolumeCommand::Label { name, changes } => {
            let current = client.get(&format!("/v1/volumes/{name}"))?;
            let mut labels: std::collections::BTreeMap<String, String> =
                serde_json::from_value(current["labels"].clone()).unwrap_or_default();
            for change in &changes {
                if let Some(key) = change.strip_suffix('-').filter(|k| !k.contains('=')) {
                    labels.remove(key);
                } else {
                    let (key, value) =
                        super::backup::parse_label(change).map_err(anyhow::Error::msg)?;
                    labels.insert(key, value);
                }
            }
            client.post(
                &format!("/v1/volumes/{name}/update"),
                json!({ "labels": labels }),
            )?
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
                condition(v),
            ]
        },
    )
}

/// Waits until standby `name` is activated and its following engine stopped.
fn await_activation(
    client: &Client,
    name: &str,
    timeout: Duration,
    output: Output,
) -> anyhow::Result<Value> {
    let progress = Progress::spinner(output, format!("volume \"{name}\": activating"));
    let deadline = Instant::now() + timeout;
    loop {
        let volume = client
            .get(&format!("/v1/volumes/{name}"))
            .with_context(|| format!("waiting for volume \"{name}\" to be activated"))?;
        if volume["standby"] == json!(false) && text(&volume["state"]) == "detached" {
            return Ok(volume);
        }
        progress.set_message(format!(
            "volume \"{name}\": activating; {}",
            standby_status(&volume)
        ));
        if Instant::now() >= deadline {
            anyhow::bail!(
                "volume \"{name}\" is not activated after {} s: {}",
                timeout.as_secs(),
                standby_status(&volume)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Where a standby is: the backup its data is, how old that is, what it restores now
/// and why the last poll failed.
fn standby_status(volume: &Value) -> String {
    let dr = &volume["dr"];
    let restore = &volume["restore"];
    if restore["state"] == json!("inProgress") {
        return format!("first restore ({}%)", text(&restore["progress"]));
    }
    let mut parts = vec![format!("at backup {}", text(&dr["lastRestored"]))];
    if let Some(created) = dr["lastRestoredCreated"].as_u64().filter(|c| *c > 0) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        parts.push(format!(
            "{:.0} s behind",
            now.saturating_sub(created) as f64 / 1000.0
        ));
    }
    if let Some(next) = dr["restoring"].as_str() {
        parts.push(format!("restoring {next}"));
    }
    if let Some(error) = dr["error"].as_str() {
        parts.push(format!("error: {error}"));
    }
    parts.join(", ")
}

/// The volume's condition, or where its restore is while it is not completed.
fn condition(volume: &Value) -> String {
    if volume["standby"] == json!(true) {
        return format!("standby {}", standby_status(volume));
    }
    let restore = &volume["restore"];
    let (doing, _) = super::progress::restore_source(restore);
    match restore["state"].as_str() {
        Some("inProgress") if doing == "copy" => {
            format!("copying ({}%)", text(&restore["progress"]))
        }
        Some("inProgress") => format!("restoring ({}%)", text(&restore["progress"])),
        Some("error") => format!("{doing} failed: {}", text(&restore["error"])),
        _ => text(&volume["condition"]),
    }
}

pub fn snapshot(cmd: SnapshotCommand, target: &Target) -> anyhow::Result<()> {
    let client = Client::connect(target)?;
    let shown = match cmd {
        SnapshotCommand::Create { volume, name } => client.post(
            &format!("/v1/volumes/{volume}/snapshots"),
            json!({ "name": name }),
        )?,
        SnapshotCommand::Ls { volume } => client.get(&format!("/v1/volumes/{volume}/snapshots"))?,
        SnapshotCommand::Revert {
            volume,
            name,
            timeout,
        } => {
            let reverted = revert(&client, target, &volume, &name, timeout)?;
            if target.output == Output::Table {
                println!("volume \"{volume}\" reverted to snapshot \"{name}\"");
                return Ok(());
            }
            println!("{}", serde_json::to_string_pretty(&reverted)?);
            return Ok(());
        }
        SnapshotCommand::Delete { volume, name } => {
            client.delete(&format!("/v1/volumes/{volume}/snapshots/{name}"))?;
            println!("snapshot \"{volume}/{name}\" deleted");
            return Ok(());
        }
    };
    show(
        target.output,
        &shown,
        &["VOLUME", "NAME", "SIZE", "STATE", "CREATED", "ERROR"],
        |s| {
            vec![
                text(&s["volume"]),
                text(&s["name"]),
                s["size"].as_u64().map_or("-".into(), format_size),
                text(&s["state"]),
                display_time(&s["createdAt"]),
                text(&s["error"]),
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
            "READY",
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
                text(&n["ready"]),
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

/// Reverts `volume` to snapshot `name` with a spinner, and returns the volume once its
/// engine reverted. The server waits for the engine a while; when it answers before the
/// engine did (the volume still shows `revertTo`), the outcome is read from the event log,
/// followed from before the request.
fn revert(
    client: &Client,
    target: &Target,
    volume: &str,
    name: &str,
    timeout: u64,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let from = next_index(client)?;
    let _spinner = Progress::spinner(
        target.output,
        format!("reverting volume \"{volume}\" to snapshot \"{name}\""),
    );
    let answered = client.post(
        &format!("/v1/volumes/{volume}/snapshots/{name}/revert"),
        json!({}),
    )?;
    if answered["revertTo"].as_str() != Some(name) {
        return Ok(answered);
    }
    let mut outcome = None;
    follow(target, from, Some(deadline), |_, event| {
        let about = event["volume"] == volume && event["name"] == name;
        outcome = match event["type"].as_str() {
            Some("snapshotReverted") if about => Some(Ok(())),
            Some("revertFailed") if about => Some(Err(text(&event["reason"]))),
            Some("volumeDetached") if event["name"] == volume => Some(Err(
                "the volume was detached before its engine reverted it".to_string(),
            )),
            _ => None,
        };
        Ok(if outcome.is_some() {
            Flow::Stop
        } else {
            Flow::Continue
        })
    })?;
    match outcome {
        Some(Ok(())) => client.get(&format!("/v1/volumes/{volume}")),
        Some(Err(reason)) => Err(anyhow::anyhow!(
            "volume \"{volume}\" was not reverted to snapshot \"{name}\": {reason}"
        )),
        None => Err(anyhow::anyhow!(
            "volume \"{volume}\" is still waiting for its engine to revert to snapshot \"{name}\" \
             after {timeout} s; follow it with `shorthorn watch --volume {volume}`"
        )),
    }
}

/// The node to attach on when none is given: the one named like this host, or the only one.
fn default_node(client: &Client) -> anyhow::Result<String> {
    let nodes = client.get("/v1/nodes")?;
    let ids: Vec<String> = nodes
        .as_array()
        .map(|all| all.iter().map(|n| text(&n["id"])).collect())
        .unwrap_or_default();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if ids.contains(&host) {
        return Ok(host);
    }
    match ids.as_slice() {
        [only] => Ok(only.clone()),
        _ => anyhow::bail!(
            "pass --node: no node is named like this host (\"{host}\"); the nodes are {}",
            ids.join(", ")
        ),
    }
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
pub(super) fn show(
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

/// The labels of a new volume: `--label`s, and one per recurring job and group it joins.
fn volume_labels(
    labels: Vec<(String, String)>,
    jobs: &[String],
    groups: &[String],
) -> std::collections::BTreeMap<String, String> {
    let mut out: std::collections::BTreeMap<String, String> = labels.into_iter().collect();
    for job in jobs {
        out.insert(
            format!("{}{job}", shorthorn_state::JOB_VOLUME_LABEL_PREFIX),
            "enabled".into(),
        );
    }
    for group in groups {
        out.insert(
            format!("{}{group}", shorthorn_state::GROUP_VOLUME_LABEL_PREFIX),
            "enabled".into(),
        );
    }
    out
}
