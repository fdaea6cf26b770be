//! `shorthorn upgrade`: live engine upgrades over the REST API. `upgrade volume NAME
//! --image PATH` moves one volume's engine and then its replicas to a new shorthorn binary
//! while it stays attached; `upgrade all --image PATH` starts the job that does it for
//! every volume (at most concurrentAutomaticEngineUpgradePerNodeLimit per node at once).

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use super::client::{Client, Output, Target, text};
use super::progress::Progress;
use super::volume::show;

#[derive(Debug, clap::Subcommand)]
pub enum UpgradeCommand {
    /// Upgrade one volume's engine and replicas to an engine image without detaching it.
    Volume {
        name: String,
        /// Absolute path of the new shorthorn binary, present on every node.
        #[arg(long)]
        image: String,
        /// Wait until the upgrade is done (or failed), showing its phase.
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait before failing.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Upgrade every volume to an engine image (needs
    /// concurrentAutomaticEngineUpgradePerNodeLimit > 0); stops at the first failure.
    All {
        #[arg(long)]
        image: String,
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Every volume's engine image and last upgrade, and the upgrade job.
    Status,
}

const COLUMNS: &[&str] = &["VOLUME", "IMAGE", "UPGRADE", "PHASE", "ERROR"];

fn row(v: &Value) -> Vec<String> {
    let upgrade = &v["upgrade"];
    let or_dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    vec![
        text(&v["volume"]),
        match text(&v["image"]) {
            image if image.is_empty() => "(node's own)".to_string(),
            image => image,
        },
        or_dash(text(&upgrade["image"])),
        phase(upgrade),
        or_dash(text(&upgrade["error"])),
    ]
}

/// "replica v-r2 (1 of 3 done)", "engine", "done", or "-".
fn phase(upgrade: &Value) -> String {
    let name = text(&upgrade["phase"]["phase"]);
    if name.is_empty() {
        return "-".into();
    }
    let done = upgrade["replicasDone"].as_array().map_or(0, Vec::len);
    match name.as_str() {
        "replica" => format!("replica {} ({done} done)", text(&upgrade["phase"]["id"])),
        "replicas" => format!("replicas ({done} done)"),
        _ => name,
    }
}

pub fn upgrade(cmd: UpgradeCommand, target: &Target) -> anyhow::Result<()> {
    let client = Client::connect(target)?;
    match cmd {
        UpgradeCommand::Volume {
            name,
            image,
            wait,
            timeout,
        } => {
            let started = client
                .post(
                    &format!("/v1/volumes/{name}/engine-upgrade"),
                    json!({ "image": image }),
                )
                .with_context(|| format!("upgrading the engine of volume \"{name}\""))?;
            let shown = if wait {
                await_volume(&client, &name, Duration::from_secs(timeout), target.output)?
            } else {
                started
            };
            show(target.output, &shown, COLUMNS, row)
        }
        UpgradeCommand::All {
            image,
            wait,
            timeout,
        } => {
            let started = client
                .post("/v1/engine-upgrades", json!({ "image": image }))
                .context("starting the engine upgrade job")?;
            let shown = if wait {
                await_job(&client, Duration::from_secs(timeout), target.output)?
            } else {
                started
            };
            show_job(target.output, &shown)
        }
        UpgradeCommand::Status => show_job(target.output, &client.get("/v1/engine-upgrades")?),
    }
}

fn show_job(output: Output, view: &Value) -> anyhow::Result<()> {
    if output == Output::Table {
        println!("{}", job_line(&view["job"]));
        return show(output, &view["volumes"], COLUMNS, row);
    }
    show(output, view, COLUMNS, row)
}

fn job_line(job: &Value) -> String {
    if job.is_null() {
        return "no engine upgrade job has run".into();
    }
    let total = job["volumes"].as_array().map_or(0, Vec::len);
    let done = job["done"].as_array().map_or(0, Vec::len);
    let state = match (&job["failed"], job["finishedAt"].is_null()) {
        (Value::Array(failed), true) => format!("stopping: {} failed", text(&failed[0])),
        (Value::Array(failed), false) => format!(
            "stopped: volume {} failed: {}",
            text(&failed[0]),
            text(&failed[1])
        ),
        (_, true) => "running".into(),
        (_, false) => "finished".into(),
    };
    format!(
        "engine upgrade job to {}: {state}, {done} of {total} volumes done",
        text(&job["image"])
    )
}

fn await_volume(
    client: &Client,
    name: &str,
    timeout: Duration,
    output: Output,
) -> anyhow::Result<Value> {
    let progress = Progress::spinner(output, format!("volume \"{name}\": upgrading"));
    let deadline = Instant::now() + timeout;
    loop {
        let view = client
            .get(&format!("/v1/volumes/{name}/engine-upgrade"))
            .with_context(|| format!("waiting for the engine upgrade of volume \"{name}\""))?;
        let upgrade = &view["upgrade"];
        match text(&upgrade["phase"]["phase"]).as_str() {
            "done" => return Ok(view),
            "failed" => anyhow::bail!(
                "the engine upgrade of volume \"{name}\" failed: {}; it runs {} again",
                text(&upgrade["error"]),
                if text(&upgrade["from"]).is_empty() {
                    "its node's own binary".to_string()
                } else {
                    text(&upgrade["from"])
                }
            ),
            _ => {}
        }
        progress.set_message(format!("volume \"{name}\": upgrading; {}", phase(upgrade)));
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the engine upgrade of volume \"{name}\" is not done after {} s: {}",
                timeout.as_secs(),
                phase(upgrade)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn await_job(client: &Client, timeout: Duration, output: Output) -> anyhow::Result<Value> {
    let progress = Progress::spinner(output, "engine upgrade job".to_string());
    let deadline = Instant::now() + timeout;
    loop {
        let view = client
            .get("/v1/engine-upgrades")
            .context("waiting for the engine upgrade job")?;
        let job = &view["job"];
        if !job["finishedAt"].is_null() {
            if let Value::Array(failed) = &job["failed"] {
                anyhow::bail!(
                    "the engine upgrade job stopped: volume {} failed: {}",
                    text(&failed[0]),
                    text(&failed[1])
                );
            }
            return Ok(view);
        }
        progress.set_message(job_line(job));
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the engine upgrade job is not done after {} s: {}",
                timeout.as_secs(),
                job_line(job)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
