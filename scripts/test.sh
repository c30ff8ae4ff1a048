#!/usr/bin/env bash
# README's second command: installs what the tests need, starts a private real stack
# (etcd + kube-apiserver + Temporal) on free ports, and runs the whole test suite against it:
# formatting, clippy, unit tests and integration tests. The stack is stopped on exit.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$IJ_ROOT"

scripts/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check
step "building the tests"
cargo build --tests --all-targets
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

stack="$(mktemp -d /tmp/imagejob-test-stack.XXXXXX)"
trap 'scripts/stack.sh down "$stack"' EXIT
scripts/stack.sh up "$stack"
# shellcheck disable=SC1091
source "$stack/env"
export IJ_STACK_SCRIPT="$IJ_ROOT/scripts/stack.sh"

step "cargo test (unit + integration, against the stack in $stack)"
set +e
cargo test --no-fail-fast 2>&1 | tee "$stack/test.log"
status=${PIPESTATUS[0]}
set -e
exit "$status"
