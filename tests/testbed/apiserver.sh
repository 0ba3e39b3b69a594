#!/usr/bin/env bash
# Stops or starts the bed's kube-apiserver (same flags as up.sh), for outage scenarios.
#   apiserver.sh stop | start
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ -f "$TESTBED_DIR/kube-apiserver.cmd" ] || die "the test bed is not up (no $TESTBED_DIR/kube-apiserver.cmd)"
case ${1:-} in
  stop) stop_pidfile "$TESTBED_DIR/kube-apiserver.pid"; log "kube-apiserver stopped" ;;
  start)
    eval "cmd=($(cat "$TESTBED_DIR/kube-apiserver.cmd"))"
    start_daemon kube-apiserver "${cmd[@]}"
    wait_for kube-apiserver 120 curl -fsk "$APISERVER/readyz" -H "Authorization: Bearer $(cat "$PKI/admin.token")"
    log "kube-apiserver started" ;;
  *) die "usage: apiserver.sh stop|start" ;;
esac
