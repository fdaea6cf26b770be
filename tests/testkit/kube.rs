//! A real Kubernetes control plane on loopback for the tests: etcd, kube-apiserver and
//! kube-controller-manager, built from the Go module proxy by `scripts/build-tools` (see
//! tools/etcd and tools/k8s), started as child processes over a temporary directory and
//! killed (by their pid) on drop. No scheduler: a test that runs pods names their node,
//! whose kubelet comes from testkit/kubelet.rs. Also here: the managers as the chart runs
//! them (`manager --kubernetes`, [`KubeManagers`]).
//!
//! The API server is started as controller-runtime's envtest starts it (RBAC, the
//! ServiceAccount admission plugin off, a self-signed serving certificate generated into
//! `--cert-dir`, service-account keys), plus `--advertise-address=127.0.0.1
//! --endpoint-reconciler-type=none` and a static admin token (group `system:masters`).
//! The controller manager runs every controller but node-lifecycle (it would taint and
//! evict for nodes that have no kubelet).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::processes::Processes;
use super::{BIN, DevCluster, free_port_base, text};

/// The admin's bearer token (a member of `system:masters`).
pub const ADMIN_TOKEN: &str = "shorthorn-test-admin-token";

/// The Kubernetes release tools/k8s builds.
pub const KUBE_VERSION: &str = "v1.34.4";
const ETCD_VERSION: &str = "v3.6.17";
const HELM_VERSION: &str = "v4.1.4";

/// The binaries, from `scripts/build-tools`' environment lines or its cache.
pub struct Tools {
    pub etcd: PathBuf,
    pub apiserver: PathBuf,
    pub controller_manager: PathBuf,
    pub kubectl: PathBuf,
    pub helm: PathBuf,
}

impl Tools {
    /// Every binary, or `None` (after printing SKIPPED) when one is missing and this is not
    /// CI. Under `CI=true` a missing binary fails the test: CI must run all of them.
    pub fn find() -> Option<Tools> {
        let cache = tools_cache();
        let k8s = format!("{cache}/k8s-{KUBE_VERSION}");
        let mut found = find_binaries(
            "the Kubernetes control plane's binaries",
            &[
                (
                    "SHORTHORN_ETCD",
                    format!("{cache}/etcd-{ETCD_VERSION}/etcd"),
                ),
                ("SHORTHORN_KUBE_APISERVER", format!("{k8s}/kube-apiserver")),
                (
                    "SHORTHORN_KUBE_CONTROLLER_MANAGER",
                    format!("{k8s}/kube-controller-manager"),
                ),
                ("SHORTHORN_KUBECTL", format!("{k8s}/kubectl")),
                (
                    "SHORTHORN_HELM",
                    format!("{cache}/helm-{HELM_VERSION}/helm"),
                ),
            ],
        )?
        .into_iter();
        let mut next = || found.next().expect("five paths");
        Some(Tools {
            etcd: next(),
            apiserver: next(),
            controller_manager: next(),
            kubectl: next(),
            helm: next(),
        })
    }
}

/// Where `scripts/build-tools` caches what it builds.
pub fn tools_cache() -> String {
    std::env::var("SHORTHORN_TOOLS").unwrap_or("/var/tmp/shorthorn-tools".into())
}

/// The files `wanted` names (an environment variable each, or its default path), or `None`
/// (after printing SKIPPED) when one is missing and this is not CI. Under `CI=true` a missing
/// one fails the test: CI must run all of them.
pub fn find_binaries(what: &str, wanted: &[(&str, String)]) -> Option<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for (var, default) in wanted {
        let path = std::env::var_os(var).map_or(PathBuf::from(default), PathBuf::from);
        if path.exists() {
            found.push(path);
        } else {
            missing.push(format!("{var} ({})", path.display()));
        }
    }
    if missing.is_empty() {
        return Some(found);
    }
    let message = format!(
        "{what} are missing: {}; run scripts/build-tools and export the lines it prints",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    None
}

/// etcd, kube-apiserver and kube-controller-manager on loopback; killed on drop. Set
/// `SHORTHORN_KEEP_TEST_DIRS` to keep the directory (logs, kubeconfig, etcd data).
pub struct ControlPlane {
    pub tools: Tools,
    dir: TempDir,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// etcd, the API server, the controller manager (killed in the reverse order).
    processes: Processes,
}

