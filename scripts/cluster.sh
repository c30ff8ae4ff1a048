# A real single-node cluster for `scripts/stack.sh up DIR --cluster` (sourced by stack.sh, which
# defines $dir, start_bg, stop_one, wait_for and free_port).
#
# Beside etcd + kube-apiserver it runs kube-controller-manager, kube-scheduler, containerd (with
# runc and the bridge CNI), kubelet and kube-proxy (iptables), all built or installed by
# install-deps.sh, all inside DIR. Networking stays on this machine:
#   - pods live on a bridge of their own, 10.88.N.0/24, whose host side (10.88.N.1) is where the
#     apiserver, Temporal and the kubelet listen; Services are 10.89.N.0/24;
#   - the Service range is routed onto the pod bridge, so a ClusterIP that kube-proxy does not
#     rewrite dies on the bridge (nobody answers ARP for it) instead of leaving by the default
#     route (a blackhole route would also refuse the host's own connections before kube-proxy's
#     OUTPUT rules rewrite them);
#   - forwarding from the pod subnet to anywhere but the pod subnet is dropped, and pods resolve
#     names through a nameserver that does not exist (there is no cluster DNS: use addresses).
# One cluster stack at a time (kube-proxy owns the host's KUBE-* iptables chains).

cluster_ids() { # sets N, BRIDGE, POD_NET, SVC_NET, HOST_IP from DIR/cluster.env or a free index
  if [ -f "$dir/cluster.env" ]; then
    # shellcheck disable=SC1091
    source "$dir/cluster.env"
    return
  fi
  local n
  for n in $(seq 0 250); do
    ip link show "ijbr$n" >/dev/null 2>&1 || { N=$n; break; }
  done
  [ -n "${N:-}" ] || fail "no free bridge index"
  BRIDGE="ijbr$N" POD_NET="10.88.$N.0/24" SVC_NET="10.89.$N.0/24" HOST_IP="10.88.$N.1"
  printf 'N=%s\nBRIDGE=%s\nPOD_NET=%s\nSVC_NET=%s\nHOST_IP=%s\n' \
    "$N" "$BRIDGE" "$POD_NET" "$SVC_NET" "$HOST_IP" >"$dir/cluster.env"
}

