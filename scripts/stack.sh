#!/usr/bin/env bash
# Starts and stops a real local stack on loopback, on free ports, in a folder of its own:
#   etcd + kube-apiserver (1.20, built by install-deps.sh) and the Temporal dev server (with UI).
#
#   scripts/stack.sh up DIR [--only kube|temporal]   start; writes DIR/env and DIR/kubeconfig
#   scripts/stack.sh up DIR --no-fairness             Temporal dispatching without fairness keys
#                                                     (its default; the fairness benchmark's "off")
#   scripts/stack.sh up DIR --seed-ports              Temporal on the seed's ports (gRPC 7233, UI
#                                                     8233) when free (dev.sh); else free ports
#   scripts/stack.sh up DIR --cluster                 the same plus a real node: controller-manager,
#                                                     scheduler, containerd, kubelet, kube-proxy,
#                                                     the project's image loaded (scripts/cluster.sh)
#   scripts/stack.sh down DIR                        stop everything started in DIR
#   scripts/stack.sh purge DIR                       down, then remove DIR (its data and logs)
#                                                     unless something is still mounted under it
#   scripts/stack.sh restart-kube-apiserver DIR      stop the kube-apiserver and start it again
#                                                     (etcd keeps the data; its caches start anew)
#   scripts/stack.sh stop-temporal DIR               stop only Temporal (its data is kept)
#   scripts/stack.sh start-temporal DIR              start Temporal again on the same ports
#
# DIR/env exports KUBECONFIG, TEMPORAL_HOST, TEMPORAL_PORT, TEMPORAL_UI_URL, IJ_KUBE_URL,
# IJ_ADMIN_TOKEN and IJ_USER_TOKEN (a second user without system:masters, for RBAC tests); a
# cluster stack adds IJ_CLUSTER, IJ_NODE_NAME, IJ_HOST_IP and IJ_IMAGE.
# Several stacks can run side by side, one per DIR (and at most one of them with --cluster).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/common.sh
source "$here/common.sh"
# shellcheck source=scripts/cluster.sh
source "$here/cluster.sh"
root="$IJ_ROOT"
# Where the stack's servers listen: loopback, or the pod bridge's host address in a cluster.
bind_ip=127.0.0.1

