#!/usr/bin/env bash
# Whole-process comparison of `img build` with BuildKit (Debian's docker.io 20.10) and buildah
# on the Dockerfiles of bench/corpus/: each is built cold (a fresh store holding only the base
# image), again with nothing changed (fully cached), and after one source file changed. Tools
# run interleaved, round after round, the first tool rotating, so drift on the machine hits
# them alike. Before any time is reported, the images the tools built are unpacked and their
# file trees compared. Prints each run, then medians per (Dockerfile, scenario, tool) and the
# ratios peer/img (above 1: img is faster).
#
# usage: bench/build-compare.sh [ROUNDS] [NAME...]     (as root; default 3 rounds, every NAME)
#
#   TOOLS="img-fuse buildkit" bench/build-compare.sh 1 apt multistage    # a quick run
#
# Tools (TOOLS, default all but buildah-vfs): img-fuse, img-overlayfs (as root),
# img-fuse-user, img-overlayfs-user (as the ordinary user `tests`), buildkit, buildah (overlay
# storage), buildah-vfs. IMG picks the img binary (default the release build); CA_BUNDLE the
# CA certificates the HTTPS-fetching Dockerfiles trust (default the host's, see
# bench/corpus/pip/Dockerfile).
#
# Needs: the debootstrap fixture (bench/rootfs.sh with IMG_ROOTFS_TAR set to the path below,
# or any test that uses `tests::fixtures::debootstrap_rootfs_tar`), and what tools/setup
# installs (runc, buildah, skopeo, umoci, the user `tests`). Installs docker.io when BuildKit
# is selected and /usr/bin/docker is missing. Every RUN step uses the host network.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
if [[ ${1:-} =~ ^[0-9]+$ ]]; then
  rounds=$1
  shift
