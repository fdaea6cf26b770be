//go:build tools

// Package tools pins csi-sanity, the CSI conformance suite `scripts/test` builds into
// /var/tmp/shorthorn-tools/csi-sanity-<version>/.
package tools

import _ "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity"
