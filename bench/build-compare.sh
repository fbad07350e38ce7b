#!/usr/bin/env bash
# Whole-process comparison of `img build` and `buildah bud` on one multi-stage Dockerfile with
# several RUN and COPY steps on a busybox base: a cold build, a fully cached rebuild, and a
# rebuild after one context file changed. Tools run interleaved, round after round, so drift on
# the machine hits them alike; the table shows medians and the ratio buildah/img (above 1: img
# is faster).
#
# usage: bench/build-compare.sh [ROUNDS]      (as root; IMG=path/to/img, default the release build)
# Needs: runc, buildah, skopeo, umoci, busybox-static (tools/setup installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
img=${IMG:-/var/tmp/img-target/release/img}
work=$(mktemp -d /var/tmp/build-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The base image: busybox-static with one symlink per applet, as an OCI layout and a
# docker-archive (what img loads).
root="$work/rootfs"
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root" "$root/dev" "$root/proc" "$root/sys"
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
: >"$root/etc/hosts"; : >"$root/etc/resolv.conf"; : >"$root/etc/hostname"
umoci init --layout "$work/layout"
umoci new --image "$work/layout:busybox"
umoci unpack --image "$work/layout:busybox" "$work/bundle"
cp -a "$root/." "$work/bundle/rootfs/"
umoci repack --image "$work/layout:busybox" "$work/bundle"
umoci config --image "$work/layout:busybox" --config.cmd sh \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
skopeo copy -q "oci:$work/layout:busybox" "docker-archive:$work/busybox.tar:busybox:latest"

# The context: 100 source files, a dependency list, some config.
ctx="$work/ctx"
mkdir -p "$ctx/src" "$ctx/config"
for i in $(seq 1 100); do head -c 8192 /dev/urandom | base64 >"$ctx/src/file$i.c"; done
seq 1 500 | sort -R >"$ctx/deps.txt"
for i in 1 2 3; do echo "key$i=value$i" >"$ctx/config/app$i.conf"; done
cat >"$ctx/Dockerfile" <<'EOF'
FROM busybox AS deps
RUN mkdir -p /deps && for i in $(seq 1 200); do echo "dep $i" > /deps/dep$i; done
COPY deps.txt /deps/
RUN sort -n /deps/deps.txt > /deps/sorted

FROM busybox AS build
COPY --from=deps /deps /deps
COPY src/ /src/
RUN cd /src && cat *.c > /app.bin && sha256sum /app.bin > /app.sum
RUN tar -cf /src.tar /src

FROM busybox
COPY --from=build /app.bin /app.sum /opt/app/
COPY config/ /etc/app/
RUN echo built > /etc/app/stamp && ls /opt/app > /etc/app/contents
ENV APP_HOME=/opt/app
CMD ["/bin/sh"]
EOF

tools=(img-fuse img-overlayfs buildah-vfs buildah-overlay)
state() { echo "$work/state-$1"; }
buildah_cmd() { # driver
  echo buildah --root "$(state "buildah-$1")/root" --runroot "$(state "buildah-$1")/run" --storage-driver "$1"
}
reset() { # tool: a fresh store holding only the base image
  local t=$1 s
  s=$(state "$t")
  case $t in
    buildah-*) $(buildah_cmd "${t#buildah-}") rm -a >/dev/null 2>&1 || true
               $(buildah_cmd "${t#buildah-}") rmi -a -f >/dev/null 2>&1 || true ;;
  esac
  rm -rf "$s"
  case $t in
    img-*) "$img" -s "$s" load -i "$work/busybox.tar" >/dev/null ;;
    buildah-*) local d=${t#buildah-}
      skopeo copy -q "oci:$work/layout:busybox" \
        "containers-storage:[$d@$s/root+$s/run]docker.io/library/busybox:latest" ;;
  esac
}
build() { # tool
  local t=$1
  case $t in
    img-*) "$img" -s "$(state "$t")" build --backend "${t#img-}" -t bench "$ctx" ;;
    buildah-*) $(buildah_cmd "${t#buildah-}") bud --layers --isolation oci --pull=never -q -t bench "$ctx" ;;
  esac
}
timed() { # tool -> seconds
  local start end
  start=$(date +%s.%N)
  build "$1" >"$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

declare -A times
for r in $(seq 1 "$rounds"); do
  for t in "${tools[@]}"; do
    reset "$t"
    cold=$(timed "$t")
    cached=$(timed "$t")
    echo "// changed $r" >>"$ctx/src/file50.c"
    changed=$(timed "$t")
    times[$t,cold]+="$cold "
    times[$t,cached]+="$cached "
    times[$t,changed]+="$changed "
    echo "round $r $t: cold $cold cached $cached one-file-changed $changed" >&2
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-16s %10s %10s %18s\n' tool cold cached one-file-changed
for t in "${tools[@]}"; do
  printf '%-16s %10s %10s %18s\n' "$t" \
    "$(echo "${times[$t,cold]}" | median)" \
    "$(echo "${times[$t,cached]}" | median)" \
    "$(echo "${times[$t,changed]}" | median)"
done
echo
echo "ratio buildah/img-fuse (median; above 1 means img is faster):"
for b in buildah-vfs buildah-overlay; do
  for phase in cold cached changed; do
    i=$(echo "${times[img-fuse,$phase]}" | median)
    o=$(echo "${times[$b,$phase]}" | median)
    printf '  %-16s %-8s %6.2f\n' "$b" "$phase" "$(echo "$o / $i" | bc -l)"
  done
done
