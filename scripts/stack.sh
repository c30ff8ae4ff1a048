#!/usr/bin/env bash
# Starts and stops a real local stack on loopback, on free ports, in a folder of its own:
#   etcd + kube-apiserver (1.20, built by install-deps.sh) and the Temporal dev server (with UI).
#
#   scripts/stack.sh up DIR [--only kube|temporal]   start; writes DIR/env and DIR/kubeconfig
#   scripts/stack.sh down DIR                        stop everything started in DIR
#   scripts/stack.sh stop-temporal DIR               stop only Temporal (its data is kept)
#   scripts/stack.sh start-temporal DIR              start Temporal again on the same ports
#
# DIR/env exports KUBECONFIG, TEMPORAL_HOST, TEMPORAL_PORT, TEMPORAL_UI_URL, IJ_KUBE_URL,
# IJ_ADMIN_TOKEN and IJ_USER_TOKEN (a second user without system:masters, for RBAC tests).
# Several stacks can run side by side, one per DIR.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/common.sh
source "$here/common.sh"
root="$IJ_ROOT"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_for NAME SECONDS CMD...: polls CMD until it succeeds, or fails with NAME's log.
wait_for() {
  local name=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "--- last lines of $dir/$name.log:" >&2; tail -n 30 "$dir/$name.log" >&2 || true
      fail "$name did not become ready within ${secs}s"
    fi
    sleep 0.2
  done
}

start_bg() { # NAME CMD...: runs CMD in its own session, logs to DIR/NAME.log, pid to DIR/NAME.pid
  local name=$1; shift
  setsid "$@" >"$dir/$name.log" 2>&1 < /dev/null &
  echo $! >"$dir/$name.pid"
}

stop_one() {
  local pidfile="$dir/$1.pid"
  [ -f "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

up_kube() {
  local apiserver="$IJ_CACHE/kube-apiserver"
  [ -x "$apiserver" ] || fail "kube-apiserver is not built: run scripts/install-deps.sh"
  local etcd_port etcd_peer kube_port
  etcd_port=$(free_port); etcd_peer=$(free_port); kube_port=$(free_port)
  mkdir -p "$dir/etcd" "$dir/certs"
  step "etcd on 127.0.0.1:$etcd_port"
  start_bg etcd etcd --data-dir "$dir/etcd" --name ij \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "ij=http://127.0.0.1:$etcd_peer" --log-level warn
  wait_for etcd 30 curl -fsS "http://127.0.0.1:$etcd_port/health"

  openssl genrsa -out "$dir/certs/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/certs/sa.key" -pubout -out "$dir/certs/sa.pub" 2>/dev/null
  local admin_token user_token
  admin_token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  user_token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  printf '%s,admin,admin-uid,system:masters\n%s,ij-user,ij-user-uid,ij-users\n' \
    "$admin_token" "$user_token" >"$dir/certs/tokens.csv"
  step "kube-apiserver on https://127.0.0.1:$kube_port"
  start_bg kube-apiserver "$apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$kube_port" \
    --cert-dir "$dir/certs" --token-auth-file "$dir/certs/tokens.csv" --authorization-mode RBAC \
    --service-cluster-ip-range 10.0.0.0/24 --service-account-issuer "https://127.0.0.1:$kube_port" \
    --service-account-key-file "$dir/certs/sa.pub" --service-account-signing-key-file "$dir/certs/sa.key" \
    --disable-admission-plugins ServiceAccount --allow-privileged=true
  wait_for kube-apiserver 90 curl -fsSk -H "Authorization: Bearer $admin_token" "https://127.0.0.1:$kube_port/readyz"

  cat >"$dir/kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$kube_port
    certificate-authority: $dir/certs/apiserver.crt
users:
- name: admin
  user:
    token: $admin_token
contexts:
- name: local
  context: {cluster: local, user: admin, namespace: default}
current-context: local
KCFG
  {
    echo "export KUBECONFIG=$dir/kubeconfig"
    echo "export IJ_KUBE_URL=https://127.0.0.1:$kube_port"
    echo "export IJ_ADMIN_TOKEN=$admin_token"
    echo "export IJ_USER_TOKEN=$user_token"
  } >>"$dir/env"
  step "installing the ImageJob CRD"
  KUBECONFIG="$dir/kubeconfig" kubectl apply --server-side -f "$root/crds/imagejob.yaml" >/dev/null 2>&1 \
    || { sleep 1; KUBECONFIG="$dir/kubeconfig" kubectl apply --server-side -f "$root/crds/imagejob.yaml" >/dev/null; }
  KUBECONFIG="$dir/kubeconfig" kubectl wait --for condition=established --timeout=60s \
    crd/imagejobs.imagejob.dev >/dev/null 2>&1
}

start_temporal() {
  # shellcheck disable=SC1091
  source "$dir/temporal.ports"
  command -v temporal >/dev/null || fail "temporal CLI missing: run scripts/install-deps.sh"
  start_bg temporal temporal server start-dev --ip 127.0.0.1 --port "$TEMPORAL_PORT" \
    --ui-port "$TEMPORAL_UI_PORT" --http-port "$TEMPORAL_HTTP_PORT" --metrics-port "$TEMPORAL_METRICS_PORT" \
    --db-filename "$dir/temporal.db" --log-level warn --ui-disable-news-fetch
  wait_for temporal 60 temporal operator cluster health --address "127.0.0.1:$TEMPORAL_PORT"
}

up_temporal() {
  {
    echo "TEMPORAL_PORT=$(free_port)"
    echo "TEMPORAL_UI_PORT=$(free_port)"
    echo "TEMPORAL_HTTP_PORT=$(free_port)"
    echo "TEMPORAL_METRICS_PORT=$(free_port)"
  } >"$dir/temporal.ports"
  start_temporal
  # shellcheck disable=SC1091
  source "$dir/temporal.ports"
  step "Temporal on 127.0.0.1:$TEMPORAL_PORT, UI on http://127.0.0.1:$TEMPORAL_UI_PORT"
  {
    echo "export TEMPORAL_HOST=127.0.0.1"
    echo "export TEMPORAL_PORT=$TEMPORAL_PORT"
    echo "export TEMPORAL_UI_URL=http://127.0.0.1:$TEMPORAL_UI_PORT"
  } >>"$dir/env"
}

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || fail "usage: $0 up|down|stop-temporal|start-temporal DIR [--only kube|temporal]"
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
case "$cmd" in
  up)
    only=${4:-}
    [ "${3:-}" = "--only" ] || only=""
    : >"$dir/env"
    trap 'echo "stack start failed; stopping what started" >&2; "$0" down "$dir"' ERR
    [ "$only" = temporal ] || up_kube
    [ "$only" = kube ] || up_temporal
    trap - ERR
    echo "export IJ_STACK_DIR=$dir" >>"$dir/env"
    step "stack up: source $dir/env"
    ;;
  down)
    for name in temporal kube-apiserver etcd; do stop_one "$name"; done
    ;;
  stop-temporal) stop_one temporal ;;
  start-temporal) start_temporal ;;
  *) fail "unknown command $cmd" ;;
esac
