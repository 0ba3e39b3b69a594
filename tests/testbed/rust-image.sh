#!/usr/bin/env bash
# A stand-in for the Dockerfile's build base, `FROM rust:<version>-bookworm`, which no registry
# here serves; loaded into the dockerd at $DOCKER_HOST under that name, so that the Dockerfile's
# default target builds as docs/install.md's `docker build` does (tests/e2e/image_build.rs).
# What the official image gives the build stage, from parts this machine has:
#   - a Debian bookworm root fs (debootstrap --variant=minbase) with gcc, libc6-dev (the static
#     glibc that crt-static links) and ca-certificates;
#   - this machine's Rust toolchain of that version (rustc, cargo, the x86_64 standard library)
#     in /usr/local, as rustup installs it there in the official image;
#   - crates.io offline: CARGO_HOME holds this machine's registry index and crate archives (what
#     `cargo build --locked` of this repository fetched) and CARGO_NET_OFFLINE=true, so the
#     Dockerfile's `cargo build --locked` finds every crate without a network.
# The root fs and the toolchain are cached as an image archive (keyed by this script, the
# version and the toolchain); the registry layer is rebuilt each time (Cargo.lock changes it).
#   DOCKER_HOST=unix://.../docker.sock tests/testbed/rust-image.sh
# Prints RUST_IMAGE=rust:<version>-bookworm.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ -n "${DOCKER_HOST:-}" ] || die "set DOCKER_HOST to a runner pod's dockerd"
from=$(sed -n 's/^FROM \(rust:[^ ]*\) .*/\1/p' "$repo/Dockerfile" | head -n1)
[ -n "$from" ] || die "the Dockerfile has no FROM rust:… line"
version=${from#rust:}
version=${version%-bookworm}
[ "$from" = "rust:$version-bookworm" ] || die "the Dockerfile's $from is not rust:<version>-bookworm"
# This machine's rustc: the one that built the registry below (a toolchain of another version
# would make the stand-in something else than the image it stands for).
sysroot=$(rustc --print sysroot)
have=$(rustc --version | cut -d' ' -f2)
[[ "$have" == "$version" || "$have" == "$version".* ]] \
  || die "this machine's rustc is $have, the Dockerfile's base is $from: install Rust $version (rustup default $version) or change the Dockerfile"
cargo_home=${CARGO_HOME:-$HOME/.cargo}
[ -d "$cargo_home/registry/index" ] && [ -d "$cargo_home/registry/cache" ] \
  || die "no crates in $cargo_home/registry: build the repository once (cargo build --locked)"

cache=${COMPOSE_INGRESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/compose-ingress}/images
mkdir -p "$cache"
key=$(cat "$here/rust-image.sh" "$here/oci.sh" "$sysroot/bin/rustc" "$sysroot/bin/cargo" | sha256sum | cut -c1-16)
base=docker.io/compose-ingress-testbed/rust-base:$version-$key
tar=$cache/rust-base-$version-$key.tar
if [ ! -f "$tar" ]; then
  command -v debootstrap >/dev/null || die "debootstrap is missing (tests/testbed/install.sh installs it)"
  root=$(mktemp -d)
  log "building rust:$version-bookworm's stand-in: debootstrap bookworm with gcc and libc6-dev, Rust $version from this machine (about two minutes)"
  debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates bookworm "$root" http://deb.debian.org/debian \
    >"$LOGS/debootstrap-rust.log" 2>&1 || { tail -n 20 "$LOGS/debootstrap-rust.log" >&2; die "debootstrap failed (log: $LOGS/debootstrap-rust.log)"; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc \
    "$root"/usr/share/man "$root"/usr/share/locale "$root"/usr/share/info
  # rustc finds its standard library from where it runs (../lib/rustlib): bin and lib together.
  cp -a "$sysroot/bin/rustc" "$sysroot/bin/cargo" "$root/usr/local/bin/"
  cp -a "$sysroot/lib/." "$root/usr/local/lib/"
  "$here/oci.sh" "$root" "$base" \
    '{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/"}' "$tar.tmp"
  rm -rf "$root"
  mv "$tar.tmp" "$tar"
fi
docker load -i "$tar" >/dev/null

# The registry as this machine's cargo left it, over the cached base.
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/cargo/registry"
cp -a "$cargo_home/registry/index" "$cargo_home/registry/cache" "$ctx/cargo/registry/"
cat > "$ctx/Dockerfile" <<EOF
FROM $base
COPY cargo /usr/local/cargo
ENV CARGO_HOME=/usr/local/cargo CARGO_NET_OFFLINE=true
EOF
DOCKER_BUILDKIT=0 docker build --quiet -t "$from" "$ctx" >/dev/null
log "image $from: the stand-in, $(docker image inspect "$from" --format '{{.Size}}') bytes"
echo "RUST_IMAGE=$from"
