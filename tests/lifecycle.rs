//! End to end on a `shorthorn dev up` cluster (3 managers, their node agents, real replica
//! and engine processes), driven through the CLI and the REST API, with qemu-img as the
//! NBD client.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_shorthorn");

/// A detached dev cluster in a temporary directory, stopped (processes included) on drop.
struct DevCluster {
    dir: tempfile::TempDir,
    api: String,
}

impl DevCluster {
    fn up() -> DevCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = free_port_base();
        let out = Command::new(BIN)
            .args([
                "dev",
                "up",
                "--detach",
                "--port-base",
                &base.to_string(),
                "--dir",
            ])
            .arg(dir.path())
            .output()
            .expect("runs dev up");
        let cluster = DevCluster {
            dir,
            api: format!("http://127.0.0.1:{}", base + 2),
        };
        assert!(
            out.status.success(),
            "dev up failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        cluster
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// Runs the CLI against this cluster; returns (success, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out: Output = Command::new(BIN)
            .args(args)
            .env("SHORTHORN_API", &self.api)
            .env("SHORTHORN_TOKEN_FILE", self.token_file())
            .output()
            .expect("runs the CLI");
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

    /// Waits until `volume get` satisfies `done`; returns the volume.
    fn wait_volume(&self, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
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

    fn attach(&self, name: &str, node: &str) -> String {
        self.ok(&["volume", "attach", name, "--node", node]);
        let volume = self.wait_volume(name, "attached", |v| v["state"] == "attached");
        volume["attachment"]["endpoint"]
            .as_str()
            .expect("endpoint")
            .to_string()
    }

    fn detach(&self, name: &str) {
        self.ok(&["volume", "detach", name]);
        self.wait_volume(name, "detached", |v| v["state"] == "detached");
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.token_file())
            .expect("token")
            .trim()
            .to_string()
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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// A base such that base+1..base+13 are free on 127.0.0.1 now.
fn free_port_base() -> u16 {
    for _ in 0..200 {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = probe.local_addr().expect("addr").port().saturating_sub(20);
        drop(probe);
        if base > 1024 && (1..=13).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free port range")
}

fn run(program: &str, args: &[&str]) -> String {
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

fn sha256(path: &Path) -> String {
    run("sha256sum", &[path.to_str().expect("utf-8 path")])
        .split_whitespace()
        .next()
        .expect("hash")
        .to_string()
}

#[test]
fn volume_restarted_on_another_node_keeps_its_filesystem() {
    // The seed's MySQL story: a pod's volume moves to another node and its data is there.
    let cluster = DevCluster::up();
    cluster.ok(&[
        "volume",
        "create",
        "db",
        "--size",
        "64Mi",
        "--replicas",
        "3",
    ]);
    let replicas = cluster.json(&["replica", "ls"]);
    let mut nodes: Vec<&str> = replicas
        .as_array()
        .expect("list")
        .iter()
        .map(|r| r["node"].as_str().expect("node"))
        .collect();
    nodes.sort();
    assert_eq!(
        nodes,
        ["node-1", "node-2", "node-3"],
        "replicas on three different nodes"
    );

    let work = tempfile::tempdir().expect("tempdir");
    let image = work.path().join("fs.img");
    run("truncate", &["-s", "64M", image.to_str().expect("path")]);
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            concat!(env!("CARGO_MANIFEST_DIR"), "/state/src"),
            image.to_str().expect("path"),
        ],
    );

    let endpoint = cluster.attach("db", "node-1");
    assert!(endpoint.starts_with("nbd://127.0.0.1:"), "{endpoint}");
    run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            image.to_str().expect("path"),
            &endpoint,
        ],
    );
    cluster.detach("db");

    let endpoint = cluster.attach("db", "node-2");
    let back = work.path().join("back.img");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &endpoint,
            back.to_str().expect("path"),
        ],
    );
    assert_eq!(
        sha256(&image),
        sha256(&back),
        "the filesystem read back on node-2 differs"
    );
    let volume = cluster.json(&["volume", "get", "db"]);
    assert_eq!(volume["epoch"], 2, "each attach takes a new epoch");

    cluster.detach("db");
    cluster.ok(&["volume", "delete", "db"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster
        .json(&["volume", "ls"])
        .as_array()
        .is_some_and(|v| !v.is_empty())
    {
        assert!(Instant::now() < deadline, "volume db was never deleted");
        std::thread::sleep(Duration::from_millis(200));
    }
    for n in 1..=3 {
        let replicas = cluster.dir.path().join(format!("m{n}/disk/replicas"));
        let left: Vec<_> = std::fs::read_dir(&replicas)
            .expect("replica root")
            .collect();
        assert!(
            left.is_empty(),
            "replica directories left on node-{n}: {left:?}"
        );
    }
}

#[test]
fn bad_input_gets_clear_errors() {
    let cluster = DevCluster::up();
    let (ok, _, err) = cluster.cli(&["volume", "create", "Bad_Name", "--size", "1Gi"]);
    assert!(
        !ok && err.contains("DNS-1123 label") && err.contains("HTTP 400"),
        "{err}"
    );
    let (ok, _, err) = cluster.cli(&["volume", "create", "odd", "--size", "3Mi"]);
    assert!(!ok && err.contains("not a multiple of 2 MiB"), "{err}");
    let (ok, _, err) = cluster.cli(&["volume", "create", "odd", "--size", "ten"]);
    assert!(!ok && err.contains("is not a size"), "{err}");
    let (ok, _, err) = cluster.cli(&["volume", "get", "nope"]);
    assert!(
        !ok && err.contains("volume \"nope\" not found") && err.contains("HTTP 404"),
        "{err}"
    );
    let (ok, _, err) = cluster.cli(&["setting", "set", "replicaSoftAntiAffinity", "maybe"]);
    assert!(
        !ok && err.contains("setting \"replicaSoftAntiAffinity\""),
        "{err}"
    );

    let url = format!("{}/v1/volumes", cluster.api);
    match ureq::get(&url).call() {
        Err(ureq::Error::Status(401, response)) => {
            let body: Value = response.into_json().expect("JSON error body");
            assert_eq!(body["error"], "unauthorized");
        }
        other => panic!("no token must give 401, got {other:?}"),
    }
    let auth = format!("Bearer {}", cluster.token());
    for garbage in [
        "{",
        "[]",
        "{\"name\": 5}",
        "{\"name\":\"x\",\"size\":1,\"extra\":true}",
    ] {
        match ureq::post(&url)
            .set("Authorization", &auth)
            .set("Content-Type", "application/json")
            .send_string(garbage)
        {
            Err(ureq::Error::Status(400 | 422, response)) => {
                let body: Value = response.into_json().expect("JSON error body");
                assert!(
                    body["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{body}"
                );
            }
            other => panic!("garbage {garbage:?} must give 4xx, got {other:?}"),
        }
    }
    // The managers are still there after all of that.
    let health = ureq::get(&format!("{}/healthz", cluster.api))
        .call()
        .expect("healthz");
    assert_eq!(health.status(), 200);
}