fi
if [ $# -gt 0 ]; then
  names=("$@")
else
  names=()
  for d in bench/corpus/*/; do names+=("$(basename "$d")"); done
fi
read -r -a tools <<<"${TOOLS:-img-fuse img-overlayfs img-fuse-user img-overlayfs-user buildkit buildah}"
img=${IMG:-/var/tmp/img-target/release/img}
fixture=${IMG_FIXTURES_DIR:-/var/tmp/img-fixtures}/debootstrap-bookworm-minbase-v1.tar
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
# /usr/local/bin/docker may be a newer client that insists on buildx; Debian's 20.10 client
# talks to its own daemon's BuildKit directly.
docker_bin=/usr/bin/docker
user=tests

# The file of each Dockerfile's context that the one-file-change scenario edits: the
# application source, copied after the dependencies are installed, as real Dockerfiles do.
declare -A edit_file=(
  [apt]=app.py [pip]=app.py [npm]=index.js [cargo]=src/main.rs [multistage]=hello.c
  [steps]=src/file10.c
)

# Paths that legitimately differ between any two builds of the same Dockerfile, whatever the
# tool (extended regular expressions matched against the path relative to the image root):
ignored_paths=(
  # Logs: apt's and dpkg's carry timestamps and durations, npm names its logs by the time.
  '^var/log/'
  '^root/\.npm/_logs(/|$)'
  # debconf's databases, rewritten with whatever order its hash tables give.
  '^var/cache/debconf/'
  # npm's HTTP cache: index entries carry fetch times, and its size what the server sent.
  '^root/\.npm/_cacache(/|$)'
  # cargo's copy of the sparse index, whose entries carry the server's ETag or Last-Modified.
  '^root/\.cargo/registry/index/'
  # Not a difference between builds but buildah's own: it bind-mounts a generated /etc/hosts
  # over a RUN step and leaves the empty file it mounted over in the layer when the base has
  # none (containers/buildah#4242). Compared, it would fail every Dockerfile with a RUN step.
  '^etc/hosts$'
)

for t in "${tools[@]}"; do
  case $t in
    img-fuse | img-overlayfs | img-fuse-user | img-overlayfs-user | buildkit | buildah | buildah-vfs) ;;
    *) echo "build-compare: unknown tool $t" >&2; exit 2 ;;
  esac
done
for n in "${names[@]}"; do
  [ -f "bench/corpus/$n/Dockerfile" ] || { echo "build-compare: no bench/corpus/$n/Dockerfile" >&2; exit 2; }
  [ -n "${edit_file[$n]:-}" ] || { echo "build-compare: no file to edit for $n (edit_file)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "build-compare: run as root" >&2; exit 1; }
[ -f "$fixture" ] || {
  echo "build-compare: $fixture is missing; make it with IMG_ROOTFS_TAR=$fixture bench/rootfs.sh" >&2
  exit 1
}

work=$(mktemp -d /var/tmp/build-compare.XXXXXX)
# The ordinary user reads the contexts and the base archive from here.
chmod 755 "$work"
dockerd_pid=

cleanup() {
  if [ -n "$dockerd_pid" ]; then
    kill "$dockerd_pid" 2>/dev/null || true
    # dockerd stops the containerd it started and unmounts its layers before it exits.
    while kill -0 "$dockerd_pid" 2>/dev/null; do sleep 0.2; done
  fi
  for t in buildah buildah-vfs; do
    if [ -d "$work/state-$t" ]; then buildah_in "$t" rm -a >/dev/null 2>&1 || true; fi
  done
  # Whatever a killed build left mounted under the work directory, deepest first.
  findmnt -rn -o TARGET | grep "^$work/" | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

as_user() { # command...: as `tests`, with its own home, as builder/tests/it/unprivileged.rs does
  setpriv --reuid="$user" --regid="$user" --init-groups env -u XDG_DATA_HOME HOME="$work/home" "$@"
}
docker_cli() {
  DOCKER_CONFIG="$work/docker-config" "$docker_bin" -H "unix://$work/docker.sock" "$@"
}
buildah_in() { # tool args...: buildah on the tool's own store
  local s="$work/state-$1" driver=overlay
  [ "$1" = buildah-vfs ] && driver=vfs
  shift
  buildah --root "$s/root" --runroot "$s/run" --storage-driver "$driver" "$@"
}
img_in() { # tool args...: img on the tool's own state, as root or as `tests`
  local t=$1
  shift
  case $t in
    *-user) as_user "$img" -s "$work/home/state-$t" "$@" ;;
    *) "$img" -s "$work/state-$t" "$@" ;;
  esac
}
selected() { # tool-pattern: whether any selected tool matches
  local t
  for t in "${tools[@]}"; do
    # shellcheck disable=SC2053 # the pattern is meant to glob
    [[ $t == $1 ]] && return 0
  done
  return 1
}

# The base image, tagged `debian` in every tool: the fixture imported by img with the PATH
# Debian's official images set, saved as a docker-archive that every tool loads. Like those
# images it has an empty /dev: the runtime provides the devices, and an ordinary user cannot
# create device nodes on a real file system (img's overlayfs backend run as `tests` leaves
# them out of its snapshots, so the trees the tools see would differ).
setup_base() {
  cp "$fixture" "$work/rootfs.tar"
  tar --delete --wildcards -f "$work/rootfs.tar" './dev/?*'
  "$img" -s "$work/state-base" import "$work/rootfs.tar" debian \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'CMD ["bash"]' >/dev/null
  "$img" -s "$work/state-base" save -o "$work/debian.tar" debian
  chmod 644 "$work/debian.tar"
  rm -rf "$work/state-base" "$work/rootfs.tar"
}

setup_user() {
  getent passwd "$user" >/dev/null || { echo "build-compare: no user $user (tools/setup adds it)" >&2; exit 1; }
  mkdir -p "$work/home"
  chown "$user:$user" "$work/home"
  # img mounts imgfs as the user; distributions ship /dev/fuse usable by everyone, and the
  # unprivileged tests make it so too.
  chmod 666 /dev/fuse
}

# A daemon of our own: its own data root, socket and pid file under the work directory, no
# bridge or iptables rules (builds use the host network), stopped by the EXIT trap.
start_dockerd() {
  if [ ! -x "$docker_bin" ]; then
    echo "installing docker.io (BuildKit) with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io >/dev/null
  fi
  mkdir -p "$work/docker-config"
  dockerd --data-root "$work/docker/data" --exec-root "$work/docker/exec" \
    -H "unix://$work/docker.sock" --pidfile "$work/docker.pid" \
    --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
    >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  local _
  for _ in $(seq 1 100); do
    docker_cli version >/dev/null 2>&1 && return 0
    kill -0 "$dockerd_pid" 2>/dev/null || break
    sleep 0.3
  done
  tail -20 "$work/dockerd.log" >&2
  echo "build-compare: dockerd did not start (log above)" >&2
  exit 1
}

# A fresh store holding only the base image. BuildKit keeps its daemon (starting one is not
# part of a build) but loses its build cache and the images built before.
reset() { # tool name
  local t=$1 n=$2
  case $t in
    img-*)
      rm -rf "$work/state-$t" "$work/home/state-$t"
      # Into the backend the builds use, as `docker load` unpacks into the daemon's storage.
      local backend=${t#img-}
      img_in "$t" load --backend "${backend%-user}" -i "$work/debian.tar" >/dev/null ;;
    buildkit)
      docker_cli rmi -f "bench-$n" >/dev/null 2>&1 || true
      docker_cli builder prune -af >/dev/null ;;
    buildah*)
      buildah_in "$t" rm -a >/dev/null 2>&1 || true
      rm -rf "$work/state-$t"
      local driver=overlay
      [ "$t" = buildah-vfs ] && driver=vfs
      skopeo copy -q "docker-archive:$work/debian.tar" \
        "containers-storage:[$driver@$work/state-$t/root+$work/state-$t/run]docker.io/library/debian:latest" ;;
  esac
}

build() { # tool name
  local t=$1 n=$2 ctx="$work/ctx/$2"
  case $t in
    img-*) local backend=${t#img-}
      img_in "$t" build --backend "${backend%-user}" -t "bench-$n" "$ctx" ;;
    buildkit) DOCKER_BUILDKIT=1 docker_cli build --network host --progress plain -t "bench-$n" "$ctx" ;;
    buildah*) buildah_in "$t" bud --layers --isolation oci --network host --pull=never -q \
      -t "bench-$n" "$ctx" ;;
  esac
}

timed() { # tool name scenario -> seconds on stdout; the build's output goes to a log
  local log="$work/logs/$2-$1-$3.log" start end
  start=$EPOCHREALTIME
  if ! build "$1" "$2" >"$log" 2>&1; then
    tail -30 "$log" >&2
    echo "build-compare: $1 failed to build $2 ($3); log above" >&2
    exit 1
  fi
  end=$EPOCHREALTIME
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f\n", e - s }'
}

# A fresh copy of the Dockerfile's context from the repository, plus the CA bundle.
fresh_context() { # name
  rm -rf "$work/ctx/$1"
  mkdir -p "$work/ctx"
  cp -r "bench/corpus/$1" "$work/ctx/$1"
  cp "$ca_bundle" "$work/ctx/$1/extra-ca.crt"
  chmod -R a+rX "$work/ctx/$1"
}

# Appends a comment to the edited file: the same bytes for every tool in a round, so their
# images stay comparable, and new bytes every round.
edit_context() { # name round
  local f="$work/ctx/$1/${edit_file[$1]}"
  case $f in
    *.py) echo "# edited in round $2" >>"$f" ;;
    *.c) echo "/* edited in round $2 */" >>"$f" ;;
    *) echo "// edited in round $2" >>"$f" ;;
  esac
}

