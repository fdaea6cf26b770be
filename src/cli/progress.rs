//! Waiting for a volume to reach a state, with progress on stderr: a spinner showing the
//! state it is in, or for `healthy` a bar of read-write replicas. Drawn only on a terminal
//! and never with `-o json`, so scripts get clean output. Waiting only reads the REST API.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use super::client::{Client, Failure, Output, text};

/// How often the volume is read while waiting.
const POLL: Duration = Duration::from_millis(500);

/// What a volume is waited for to become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Goal {
    /// As many read-write replicas as asked: a rebuild finished.
    Healthy,
    /// Its engine serves I/O on the attachment's endpoint.
    Attached,
    /// No engine.
    Detached,
    /// Gone, with its replicas.
    Deleted,
    /// Every replica placed (no scheduling condition); for `volume create --wait`.
    #[value(skip)]
    Scheduled,
    /// Its restore from a backup (or copy from a snapshot: `copied` is the same) completed
    /// and the restoring engine stopped: it can be attached.
    #[value(alias = "copied")]
    Restored,
}

impl Goal {
    pub fn name(self) -> &'static str {
        match self {
            Goal::Healthy => "healthy",
            Goal::Attached => "attached",
            Goal::Detached => "detached",
            Goal::Deleted => "deleted",
            Goal::Scheduled => "scheduled",
            Goal::Restored => "restored",
        }
    }
}

/// A spinner or a bar on stderr, hidden off a terminal and with `-o json`.
pub struct Progress(ProgressBar);

impl Progress {
    /// A spinner showing `message` and the time spent.
    pub fn spinner(output: Output, message: impl Into<Cow<'static, str>>) -> Progress {
        let bar = ProgressBar::with_draw_target(None, draw_target(output));
        bar.set_style(style(
            "{spinner} {msg} ({elapsed})",
            ProgressStyle::default_spinner,
        ));
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress(bar)
    }

    /// A bar of `done` out of `len`, with a message after it.
    pub fn bar(output: Output, len: u64) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(len), draw_target(output));
        bar.set_style(style(
            "{spinner} [{bar:20}] {pos}/{len} {msg} ({elapsed})",
            ProgressStyle::default_bar,
        ));
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress(bar)
    }

    pub fn set_message(&self, message: impl Into<Cow<'static, str>>) {
        self.0.set_message(message);
    }

    pub fn set(&self, done: u64, len: u64) {
        self.0.set_length(len);
        self.0.set_position(done);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

fn draw_target(output: Output) -> ProgressDrawTarget {
    if output == Output::Json || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    }
}

fn style(template: &str, fallback: fn() -> ProgressStyle) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| fallback())
}

/// Whether an error is the manager's 404.
pub fn is_not_found(err: &anyhow::Error) -> bool {
    err.downcast_ref::<Failure>()
        .is_some_and(|failure| failure.status == 404)
}

/// Where a volume is, as one poll saw it.
struct Seen {
    done: bool,
    /// The state shown in the spinner and in a timeout error.
    describe: String,
    /// For `healthy`: read-write replicas, replicas asked, and every replica's mode; for
    /// `restored`: percent done, 100, and where from.
    bar: Option<(u64, u64, String)>,
}

