//! The kit the `shorthorn dev up` end-to-end tests (`tests/lifecycle.rs`, `tests/cli.rs`)
//! share: a detached dev cluster in a temporary directory driven through the CLI and the
//! REST API, the node and process killing those scenarios need, and the qemu-img, dd and
//! sha256sum runs that put bytes on a volume and read them back.
//!
//! It never asserts a scenario's outcome: a helper fails only when its own step could not be
//! done (a command failed, a wait timed out), and each test checks what a user would check.

// Each test binary uses a different subset of this kit.
#![allow(dead_code)]

pub mod csi_controller;
pub mod kube;
pub mod kubelet;
pub mod mariadb;
pub mod nfs;
pub mod processes;
pub mod prometheus;
pub mod s3;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_shorthorn");

/// A detached dev cluster (3 managers, their node agents) in a temporary directory, stopped
/// (processes included) on drop. Set `SHORTHORN_KEEP_TEST_DIRS` to keep the directory.
pub struct DevCluster {
    dir: TempDir,
    /// Manager `n` serves its API on `base + n`.
    base: u16,
    /// What the CLI gets as `SHORTHORN_API`.
    cli_api: String,
}

impl DevCluster {
    /// Starts a cluster whose CLI runs talk to manager 1 only.
    pub fn up() -> DevCluster {
        Self::start(false, &[], &[])
    }

    /// Starts a cluster with more `dev up` arguments (e.g. `--credentials FILE`).
    pub fn up_with(args: &[&OsStr]) -> DevCluster {
        Self::start(false, args, &[])
    }

    /// Starts a cluster whose managers get `env` too.
    pub fn up_with_env(env: &[(&str, &str)]) -> DevCluster {
        Self::start(false, &[], env)
    }

    /// Starts a cluster whose CLI runs get every manager's API, so that they fail over to
    /// the next manager when one dies.
    pub fn up_with_failover() -> DevCluster {
        Self::start(true, &[], &[])
    }

    fn start(every_manager: bool, args: &[&OsStr], env: &[(&str, &str)]) -> DevCluster {
        let mut dir = tempfile::tempdir().expect("tempdir");
        if std::env::var_os("SHORTHORN_KEEP_TEST_DIRS").is_some() {
            dir.disable_cleanup(true);
            eprintln!("dev cluster directory kept: {}", dir.path().display());
        }
        let base = free_port_base();
        let out = Command::new(BIN)
            .args(["dev", "up", "--detach", "--port-base", &base.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("runs dev up");
        let managers = if every_manager { 1..=3 } else { 1..=1 };
        let cli_api = managers
            .map(|n| format!("http://127.0.0.1:{}", base + n))
            .collect::<Vec<_>>()
            .join(",");
        // Built before the check, so that what a failed `dev up` started is stopped on drop.
        let cluster = DevCluster { dir, base, cli_api };
        assert!(
            out.status.success(),
            "dev up failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        // The dev disks share this machine's root filesystem, whose free space the tests do
        // not control: let scheduling ignore it (capacity limits still apply).
        cluster.ok(&["setting", "set", "storageMinimalAvailablePercentage", "0"]);
        cluster
    }

    /// Takes over managers started by hand in `dir` laid out as `dev up` lays it out
    /// (manager `n`'s API on `base + n`, its pid in `m{n}/pid`, its disk at `m{n}/disk`,
    /// the token in `token`): stopped with `dev down` on drop.
    pub fn adopt(dir: TempDir, base: u16) -> DevCluster {
        let cli_api = (1..=3)
            .map(|n| format!("http://127.0.0.1:{}", base + n))
            .collect::<Vec<_>>()
            .join(",");
        DevCluster { dir, base, cli_api }
    }

    /// The cluster's directory: manager `n`'s files are under `m{n}/`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Manager 1's API URL.
    pub fn api(&self) -> String {
        self.api_of(1)
    }

    /// Manager `n`'s API URL.
    pub fn api_of(&self, n: u16) -> String {
        format!("http://127.0.0.1:{}", self.base + n)
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir().join("token")
    }

    /// The API bearer token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.token_file())
            .expect("token")
            .trim()
            .to_string()
    }

    /// The CLI with `args`, pointed at this cluster; not started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("SHORTHORN_API", &self.cli_api)
            .env("SHORTHORN_TOKEN_FILE", self.token_file());
        command
    }

    /// Runs the CLI against this cluster; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.command(args).output().expect("runs the CLI");
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    /// Runs the CLI, which must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.cli(args);
        assert!(ok, "shorthorn {args:?} failed: {stdout}{stderr}");
        stdout
    }

