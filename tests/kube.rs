//! Shorthorn against a real Kubernetes control plane (etcd, kube-apiserver and
//! kube-controller-manager built by `scripts/build-tools`, started on loopback by
//! tests/testkit/kube.rs).

mod testkit;

use std::ffi::OsStr;
use std::path::Path;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde_json::Value;
use testkit::kube::{ControlPlane, KUBE_VERSION, SEED_VALUES};

/// The control plane answers kubectl and a kube client as the release that was built.
#[tokio::test(flavor = "multi_thread")]
async fn control_plane_serves_the_built_release() {
    let Some(plane) = ControlPlane::start() else {
        return;
    };

    let version: Value =
        serde_json::from_str(&plane.kubectl_ok(&["version", "-o", "json"])).expect("JSON");
    assert_eq!(
        version["clientVersion"]["gitVersion"], KUBE_VERSION,
        "{version}"
    );
    assert_eq!(
        version["serverVersion"]["gitVersion"], KUBE_VERSION,
        "{version}"
    );
    assert_eq!(plane.kubectl_ok(&["get", "--raw", "/readyz"]).trim(), "ok");

    // The kube crate's client, as the bridge will use it.
    let client = plane.client().await;
    let info = client.apiserver_version().await.expect("/version");
    assert_eq!(info.git_version, KUBE_VERSION);
    let namespaces: Api<Namespace> = Api::all(client);
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "shorthorn-system"}
    }))
    .expect("namespace");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("creates a namespace");
    let listed = plane.kubectl_ok(&["get", "namespace", "shorthorn-system", "-o", "name"]);
    assert_eq!(listed.trim(), "namespace/shorthorn-system");
    // The controller manager acts on it: its service-account controller fills it.
    plane.kubectl_until(
        &[
            "get",
            "serviceaccount",
            "-n",
            "shorthorn-system",
            "-o",
            "name",
        ],
        |out| out.lines().any(|l| l == "serviceaccount/default"),
    );
}

/// The seed's install: `helm lint`, then `helm install` with the seed's values; the
/// shorthorn.io CRDs become Established and `kubectl get sc` shows the default class as
/// the seed shows Longhorn's.
#[test]
fn helm_install_with_the_seed_values() {
    let Some(plane) = ControlPlane::start() else {
        return;
    };
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/chart");
    let lint = plane.helm_ok(&[OsStr::new("lint"), chart.as_os_str()]);
    assert!(
        lint.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{lint}"
    );

    let values = plane.dir().join("values.yaml");
    std::fs::write(&values, SEED_VALUES).expect("values file");
    let installed = plane.helm_ok(&[
        OsStr::new("install"),
        OsStr::new("shorthorn"),
        chart.as_os_str(),
        OsStr::new("--namespace"),
        OsStr::new("shorthorn-system"),
        OsStr::new("--create-namespace"),
        OsStr::new("-f"),
        values.as_os_str(),
    ]);
    assert!(installed.contains("STATUS: deployed"), "{installed}");

    // Every CRD of the group, each Established (the ten kinds).
    let crds: Value =
        serde_json::from_str(&plane.kubectl_ok(&["get", "crd", "-o", "json"])).expect("JSON");
    let mut ours: Vec<String> = crds["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|crd| crd["spec"]["group"] == "shorthorn.io")
        .map(|crd| crd["metadata"]["name"].as_str().expect("name").to_string())
        .collect();
    ours.sort();
    let kinds = [
        "backups",
        "backuptargets",
        "backupvolumes",
        "engines",
        "nodes",
        "recurringjobs",
        "replicas",
        "settings",
        "snapshots",
        "volumes",
    ];
    let wanted: Vec<String> = kinds.iter().map(|k| format!("{k}.shorthorn.io")).collect();
    assert_eq!(ours, wanted);
    for crd in &ours {
        plane.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=120s",
            &format!("crd/{crd}"),
        ]);
    }
    // The API server serves them: an empty list, with the printer columns' headers.
    let (_, volumes) = plane.kubectl(&["get", "volumes.shorthorn.io", "-A"]);
    assert!(volumes.contains("No resources found"), "{volumes}");

    // `kubectl get sc`, as the seed shows it.
    let sc = plane.kubectl_ok(&["get", "sc"]);
    let header: Vec<&str> = sc
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PROVISIONER",
            "RECLAIMPOLICY",
            "VOLUMEBINDINGMODE",
            "ALLOWVOLUMEEXPANSION",
            "AGE"
        ],
        "{sc}"
    );
    let row: Vec<&str> = sc
        .lines()
        .find(|l| l.starts_with("shorthorn "))
        .unwrap_or_else(|| panic!("no shorthorn class: {sc}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..6],
        [
            "shorthorn",
            "(default)",
            "driver.shorthorn.io",
            "Delete",
            "Immediate",
            "true"
        ],
        "{sc}"
    );
    let class: Value =
        serde_json::from_str(&plane.kubectl_ok(&["get", "sc", "shorthorn", "-o", "json"]))
            .expect("JSON");
    assert_eq!(
        class["parameters"],
        serde_json::json!({
            "numberOfReplicas": "3",
            "staleReplicaTimeout": "30",
            "fromBackup": "",
            "fsType": "ext4",
        })
    );

    // The seed's settings reach the managers' default-settings ConfigMap.
    let settings = plane.kubectl_ok(&[
        "get",
        "configmap",
        "shorthorn-default-settings",
        "-n",
        "shorthorn-system",
        "-o",
        "jsonpath={.data.default-settings\\.yaml}",
    ]);
    for line in [
        "backupTarget: \"s3://backupbucket@us-east-1/backupstore\"",
        "defaultReplicaCount: \"2\"",
        "mkfsExt4Parameters: \"-O ^64bit,^metadata_csum\"",
        "storageOverProvisioningPercentage: \"600\"",
    ] {
        assert!(
            settings.lines().any(|l| l.trim() == line),
            "{line} not in {settings}"
        );
    }
    // And the seed's ingress.
    let ingress = plane.kubectl_ok(&["get", "ingress", "-n", "shorthorn-system", "-o", "json"]);
    let ingress: Value = serde_json::from_str(&ingress).expect("JSON");
    let ingress = &ingress["items"][0];
    assert_eq!(ingress["spec"]["ingressClassName"], "nginx", "{ingress}");
    assert_eq!(ingress["spec"]["rules"][0]["host"], "longhorn.k8s.local");
    assert_eq!(
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"],
        "10000m"
    );
}
