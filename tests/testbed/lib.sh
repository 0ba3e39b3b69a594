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
KUBELET_PORT=${KUBELET_PORT:-10350}
SCHEDULER_PORT=${SCHEDULER_PORT:-10359}
TRAEFIK_WEBSECURE_PORT=443   # = the port of deploy/overlays/gateway's HTTPS listener (Traefik matches them)
# The bed's own host address, on `lo`: the apiserver listens here (pods reach it through the
# `kubernetes` Service, which kube-proxy makes real) and the kubelet node uses it as its node IP
# (the kubelet refuses a loopback address). Runner netns pods use 198.18.1-230.0/24.
HOST_IP=198.18.231.1
APISERVER=https://$HOST_IP:$APISERVER_PORT
SERVICE_CIDR=198.18.240.0/20
KUBERNETES_SERVICE_IP=198.18.240.1
# The kubelet node: pods get addresses in POD_CIDR on the CNI bridge cibnode0.
KUBELET_NODE=testbed-kubelet
POD_CIDR=198.18.232.0/24
NODE_DIR=$TESTBED_DIR/node
# The Node that hand-made runner pods (pod.sh) are bound to: no kubelet, unschedulable.
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

# client_cert NAME CN [O]: a client certificate signed by the bed's CA, in $PKI/NAME.{crt,key}.
client_cert() {
  local name=$1 cn=$2 org=${3:-} subj="/CN=$2"
  [ -z "$org" ] || subj="/O=$org/CN=$cn"
  openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$PKI/$name.key" -out "$PKI/$name.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' > "$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
}

# kubeconfig_for NAME: a kubeconfig at $PKI/NAME.kubeconfig using the client certificate NAME.
kubeconfig_for() {
  cat > "$PKI/$1.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster: {server: "$APISERVER", certificate-authority: "$PKI/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$PKI/$1.crt", client-key: "$PKI/$1.key"}
contexts:
- name: testbed
  context: {cluster: testbed, user: $1}
current-context: testbed
KC
}

kubectl_bed() { "$TESTBED_DIR/bin/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# The bed's second ingress controller (contour.sh): Contour + Envoy, out of cluster, for the
# dedicated class `contour`. Envoy listens on loopback; Contour's own endpoints too.
CONTOUR_CLASS=contour
ENVOY_VERSION=1.38.3          # what Contour v1.33.6's versions.yaml pairs it with
ENVOY_HTTP_PORT=${ENVOY_HTTP_PORT:-18200}
ENVOY_HTTPS_PORT=${ENVOY_HTTPS_PORT:-18243}
CONTOUR_XDS_PORT=${CONTOUR_XDS_PORT:-18201}
CONTOUR_METRICS_PORT=${CONTOUR_METRICS_PORT:-18202}   # Contour's /metrics and /healthz
CONTOUR_DEBUG_PORT=${CONTOUR_DEBUG_PORT:-18203}
ENVOY_STATS_PORT=${ENVOY_STATS_PORT:-18204}           # Envoy's /ready and /stats (Contour's listener)
