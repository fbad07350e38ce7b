#!/usr/bin/env bash
# fsbench-setup.sh — make the lower layer for fsbench.sh once, then mount a writable
# view of it with one backend, so every backend runs the same workloads on the same data.
#
# usage: fsbench-setup.sh prepare WORK TREE_DIR     # WORK/lower = big.bin + tree/, WORK/tree.tar, WORK/lower.tar
#        fsbench-setup.sh mount   WORK BACKEND       # prints the merged dir; BACKEND: native|overlay|fuse-overlayfs|fuse-overlayfs2|imgfs
#        fsbench-setup.sh umount  WORK BACKEND
# FUSE_OVERLAYFS=path picks another fuse-overlayfs build; FUSE_OVERLAYFS2=path a second one to compare.
# imgfs is driven through its CLI (IMGFS=path/to/imgfs, default: imgfs on PATH; build it with
# `cargo build --release -p imgfs`, then IMGFS=/var/tmp/img-target/release/imgfs):
#   imgfs init S; imgfs import --store S --name base LAYER.tar; imgfs mount --store S --snapshot base --writable MNT
# IMGFS_MOUNT_ARGS adds arguments to that `imgfs mount` (e.g. "--no-io-uring").
# Needs root (overlay mounts, dropping caches).
set -euo pipefail
cmd=${1:?}; W=${2:?}; B=${3:-}
IMGFS=${IMGFS:-imgfs}
case $cmd in
  prepare)
    T=${3:?tree dir}
    mkdir -p "$W/lower"
    [ -f "$W/lower/big.bin" ] || head -c 1073741824 /dev/urandom > "$W/lower/big.bin"
    [ -d "$W/lower/tree" ] || cp -a "$T" "$W/lower/tree"
    [ -f "$W/tree.tar" ] || tar -C "$(dirname "$T")" -cf "$W/tree.tar" "$(basename "$T")"
    [ -f "$W/lower.tar" ] || tar -C "$W/lower" -cf "$W/lower.tar" .
    ;;
  mount)
    M="$W/$B/merged"; rm -rf "${W:?}/$B"; mkdir -p "$M" "$W/$B/upper" "$W/$B/work"
    case $B in
      native) rm -rf "$M"; cp -a "$W/lower" "$M" ;;
      overlay) mount -t overlay overlay -o "lowerdir=$W/lower,upperdir=$W/$B/upper,workdir=$W/$B/work" "$M" ;;
      fuse-overlayfs) "${FUSE_OVERLAYFS:-fuse-overlayfs}" -o "lowerdir=$W/lower,upperdir=$W/$B/upper,workdir=$W/$B/work" "$M" ;;
      fuse-overlayfs2) "${FUSE_OVERLAYFS2:?set FUSE_OVERLAYFS2 to a second fuse-overlayfs build}" -o "lowerdir=$W/lower,upperdir=$W/$B/upper,workdir=$W/$B/work" "$M" ;;
      imgfs)
        "$IMGFS" init "$W/$B/store" >/dev/null
        "$IMGFS" import --store "$W/$B/store" --name base "$W/lower.tar" >/dev/null
        ( "$IMGFS" mount ${IMGFS_MOUNT_ARGS:-} --store "$W/$B/store" --snapshot base --writable "$M" >"$W/$B/mount.log" 2>&1 & )
        for _ in $(seq 1 100); do mountpoint -q "$M" && break; sleep 0.1; done
        mountpoint -q "$M" || { echo "imgfs did not mount; see $W/$B/mount.log" >&2; exit 1; } ;;
      *) echo "unknown backend $B" >&2; exit 2 ;;
    esac
    echo "$M" ;;
  umount)
    M="$W/$B/merged"
    case $B in
      native) ;;
      overlay) umount "$M" ;;
      *) fusermount3 -u "$M" ;;
    esac
    rm -rf "${W:?}/$B" ;;   # free the space before the next backend runs
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
