//go:build tools

// Package tools pins the Kubernetes components the tests' control plane runs
// (tests/testkit/kube.rs); tools/k8s/build.sh builds them into
// /var/tmp/shorthorn-tools/k8s-<version>/.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
