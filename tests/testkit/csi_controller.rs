//! The chart's CSI controller Deployment as host processes: `shorthorn csi --mode
//! controller` on a unix socket with the real Kubernetes CSI sidecars next to it
//! (external-provisioner, -attacher, -resizer, csi-snapshotter, built by
//! tools/csi-sidecars) and the snapshot-controller that turns VolumeSnapshots into
//! VolumeSnapshotContents; all with the admin kubeconfig, killed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::BIN;
use super::kube::{ControlPlane, find_binaries, tools_cache};
use super::kubelet::ManagerAccess;
use super::processes::Processes;

const PROVISIONER_VERSION: &str = "v6.4.0";
const ATTACHER_VERSION: &str = "v4.13.0";
const RESIZER_VERSION: &str = "v2.3.0";
const SNAPSHOTTER_VERSION: &str = "v8.7.0";

pub struct SidecarTools {
    pub provisioner: PathBuf,
    pub attacher: PathBuf,
    pub resizer: PathBuf,
    pub snapshotter: PathBuf,
    pub snapshot_controller: PathBuf,
    /// The snapshot.storage.k8s.io CRDs of the snapshotter's client module (a directory).
    pub snapshot_crds: PathBuf,
}

impl SidecarTools {
    /// Every binary, or `None` (SKIPPED) outside CI when one is missing.
    pub fn find() -> Option<SidecarTools> {
        let cache = tools_cache();
        let snapshotter = format!("{cache}/external-snapshotter-{SNAPSHOTTER_VERSION}");
        let mut found = find_binaries(
            "the CSI sidecars",
            &[
                (
                    "SHORTHORN_CSI_PROVISIONER",
                    format!("{cache}/external-provisioner-{PROVISIONER_VERSION}/csi-provisioner"),
                ),
                (
                    "SHORTHORN_CSI_ATTACHER",
                    format!("{cache}/external-attacher-{ATTACHER_VERSION}/csi-attacher"),
                ),
                (
                    "SHORTHORN_CSI_RESIZER",
                    format!("{cache}/external-resizer-{RESIZER_VERSION}/csi-resizer"),
                ),
                (
                    "SHORTHORN_CSI_SNAPSHOTTER",
                    format!("{snapshotter}/csi-snapshotter"),
                ),
                (
                    "SHORTHORN_SNAPSHOT_CONTROLLER",
                    format!("{snapshotter}/snapshot-controller"),
                ),
                ("SHORTHORN_SNAPSHOT_CRDS", format!("{snapshotter}/crd")),
            ],
        )?
        .into_iter();
        let mut next = || found.next().expect("six paths");
        Some(SidecarTools {
            provisioner: next(),
            attacher: next(),
            resizer: next(),
            snapshotter: next(),
            snapshot_controller: next(),
            snapshot_crds: next(),
        })
    }

    /// The VolumeSnapshot CRD files (not the group-snapshot ones, which need a feature
    /// gate of the snapshot-controller).
    pub fn snapshot_crd_files(&self) -> Vec<PathBuf> {
        [
            "volumesnapshotclasses",
            "volumesnapshotcontents",
            "volumesnapshots",
        ]
        .iter()
        .map(|kind| {
            self.snapshot_crds
                .join(format!("snapshot.storage.k8s.io_{kind}.yaml"))
        })
        .collect()
    }
}

/// The controller plugin and its sidecars.
pub struct CsiController {
    processes: Processes,
}

impl CsiController {
    /// Starts them in `dir` (created): the plugin first, the sidecars once its socket is
    /// there, with the chart's sidecar arguments (but no leader election: one replica).
    pub fn start(
        plane: &ControlPlane,
        tools: &SidecarTools,
        dir: &Path,
        managers: &ManagerAccess,
    ) -> CsiController {
        std::fs::create_dir_all(dir).expect("controller dir");
        let mut controller = CsiController {
            processes: Processes::new(dir),
        };
        let socket = dir.join("csi.sock");
        let mut csi = Command::new(BIN);
        csi.args(["csi", "--mode", "controller", "--node-id", "controller"])
            .arg(format!("--endpoint=unix://{}", socket.display()))
            .args(["--api", &managers.apis])
            .arg("--token-file")
            .arg(&managers.token_file)
            .env("RUST_LOG", "info");
        controller.processes.spawn("csi-controller", csi);
        controller.processes.wait(
            "the CSI controller's socket",
            Duration::from_secs(30),
            || socket.exists(),
        );

        let kubeconfig = format!("--kubeconfig={}", plane.kubeconfig().display());
        let address = format!("--csi-address={}", socket.display());
        let sidecars: [(&str, &Path, &[&str]); 4] = [
            (
                "csi-provisioner",
                &tools.provisioner,
                &[
                    "--feature-gates=Topology=true",
                    "--extra-create-metadata",
                    "--timeout=120s",
                ],
            ),
            ("csi-attacher", &tools.attacher, &["--timeout=120s"]),
            ("csi-resizer", &tools.resizer, &["--timeout=120s"]),
            ("csi-snapshotter", &tools.snapshotter, &["--timeout=120s"]),
        ];
        for (name, bin, args) in sidecars {
            let mut command = Command::new(bin);
            command.args([&kubeconfig, &address, "--v=4"]).args(args);
            controller.processes.spawn(name, command);
        }
        let mut snapshots = Command::new(&tools.snapshot_controller);
        snapshots.args([&kubeconfig, "--v=4"]);
        controller.processes.spawn("snapshot-controller", snapshots);
        controller
    }

    /// Each process's log tail.
    pub fn log_tails(&self) -> String {
        self.processes.log_tails(30)
    }

    /// Fails (with the logs) if one of them has exited.
    pub fn check_running(&mut self) {
        self.processes.check_running("the CSI controller");
    }
}
