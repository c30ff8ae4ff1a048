# Shared helpers for the scripts in this folder (sourced, never run).
IJ_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
IJ_CACHE="${IJ_CACHE:-$HOME/.cache/imagejob-operator}"
# One build folder for every checkout on this machine: a fresh clone (CI's) reuses the compiled
# dependencies instead of building them all again.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$IJ_CACHE/target}"
# The pod sandbox image of cluster stacks (built from Kubernetes' pause.c by install-deps.sh).
IJ_PAUSE_IMAGE="imagejob.local/pause:3.4"
step() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
fail() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }
