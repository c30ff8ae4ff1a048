#!/usr/bin/env bash
# The benchmark: starts a private real stack, runs benches/operator.rs (release build) against
# it, prints the table and writes JSON under bench-results/. Arguments go to the harness, e.g.
#   scripts/bench.sh --jobs 150 --reps 5 --concurrency 4,32 --rss-jobs 10000 --scale 100000 --tuning
#   scripts/bench.sh --fairness 2000 --fairness-only
#   scripts/bench.sh --listed-steps 200 --listed-steps-only
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$IJ_ROOT"
scripts/install-deps.sh
own_build
step "building the benchmark (release)"
cargo bench --bench operator --no-run
stack="$(mktemp -d /tmp/imagejob-bench-stack.XXXXXX)"
# The stack's folder goes with it (the figures are in bench-results/).
trap 'scripts/stack.sh purge "$stack"' EXIT
scripts/stack.sh up "$stack"
# shellcheck disable=SC1091
source "$stack/env"
# The fairness phase starts a second Temporal dev server (without fairness) by this script.
export IJ_STACK_SCRIPT="$IJ_ROOT/scripts/stack.sh"
# The Temporal dev server's own metrics count the calls the controller makes.
set -a
# shellcheck disable=SC1091
source "$stack/temporal.ports"
set +a
cargo bench --bench operator -- "$@"