    /// Runs the CLI with `-o json`, which must succeed; returns its output parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("JSON output")
    }

    /// Starts a long-running CLI command whose stdout lines are JSON.
    pub fn spawn(&self, args: &[&str]) -> Running {
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

    /// `volume create name --size {size_mib}Mi --replicas {replicas}`, then `extra`.
    pub fn create_volume(&self, name: &str, size_mib: u64, replicas: u32, extra: &[&str]) {
        let (size, replicas) = (format!("{size_mib}Mi"), replicas.to_string());
        let mut args = vec![
            "volume",
            "create",
            name,
            "--size",
            &size,
            "--replicas",
            &replicas,
        ];
        args.extend(extra);
        self.ok(&args);
    }

    /// Creates a volume as [`Self::create_volume`] does, attaches it on node-1 and fills
    /// it with random bytes (see [`write_random`]).
    pub fn volume_with_data(
        &self,
        name: &str,
        size_mib: u64,
        replicas: u32,
        extra: &[&str],
    ) -> Written {
        self.create_volume(name, size_mib, replicas, extra);
        let endpoint = self.attach(name, "node-1");
        write_random(&endpoint, size_mib)
    }

    /// Waits (up to 60 s) until `volume get` satisfies `done`, which is `what` in the
    /// failure message; returns the volume.
    pub fn wait_volume(&self, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let volume = self.json(&["volume", "get", name]);
            if done(&volume) {
                return volume;
            }
            assert!(
                Instant::now() < deadline,
                "volume {name} never became {what}: {volume}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Attaches `name` on `node` and waits until it is attached; returns its NBD endpoint.
    pub fn attach(&self, name: &str, node: &str) -> String {
        self.ok(&["volume", "attach", name, "--node", node]);
        let volume = self.wait_volume(name, "attached", |v| v["state"] == "attached");
        volume["attachment"]["endpoint"]
            .as_str()
            .expect("endpoint")
            .to_string()
    }

    /// Detaches `name` and waits until it is detached.
    pub fn detach(&self, name: &str) {
        self.ok(&["volume", "detach", name]);
        self.wait_volume(name, "detached", |v| v["state"] == "detached");
    }

    /// POSTs `body` to the API path on manager 1; returns (status, JSON body or null).
    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.post_of(1, path, body)
    }

    /// POSTs `body` to the API path on manager `n`; returns (status, JSON body or null).
    pub fn post_of(&self, n: u16, path: &str, body: &str) -> (u16, Value) {
        let result = ureq::post(&format!("{}{path}", self.api_of(n)))
            .set("Authorization", &format!("Bearer {}", self.token()))
            .set("Content-Type", "application/json")
            .timeout(Duration::from_secs(120))
            .send_string(body);
        answer(result, "POST", path, n)
    }

    /// GETs the API path on manager `n`; returns (status, JSON body or null).
    pub fn get_of(&self, n: u16, path: &str) -> (u16, Value) {
        let result = ureq::get(&format!("{}{path}", self.api_of(n)))
            .set("Authorization", &format!("Bearer {}", self.token()))
            .timeout(Duration::from_secs(30))
            .call();
        answer(result, "GET", path, n)
    }

    /// Reads manager 1's event stream from the start until `wanted` (event type, id) pairs
    /// have been seen in that order; fails after 60 s.
    pub fn wait_events(&self, wanted: &[(&str, &str)]) {
        let response = ureq::get(&format!("{}/v1/events?from=0", self.api()))
            .set("Authorization", &format!("Bearer {}", self.token()))
            .timeout(Duration::from_secs(60))
            .call()
            .expect("event stream");
        let mut next = 0;
        let mut seen = Vec::new();
        for line in BufReader::new(response.into_reader()).lines() {
            let Ok(line) = line else { break };
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let event: Value = serde_json::from_str(data.trim()).expect("event JSON");
            seen.push(format!(
                "{} {}",
                text_of(&event["type"]),
                text_of(&event["id"])
            ));
            let (kind, id) = wanted[next];
            if event["type"] == kind && event["id"] == id {
                next += 1;
                if next == wanted.len() {
                    return;
                }
            }
        }
        panic!("events {wanted:?} not seen in order; saw {seen:?}");
    }

    /// The pids of every replica process of `volume`, from the agents' records.
    pub fn replica_pids(&self, volume: &str) -> Vec<String> {
        let mut pids = Vec::new();
        for replica in self.json(&["replica", "ls"]).as_array().expect("list") {
            if replica["volume"] != volume {
                continue;
            }
            let node = text_of(&replica["node"]);
            let n = node.trim_start_matches("node-");
            let record = self.dir().join(format!(
                "m{n}/disk/replicas/{}/process.json",
                text_of(&replica["id"])
            ));
            let text = std::fs::read_to_string(&record).expect("process record");
            let record: Value = serde_json::from_str(&text).expect("process record JSON");
            pids.push(record["pid"].to_string());
        }
        pids
    }

    /// Starts manager `n` (≥ 4) under the cluster's directory, joining through manager 1,
    /// with its node agent's disk at `m{n}/disk`.
    pub fn add_node(&self, n: u16) -> ExtraManager {
        let disk = self.dir().join(format!("m{n}/disk"));
        self.add_node_with(n, &["--disk".as_ref(), disk.as_os_str()])
    }

    /// Like [`Self::add_node`], with `agent_args` choosing the node agent's disk.
    pub fn add_node_with(&self, n: u16, agent_args: &[&OsStr]) -> ExtraManager {
        let base = self.base;
        let dir = self.dir().join(format!("m{n}"));
        std::fs::create_dir_all(dir.join("disk")).expect("node dir");
        let log = std::fs::File::create(dir.join("manager.log")).expect("log");
        let child = Command::new(BIN)
            .args([
                "manager",
                "--node-id",
                &n.to_string(),
                "--name",
                &format!("node-{n}"),
            ])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", &format!("127.0.0.1:{}", base + 10 + n)])
            .args(["--join", &format!("127.0.0.1:{}", base + 11)])
            .args(["--api-listen", &format!("127.0.0.1:{}", base + n)])
            .arg("--token-file")
            .arg(self.token_file())
            .args(agent_args)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starts a manager");
        std::fs::write(dir.join("pid"), child.id().to_string()).expect("pid file");
        ExtraManager { child }
    }

    /// SIGKILLs manager `n` alone (its replica and engine processes keep running) and starts
    /// it again with the same command line; returns once its API answers.
    pub fn restart_manager(&self, n: u16) {
        self.restart_manager_as(n, "-KILL", Path::new(BIN), &[]);
    }

    /// Stops manager `n` alone with `signal` (`-KILL`, `-TERM`) and starts `bin` in its
    /// place with the same command line plus `extra` arguments (a rolling upgrade replaces
    /// a manager's binary so); returns once its API answers.
    pub fn restart_manager_as(&self, n: u16, signal: &str, bin: &Path, extra: &[&str]) {
        let args = self.stop_manager(n, signal);
        self.start_manager_as(n, bin, &args, extra);
    }

    /// Stops manager `n` alone with `signal` and waits until it is gone (30 s at most);
    /// returns its command line's arguments, to start it again with.
    pub fn stop_manager(&self, n: u16, signal: &str) -> Vec<String> {
        let dir = self.dir().join(format!("m{n}"));
        let pid = std::fs::read_to_string(dir.join("pid")).expect("manager pid");
        let pid = pid.trim().to_string();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("manager cmdline");
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .skip(1)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        let _ = Command::new("kill").args([signal, &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while running(&pid) {
            assert!(
                Instant::now() < deadline,
                "manager {n} survived kill {signal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        args
    }

    /// Starts `bin` as manager `n` with `args` (from [`Self::stop_manager`]) plus `extra`;
    /// returns once its API answers.
    pub fn start_manager_as(&self, n: u16, bin: &Path, args: &[String], extra: &[&str]) {
        let dir = self.dir().join(format!("m{n}"));
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("manager.log"))
            .expect("log");
        let child = Command::new(bin)
            .args(args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("restarts the manager");
        let pid_of_new = child.id();
        std::fs::write(dir.join("pid"), child.id().to_string()).expect("pid file");
        // Reaped by nobody: `dev down` stops it by its pid file, as it stops the others.
        std::mem::forget(child);
        let url = format!("{}/readyz", self.api_of(n));
        let deadline = Instant::now() + Duration::from_secs(60);
        while ureq::get(&url)
            .timeout(Duration::from_secs(2))
            .call()
            .is_err()
        {
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(dir.join("manager.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let alive = running(&pid_of_new.to_string());
                // Where a live one is stuck: every thread's stack (gdb, when installed).
                let stacks = if alive {
                    Command::new("gdb")
                        .args([
                            "-p",
                            &pid_of_new.to_string(),
                            "-batch",
                            "-ex",
                            "thread apply all bt 30",
                        ])
                        .output()
                        .map(|o| text(&o.stdout))
                        .unwrap_or_else(|e| format!("(no gdb: {e})"))
                } else {
                    String::new()
                };
                panic!(
                    "manager {n} did not come back (process alive: {alive}); its log ends:\n{}\n{stacks}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The pid of the engine process of `volume` on node `n`, from its agent's record.
    pub fn engine_pid(&self, n: u16, volume: &str) -> String {
        let record = self
            .dir()
            .join(format!("m{n}/disk/engines/{volume}/process.json"));
        let text = std::fs::read_to_string(&record).expect("engine record");
        let record: Value = serde_json::from_str(&text).expect("engine record JSON");
        record["pid"].to_string()
    }

    /// SIGKILLs manager `n` and every replica or engine process of its node: the node dies.
    pub fn kill_node(&self, n: u16) {
        let dir = self.dir().join(format!("m{n}"));
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

/// A manager process started by hand to join a dev cluster as one more node; killed and
/// reaped on drop.
pub struct ExtraManager {
    child: Child,
}

impl Drop for ExtraManager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CLI process that keeps printing JSON lines; killed on drop.
pub struct Running {
    child: Child,
    rx: Receiver<String>,
    /// Every line read so far.
    pub lines: Vec<Value>,
}

impl Running {
    /// Reads lines until one satisfies `wanted` (within 60 s); returns it.
    pub fn until(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
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
    pub fn interrupt(&mut self) -> ExitStatus {
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

/// Random bytes written to the start of an attached volume, with the copy to compare with.
pub struct Written {
    /// The volume's NBD endpoint.
    pub endpoint: String,
    /// A temporary directory for images; `data` is in it.
    pub work: TempDir,
    /// The bytes written, as a raw image.
    pub data: PathBuf,
}

/// Writes `mib` MiB of random bytes to the start of the NBD export at `endpoint` with
/// qemu-img, keeping them in `data.img` in a new temporary directory.
pub fn write_random(endpoint: &str, mib: u64) -> Written {
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("data.img");
    random_file(&data, mib);
    write_image(&data, endpoint);
    Written {
        endpoint: endpoint.to_string(),
        work,
        data,
    }
}

/// Whether process `pid` still runs: it exists and is not a zombie whose threads are all
/// gone. A SIGKILLed process's first thread can be a zombie while the others still exit,
/// holding its open files and sockets (its ports); a process this test started and never
/// reaped stays a zombie after it exited.
pub fn running(pid: &str) -> bool {
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    });
    match zombie {
        Err(_) => false,
        Ok(false) => true,
        Ok(true) => std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|d| d.count() > 1),
    }
}

/// A base such that base+1..base+15 are free on 127.0.0.1 now, and reserved for this test
/// process. Chosen below the kernel's ephemeral range (32768 and up), where the agents of
/// parallel tests take their ports, on a 16-port grid so ranges never overlap, and held by
/// a file naming this process under the system temp directory: a range whose manager is
/// down for a restart is not free for another test to take meanwhile (a port taken so
/// made a restarted manager fail with "Address already in use"). The hold is an flock, so
/// a range whose process is gone is free again, and two processes never both take one.
pub fn free_port_base() -> u16 {
    let reservations = std::env::temp_dir().join("shorthorn-test-ports");
    std::fs::create_dir_all(&reservations).expect("port reservation directory");
    let me = std::process::id();
    let seed = me as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    for attempt in 0..2000u64 {
        let pick = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(attempt * 1442695040888963407);
        let base = 20_000 + 16 * ((pick >> 33) % 750) as u16;
        // Held while its holder lives: an flock on the range's file, which the kernel lets
        // go when the holder exits (however it exits). This process keeps it to its end.
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(reservations.join(base.to_string()))
        else {
            continue;
        };
        // SAFETY: flock on a descriptor this function owns.
        let locked = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } == 0;
        if !locked {
            continue;
        }
        let _ = file.set_len(0);
        let _ = std::io::Write::write_all(&mut &file, me.to_string().as_bytes());
        std::mem::forget(file);
        if (1..=15).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free port range")
}

/// Process output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// A JSON string's text, or "" for anything else.
pub fn text_of(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

/// fio writing 96 MiB of random 4k blocks through `device` with direct I/O at `iops`
/// (paced, so that it lasts 24,576 / `iops` seconds whatever the device's speed), then
/// verifying every block (crc32c); its report goes to `log`.
pub fn fio_verify(device: &str, log: &Path, iops: u64) -> Child {
    Command::new("fio")
        .args([
            "--name=verify",
            &format!("--filename={device}"),
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=16",
            "--rw=randwrite",
            "--bs=4k",
            "--size=96M",
            &format!("--rate_iops={iops}"),
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            "--verify_state_save=0",
            "--output-format=normal",
        ])
        .stdout(std::fs::File::create(log).expect("fio log"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs fio")
}

/// (status, JSON body or null) of an API answer, refusals included.
fn answer(
    result: Result<ureq::Response, ureq::Error>,
    method: &str,
    path: &str,
    n: u16,
) -> (u16, Value) {
    match result {
        Ok(response) => (
            response.status(),
            response.into_json().unwrap_or(Value::Null),
        ),
        Err(ureq::Error::Status(status, response)) => {
            (status, response.into_json().unwrap_or(Value::Null))
        }
        Err(err) => panic!("{method} {path} on manager {n}: {err}"),
    }
}

/// Runs `program`, which must succeed; returns its stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Fills `path` with `mib` MiB of random bytes.
pub fn random_file(path: &Path, mib: u64) {
    run(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", path.display()),
            "bs=1M",
            &format!("count={mib}"),
            "status=none",
        ],
    );
}

/// Writes the raw image at `path` to the start of the NBD export at `endpoint` with qemu-img.
pub fn write_image(path: &Path, endpoint: &str) {
    run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            path.to_str().expect("utf-8 path"),
            endpoint,
        ],
    );
}

/// Reads the whole NBD export at `endpoint` into `path` with qemu-img.
pub fn read_image(endpoint: &str, path: &Path) {
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            endpoint,
            path.to_str().expect("utf-8 path"),
        ],
    );
}

/// The file's SHA-256, in hex.
pub fn sha256(path: &Path) -> String {
    run("sha256sum", &[path.to_str().expect("utf-8 path")])
        .split_whitespace()
        .next()
        .expect("hash")
        .to_string()
}

/// The size of the NBD export at `endpoint` in bytes, as qemu-img sees it.
pub fn export_size(endpoint: &str) -> u64 {
    let info: Value = serde_json::from_str(&run(
        "qemu-img",
        &["info", "--output=json", "-f", "raw", endpoint],
    ))
    .expect("qemu-img info JSON");
    info["virtual-size"].as_u64().expect("virtual-size")
}
