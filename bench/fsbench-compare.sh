#!/usr/bin/env bash
# fsbench-compare.sh — run fsbench on several backends over the same data, interleaved, and print
# each workload's median seconds per backend and the ratio time_overlay / time_backend.
# usage: fsbench-compare.sh WORK ROUNDS BACKEND... (after `fsbench-setup.sh prepare WORK TREE_DIR`)
# example: IMGFS=/var/tmp/img-target/release/imgfs bench/fsbench-compare.sh /var/tmp/fsb 3 overlay fuse-overlayfs imgfs
# Uses fsbench-setup.sh and fsbench.sh from this directory; needs root.
set -euo pipefail
W=${1:?}; R=${2:?}; shift 2; B=("$@")
D=$(cd "$(dirname "$0")" && pwd); out="$W/results.$$"; : > "$out"
for r in $(seq 1 "$R"); do
  for b in "${B[@]}"; do
    m=$("$D/fsbench-setup.sh" mount "$W" "$b")
    "$D/fsbench.sh" "$m" "$W/tree.tar" | sed "s/^/$b /" >> "$out"
    "$D/fsbench-setup.sh" umount "$W" "$b"
  done
done
python3 - "$out" "${B[@]}" <<'PY'
import sys, statistics as st, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    b, w, s = line.split()
    if s != "nan": rows[(b, w)].append(float(s))
backs = sys.argv[2:]; works = list(dict.fromkeys(w for (_, w) in rows))
print("workload".ljust(12) + "".join(b.rjust(16) for b in backs) + "".join(("ovl/" + b).rjust(20) for b in backs if b != "overlay"))
for w in works:
    med = {b: st.median(rows[(b, w)]) for b in backs if rows.get((b, w))}
    line = w.ljust(12) + "".join(f"{med.get(b, float('nan')):16.3f}" for b in backs)
    if "overlay" in med:
        line += "".join(f"{med['overlay'] / med[b]:20.2f}" for b in backs if b != "overlay" and b in med)
    print(line)
PY
