//! The CLI's following and waiting commands (`watch`, `volume attach|wait`) as a user runs
//! them against one `shorthorn dev up` cluster: what they print and how they exit.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_shorthorn");

#[test]
fn watch_follows_the_log_while_attach_wait_and_detach_return_when_done() {
    // A user follows the log while creating, attaching, waiting on, snapshotting and
    // detaching a volume; the watch resumes on another manager when its manager dies,
    // printing no event twice.
    let cluster = DevCluster::up();
    let mut watch = cluster.spawn(&["watch", "-o", "json", "--from", "1"]);

    cluster.ok(&["volume", "create", "db", "--size", "64Mi", "--wait"]);
    let created = watch.until(|line| {
        line["event"]["type"] == "volumeCreated" && line["event"]["volume"]["name"] == "db"
    });
    assert!(created["index"].as_u64().is_some(), "{created}");

    let (ok, stdout, stderr) = cluster.cli(&["volume", "attach", "db", "--node", "node-1"]);
    assert!(ok, "attach failed: {stdout}{stderr}");
    assert!(
        stdout.trim().starts_with("nbd://") && stdout.trim().ends_with("/db"),
        "attach prints the NBD URI once attached: {stdout:?}"
    );
    assert_eq!(
        cluster.json(&["volume", "get", "db"])["state"],
        "attached",
        "attach returned before the volume was attached"
    );

    let out = cluster.ok(&[
        "volume",
        "wait",
        "db",
        "--for",
        "healthy",
        "--timeout",
        "60",
    ]);
    assert!(out.contains("volume \"db\" is healthy"), "{out}");

    cluster.ok(&["snapshot", "create", "db", "s1"]);
    let listed = cluster.ok(&["snapshot", "ls", "db"]);
    let header = listed.lines().next().unwrap_or_default();
    assert!(
        header.contains("STATE") && listed.contains("ready"),
        "snapshot ls shows the snapshot's state: {listed}"
    );
    let out = cluster.ok(&["volume", "detach", "db"]);
    assert!(out.contains("volume \"db\" detached"), "{out}");
    assert_eq!(cluster.json(&["volume", "get", "db"])["state"], "detached");

    let (ok, _, stderr) = cluster.cli(&["volume", "attach", "nope", "--node", "node-1"]);
    assert!(
        !ok && stderr.contains("volume \"nope\" not found"),
        "attaching an unknown volume names it: {stderr}"
    );
    let (ok, _, stderr) = cluster.cli(&["volume", "wait", "nope", "--for", "attached"]);
    assert!(
        !ok && stderr.contains("volume \"nope\" not found"),
        "{stderr}"
    );

    // Manager 1 serves the watch's stream; it dies, and the watch goes on from manager 2.
    cluster.kill_manager(1);
    cluster.ok(&["volume", "create", "db2", "--size", "64Mi"]);
    watch.until(|line| {
        line["event"]["type"] == "volumeCreated" && line["event"]["volume"]["name"] == "db2"
    });
    let mut seen = std::collections::BTreeSet::new();
    for line in &watch.lines {
        assert!(seen.insert(line.to_string()), "printed twice: {line}");
    }
    let indexes: Vec<u64> = watch
        .lines
        .iter()
        .filter_map(|l| l["index"].as_u64())
        .collect();
    assert!(
        indexes.windows(2).all(|w| w[0] <= w[1]),
        "events out of order: {indexes:?}"
    );

    // Ctrl-C ends the watch successfully.
    let status = watch.interrupt();
    assert!(status.success(), "watch exited with {status} on SIGINT");
}

/// A detached dev cluster in a temporary directory, stopped (processes included) on drop.
struct DevCluster {
    dir: tempfile::TempDir,
    /// Every manager's API, comma-separated, as `--api` takes them.
    apis: String,
}

impl DevCluster {
    fn up() -> DevCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = free_port_base();
        let out = Command::new(BIN)
            .args(["dev", "up", "--detach", "--port-base", &base.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .output()
            .expect("runs dev up");
        let apis = (1..=3)
            .map(|n| format!("http://127.0.0.1:{}", base + n))
            .collect::<Vec<_>>()
            .join(",");
        let cluster = DevCluster { dir, apis };
        assert!(
            out.status.success(),
            "dev up failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        // The dev disks share this machine's root filesystem: let scheduling ignore its
        // free space.
        cluster.ok(&["setting", "set", "storageMinimalAvailablePercentage", "0"]);
        cluster
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("SHORTHORN_API", &self.apis)
            .env("SHORTHORN_TOKEN_FILE", self.token_file());
        command
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// Runs the CLI; returns (success, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.command(args).output().expect("runs the CLI");
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.cli(args);
        assert!(ok, "shorthorn {args:?} failed: {stdout}{stderr}");
        stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("JSON output")
    }

    /// Starts a long-running CLI command whose stdout lines are JSON.
    fn spawn(&self, args: &[&str]) -> Running {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starts the CLI");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            rx,
            lines: Vec::new(),
        }
    }

    /// SIGKILLs manager `n` and the replica and engine processes of its node.
    fn kill_manager(&self, n: u16) {
        let dir = self.dir.path().join(format!("m{n}"));
        let mut pids = vec![std::fs::read_to_string(dir.join("pid")).expect("manager pid")];
        for kind in ["replicas", "engines"] {
            for entry in std::fs::read_dir(dir.join("disk").join(kind))
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(text) = std::fs::read_to_string(entry.path().join("process.json")) {
                    let record: Value = serde_json::from_str(&text).expect("process record");
                    pids.push(record["pid"].to_string());
                }
            }
        }
        for pid in pids {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        let _ = Command::new(BIN)
            .args(["dev", "down", "--dir"])
            .arg(self.dir.path())
            .output();
    }
}

/// A CLI process that keeps printing JSON lines; killed on drop.
struct Running {
    child: Child,
    rx: Receiver<String>,
    /// Every line read so far.
    lines: Vec<Value>,
}

impl Running {
    /// Reads lines until one satisfies `wanted` (within 60 s); returns it.
    fn until(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no such line within 60 s ({e}): {:?}", self.lines));
            let value: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            self.lines.push(value.clone());
            if wanted(&value) {
                return value;
            }
        }
    }

    /// Sends SIGINT (Ctrl-C) and waits up to 10 s for the exit.
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("waits") {
                return status;
            }
            assert!(Instant::now() < deadline, "still running 10 s after SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A base such that base+1..base+14 are free on 127.0.0.1 now, below the kernel's
/// ephemeral range (32768 and up) where the node agents of parallel tests take their ports.
fn free_port_base() -> u16 {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    for attempt in 0..500u64 {
        let pick = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(attempt * 1442695040888963407);
        let base = 20_000 + (pick >> 33) as u16 % 12_000;
        if (1..=14).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free port range")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}
