#!/usr/bin/env bash
# Builds the container image without Docker or a registry: the release binary, assembled by
# scripts/oci_image.py into an OCI archive equivalent to the Dockerfile's image (binary, the
# shared libraries it links, CA certificates, the image model's weights, uid 65532, entrypoint),
# tagged as the chart's default image (values.yaml `image.repository`, Chart.yaml `appVersion`).
#
#   scripts/image.sh --tag           print the tag only
#   scripts/image.sh [--load DIR]    build $IJ_CACHE/images/imagejob-operator.tar; with --load,
#                                    import it (and the pause image) into the containerd of the
#                                    cluster stack in DIR (scripts/stack.sh up DIR --cluster)
#
# Prints the image tag on stdout.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$IJ_ROOT"

chart=charts/imagejob-operator
repository=$(sed -n 's/^  repository: *\([^ #]*\).*/\1/p' "$chart/values.yaml" | head -n1)
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}/\1/p' "$chart/Chart.yaml")
tag="$repository:$version"
[ "${1:-}" != "--tag" ] || { echo "$tag"; exit 0; }
images="$IJ_CACHE/images"
mkdir -p "$images"

step "building the release binary"
cargo build --release --locked --bin imagejob-operator >&2
binary="$images/imagejob-operator"
cp "$CARGO_TARGET_DIR/release/imagejob-operator" "$binary.tmp"
strip "$binary.tmp" && mv "$binary.tmp" "$binary"
step "assembling $tag"
model="$IJ_CACHE/models/efficientnet-lite0.safetensors"
[ -s "$model" ] || fail "the image model is not installed: run scripts/install-deps.sh"
IJ_IMAGE_MODEL="$model" python3 scripts/oci_image.py operator "$binary" "$tag" "$images/imagejob-operator.tar" >&2
[ -x "$IJ_CACHE/pause" ] || fail "pause is not built: run scripts/install-deps.sh"
python3 scripts/oci_image.py pause "$IJ_CACHE/pause" "$IJ_PAUSE_IMAGE" "$images/pause.tar" >&2

if [ "${1:-}" = "--load" ]; then
  dir=$(cd "${2:?usage: $0 --load DIR}" && pwd)
  sock="$dir/containerd/containerd.sock"
  [ -S "$sock" ] || fail "no containerd at $sock: start the stack with --cluster"
  for archive in pause imagejob-operator; do
    step "loading $archive into $sock"
    ctr -n k8s.io --address "$sock" images import "$images/$archive.tar" >&2
  done
fi
echo "$tag"
