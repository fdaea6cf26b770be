//! The HTTP client the CLI subcommands share: finds the cluster and the token, sends JSON,
//! and turns error bodies into the server's own message.
//!
//! Every write carries an `Idempotency-Key` drawn at random once per write and sent on every
//! try of it, so a write whose answer was lost (its manager died, the request timed out) is
//! retried on another manager safely: the cluster applies it at most once and answers the
//! retry with the first outcome.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use super::dev::DevConfig;

/// Where the cluster is and how to authenticate; flags beat environment beat the dev cluster.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Manager API URL (e.g. http://127.0.0.1:9501); several, comma-separated, are tried in
    /// turn when one cannot be reached.
    #[arg(long, global = true, env = "SHORTHORN_API")]
    pub api: Option<String>,
    /// File holding the API bearer token.
    #[arg(long, global = true, env = "SHORTHORN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Directory of a `dev up` cluster to use when --api is not given.
    #[arg(long, global = true, default_value = ".shorthorn-dev")]
    pub dev_dir: PathBuf,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

pub struct Client {
    apis: Vec<String>,
    token: String,
    /// Random, for this invocation; write number `n` is sent under the key `{key}-{n}`.
    key: String,
    writes: AtomicU32,
}

/// The manager URLs and the bearer token: flags beat environment beat the dev cluster.
pub fn endpoints(target: &Target) -> anyhow::Result<(Vec<String>, String)> {
    let dev = || DevConfig::load(&target.dev_dir);
    // An empty variable (`SHORTHORN_API=`) counts as unset.
    let apis: Vec<String> =
        match target.api.as_ref().filter(|a| !a.trim().is_empty()) {
            Some(api) => api
                .split(',')
                .map(|a| a.trim().trim_end_matches('/').to_string())
                .filter(|a| !a.is_empty())
                .collect(),
            None => dev()
                .context(
                    "no cluster given: pass --api / SHORTHORN_API, or run `shorthorn dev up` here",
                )?
                .apis,
        };
    anyhow::ensure!(!apis.is_empty(), "no manager API configured");
    let token_file = match target
        .token_file
        .as_ref()
        .filter(|f| !f.as_os_str().is_empty())
    {
        Some(path) => path.clone(),
        None => {
            dev()
                .context("no token given: pass --token-file / SHORTHORN_TOKEN_FILE")?
                .token_file
        }
    };
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("reading the token file {}", token_file.display()))?
        .trim()
        .to_string();
    Ok((apis, token))
}

/// How long a write is retried for a definite answer (2xx or 4xx) across the managers.
const WRITE_DEADLINE: Duration = Duration::from_secs(60);
/// How long a read is retried while the cluster has no leader or times out.
const READ_DEADLINE: Duration = Duration::from_secs(20);
/// The longest one try waits for its answer: longer than the longest a manager holds a
/// request while it waits for an engine (a snapshot revert, 60 s), so such a request is
/// not cut off and retried over and over.
const TRY_TIMEOUT: Duration = Duration::from_secs(75);

