//! A Kubernetes node of the tests, as host processes: a real kubelet (built by tools/k8s)
//! over Kubernetes' fake CRI server (no container engine: sandboxes and containers "run"
//! in memory, while the kubelet attaches, stages and publishes the pods' volumes for
//! real), the Shorthorn CSI node plugin (`shorthorn csi --mode node`, as the chart's
//! csi-node DaemonSet runs it) and the registrar that offers the plugin to the kubelet's
//! plugin watcher (tools/k8s/csi-node-registrar, standing in for node-driver-registrar,
//! which the Go module proxy does not serve).
//!
//! Everything lives under one directory; the kubelet's root directory is `root/`. On drop
//! the processes are killed by pid and whatever is still mounted under `root/` is unmounted
//! (deepest first), so a failed test leaves no mount behind. Two paths of the kubelet are
//! fixed in its code and land on the host whatever the root directory: the device-plugin
//! socket `/var/lib/kubelet/device-plugins/kubelet.sock` (shared by the nodes; no device
//! plugin is used) and `/var/log/containers` (empty: the fake runtime writes no logs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::kube::{ControlPlane, KUBE_VERSION, find_binaries, tools_cache};
use super::processes::Processes;
use super::{BIN, free_port_base};

/// The CSI driver's name (what the chart's CSIDriver and StorageClass say).
pub const DRIVER: &str = "driver.shorthorn.io";

/// The node-side binaries, built by tools/k8s/build.sh next to the control plane's.
pub struct NodeTools {
    pub kubelet: PathBuf,
    pub fake_cri: PathBuf,
    pub registrar: PathBuf,
}

impl NodeTools {
    /// Every binary, or `None` (SKIPPED) outside CI when one is missing.
    pub fn find() -> Option<NodeTools> {
        let k8s = format!("{}/k8s-{KUBE_VERSION}", tools_cache());
        let mut found = find_binaries(
            "the kubelet's binaries",
            &[
                ("SHORTHORN_KUBELET", format!("{k8s}/kubelet")),
                ("SHORTHORN_FAKE_CRI", format!("{k8s}/fake-cri")),
                (
                    "SHORTHORN_CSI_NODE_REGISTRAR",
                    format!("{k8s}/csi-node-registrar"),
                ),
            ],
        )?
        .into_iter();
        let mut next = || found.next().expect("three paths");
        Some(NodeTools {
            kubelet: next(),
            fake_cri: next(),
            registrar: next(),
        })
    }
}

/// How the node's CSI plugin reaches the managers.
pub struct ManagerAccess {
    /// Comma-separated manager API URLs.
    pub apis: String,
    pub token_file: PathBuf,
}

/// One node: fake CRI, kubelet, CSI node plugin, registrar; killed on drop.
pub struct KubeNode {
    /// The Kubernetes Node's name, also the Shorthorn node id of its CSI plugin.
    pub name: String,
    dir: PathBuf,
    processes: Processes,
}

impl KubeNode {
    /// Starts the node `name` in `dir` (created) and waits until its Node is Ready and its
    /// CSINode lists the driver with this node's id.
    pub fn start(
        plane: &ControlPlane,
        tools: &NodeTools,
        dir: &Path,
        name: &str,
        managers: &ManagerAccess,
    ) -> KubeNode {
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("plugins_registry")).expect("kubelet root");
        let mut node = KubeNode {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            processes: Processes::new(dir),
        };
        let cri = format!("unix://{}", dir.join("cri.sock").display());
        let mut fake_cri = Command::new(&tools.fake_cri);
        fake_cri.args(["--listen", &cri]);
        node.processes.spawn("fake-cri", fake_cri);
        let socket = dir.join("cri.sock");
        node.processes
            .wait("the fake CRI socket", Duration::from_secs(30), || {
                socket.exists()
            });

