#!/usr/bin/env bash
# Starts the whole test bed (idempotent: attaches to a bed that is already up):
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler (built from Go modules, cached),
#   Gateway API CRDs, a Node object, Traefik (Ingress + Gateway API providers),
#   Docker Compose v2 (standalone binary, built from its Go module, cached),
#   the busybox test image tarball that every runner pod's dockerd imports,
#   and a real node (node.sh: containerd 2, kubelet, kube-proxy, CNI) that runs deploy/'s pods,
#   and a second ingress controller for a dedicated class (contour.sh: Contour + Envoy).
# Fast runner pods (a network namespace + its own dockerd + a Pod object) come from pod.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ "$(id -u)" = 0 ] || die "run as root: the bed starts dockerd inside network namespaces"
mkdir -p "$TESTBED_DIR"
exec 9>"$TESTBED_DIR/up.lock"
flock 9   # two callers (CI script and a test run) never start two beds

# Builds components with build.sh (cached) and links their binaries into the bed's bin directory.
link_components() {
  mkdir -p "$TESTBED_DIR/bin"
  # Built first, apart: a failed build must stop up.sh (a process substitution would not).
  local built; built=$("$here/build.sh" "$@")
  while IFS='=' read -r name dir; do
    for b in "$dir"/*; do ln -sf "$b" "$TESTBED_DIR/bin/$(basename "$b")"; done
  done <<<"$built"
}
# Docker Engine 29 for runner pods (pod.sh --engine 29): dockerd and docker-proxy from the moby
# module, containerd 2 and its shim, runc >= 1.2, in one directory that goes first on the PATH
# of such a pod's dockerd (never in bin/: a dockerd on the bed's PATH would shadow Debian's).
link_engine() {
  local dir=$TESTBED_DIR/engines/29 built
  built=$("$here/build.sh" moby runc containerd)
  rm -rf "$dir" && mkdir -p "$dir"
  while IFS='=' read -r name out; do
    case $name in
      moby) ln -sf "$out/dockerd" "$out/docker-proxy" "$dir/" ;;
      runc) ln -sf "$out/runc" "$dir/" ;;
      containerd) ln -sf "$out/containerd" "$out/containerd-shim-runc-v2" "$dir/" ;;
    esac
  done <<<"$built"
}
engine_versions() {
  echo "ENGINE_DEFAULT=${TESTBED_ENGINE:-29}"
  echo "ENGINE_29_VERSION=$("$TESTBED_DIR/engines/29/dockerd" --version | sed -n 's/^Docker version \([^,]*\).*/\1/p')"
  echo "ENGINE_20_10_VERSION=$(dockerd --version | sed -n 's/^Docker version \([^,]*\).*/\1/p')"
}

# Docker Compose v2 runs as a standalone binary (`docker-compose-v2 -p P -f F up -d`), not as the
# docker CLI plugin: nothing is installed in ~/.docker/cli-plugins, the machine's docker client
# stays as it is. Compose v1 is Debian's docker-compose (1.29, Python) on PATH.
compose_env() {
  [ -x "$TESTBED_DIR/bin/docker-compose-v2" ] || die "Compose v2 was not built ($TESTBED_DIR/bin/docker-compose-v2 missing; see tests/testbed/build.sh compose)"
  echo "COMPOSE_V1=$(command -v docker-compose)"
  echo "COMPOSE_V2=$TESTBED_DIR/bin/docker-compose-v2"
}

bed_ready() {
  curl -fsk --max-time 5 "$APISERVER/readyz" -H "Authorization: Bearer $(cat "$PKI/admin.token" 2>/dev/null)" >/dev/null 2>&1 \
    && curl -fs --max-time 5 "http://127.0.0.1:$TRAEFIK_ADMIN_PORT/ping" >/dev/null 2>&1
}
daemons_alive() {
  for name in etcd kube-controller-manager kube-scheduler traefik containerd kubelet kube-proxy; do
    [ -f "$TESTBED_DIR/$name.pid" ] && kill -0 "$(cat "$TESTBED_DIR/$name.pid")" 2>/dev/null || return 1
  done
}
# A running bed whose apiserver is briefly away (an outage scenario stops it on purpose) is
# waited for, never torn down: tearing it down would kill every other test's runner pods.
# The answer is kept: on a busy machine a second look can time out where the first answered, and
# a running bed must never be taken for a stale one (the start path clears it).
ready=0
if [ -f "$TESTBED_DIR/env" ] && daemons_alive; then
  for _ in $(seq 1 90); do bed_ready && { ready=1; break; }; sleep 1; done
  [ "$ready" = 1 ] || die "the bed's daemons run but the apiserver or Traefik has not answered for 90 s (see $LOGS); tests/testbed/down.sh stops it, then run this again"
