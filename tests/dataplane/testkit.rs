//! Helpers shared by the data path scenarios: start the real `shorthorn replica serve` and
//! `shorthorn engine serve` processes on unix sockets in a private temporary directory,
//! kill them (by pid) when the test ends however it ends, and run the real NBD clients.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use shorthorn_dataplane::address::Address;
use shorthorn_dataplane::control;
use shorthorn_dataplane::proto;

pub const BIN: &str = env!("CARGO_BIN_EXE_shorthorn");

/// A daemon started by a test; killed and reaped on drop.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL now and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One scenario's private directory and the daemons in it.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub volume: String,
    pub size: u64,
}

impl Cluster {
    pub fn new(size: u64) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("sh-dp-")
            .tempdir()
            .expect("tempdir");
        Cluster {
            dir,
            volume: "vol".into(),
            size,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn replica_socket(&self, i: usize) -> PathBuf {
        self.path(&format!("r{i}.sock"))
    }

    /// The NBD socket of the engine started at `epoch`.
    pub fn nbd_socket(&self, epoch: u64) -> PathBuf {
        self.path(&format!("nbd-e{epoch}.sock"))
    }

    /// The control socket of the engine started at `epoch`.
    pub fn control_socket(&self, epoch: u64) -> PathBuf {
        self.path(&format!("control-e{epoch}.sock"))
    }

    /// The URI NBD clients use for the engine started at `epoch`.
    pub fn nbd_uri(&self, epoch: u64) -> String {
        format!(
            "nbd+unix:///{}?socket={}",
            self.volume,
            self.nbd_socket(epoch).display()
        )
    }

    fn spawn(&self, name: &str, args: &[String]) -> Daemon {
        self.spawn_with_env(name, args, &[])
    }

    fn spawn_with_env(&self, name: &str, args: &[String], env: &[(&str, &str)]) -> Daemon {
        let log = self.path(&format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(BIN)
            .args(args)
            .env("SHORTHORN_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log clone"))
            .stderr(file)
            .spawn()
            .expect("spawn shorthorn");
        Daemon { child, log }
    }

    /// Starts replica `i` (directory `rI`, socket `rI.sock`) and waits for its socket.
    pub fn replica(&self, i: usize) -> Daemon {
        self.replica_with_env(i, &[])
    }

    /// [`Self::replica`] with extra environment (e.g. `SHORTHORN_CRASH_POINT`).
    pub fn replica_with_env(&self, i: usize, env: &[(&str, &str)]) -> Daemon {
        let sock = self.replica_socket(i);
        let _ = std::fs::remove_file(&sock);
        let args = vec![
            "replica".into(),
            "serve".into(),
            "--dir".into(),
            self.path(&format!("r{i}")).display().to_string(),
            "--size".into(),
            self.size.to_string(),
            "--listen".into(),
            format!("unix:{}", sock.display()),
        ];
        let mut d = self.spawn_with_env(&format!("replica{i}"), &args, env);
        wait_for_socket(&sock, &mut d);
        d
    }

    /// Starts an engine at `epoch` over the given replicas, returning before it is ready.
    pub fn engine_process(&self, epoch: u64, replicas: &[usize], extra: &[&str]) -> Daemon {
        let _ = std::fs::remove_file(self.nbd_socket(epoch));
        let _ = std::fs::remove_file(self.control_socket(epoch));
        let mut args = vec![
            "engine".into(),
            "serve".into(),
            "--volume".into(),
            self.volume.clone(),
            "--size".into(),
            self.size.to_string(),
            "--epoch".into(),
            epoch.to_string(),
            "--nbd".into(),
            format!("unix:{}", self.nbd_socket(epoch).display()),
            "--control".into(),
            format!("unix:{}", self.control_socket(epoch).display()),
        ];
        for i in replicas {
            args.push("--replica".into());
            args.push(format!("unix:{}", self.replica_socket(*i).display()));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn(&format!("engine-e{epoch}"), &args)
    }

    /// Starts an engine and waits until its NBD socket accepts.
    pub fn engine(&self, epoch: u64, replicas: &[usize]) -> Daemon {
        let mut d = self.engine_process(epoch, replicas, &[]);
        wait_for_socket(&self.nbd_socket(epoch), &mut d);
        d
    }
}

/// Waits until `path` accepts a unix connection; panics with the daemon's log if it exits
/// or takes longer than 30 s.
pub fn wait_for_socket(path: &Path, daemon: &mut Daemon) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return;
        }
        if let Some(status) = daemon.exited() {
            panic!(
                "daemon exited with {status} before listening on {}:\n{}",
                path.display(),
                daemon.log_text()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "no listener on {} after 30 s:\n{}",
                path.display(),
                daemon.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a client command, returning its output; panics if it cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs a client command and asserts it succeeded, showing its output if not.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{text}",
        out.status
    );
    text
}

/// sha256 of a file, through coreutils' sha256sum.
pub fn sha256(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().unwrap_or_default().to_owned()
}

/// Writes `len` bytes of seeded pseudo-random data (incompressible, not all zero).
pub fn random_file(path: &Path, len: usize, seed: u64) {
    let mut x = seed | 1;
    let mut data = vec![0u8; len];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    std::fs::write(path, data).expect("write random file");
}

/// Waits until `cond` holds, up to `secs` seconds.
pub fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A blocking client of an engine's gRPC control API.
pub struct Control {
    rt: tokio::runtime::Runtime,
    client: control::ControlClient,
}

impl Control {
    pub fn connect(c: &Cluster, epoch: u64) -> Control {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let addr = Address::Unix(c.control_socket(epoch));
        let client = rt
            .block_on(control::connect(&addr))
            .expect("connect control");
        Control { rt, client }
    }

