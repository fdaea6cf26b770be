//! `shorthorn job`: recurring snapshot and backup jobs over the REST API. Volumes join a
//! job with `shorthorn volume create --recurring-job JOB` or `shorthorn volume label VOL
//! recurring-job.shorthorn.io/JOB=enabled` (or a group, the same way).

use std::collections::BTreeMap;

use anyhow::Context;
use serde_json::{Value, json};

use super::backup::parse_label;
use super::client::{Client, Target, display_time, text};
use super::volume::show;

#[derive(Debug, clap::Subcommand)]
pub enum JobCommand {
    /// Create a recurring job.
    Create {
        /// At most 40 characters of a-z, 0-9 and '-'.
        name: String,
        /// snapshot, snapshot-cleanup, snapshot-delete, backup or backup-force-create.
        #[arg(long)]
        task: String,
        /// When it runs, in UTC: 5 fields (minute hour day-of-month month day-of-week) or 6
        /// with seconds first, e.g. "0 */6 * * *" or "*/30 * * * * *".
        #[arg(long)]
        cron: String,
        /// Snapshots or backups of each volume kept.
        #[arg(long, default_value_t = 1)]
        retain: u32,
        /// Volumes worked on at once.
        #[arg(long, default_value_t = 1)]
        concurrency: u32,
        /// A group the job belongs to; repeatable. `default` applies it to every volume that
        /// names no job and no group.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// A label KEY=VALUE put on what the job makes; repeatable.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// List recurring jobs.
    Ls,
    /// Show one job with its volumes, next slot and last runs.
    Get { name: String },
    /// Delete a job (its snapshots and backups are kept).
    Rm { name: String },
}

const COLUMNS: &[&str] = &[
    "NAME",
    "TASK",
    "CRON",
    "RETAIN",
    "CONCURRENCY",
    "GROUPS",
    "VOLUMES",
    "NEXT",
    "LAST RUN",
];

fn row(j: &Value) -> Vec<String> {
    let spec = &j["spec"];
    let join = |v: &Value| {
        v.as_array()
            .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".into())
    };
    vec![
        text(&spec["name"]),
        text(&spec["task"]),
        text(&spec["cron"]),
        text(&spec["retain"]),
        text(&spec["concurrency"]),
        join(&spec["groups"]),
        join(&j["volumes"]),
        display_time(&j["nextSlot"]),
        last_run(j),
    ]
}

/// "running" or the newest finished run's outcome counts ("2 done, 1 skipped").
fn last_run(j: &Value) -> String {
    if !j["run"].is_null() {
        return "running".into();
    }
    let Some(run) = j["history"].as_array().and_then(|h| h.last()) else {
        return "-".into();
    };
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for outcome in run["outcomes"]
        .as_object()
        .into_iter()
        .flat_map(|o| o.values())
    {
        *counts.entry(text(&outcome["result"])).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn job(cmd: JobCommand, target: &Target) -> anyhow::Result<()> {
    let client = Client::connect(target)?;
    let shown = match cmd {
        JobCommand::Create {
            name,
            task,
            cron,
            retain,
            concurrency,
            groups,
            labels,
        } => client
            .post(
                "/v1/recurringjobs",
                json!({
                    "name": name,
                    "task": task,
                    "cron": cron,
                    "retain": retain,
                    "concurrency": concurrency,
                    "groups": groups,
                    "labels": labels.into_iter().collect::<BTreeMap<_, _>>(),
                }),
            )
            .with_context(|| format!("creating recurring job \"{name}\""))?,
        JobCommand::Ls => client.get("/v1/recurringjobs")?,
        JobCommand::Get { name } => client.get(&format!("/v1/recurringjobs/{name}"))?,
        JobCommand::Rm { name } => {
            client.delete(&format!("/v1/recurringjobs/{name}"))?;
            println!("recurring job \"{name}\" deleted");
            return Ok(());
        }
    };
    show(target.output, &shown, COLUMNS, row)
}
