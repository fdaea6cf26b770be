//! `shorthorn watch`: follows the cluster's event stream (`GET /v1/events?from=N`,
//! server-sent events, one per event of the log with its log index as the SSE id) and
//! prints a line per event, or its JSON with `-o json`.
//!
//! When a stream breaks it resumes on the next manager from the last event printed, so an
//! event is neither printed twice nor skipped (one log entry may hold several events, all
//! under its index: a resumed stream skips those of that index already printed). It only
//! reads; it never writes to the cluster.

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::Value;

use super::client::{Client, Output, Target};
use crate::size::format_size;

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    target: Target,
    /// First log index to print from (1: the whole log kept). Default: new events only.
    #[arg(long)]
    from: Option<u64>,
    /// Only events about this volume, its replicas and its snapshots.
    #[arg(long)]
    volume: Option<String>,
    /// Also print node heartbeats (every node logs one every few seconds).
    #[arg(long)]
    heartbeats: bool,
}

/// What a follower of the stream wants after an event.
pub enum Flow {
    Continue,
    Stop,
}

pub fn watch(args: WatchArgs) -> anyhow::Result<()> {
    // Ctrl-C and SIGTERM end the watch successfully; their handlers are in place before the
    // first event is printed.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut interrupt, mut term) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _entered = runtime.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    let from = match args.from {
        Some(from) => from,
        None => next_index(&Client::connect(&args.target)?)?,
    };
    // The stream is read on its own thread; this one waits for it or for a signal.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = print_events(&args, from);
        let _ = done_tx.send(result);
    });
    runtime.block_on(async {
        tokio::select! {
            _ = interrupt.recv() => Ok(()),
            _ = term.recv() => Ok(()),
            result = done_rx => result.unwrap_or(Ok(())),
        }
    })
}

/// The log index after the last one applied by the manager that answers.
pub fn next_index(client: &Client) -> anyhow::Result<u64> {
    let status = client.get("/v1/cluster")?;
    Ok(status["applied"].as_u64().map_or(0, |applied| applied + 1))
}

fn print_events(args: &WatchArgs, from: u64) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    follow(&args.target, from, None, |index, event| {
        if event["type"] == "nodeHeartbeat" && !args.heartbeats {
            return Ok(Flow::Continue);
        }
        if let Some(volume) = &args.volume
            && volume_of(event).as_deref() != Some(volume.as_str())
        {
            return Ok(Flow::Continue);
        }
        let line = match args.target.output {
            Output::Json => serde_json::json!({ "index": index, "event": event }).to_string(),
            Output::Table => human_line(index, event),
        };
        // A closed stdout (`watch | head`) ends the watch quietly.
        if writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    })
}