        let config = dir.join("kubelet.yaml");
        std::fs::write(&config, kubelet_config(dir, &cri, free_port_base())).expect("config");
        let mut kubelet = Command::new(&tools.kubelet);
        kubelet
            .arg(format!("--config={}", config.display()))
            .arg(format!("--kubeconfig={}", plane.kubeconfig().display()))
            .arg(format!("--root-dir={}", root.display()))
            .arg(format!("--cert-dir={}", dir.join("pki").display()))
            .arg(format!("--hostname-override={name}"))
            .arg("--node-ip=127.0.0.1")
            .arg("--v=2");
        node.processes.spawn("kubelet", kubelet);
        let ready = "{.status.conditions[?(@.type==\"Ready\")].status}";
        node.processes
            .wait("the Node to be Ready", Duration::from_secs(180), || {
                plane
                    .kubectl(&["get", "node", name, "-o", &format!("jsonpath={ready}")])
                    .0
                    .is_some_and(|s| s == "True")
            });

        // The CSI node plugin where the chart's DaemonSet puts it, and its registration.
        let plugin_dir = root.join("plugins").join(DRIVER);
        std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
        let csi_socket = plugin_dir.join("csi.sock");
        let mut csi = Command::new(BIN);
        csi.args(["csi", "--mode", "node", "--node-id", name])
            .arg(format!("--endpoint=unix://{}", csi_socket.display()))
            .args(["--api", &managers.apis])
            .arg("--token-file")
            .arg(&managers.token_file)
            .env("RUST_LOG", "info");
        node.processes.spawn("csi-node", csi);
        let mut registrar = Command::new(&tools.registrar);
        registrar
            .arg(format!("--csi-address={}", csi_socket.display()))
            .arg(format!(
                "--kubelet-registration-path={}",
                csi_socket.display()
            ))
            .arg(format!(
                "--plugin-registration-path={}",
                root.join("plugins_registry").display()
            ));
        node.processes.spawn("registrar", registrar);
        let node_id = format!("jsonpath={{.spec.drivers[?(@.name==\"{DRIVER}\")].nodeID}}");
        node.processes.wait(
            "the kubelet to register the CSI driver in the CSINode",
            Duration::from_secs(120),
            || {
                plane
                    .kubectl(&["get", "csinode", name, "-o", &node_id])
                    .0
                    .is_some_and(|id| id == name)
            },
        );
        node
    }

    /// The kubelet's root directory.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Where the kubelet publishes a pod's CSI volume: the directory its containers mount.
    pub fn pod_volume(&self, pod_uid: &str, pv: &str) -> PathBuf {
        self.root()
            .join("pods")
            .join(pod_uid)
            .join("volumes/kubernetes.io~csi")
            .join(pv)
            .join("mount")
    }

    /// Each process's log tail.
    pub fn log_tails(&self) -> String {
        self.processes.log_tails(30)
    }

    /// Fails (with the logs) if a process of this node has exited.
    pub fn check_running(&mut self) {
        self.processes.check_running(&format!("node {}", self.name));
    }
}

impl Drop for KubeNode {
    fn drop(&mut self) {
        self.processes.kill_all();
        // What the kubelet and the CSI plugin left mounted (staging and pod mounts, the
        // root directory made shared), deepest first.
        let root = self.root();
        let Ok(out) = Command::new("findmnt")
            .args(["-rn", "-o", "TARGET"])
            .output()
        else {
            return;
        };
        let mut mounts: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|m| Path::new(m).starts_with(&root))
            .map(str::to_string)
            .collect();
        mounts.sort_by(|a, b| b.cmp(a));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
    }
}

/// The kubelet's configuration: loopback only, no container engine (the fake CRI), cgroup
/// v1 with cgroupfs and no QoS cgroups (nothing runs), no swap check, no evictions for the
/// shared disk's free space, every path under the node's directory.
fn kubelet_config(dir: &Path, cri: &str, ports: u16) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: {cri}
imageServiceEndpoint: {cri}
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failCgroupV1: false
failSwapOn: false
localStorageCapacityIsolation: false
evictionHard:
  memory.available: 1Mi
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podLogsDir: {logs}
volumePluginDir: {flex}
resolvConf: ""
syncFrequency: 5s
fileCheckFrequency: 5s
nodeStatusUpdateFrequency: 2s
shutdownGracePeriod: 0s
registerNode: true
"#,
        port = ports + 1,
        healthz = ports + 2,
        logs = dir.join("pod-logs").display(),
        flex = dir.join("flexvolume").display(),
    )
}
