//! The seed's PVC walk-through against a real Kubernetes: managers as the chart runs them
//! (`manager --kubernetes`), the CSI controller with the real external-provisioner,
//! -attacher, -resizer, csi-snapshotter and snapshot-controller, and two nodes each with a
//! real kubelet (over a fake CRI: no container engine), the CSI node plugin and its
//! registrar. The chart's StorageClass and the seed's `mysql-pvc` are created with kubectl;
//! the claim binds, the volume shows in `kubectl get volumes.shorthorn.io`; the seed's
//! mysql Deployment pinned to one node gets the volume attached (a VolumeAttachment through
//! external-attacher), staged and published by that node's kubelet as ext4 on the FUSE +
//! loop device, where MariaDB creates the seed's `longhorn` database; moved to the second
//! node it still lists `longhorn` and finds the bytes written on the first; the claim
//! grows through external-resizer and the kubelet grows the mounted filesystem; a
//! VolumeSnapshot becomes ReadyToUse; deleting the claim deletes the volume.

mod testkit;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::csi_controller::{CsiController, SidecarTools};
use testkit::kube::{
    ControlPlane, KubeManagers, NAMESPACE, SEED_VALUES, plane_with_crds, seed_default_settings,
};
use testkit::kubelet::{KubeNode, ManagerAccess, NodeTools};
use testkit::mariadb::MariaDb;
use testkit::{random_file, run, sha256, text_of};

/// The seed's claim, on Shorthorn's class (the seed's says `longhorn`).
const MYSQL_PVC: &str = "apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: mysql-pvc
spec:
  storageClassName: shorthorn
  accessModes:
    - ReadWriteOnce
  resources:
    requests:
      storage: 1Gi
";

/// The seed's mysql Deployment, pinned to `node` (there is no scheduler here) and without
/// a service-account token (the test API server runs no ServiceAccount admission).
fn mysql_deployment(node: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: mysql
spec:
  selector:
    matchLabels:
      app: mysql
  strategy:
    type: Recreate
  template:
    metadata:
      labels:
        app: mysql
    spec:
      nodeName: {node}
      automountServiceAccountToken: false
      containers:
      - image: mysql:5.6
        name: mysql
        env:
        - name: MYSQL_ROOT_PASSWORD
          value: password
        ports:
        - containerPort: 3306
          name: mysql
        volumeMounts:
        - name: data
          mountPath: /var/lib/mysql
      volumes:
      - name: data
        persistentVolumeClaim:
          claimName: mysql-pvc
"
    )
}

const SNAPSHOT: &str = "apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata:
  name: mysql-snap
spec:
  volumeSnapshotClassName: shorthorn-snapshot
  source:
    persistentVolumeClaimName: mysql-pvc
";

/// `kubectl get ... -o jsonpath=PATH` in the default namespace, polled until `done`.
fn until(plane: &ControlPlane, what: &[&str], path: &str, done: impl Fn(&str) -> bool) -> String {
    let jsonpath = format!("jsonpath={path}");
    let mut args = what.to_vec();
    args.extend(["-o", &jsonpath]);
    plane.kubectl_until(&args, done)
}

fn jsonpath(plane: &ControlPlane, what: &[&str], path: &str) -> String {
    let jsonpath = format!("jsonpath={path}");
    let mut args = what.to_vec();
    args.extend(["-o", &jsonpath]);
    plane.kubectl_ok(&args)
}

