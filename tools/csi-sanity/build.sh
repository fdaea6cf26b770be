#!/usr/bin/env bash
# Builds csi-sanity from tools/csi-sanity/go.mod into /var/tmp/shorthorn-tools/csi-sanity-<ver>/
# once; a second run finds the binary and returns at once. Cold: about 2 minutes here.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="$(awk '/kubernetes-csi\/csi-test\/v5 /{print $NF}' "$here/go.mod" | head -1)"
out="/var/tmp/shorthorn-tools/csi-sanity-$version"
if [ -x "$out/csi-sanity" ]; then echo "$out/csi-sanity"; exit 0; fi
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
mkdir -p "$out"
cd "$here"
[ -f go.sum ] || "$GO" mod tidy >&2
GOFLAGS=-mod=mod "$GO" build -o "$out/csi-sanity.tmp" github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity >&2
mv "$out/csi-sanity.tmp" "$out/csi-sanity"
echo "$out/csi-sanity"