impl ControlPlane {
    /// Starts the control plane and waits until the API server's /readyz is ok and the
    /// controller manager has created the `default` service account; `None` when the
    /// binaries are missing outside CI (see [`Tools::find`]).
    pub fn start() -> Option<ControlPlane> {
        let tools = Tools::find()?;
        let mut dir = tempfile::tempdir().expect("tempdir");
        if std::env::var_os("SHORTHORN_KEEP_TEST_DIRS").is_some() {
            dir.disable_cleanup(true);
            eprintln!("control plane directory kept: {}", dir.path().display());
        }
        let base = free_port_base();
        let (etcd_client, etcd_peer, secure) = (base + 1, base + 2, base + 3);
        let server = format!("https://127.0.0.1:{secure}");
        let processes = Processes::new(dir.path());
        let mut plane = ControlPlane {
            tools,
            dir,
            server,
            processes,
        };
        let d = plane.dir.path().to_path_buf();

        // Service-account token signing keys.
        let (sa_key, sa_pub) = (d.join("sa.key"), d.join("sa.pub"));
        openssl(&["genrsa", "-out", path(&sa_key), "2048"]);
        openssl(&[
            "rsa",
            "-in",
            path(&sa_key),
            "-pubout",
            "-out",
            path(&sa_pub),
        ]);
        let tokens = d.join("tokens.csv");
        std::fs::write(
            &tokens,
            format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
        )
        .expect("token file");

        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd_args = [
            format!("--data-dir={}", d.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--unsafe-no-fsync".into(),
        ];
        let etcd = plane.tools.etcd.clone();
        plane.spawn("etcd", &etcd, &etcd_args);

        let cert_dir = d.join("certs");
        let apiserver_args = [
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={secure}"),
            "--advertise-address=127.0.0.1".into(),
            "--endpoint-reconciler-type=none".into(),
            format!("--cert-dir={}", cert_dir.display()),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--authorization-mode=RBAC".into(),
            format!("--token-auth-file={}", tokens.display()),
            format!("--service-account-key-file={}", sa_pub.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            format!("--service-account-issuer={}/", plane.server),
        ];
        let apiserver = plane.tools.apiserver.clone();
        plane.spawn("kube-apiserver", &apiserver, &apiserver_args);

        // The serving certificate (with its self-signed CA after it) appears once the API
        // server has generated it, before it serves.
        let ca = cert_dir.join("apiserver.crt");
        plane.wait("the API server's certificate", |_| ca.is_file());
        std::fs::write(plane.kubeconfig(), kubeconfig(&plane.server, &ca)).expect("kubeconfig");
        plane.wait("the API server's /readyz", |plane| {
            plane
                .kubectl(&["get", "--raw", "/readyz"])
                .0
                .is_some_and(|out| out.trim() == "ok")
        });

        let kcm_args = [
            format!("--kubeconfig={}", plane.kubeconfig().display()),
            "--controllers=*,-node-lifecycle-controller".into(),
            "--leader-elect=false".into(),
            // No serving port, so parallel control planes never collide.
            "--secure-port=0".into(),
            format!("--service-account-private-key-file={}", sa_key.display()),
            format!("--root-ca-file={}", ca.display()),
            format!(
                "--flex-volume-plugin-dir={}",
                d.join("flexvolume").display()
            ),
        ];
        let kcm = plane.tools.controller_manager.clone();
        plane.spawn("kube-controller-manager", &kcm, &kcm_args);
        plane.wait(
            "the controller manager's default service account",
            |plane| {
                plane
                    .kubectl(&["get", "serviceaccount", "default", "-n", "default"])
                    .0
                    .is_some()
            },
        );
        Some(plane)
    }

    fn spawn(&mut self, name: &'static str, bin: &Path, args: &[String]) {
        let mut command = Command::new(bin);
        command.args(args);
        self.processes.spawn(name, command);
    }

    /// Waits up to 3 minutes (2 busy cores) for `done`; fails with every process's log tail
    /// when it is not, or at once when one of them exited.
    fn wait(&mut self, what: &str, done: impl Fn(&ControlPlane) -> bool) {
        let start = Instant::now();
        loop {
            if done(self) {
                return;
            }
            let exited = self.processes.exited();
            if !exited.is_empty() || start.elapsed() > Duration::from_secs(180) {
                panic!(
                    "waiting for {what}: {}\n{}",
                    if exited.is_empty() {
                        "timed out after 180 s".to_string()
                    } else {
                        exited.join(", ")
                    },
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The last lines of each process's log.
    pub fn log_tails(&self) -> String {
        self.processes.log_tails(20)
    }

    /// The control plane's directory (logs `NAME.log`, `kubeconfig`, etcd data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.dir().join(format!("{name}.log"))
    }

    /// An admin kubeconfig (the static token, the API server's own CA).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir().join("kubeconfig")
    }

    /// `kubectl` pointed at this control plane; not started.
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.tools.kubectl);
        command
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Runs kubectl; returns (stdout if it succeeded, stdout + stderr).
    pub fn kubectl(&self, args: &[&str]) -> (Option<String>, String) {
        outcome(self.kubectl_command(args).output().expect("runs kubectl"))
    }

    /// Runs kubectl, which must succeed; returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let (out, all) = self.kubectl(args);
        out.unwrap_or_else(|| panic!("kubectl {args:?} failed: {all}"))
    }

    /// Runs kubectl with `stdin` as its standard input (`apply -f -`), which must succeed.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> String {
        use std::io::Write;
        let mut child = self
            .kubectl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("writes kubectl's stdin");
        let (out, all) = outcome(child.wait_with_output().expect("kubectl"));
        out.unwrap_or_else(|| panic!("kubectl {args:?} failed: {all}"))
    }

    /// `helm` pointed at this control plane, its caches and config under the directory.
    pub fn helm_command(&self, args: &[impl AsRef<OsStr>]) -> Command {
        let mut command = Command::new(&self.tools.helm);
        let home = self.dir().join("helm");
        command
            .env("KUBECONFIG", self.kubeconfig())
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Runs helm; returns (stdout if it succeeded, stdout + stderr).
    pub fn helm(&self, args: &[impl AsRef<OsStr>]) -> (Option<String>, String) {
        outcome(self.helm_command(args).output().expect("runs helm"))
    }

    /// Runs helm, which must succeed; returns its stdout.
    pub fn helm_ok(&self, args: &[impl AsRef<OsStr>]) -> String {
        let (out, all) = self.helm(args);
        out.unwrap_or_else(|| {
            let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
            panic!("helm {shown:?} failed: {all}")
        })
    }

    /// A kube client with the admin kubeconfig.
    pub async fn client(&self) -> ::kube::Client {
        let kubeconfig =
            ::kube::config::Kubeconfig::read_from(self.kubeconfig()).expect("kubeconfig");
        let config = ::kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("client config");
        ::kube::Client::try_from(config).expect("kube client")
    }

    /// Polls kubectl `args` until its output satisfies `done` (3 minutes at most); returns
    /// the last output.
    pub fn kubectl_until(&self, args: &[&str], done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let (out, all) = self.kubectl(args);
            if let Some(out) = out.filter(|out| done(out)) {
                return out;
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "kubectl {args:?} did not show what was awaited in 180 s; last: {all}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Before the directory goes (fields drop in order): the controller manager would
        // recreate what it keeps there.
        self.processes.kill_all();
    }
}

fn outcome(out: Output) -> (Option<String>, String) {
    let stdout = text(&out.stdout);
    let all = format!("{stdout}{}", text(&out.stderr));
    (out.status.success().then_some(stdout), all)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("runs openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        text(&out.stderr)
    );
}

fn kubeconfig(server: &str, ca: &Path) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: shorthorn-test
  cluster:
    server: {server}
    certificate-authority: {}
users:
- name: admin
  user:
    token: {ADMIN_TOKEN}
contexts:
- name: shorthorn-test
  context:
    cluster: shorthorn-test
    user: admin
current-context: shorthorn-test
",
        ca.display()
    )
}

// Managers as the chart runs them, as host processes.

/// The namespace the chart installs into and the managers run in.
pub const NAMESPACE: &str = "shorthorn-system";

/// `count` managers started at once with `--kubernetes`, laid out as `dev up` lays them
/// out (so `dev down` stops them and what their agents started).
pub struct KubeManagers {
    pub cluster: DevCluster,
    base: u16,
    kubeconfig: PathBuf,
    settings: PathBuf,
}

impl KubeManagers {
    pub fn start(plane: &ControlPlane, count: u16, default_settings: &str) -> KubeManagers {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = free_port_base();
        let settings = dir.path().join("default-settings.yaml");
        std::fs::write(&settings, default_settings).expect("settings file");
        std::fs::write(dir.path().join("token"), "kube-cluster-test-token\n").expect("token");
        let managers = KubeManagers {
            cluster: DevCluster::adopt(dir, base),
            base,
            kubeconfig: plane.kubeconfig(),
            settings,
        };
        for n in 1..=count {
            managers.spawn(n);
        }
        managers
    }

