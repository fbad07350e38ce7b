#!/usr/bin/env bash
# fsbench-ab.sh — the same imgfs build with two sets of `imgfs mount` arguments, interleaved,
# on fsbench's workloads (after `fsbench-setup.sh prepare WORK TREE_DIR`). Prints every round.
# usage: IMGFS=path/to/imgfs bench/fsbench-ab.sh WORK ROUNDS "ARGS-A" "ARGS-B" [WORKLOAD...]
#        (as root; uses fsbench-setup.sh and fsbench.sh from this directory)
# example: bench/fsbench-ab.sh /var/tmp/fsb 3 "" "--no-passthrough" read_cold read_warm read_tree
set -euo pipefail
W=${1:?usage: fsbench-ab.sh WORK ROUNDS ARGS-A ARGS-B [WORKLOAD...]}; R=${2:?}; A=$3; B=$4; shift 4
IMGFS=$(command -v "${IMGFS:-imgfs}")
BENCH=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for side in A B; do
  args=$([ $side = A ] && echo "$A" || echo "$B")
  # A wrapper that adds the arguments to `imgfs mount`, for fsbench-setup.sh's IMGFS.
  printf '#!/bin/sh\nif [ "$1" = mount ]; then shift; exec "%s" mount %s "$@"; fi\nexec "%s" "$@"\n' \
    "$IMGFS" "$args" "$IMGFS" > "$tmp/$side"
  chmod +x "$tmp/$side"
done
for r in $(seq 1 "$R"); do
  for side in A B; do
    m=$(IMGFS="$tmp/$side" "$BENCH/fsbench-setup.sh" mount "$W" imgfs)
    label=$([ $side = A ] && echo "[$A]" || echo "[$B]")
    "$BENCH/fsbench.sh" "$m" "$W/tree.tar" "$@" | sed "s|^|round $r $label |"
    IMGFS="$tmp/$side" "$BENCH/fsbench-setup.sh" umount "$W" imgfs
  done
done
