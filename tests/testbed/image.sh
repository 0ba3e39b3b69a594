#!/usr/bin/env bash
# Builds the compose-ingress container image offline, in a runner pod's dockerd:
#   1. a statically linked release binary on this machine (glibc with crt-static; separate target
#      dir target/static, so it never fights the debug build), copied to target/static/compose-ingress;
#   2. tests/testbed/prebuilt.Dockerfile (the Dockerfile's runtime stage: FROM scratch + that
#      binary) with the dockerd at $DOCKER_HOST (a runner pod's, from `tests/testbed/pod.sh create`).
# Prints the image size. Usage:
#   DOCKER_HOST=unix://.../docker.sock tests/testbed/image.sh [IMAGE_TAG]   (default compose-ingress:dev)
#   tests/testbed/image.sh --binary-only     (step 1 only; ./test runs it before the tests)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
binary_only=0
[ "${1:-}" != --binary-only ] || { binary_only=1; shift; }
tag=${1:-compose-ingress:dev}
log() { echo "[image] $*" >&2; }
die() { echo "[image] ERROR: $*" >&2; exit 1; }
[ $binary_only = 1 ] || [ -n "${DOCKER_HOST:-}" ] || die "set DOCKER_HOST to a runner pod's dockerd (see tests/testbed/pod.sh create)"

target=x86_64-unknown-linux-gnu
out=$repo/target/static
log "building the static release binary (cargo build --release --target $target --target-dir target/static)"
# A clean environment: called from ./test, from a test (cargo test sets CARGO_* variables) or
# from deploy.sh, cargo must see the same inputs each time, or it rebuilds the binary.
( cd "$repo" && env -i PATH="$PATH" HOME="$HOME" ${CARGO_HOME:+CARGO_HOME="$CARGO_HOME"} \
    ${RUSTUP_HOME:+RUSTUP_HOME="$RUSTUP_HOME"} ${RUSTUP_TOOLCHAIN:+RUSTUP_TOOLCHAIN="$RUSTUP_TOOLCHAIN"} \
    RUSTFLAGS="-C target-feature=+crt-static" nice -n 10 \
    cargo build --locked --release --target "$target" --target-dir "$out" --bin compose-ingress )
bin=$out/$target/release/compose-ingress
# A static binary has no program interpreter; `file` is not always installed, readelf is binutils.
if command -v readelf >/dev/null && readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
  die "$bin is dynamically linked: crt-static did not take effect"
fi
cp "$bin" "$out/compose-ingress"
if [ $binary_only = 1 ]; then log "static binary: $out/compose-ingress ($(stat -c %s "$out/compose-ingress") bytes)"; exit 0; fi

# A minimal build context: prebuilt.Dockerfile and the binary (not the whole target/).
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/target/static"
cp "$here/prebuilt.Dockerfile" "$ctx/Dockerfile"
cp "$out/compose-ingress" "$ctx/target/static/compose-ingress"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)
log "building image $tag (tests/testbed/prebuilt.Dockerfile) with the dockerd at $DOCKER_HOST"
# The classic builder: the machine's docker client has no buildx, and no registry is reachable.
DOCKER_BUILDKIT=0 docker build --quiet --build-arg "VERSION=$version" -t "$tag" "$ctx" >/dev/null
size=$(docker image inspect "$tag" --format '{{.Size}}')
log "image $tag: $size bytes ($((size / 1024 / 1024)) MiB); binary $(stat -c %s "$out/compose-ingress") bytes"
echo "IMAGE=$tag"
echo "IMAGE_SIZE=$size"
