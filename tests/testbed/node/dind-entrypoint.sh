#!/bin/sh
# The test bed's dind image entrypoint: what docker:dind's dockerd-entrypoint.sh and moby's
# hack/dind do for the arguments deploy/ passes (`dockerd --host=unix://... --group=...`), on a
# Debian root fs. TLS set-up (DOCKER_TLS_CERTDIR) and rootless mode are not carried over:
# deploy/ turns TLS off and runs dind privileged as root.
set -eu
# Flags only (or nothing): dockerd with the image's default socket, like docker:dind.
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
  set -- dockerd --host=unix:///var/run/docker.sock "$@"
fi
if [ "$1" = dockerd ]; then
  # A restarted container keeps its file system: stale pid files stop dockerd and containerd.
  find /run /var/run -iname 'docker*.pid' -delete 2>/dev/null || :
  find /run /var/run -path '*containerd*' -iname '*.pid' -delete 2>/dev/null || :
  # hack/dind: securityfs for AppArmor profiles, and shared mount propagation so that
  # containers' volume mounts work.
  if [ -d /sys/kernel/security ] && ! mountpoint -q /sys/kernel/security; then
    mount -t securityfs none /sys/kernel/security || echo "dind: could not mount securityfs (AppArmor unavailable)" >&2
  fi
  mount --make-rshared /
  iptables --version
  # tini as PID 1, like docker:dind's docker-init: signals reach dockerd, orphans are reaped.
  exec tini -- "$@"
fi
exec "$@"
