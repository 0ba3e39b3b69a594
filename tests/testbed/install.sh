#!/usr/bin/env bash
# Installs the Debian packages the test bed needs when they are missing (idempotent, quiet).
# nginx and haproxy are the reloading proxies of the bench's reload phase (never started as
# services: the bench runs its own instances on loopback ports).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need=()
for pair in dockerd:docker.io docker-compose:docker-compose busybox:busybox-static ip:iproute2 \
            iptables:iptables curl:curl openssl:openssl nsenter:util-linux setsid:util-linux flock:util-linux \
            runc:runc debootstrap:debootstrap nginx:nginx haproxy:haproxy; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
# The test image has no libc: its busybox must be the static one.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)
# The kubelet node's pod network: bridge, host-local, loopback, portmap.
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
# runc (for Docker 29) is built with cgo and seccomp: a C compiler, libseccomp and pkg-config.
command -v gcc >/dev/null 2>&1 || need+=(gcc)
command -v pkg-config >/dev/null 2>&1 || need+=(pkgconf)
dpkg-query -W -f='${Status}' libseccomp-dev 2>/dev/null | grep -q 'ok installed' || need+=(libseccomp-dev)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing packages ${need[*]}: run as root (the bed starts dockerd and network namespaces)"
  log "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
