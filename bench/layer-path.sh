#!/usr/bin/env bash
# Where a RUN step that writes many files spends its time after the step's process: one step
# that untars 72 MB in ~2,900 files (this machine's /usr/lib/python3.11 and /usr/share/perl) on
# the debootstrap bookworm base, built with `--no-cache` ROUNDS times on each backend,
# interleaved. Prints the median of each column of that step's line in `img build
# --progress=plain`'s time table (RUN/COPY: the untar through the backend; DIFF: writing the
# layer tar; STORE: storing it; COMMIT: the snapshot's commit), then overlayfs / fuse per
# column (above 1: fuse is faster).
#
# usage: bench/layer-path.sh [ROUNDS]        (as root; default 5 rounds)
#
# Needs the debootstrap fixture (see bench/build-compare.sh) and runc (tools/setup). IMG picks
# the img binary (default the release build).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-5}
img=${IMG:-/var/tmp/img-target/release/img}
fixture=${IMG_FIXTURES_DIR:-/var/tmp/img-fixtures}/debootstrap-bookworm-minbase-v1.tar
backends=(fuse overlayfs)
[ -f "$fixture" ] || { echo "layer-path: no $fixture (see bench/build-compare.sh)" >&2; exit 1; }

work=$(mktemp -d /var/tmp/layer-path.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/ctx"
tar -cf "$work/ctx/tree.tar" -C / usr/lib/python3.11 usr/share/perl
printf 'FROM debian\nCOPY tree.tar /\nRUN mkdir /opt/t && tar -xf /tree.tar -C /opt/t\n' \
  >"$work/ctx/Dockerfile"
for b in "${backends[@]}"; do
  "$img" -s "$work/state-$b" import --backend "$b" "$fixture" debian >/dev/null
done

# The step's line of the time table: its last 8 fields are the columns.
columns=(BASE RUN/COPY DIFF STORE COMMIT MOUNT OTHER TOTAL)
for ((r = 1; r <= rounds; r++)); do
  # The first backend alternates, so drift on the machine hits both alike.
  order=("${backends[@]}")
  ((r % 2 == 0)) && order=("${backends[1]}" "${backends[0]}")
  for b in "${order[@]}"; do
    line=$("$img" -s "$work/state-$b" build --no-cache --backend "$b" --progress=plain \
      -t tree "$work/ctx" 2>&1 | grep -E '^\[stage-0 3/3\] RUN .* [0-9]+\.[0-9]{3}$')
    fields=$(awk '{ for (i = NF - 7; i <= NF; i++) printf "%s ", $i }' <<<"$line")
    echo "round $r $b: $fields"
    echo "$b $fields" >>"$work/runs"
  done
done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
echo "medians over $rounds round(s), seconds:"
printf '%-10s' backend; printf ' %9s' "${columns[@]}"; echo
declare -A med
for b in "${backends[@]}"; do
  printf '%-10s' "$b"
  for i in "${!columns[@]}"; do
    med[$b,$i]=$(awk -v b="$b" -v c=$((i + 2)) '$1 == b { print $c }' "$work/runs" | median)
    printf ' %9.3f' "${med[$b,$i]}"
  done
  echo
done
printf '%-10s' "ovl/fuse"
for i in "${!columns[@]}"; do
  awk -v o="${med[overlayfs,$i]}" -v f="${med[fuse,$i]}" \
    'BEGIN { if (f > 0) printf " %9.2f", o / f; else printf " %9s", "-" }'
done
echo
