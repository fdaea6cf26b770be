//! A real Prometheus server (Debian's `prometheus`) on a free loopback port with its own
//! temporary storage, scraping the given targets every second; killed and reaped on drop.
//! Queried through its HTTP API (`/api/v1/query`) as a dashboard would.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub struct Prometheus {
    child: Child,
    dir: TempDir,
    url: String,
}

impl Prometheus {
    /// Starts Prometheus scraping `/metrics` of every `host:port` in `targets` (job
    /// `shorthorn`); returns once it is ready.
    pub fn scraping(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config = dir.path().join("prometheus.yml");
        let list = targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: shorthorn\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: [{list}]\n"
            ),
        )
        .expect("prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("prometheus: {e} (scripts/test installs the Debian package prometheus)")
            });
        let prometheus = Prometheus {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while ureq::get(&format!("{}/-/ready", prometheus.url))
            .timeout(Duration::from_secs(2))
            .call()
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 60 s:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The result vector of the instant query `promql` (each element has `metric`, the
    /// labels, and `value`, [time, "number"]).
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let response: Value = ureq::get(&format!("{}/api/v1/query", self.url))
            .query("query", promql)
            .timeout(Duration::from_secs(10))
            .call()
            .unwrap_or_else(|e| panic!("query {promql}: {e}"))
            .into_json()
            .expect("query JSON");
        assert_eq!(response["status"], "success", "query {promql}: {response}");
        assert_eq!(
            response["data"]["resultType"], "vector",
            "query {promql}: {response}"
        );
        response["data"]["result"]
            .as_array()
            .expect("result")
            .clone()
    }

    /// Queries `promql` until `done` holds for its result (up to 90 s), which is `what` in
    /// the failure message; returns that result.
    pub fn wait(&self, promql: &str, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let result = self.query(promql);
            if done(&result) {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: never {what}; last result {result:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The number a query result element holds.
pub fn value(element: &Value) -> f64 {
    element["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {element}"))
}

/// A label of a query result element ("" when absent).
pub fn label(element: &Value, name: &str) -> String {
    element["metric"][name]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
