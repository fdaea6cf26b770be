//go:build tools

// Package tools pins the CSI sidecars the PVC test runs next to `shorthorn csi`
// (tests/kube_pvc.rs): external-provisioner, external-attacher, external-resizer,
// csi-snapshotter and snapshot-controller. One module, so the Kubernetes client libraries
// they share are built once; tools/csi-sidecars/build.sh builds them into
// /var/tmp/shorthorn-tools/csi-sidecars-<hash of go.sum>/.
package tools

import (
	_ "github.com/kubernetes-csi/external-attacher/v4/cmd/csi-attacher"
	_ "github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner"
	_ "github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer"
	_ "github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter"
	_ "github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller"
)
