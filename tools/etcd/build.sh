#!/usr/bin/env bash
# Builds etcd from tools/etcd/go.mod into /var/tmp/shorthorn-tools/etcd-<version>/ once; a
# second run finds the binary and returns at once. Prints the binary's path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="$(awk '$1=="require" && $2=="go.etcd.io/etcd/server/v3"{print $3; exit}' "$here/go.mod")"
out="${SHORTHORN_TOOLS:-/var/tmp/shorthorn-tools}/etcd-$version"
if [ -x "$out/etcd" ]; then echo "$out/etcd"; exit 0; fi
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
mkdir -p "$out"
cd "$here"
start=$(date +%s)
echo "tools/etcd: building etcd $version" >&2
CGO_ENABLED=0 "$GO" build -ldflags "-s -w" -o "$out/etcd.tmp" go.etcd.io/etcd/server/v3 >&2
mv "$out/etcd.tmp" "$out/etcd"
echo "tools/etcd: etcd built in $(($(date +%s) - start)) s" >&2
echo "$out/etcd"
