#!/usr/bin/env bash
# Builds the test bed's Go components from their published modules with the machine's Go
# toolchain, and caches the binaries under the user's cache directory keyed by the pinned
# versions (go.mod + go.sum + Go version). A warm run finds them and builds nothing; a cold
# run (fresh machine) builds everything, which takes minutes: progress is printed.
#
# usage: build.sh [kube|etcd|traefik|contour|compose|containerd|moby|runc|protoecho|helm ...]   (default: kube etcd traefik)
# prints nothing on stdout but "NAME=DIR" lines, one per component, DIR holding its binaries.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${COMPOSE_INGRESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/compose-ingress}
export GOFLAGS="${GOFLAGS:-} -buildvcs=false -trimpath"
export CGO_ENABLED=0

log() { echo "[testbed/build] $*" >&2; }

command -v go >/dev/null || { log "no Go toolchain on PATH: install Go >= 1.26 (the machine's toolchain builds the control plane)"; exit 1; }

# The packages to build per component (main packages inside each wrapper module).
packages_of() {
  case $1 in
    # One `go build` for the control plane and the node: the packages they share compile once.
    kube) echo k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
            k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
            k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy ;;
    etcd) echo go.etcd.io/etcd/server/v3 ;;
    traefik) echo github.com/traefik/traefik/v3/cmd/traefik ;;
    # The bed's second (dedicated-class) controller; its Envoy comes from a wheel (envoy.sh).
    contour) echo github.com/projectcontour/contour/cmd/contour ;;
    compose) echo github.com/docker/compose/v2/cmd ;;
    containerd) echo github.com/containerd/containerd/v2/cmd/containerd \
                  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
                  github.com/containerd/containerd/v2/cmd/ctr ;;
    moby) echo github.com/moby/moby/v2/cmd/dockerd github.com/moby/moby/v2/cmd/docker-proxy ;;
    runc) echo github.com/opencontainers/runc ;;
    # The bed's own gRPC (h2c) and WebSocket backend and client (tests/testbed/go/protoecho).
    protoecho) echo . ;;
    # deploy/helm's chart is linted, rendered and installed with it (tests/e2e/helm.rs). Only the
    # command: the cold CI budget has no room for more of Helm's module.
    helm) echo helm.sh/helm/v4/cmd/helm ;;
    *) log "unknown component '$1' (known: kube etcd traefik contour compose containerd moby runc protoecho helm)"; exit 2 ;;
  esac
}

# The binary's file name where the main package's directory would name it badly (`go build`
# names a binary after its package's directory: compose's main package is .../v2/cmd). Empty:
# keep go's names (one component may build several binaries).
binary_of() {
  case $1 in
    compose) echo docker-compose-v2 ;;
    protoecho) echo protoecho ;;
    *) echo "" ;;
  esac
}

# The version a module pins (the wrapper module's requirement).
version_in() { (cd "$here/go/$1" && go list -m -f '{{.Version}}' "$2"); }

# Extra linker flags per component: compose reports (and labels its containers with,
# com.docker.compose.version) the version stamped here, "dev" otherwise; Kubernetes binaries
# report v0.0.0-master without theirs (the kubelet puts it in the Node's status); containerd
# reports it to the kubelet (`kubectl get node -o wide`).
ldflags_of() {
  case $1 in
    compose) echo "-X github.com/docker/compose/v2/internal.Version=$(version_in compose github.com/docker/compose/v2)" ;;
    kube)
      local v; v=$(version_in kube k8s.io/kubernetes)
      local minor=${v#v1.}; minor=${minor%%.*}
      local x
      for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        x+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
      done
      echo "$x" ;;
    containerd) echo "-X github.com/containerd/containerd/v2/version.Version=$(version_in containerd github.com/containerd/containerd/v2)" ;;
    # The moby module's versions are v2.0.0-beta.N; the Docker release it is sits in its
    # releases/versions.yaml. Without it the daemon calls itself "library-import".
    moby)
      # `go list -m` names no directory for a module not downloaded yet (a fresh machine).
      local dir; dir=$(cd "$here/go/moby" && go mod download -json github.com/moby/moby/v2 | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
      local v; v=$(sed -n 's/^  last: "\(.*\)"/\1/p' "$dir/releases/versions.yaml")
      [ -n "$v" ] || { log "moby: no Docker version in $dir/releases/versions.yaml"; exit 1; }
      echo "-X github.com/moby/moby/v2/dockerversion.Version=$v" ;;
    # `contour version` prints it (BENCHMARKS.md records it).
    contour) echo "-X github.com/projectcontour/contour/internal/build.Version=$(version_in contour github.com/projectcontour/contour)" ;;
    runc) echo "-X main.version=$(version_in runc github.com/opencontainers/runc | sed 's/^v//')" ;;
    # Without it `helm version` says v4.3 (the module's default), not the release pinned.
    helm) echo "-X helm.sh/helm/v4/internal/version.version=$(version_in helm helm.sh/helm/v4) -X helm.sh/helm/v4/internal/version.gitTreeState=clean" ;;
    *) echo "" ;;
  esac
}

# Build tags per component: a static dockerd without cgo (MACHINE-FACTS.md, "Docker Engine 29
# ran here"); runc with seccomp (cgo, Debian's libseccomp-dev).
tags_of() {
  case $1 in
    moby) echo "netgo osusergo static_build nri_no_wasm exclude_graphdriver_btrfs exclude_disk_quota" ;;
    runc) echo "seccomp urfave_cli_no_docs" ;;
    *) echo "" ;;
  esac
}
# runc's nsenter is C: it is the one component built with cgo.
cgo_of() { [ "$1" = runc ] && echo 1 || echo 0; }

build_one() {
  local name=$1 dir="$here/go/$1"
  local key
  # Build tags are part of the key where a component has them (the others keep their old keys).
  local tags; tags=$(tags_of "$name")
  # protoecho is the one component whose source is ours: its source is part of the key.
  key=$({ cat "$dir/go.mod" "$dir/go.sum"; go env GOVERSION; [ -z "$tags" ] || echo "$tags"
          [ "$name" != protoecho ] || cat "$dir"/*.go; } | sha256sum | cut -c1-16)
  local out="$cache/bin/$name-$key"
  if [ -f "$out/.complete" ]; then
    log "$name: cached in $out"
  else
    log "$name: building $(packages_of "$name") (cold build: several minutes on 2 cores)"
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    local start=$SECONDS ldflags
    # Computed apart, so that a failure stops the build (inside the command line it would not).
    ldflags=$(ldflags_of "$name")
    (cd "$dir" && CGO_ENABLED=$(cgo_of "$name") go build -tags "$(tags_of "$name")" -ldflags="-s -w $ldflags" \
      -o "$out.tmp/$(binary_of "$name")" $(packages_of "$name")) >&2
    rm -rf "$out" && mv "$out.tmp" "$out" && touch "$out/.complete"
    log "$name: built in $((SECONDS - start)) s -> $out"
  fi
  echo "$name=$out"
}

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(kube etcd traefik)
for c in "${components[@]}"; do build_one "$c"; done
