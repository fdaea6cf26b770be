#!/usr/bin/env bash
# Builds the `shorthorn` binary of a pinned earlier commit of this repository, for the
# rolling manager upgrade test (tests/upgrade.rs), into
# ${SHORTHORN_TOOLS:-/var/tmp/shorthorn-tools}/shorthorn-<commit>/shorthorn once; a second run
# finds the binary and returns at once. Prints the binary's path.
#
# The commit is the support floor of upgrades: its state snapshot (format 11) is the oldest
# this build reads. The sources come from this clone's history (`git archive`), so the clone
# must hold the commit: a shallow clone fails here, loudly. The build has a target directory of
# its own inside the cache (never the workspace's), removed once the binary is kept.
# Cold: a debug build of the whole workspace (dependencies at opt-level 2). Measured here,
# niced on 2 cores shared with two other builds (load 6.6), it was about 70% done after 48
# minutes when the disk filled; expect well over 10 minutes on 2 cores. Seeded with a target
# directory of the same commit (cp -a of a warm debug build), 63 s.
set -euo pipefail
COMMIT=8983096
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
tools="${SHORTHORN_TOOLS:-/var/tmp/shorthorn-tools}"
out="$tools/shorthorn-$COMMIT"
if [ -x "$out/shorthorn" ]; then echo "$out/shorthorn"; exit 0; fi
if ! git -C "$repo" rev-parse --verify --quiet "$COMMIT^{commit}" >/dev/null; then
  echo "shorthorn-previous: commit $COMMIT is not in the clone at $repo (a shallow clone?);" \
    "the upgrade test needs it: fetch the history (git fetch --unshallow) and run again" >&2
  exit 1
fi
echo "shorthorn-previous: building shorthorn at $COMMIT (cold: a full debug build, tens of minutes on 2 busy cores)" >&2
start=$(date +%s)
# A target directory left by an interrupted build is resumed.
rm -rf "$out/src"
mkdir -p "$out/src"
git -C "$repo" archive "$COMMIT" | tar -x -C "$out/src"
(cd "$out/src" && CARGO_TARGET_DIR="$out/target" CARGO_INCREMENTAL=0 \
  cargo build --locked --bin shorthorn >&2)
install -m 0755 "$out/target/debug/shorthorn" "$out/shorthorn.tmp"
mv "$out/shorthorn.tmp" "$out/shorthorn"
rm -rf "$out/target" "$out/src"
echo "shorthorn-previous: built in $(($(date +%s) - start)) s" >&2
echo "$out/shorthorn"