/// Follows the event stream from log index `from`, calling `on_event` with each event's
/// index and JSON until it says stop, `deadline` passes (checked at every event and
/// keep-alive, which the server sends every 15 s), or the server reports an error (e.g. the
/// events before `from` were trimmed). A broken stream resumes on the next manager.
pub fn follow(
    target: &Target,
    from: u64,
    deadline: Option<Instant>,
    mut on_event: impl FnMut(u64, &Value) -> anyhow::Result<Flow>,
) -> anyhow::Result<()> {
    let (apis, token) = super::client::endpoints(target)?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        // Longer than the server's keep-alive period: a silent stream is a dead one.
        .timeout_read(Duration::from_secs(45))
        .build();
    // The next event to print: its log index, and how many events of that index to skip.
    let mut cursor = (from, 0usize);
    let mut turn = 0usize;
    let mut failures = 0usize;
    loop {
        let api = &apis[turn % apis.len()];
        let response = agent
            .get(&format!("{api}/v1/events"))
            .query("from", &cursor.0.to_string())
            .set("Authorization", &format!("Bearer {token}"))
            .set("Accept", "text/event-stream")
            .call();
        let broke = match response {
            Ok(response) => {
                failures = 0;
                let mut skip = cursor.1;
                let outcome = read_stream(response, deadline, |index, event| {
                    if index == cursor.0 && skip > 0 {
                        skip -= 1;
                        return Ok(Flow::Continue);
                    }
                    cursor = if index == cursor.0 {
                        (index, cursor.1 + 1)
                    } else {
                        (index, 1)
                    };
                    on_event(index, event)
                })?;
                match outcome {
                    Ended::Stopped => return Ok(()),
                    Ended::Broke(why) => why,
                }
            }
            Err(ureq::Error::Status(status, response)) => {
                let body = response.into_string().unwrap_or_default();
                let message = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_string))
                    .unwrap_or(body);
                if status < 500 {
                    anyhow::bail!("{api} refused the event stream: {message} (HTTP {status})");
                }
                format!("{message} (HTTP {status})")
            }
            Err(err) => err.to_string(),
        };
        turn += 1;
        failures += 1;
        let next = &apis[turn % apis.len()];
        eprintln!(
            "event stream from {api} broke ({broke}); resuming on {next} from index {}",
            cursor.0
        );
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        // Back off once every manager failed in a row.
        if failures >= apis.len() {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

enum Ended {
    Stopped,
    Broke(String),
}

/// Reads server-sent events (`event:`, `data:`, `id:` lines; a blank line ends one) and
/// hands each `event` to `on_event`. An `error` event is the server refusing to go on.
fn read_stream(
    response: ureq::Response,
    deadline: Option<Instant>,
    mut on_event: impl FnMut(u64, &Value) -> anyhow::Result<Flow>,
) -> anyhow::Result<Ended> {
    let reader = BufReader::new(response.into_reader());
    let (mut kind, mut data, mut id) = (String::new(), String::new(), None::<u64>);
    for line in reader.lines() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Ended::Stopped);
        }
        let line = match line {
            Ok(line) => line,
            Err(err) => return Ok(Ended::Broke(err.to_string())),
        };
        let line = line.strip_suffix('\r').unwrap_or(&line);
        if !line.is_empty() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => kind = value.to_string(),
                "data" => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                "id" => id = value.parse().ok(),
                // Comments (keep-alives) and unknown fields.
                _ => {}
            }
            continue;
        }
        let (kind, data, id) = (
            std::mem::take(&mut kind),
            std::mem::take(&mut data),
            id.take(),
        );
        match kind.as_str() {
            "event" => {
                let event: Value = serde_json::from_str(&data).with_context(|| {
                    format!("the server sent an event that is not JSON: {data}")
                })?;
                let index = id.context("the server sent an event without its log index")?;
                if let Flow::Stop = on_event(index, &event)? {
                    return Ok(Ended::Stopped);
                }
            }
            "error" => anyhow::bail!("the event stream failed: {data}"),
            _ => {}
        }
    }
    Ok(Ended::Broke("the server closed the stream".into()))
}

/// The volume an event is about: as the log says ([`shorthorn_state::Event::volume`]), or
/// for replica events the volume in the replica's id (`{volume}-r{n}`).
pub fn volume_of(event: &Value) -> Option<String> {
    if let Ok(typed) = serde_json::from_value::<shorthorn_state::Event>(event.clone())
        && let Some(volume) = typed.volume()
    {
        return Some(volume.to_string());
    }
    let id = event["id"].as_str()?;
    event["type"]
        .as_str()?
        .starts_with("replica")
        .then_some(())?;
    let (volume, n) = id.rsplit_once("-r")?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| volume.to_string())
}

/// One event as a line: index, time (of the command behind it, UTC; when it was received
/// for events logged before command times were kept), kind, what it is about, and its
/// other fields as `key=value`.
fn human_line(index: u64, event: &Value) -> String {
    let kind = event["type"].as_str().unwrap_or("?");
    let subject = volume_of(event)
        .or_else(|| scalar(&event["id"]))
        .or_else(|| scalar(&event["node"]))
        .or_else(|| scalar(&event["node"]["id"]))
        .unwrap_or_else(|| "-".into());
    let mut details = Vec::new();
    if let Some(fields) = event.as_object() {
        for (key, value) in fields {
            if key == "type" || key == "at" || key == "loggedAt" {
                continue;
            }
            match value {
                Value::Object(inner) => {
                    for (k, v) in inner {
                        if SUMMARY.contains(&k.as_str()) {
                            push_detail(&mut details, k, v, &subject);
                        }
                    }
                }
                other => push_detail(&mut details, key, other, &subject),
            }
        }
    }
    format!(
        "{index:>7}  {}  {kind:<22}  {subject:<16}  {}",
        event["loggedAt"].as_u64().map_or_else(utc_now, clock_of),
        details.join(" ")
    )
    .trim_end()
    .to_string()
}

