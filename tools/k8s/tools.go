//go:build tools

// Package tools pins the Kubernetes components the tests' control plane and nodes run
// (tests/testkit/kube.rs); fake-cri/ and csi-node-registrar/ are the two small mains a
// kubelet without a container engine needs; tools/k8s/build.sh builds them into
// /var/tmp/shorthorn-tools/k8s-<version>/.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
