#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kubectl and kubelet from tools/k8s/go.mod
# (see gen.sh), and the two small mains a kubelet without a container engine needs
# (fake-cri/: Kubernetes' fake CRI server; csi-node-registrar/: the kubelet plugin
# registration node-driver-registrar does), into /var/tmp/shorthorn-tools/k8s-<version>/,
# one binary at a time, with the version ldflags Kubernetes' own build sets (so `kubectl
# version` and /version report the real release). A binary already there is not rebuilt.
# Prints the directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# (A one-line `require k8s.io/kubernetes vX` or a line of a require block.)
version="$(awk '$1=="require" && $2=="k8s.io/kubernetes"{print $3; exit} $1=="k8s.io/kubernetes"{print $2; exit}' "$here/go.mod")"
[ -n "$version" ] || { echo "tools/k8s: no k8s.io/kubernetes version in go.mod" >&2; exit 1; }
out="${SHORTHORN_TOOLS:-/var/tmp/shorthorn-tools}/k8s-$version"
commands="kube-apiserver kube-controller-manager kubectl kubelet fake-cri csi-node-registrar"
missing=0
for cmd in $commands; do [ -x "$out/$cmd" ] || missing=1; done
[ "$missing" = 1 ] || { echo "$out"; exit 0; }
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
minor="${version#v1.}"
minor="${minor%%.*}"
# The release's date, from the module proxy's record of the version (reproducible builds).
date="$(cd "$here" && "$GO" mod download -json "k8s.io/kubernetes@$version" | jq -r .Time 2>/dev/null || true)"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags="$ldflags -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=${date:-1970-01-01T00:00:00Z}"
done
mkdir -p "$out"
cd "$here"
for cmd in $commands; do
  [ -x "$out/$cmd" ] && continue
  case "$cmd" in
    fake-cri | csi-node-registrar) pkg="./$cmd" ;;
    *) pkg="k8s.io/kubernetes/cmd/$cmd" ;;
  esac
  start=$(date +%s)
  echo "tools/k8s: building $cmd $version" >&2
  CGO_ENABLED=0 "$GO" build -trimpath -ldflags "$ldflags" -o "$out/$cmd.tmp" "$pkg" >&2
  mv "$out/$cmd.tmp" "$out/$cmd"
  echo "tools/k8s: $cmd built in $(($(date +%s) - start)) s" >&2
done
echo "$out"