/// The one pod of the mysql Deployment once it is Running on `node`: its uid.
fn running_pod(plane: &ControlPlane, node: &str, nodes: &mut [&mut KubeNode]) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let pods: Value = serde_json::from_str(&plane.kubectl_ok(&[
            "get",
            "pods",
            "-l",
            "app=mysql",
            "-o",
            "json",
        ]))
        .expect("pods JSON");
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        if let [pod] = items.as_slice()
            && pod["spec"]["nodeName"] == node
            && pod["status"]["phase"] == "Running"
            && pod["metadata"]["deletionTimestamp"].is_null()
        {
            return (
                text_of(&pod["metadata"]["name"]),
                text_of(&pod["metadata"]["uid"]),
            );
        }
        for n in nodes.iter_mut() {
            n.check_running();
        }
        if Instant::now() > deadline {
            let events = plane.kubectl(&["get", "events", "-A"]).1;
            let tails: String = nodes.iter().map(|n| n.log_tails()).collect();
            panic!("no Running mysql pod on {node} in 240 s: {pods}\n{events}\n{tails}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// findmnt's SOURCE and FSTYPE of the mount at `path`.
fn mount_of(path: &Path) -> (String, String) {
    let out = run(
        "findmnt",
        &[
            "-n",
            "-o",
            "SOURCE,FSTYPE",
            "--mountpoint",
            path.to_str().expect("UTF-8 path"),
        ],
    );
    let mut fields = out.split_whitespace();
    let source = fields.next().unwrap_or_default().to_string();
    let fstype = fields.next().unwrap_or_default().to_string();
    (source, fstype)
}

/// The mount's device: `/dev/loopN`, whose backing file is on the engine's FUSE mount.
fn assert_ext4_on_fuse_loop(path: &Path) -> String {
    let (source, fstype) = mount_of(path);
    assert_eq!(
        fstype,
        "ext4",
        "{} is mounted from {source}",
        path.display()
    );
    // A bind mount of the staged filesystem shows the device with the bound subtree.
    let device = source.split('[').next().unwrap_or_default().to_string();
    assert!(
        device.starts_with("/dev/loop"),
        "{} is mounted from {source}, not a loop device",
        path.display()
    );
    let backing = run("losetup", &["-n", "-O", "BACK-FILE", &device]);
    let backing = backing.trim();
    let fs = run("findmnt", &["-n", "-o", "FSTYPE", "--target", backing]);
    assert!(
        fs.trim().starts_with("fuse"),
        "{device}'s backing file {backing} is on {fs}, not the engine's FUSE mount"
    );
    device
}

/// Total bytes of the filesystem mounted at `path` (statvfs, as df).
fn filesystem_bytes(path: &Path) -> u64 {
    let out = run(
        "stat",
        &["-f", "-c", "%b %S", path.to_str().expect("UTF-8 path")],
    );
    let mut fields = out
        .split_whitespace()
        .map(|f| f.parse::<u64>().expect("number"));
    fields.next().expect("blocks") * fields.next().expect("block size")
}

/// Whether this process may grow a mounted ext4 (CAP_SYS_RESOURCE, capability 24, in its
/// effective set); the node plugins it starts have the same capabilities.
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("reads /proc/self/status");
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .expect("CapEff in /proc/self/status");
    effective & (1 << 24) != 0
}

#[test]
fn seed_pvc_binds_mounts_moves_grows_and_snapshots_through_real_sidecars_and_kubelets() {
    let Some(node_tools) = NodeTools::find() else {
        return;
    };
    let Some(sidecar_tools) = SidecarTools::find() else {
        return;
    };
    let Some(plane) = plane_with_crds() else {
        return;
    };
    let started = Instant::now();
    let mut dir = tempfile::tempdir().expect("tempdir");
    if std::env::var_os("SHORTHORN_KEEP_TEST_DIRS").is_some() {
        dir.disable_cleanup(true);
        eprintln!("kube_pvc directory kept: {}", dir.path().display());
    }
    for crd in sidecar_tools.snapshot_crd_files() {
        plane.kubectl_ok(&["apply", "--server-side", "-f", crd.to_str().expect("path")]);
    }
    plane.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=120s",
        "crd",
        "volumesnapshots.snapshot.storage.k8s.io",
        "volumesnapshotcontents.snapshot.storage.k8s.io",
        "volumesnapshotclasses.snapshot.storage.k8s.io",
    ]);

    // Managers as the chart's DaemonSet runs them, with the seed's default settings.
    let managers = KubeManagers::start(&plane, 3, &seed_default_settings());
    managers.wait_group(&[1, 2, 3], 3, 0);
    let cluster = &managers.cluster;
    let deadline = Instant::now() + Duration::from_secs(120);
    while cluster
        .json(&["setting", "get", "defaultReplicaCount"])
        .get("value")
        .map(text_of)
        .as_deref()
        != Some("2")
    {
        assert!(
            Instant::now() < deadline,
            "the seed's settings never applied"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The dev disks share this machine's root filesystem (see DevCluster::up).
    cluster.ok(&["setting", "set", "storageMinimalAvailablePercentage", "0"]);
    let access = ManagerAccess {
        apis: (1..=3)
            .map(|n| cluster.api_of(n))
            .collect::<Vec<_>>()
            .join(","),
        token_file: cluster.token_file(),
    };

    // The chart's StorageClass, VolumeSnapshotClasses and CSIDriver with the seed's values.
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, SEED_VALUES).expect("values");
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/chart");
    let rendered = plane.helm_ok(&[
        "template".as_ref(),
        "shorthorn".as_ref(),
        chart.as_os_str(),
        "-n".as_ref(),
        NAMESPACE.as_ref(),
        "-f".as_ref(),
        values.as_os_str(),
        "--api-versions".as_ref(),
        "snapshot.storage.k8s.io/v1".as_ref(),
        "--show-only".as_ref(),
        "templates/storageclass.yaml".as_ref(),
        "--show-only".as_ref(),
        "templates/csidriver.yaml".as_ref(),
    ]);
    plane.kubectl_stdin(&["apply", "-f", "-"], &rendered);
    let class = jsonpath(
        &plane,
        &["get", "sc", "shorthorn"],
        "{.provisioner} {.parameters.numberOfReplicas} {.allowVolumeExpansion}",
    );
    assert_eq!(class, "driver.shorthorn.io 3 true");

    let mut controller = CsiController::start(
        &plane,
        &sidecar_tools,
        &dir.path().join("controller"),
        &access,
    );
    let mut node1 = KubeNode::start(
        &plane,
        &node_tools,
        &dir.path().join("node-1"),
        "node-1",
        &access,
    );
    let mut node2 = KubeNode::start(
        &plane,
        &node_tools,
        &dir.path().join("node-2"),
        "node-2",
        &access,
    );
    // The kubelets say the attach-detach controller attaches for them.
    for node in ["node-1", "node-2"] {
        let annotation = jsonpath(
            &plane,
            &["get", "node", node],
            "{.metadata.annotations.volumes\\.kubernetes\\.io/controller-managed-attach-detach}",
        );
        assert_eq!(annotation, "true", "{node}");
    }
    eprintln!("kube_pvc: everything up in {:?}", started.elapsed());

    // 1. The seed's claim binds: external-provisioner -> CreateVolume.
    plane.kubectl_stdin(&["apply", "-f", "-"], MYSQL_PVC);
    let phase = until(
        &plane,
        &["get", "pvc", "mysql-pvc"],
        "{.status.phase}",
        |p| p == "Bound",
    );
    assert_eq!(phase, "Bound");
    controller.check_running();
    let pv = jsonpath(&plane, &["get", "pvc", "mysql-pvc"], "{.spec.volumeName}");
    let pv_spec = jsonpath(
        &plane,
        &["get", "pv", &pv],
        "{.spec.csi.driver} {.spec.csi.volumeHandle} {.spec.csi.fsType} {.spec.capacity.storage}",
    );
    assert_eq!(pv_spec, format!("driver.shorthorn.io {pv} ext4 1Gi"));
    // As the seed shows it: NAME STATUS VOLUME CAPACITY ACCESS MODES STORAGECLASS AGE.
    let shown = plane.kubectl_ok(&["get", "pvc", "mysql-pvc", "--no-headers"]);
    let columns: Vec<&str> = shown.split_whitespace().collect();
    assert_eq!(
        columns[..6],
        ["mysql-pvc", "Bound", pv.as_str(), "1Gi", "RWO", "shorthorn"],
        "{shown}"
    );
    let volume = cluster.json(&["volume", "get", &pv]);
    assert_eq!(volume["numberOfReplicas"], 3, "{volume}");
    assert_eq!(volume["size"], 1u64 << 30, "{volume}");

    // 2. The volume in `kubectl get volumes.shorthorn.io`.
    let listed = plane.kubectl_until(&["get", "volumes.shorthorn.io", "-n", NAMESPACE], |out| {
        out.lines()
            .any(|l| l.starts_with(&format!("{pv} ")) && l.contains("detached"))
    });
    // SIZE in bytes, as Longhorn's column shows it.
    assert!(
        listed.lines().any(|l| l.starts_with(&format!("{pv} "))
            && l.contains(" healthy ")
            && l.contains(" 1073741824 ")),
        "{listed}"
    );

    // 3. The seed's mysql on node-1: attached through a VolumeAttachment, staged and
    // published by node-1's kubelet as ext4 on the engine's FUSE + loop device.
    plane.kubectl_stdin(&["apply", "-f", "-"], &mysql_deployment("node-1"));
    let (pod1, uid1) = running_pod(&plane, "node-1", &mut [&mut node1, &mut node2]);
    let attachments = jsonpath(
        &plane,
        &["get", "volumeattachments"],
        "{range .items[*]}{.spec.attacher} {.spec.nodeName} {.spec.source.persistentVolumeName} {.status.attached}{\"\\n\"}{end}",
    );
    assert_eq!(
        attachments.trim(),
        format!("driver.shorthorn.io node-1 {pv} true")
    );
    let volume = cluster.json(&["volume", "get", &pv]);
    assert_eq!(volume["attachment"]["node"], "node-1", "{volume}");
    let mount1 = node1.pod_volume(&uid1, &pv);
    assert_ext4_on_fuse_loop(&mount1);
    let staging = node1
        .root()
        .join("plugins/kubernetes.io/csi")
        .join(testkit::kubelet::DRIVER);
    let staged = run("findmnt", &["-rn", "-o", "TARGET,FSTYPE"]);
    assert!(
        staged
            .lines()
            .any(|l| l.starts_with(&staging.display().to_string()) && l.ends_with(" ext4")),
        "no ext4 staged under {}: {staged}",
        staging.display()
    );
    // The seed's `create database longhorn`, by MariaDB on the pod's volume directory (the
    // fake runtime runs no container), and bytes of our own, flushed to the volume.
    let run1 = dir.path().join("mariadb-1");
    std::fs::create_dir_all(&run1).expect("run dir");
    let db = MariaDb::start(&mount1, &run1);
    db.sql("create database longhorn").expect("create database");
    db.stop();
    let data = dir.path().join("data.bin");
    random_file(&data, 8);
    std::fs::copy(&data, mount1.join("data.bin")).expect("writes into the pod's volume");
    run(
        "sync",
        &["-f", mount1.join("data.bin").to_str().expect("path")],
    );
    eprintln!(
        "kube_pvc: {pod1} running on node-1 with the volume at {:?}",
        started.elapsed()
    );

    // 4. Moved to node-2 (the Deployment's Recreate): node-1's kubelet unpublishes and
    // unstages, the volume detaches there and attaches on node-2, the bytes are there.
    plane.kubectl_ok(&[
        "patch",
        "deployment",
        "mysql",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/template/spec/nodeName","value":"node-2"}]"#,
    ]);
    let (_pod2, uid2) = running_pod(&plane, "node-2", &mut [&mut node1, &mut node2]);
    let attachments = until(
        &plane,
        &["get", "volumeattachments"],
        "{range .items[*]}{.spec.nodeName} {.status.attached}{\"\\n\"}{end}",
        |out| out.trim() == "node-2 true",
    );
    assert_eq!(attachments.trim(), "node-2 true");
    assert!(
        !mount1.exists() || mount_of(&mount1).1.is_empty(),
        "node-1 still has the pod's volume mounted"
    );
    let mount2 = node2.pod_volume(&uid2, &pv);
    assert_ext4_on_fuse_loop(&mount2);
    assert_eq!(sha256(&mount2.join("data.bin")), sha256(&data));
    let run2 = dir.path().join("mariadb-2");
    std::fs::create_dir_all(&run2).expect("run dir");
    let db = MariaDb::start(&mount2, &run2);
    let databases = db.sql("show databases").expect("show databases");
    assert!(databases.lines().any(|l| l == "longhorn"), "{databases}");
    db.stop();
    eprintln!("kube_pvc: moved to node-2 at {:?}", started.elapsed());

    // 5. The claim grows to 2Gi while the pod uses it: external-resizer grows the volume
    // (ControllerExpandVolume), then the kubelet asks the node plugin to grow the mounted
    // ext4 (NodeExpandVolume). The kernel grows a mounted ext4 only for CAP_SYS_RESOURCE:
    // where this test has it, that is the end of it; where it has not (the development
    // machines' root lacks it), the claim shows the plugin's reason, the Deployment is
    // scaled to 0 and back, and the plugin grows the filesystem before mounting it again.
    let before = filesystem_bytes(&mount2);
    plane.kubectl_ok(&[
        "patch",
        "pvc",
        "mysql-pvc",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}"#,
    ]);
    let grown = until(
        &plane,
        &["get", "pv", &pv],
        "{.spec.capacity.storage}",
        |c| c == "2Gi",
    );
    assert_eq!(grown, "2Gi");
    assert_eq!(
        cluster.json(&["volume", "get", &pv])["size"],
        2u64 << 30,
        "the Shorthorn volume grew"
    );
    let mount3 = if has_cap_sys_resource() {
        mount2.clone()
    } else {
        // The kubelet stops retrying on this node and puts the reason on the claim.
        let refused = until(
            &plane,
            &["get", "pvc", "mysql-pvc"],
            "{.status.conditions[?(@.type==\"NodeResizeError\")].message}",
            |m| m.contains("CAP_SYS_RESOURCE"),
        );
        assert!(
            refused.contains("grows when the volume is next staged"),
            "{refused}"
        );
        plane.kubectl_ok(&["scale", "deployment", "mysql", "--replicas=0"]);
        until(
            &plane,
            &["get", "volumeattachments"],
            "{.items[*].metadata.name}",
            |out| out.trim().is_empty(),
        );
        plane.kubectl_ok(&["scale", "deployment", "mysql", "--replicas=1"]);
        let (_pod3, uid3) = running_pod(&plane, "node-2", &mut [&mut node1, &mut node2]);
        node2.pod_volume(&uid3, &pv)
    };
    let capacity = until(
        &plane,
        &["get", "pvc", "mysql-pvc"],
        "{.status.capacity.storage}",
        |c| c == "2Gi",
    );
    assert_eq!(capacity, "2Gi");
    assert_ext4_on_fuse_loop(&mount3);
    let after = filesystem_bytes(&mount3);
    assert!(
        after > before + (900 << 20),
        "the mounted filesystem did not grow: {before} bytes before, {after} after"
    );
    assert_eq!(sha256(&mount3.join("data.bin")), sha256(&data));
    eprintln!("kube_pvc: grown at {:?}", started.elapsed());

    // 6. A VolumeSnapshot of the claim becomes ReadyToUse (csi-snapshotter -> CreateSnapshot).
    plane.kubectl_stdin(&["apply", "-f", "-"], SNAPSHOT);
    let ready = until(
        &plane,
        &["get", "volumesnapshot", "mysql-snap"],
        "{.status.readyToUse}",
        |r| r == "true",
    );
    assert_eq!(ready, "true");
    let handle = until(
        &plane,
        &["get", "volumesnapshot", "mysql-snap"],
        "{.status.boundVolumeSnapshotContentName}",
        |c| !c.is_empty(),
    );
    let snapshot_handle = jsonpath(
        &plane,
        &["get", "volumesnapshotcontent", &handle],
        "{.status.snapshotHandle}",
    );
    assert!(
        snapshot_handle.starts_with(&format!("snap:{pv}/")),
        "{snapshot_handle}"
    );
    let snapshots = cluster.json(&["snapshot", "ls", &pv]).to_string();
    let name = snapshot_handle.rsplit('/').next().unwrap_or_default();
    assert!(snapshots.contains(name), "{name} not in {snapshots}");
    eprintln!("kube_pvc: snapshot ready at {:?}", started.elapsed());

    // 7. The pod goes, then the claim: the volume detaches and is deleted.
    plane.kubectl_ok(&["delete", "volumesnapshot", "mysql-snap", "--wait=true"]);
    plane.kubectl_ok(&["delete", "deployment", "mysql", "--wait=true"]);
    until(
        &plane,
        &["get", "volumeattachments"],
        "{.items[*].metadata.name}",
        |out| out.trim().is_empty(),
    );
    plane.kubectl_ok(&["delete", "pvc", "mysql-pvc", "--wait=true"]);
    until(&plane, &["get", "pv"], "{.items[*].metadata.name}", |out| {
        out.trim().is_empty()
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while cluster.cli(&["volume", "get", &pv]).0 {
        assert!(Instant::now() < deadline, "volume {pv} was not deleted");
        std::thread::sleep(Duration::from_millis(500));
    }
    node1.check_running();
    node2.check_running();
    controller.check_running();
    eprintln!("kube_pvc: done in {:?}", started.elapsed());
}