# The image the tool built, unpacked by umoci from an OCI layout every tool's image is copied
# into, listed one entry a line: path, type, mode, owner, size (not for directories, whose size
# depends on the file system's history) and symlink target, into $work/check/TOOL-NAME.list.
listing() { # tool name
  local t=$1 n=$2 dir="$work/check/$1" archive
  rm -rf "$dir"
  mkdir -p "$dir"
  case $t in
    img-*-user)
      archive="$work/home/check-$t.tar"
      img_in "$t" save -o "$archive" "bench-$n"
      skopeo copy -q "docker-archive:$archive" "oci:$dir/layout:image"
      rm -f "$archive" ;;
    img-*)
      img_in "$t" save -o "$dir/image.tar" "bench-$n"
      skopeo copy -q "docker-archive:$dir/image.tar" "oci:$dir/layout:image" ;;
    buildkit)
      docker_cli save -o "$dir/image.tar" "bench-$n"
      skopeo copy -q "docker-archive:$dir/image.tar" "oci:$dir/layout:image" ;;
    buildah*) buildah_in "$t" push -q "bench-$n" "oci:$dir/layout:image" >/dev/null ;;
  esac
  umoci unpack --image "$dir/layout:image" "$dir/bundle" >/dev/null
  (
    cd "$dir/bundle/rootfs"
    find . -mindepth 1 ! -type d -printf '%P\t%y\t%m\t%U:%G\t%s\t%l\n'
    find . -mindepth 1 -type d -printf '%P\t%y\t%m\t%U:%G\t-\t\n'
  ) | IGNORED="$(IFS='|'; echo "${ignored_paths[*]}")" awk -F '\t' '$1 !~ ENVIRON["IGNORED"]' |
    LC_ALL=C sort >"$work/check/$t-$n.list"
  rm -rf "$dir"
}

