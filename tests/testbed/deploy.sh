#!/usr/bin/env bash
# deploy/ on the bed's kubelet node, applied as a user applies it.
#
#   deploy.sh image
#       builds the sidecar image (tests/testbed/image.sh: the static binary in the Dockerfile's
#       runtime stage, tests/testbed/prebuilt.Dockerfile) in a builder runner pod's dockerd, and imports
#       it into the node's containerd; prints SIDECAR_IMAGE=compose-ingress:<binary digest>
#   deploy.sh apply NAMESPACE OVERLAY DOMAIN
#       a user's kustomization over deploy/overlays/OVERLAY (ingress|gateway) that changes only
#       what a user changes: the image references, the domain and the ingress class; plus the
#       wildcard certificate Secret a user creates (self-signed here). Applied with
#       `kubectl kustomize DIR | kubectl apply -n NAMESPACE -f -`, as docs/install.md says.
#   deploy.sh kustomization NAMESPACE OVERLAY DOMAIN
#       apply's kustomization and certificate without the apply: the integration tests run
#       docs/install.md's own command lines on it (testbed/src/node.rs); prints KUSTOMIZATION=<dir>
#       and TLS_CA=<the certificate>
#   deploy.sh tls NAMESPACE OVERLAY DOMAIN
#       only the namespace and the wildcard certificate Secret apply creates (for a Helm install);
#       prints TLS_CA=<the certificate>
#   deploy.sh delete NAMESPACE     deletes the namespace (and waits for it to be gone)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ -f "$TESTBED_DIR/env" ] || die "the test bed is not up: run tests/testbed/up.sh first"
source "$TESTBED_DIR/env"

image() {
  local bin=$repo/target/static/compose-ingress
  # Up to date after ./test's build step (then cargo only checks); the image is named after it.
  "$here/image.sh" --binary-only >&2
  local tag; tag=$(sha256sum "$bin" | cut -c1-12)
  local ref=compose-ingress:$tag
  if "$BIN/ctr" --address "$CONTAINERD_SOCK" -n k8s.io images ls -q 2>/dev/null | grep -qx "docker.io/library/$ref"; then
    echo "SIDECAR_IMAGE=$ref"; return
  fi
  # One builder at a time; the runner pod is removed again whatever happens.
  exec 8>"$TESTBED_DIR/deploy-image.lock"
  flock 8
  local envs; envs=$("$here/pod.sh" create testbed-build "builder-$$")
  local dir; dir=$(sed -n 's/^POD_DIR=//p' <<<"$envs")
  trap '"$here/pod.sh" delete "'"$dir"'" >/dev/null 2>&1; kubectl_bed -n testbed-build delete pod "builder-'"$$"'" --wait=false >/dev/null 2>&1' RETURN
  local docker_host; docker_host=$(sed -n 's/^DOCKER_HOST=//p' <<<"$envs")
  DOCKER_HOST=$docker_host "$here/image.sh" "$ref" >&2
  DOCKER_HOST=$docker_host docker save "$ref" > "$TESTBED_DIR/sidecar-image.tar"
  "$here/node.sh" import "$TESTBED_DIR/sidecar-image.tar" >/dev/null 2>&1
  rm -f "$TESTBED_DIR/sidecar-image.tar"
  log "sidecar image $ref imported into the node's containerd"
  echo "SIDECAR_IMAGE=$ref"
}

