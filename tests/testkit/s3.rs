//! Real S3 servers for the backup tests (s3s-fs from crates.io, Versity's gateway built
//! from the Go module proxy; `scripts/build-tools` installs both), started as child
//! processes on free loopback ports over a directory each, with one bucket, and killed (by
//! their pid) on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Picks a free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A real S3 server started by a test; killed (by pid) on drop.
pub struct S3Server {
    child: Option<Child>,
    pub endpoint: String,
    pub port: u16,
    cmd: (PathBuf, Vec<String>),
    pub log: PathBuf,
    pub access_key: String,
    pub secret_key: String,
}

const ACCESS: &str = "shorthorn-test-ak";
const SECRET: &str = "shorthorn-test-secret-key-0123456789";

/// Which server, found through scripts/build-tools' environment or its cache path.
pub fn s3_binary(kind: &str) -> PathBuf {
    let (var, default) = match kind {
        "s3s-fs" => (
            "SHORTHORN_S3S_FS",
            "/var/tmp/shorthorn-tools/s3s-fs-0.14.1/bin/s3s-fs",
        ),
        _ => (
            "SHORTHORN_VERSITYGW",
            "/var/tmp/shorthorn-tools/versitygw-1.8.0/versitygw",
        ),
    };
    let p = std::env::var(var)
        .map(PathBuf::from)
        .unwrap_or(default.into());
    assert!(
        p.exists(),
        "{kind} is not installed at {}: run scripts/build-tools",
        p.display()
    );
    p
}

impl S3Server {
    /// Starts `kind` ("s3s-fs" or "versitygw") over `dir` with bucket `bucket`.
    pub fn start(kind: &str, dir: &Path, bucket: &str) -> S3Server {
        let bin = s3_binary(kind);
        let port = free_port();
        let data = dir.join(format!("{kind}-data"));
        std::fs::create_dir_all(data.join(bucket)).expect("bucket dir");
        let args: Vec<String> = match kind {
            "s3s-fs" => vec![
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.to_string(),
                "--access-key".into(),
                ACCESS.into(),
                "--secret-key".into(),
                SECRET.into(),
                data.display().to_string(),
            ],
            _ => vec![
                "--access".into(),
                ACCESS.into(),
                "--secret".into(),
                SECRET.into(),
                "--port".into(),
                format!("127.0.0.1:{port}"),
                "posix".into(),
                data.display().to_string(),
            ],
        };
        let mut s = S3Server {
            child: None,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            cmd: (bin, args),
            log: dir.join(format!("{kind}.log")),
            access_key: ACCESS.into(),
            secret_key: SECRET.into(),
        };
        s.resume();
        s
    }

    /// (Re)starts the server process on the same port and data.
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new(&self.cmd.0)
            .args(&self.cmd.1)
            .env("ROOT_ACCESS_KEY", ACCESS)
            .env("ROOT_SECRET_KEY", SECRET)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn S3 server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!(
                    "S3 server exited {st}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "S3 server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGSTOPs the server: connections stay open and every request hangs until
    /// [`Self::unpause`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONTs a paused server.
    pub fn unpause(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .args([signal, &c.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill {signal} of the S3 server failed");
        }
    }

    /// SIGKILLs the server.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Longhorn's credential lines for this server (`--credentials FILE`), with another
    /// secret key when `secret` is given.
    pub fn credential_lines(&self, secret: Option<&str>) -> String {
        format!(
            "AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\nAWS_ENDPOINTS={}\n",
            self.access_key,
            secret.unwrap_or(&self.secret_key),
            self.endpoint
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
