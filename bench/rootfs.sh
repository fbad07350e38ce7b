#!/bin/sh
# Builds the root file system tar that the `import` benchmark reads: a Debian bookworm minbase
# tree from debootstrap, archived the way image builders archive a layer. Built once and cached;
# a second run does nothing. Needs root (debootstrap chroots and creates device nodes).
#
#   bench/rootfs.sh            # writes /var/tmp/img-fixtures/bookworm-minbase.tar
#   IMG_ROOTFS_TAR=/x.tar MIRROR=http://host/debian bench/rootfs.sh
set -eu

out=${IMG_ROOTFS_TAR:-/var/tmp/img-fixtures/bookworm-minbase.tar}
mirror=${MIRROR:-http://deb.debian.org/debian}

if [ -e "$out" ]; then
    echo "$out exists; delete it to rebuild"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "rootfs.sh: debootstrap needs root" >&2
    exit 1
fi
command -v debootstrap >/dev/null || {
    echo "rootfs.sh: debootstrap is missing (apt-get install debootstrap)" >&2
    exit 1
}

dir=$(dirname "$out")
mkdir -p "$dir"
# The tree and the half-written tar live beside the result, so the final rename is atomic and an
# interrupted run never leaves a truncated tar under the cached name.
work=$(mktemp -d "$dir/.rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

debootstrap --variant=minbase bookworm "$work/root" "$mirror"
tar --numeric-owner --xattrs --sort=name -C "$work/root" -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$out"
echo "wrote $out ($(du -h "$out" | cut -f1))"
