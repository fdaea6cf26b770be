//! Shorthorn against a real Kubernetes control plane (etcd, kube-apiserver and
//! kube-controller-manager built by `scripts/build-tools`, started on loopback by
//! tests/testkit/kube.rs).

mod testkit;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde_json::Value;
use testkit::kube::{ControlPlane, KUBE_VERSION};

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