    pub fn replicas(&mut self) -> Vec<proto::ReplicaInfo> {
        let r = self.rt.block_on(self.client.list_replicas(proto::Empty {}));
        r.expect("list replicas").into_inner().replicas
    }

    /// The entry for replica `i` of `c`.
    pub fn replica(&mut self, c: &Cluster, i: usize) -> proto::ReplicaInfo {
        let addr = format!("unix:{}", c.replica_socket(i).display());
        self.replicas()
            .into_iter()
            .find(|r| r.address == addr)
            .expect("replica in the list")
    }

    pub fn add_replica(&mut self, c: &Cluster, i: usize) -> Result<proto::ReplicaInfo, String> {
        let address = format!("unix:{}", c.replica_socket(i).display());
        let r = self
            .rt
            .block_on(self.client.add_replica(proto::ReplicaAddress { address }));
        r.map(|r| r.into_inner()).map_err(|e| e.to_string())
    }

    pub fn snapshot(&mut self, op: &str, name: &str) -> Result<(), String> {
        let n = proto::SnapshotName { name: name.into() };
        let r = match op {
            "create" => self.rt.block_on(self.client.create_snapshot(n)),
            "delete" => self.rt.block_on(self.client.delete_snapshot(n)),
            "revert" => self.rt.block_on(self.client.revert_snapshot(n)),
            _ => panic!("unknown snapshot op {op}"),
        };
        r.map(|_| ()).map_err(|e| e.to_string())
    }

    pub fn snapshots(&mut self) -> Vec<String> {
        let r = self
            .rt
            .block_on(self.client.list_snapshots(proto::Empty {}));
        r.expect("list snapshots")
            .into_inner()
            .snapshots
            .into_iter()
            .map(|s| s.name)
            .collect()
    }

    pub fn expand(&mut self, size_bytes: u64) -> Result<(), String> {
        let r = self
            .rt
            .block_on(self.client.expand(proto::ExpandRequest { size_bytes }));
        r.map(|_| ()).map_err(|e| e.to_string())
    }

    pub fn stats(&mut self) -> proto::VolumeStats {
        let r = self.rt.block_on(self.client.stats(proto::Empty {}));
        r.expect("stats").into_inner()
    }

    pub fn scrub(&mut self) -> proto::ScrubReport {
        let r = self.rt.block_on(self.client.scrub(proto::Empty {}));
        r.expect("scrub").into_inner()
    }

    /// Waits until replica `i` is RW again.
    pub fn wait_rw(&mut self, c: &Cluster, i: usize, secs: u64) -> proto::ReplicaInfo {
        let mut last = None;
        eventually(secs, "the replica to become RW", || {
            let r = self.replica(c, i);
            assert_ne!(
                r.mode,
                proto::ReplicaMode::Err as i32,
                "replica failed: {}",
                r.error
            );
            let done = r.mode == proto::ReplicaMode::Rw as i32;
            last = Some(r);
            done
        });
        last.expect("replica info")
    }
}

impl Control {
    /// Starts a backup job on the engine (`StartBackup`).
    pub fn start_backup(&mut self, req: proto::StartBackupRequest) -> Result<String, String> {
        let r = self.rt.block_on(self.client.start_backup(req));
        r.map(|r| r.into_inner().name)
            .map_err(|e| e.message().to_owned())
    }

    /// Starts a restore job on the engine (`StartRestore`).
    pub fn start_restore(&mut self, req: proto::StartRestoreRequest) -> Result<String, String> {
        let r = self.rt.block_on(self.client.start_restore(req));
        r.map(|r| r.into_inner().name)
            .map_err(|e| e.message().to_owned())
    }

    /// Starts copying another volume's snapshot into the engine's volume (`StartCopy`).
    pub fn start_copy(&mut self, req: proto::StartCopyRequest) -> Result<String, String> {
        let r = self.rt.block_on(self.client.start_copy(req));
        r.map(|r| r.into_inner().name)
            .map_err(|e| e.message().to_owned())
    }

    pub fn job(&mut self, name: &str) -> Result<proto::JobStatusReply, String> {
        let r = self
            .rt
            .block_on(self.client.job_status(proto::JobName { name: name.into() }));
        r.map(|r| r.into_inner())
            .map_err(|e| e.message().to_owned())
    }

    /// Waits until job `name` is no longer running and returns its last status.
    pub fn wait_job(&mut self, name: &str, secs: u64) -> proto::JobStatusReply {
        let mut last = None;
        eventually(secs, &format!("job {name} to finish"), || {
            let j = self.job(name).expect("job status");
            let done = j.state != proto::JobState::Running as i32;
            last = Some(j);
            done
        });
        last.expect("job status")
    }
}

/// qemu-io with the given commands against `uri`; returns all its output, asserting it
/// exited 0 and no pattern check failed.
pub fn qemu_io(uri: &str, commands: &[&str]) -> String {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd.arg(uri);
    let out = run_ok(&mut cmd);
    assert!(
        !out.contains("Pattern verification failed") && !out.contains("error"),
        "{out}"
    );
    out
}

/// Sends `signal` (e.g. `libc::SIGSTOP`) to a daemon.
pub fn signal(d: &Daemon, signal: i32) {
    // SAFETY: kill(2) with plain integers, on a child this test started and has not reaped.
    let rc = unsafe { libc::kill(d.pid() as libc::pid_t, signal) };
    assert_eq!(
        rc,
        0,
        "kill({}, {signal}): {}",
        d.pid(),
        std::io::Error::last_os_error()
    );
}
