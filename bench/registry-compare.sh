#!/usr/bin/env bash
# Whole-process comparison of `img push`/`img pull` with `skopeo copy` of the same image against
# Debian's docker-registry on loopback: a ~200 MB image of four layers (incompressible data, so
# the run measures transfer, hashing and storing rather than gzip). Each tool gets its own empty
# registry per round, so neither finds blobs already there or mounts them across repositories.
# Tools run interleaved, round after round; the table shows medians and skopeo/img (above 1: img
# is faster).
#
# `img pull` does more than `skopeo copy docker:// oci:`: it also applies the layers into imgfs
# snapshots (the "Snapshot ref" it prints), so its column includes that.
#
# usage: bench/registry-compare.sh [ROUNDS]   (as root; IMG=path/to/img, default the debug build)
# Needs: docker-registry, skopeo (tools/setup installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
img=${IMG:-${CARGO_TARGET_DIR:-/var/tmp/img-target}/debug/img}
work=$(mktemp -d /var/tmp/registry-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A loopback port nothing answers on.
free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}

# Starts an empty registry; prints its host:port.
start_registry() {
  local dir port
  dir=$(mktemp -d "$work/reg.XXXX"); port=$(free_port)
  cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: 127.0.0.1:$port
  secret: bench
YAML
  docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
    sleep 0.1
  done
  REG="127.0.0.1:$port"
}

now() { date +%s.%N; }

# The image: FROM scratch and four COPY steps of 50 MB of random bytes each.
ctx="$work/ctx"; mkdir -p "$ctx"
for l in 1 2 3 4; do head -c $((50 << 20)) /dev/urandom >"$ctx/layer$l.bin"; done
printf 'FROM scratch\nCOPY layer1.bin /\nCOPY layer2.bin /\nCOPY layer3.bin /\nCOPY layer4.bin /\n' >"$ctx/Dockerfile"
state="$work/state"
"$img" -s "$state" build -t bench:1 "$ctx" >/dev/null 2>&1
"$img" -s "$state" save --format oci-archive -o "$work/bench.tar" bench:1
mkdir -p "$work/layout"; tar -xf "$work/bench.tar" -C "$work/layout"
size=$(du -sb "$work/layout/blobs" | cut -f1)
echo "image: 4 layers, $((size >> 20)) MiB of blobs; $rounds rounds"

declare -a img_push sk_push img_pull sk_pull
for r in $(seq "$rounds"); do
  start_registry; a=$REG
  t0=$(now); "$img" -s "$state" push bench:1 "$a/bench/img:1" >/dev/null 2>&1; t1=$(now)
  img_push+=("$(echo "$t1 - $t0" | bc)")
  start_registry; b=$REG
  t0=$(now); skopeo copy -q --dest-tls-verify=false "oci:$work/layout" "docker://$b/bench/sk:1"; t1=$(now)
  sk_push+=("$(echo "$t1 - $t0" | bc)")

  rm -rf "$work/pull-state" "$work/pull-layout"
  t0=$(now); "$img" -s "$work/pull-state" pull "$a/bench/img:1" >/dev/null 2>&1; t1=$(now)
  img_pull+=("$(echo "$t1 - $t0" | bc)")
  t0=$(now); skopeo copy -q --src-tls-verify=false "docker://$b/bench/sk:1" "oci:$work/pull-layout:x"; t1=$(now)
  sk_pull+=("$(echo "$t1 - $t0" | bc)")
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  pids=()
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mp=$(median "${img_push[@]}"); sp=$(median "${sk_push[@]}")
ml=$(median "${img_pull[@]}"); sl=$(median "${sk_pull[@]}")
printf '| operation | img (s) | skopeo copy (s) | skopeo/img |\n|---|---|---|---|\n'
printf '| push | %.2f | %.2f | %.2f |\n' "$mp" "$sp" "$(echo "$sp / $mp" | bc -l)"
printf '| pull | %.2f | %.2f | %.2f |\n' "$ml" "$sl" "$(echo "$sl / $ml" | bc -l)"
echo "raw: img push ${img_push[*]}; skopeo push ${sk_push[*]}; img pull ${img_pull[*]}; skopeo pull ${sk_pull[*]}"
