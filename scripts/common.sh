# Shared helpers for the scripts in this folder (sourced, never run).
IJ_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
IJ_CACHE="${IJ_CACHE:-$HOME/.cache/imagejob-operator}"
# One build folder for every checkout on this machine: a fresh clone (CI's) reuses the compiled
# dependencies instead of building them all again.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$IJ_CACHE/target}"
# Cargo judges a build made in another checkout fresh (it compares paths relative to the
# workspace), but the test binaries hold their checkout's absolute path (CARGO_MANIFEST_DIR)
# and would read that checkout's files: the crate's own sources are touched once per checkout
# change, so they are compiled again (the dependencies are not).
own_build() {
  local marker="$CARGO_TARGET_DIR/.imagejob-checkout"
  mkdir -p "$CARGO_TARGET_DIR"
  if [[ "$(cat "$marker" 2>/dev/null)" != "$IJ_ROOT" ]]; then
    find "$IJ_ROOT/src" "$IJ_ROOT/tests" "$IJ_ROOT/benches" -name '*.rs' -exec touch {} +
    echo "$IJ_ROOT" >"$marker"
  fi
}
# The pod sandbox image of cluster stacks (built from Kubernetes' pause.c by install-deps.sh).
IJ_PAUSE_IMAGE="imagejob.local/pause:3.4"
# free_port: a TCP port free on loopback now, picked at random below the kernel's ephemeral range
# (net.ipv4.ip_local_port_range) and below the NodePort range (30000+): a port from bind(0) is
# an ephemeral one, which any outgoing connection may take before the server it was picked for
# binds it (CI saw Temporal's UI fail so: "bind: address already in use"). The test kit's
# free_port (tests/kit/src/lib.rs) picks from the same range.
free_port() {
  python3 - <<'PY'
import random, socket
ephemeral_low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
low, high = 20000, min(ephemeral_low, 30000)
for _ in range(1000):
    port = random.randrange(low, high) if high - low >= 1000 else 0
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        print(s.getsockname()[1])
        break
    except OSError:
        pass
    finally:
        s.close()
else:
    raise SystemExit(f"no free port in {low}..{high}")
PY
}
# pick_port WANTED WHAT [ADDRESS]: WANTED when it is free, else a free port and a line saying so.
pick_port() {
  if python3 -c "import socket; s=socket.socket(); s.bind(('${3:-127.0.0.1}', $1)); s.close()" 2>/dev/null; then
    echo "$1"
  else
    local other; other=$(free_port)
    printf '\033[1m==>\033[0m port %s (%s) is in use: using %s instead\n' "$1" "$2" "$other" >&2
    echo "$other"
  fi
}
# Installs what a benchmark needs and builds the operator's image (its release binary).
bench_prepare() {
  scripts/install-deps.sh
  scripts/image.sh >/dev/null
}
# jobs_arg DEFAULT [--jobs N]: N when the arguments give it, else DEFAULT.
jobs_arg() {
  if [ "${2:-}" = "--jobs" ]; then echo "${3:?--jobs needs a number}"; else echo "$1"; fi
}
step() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
fail() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }
