#!/usr/bin/env bash
# Stops the test bed: every runner pod (containers, dockerd, network namespace), the kubelet
# node and its pods, Traefik, Contour and Envoy, the control plane; removes its state (etcd
# data, PKI, the node's directories) but keeps logs, the cached Go builds and the cached node
# images.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ -d "$TESTBED_DIR" ] || exit 0
[ -f "$TESTBED_DIR/env" ] && "$here/pod.sh" delete-all 2>/dev/null
"$here/node.sh" down
"$here/contour.sh" down
for name in traefik traefik-docker kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_pidfile "$TESTBED_DIR/$name.pid"; done
ip addr del "$HOST_IP/32" dev lo 2>/dev/null
rm -rf "$TESTBED_DIR/etcd" "$TESTBED_DIR/env" "$PKI" "$TESTBED_DIR/pods"
log "down (logs kept in $LOGS)"