/// Fields of an event's object (volume, replica, node, disk, snapshot) worth a line.
const SUMMARY: &[&str] = &[
    "id",
    "name",
    "node",
    "disk",
    "address",
    "zone",
    "size",
    "numberOfReplicas",
    "mode",
    "capacity",
];

fn push_detail(details: &mut Vec<String>, key: &str, value: &Value, subject: &str) {
    let Some(shown) = scalar(value) else {
        return;
    };
    if shown.is_empty() || shown == subject {
        return;
    }
    let shown = match (key, value.as_u64()) {
        ("size" | "capacity" | "reserved" | "available", Some(bytes)) => format_size(bytes),
        _ if shown.contains(' ') => format!("{shown:?}"),
        _ => shown,
    };
    details.push(format!("{key}={shown}"));
}

/// A string, number or boolean as text; `None` for null, arrays and objects.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn utc_now() -> String {
    clock_of(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    )
}

/// `HH:MM:SS.mmmZ` of a time in ms since the Unix epoch.
fn clock_of(ms: u64) -> String {
    let day = ms / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        day / 3600,
        day % 3600 / 60,
        day % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replica_events_belong_to_the_volume_in_their_id() {
        let failed = json!({"type": "replicaFailed", "id": "db-r1-r2", "reason": "x", "at": 1});
        assert_eq!(volume_of(&failed).as_deref(), Some("db-r1"));
        let node = json!({"type": "nodeDown", "id": "node-r1"});
        assert_eq!(volume_of(&node), None);
        let attached =
            json!({"type": "volumeAttached", "name": "db", "epoch": 2, "endpoint": "nbd://x"});
        assert_eq!(volume_of(&attached).as_deref(), Some("db"));
    }

    #[test]
    fn a_line_names_index_kind_subject_and_details() {
        let created = json!({"type": "volumeExpanded", "name": "db", "size": 2u64 << 30});
        let line = human_line(42, &created);
        assert!(line.starts_with("     42  "), "{line}");
        assert!(line.contains("volumeExpanded"), "{line}");
        assert!(line.contains("db"), "{line}");
        assert!(line.ends_with("size=2Gi"), "{line}");
        let failed = json!({"type": "replicaFailed", "id": "db-r0", "reason": "io error", "at": 1});
        let line = human_line(7, &failed);
        assert!(line.contains("id=db-r0 reason=\"io error\""), "{line}");
    }

    #[test]
    fn backup_and_restore_events_name_their_volume_and_progress() {
        let progressed = json!({"type": "backupProgressed", "name": "b1", "volume": "db",
            "progress": 40, "blocks": 3, "uploadedBytes": 6291456});
        assert_eq!(volume_of(&progressed).as_deref(), Some("db"));
        let line = human_line(9, &progressed);
        assert!(
            line.contains("backupProgressed") && line.contains("name=b1"),
            "{line}"
        );
        assert!(line.contains("progress=40"), "{line}");
        let completed = json!({"type": "backupCompleted", "name": "b1", "volume": "db",
            "url": "s3://b@r/p?backup=b1&volume=db", "size": 1u64 << 30, "blocks": 3, "uploadedBytes": 1});
        let line = human_line(10, &completed);
        assert!(
            line.contains("url=s3://b@r/p?backup=b1&volume=db") && line.contains("size=1Gi"),
            "{line}"
        );
        let restored =
            json!({"type": "restoreFailed", "name": "db2", "reason": "block at offset 0 is bad"});
        assert_eq!(volume_of(&restored).as_deref(), Some("db2"));
        let line = human_line(11, &restored);
        assert!(
            line.contains("reason=\"block at offset 0 is bad\""),
            "{line}"
        );
    }
}
