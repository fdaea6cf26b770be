//go:build tools

// Package tools pins etcd (its server module's main package is the etcd binary);
// tools/etcd/build.sh builds it into /var/tmp/shorthorn-tools/etcd-<version>/.
package tools

import _ "go.etcd.io/etcd/server/v3"
