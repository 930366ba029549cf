#!/usr/bin/env bash
# Builds every image the Docker demo (examples/compose/) uses, without a container registry:
#
#   rocketmesh-base:bookworm   a minimal Debian bookworm made here with debootstrap and
#                              `docker import`; made only when the tag is absent (cached)
#   rocketmesh:latest          the rocketmesh binary built on this host + iptables (the init
#                              container) + ca-certificates; runs as uid 10001
#   rocketmesh-app:latest      Python 3 + the Apache RocketMQ C++ client (PyPI rocketmq==0.4.4)
#                              + a legacy producer / push consumer (examples/compose/app/)
#   rocketmesh-prometheus:latest  Debian's prometheus package (the compose `observe` profile)
#
# Every image is built FROM the local base by tag with --pull=false: nothing is pulled. The
# packages come from Debian's archive (apt inside the builds, debootstrap for the base) and the
# rocketmq wheel from PyPI through this host's pip (so the build containers need no PyPI access
# or proxy settings of their own).
#
# Usage: examples/docker/build-images.sh [--rebuild-base]
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), CARGO_TARGET_DIR,
#              PYTHON (default python3), DOCKER (default docker).
# Needs root for debootstrap (installed with apt-get when missing) the first time the base is made.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
python="${PYTHON:-python3}"
docker="${DOCKER:-docker}"
base=rocketmesh-base:bookworm
rebuild_base=false
for arg in "$@"; do
  case "$arg" in
    --rebuild-base) rebuild_base=true ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

started=$SECONDS
step_started=$SECONDS
step() {
  echo "== $* (at ${SECONDS}s)"
  step_started=$SECONDS
}
step_done() {
  echo "   done in $((SECONDS - step_started))s"
}

if ! "$docker" info >/dev/null 2>&1; then
  echo "error: no Docker engine answers ('$docker info' failed); start the daemon first" >&2
  exit 1
fi

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

work="$(mktemp -d "${TMPDIR:-/tmp}/rocketmesh-images.XXXXXX")"
cleanup() { as_root rm -rf "$work"; }
trap cleanup EXIT

# --- the base -------------------------------------------------------------------------------
make_base() {
  if ! command -v debootstrap >/dev/null; then
    echo "   installing debootstrap (apt-get)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      debootstrap
  fi
  local rootfs="$work/rootfs"
  mkdir -p "$rootfs"
  as_root debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    echo "error: debootstrap failed (full log above was cut to 30 lines)" >&2
    exit 1
  }
  # Slim, as Debian's own -slim images: no docs (but the copyright files), man pages or
  # translations, now or from later apt installs; no recommends; apt's caches emptied.
  as_root tee "$rootfs/etc/dpkg/dpkg.cfg.d/01-rocketmesh-slim" >/dev/null <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  as_root tee "$rootfs/etc/apt/apt.conf.d/01-rocketmesh-slim" >/dev/null <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
  as_root tee "$rootfs/etc/apt/sources.list" >/dev/null <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
  as_root find "$rootfs/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
  as_root find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  as_root rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log \
    "$rootfs"/dev/* "$rootfs"/tmp/* "$rootfs"/run/*
  as_root tar --numeric-owner -C "$rootfs" -c . |
    "$docker" import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' \
      --message "debootstrap --variant=minbase bookworm $mirror" \
      - "$base" >/dev/null
  as_root rm -rf "$rootfs"
}

if $rebuild_base || ! "$docker" image inspect "$base" >/dev/null 2>&1; then
  step "making $base (debootstrap --variant=minbase bookworm from $mirror, docker import)"
  make_base
  step_done
else
  echo "== $base exists: reused (--rebuild-base makes it again)"
fi

# --- the binary and the wheel ---------------------------------------------------------------
step "cargo build --release (on this host)"
(cd "$root" && cargo build --release --locked --bin rocketmesh)
target_dir="$(cd "$root" && cargo metadata --format-version 1 --no-deps |
  "$python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
step_done

step "rocketmq==0.4.4 wheel from PyPI (this host's pip)"
mkdir -p "$work/app/wheels"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps \
  --only-binary=:all: --platform manylinux1_x86_64 --python-version 3.11 \
  --dest "$work/app/wheels" rocketmq==0.4.4
step_done

# --- the images -----------------------------------------------------------------------------
build() { # tag dockerfile context
  local tag="$1" file="$2" ctx="$3"
  step "docker build $tag"
  "$docker" build --pull=false --build-arg "BASE=$base" -t "$tag" -f "$file" "$ctx"
  step_done
}

mkdir -p "$work/rocketmesh"
cp "$target_dir/release/rocketmesh" "$work/rocketmesh/rocketmesh"
# The release profile keeps line tables (80 MB); the image's copy keeps symbols only (~16 MB).
if command -v strip >/dev/null; then strip --strip-debug "$work/rocketmesh/rocketmesh"; fi
build rocketmesh:latest "$here/rocketmesh.Dockerfile" "$work/rocketmesh"
# A binary linked against a newer glibc than bookworm's would fail here, not in the demo.
"$docker" run --rm rocketmesh:latest --version

cp "$root"/examples/compose/app/*.py "$work/app/"
build rocketmesh-app:latest "$here/app.Dockerfile" "$work/app"

mkdir -p "$work/prometheus"
build rocketmesh-prometheus:latest "$here/prometheus.Dockerfile" "$work/prometheus"

echo "== images"
"$docker" image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' |
  grep -E '^rocketmesh(-base|-app|-prometheus)?:' || true
echo "== build-images.sh took $((SECONDS - started))s"
