#!/usr/bin/env bash
# Stops the test bed: every runner pod (containers, dockerd, network namespace), Traefik, the
# control plane; removes its state (etcd data, PKI) but keeps logs and the cached Go builds.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ -d "$TESTBED_DIR" ] || exit 0
[ -f "$TESTBED_DIR/env" ] && "$here/pod.sh" delete-all 2>/dev/null
for name in traefik traefik-docker kube-controller-manager kube-apiserver etcd; do stop_pidfile "$TESTBED_DIR/$name.pid"; done
rm -rf "$TESTBED_DIR/etcd" "$TESTBED_DIR/env" "$PKI" "$TESTBED_DIR/pods"
log "down (logs kept in $LOGS)"
