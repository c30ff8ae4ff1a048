#!/usr/bin/env bash
# README's first command: installs what is missing, starts the whole stack locally (etcd +
# kube-apiserver + Temporal with its UI) and runs the operator (`run`: worker + controller +
# facade) on its embedded defaults, in the foreground. Ctrl-C stops everything it started.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$IJ_ROOT"

scripts/install-deps.sh
step "building imagejob-operator"
cargo build --bin imagejob-operator

stack="$IJ_ROOT/.stack/dev"
scripts/stack.sh down "$stack" 2>/dev/null || true
trap 'echo; step "stopping the stack"; scripts/stack.sh down "$stack"' EXIT
scripts/stack.sh up "$stack" --seed-ports
# shellcheck disable=SC1091
source "$stack/env"
facade_port="${FACADE_PORT:-$(pick_port 8080 facade)}"
metrics_port="${METRICS_PORT:-$(pick_port 9090 metrics)}"
facade_admin_port="${FACADE_ADMIN_PORT:-$(pick_port 9091 facade-admin)}"
images_port="${IMAGES_PORT:-$(pick_port 8081 images)}"

# A small catalog of product pictures, made here and served on loopback only: the worker fetches
# each searched image itself, and its similarity backend (the catalog, without a Lykdat key)
# finds the similar ones among those it searched before.
images="$stack/images"
step "serving a sample catalog on http://127.0.0.1:$images_port/"
python3 scripts/sample_catalog.py "$images" >"$stack/catalog.tsv"
python3 -m http.server --bind 127.0.0.1 --directory "$images" "$images_port" >/dev/null 2>&1 &
images_pid=$!
# Once the facade answers, every sample but the example's blue shirt is submitted with a search,
# so the example job finds similar products.
(
  until curl -sf "localhost:$facade_port/healthz" >/dev/null 2>&1; do sleep 0.5; done
  grep -v '^blue-shirt.png' "$stack/catalog.tsv" | while IFS=$'\t' read -r file title; do
    curl -sf -XPOST "localhost:$facade_port/images/process" -H 'content-type: application/json' \
      -d "{\"url\":\"http://127.0.0.1:$images_port/$file\",\"title\":\"$title\",\"similarity_search\":true}" >/dev/null
  done
  step "sample catalog submitted: $(($(wc -l <"$stack/catalog.tsv") - 1)) jobs"
) &
submit_pid=$!
trap 'echo; kill "$images_pid" "$submit_pid" 2>/dev/null; step "stopping the stack"; scripts/stack.sh down "$stack"' EXIT

temporal_cli="temporal workflow list"
[ "$TEMPORAL_PORT" = 7233 ] || temporal_cli="temporal workflow list --address 127.0.0.1:$TEMPORAL_PORT"
cat <<MSG

  The stack is up. In another shell:

    export KUBECONFIG=$KUBECONFIG
    kubectl apply -f examples/imagejob.yaml
    kubectl get ij -o wide
    kubectl wait --for=condition=Succeeded ij/blue-shirt
    kubectl get ij blue-shirt -o jsonpath='{.status.similarity}'   # its similar products

    curl -s -XPOST localhost:$facade_port/images/process -H 'content-type: application/json' \\
      -d '{"url":"http://127.0.0.1:$images_port/navy-shirt.png","title":"Navy shirt","similarity_search":true}'
    curl -s localhost:$facade_port/images/workflow/<workflow_id>/status
    curl -s localhost:$facade_port/images/workflow/<workflow_id>/result

    $temporal_cli

  Jobs page:    http://localhost:$facade_port/ui/
  API explorer: http://localhost:$facade_port/docs
  Temporal UI:  $TEMPORAL_UI_URL
  Metrics:      http://localhost:$metrics_port/metrics (controller), http://localhost:$facade_admin_port/metrics (facade)
  Ctrl-C stops the operator and the stack.

MSG
EMBEDDED_STORE_PATH="${EMBEDDED_STORE_PATH:-$stack/metadata.redb}" \
  IMAGE_FETCH_ALLOW_CIDRS="${IMAGE_FETCH_ALLOW_CIDRS:-127.0.0.1/32}" \
  IMAGE_MODEL_PATH="${IMAGE_MODEL_PATH:-$IJ_CACHE/models/efficientnet-lite0.safetensors}" \
  FACADE_TEMPORAL_UI_URL="${FACADE_TEMPORAL_UI_URL:-$TEMPORAL_UI_URL}" \
  FACADE_DRAIN_SECS="${FACADE_DRAIN_SECS:-0}" \
  "$CARGO_TARGET_DIR/debug/imagejob-operator" run --no-auth \
  --facade-addr "127.0.0.1:$facade_port" --facade-admin-addr "127.0.0.1:$facade_admin_port" \
  --metrics-addr "127.0.0.1:$metrics_port"
