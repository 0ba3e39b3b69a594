#!/usr/bin/env bash
# Builds the kubelet node's images offline and caches their archives (keyed by what goes in):
#   - the sandbox ("pause") image: Debian's static busybox sleeping;
#   - the dind image: a Debian bookworm root fs (debootstrap --variant=minbase) with the bed's
#     Docker Engine 29 (dockerd and docker-proxy from the moby module, containerd 2, runc >= 1.2:
#     $TESTBED_DIR/engines/29), Debian's docker CLI (from docker.io, whose own daemon, containerd
#     and runc are removed), iptables and tini, the bed's Compose v2 as the docker CLI plugin,
#     and node/dind-entrypoint.sh, which does what docker:dind's entrypoint does for deploy/'s
#     arguments. Its /etc/docker/daemon.json keeps dockerd's networks in the bed's range
#     (node/dind-daemon.json).
# Prints shell lines: PAUSE_IMAGE, PAUSE_TAR, DIND_IMAGE, DIND_TAR, DIND_ENGINE.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cache=${COMPOSE_INGRESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/compose-ingress}/images
mkdir -p "$cache"
compose=$TESTBED_DIR/bin/docker-compose-v2
[ -x "$compose" ] || die "Compose v2 was not built ($compose; tests/testbed/build.sh compose)"
engine=$TESTBED_DIR/engines/29
engine_bins=(dockerd docker-proxy containerd containerd-shim-runc-v2 runc)
for b in "${engine_bins[@]}"; do [ -x "$engine/$b" ] || die "Docker 29's $b is missing in $engine (tests/testbed/up.sh links it)"; done

key_of() { cat "$@" | sha256sum | cut -c1-16; }

# --- pause ---
pause_key=$(key_of "$here/node-images.sh" "$here/oci.sh" /bin/busybox)
PAUSE_IMAGE=docker.io/compose-ingress-testbed/pause:$pause_key
PAUSE_TAR=$cache/pause-$pause_key.tar
if [ ! -f "$PAUSE_TAR" ]; then
  root=$(mktemp -d)
  mkdir -p "$root/bin"
  cp /bin/busybox "$root/bin/busybox"
  ln -s busybox "$root/bin/sleep"
  # PID 1 of every pod sandbox: it only has to hold the namespaces.
  "$here/oci.sh" "$root" "$PAUSE_IMAGE" '{"Entrypoint":["/bin/sleep","2147483647"]}' "$PAUSE_TAR.tmp"
  mv "$PAUSE_TAR.tmp" "$PAUSE_TAR"
  rm -rf "$root"
fi

# --- dind ---
suite=bookworm
dind_key=$(key_of "$here/node-images.sh" "$here/oci.sh" "$here/node/dind-entrypoint.sh" "$here/node/dind-daemon.json" "$compose" \
  "${engine_bins[@]/#/$engine/}" <(echo "$suite"))
DIND_TAR=$cache/dind-$dind_key.tar
if [ ! -f "$DIND_TAR" ] || [ ! -f "$DIND_TAR.engine" ]; then
  command -v debootstrap >/dev/null || die "debootstrap is missing (tests/testbed/install.sh installs it)"
  root=$(mktemp -d)
  log "building the dind image root fs: debootstrap $suite with docker.io (for its CLI), iptables, tini (about a minute)"
  debootstrap --variant=minbase --include=docker.io,iptables,tini,libseccomp2 "$suite" "$root" http://deb.debian.org/debian \
    >"$LOGS/debootstrap.log" 2>&1 || { tail -n 20 "$LOGS/debootstrap.log" >&2; die "debootstrap failed (log: $LOGS/debootstrap.log)"; }
  # What an image does not need: downloaded packages, package lists, docs, locales.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc \
    "$root"/usr/share/man "$root"/usr/share/locale "$root"/usr/share/info
  mkdir -p "$root/usr/libexec/docker/cli-plugins" "$root/usr/local/bin" "$root/etc/docker"
  cp "$compose" "$root/usr/libexec/docker/cli-plugins/docker-compose"
  # The engine is the bed's Docker 29, not Debian's 20.10.
  for b in dockerd docker-proxy containerd containerd-shim containerd-shim-runc-v1 containerd-shim-runc-v2 runc ctr; do
    rm -f "$root/usr/bin/$b" "$root/usr/sbin/$b"
  done
  for b in "${engine_bins[@]}"; do cp -L "$engine/$b" "$root/usr/local/bin/$b"; done
  cp "$here/node/dind-entrypoint.sh" "$root/usr/local/bin/dockerd-entrypoint.sh"
  cp "$here/node/dind-daemon.json" "$root/etc/docker/daemon.json"
  engine_version=$(chroot "$root" dockerd --version | sed -n 's/^Docker version \([^,+]*\).*/\1/p')
  [ -n "$engine_version" ] || die "could not read dockerd's version from the dind root fs"
  "$here/oci.sh" "$root" "docker.io/compose-ingress-testbed/dind:$engine_version-$dind_key" \
    '{"Entrypoint":["/usr/local/bin/dockerd-entrypoint.sh"],"Cmd":[],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Volumes":{"/var/lib/docker":{}}}' \
    "$DIND_TAR.tmp"
  rm -rf "$root"
  echo "$engine_version" > "$DIND_TAR.engine"
  mv "$DIND_TAR.tmp" "$DIND_TAR"
fi
DIND_ENGINE=$(cat "$DIND_TAR.engine")
DIND_IMAGE=docker.io/compose-ingress-testbed/dind:$DIND_ENGINE-$dind_key
printf '%s\n' "PAUSE_IMAGE=$PAUSE_IMAGE" "PAUSE_TAR=$PAUSE_TAR" "DIND_IMAGE=$DIND_IMAGE" "DIND_TAR=$DIND_TAR" "DIND_ENGINE=$DIND_ENGINE"
