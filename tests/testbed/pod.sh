#!/usr/bin/env bash
# A runner pod of the test bed, modelled as it is in production: a network namespace whose veth
# end is the pod IP, its own dockerd inside it (like dind), and a Pod object bound to the bed's
# Node, marked Running and Ready with that IP through the status subresource (no kubelet).
#
#   pod.sh create NAMESPACE POD [--engine 29|20.10]
#                                 -> prints env lines (POD_NAME, POD_NAMESPACE, POD_UID, POD_IP,
#                                     DOCKER_HOST, POD_DIR, NETNS, ENGINE, ENGINE_VERSION) and saves
#                                     them in POD_DIR/env. The engine: Docker 29 (built from the
#                                     moby module, the default; TESTBED_ENGINE changes it) or
#                                     Debian's 20.10, the oldest the sidecar supports.
#   pod.sh delete POD_DIR         -> stops that pod's dockerd and removes its network namespace
#   pod.sh dockerd-stop POD_DIR | dockerd-start POD_DIR  -> for restart scenarios
#   pod.sh delete-all             -> every runner pod of the bed (used by down.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ -f "$TESTBED_DIR/env" ] || die "the test bed is not up: run tests/testbed/up.sh first"
PODS=$TESTBED_DIR/pods

# The PATH a pod's dockerd runs with: dockerd starts the containerd, shim and runc it finds
# first, so each engine has its own directory (Docker 29 needs containerd 2 and runc >= 1.2;
# Debian's 20.10 keeps Debian's containerd 1.6 and runc 1.1).
engine_path() {
  local system=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  case $1 in
    29) [ -x "$TESTBED_DIR/engines/29/dockerd" ] || die "Docker 29 is not in $TESTBED_DIR/engines/29 (tests/testbed/up.sh builds it)"
        echo "$TESTBED_DIR/engines/29:$system" ;;
    20.10) echo "$system" ;;
    *) die "unknown engine '$1' (known: 29, 20.10)" ;;
  esac
}

start_dockerd() {
  local dir=$1 netns=$2 idx=$3 engine=$4
  # A dockerd killed without a clean stop (an earlier session, a crash) leaves its exec root:
  # its stale containerd socket and pid files would confuse the new daemon.
  if [ -d "/run/cibed/$idx" ] && ! { [ -f "$dir/dockerd.pid" ] && kill -0 "$(cat "$dir/dockerd.pid")" 2>/dev/null; }; then
    grep -o " /run/cibed/$idx/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "/run/cibed/$idx"
  fi
  mkdir -p "$dir/data" "/run/cibed/$idx"
  rm -f "$dir/docker.sock"
  # nsenter, not `ip netns exec`: the latter remounts /sys and dockerd then fails.
  PATH=$(engine_path "$engine") setsid nsenter --net="/run/netns/$netns" dockerd --data-root "$dir/data" --exec-root "/run/cibed/$idx" \
    --host "unix://$dir/docker.sock" --pidfile "$dir/dockerd.pid" \
    --bip 198.19.0.1/24 --default-address-pool base=198.19.128.0/17,size=24 \
    >>"$dir/dockerd.log" 2>&1 </dev/null &
  local deadline=$((SECONDS + 120))
  until DOCKER_HOST="unix://$dir/docker.sock" docker version >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { tail -n 25 "$dir/dockerd.log" >&2; die "dockerd of pod $dir did not come up within 120s (log: $dir/dockerd.log)"; }
    sleep 0.2
  done
}

