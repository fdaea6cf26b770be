//! `shorthorn backup`: back volumes up to the backup target, list, delete and verify
//! backups, and list the backup volumes on the target (those of other clusters too), over
//! the REST API. Restoring is `shorthorn volume create NEW --from-backup URL`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use shorthorn_dataplane::backup::parse_backup_url;

use super::client::{Client, Output, Target, display_time, print_table, text};
use super::progress::Progress;
use super::volume::show;
use crate::size::{display_size, format_size};

#[derive(Debug, clap::Subcommand)]
pub enum BackupCommand {
    /// Back up a snapshot of an attached volume (a new snapshot, named like the backup,
    /// when none is named).
    Create {
        volume: String,
        /// The backup's name (default: backup-XXXXXXXX).
        #[arg(long)]
        name: Option<String>,
        /// The snapshot to back up.
        #[arg(long)]
        snapshot: Option<String>,
        /// A label KEY=VALUE kept with the backup; repeatable.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Wait until the backup completed, with a progress bar.
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait before failing.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// List this cluster's backups, of one volume or of all.
    Ls { volume: Option<String> },
    /// Show one backup.
    Get { name: String },
    /// Delete a backup from the target and from the cluster.
    Rm { name: String },
    /// Read every block of a backup from the target and check it; names each bad block
    /// and fails when there is one. NAME is this cluster's backup, or a backup URL on the
    /// backup target (another cluster's too).
    Verify { name: String },
    /// The backup volumes on the target, including those other clusters wrote.
    #[command(subcommand)]
    Volume(BackupVolumeCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum BackupVolumeCommand {
    /// List the backup volumes on the target.
    Ls {
        /// Show the log's copy (the leader syncs it every backupstorePollInterval seconds)
        /// instead of reading the target.
        #[arg(long)]
        synced: bool,
    },
    /// List the backups of one backup volume on the target, with their URLs.
    Get { name: String },
}

pub(super) fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

const COLUMNS: &[&str] = &[
    "NAME", "VOLUME", "SNAPSHOT", "STATE", "PROGRESS", "SIZE", "BLOCKS", "UPLOADED", "CREATED",
    "ERROR",
];

fn row(b: &Value) -> Vec<String> {
    vec![
        text(&b["name"]),
        text(&b["volume"]),
        text(&b["snapshot"]),
        text(&b["state"]),
        format!("{}%", text(&b["progress"])),
        b["size"].as_u64().map_or("-".into(), format_size),
        text(&b["blocks"]),
        b["uploadedBytes"].as_u64().map_or("-".into(), display_size),
        display_time(&b["createdAt"]),
        text(&b["error"]),
    ]
}

pub fn backup(cmd: BackupCommand, target: &Target) -> anyhow::Result<()> {
    let client = Client::connect(target)?;
    let shown = match cmd {
        BackupCommand::Create {
            volume,
            name,
            snapshot,
            labels,
            wait,
            timeout,
        } => {
            let mut body = json!({ "volume": volume });
            if let Some(name) = name {
                body["name"] = json!(name);
            }
            if let Some(snapshot) = snapshot {
                body["snapshot"] = json!(snapshot);
            }
            if !labels.is_empty() {
                body["labels"] = json!(labels.into_iter().collect::<BTreeMap<_, _>>());
            }
            let created = client
                .post("/v1/backups", body)
                .with_context(|| format!("backing up volume \"{volume}\""))?;
            let name = text(&created["name"]);
            eprintln!("backup \"{name}\" of volume \"{volume}\" started");
            if wait {
                await_backup(&client, &name, Duration::from_secs(timeout), target.output)?
            } else {
                created
            }
        }
        BackupCommand::Ls { volume } => match volume {
            Some(volume) => client.get(&format!("/v1/backups?volume={volume}"))?,
            None => client.get("/v1/backups")?,
        },
        BackupCommand::Get { name } => client.get(&format!("/v1/backups/{name}"))?,
        BackupCommand::Rm { name } => {
            client.delete(&format!("/v1/backups/{name}"))?;
            println!("backup \"{name}\" deleted");
            return Ok(());
        }
        BackupCommand::Verify { name } => return verify(&client, &name, target.output),
        BackupCommand::Volume(BackupVolumeCommand::Ls { synced }) => {
            let volumes = match synced {
                true => client.get("/v1/backupvolumes?synced=true")?,
                false => client.get("/v1/backupvolumes")?,
            };
            return show(
                target.output,
                &volumes,
                &["NAME", "BACKUPS", "LAST BACKUP", "AT", "SIZE"],
                |v| {
                    vec![
                        text(&v["name"]),
                        text(&v["backupCount"]),
                        text(&v["lastBackup"]),
                        display_time(&v["lastBackupAt"]),
                        v["size"].as_u64().map_or("-".into(), format_size),
                    ]
                },
            );
        }
        BackupCommand::Volume(BackupVolumeCommand::Get { name }) => {
            let backups = client.get(&format!("/v1/backupvolumes/{name}"))?;
            return show(
                target.output,
                &backups,
                &["NAME", "SNAPSHOT", "SIZE", "BLOCKS", "CREATED", "URL"],
                |b| {
                    vec![
                        text(&b["name"]),
                        text(&b["snapshot"]),
                        b["size"].as_u64().map_or("-".into(), format_size),
                        text(&b["blocks"]),
                        display_time(&b["createdAt"]),
                        text(&b["url"]),
                    ]
                },
            );
        }
    };
    show(target.output, &shown, COLUMNS, row)
}

/// Polls backup `name` until it completed, with a bar of its percent; fails with the
/// backup's reason when it failed, and after `timeout`.
fn await_backup(
    client: &Client,
    name: &str,
    timeout: Duration,
    output: Output,
) -> anyhow::Result<Value> {
    let bar = Progress::bar(output, 100);
    let deadline = Instant::now() + timeout;
    loop {
        let backup = client
            .get(&format!("/v1/backups/{name}"))
            .with_context(|| format!("waiting for backup \"{name}\""))?;
        let progress = backup["progress"].as_u64().unwrap_or(0);
        bar.set(progress, 100);
        bar.set_message(format!(
            "backup \"{name}\": {} blocks, {} uploaded",
            text(&backup["blocks"]),
            backup["uploadedBytes"]
                .as_u64()
                .map_or("-".into(), display_size)
        ));
        match backup["state"].as_str() {
            Some("completed") => {
                drop(bar);
                if output == Output::Table {
                    eprintln!("backup \"{name}\" completed: {}", text(&backup["url"]));
                }
                return Ok(backup);
            }
            Some("error") => anyhow::bail!("backup \"{name}\" failed: {}", text(&backup["error"])),
            _ => {}
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "backup \"{name}\" is still in progress ({progress}%) after {} s; follow it with `shorthorn backup get {name}`",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn verify(client: &Client, name: &str, output: Output) -> anyhow::Result<()> {
    let (path, body) = if name.contains('?') {
        let (target, volume, backup) =
            parse_backup_url(name).map_err(|e| anyhow::anyhow!("{e}"))?;
        let current = client.get("/v1/settings/backupTarget")?;
        anyhow::ensure!(
            current["value"] == target.as_str(),
            "{name} is not on the backup target ({}); only backups there can be verified",
            text(&current["value"])
        );
        (
            format!("/v1/backupvolumes/{volume}/verify?progress=true"),
            json!({ "backup": backup }),
        )
    } else {
        (
            format!("/v1/backups/{name}/verify?progress=true"),
            json!({}),
        )
    };
    // Progress lines until the report (or the error that ended the verification).
    let bar = Progress::bar(output, 0);
    bar.set_message(format!("blocks of backup \"{name}\" checked"));
    let mut outcome = None;
    client.post_lines(&path, body, |line| {
        if let (Some(checked), Some(blocks)) = (line["checked"].as_u64(), line["blocks"].as_u64()) {
            bar.set(checked, blocks);
        } else {
            outcome = Some(line);
        }
    })?;
    drop(bar);
    let outcome = outcome
        .ok_or_else(|| anyhow::anyhow!("the manager ended the verification without a report"))?;
    if let Some(kind) = outcome["error"].as_str() {
        anyhow::bail!(
            "verifying backup \"{name}\" failed ({kind}): {}",
            text(&outcome["message"])
        );
    }
    let report = outcome["report"].clone();
    let bad = report["bad"].as_array().cloned().unwrap_or_default();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table if bad.is_empty() => println!(
            "backup \"{name}\": all {} blocks are good",
            text(&report["blocks"])
        ),
        Output::Table => print_table(
            &["OFFSET", "BLAKE3", "REASON"],
            bad.iter()
                .map(|b| vec![text(&b["offset"]), text(&b["hash"]), text(&b["reason"])])
                .collect(),
        ),
    }
    anyhow::ensure!(
        bad.is_empty(),
        "backup \"{name}\" has {} bad block{} of {}; a restore of it fails",
        bad.len(),
        if bad.len() == 1 { "" } else { "s" },
        text(&report["blocks"])
    );
    Ok(())
}
