# Shared helpers for the scripts in this folder (sourced, never run).
IJ_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
IJ_CACHE="${IJ_CACHE:-$HOME/.cache/imagejob-operator}"
step() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
fail() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }
