#!/usr/bin/env bash
# A stand-in for the CI runner images other charts put next to dind (ARC's
# ghcr.io/actions/actions-runner, GitLab Runner's build and helper images), which the node
# cannot pull (no registry is reachable): Debian's static busybox with the paths ARC's pod
# template runs, /home/runner/run.sh (here: waits for its SIGTERM like a runner between jobs)
# and /home/runner/externals/ (what ARC's init-dind-externals copies). Built offline with
# oci.sh, imported into the node's containerd once (keyed by what goes in).
# Prints RUNNER_IMAGE=<the reference a pod spec names>.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ -f "$TESTBED_DIR/env" ] || die "the test bed is not up: run tests/testbed/up.sh first"
source "$TESTBED_DIR/env"
key=$(cat "$here/runner-image.sh" "$here/oci.sh" /bin/busybox | sha256sum | cut -c1-16)
ref=docker.io/compose-ingress-testbed/runner:$key
ctr_node() { "$BIN/ctr" --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }
if ! ctr_node images ls -q 2>/dev/null | grep -qx "$ref"; then
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root/bin" "$root/tmp" "$root/home/runner/externals"
  cp /bin/busybox "$root/bin/busybox"
  # The applets a person (and the tests) use in a runner container: a shell, find/grep/cat/ls.
  for a in sh cat cp find grep ls sleep xargs; do ln -s busybox "$root/bin/$a"; done
  echo "a stand-in for the runner's externals" > "$root/home/runner/externals/README"
  printf '#!/bin/sh\n# A runner waiting for jobs: exits at SIGTERM.\ntrap "exit 0" TERM\nwhile :; do sleep 1; done\n' \
    > "$root/home/runner/run.sh"
  chmod 0755 "$root/home/runner/run.sh"
  "$here/oci.sh" "$root" "$ref" '{"Entrypoint":["/home/runner/run.sh"],"Env":["PATH=/bin"]}' "$root.tar"
  ctr_node images import "$root.tar" >/dev/null
  rm -f "$root.tar"
  log "runner stand-in image $ref imported into the node's containerd"
fi
echo "RUNNER_IMAGE=$ref"
