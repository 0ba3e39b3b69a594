#!/usr/bin/env bash
# Writes an OCI image archive (one uncompressed layer) from a root fs directory, for
# `ctr images import`: no registry is reachable and the node's images are built here.
#   oci.sh ROOTFS_DIR IMAGE_NAME CONFIG_JSON OUT_TAR
# IMAGE_NAME is the full reference the kubelet asks for (docker.io/NAME:TAG for an image written
# NAME:TAG in a pod spec); CONFIG_JSON is the image config's "config" object, e.g.
#   '{"Entrypoint":["/bin/sleep","infinity"]}'
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: oci.sh ROOTFS_DIR IMAGE_NAME CONFIG_JSON OUT_TAR" >&2; exit 2; }
rootfs=$1 name=$2 config=$3 out=$4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/blobs/sha256"

# blob FILE: moves FILE into blobs/ under its digest; prints "DIGEST SIZE".
blob() {
  local d s
  d=$(sha256sum "$1" | cut -d' ' -f1); s=$(stat -c %s "$1")
  mv "$1" "$work/blobs/sha256/$d"
  echo "$d $s"
}
# Numeric owners and a fixed mtime: the same root fs gives the same layer digest.
tar -C "$rootfs" --numeric-owner --sort=name --mtime=@0 -cf "$work/layer" .
read -r layer layer_size < <(blob "$work/layer")
printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$config" "$layer" > "$work/config"
read -r cfg cfg_size < <(blob "$work/config")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
  "$cfg" "$cfg_size" "$layer" "$layer_size" > "$work/manifest"
read -r man man_size < <(blob "$work/manifest")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$man" "$man_size" "$name" "${name##*:}" > "$work/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/oci-layout"
tar -C "$work" -cf "$out" oci-layout index.json blobs