fi
# A bed of an older revision of these scripts (a component or flag it lacks) is restarted.
BED_REVISION=3   # 2: Traefik's CRDs and kubernetescrd provider; 3: protoecho in the test image
if [ -f "$TESTBED_DIR/env" ] && ! grep -q "^BED_REVISION=$BED_REVISION\$" "$TESTBED_DIR/env"; then
  log "the running bed is of an older revision of these scripts: restarting it"
  "$here/down.sh" >/dev/null 2>&1 || true
  ready=0
fi
if [ -f "$TESTBED_DIR/env" ] && { [ "$ready" = 1 ] || bed_ready; }; then
  # A bed started before Compose v2 was part of it gains it here, without a restart.
  if ! grep -q '^COMPOSE_V2=' "$TESTBED_DIR/env"; then
    link_components compose
    compose_env >> "$TESTBED_DIR/env"
  fi
  # Likewise Docker 29 for runner pods.
  if ! grep -q '^ENGINE_29_VERSION=' "$TESTBED_DIR/env"; then
    link_engine
    engine_versions >> "$TESTBED_DIR/env"
  fi
  # Likewise the dedicated-class controller (contour.sh keeps a running pair, restarts a dead one).
  "$here/contour.sh" up
  log "already up ($TESTBED_DIR/env)"; exit 0
fi
# A half-started or stale bed (e.g. after a reboot): clear it before starting anew.
"$here/down.sh" >/dev/null 2>&1 || true
mkdir -p "$LOGS" "$PKI" "$TESTBED_DIR/bin"

"$here/install.sh"
log "building control plane, etcd, Traefik and Compose v2 from Go modules (cached; a cold build takes ~20 min on 2 cores)"
link_components kube etcd traefik compose containerd protoecho
link_engine
# `go build` names etcd's main package (module .../server/v3) after its directory.
[ -e "$TESTBED_DIR/bin/etcd" ] || ln -sf "$(readlink -f "$TESTBED_DIR/bin/server")" "$TESTBED_DIR/bin/etcd"
BIN=$TESTBED_DIR/bin
compose_env >/dev/null   # fails now, not after the control plane started, if v2 is missing

# --- PKI: a CA, the apiserver's serving cert, service-account keys, an admin token ----------
if [ ! -f "$PKI/ca.crt" ]; then
  log "generating CA, serving certificate and service-account keys in $PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=compose-ingress-testbed-ca" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout "$PKI/apiserver.key" \
    -out "$PKI/apiserver.csr" 2>/dev/null
    # The host address (clients on the machine) and the `kubernetes` Service's ClusterIP (pods'
  # in-cluster config) are both in the certificate.
  printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:%s,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' \
    "$HOST_IP" "$KUBERNETES_SERVICE_IP" > "$PKI/apiserver.ext"
  openssl x509 -req -in "$PKI/apiserver.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -extfile "$PKI/apiserver.ext" -out "$PKI/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$PKI/admin.token"
  echo "$(cat "$PKI/admin.token"),testbed-admin,testbed-admin,system:masters" > "$PKI/tokens.csv"
  # Identities the bootstrap RBAC policy (and the Node authorizer) already know.
  client_cert kubelet "system:node:$KUBELET_NODE" system:nodes
  client_cert kube-proxy system:kube-proxy
  client_cert kube-scheduler system:kube-scheduler
  client_cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  for name in kubelet kube-proxy kube-scheduler; do kubeconfig_for "$name"; done
fi
ADMIN_TOKEN=$(cat "$PKI/admin.token")

# --- the bed's host address on lo (the apiserver binds it; the kubelet node's IP) ------------
ip addr show dev lo | grep -q " $HOST_IP/32 " || ip addr add "$HOST_IP/32" dev lo

