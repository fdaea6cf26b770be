#!/usr/bin/env bash
# Builds the CSI sidecars pinned in tools/csi-sidecars/go.mod (one module, so the Kubernetes
# client libraries they share compile once) into /var/tmp/shorthorn-tools/<name>-<version>/:
#   external-provisioner-vX/csi-provisioner, external-attacher-vX/csi-attacher,
#   external-resizer-vX/csi-resizer, external-snapshotter-vX/{csi-snapshotter,
#   snapshot-controller, crd/} (crd/: the snapshot.storage.k8s.io CRDs of its client module).
# A binary already there is not rebuilt; each build says how long it took. Prints one
# NAME=path line per binary (SHORTHORN_CSI_PROVISIONER=...) and SHORTHORN_SNAPSHOT_CRDS.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tools="${SHORTHORN_TOOLS:-/var/tmp/shorthorn-tools}"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
cd "$here"
version_of() { awk -v m="github.com/kubernetes-csi/$1" '$1==m{print $2; exit}' go.mod; }

# name, module (under github.com/kubernetes-csi/), command directory, environment variable
while read -r name module cmd var; do
  version="$(version_of "$module")"
  out="$tools/$name-$version"
  bin="$out/$(basename "$cmd")"
  if [ ! -x "$bin" ]; then
    mkdir -p "$out"
    start=$(date +%s)
    echo "tools/csi-sidecars: building $(basename "$cmd") $version" >&2
    CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w -X main.version=$version" \
      -o "$bin.tmp" "github.com/kubernetes-csi/$module/$cmd" >&2
    mv "$bin.tmp" "$bin"
    echo "tools/csi-sidecars: $(basename "$cmd") built in $(($(date +%s) - start)) s" >&2
  fi
  echo "$var=$bin"
done <<'LIST'
external-provisioner external-provisioner/v6 cmd/csi-provisioner SHORTHORN_CSI_PROVISIONER
external-attacher external-attacher/v4 cmd/csi-attacher SHORTHORN_CSI_ATTACHER
external-resizer external-resizer/v2 cmd/csi-resizer SHORTHORN_CSI_RESIZER
external-snapshotter external-snapshotter/v8 cmd/csi-snapshotter SHORTHORN_CSI_SNAPSHOTTER
external-snapshotter external-snapshotter/v8 cmd/snapshot-controller SHORTHORN_SNAPSHOT_CONTROLLER
LIST

# The VolumeSnapshot CRDs, from the client module the snapshotter is built with.
version="$(version_of external-snapshotter/client/v8)"
crds="$tools/external-snapshotter-$(version_of external-snapshotter/v8)/crd"
if [ ! -f "$crds/snapshot.storage.k8s.io_volumesnapshots.yaml" ]; then
  dir="$("$GO" mod download -json "github.com/kubernetes-csi/external-snapshotter/client/v8@$version" | jq -r .Dir)"
  mkdir -p "$crds"
  install -m 0644 "$dir"/config/crd/*.storage.k8s.io_*.yaml "$crds/"
fi
echo "SHORTHORN_SNAPSHOT_CRDS=$crds"
