#!/bin/sh
# Builds the root file system tar that the `import` benchmark reads: a Debian bookworm minbase
# tree from debootstrap, archived the way image builders archive a layer. Built once and cached;
# a second run does nothing. Needs root (debootstrap chroots and creates device nodes).
#
#   bench/rootfs.sh            # writes /var/tmp/img-fixtures/bookworm-minbase.tar
#   IMG_ROOTFS_TAR=/x.tar MIRROR=URI bench/rootfs.sh
#
# The Debian mirror is $MIRROR, else the first .../debian URI of this machine's apt sources
# (the mirror it is known to reach), else debootstrap's own default. The repository names no
# mirror itself.
set -eu

out=${IMG_ROOTFS_TAR:-/var/tmp/img-fixtures/bookworm-minbase.tar}

# The first `deb URI ...` (one-line style) or `URIs: URI ...` (deb822) that ends in /debian.
apt_mirror() {
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk '$1 == "URIs:" { for (i = 2; i <= NF; i++) print $i }
             $1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; break } }' "$f"
    done | sed 's:/*$::' | grep -m1 '/debian$' || true
}
mirror=${MIRROR:-$(apt_mirror)}

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

# Without a mirror argument debootstrap picks its own default.
debootstrap --variant=minbase bookworm "$work/root" ${mirror:+"$mirror"}
tar --numeric-owner --xattrs --sort=name -C "$work/root" -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$out"
echo "wrote $out ($(du -h "$out" | cut -f1))"
