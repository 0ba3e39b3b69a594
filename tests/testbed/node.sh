#!/usr/bin/env bash
# The test bed's real node: containerd 2 (built from its Go module), Debian's runc and CNI
# plugins, the kubelet and kube-proxy (built from the same k8s.io/kubernetes module as the
# apiserver). Every state directory, socket and network name is the bed's own, never the
# machine's defaults. deploy/'s StatefulSet runs here, as a user's cluster runs it.
#
#   node.sh up      start (idempotent), import the node's images, wait for the Node to be Ready;
#                   writes $NODE_DIR/env (image references for tests)
#   node.sh down    stop every pod's processes, the daemons, and remove the node's state
#   node.sh import TAR   import an image archive (docker save / OCI) into the node's containerd
#
# What this VM needs (see ../shared/MACHINE-FACTS.md, "A real node ran here"): cgroup v1 (hybrid)
# so the kubelet runs with failCgroupV1: false and the cgroupfs driver; no CAP_SYS_RESOURCE, so
# containerd's CRI must not lower oom_score_adj (restrict_oom_score_adj); runc's state in a
# private root; the node IP on lo (no dummy device here, and the kubelet refuses 127.0.0.1).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
BIN=$TESTBED_DIR/bin
CTRD=$NODE_DIR/containerd
CTRD_SOCK=$CTRD/containerd.sock
CNI_BRIDGE=cibnode0
CNI_BIN=/usr/lib/cni
RUNC=/usr/sbin/runc

ctr_node() { "$BIN/ctr" --address "$CTRD_SOCK" -n k8s.io "$@"; }

