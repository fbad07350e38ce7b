#!/usr/bin/env bash
# A/B of two `img` builds on a Debian RUN step that installs packages with apt-get (dpkg fsyncs
# every file it unpacks): `img build --no-cache` on a debootstrap'd bookworm base, both
# backends, the two binaries interleaved round after round so drift on the machine hits them
# alike. Prints each run, then the medians per binary and backend and the ratio A/B (above 1: B
# is faster).
#
# usage: bench/apt-build-ab.sh IMG_A IMG_B [ROUNDS]    (as root)
# Needs the debootstrap fixture (`bench/rootfs.sh`, or any test that uses
# `tests::fixtures::debootstrap_rootfs_tar`) and the Debian mirror its sources name.
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1 b=$2 rounds=${3:-5}
rootfs=${IMG_FIXTURES_DIR:-/var/tmp/img-fixtures}/debootstrap-bookworm-minbase-v1.tar
work=$(mktemp -d /var/tmp/apt-build-ab.XXXXXX)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/ctx"
cat >"$work/ctx/Dockerfile" <<'DOCKERFILE'
FROM debian
RUN apt-get update && apt-get install -y --no-install-recommends python3 ca-certificates && rm -rf /var/lib/apt/lists/*
COPY app.py /app/
DOCKERFILE
echo 'print("hello")' >"$work/ctx/app.py"
"$a" -s "$work/state" import "$rootfs" debian >/dev/null

results="$work/results"
for r in $(seq 1 "$rounds"); do
  # Alternate which binary goes first, so neither always builds on a warmer machine.
  if [ $((r % 2)) = 1 ]; then order="A B"; else order="B A"; fi
  for backend in fuse overlayfs; do
    for which in $order; do
      if [ "$which" = A ]; then img=$a; else img=$b; fi
      start=$(date +%s.%N)
      "$img" -s "$work/state" build --no-cache --backend "$backend" -t t "$work/ctx" \
        >"$work/log" 2>&1 || { tail -20 "$work/log"; exit 1; }
      end=$(date +%s.%N)
      t=$(echo "$end - $start" | bc)
      echo "round $r $backend $which $t" | tee -a "$results"
    done
  done
done

median() { sort -n | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
printf '%-10s %10s %10s %8s\n' backend "A median" "B median" "A/B"
for backend in fuse overlayfs; do
  ma=$(awk -v be="$backend" '$3==be && $4=="A" {print $5}' "$results" | median)
  mb=$(awk -v be="$backend" '$3==be && $4=="B" {print $5}' "$results" | median)
  printf '%-10s %9.2fs %9.2fs %8.2f\n' "$backend" "$ma" "$mb" "$(echo "$ma / $mb" | bc -l)"
done