# --- etcd ----------------------------------------------------------------------------------
log "starting etcd on 127.0.0.1:$ETCD_PORT"
start_daemon etcd "$BIN/etcd" --name testbed --data-dir "$TESTBED_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "testbed=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --quota-backend-bytes 4294967296
wait_for etcd 60 curl -fs "http://127.0.0.1:$ETCD_PORT/health"

# --- kube-apiserver ------------------------------------------------------------------------
log "starting kube-apiserver on $APISERVER"
apiserver_cmd=("$BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address "$HOST_IP" --advertise-address "$HOST_IP" --secure-port "$APISERVER_PORT" \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
  --authorization-mode Node,RBAC \
  --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$PKI/sa.pub" \
  --service-account-signing-key-file "$PKI/sa.key" --service-account-max-token-expiration 48h \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types InternalIP \
  --allow-privileged=true --cert-dir "$PKI" --profiling=false \
  --audit-log-path "$LOGS/audit.log" --audit-policy-file "$here/audit-policy.yaml" --audit-log-maxsize 200)
# Saved so that tests/testbed/apiserver.sh can stop and start it again (outage scenarios).
printf '%q ' "${apiserver_cmd[@]}" > "$TESTBED_DIR/kube-apiserver.cmd"
start_daemon kube-apiserver "${apiserver_cmd[@]}"
wait_for kube-apiserver 120 curl -fsk "$APISERVER/readyz" -H "Authorization: Bearer $ADMIN_TOKEN"

# --- kubeconfig for tests and people --------------------------------------------------------
cat > "$KUBECONFIG_FILE" <<KC
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: $APISERVER
    certificate-authority: $PKI/ca.crt
users:
- name: testbed-admin
  user:
    token: $ADMIN_TOKEN
contexts:
- name: testbed
  context: {cluster: testbed, user: testbed-admin}
current-context: testbed
KC

# --- kube-controller-manager: only what the bed needs (GC, EndpointSlices, SAs, namespaces) --
# statefulset and root-ca-cert-publisher (the kube-root-ca.crt ConfigMap that deploy/'s projected
# token volume reads) are for the kubelet node's pods.
log "starting kube-controller-manager (garbagecollector, endpointslice, serviceaccount, namespace, statefulset, root-ca-cert-publisher)"
start_daemon kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig "$KUBECONFIG_FILE" --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
  --controllers garbagecollector,endpointslice,serviceaccount,namespace,statefulset,root-ca-cert-publisher \
  --root-ca-file "$PKI/ca.crt" \
  --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
  --concurrent-service-endpoint-syncs 10 --concurrent-gc-syncs 20
wait_for kube-controller-manager 60 curl -fsk "https://127.0.0.1:$KCM_PORT/healthz"

log "starting kube-scheduler"
start_daemon kube-scheduler "$BIN/kube-scheduler" \
  --kubeconfig "$PKI/kube-scheduler.kubeconfig" --authentication-kubeconfig "$PKI/kube-scheduler.kubeconfig" \
  --authorization-kubeconfig "$PKI/kube-scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false
wait_for kube-scheduler 60 curl -fsk "https://127.0.0.1:$SCHEDULER_PORT/healthz"

# --- cluster objects the bed provides: Gateway API CRDs, classes, a Gateway, the Node -------
crd_dir=$(cd "$here/go/traefik" && go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
[ -d "$crd_dir/config/crd/standard" ] || die "Gateway API CRDs not found in module sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION"
kubectl_bed apply --server-side -f "$crd_dir/config/crd/standard/" >/dev/null
kubectl_bed wait --for condition=Established --timeout 60s crd/httproutes.gateway.networking.k8s.io crd/gateways.gateway.networking.k8s.io >/dev/null
# Traefik's own CRDs (Middleware, IngressRoute, ...) from the Traefik module the bed builds: its
# kubernetescrd provider needs them all, and the sidecar's traefik-middleware mode writes
# Middlewares.
traefik_dir=$(cd "$here/go/traefik" && go mod download -json github.com/traefik/traefik/v3 | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
traefik_crds=$traefik_dir/docs/content/reference/dynamic-configuration/kubernetes-crd-definition-v1.yml
[ -f "$traefik_crds" ] || die "Traefik CRDs not found at $traefik_crds"
kubectl_bed apply --server-side -f "$traefik_crds" >/dev/null
kubectl_bed wait --for condition=Established --timeout 60s crd/middlewares.traefik.io >/dev/null
sed -e "s/@NODE_NAME@/$NODE_NAME/" -e "s/@TRAEFIK_WEB_PORT@/$TRAEFIK_WEB_PORT/" "$here/cluster-objects.yaml" \
  | kubectl_bed apply --server-side -f - >/dev/null

# --- Traefik: Kubernetes Ingress + Gateway API providers, on loopback -----------------------
log "starting Traefik on 127.0.0.1:$TRAEFIK_WEB_PORT (web), :$TRAEFIK_WEBSECURE_PORT (websecure, TLS) and :$TRAEFIK_ADMIN_PORT (ping/API)"
k8s_flags=()
for p in kubernetesingress kubernetesgateway kubernetescrd; do
  k8s_flags+=(--providers.$p=true --providers.$p.endpoint="$APISERVER" --providers.$p.token="$ADMIN_TOKEN"
              --providers.$p.certauthfilepath="$PKI/ca.crt")
done
start_daemon traefik "$BIN/traefik" \
  --entrypoints.web.address="127.0.0.1:$TRAEFIK_WEB_PORT" --entrypoints.websecure.address="127.0.0.1:$TRAEFIK_WEBSECURE_PORT" \
  --entrypoints.websecure.http.tls=true --entrypoints.traefik.address="127.0.0.1:$TRAEFIK_ADMIN_PORT" \
  --ping=true --api=true --api.insecure=true --api.dashboard=false --log.level=INFO --global.checknewversion=false --global.sendanonymoususage=false \
  --providers.providersthrottleduration=100ms "${k8s_flags[@]}"
wait_for traefik 60 curl -fs "http://127.0.0.1:$TRAEFIK_ADMIN_PORT/ping"

# --- the test image: Debian's static busybox in an otherwise empty root fs -------------------
# with the bed's protoecho (gRPC over h2c and WebSocket backend) beside it.
if [ ! -f "$TESTBED_DIR/busybox-rootfs.tar" ] || [ "$BIN/protoecho" -nt "$TESTBED_DIR/busybox-rootfs.tar" ]; then
  rootfs=$TESTBED_DIR/busybox-rootfs
  rm -rf "$rootfs" && mkdir -p "$rootfs/bin" "$rootfs/www" "$rootfs/tmp" "$rootfs/etc"
  cp /bin/busybox "$rootfs/bin/busybox"
  cp "$(readlink -f "$BIN/protoecho")" "$rootfs/bin/protoecho"
  for applet in $(/bin/busybox --list); do [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"; done
  echo "root:x:0:0:root:/:/bin/sh" > "$rootfs/etc/passwd"
  echo "compose-ingress test image" > "$rootfs/www/index.html"
  tar -C "$rootfs" -cf "$TESTBED_DIR/busybox-rootfs.tar" .
fi

# --- the kubelet node (containerd, kubelet, kube-proxy) and its images ----------------------
"$here/node.sh" up

cat > "$TESTBED_DIR/env" <<ENV
BED_REVISION=$BED_REVISION
TESTBED_DIR=$TESTBED_DIR
KUBECONFIG=$KUBECONFIG_FILE
APISERVER=$APISERVER
ADMIN_TOKEN=$ADMIN_TOKEN
CA_CRT=$PKI/ca.crt
TRAEFIK_WEB=http://127.0.0.1:$TRAEFIK_WEB_PORT
TRAEFIK_ADMIN=http://127.0.0.1:$TRAEFIK_ADMIN_PORT
TEST_IMAGE=$TEST_IMAGE
NODE_NAME=$NODE_NAME
GATEWAY_NAMESPACE=testbed-gateway
GATEWAY_NAME=testbed
BIN=$BIN
TRAEFIK_WEBSECURE=https://127.0.0.1:$TRAEFIK_WEBSECURE_PORT
KUBELET_NODE=$KUBELET_NODE
NODE_DIR=$NODE_DIR
$(cat "$NODE_DIR/env")
$(engine_versions)
$(compose_env)
ENV
# The dedicated-class controller; it records itself in the env file written above.
"$here/contour.sh" up
log "up: kubectl --kubeconfig $KUBECONFIG_FILE get ns; logs in $LOGS"