stop_dockerd() {
  local dir=$1
  [ -f "$dir/dockerd.pid" ] || return 0
  local pid; pid=$(cat "$dir/dockerd.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/dockerd.pid"
}

create() {
  local ns=$1 pod=$2 engine=$3 idx
  engine_path "$engine" >/dev/null
  mkdir -p "$PODS"
  # Allocate the pod's index (its /24 in 198.18.0.0/16) under a lock: tests create pods in parallel.
  idx=$(flock "$PODS/.lock" bash -c 'n=$(( $(cat "$0/.next" 2>/dev/null || echo 1) )); [ $n -le 230 ] || n=1; echo $((n+1)) > "$0/.next"; echo $n' "$PODS")
  local dir=$PODS/$idx netns=cibed$idx host_if=cibh$idx pod_if=cibp$idx
  local host_ip=198.18.$idx.1 pod_ip=198.18.$idx.2
  [ ! -d "$dir" ] || delete "$dir" >/dev/null 2>&1 || true
  mkdir -p "$dir"
  # A pod that fails half-way (dockerd, image import, Pod object) leaves nothing behind: its env
  # file is written last, so without it the namespace, veth and dockerd are removed again.
  trap '[ -f "'"$dir"'/env" ] || delete "'"$dir"'" >/dev/null 2>&1' EXIT
  ip netns del "$netns" 2>/dev/null || true
  ip link del "$host_if" 2>/dev/null || true
  ip netns add "$netns"
  ip link add "$host_if" type veth peer name "$pod_if"
  ip link set "$pod_if" netns "$netns"
  ip addr add "$host_ip/24" dev "$host_if"
  ip link set "$host_if" up
  ip -n "$netns" addr add "$pod_ip/24" dev "$pod_if"
  ip -n "$netns" link set "$pod_if" up
  ip -n "$netns" link set lo up
  ip -n "$netns" route add default via "$host_ip"
  start_dockerd "$dir" "$netns" "$idx" "$engine"
  local engine_version; engine_version=$(DOCKER_HOST="unix://$dir/docker.sock" docker version --format '{{.Server.Version}}')
  DOCKER_HOST="unix://$dir/docker.sock" docker import "$TESTBED_DIR/busybox-rootfs.tar" "$TEST_IMAGE" >/dev/null

  kubectl_bed get namespace "$ns" >/dev/null 2>&1 || kubectl_bed create namespace "$ns" >/dev/null 2>&1 || true
  # Pod admission needs the namespace's "default" ServiceAccount, which the controller-manager
  # creates shortly after the namespace (later still right after an apiserver restart).
  local sa_deadline=$((SECONDS + 120))
  until kubectl_bed -n "$ns" get serviceaccount default >/dev/null 2>&1; do
    [ $SECONDS -lt $sa_deadline ] || die "namespace $ns got no default ServiceAccount within 120s (is kube-controller-manager running? $LOGS/kube-controller-manager.log)"
    sleep 0.2
  done
  # The pod runs as the sidecar's ServiceAccount, as deploy/'s StatefulSet does: the sidecar's
  # token is bound to this pod (testbed/src/pod.rs), and only a pod of the account gets one.
  kubectl_bed -n "$ns" get serviceaccount compose-ingress >/dev/null 2>&1 \
    || kubectl_bed -n "$ns" create serviceaccount compose-ingress >/dev/null 2>&1 || true
  kubectl_bed apply -f - >/dev/null <<POD
apiVersion: v1
kind: Pod
metadata:
  name: $pod
  namespace: $ns
  labels: {app.kubernetes.io/name: runner, statefulset.kubernetes.io/pod-name: $pod}
spec:
  nodeName: $NODE_NAME
  serviceAccountName: compose-ingress
  automountServiceAccountToken: false
  containers:
  - {name: dind, image: "docker:dind"}
POD
  local now; now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  kubectl_bed -n "$ns" patch pod "$pod" --subresource=status --type=merge -p "{\"status\":{\"phase\":\"Running\",
    \"podIP\":\"$pod_ip\",\"podIPs\":[{\"ip\":\"$pod_ip\"}],\"startTime\":\"$now\",
    \"conditions\":[{\"type\":\"PodScheduled\",\"status\":\"True\",\"lastTransitionTime\":\"$now\"},
      {\"type\":\"Initialized\",\"status\":\"True\",\"lastTransitionTime\":\"$now\"},
      {\"type\":\"ContainersReady\",\"status\":\"True\",\"lastTransitionTime\":\"$now\"},
      {\"type\":\"Ready\",\"status\":\"True\",\"lastTransitionTime\":\"$now\"}]}}" >/dev/null
  local uid; uid=$(kubectl_bed -n "$ns" get pod "$pod" -o jsonpath='{.metadata.uid}')
  cat > "$dir/env" <<ENV
POD_NAME=$pod
POD_NAMESPACE=$ns
POD_UID=$uid
POD_IP=$pod_ip
DOCKER_HOST=unix://$dir/docker.sock
POD_DIR=$dir
NETNS=$netns
ENGINE=$engine
ENGINE_VERSION=$engine_version
ENV
  cat "$dir/env"
}

delete() {
  local dir=$1 idx; idx=$(basename "$dir")
  if [ -S "$dir/docker.sock" ] && [ -f "$dir/dockerd.pid" ]; then
    local ids; ids=$(DOCKER_HOST="unix://$dir/docker.sock" timeout 20 docker ps -aq 2>/dev/null || true)
    [ -z "$ids" ] || DOCKER_HOST="unix://$dir/docker.sock" timeout 60 docker rm -f $ids >/dev/null 2>&1 || true
  fi
  stop_dockerd "$dir"
  ip link del "cibh$idx" 2>/dev/null || true
  ip netns del "cibed$idx" 2>/dev/null || true
  umount "/run/cibed/$idx"/* 2>/dev/null || true
  rm -rf "/run/cibed/$idx" "$dir"
}

case ${1:-} in
  create)
    engine=${TESTBED_ENGINE:-29}
    [ $# -eq 3 ] || { [ $# -eq 5 ] && [ "$4" = --engine ] && engine=$5; } || die "usage: pod.sh create NAMESPACE POD [--engine 29|20.10]"
    create "$2" "$3" "$engine" ;;
  delete) [ $# -eq 2 ] || die "usage: pod.sh delete POD_DIR"; delete "$2" ;;
  dockerd-stop) stop_dockerd "$2" ;;
  dockerd-start) source "$2/env"; start_dockerd "$2" "$NETNS" "$(basename "$2")" "${ENGINE:-20.10}" ;;
  delete-all) for d in "$PODS"/*/; do [ -d "$d" ] && delete "${d%/}"; done; rm -f "$PODS/.next" ;;
  *) die "usage: pod.sh create NAMESPACE POD [--engine 29|20.10] | delete POD_DIR | dockerd-stop POD_DIR | dockerd-start POD_DIR | delete-all" ;;
esac