kustomization() {
  local ns=$1 overlay=$2 domain=$3
  [ -d "$repo/deploy/overlays/$overlay" ] || die "no overlay deploy/overlays/$overlay"
  local sidecar; sidecar=$(image | sed -n 's/^SIDECAR_IMAGE=//p')
  local dir=$TESTBED_DIR/deploy/$ns
  mkdir -p "$dir"
  local base; base=$(realpath --relative-to="$dir" "$repo/deploy/overlays/$overlay")
  cat > "$dir/kustomization.yaml" <<YAML
# What a user writes over deploy/overlays/$overlay: images from their registry, their domain
# and their ingress class.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- $base
images:
- name: ghcr.io/example/compose-ingress
  newName: ${sidecar%%:*}
  # quoted: a tag of hex digits can read as a YAML number (all digits, or 1e5-like)
  newTag: "${sidecar#*:}"
- name: docker
  newName: ${DIND_IMAGE%:*}
  newTag: "${DIND_IMAGE##*:}"
patches:
- target: {kind: StatefulSet, name: runner}
  patch: |-
    apiVersion: apps/v1
    kind: StatefulSet
    metadata: {name: runner}
    spec:
      template:
        spec:
          initContainers:
          - name: compose-ingress
            env:
            - {name: COMPOSE_INGRESS_DOMAIN, value: "$domain"}
$( [ "$overlay" != ingress ] || echo '            - {name: COMPOSE_INGRESS_INGRESS_CLASS, value: traefik}' )
$( [ "$overlay" != pod-scope ] || echo "            - {name: COMPOSE_INGRESS_TRUSTED_PROXIES, value: \"${POD_CIDR%.*}.1/32\"}" )
YAML
  if [ "$overlay" = gateway ]; then
    cat >> "$dir/kustomization.yaml" <<YAML
- target: {kind: Gateway, name: compose-ingress}
  patch: |-
    - {op: replace, path: /spec/listeners/0/hostname, value: "*.$domain"}
YAML
  fi
  tls "$ns" "$overlay" "$domain"
  echo "KUSTOMIZATION=$dir"
  echo "TLS_CA=$dir/tls.crt"
}
apply() {
  local ns=$1 dir=$TESTBED_DIR/deploy/$1
  kustomization "$@" >/dev/null
  kubectl_bed kustomize "$dir" | kubectl_bed apply -n "$ns" -f - >&2
  echo "TLS_CA=$dir/tls.crt"
}

# The namespace and the wildcard certificate a user creates (e.g. with cert-manager);
# self-signed here. Pod scope: one certificate listing *.<pod>.<domain> for every ordinal of the
# overlay's StatefulSet. Also what a Helm install (tests/e2e/helm.rs) needs before `helm install`.
tls() {
  local ns=$1 overlay=$2 domain=$3
  local dir=$TESTBED_DIR/deploy/$ns
  mkdir -p "$dir"
  kubectl_bed get namespace "$ns" >/dev/null 2>&1 || kubectl_bed create namespace "$ns" >/dev/null
  local secret=wildcard-composition-tls names="DNS:*.$domain" cn="*.$domain"
  if [ "$overlay" = pod-scope ]; then
    secret=wildcard-pods-tls names="DNS:*.runner-0.$domain,DNS:*.runner-1.$domain" cn="*.runner-0.$domain"
  fi
  if ! kubectl_bed -n "$ns" get secret "$secret" >/dev/null 2>&1; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=$cn" -addext "subjectAltName=$names" \
      -keyout "$dir/tls.key" -out "$dir/tls.crt" 2>/dev/null
    kubectl_bed -n "$ns" create secret tls "$secret" --cert "$dir/tls.crt" --key "$dir/tls.key" >/dev/null
  fi
}

case ${1:-} in
  image) image ;;
  apply) [ $# -eq 4 ] || die "usage: deploy.sh apply NAMESPACE OVERLAY DOMAIN"; apply "$2" "$3" "$4" ;;
  kustomization) [ $# -eq 4 ] || die "usage: deploy.sh kustomization NAMESPACE OVERLAY DOMAIN"; kustomization "$2" "$3" "$4" ;;
  tls) [ $# -eq 4 ] || die "usage: deploy.sh tls NAMESPACE OVERLAY DOMAIN"; tls "$2" "$3" "$4"; echo "TLS_CA=$TESTBED_DIR/deploy/$2/tls.crt" ;;
  delete) [ $# -eq 2 ] || die "usage: deploy.sh delete NAMESPACE"; kubectl_bed delete namespace "$2" --wait=true --timeout=300s >/dev/null; rm -rf "$TESTBED_DIR/deploy/$2" ;;
  *) die "usage: deploy.sh image | apply NAMESPACE OVERLAY DOMAIN | kustomization NAMESPACE OVERLAY DOMAIN | tls NAMESPACE OVERLAY DOMAIN | delete NAMESPACE" ;;
esac