    pub fn dir(&self) -> &Path {
        self.cluster.dir()
    }

    /// Starts manager `n` as node `node-n` (the downward API's NODE_NAME).
    pub fn spawn(&self, n: u16) {
        let dir = self.dir().join(format!("m{n}"));
        std::fs::create_dir_all(dir.join("disk")).expect("node dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("manager.log"))
            .expect("log");
        let child = Command::new(BIN)
            .args(["manager", "--kubernetes", "--namespace", NAMESPACE])
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", &format!("127.0.0.1:{}", self.base + 10 + n)])
            .args(["--api-listen", &format!("127.0.0.1:{}", self.base + n)])
            .arg("--token-file")
            .arg(self.dir().join("token"))
            .arg("--disk")
            .arg(dir.join("disk"))
            .arg("--default-settings")
            .arg(&self.settings)
            .env("NODE_NAME", format!("node-{n}"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starts a manager");
        std::fs::write(dir.join("pid"), child.id().to_string()).expect("pid file");
        // Stopped by `dev down` through its pid file, as dev clusters are.
        std::mem::forget(child);
    }

    /// Manager `n`'s `/v1/cluster` (its view of the Raft group), if it answers.
    pub fn raft(&self, n: u16) -> Option<Value> {
        let url = format!("{}/v1/cluster", self.cluster.api_of(n));
        let answer = ureq::get(&url)
            .set("Authorization", "Bearer kube-cluster-test-token")
            .timeout(Duration::from_secs(2))
            .call()
            .ok()?;
        answer.into_json().ok()
    }

    /// Waits until every manager in `members` sees the same leader, `voters` voters and
    /// `learners` learners.
    pub fn wait_group(&self, members: &[u16], voters: usize, learners: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let views: Vec<Option<Value>> = members.iter().map(|&n| self.raft(n)).collect();
            let agreed = views.iter().all(|v| {
                v.as_ref().is_some_and(|v| {
                    !v["leader"].is_null()
                        && v["leader"] == views[0].as_ref().unwrap_or(&Value::Null)["leader"]
                        && v["voters"].as_array().map_or(0, Vec::len) == voters
                        && v["members"].as_object().map_or(0, |m| m.len()) == voters + learners
                })
            });
            if agreed {
                return views.into_iter().flatten().collect();
            }
            if Instant::now() > deadline {
                panic!(
                    "the managers did not form one group of {voters} voters and {learners} \
                     learners; views: {views:?}\n{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The manager number of the Raft leader.
    pub fn leader(&self, members: &[u16]) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for &n in members {
                if self.raft(n).is_some_and(|v| v["role"] == "Leader") {
                    return n;
                }
            }
            assert!(Instant::now() < deadline, "no leader\n{}", self.log_tails());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for n in 1..=4 {
            let Ok(log) = std::fs::read_to_string(self.dir().join(format!("m{n}/manager.log")))
            else {
                continue;
            };
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            out.push_str(&format!("--- m{n}/manager.log ends:\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// The control plane with the namespace and the chart's CRDs, established.
pub fn plane_with_crds() -> Option<ControlPlane> {
    let plane = ControlPlane::start()?;
    plane.kubectl_ok(&["create", "namespace", NAMESPACE]);
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/chart/crds/shorthorn.io.yaml");
    plane.kubectl_ok(&["apply", "--server-side", "-f", crds.to_str().expect("path")]);
    plane.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=120s",
        "crd",
        "volumes.shorthorn.io",
        "nodes.shorthorn.io",
        "settings.shorthorn.io",
        "replicas.shorthorn.io",
        "engines.shorthorn.io",
    ]);
    Some(plane)
}

/// The seed's example values: its `defaultSettings` and `ingress` as it shows them.
pub const SEED_VALUES: &str = r#"defaultSettings:
  backupTarget: s3://backupbucket@us-east-1/backupstore
  backupTargetCredentialSecret: minio-secret
  createDefaultDiskLabeledNodes: true
  defaultDataPath: /var/lib/longhorn-example/
  replicaSoftAntiAffinity: false
  storageOverProvisioningPercentage: 600
  storageMinimalAvailablePercentage: 15
  upgradeChecker: false
  defaultReplicaCount: 2
  defaultDataLocality: disabled
  guaranteedEngineCPU:
  defaultLonghornStaticStorageClass: longhorn-static-example
  backupstorePollInterval: 500
  taintToleration: key1=value1:NoSchedule; key2:NoExecute
  systemManagedComponentsNodeSelector: "label-key1:label-value1"
  priority-class: high-priority
  autoSalvage: false
  disableSchedulingOnCordonedNode: false
  replicaZoneSoftAntiAffinity: false
  volumeAttachmentRecoveryPolicy: never
  nodeDownPodDeletionPolicy: do-nothing
  mkfsExt4Parameters: -O ^64bit,^metadata_csum
  guaranteed-engine-manager-cpu: 15
  guaranteed-replica-manager-cpu: 15
ingress:
  enabled: true
  ingressClassName: nginx
  host: longhorn.k8s.local
  annotations:
    nginx.ingress.kubernetes.io/proxy-body-size: 10000m
enablePSP: false
"#;

/// The seed's `defaultSettings` alone, as the chart's ConfigMap hands them to a manager's
/// `--default-settings` file.
pub fn seed_default_settings() -> String {
    let values: serde_yaml_ng::Value = serde_yaml_ng::from_str(SEED_VALUES).expect("seed values");
    serde_yaml_ng::to_string(&values["defaultSettings"]).expect("settings YAML")
}
