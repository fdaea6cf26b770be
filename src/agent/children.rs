//! The agent's child processes: spawning one with its log file, the record
//! (`process.json`) through which a restarted agent adopts it, and checking and stopping
//! it. It never decides which children should run or with what arguments: `replicas` and
//! `engines` do, from the log.

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::Agent;
use crate::process;

/// What the agent records about a child so a restarted agent can adopt it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) pid: i32,
    /// Replica: wire-protocol address. Engine: the NBD endpoint URI. Device: empty.
    pub(super) address: String,
    /// Engine: epoch and control address. Device: `control` is the frontend.
    #[serde(default)]
    pub(super) epoch: u64,
    #[serde(default)]
    pub(super) control: String,
    /// The engine image it was started from ("" = the agent's own binary).
    #[serde(default)]
    pub(super) image: String,
}

pub(super) struct Proc {
    pub(super) record: Record,
    pub(super) child: Option<Child>,
    /// Engine only: its control connection, made once and kept for the child's life.
    pub(super) control: tokio::sync::OnceCell<shorthorn_dataplane::control::ControlClient>,
}

impl Proc {
    pub(super) fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => process::is_shorthorn(self.record.pid),
        }
    }

    /// SIGTERM, then SIGKILL after 10 s. It blocks, so the runtime moves this thread's
    /// other tasks (Raft, the API) elsewhere meanwhile.
    pub(super) fn stop(&mut self) {
        tokio::task::block_in_place(|| {
            process::terminate(self.record.pid, Duration::from_secs(10));
            if let Some(child) = &mut self.child {
                let _ = child.wait();
            }
        });
    }
}

impl Agent {
    /// Picks up the children a previous run of this agent left running.
    pub(super) fn adopt(&mut self) {
        for (kind, root) in [
            ("replica", self.config.disk.join("replicas")),
            ("engine", self.config.disk.join("engines")),
        ] {
            let Ok(entries) = fs::read_dir(&root) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let Some(record) = read_record(&entry.path()) else {
                    continue;
                };
                if !process::is_shorthorn(record.pid) {
                    continue;
                }
                tracing::info!(kind, name, pid = record.pid, "adopted a running child");
                let proc = Proc {
                    record,
                    child: None,
                    control: Default::default(),
                };
                if kind == "replica" {
                    self.replicas.insert(name, proc);
                } else {
                    self.engines.insert(name, proc);
                }
            }
        }
    }
}

pub(super) fn spawn_logged(mut process: Process, log: &Path) -> anyhow::Result<Child> {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    process
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    process.spawn().context("spawning the child process")
}

pub(super) fn write_record(dir: &Path, record: &Record) -> anyhow::Result<()> {
    let path = dir.join("process.json");
    fs::write(&path, serde_json::to_vec(record)?)
        .with_context(|| format!("writing {}", path.display()))
}

pub(super) fn read_record(dir: &Path) -> Option<Record> {
    serde_json::from_slice(&fs::read(dir.join("process.json")).ok()?).ok()
}

/// A free TCP port on `host`, found by binding port 0.
pub(super) fn free_port(host: &str) -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((host, 0)).with_context(|| format!("finding a free port on {host}"))?;
    Ok(listener.local_addr()?.port())
}

/// Waits until `address` accepts connections; blocking, like [`Proc::stop`].
pub(super) fn wait_listening(address: &str, within: Duration) {
    let deadline = Instant::now() + within;
    tokio::task::block_in_place(|| {
        while std::net::TcpStream::connect(address).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

/// An error if `child` has already exited (it did not start), naming its log.
pub(super) fn still_running(child: &mut Child, log: &Path) -> anyhow::Result<()> {
    match child.try_wait()? {
        Some(status) => anyhow::bail!("it exited ({status}) at once; see {}", log.display()),
        None => Ok(()),
    }
}
