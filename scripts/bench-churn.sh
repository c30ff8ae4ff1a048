#!/usr/bin/env bash
# Controller memory under churn: N ImageJobs created through the apiserver and run through the
# real worker and Temporal, a tenth of them deleted while running, then all deleted. Prints the
# controller's RSS at baseline (cache synced, no job), at the peak, and once every job is gone,
# with its per-job entries (`imagejob_controller_tracked_jobs`), as a table and as JSON in
# bench-results/churn-<time>.json. Uses the release binary scripts/image.sh builds.
#
#   scripts/bench-churn.sh [--jobs N]     default 10000
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$IJ_ROOT"
jobs=$(jobs_arg 10000 "$@")
bench_prepare
bin="$IJ_CACHE/images/imagejob-operator"
stack="$(mktemp -d /tmp/imagejob-bench-churn.XXXXXX)"
cleanup() {
  [ -z "${worker:-}" ] || kill "$worker" 2>/dev/null || true
  [ -z "${controller:-}" ] || kill "$controller" 2>/dev/null || true
  scripts/stack.sh down "$stack"
}
trap cleanup EXIT
scripts/stack.sh up "$stack"
# shellcheck disable=SC1091
source "$stack/env"
ns=churn
kubectl create namespace "$ns" >/dev/null
export TEMPORAL_TASK_QUEUE=churn-queue RUST_LOG=warn
METADATA_STORE=embedded EMBEDDED_STORE_PATH="$stack/metadata.redb" "$bin" worker &
worker=$!
port=$(free_port)
WATCH_NAMESPACES=$ns CONTROLLER_METRICS_ADDR="127.0.0.1:$port" "$bin" controller &
controller=$!

metric() { # NAME: its value in the controller's metrics (0 when absent)
  curl -fsS "127.0.0.1:$port/metrics" | awk -v n="$1" '$1 == n {print $2; found=1} END {if (!found) print 0}'
}
samples="$stack/samples.jsonl"
sample() { # LABEL: appends the controller's memory now (MiB) to $samples
  local status heap_alloc heap_res
  status=$(cat "/proc/$controller/status")
  heap_alloc=$(metric imagejob_heap_allocated_bytes)
  heap_res=$(metric imagejob_heap_resident_bytes)
  python3 - "$1" "$heap_alloc" "$heap_res" "$status" >>"$samples" <<'PY'
import json, sys
label, alloc, res, status = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
kib = {l.split(":")[0]: int(l.split()[1]) for l in status.splitlines() if l.split(":")[0] in ("VmRSS", "RssAnon", "RssFile")}
mib = lambda v: round(v / 1024, 1)
print(json.dumps({"label": label, "rss": mib(kib["VmRSS"]), "rss_anon": mib(kib["RssAnon"]),
                  "rss_file": mib(kib["RssFile"]), "heap_allocated": round(alloc / 1048576, 1),
                  "heap_resident": round(res / 1048576, 1)}))
PY
}
wait_until() { # WHAT CMD...: polls CMD until it succeeds (30 min at most)
  local what=$1; shift
  local deadline=$((SECONDS + 1800))
  until "$@"; do
    [ $SECONDS -lt $deadline ] || fail "timed out waiting for $what"
    sleep 1
  done
}
ready() { curl -fsS "127.0.0.1:$port/readyz" >/dev/null 2>&1; }
wait_until "the controller" ready
sleep 2
sample baseline

step "creating $jobs jobs"
started=$SECONDS
for ((first = 0; first < jobs; first += 500)); do
  for ((i = first; i < first + 500 && i < jobs; i++)); do
    printf 'apiVersion: imagejob.dev/v1alpha1\nkind: ImageJob\nmetadata: {name: churn-%s}\nspec: {url: "https://example.com/%s.jpg"}\n---\n' "$i" "$i"
  done | kubectl apply -n "$ns" -f - >/dev/null
  # A tenth of every batch is deleted while it runs.
  names=()
  for ((i = first; i < first + 50 && i < jobs; i++)); do names+=("churn-$i"); done
  kubectl delete imagejobs -n "$ns" "${names[@]}" --wait=false >/dev/null 2>&1 || true
done
sample peak
settled() {
  local left
  left=$(kubectl get imagejobs -n "$ns" -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -cv '^Completed$' || true)
  sample peak
  [ "$left" -eq 0 ]
}
wait_until "every job to complete" settled
took=$((SECONDS - started))

step "deleting every job"
kubectl delete imagejobs -n "$ns" --all --wait=false >/dev/null
gone() { [ "$(kubectl get imagejobs -n "$ns" -o name | wc -l)" -eq 0 ]; }
wait_until "every job to go" gone
drained() { [ "$(metric imagejob_controller_tracked_jobs)" = 0 ]; }
wait_until "per-job entries to drain" drained
sleep 5
sample after_all_deleted
# Requeues of deleted jobs (the 60 s resync) leave the runtime's queue only when they fire.
sleep 65
sample after_70s
tracked=$(metric imagejob_controller_tracked_jobs)

mkdir -p bench-results
out="bench-results/churn-$(date -u +%Y%m%dT%H%M%SZ).json"
python3 - "$jobs" "$tracked" "$took" "$out" "$samples" <<'PY'
import json, os, subprocess, sys
jobs, tracked, took, out = int(sys.argv[1]), int(float(sys.argv[2])), int(sys.argv[3]), sys.argv[4]
samples = [json.loads(l) for l in open(sys.argv[5])]
at = {s["label"]: s for s in samples if s["label"] != "peak"}
at["peak"] = {k: max(s[k] for s in samples) for k in samples[0] if k != "label"}
order = ["baseline", "peak", "after_all_deleted", "after_70s"]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
figures = {"commit": commit, "cores": os.cpu_count(), "jobs": jobs, "seconds_to_complete": took,
           "controller_memory_mib": {label: {k: v for k, v in at[label].items() if k != "label"} for label in order},
           "tracked_jobs_after": tracked}
print(f"{jobs} jobs created (a tenth deleted while running), all completed in {took} s; "
      f"per-job entries left: {tracked}\n")
print("| controller memory (MiB) | " + " | ".join(order) + " |")
print("|---|" + "---|" * len(order))
for key, name in [("rss", "RSS"), ("rss_anon", "RSS anonymous"), ("rss_file", "RSS file-backed (binary, libraries)"),
                  ("heap_allocated", "heap: live allocations"), ("heap_resident", "heap: allocator resident")]:
    print(f"| {name} | " + " | ".join(str(at[label][key]) for label in order) + " |")
json.dump(figures, open(out, "w"), indent=2)
print(f"\nJSON: {out}")
PY