# Compares the tool's image with the first one built from the same Dockerfile; prints the
# entries that differ and fails on any.
check_image() { # tool name
  local t=$1 n=$2 list="$work/check/$1-$2.list" reference
  listing "$t" "$n"
  reference=${reference_of[$n]:-}
  if [ -z "$reference" ]; then
    reference_of[$n]=$t
    echo "check $n: $t's image has $(wc -l <"$list") entries (the reference)" >&2
    return
  fi
  if ! diff "$work/check/$reference-$n.list" "$list" >"$work/check/diff"; then
    echo "check $n: $t's image differs from $reference's (< $reference, > $t;" \
      "path, type, mode, owner, size, link):" >&2
    grep '^[<>]' "$work/check/diff" >&2
    exit 1
  fi
  echo "check $n: $t's image agrees with $reference's" >&2
}

mkdir -p "$work/logs" "$work/check"
setup_base
selected 'img-*-user' && setup_user
if selected buildkit; then
  start_dockerd
  docker_cli load -i "$work/debian.tar" >/dev/null
fi

declare -A reference_of
results="$work/results"
for r in $(seq 1 "$rounds"); do
  # Rotate the order, so that no tool always builds first, on the coldest page cache.
  order=("${tools[@]:$(((r - 1) % ${#tools[@]}))}" "${tools[@]:0:$(((r - 1) % ${#tools[@]}))}")
  for n in "${names[@]}"; do
    for t in "${order[@]}"; do
      fresh_context "$n"
      reset "$t" "$n"
      cold=$(timed "$t" "$n" cold)
      cached=$(timed "$t" "$n" cached)
      edit_context "$n" "$r"
      changed=$(timed "$t" "$n" changed)
      printf '%s cold %s %s\n%s cached %s %s\n%s changed %s %s\n' \
        "$n" "$t" "$cold" "$n" "$t" "$cached" "$n" "$t" "$changed" >>"$results"
      echo "round $r $n $t: cold $cold cached $cached one-file-changed $changed" >&2
      # The images of the first round are the ones checked: a mismatch stops the run before
      # any more time is spent or reported.
      [ "$r" = 1 ] && check_image "$t" "$n"
    done
  done
done

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
median_of() { # name scenario tool
  awk -v n="$1" -v s="$2" -v t="$3" '$1 == n && $2 == s && $3 == t { print $4 }' "$results" | median
}

echo
echo "medians over $rounds round(s), seconds:"
printf '%-11s %-8s' Dockerfile scenario
for t in "${tools[@]}"; do printf ' %18s' "$t"; done
echo
for n in "${names[@]}"; do
  for s in cold cached changed; do
    printf '%-11s %-8s' "$n" "$s"
    for t in "${tools[@]}"; do printf ' %18s' "$(median_of "$n" "$s" "$t")"; done
    echo
  done
done

# Peer/img ratios per Dockerfile and scenario, and their median over the Dockerfiles.
img_tools=() peers=()
for t in "${tools[@]}"; do
  case $t in img-*) img_tools+=("$t") ;; *) peers+=("$t") ;; esac
done
for p in "${peers[@]}"; do
  [ ${#img_tools[@]} -gt 0 ] || break
  echo
  echo "ratio $p / img (median times; above 1: img is faster):"
  printf '%-11s %-8s' Dockerfile scenario
  for t in "${img_tools[@]}"; do printf ' %18s' "$t"; done
  echo
  declare -A per_scenario=()
  for n in "${names[@]}" all; do
    for s in cold cached changed; do
      printf '%-11s %-8s' "$n" "$s"
      for t in "${img_tools[@]}"; do
        if [ "$n" = all ]; then
          ratio=$(printf '%.2f' "$(tr ' ' '\n' <<<"${per_scenario[$s,$t]}" | grep -v '^$' | median)")
        else
          ratio=$(awk -v a="$(median_of "$n" "$s" "$p")" -v b="$(median_of "$n" "$s" "$t")" \
            'BEGIN { printf "%.2f", a / b }')
          per_scenario[$s,$t]+="$ratio "
        fi
        printf ' %18s' "$ratio"
      done
      echo
    done
  done
  unset per_scenario
done