impl Client {
    pub fn connect(target: &Target) -> anyhow::Result<Client> {
        let (apis, token) = endpoints(target)?;
        Ok(Client {
            apis,
            token,
            key: random_key()?,
            writes: AtomicU32::new(0),
        })
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send("GET", path, None)
    }
    pub fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send("POST", path, Some(body))
    }
    pub fn put(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send("PUT", path, Some(body))
    }
    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send("DELETE", path, None)
    }

    /// Sends to the first manager that answers; a manager that cannot be reached is skipped
    /// (any manager serves any request). A read is retried on the next manager while the
    /// cluster has no leader (503) or times out (504), for up to 20 s. A write is sent under
    /// one idempotency key and retried on the next manager after any failure that is not a
    /// definite answer (no connection, a lost answer, any 5xx) while tries start within 60 s,
    /// so its answer is the outcome of its only application; a [`Failure`] with a 5xx status
    /// means no manager answered definitely in time.
    fn send(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let write = method != "GET";
        let key = write.then(|| {
            let n = self.writes.fetch_add(1, Ordering::Relaxed);
            format!("{}-{n}", self.key)
        });
        let deadline = Instant::now() + if write { WRITE_DEADLINE } else { READ_DEADLINE };
        loop {
            let mut last = None;
            for api in &self.apis {
                let mut request = ureq::request(method, &format!("{api}{path}"))
                    .timeout(TRY_TIMEOUT)
                    .set("Authorization", &format!("Bearer {}", self.token));
                if let Some(key) = &key {
                    request = request.set("Idempotency-Key", key);
                }
                let result = match &body {
                    Some(body) => request.send_json(body.clone()),
                    None => request.call(),
                };
                match result {
                    Ok(response) => return read_body(response),
                    Err(ureq::Error::Status(status, response)) => {
                        let failure = Failure::of(status, response);
                        let retry = if write {
                            status >= 500
                        } else {
                            status == 503 || status == 504
                        };
                        if retry && Instant::now() < deadline {
                            last = Some(anyhow::Error::new(failure));
                            continue;
                        }
                        return Err(anyhow::Error::new(failure));
                    }
                    Err(err) => {
                        last = Some(anyhow::anyhow!("{api}: {err}"));
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
            }
            if Instant::now() >= deadline {
                return Err(last.unwrap_or_else(|| anyhow::anyhow!("no manager API configured")));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Client {
    /// POSTs a request whose answer is NDJSON lines (a long job's progress, then its
    /// outcome) and calls `line` with each. The wait is bounded between lines, not for the
    /// whole answer, so a job of any length is followed to its end. Only for requests that
    /// change nothing (tried on the next manager when one cannot be reached or has no
    /// leader).
    pub fn post_lines(
        &self,
        path: &str,
        body: Value,
        mut line: impl FnMut(Value),
    ) -> anyhow::Result<()> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(TRY_TIMEOUT)
            .build();
        let mut last = None;
        for api in &self.apis {
            let result = agent
                .post(&format!("{api}{path}"))
                .set("Authorization", &format!("Bearer {}", self.token))
                .send_json(body.clone());
            match result {
                Ok(response) => {
                    let reader = std::io::BufReader::new(response.into_reader());
                    for text in std::io::BufRead::lines(reader) {
                        let text = text.with_context(|| format!("reading the answer of {api}"))?;
                        if !text.trim().is_empty() {
                            line(serde_json::from_str(&text).with_context(|| {
                                format!("{api} answered a line that is not JSON: {text}")
                            })?);
                        }
                    }
                    return Ok(());
                }
                Err(ureq::Error::Status(status, response)) => {
                    let failure = anyhow::Error::new(Failure::of(status, response));
                    if status != 503 && status != 504 {
                        return Err(failure);
                    }
                    last = Some(failure);
                }
                Err(err) => last = Some(anyhow::anyhow!("{api}: {err}")),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no manager API configured")))
    }
}

/// A fresh idempotency key: 128 random bits in hex.
fn random_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for an idempotency key")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// An error answer from a manager.
#[derive(Debug)]
pub struct Failure {
    pub status: u16,
    pub message: String,
}

impl Failure {
    /// An error answer: its status and the `message` of its body (or the whole body).
    fn of(status: u16, response: ureq::Response) -> Failure {
        let body = read_body(response).unwrap_or(Value::Null);
        let message = body["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string());
        Failure { status, message }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {})", self.message, self.status)
    }
}

impl std::error::Error for Failure {}

fn read_body(response: ureq::Response) -> anyhow::Result<Value> {
    let text = response.into_string().context("reading the response")?;
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Prints rows as aligned columns under `headers`.
pub fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// A JSON field as table text.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Milliseconds since the Unix epoch as table text: `2026-11-25 14:03:35Z`.
pub fn display_time(value: &Value) -> String {
    let Some(ms) = value.as_u64() else {
        return text(value);
    };
    let secs = ms / 1000;
    let (days, day) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian, era-based).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(display_time(&Value::from(0u64)), "1970-01-01 00:00:00Z");
        assert_eq!(
            display_time(&Value::from(1_795_615_316_048u64)),
            "2026-11-25 14:01:56Z"
        );
        assert_eq!(
            display_time(&Value::from(951_782_400_000u64)),
            "2000-02-29 00:00:00Z"
        );
        assert_eq!(display_time(&Value::Null), "-");
    }
}
