# Shared settings of the test bed; sourced by the other scripts. Everything listens on loopback;
# runner pods get addresses in 198.18.0.0/16 (RFC 2544's benchmark range), on veth pairs into
# network namespaces the bed creates itself, so no traffic ever leaves this machine.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
TESTBED_DIR=${TESTBED_DIR:-$repo/.testbed}
LOGS=$TESTBED_DIR/logs
PKI=$TESTBED_DIR/pki
ETCD_PORT=${ETCD_PORT:-23790}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-23800}
APISERVER_PORT=${APISERVER_PORT:-16443}
KCM_PORT=${KCM_PORT:-10357}
TRAEFIK_WEB_PORT=${TRAEFIK_WEB_PORT:-18000}
TRAEFIK_ADMIN_PORT=${TRAEFIK_ADMIN_PORT:-18080}
APISERVER=https://127.0.0.1:$APISERVER_PORT
NODE_NAME=testbed-node
TEST_IMAGE=compose-ingress-test/busybox:1
GATEWAY_API_VERSION=v1.4.0   # the Gateway API the pinned Traefik (v3.6.12) implements
KUBECONFIG_FILE=$TESTBED_DIR/kubeconfig

log() { echo "[testbed] $*" >&2; }
die() { echo "[testbed] ERROR: $*" >&2; exit 1; }

# Prints the last lines of a component's log, for a failure message that says why.
tail_log() { [ -f "$LOGS/$1.log" ] && { echo "--- last lines of $LOGS/$1.log ---" >&2; tail -n 25 "$LOGS/$1.log" >&2; }; true; }

# wait_for NAME SECONDS COMMAND...: polls COMMAND until it succeeds; on timeout fails with the log.
wait_for() {
  local name=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then tail_log "$name"; die "$name did not become ready within ${secs}s (see $LOGS/$name.log)"; fi
    sleep 0.3
  done
}

# Starts a daemon in the background with its log and pid file under the bed's directory.
start_daemon() {
  local name=$1; shift
  mkdir -p "$LOGS"
  # fd 9 is up.sh's lock: a daemon must not inherit it (it would hold the lock forever).
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
  echo $! > "$TESTBED_DIR/$name.pid"
}

stop_pidfile() {
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

kubectl_bed() { "$TESTBED_DIR/bin/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
