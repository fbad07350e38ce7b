#!/usr/bin/env bash
# write-random.sh — a 1 GiB write of random data with fsync (`dd conv=fsync`) into a fresh
# writable view, per backend, interleaved, caches dropped before each: fsbench's write_seq writes
# zeros, which imgfs stores as holes, so this is the write figure for real data.
# usage: bench/write-random.sh WORK ROUNDS BACKEND...   (as root, after `fsbench-setup.sh prepare`)
# example: IMGFS=/var/tmp/img-target/release/imgfs bench/write-random.sh /var/tmp/fsb 4 overlay imgfs
# The data comes from /dev/shm/rand.bin (made once, 1 GiB), so reading it costs no disk I/O.
# Prints "BACKEND SECONDS" per round; the first round's overlayfs usually pays for write-back of
# earlier work, so compare the later rounds.
set -euo pipefail
W=${1:?usage: write-random.sh WORK ROUNDS BACKEND...}; R=${2:?}; shift 2
D=$(cd "$(dirname "$0")" && pwd)
src=/dev/shm/rand.bin
[ -f "$src" ] || head -c 1073741824 /dev/urandom > "$src"
for _ in $(seq 1 "$R"); do
  for b in "$@"; do
    m=$("$D/fsbench-setup.sh" mount "$W" "$b")
    sync; echo 3 > /proc/sys/vm/drop_caches
    /usr/bin/time -f "$b %e" dd if="$src" of="$m/new.bin" bs=1M count=1024 conv=fsync status=none
    "$D/fsbench-setup.sh" umount "$W" "$b"
  done
done
