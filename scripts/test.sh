#!/usr/bin/env bash
# README's second command: installs what the tests need, builds the container image, starts two
# private real stacks (etcd + kube-apiserver + Temporal on loopback for most suites, and a
# single-node cluster with kubelet and containerd for the chart's pods), and runs the whole test
# suite: formatting, clippy, unit tests and integration tests. The stacks are stopped on exit.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$IJ_ROOT"

scripts/install-deps.sh
# A one-off build keeps no incremental state (gigabytes in the shared target folder).
export CARGO_INCREMENTAL=0
own_build

step "cargo fmt --check"
cargo fmt --all -- --check
step "building the tests"
cargo build --tests --all-targets
step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "building the container image (release binary)"
scripts/image.sh >/dev/null

stack="$(mktemp -d /tmp/imagejob-test-stack.XXXXXX)"
cluster="$(mktemp -d /tmp/imagejob-test-cluster.XXXXXX)"
# The cluster stack's folder (about 230 MB a run) goes; the other keeps test.log when a test
# failed.
trap 'if [[ "${status:-1}" == 0 ]]; then scripts/stack.sh purge "$stack"; else scripts/stack.sh down "$stack"; fi; scripts/stack.sh purge "$cluster"' EXIT
scripts/stack.sh up "$stack"
scripts/stack.sh up "$cluster" --cluster
# shellcheck disable=SC1091
source "$stack/env"
export IJ_STACK_SCRIPT="$IJ_ROOT/scripts/stack.sh"
export IJ_CLUSTER_ENV="$cluster/env"

step "cargo test (unit + integration, against the stack in $stack)"
set +e
cargo test --no-fail-fast 2>&1 | tee "$stack/test.log"
status=${PIPESTATUS[0]}
set -e
exit "$status"