write_configs() {
  mkdir -p "$NODE_DIR/logs/pods" "$CTRD" "$NODE_DIR/runc" "$NODE_DIR/cni/net.d" "$NODE_DIR/cni/ipam" "$NODE_DIR/kubelet"
  cat > "$CTRD/config.toml" <<TOML
version = 3
root = "$CTRD/root"
state = "$CTRD/state"
# Plugins that would write outside the bed's directories, or that the node does not use.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs",
  "io.containerd.nri.v1.nri", "io.containerd.image-verifier.v1.bindir"]
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"
[plugins."io.containerd.cri.v1.runtime"]
  # This VM's containers lack CAP_SYS_RESOURCE: never ask for an oom_score_adj below ours.
  restrict_oom_score_adj = true
  # Sandboxes' network namespaces under the state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$RUNC"
        Root = "$NODE_DIR/runc"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$CNI_BIN"]
    conf_dir = "$NODE_DIR/cni/net.d"
    max_conf_num = 1
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
TOML
  # No masquerading: pods talk to the bed's own addresses only (the apiserver on the host
  # address, Traefik connecting to pod IPs).
  cat > "$NODE_DIR/cni/net.d/10-testbed.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "testbed",
  "plugins": [
    {"type": "bridge", "bridge": "$CNI_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$NODE_DIR/cni/ipam",
              "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  cat > "$NODE_DIR/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This VM has a hybrid cgroup v1 layout and no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$CTRD_SOCK
address: $HOST_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $((KUBELET_PORT + 1))
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
# Pods use no cluster DNS (nothing in deploy/ resolves names).
resolvConf: ""
# The machine's disk and memory are shared with the rest of the bed: evict only when nearly full.
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 30
# Not /var/log/pods. (The kubelet still links each log from /var/log/containers, a fixed path;
# down removes those links.)
podLogsDir: $NODE_DIR/logs/pods
YAML
}

write_env() {
  cat > "$NODE_DIR/env" <<ENV
PAUSE_IMAGE=$PAUSE_IMAGE
DIND_IMAGE=$DIND_IMAGE
DIND_ENGINE=$DIND_ENGINE
CONTAINERD_SOCK=$CTRD_SOCK
ENV
}

node_ready() {
  [ "$(kubectl_bed get node "$KUBELET_NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

up() {
  [ -x "$BIN/kubelet" ] && [ -x "$BIN/containerd" ] || die "node binaries missing in $BIN (tests/testbed/build.sh kube containerd)"
  command -v "$RUNC" >/dev/null && [ -x "$CNI_BIN/bridge" ] || die "runc or the CNI plugins are missing (tests/testbed/install.sh installs runc and containernetworking-plugins)"
  # The images first (they set the sandbox image containerd pins).
  local images; images=$("$here/node-images.sh")
  eval "$images"
  write_configs
  write_env

  log "starting containerd ($CTRD_SOCK)"
  # The new shim first on PATH: containerd starts the shim it finds there, and Debian's older
  # one is installed too.
  PATH="$BIN:$PATH" start_daemon containerd "$BIN/containerd" --config "$CTRD/config.toml"
  wait_for containerd 60 "$BIN/ctr" --address "$CTRD_SOCK" version
  for img in "$PAUSE_TAR" "$DIND_TAR"; do
    ctr_node images import "$img" >/dev/null
  done
  # The kubelet never garbage-collects a pinned image; the dind image is referenced by pods.
  log "imported $PAUSE_IMAGE and $DIND_IMAGE into the node's containerd"

  log "starting kubelet (node $KUBELET_NODE, IP $HOST_IP, pods in $POD_CIDR)"
  start_daemon kubelet "$BIN/kubelet" --config "$NODE_DIR/kubelet/config.yaml" \
    --kubeconfig "$PKI/kubelet.kubeconfig" --root-dir "$NODE_DIR/kubelet/root" \
    --cert-dir "$NODE_DIR/kubelet/pki" --hostname-override "$KUBELET_NODE" --node-ip "$HOST_IP" \
    --v 1
  log "starting kube-proxy (iptables mode)"
  start_daemon kube-proxy "$BIN/kube-proxy" --kubeconfig "$PKI/kube-proxy.kubeconfig" \
    --hostname-override "$KUBELET_NODE" --proxy-mode iptables --cluster-cidr "$POD_CIDR" \
    --conntrack-max-per-core 0 --nodeport-addresses primary \
    --metrics-bind-address "127.0.0.1:$((KUBELET_PORT + 2))" --healthz-bind-address "127.0.0.1:$((KUBELET_PORT + 3))"
  wait_for kubelet 120 node_ready
  # The kubelet registers with the not-ready taint, which kube-controller-manager's node
  # lifecycle controller removes once the node is Ready. The bed does not run that controller:
  # it would mark pod.sh's kubelet-less Node unreachable and its runner Pods not ready.
  kubectl_bed taint node "$KUBELET_NODE" node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true
  wait_for kube-proxy 60 curl -fs "http://127.0.0.1:$((KUBELET_PORT + 3))/healthz"
  log "node $KUBELET_NODE is Ready"
}

# Every process of the node's pods (dind's own daemons and containers included) lives in a
# cgroup under kubepods: kill them all, then the shims and containerd.
down() {
  stop_pidfile "$TESTBED_DIR/kubelet.pid"
  stop_pidfile "$TESTBED_DIR/kube-proxy.pid"
  local pids
  for _ in 1 2 3; do
    pids=$(find /sys/fs/cgroup/pids/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null || true)
    [ -n "$pids" ] || break
    kill -KILL $pids 2>/dev/null || true
    sleep 0.5
  done
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $CTRD_SOCK" 2>/dev/null || true
  stop_pidfile "$TESTBED_DIR/containerd.pid"
  # Mounts left by containers, sandboxes and volumes (deepest first).
  grep -o " $NODE_DIR/[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  # Empty pod cgroups, deepest first, so that the next kubelet starts clean.
  for ctl in /sys/fs/cgroup/*/; do
    [ -d "$ctl/kubepods" ] && find "$ctl/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  ip link del "$CNI_BRIDGE" 2>/dev/null || true
  # What the kubelet and the CNI library write to fixed paths: log links, CNI result caches.
  find /var/log/containers -maxdepth 1 -lname "$NODE_DIR/*" -delete 2>/dev/null || true
  rm -f /var/lib/cni/results/testbed-* /var/lib/cni/results/cni-loopback-* 2>/dev/null || true
  [ -x "$BIN/kube-proxy" ] && "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  rm -rf "$NODE_DIR"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  import) [ $# -eq 2 ] || die "usage: node.sh import TAR"; ctr_node images import "$2" ;;
  *) die "usage: node.sh up | down | import TAR" ;;
esac