/// Polls volume `name` until it reaches `goal`, showing progress; returns the volume as last
/// read (`Value::Null` once deleted). Fails at once when the volume does not exist (unless
/// waited for `deleted`), and after `timeout` with the state it is stuck in and its
/// condition.
pub fn await_volume(
    client: &Client,
    name: &str,
    goal: Goal,
    timeout: Duration,
    output: Output,
) -> anyhow::Result<Value> {
    let progress = match goal {
        Goal::Healthy => Progress::bar(output, 0),
        Goal::Restored => Progress::bar(output, 100),
        _ => Progress::spinner(output, format!("volume \"{name}\": waiting")),
    };
    let deadline = Instant::now() + timeout;
    loop {
        let volume = match client.get(&format!("/v1/volumes/{name}")) {
            Ok(volume) => volume,
            Err(err) if goal == Goal::Deleted && is_not_found(&err) => return Ok(Value::Null),
            Err(err) => return Err(err.context(format!("waiting for volume \"{name}\""))),
        };
        let seen = see(client, &volume, goal)?;
        match &seen.bar {
            Some((done, len, detail)) => {
                progress.set(*done, *len);
                match goal {
                    Goal::Healthy => progress.set_message(format!("read-write ({detail})")),
                    _ => progress.set_message(detail.clone()),
                }
            }
            None => progress.set_message(format!(
                "volume \"{name}\" is {}, waiting until {}",
                seen.describe,
                goal.name()
            )),
        }
        if seen.done {
            return Ok(volume);
        }
        if Instant::now() >= deadline {
            let condition = match &volume["condition"] {
                Value::Null => "none".to_string(),
                other => text(other),
            };
            anyhow::bail!(
                "volume \"{name}\" is not {} after {} s: it is {} (condition: {condition})",
                goal.name(),
                timeout.as_secs(),
                seen.describe,
            );
        }
        std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

fn see(client: &Client, volume: &Value, goal: Goal) -> anyhow::Result<Seen> {
    let state = text(&volume["state"]);
    let quoted = format!("\"{state}\"");
    Ok(match goal {
        Goal::Attached if volume["attachment"]["error"].is_string() => {
            anyhow::bail!(
                "the node cannot set up the block device: {}; detach the volume, or attach \
                 it with another --frontend",
                text(&volume["attachment"]["error"])
            )
        }
        Goal::Attached => Seen {
            done: state == "attached" && volume["attachment"]["endpoint"].is_string(),
            describe: quoted,
            bar: None,
        },
        Goal::Detached => Seen {
            done: state == "detached",
            describe: quoted,
            bar: None,
        },
        Goal::Deleted => Seen {
            done: false,
            describe: quoted,
            bar: None,
        },
        Goal::Scheduled => {
            let placed = volume["replicas"].as_array().map_or(0, Vec::len) as u64;
            let wanted = volume["numberOfReplicas"].as_u64().unwrap_or(0);
            Seen {
                done: volume["condition"].is_null() && placed >= wanted,
                describe: format!("{quoted} with {placed} of {wanted} replicas placed"),
                bar: None,
            }
        }
        Goal::Restored => {
            let restore = &volume["restore"];
            let progress = restore["progress"].as_u64().unwrap_or(0);
            let (doing, from) = restore_source(restore);
            match restore["state"].as_str() {
                None => anyhow::bail!(
                    "volume \"{}\" is not restored from a backup nor copied from a snapshot",
                    text(&volume["name"])
                ),
                Some("error") => anyhow::bail!(
                    "the {doing} of volume \"{}\" from {from} failed: {}",
                    text(&volume["name"]),
                    text(&restore["error"])
                ),
                Some(restoring) => Seen {
                    // A standby's engine goes on following its backups.
                    done: restoring == "completed"
                        && (state == "detached" || volume["standby"] == Value::Bool(true)),
                    describe: format!("{quoted}, {doing} {restoring} ({progress}%)"),
                    bar: Some((
                        progress,
                        100,
                        format!(
                            "{} from {from}",
                            if doing == "copy" {
                                "copying"
                            } else {
                                "restoring"
                            }
                        ),
                    )),
                },
            }
        }
        Goal::Healthy => {
            let name = text(&volume["name"]);
            let replicas = client.get(&format!("/v1/replicas?volume={name}"))?;
            let modes: Vec<String> = replicas
                .as_array()
                .map(|all| all.iter().map(|r| text(&r["mode"])).collect())
                .unwrap_or_default();
            let read_write = modes.iter().filter(|m| *m == "RW").count() as u64;
            let wanted = volume["numberOfReplicas"].as_u64().unwrap_or(0);
            let robustness = text(&volume["robustness"]);
            let listed = if modes.is_empty() {
                "none".to_string()
            } else {
                modes.join(", ")
            };
            Seen {
                done: robustness == "healthy" && read_write >= wanted,
                describe: format!("\"{robustness}\" with replicas {listed}"),
                bar: Some((read_write, wanted, listed)),
            }
        }
    })
}

/// ("restore", the backup URL) or ("copy", `snapshot "vol/snap"`) of a volume's `restore`.
pub fn restore_source(restore: &Value) -> (&'static str, String) {
    match restore["snapshot"].as_object() {
        Some(from) => (
            "copy",
            format!(
                "snapshot \"{}/{}\"",
                text(&from["volume"]),
                text(&from["snapshot"])
            ),
        ),
        None => ("restore", text(&restore["url"])),
    }
}