cluster_network_up() {
  step "pod bridge $BRIDGE ($POD_NET), Services $SVC_NET (routed onto the bridge only)"
  ip link add "$BRIDGE" type bridge
  ip addr add "$HOST_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  ip route add "$SVC_NET" dev "$BRIDGE"
  iptables -I FORWARD -s "$POD_NET" ! -d "$POD_NET" -j DROP
  mkdir -p "$dir/cni"
  cat >"$dir/cni/10-ij.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "ij-$N",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$dir/cni-ipam",
              "ranges": [[{"subnet": "$POD_NET", "gateway": "$HOST_IP"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CNI
  # Pods fall back to this resolv.conf: a nameserver on the pod's own loopback, where nothing
  # answers, so no lookup ever leaves the pod.
  echo "nameserver 127.0.0.53" >"$dir/resolv.conf"
}

cluster_network_down() {
  [ -f "$dir/cluster.env" ] || return 0
  cluster_ids
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    ip -n "$ns" -4 addr 2>/dev/null | grep -q "inet 10\.88\.$N\." && ip netns delete "$ns" || true
  done
  ip route del "$SVC_NET" 2>/dev/null || true
  ip link delete "$BRIDGE" 2>/dev/null || true
  while iptables -D FORWARD -s "$POD_NET" ! -d "$POD_NET" -j DROP 2>/dev/null; do :; done
}

containerd_up() {
  local c="$dir/containerd"
  mkdir -p "$c"
  cat >"$c/config.toml" <<TOML
version = 2
root = "$c/root"
state = "$c/state"
[grpc]
  address = "$c/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$IJ_PAUSE_IMAGE"
  # Required here: a negative oom_score_adj cannot be written, and runc fails every sandbox.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
TOML
  step "containerd on $c/containerd.sock"
  start_bg containerd containerd --config "$c/config.toml" --log-level warn
  wait_for containerd 30 ctr --address "$c/containerd.sock" version
}

containerd_down() {
  local sock="$dir/containerd/containerd.sock" id
  if [ -S "$sock" ]; then
    for id in $(ctr -n k8s.io --address "$sock" tasks ls -q 2>/dev/null); do
      ctr -n k8s.io --address "$sock" tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    for id in $(ctr -n k8s.io --address "$sock" tasks ls -q 2>/dev/null); do
      for _ in $(seq 1 20); do
        ctr -n k8s.io --address "$sock" tasks delete "$id" >/dev/null 2>&1 && break
        sleep 0.1
      done
    done
  fi
  stop_one containerd
  pkill -KILL -f "containerd-shim-runc-v2 -namespace k8s.io -address $sock" 2>/dev/null || true
}

# Control plane components share the admin kubeconfig (a test cluster: one identity).
control_plane_up() {
  local sa_key="$dir/certs/sa.key" ca="$dir/certs/ca.crt"
  step "kube-controller-manager and kube-scheduler"
  start_bg kube-controller-manager "$IJ_CACHE/kube-controller-manager" \
    --kubeconfig "$dir/kubeconfig" --leader-elect=false --port 0 \
    --bind-address 127.0.0.1 --secure-port "$(free_port)" \
    --service-account-private-key-file "$sa_key" --root-ca-file "$ca" \
    --use-service-account-credentials=false --cluster-name "ij-$N" \
    --controllers '*,bootstrapsigner,tokencleaner'
  start_bg kube-scheduler "$IJ_CACHE/kube-scheduler" \
    --kubeconfig "$dir/kubeconfig" --leader-elect=false --port 0 \
    --bind-address 127.0.0.1 --secure-port "$(free_port)"
}

kubelet_up() {
  local k="$dir/kubelet"
  mkdir -p "$k/root" "$k/certs"
  cat >"$k/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $HOST_IP
port: $(free_port)
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $(free_port)
cgroupDriver: cgroupfs
failSwapOn: false
# The apiserver reaches the kubelet (logs, exec, port-forward) with no client certificate.
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
resolvConf: $dir/resolv.conf
clusterDomain: cluster.local
serializeImagePulls: false
# The node's disk is the host's, shared with everything else on it: its fill level says nothing
# about this node. A disk threshold that is met taints the node (no pod schedules) and makes the
# kubelet delete unused images, the project's own among them (pods use imagePullPolicy: Never),
# so the disk signals are off ("0%" disables a threshold) and image GC with them.
evictionHard: {memory.available: 100Mi, nodefs.available: "0%", imagefs.available: "0%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
YAML
  step "kubelet (node ij-node-$N at $HOST_IP)"
  start_bg kubelet "$IJ_CACHE/kubelet" --config "$k/config.yaml" --kubeconfig "$dir/kubeconfig" \
    --container-runtime remote --container-runtime-endpoint "unix://$dir/containerd/containerd.sock" \
    --root-dir "$k/root" --cert-dir "$k/certs" --hostname-override "ij-node-$N" \
    --node-ip "$HOST_IP" --pod-infra-container-image "$IJ_PAUSE_IMAGE" --v 1
}

kube_proxy_up() {
  cat >"$dir/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $dir/kubeconfig}
mode: iptables
clusterCIDR: $POD_NET
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$(free_port)
metricsBindAddress: 127.0.0.1:$(free_port)
hostnameOverride: ij-node-$N
conntrack: {maxPerCore: 0}
YAML
  step "kube-proxy (iptables)"
  start_bg kube-proxy "$IJ_CACHE/kube-proxy" --config "$dir/kube-proxy.yaml"
}

# Ready and without taints: pods can be scheduled onto it (the not-ready taint goes a moment
# after Ready; a pressure taint would stay and leave every pod Pending).
node_schedulable() {
  KUBECONFIG="$dir/kubeconfig" kubectl get node "ij-node-$N" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.spec.taints}' 2>/dev/null |
    grep -qx 'True '
}

default_sa_token() {
  KUBECONFIG="$dir/kubeconfig" kubectl get serviceaccount default -o jsonpath='{.secrets[0].name}' \
    2>/dev/null | grep -q .
}

# Starts the node side once the apiserver is up; loads the project's images.
up_cluster_node() {
  local started=$SECONDS
  control_plane_up
  containerd_up
  step "loading the pause and imagejob-operator images"
  "$IJ_ROOT/scripts/image.sh" --load "$dir" >/dev/null
  kubelet_up
  kube_proxy_up
  wait_for kubelet 120 node_schedulable
  wait_for kube-controller-manager 60 default_sa_token
  local took=$((SECONDS - started))
  echo "IJ_CLUSTER_NODE_READY_SECS=$took" >>"$dir/cluster.env"
  step "node ij-node-$N Ready and untainted ${took}s after the control plane"
  {
    echo "export IJ_CLUSTER=1"
    echo "export IJ_NODE_NAME=ij-node-$N"
    echo "export IJ_HOST_IP=$HOST_IP"
    echo "export IJ_IMAGE=$("$IJ_ROOT/scripts/image.sh" --tag)"
  } >>"$dir/env"
}

down_cluster_node() {
  [ -f "$dir/cluster.env" ] || return 0
  stop_one kubelet
  containerd_down
  if [ -f "$dir/kube-proxy.pid" ]; then
    stop_one kube-proxy
    "$IJ_CACHE/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  stop_one kube-scheduler
  stop_one kube-controller-manager
  # Secrets and emptyDirs are mounts under the kubelet's root; the sandboxes' netns too.
  grep -o " $dir/[^ ]*" /proc/mounts 2>/dev/null | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  cluster_network_down
}
