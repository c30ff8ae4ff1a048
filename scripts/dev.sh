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

temporal_cli="temporal workflow list"
[ "$TEMPORAL_PORT" = 7233 ] || temporal_cli="temporal workflow list --address 127.0.0.1:$TEMPORAL_PORT"
cat <<MSG

  The stack is up. In another shell:

    export KUBECONFIG=$KUBECONFIG
    kubectl apply -f examples/imagejob.yaml
    kubectl get ij -o wide
    kubectl wait --for=condition=Succeeded ij/blue-shirt

    curl -s -XPOST localhost:$facade_port/images/process -H 'content-type: application/json' \\
      -d '{"url":"https://example.com/image.jpg","title":"Product Image","tags":["shirt"]}'
    curl -s localhost:$facade_port/images/workflow/<workflow_id>/status
    curl -s localhost:$facade_port/images/workflow/<workflow_id>/result

    $temporal_cli

  Jobs page:    http://localhost:$facade_port/ui/
  API explorer: http://localhost:$facade_port/docs
  Temporal UI:  $TEMPORAL_UI_URL
  Metrics:      http://localhost:$metrics_port/metrics
  Ctrl-C stops the operator and the stack.

MSG
EMBEDDED_STORE_PATH="${EMBEDDED_STORE_PATH:-$stack/metadata.redb}" \
  FACADE_TEMPORAL_UI_URL="${FACADE_TEMPORAL_UI_URL:-$TEMPORAL_UI_URL}" \
  FACADE_DRAIN_SECS="${FACADE_DRAIN_SECS:-0}" \
  "$CARGO_TARGET_DIR/debug/imagejob-operator" run --no-auth \
  --facade-addr "127.0.0.1:$facade_port" --metrics-addr "127.0.0.1:$metrics_port"