# port_or_free WANTED WHAT: with --seed-ports, WANTED when free; otherwise a free port.
port_or_free() {
  if [ -n "$seed_ports" ]; then pick_port "$1" "$2" "$bind_ip"; else free_port; fi
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

# A CA of the stack's own and the apiserver's serving certificate, valid for every address a
# client uses (loopback, the pod bridge, the `kubernetes` Service), plus the ServiceAccount keys.
make_certs() {
  local c="$dir/certs"
  openssl genrsa -out "$c/sa.key" 2048 2>/dev/null
  openssl rsa -in "$c/sa.key" -pubout -out "$c/sa.pub" 2>/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=imagejob-stack-ca" \
    -keyout "$c/ca.key" -out "$c/ca.crt" 2>/dev/null
  local sans="DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  sans="$sans,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$bind_ip"
  [ -z "${SVC_NET:-}" ] || sans="$sans,IP:${SVC_NET%.0/24}.1"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout "$c/apiserver.key" \
    -out "$c/apiserver.csr" 2>/dev/null
  openssl x509 -req -in "$c/apiserver.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial \
    -days 30 -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth' "$sans") \
    -out "$c/apiserver.crt" 2>/dev/null
}

# Starts the kube-apiserver recorded by up_kube and waits until it is ready.
start_kube_apiserver() {
  local cmd=() url token
  mapfile -d '' cmd <"$dir/kube-apiserver.cmd"
  { read -r url; read -r token; } <"$dir/kube-apiserver.endpoint"
  start_bg kube-apiserver "${cmd[@]}"
  wait_for kube-apiserver 90 curl -fsS --cacert "$dir/certs/ca.crt" -H "Authorization: Bearer $token" "$url/readyz"
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

  make_certs
  local admin_token user_token
  admin_token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  user_token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  printf '%s,admin,admin-uid,system:masters\n%s,ij-user,ij-user-uid,ij-users\n' \
    "$admin_token" "$user_token" >"$dir/certs/tokens.csv"
  # Without a node nothing mounts ServiceAccount tokens, so that admission is off; a cluster
  # issues and mounts them for real.
  local admission=(--disable-admission-plugins ServiceAccount)
  [ -z "$cluster" ] || admission=(--kubelet-preferred-address-types InternalIP)
  step "kube-apiserver on https://$bind_ip:$kube_port"
  # Its command line is kept, so restart-kube-apiserver starts the same one again.
  printf '%s\0' "$apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$bind_ip" --advertise-address "$bind_ip" --secure-port "$kube_port" \
    --tls-cert-file "$dir/certs/apiserver.crt" --tls-private-key-file "$dir/certs/apiserver.key" \
    --client-ca-file "$dir/certs/ca.crt" \
    --token-auth-file "$dir/certs/tokens.csv" --authorization-mode RBAC \
    --service-cluster-ip-range "${SVC_NET:-10.0.0.0/24}" --service-account-issuer "https://$bind_ip:$kube_port" \
    --service-account-key-file "$dir/certs/sa.pub" --service-account-signing-key-file "$dir/certs/sa.key" \
    --allow-privileged=true "${admission[@]}" >"$dir/kube-apiserver.cmd"
  printf '%s\n' "https://$bind_ip:$kube_port" "$admin_token" >"$dir/kube-apiserver.endpoint"
  start_kube_apiserver

  cat >"$dir/kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://$bind_ip:$kube_port
    certificate-authority: $dir/certs/ca.crt
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
    echo "export IJ_KUBE_URL=https://$bind_ip:$kube_port"
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
  # Always on loopback: the dev server bound to another address dials some of its own internal
  # services on 127.0.0.1 and fails (worker heartbeats, describes). A cluster's pods reach it
  # through a relay on the bridge address instead.
  # Fairness on (task queues dispatch by fairness key, the ImageJob's namespace): off by default
  # in a self-hosted server. Measured on this dev server (1.32): 300 workflows of key A queued,
  # then 10 of key B; B's 10 were done after 3.6 s with it, 12.1 s (behind all of A) without.
  # ImageJobImageId: the search attribute through which a workflow shows its similarity search
  # step to the controller's list (a namespace admin registers it in production).
  start_bg temporal temporal server start-dev --ip 127.0.0.1 --port "$TEMPORAL_PORT" \
    --ui-port "$TEMPORAL_UI_PORT" --http-port "$TEMPORAL_HTTP_PORT" --metrics-port "$TEMPORAL_METRICS_PORT" \
    --db-filename "$dir/temporal.db" --log-level warn --ui-disable-news-fetch \
    --search-attribute ImageJobImageId=Keyword \
    --dynamic-config-value "matching.enableFairness=${TEMPORAL_FAIRNESS:-true}"
  wait_for temporal 60 temporal operator cluster health --address "127.0.0.1:$TEMPORAL_PORT"
  if [ "$bind_ip" != 127.0.0.1 ]; then
    local port
    for port in "$TEMPORAL_PORT" "$TEMPORAL_UI_PORT"; do
      start_bg "temporal-relay-$port" socat "TCP-LISTEN:$port,bind=$bind_ip,fork,reuseaddr" "TCP:127.0.0.1:$port"
    done
    wait_for "temporal-relay-$TEMPORAL_PORT" 30 temporal operator cluster health --address "$bind_ip:$TEMPORAL_PORT"
  fi
}

up_temporal() {
  {
    echo "TEMPORAL_PORT=$(port_or_free 7233 "Temporal gRPC")"
    echo "TEMPORAL_UI_PORT=$(port_or_free 8233 "Temporal UI")"
    echo "TEMPORAL_HTTP_PORT=$(free_port)"
    echo "TEMPORAL_METRICS_PORT=$(free_port)"
    echo "TEMPORAL_FAIRNESS=$fairness"
  } >"$dir/temporal.ports"
  start_temporal
  # shellcheck disable=SC1091
  source "$dir/temporal.ports"
  step "Temporal on $bind_ip:$TEMPORAL_PORT, UI on http://$bind_ip:$TEMPORAL_UI_PORT"
  {
    echo "export TEMPORAL_HOST=$bind_ip"
    echo "export TEMPORAL_PORT=$TEMPORAL_PORT"
    echo "export TEMPORAL_UI_URL=http://$bind_ip:$TEMPORAL_UI_PORT"
  } >>"$dir/env"
}

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || fail "usage: $0 up|down|restart-kube-apiserver|stop-temporal|start-temporal DIR [--only kube|temporal] [--cluster] [--no-fairness]"
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
shift 2
only="" cluster="" seed_ports="" fairness=true
while [ $# -gt 0 ]; do
  case "$1" in
    --seed-ports) seed_ports=1; shift ;;
    --only) only=${2:?--only needs kube or temporal}; shift 2 ;;
    --cluster) cluster=1; shift ;;
    --no-fairness) fairness=false; shift ;;
    *) fail "unknown option $1" ;;
  esac
done
# A cluster's servers listen on the pod bridge (recorded in DIR/cluster.env).
if [ -f "$dir/cluster.env" ] && [ "$cmd" != up ]; then cluster_ids; bind_ip=$HOST_IP; fi
case "$cmd" in
  up)
    [ -z "$cluster" ] || [ -z "$only" ] || fail "--cluster starts everything: drop --only"
    : >"$dir/env"
    rm -f "$dir/cluster.env"
    trap 'echo "stack start failed; stopping what started" >&2; "$0" down "$dir"' ERR
    if [ -n "$cluster" ]; then
      # A cluster never starts from an earlier run's etcd: its nodes, endpoints and pods are gone.
      rm -rf "$dir/etcd"
      cluster_ids; cluster_network_up; bind_ip=$HOST_IP
    fi
    [ "$only" = temporal ] || up_kube
    [ "$only" = kube ] || up_temporal
    [ -z "$cluster" ] || up_cluster_node
    trap - ERR
    echo "export IJ_STACK_DIR=$dir" >>"$dir/env"
    step "stack up: source $dir/env"
    ;;
  down)
    down_cluster_node
    for relay in "$dir"/temporal-relay-*.pid; do
      [ -e "$relay" ] && stop_one "$(basename "$relay" .pid)"
    done
    for name in temporal kube-apiserver etcd; do stop_one "$name"; done
    ;;
  purge)
    "$IJ_ROOT/scripts/stack.sh" down "$dir" || echo "stack.sh: stopping $dir failed" >&2
    if findmnt -rn -o TARGET | grep -q "^$dir/"; then
      echo "stack.sh: $dir still has mounts under it; left in place" >&2
    else
      rm -rf "$dir"
    fi
    ;;
  restart-kube-apiserver) stop_one kube-apiserver; start_kube_apiserver ;;
  stop-temporal) stop_one temporal ;;
  start-temporal) start_temporal ;;
  *) fail "unknown command $cmd" ;;
esac
