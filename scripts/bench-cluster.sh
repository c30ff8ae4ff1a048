#!/usr/bin/env bash
# The cluster figures: time from `scripts/stack.sh up DIR --cluster` to a Ready node, time from
# `helm install` (the chart's default topology: 2 controllers, 2 facades, 1 worker with the
# embedded store) to every Deployment Available, and each pod's RSS once a few jobs ran.
# Prints a table and writes the same figures as JSON to bench-results/cluster-<time>.json.
#
#   scripts/bench-cluster.sh [--jobs N]     jobs to run through the pods before measuring RSS
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$IJ_ROOT"
jobs=$(jobs_arg 20 "$@")
bench_prepare
stack="$(mktemp -d /tmp/imagejob-bench-cluster.XXXXXX)"
trap 'scripts/stack.sh down "$stack"' EXIT
started=$(date +%s.%N)
scripts/stack.sh up "$stack" --cluster
node_ready=$(python3 -c "print(round($(date +%s.%N) - $started, 1))")
# shellcheck disable=SC1091
source "$stack/env"

ns=bench
kubectl create namespace "$ns" >/dev/null
kubectl -n "$ns" create secret generic imagejob-facade-tokens --from-literal=tokens=bench >/dev/null
cat >"$stack/values.json" <<JSON
{"temporal": {"host": "$TEMPORAL_HOST", "port": $TEMPORAL_PORT},
 "controller": {"watchNamespaces": ["$ns"]},
 "worker": {"replicas": 1, "metadataStore": {"backend": "embedded", "embedded": {"persistence": {"enabled": false}}}}}
JSON
started=$(date +%s.%N)
python3 scripts/chart.py install bench "$ns" "$stack/values.json" >/dev/null
kubectl wait -n "$ns" --for=condition=Available deployment --all --timeout=300s >/dev/null
available=$(python3 -c "print(round($(date +%s.%N) - $started, 1))")

step "running $jobs jobs through the pods"
for i in $(seq 1 "$jobs"); do
  printf 'apiVersion: imagejob.dev/v1alpha1\nkind: ImageJob\nmetadata: {name: bench-%s}\nspec: {url: "https://example.com/%s.jpg"}\n---\n' "$i" "$i"
done | kubectl apply -n "$ns" -f - >/dev/null
kubectl wait -n "$ns" --for=condition=Succeeded imagejob --all --timeout=300s >/dev/null

# RSS of each pod's main process, read from /proc through containerd's task list.
rss_json=$(python3 - "$stack/containerd/containerd.sock" "$ns" <<'PY'
import json, subprocess, sys
sock, ns = sys.argv[1], sys.argv[2]
pods = json.loads(subprocess.run(["kubectl", "get", "pods", "-n", ns, "-o", "json"],
                                 check=True, capture_output=True, text=True).stdout)["items"]
tasks = {}
for line in subprocess.run(["ctr", "-n", "k8s.io", "--address", sock, "tasks", "ls"],
                           check=True, capture_output=True, text=True).stdout.splitlines()[1:]:
    cid, pid, status = line.split()[:3]
    tasks[cid] = pid
rss = {}
for pod in pods:
    role = pod["metadata"]["labels"].get("app.kubernetes.io/component", "?")
    for c in pod["status"].get("containerStatuses", []):
        cid = c.get("containerID", "").split("//")[-1]
        pid = tasks.get(cid)
        if not pid:
            continue
        with open(f"/proc/{pid}/status") as f:
            kib = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        rss.setdefault(role, []).append(round(kib / 1024, 1))
print(json.dumps(rss))
PY
)

mkdir -p bench-results
out="bench-results/cluster-$(date -u +%Y%m%dT%H%M%SZ).json"
python3 - "$node_ready" "$available" "$rss_json" "$jobs" "$out" <<'PY'
import json, os, subprocess, sys
node_ready, available, rss, jobs, out = float(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
figures = {"commit": commit, "cores": os.cpu_count(), "jobs_before_rss": jobs,
           "stack_up_to_node_ready_s": node_ready, "helm_install_to_available_s": available,
           "pod_rss_mib": rss}
print("| figure | value |\n|---|---|")
print(f"| stack up --cluster -> node Ready | {node_ready} s |")
print(f"| helm install -> all Deployments Available | {available} s |")
for role, values in sorted(rss.items()):
    print(f"| {role} pod RSS after {jobs} jobs | {', '.join(f'{v} MiB' for v in values)} |")
json.dump(figures, open(out, "w"), indent=2)
print(f"\nJSON: {out}")
PY
