# The real node (PREVIEWD_TESTENV_REAL_NODE=1): containerd + runc, kubelet, kube-proxy,
# kube-router (NetworkPolicy only) and CoreDNS, inside the network namespace "previewd-node".
# Sourced by testenv/up and testenv/down after lib.sh; see testenv/README.md ("The real node").
# shellcheck shell=bash

NODE_NAME=previewd-node
NODE_NETNS=previewd-node
NODE_NETNS_PATH=/run/netns/$NODE_NETNS
NODE_HOST_IF=pvd-host
NODE_IF=pvd-node
NODE_HOST_IP=10.245.255.1   # the host's end of the veth pair: the API server forwarder
NODE_IP=10.245.255.2        # the node's InternalIP
NODE_POD_CIDR=10.245.0.0/24
NODE_SERVICE_CIDR=10.96.0.0/16
NODE_DNS_IP=10.96.0.10
# Ranges that must never leave the machine: the host holds `unreachable` routes for them, so a
# packet that misses the veth routes fails locally. 10.244.0.0/15 also covers kwok's fake pod IPs.
NODE_GUARDED_RANGES=(10.244.0.0/15 "$NODE_SERVICE_CIDR")
NODE_TAINT_KEY=previewd.io/real-node
# One real node per machine: the routes, the veth and the netns name are machine-wide.
NODE_LOCK=/run/previewd-node.lock
NODE_OWNER=/run/previewd-node.owner
# Stop order: the metadata stand-in, the policy enforcer and the proxy, the kubelet, the
# runtime, the forwarder.
NODE_COMPONENTS=(app kube-router kube-proxy kubelet containerd socat)
NODE_REQUIRED_TOOLS=(containerd containerd-shim-runc-v2 runc ctr iptables ipset socat nsenter unshare
  findmnt ip buildah gcc)

node_dir() { echo "$STATE/node"; }
in_netns() { nsenter --net="$NODE_NETNS_PATH" "$@"; }

# The state directory that owns the machine's real node (empty: none).
node_owner() { [[ -f "$NODE_OWNER" ]] && cat "$NODE_OWNER" || true; }

# Any node component of state directory $1 still running?
node_running_for() {
  local state="$1" c pid argv0
  for c in "${NODE_COMPONENTS[@]}"; do
    [[ -f "$state/pids/$c.pid" ]] || continue
    pid="$(<"$state/pids/$c.pid")"
    [[ "$pid" =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || continue
    argv0="$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | head -n1)"
    [[ "$(basename -- "$argv0")" == "$c" ]] && return 0
  done
  return 1
}

node_healthy() {
  local c
  [[ -e "$NODE_NETNS_PATH" && "$(node_owner)" == "$STATE" ]] || return 1
  for c in "${NODE_COMPONENTS[@]}"; do [[ -n "$(component_pid "$c")" ]] || return 1; done
  [[ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

# Mount points at or under directory $1.
node_mounts() { findmnt -rn -o TARGET | awk -v d="$1" '$0 == d || index($0, d "/") == 1'; }

# Kill every process left in the node's cgroups (containers, after a crash of containerd) and
# every containerd shim that serves this state's containerd.
node_kill_leftovers() {
  local dir="$1" pids p i
  for ((i = 0; i < 3; i++)); do
    pids="$(cat /sys/fs/cgroup/*/kubepods/cgroup.procs /sys/fs/cgroup/*/kubepods/*/cgroup.procs \
      /sys/fs/cgroup/*/kubepods/*/*/cgroup.procs /sys/fs/cgroup/*/kubepods/*/*/*/cgroup.procs 2>/dev/null | sort -u || true)"
    for p in /proc/[0-9]*; do
      if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q -- "-address $dir/containerd.sock"; then
        pids+=$'\n'"${p#/proc/}"
      fi
    done
    pids="$(grep -E '^[0-9]+$' <<<"$pids" || true)"
    [[ -n "$pids" ]] || return 0
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.5
  done
}

# Stop the node of state directory $1 (default: this one) and remove everything it made:
# processes, mounts, and when that state owns the machine's node (or nobody does) the netns
# (veth, bridge, iptables rules, ipsets), the host's routes and the kubepods cgroups; then its
# directory. Safe to run twice and after a crash.
node_cleanup() {
  local state="${1:-$STATE}" dir c i m
  dir="$state/node"
  local saved_state="$STATE"
  STATE="$state"
  for c in "${NODE_COMPONENTS[@]}"; do
    [[ "$c" == containerd ]] && node_stop_containers "$dir"
    stop_component "$c"
  done
  STATE="$saved_state"
  # The machine-wide parts belong to the owner: another state directory's live node is left
  # alone.
  local owner machine_wide=0
  owner="$(node_owner)"
  [[ -z "$owner" || "$owner" == "$state" ]] && machine_wide=1
  ((machine_wide == 0)) || node_kill_leftovers "$dir"
  # Mounts under the node's directory, deepest first (kubelet's volumes and its rshared bind of
  # its own root, containerd's rootfs overlays, sandbox shm, netns files).
  for ((i = 0; i < 5; i++)); do
    m="$(node_mounts "$dir" | sort -r)"
    [[ -n "$m" ]] || break
    while IFS= read -r t; do umount -l "$t" 2>/dev/null || true; done <<<"$m"
  done
  if ((machine_wide == 1)); then
    if [[ -e "$NODE_NETNS_PATH" ]]; then ip netns del "$NODE_NETNS" 2>/dev/null || true; fi
    ip link del "$NODE_HOST_IF" 2>/dev/null || true
    for c in "$NODE_POD_CIDR" "$NODE_SERVICE_CIDR"; do
      ip route del "$c" via "$NODE_IP" 2>/dev/null || true
    done
    for c in "${NODE_GUARDED_RANGES[@]}"; do
      ip route del unreachable "$c" metric 4000 2>/dev/null || true
    done
    find /sys/fs/cgroup/*/kubepods -depth -type d -exec rmdir {} \; 2>/dev/null || true
  fi
  if [[ -d "$dir" ]] && [[ -z "$(node_mounts "$dir")" ]]; then
    rm -rf --one-file-system "$dir"
  elif [[ -d "$dir" ]]; then
    log "WARNING: mounts left under $dir; not removing it"
  fi
  rm -f "$state/node.env"
  if [[ "$(node_owner)" == "$state" ]]; then rm -f "$NODE_OWNER"; fi
}

# Kill and delete every container of the node's containerd while it still answers.
node_stop_containers() {
  local dir="$1" ctr_=(ctr --address "$1/containerd.sock" -n k8s.io --timeout 10s) id
  [[ -S "$dir/containerd.sock" ]] || return 0
  "${ctr_[@]}" version >/dev/null 2>&1 || return 0
  for id in $("${ctr_[@]}" tasks ls -q 2>/dev/null); do
    "${ctr_[@]}" tasks kill -s KILL "$id" >/dev/null 2>&1 || true
  done
  sleep 0.5
  for id in $("${ctr_[@]}" tasks ls -q 2>/dev/null); do
    "${ctr_[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true
  done
  for id in $("${ctr_[@]}" containers ls -q 2>/dev/null); do
    "${ctr_[@]}" containers rm "$id" >/dev/null 2>&1 || true
  done
}

# Take the machine's real node for this state directory, cleaning up after an owner that died.
node_claim() {
  local owner
  exec 7>"$NODE_LOCK"
  flock -w "${PREVIEWD_TESTENV_LOCK_TIMEOUT:-900}" 7 || node_fail "another testenv holds $NODE_LOCK"
  owner="$(node_owner)"
  if [[ -n "$owner" && "$owner" != "$STATE" ]]; then
    if node_running_for "$owner"; then
      node_fail "this machine's real node belongs to the testenv in $owner; stop it first: PREVIEWD_TESTENV_STATE=$owner testenv/down"
    fi
    log "cleaning up the real node that $owner left behind"
    node_cleanup "$owner"
  fi
  node_cleanup "$STATE"
  echo "$STATE" >"$NODE_OWNER"
}

node_fail() {
  echo "testenv/up: the real node failed: $*" >&2
  [[ -d "$(node_dir)" ]] && echo "testenv/up: logs: $STATE/logs/{containerd,kubelet,kube-proxy,kube-router,socat}.log" >&2
  node_cleanup "$STATE" >/dev/null 2>&1 || true
  exit 1
}

# What the machine must offer; each missing piece is named.
node_preflight() {
  local t missing=() c
  [[ "$(id -u)" == 0 ]] || node_fail "needs root (network namespaces, mounts, cgroups)"
  for t in "${NODE_REQUIRED_TOOLS[@]}"; do command -v "$t" >/dev/null || missing+=("$t"); done
  for t in bridge host-local loopback portmap; do [[ -x /usr/lib/cni/$t ]] || missing+=("/usr/lib/cni/$t"); done
  [[ -x /bin/busybox ]] || missing+=(/bin/busybox)
  ((${#missing[@]} == 0)) || node_fail "missing: ${missing[*]} (Debian packages: containerd runc \
containernetworking-plugins iptables ipset socat busybox-static buildah gcc; .ci/run installs them)"
  for c in cpu cpuacct cpuset memory pids; do
    [[ -d /sys/fs/cgroup/$c ]] || node_fail "cgroup v1 controller $c is not mounted at /sys/fs/cgroup/$c"
  done
  [[ -r /dev/kmsg ]] || node_fail "/dev/kmsg is not readable (the kubelet's OOM watcher needs it)"
  ip netns add previewd-node-probe 2>/dev/null && ip netns del previewd-node-probe \
    || node_fail "cannot create a network namespace (ip netns add)"
}

# leaf_cert NAME SUBJECT EXTENSION: a certificate signed by the cluster's CA (gen_pki's openssl.cnf).
node_leaf() {
  local d="$PKI"
  openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/$1.key"
  openssl req -new -key "$d/$1.key" -subj "$2" -config "$d/openssl.cnf" -out "$d/$1.csr"
  openssl x509 -req -in "$d/$1.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 825 \
    -extfile "$d/openssl.cnf" -extensions "$3" -out "$d/$1.crt" 2>/dev/null
  rm -f "$d/$1.csr"; chmod 600 "$d/$1.key"
}

# node_kubeconfig FILE CERT: a kubeconfig for the node's components, through the forwarder on
# the veth (the API server's certificate names it as "kubernetes").
node_kubeconfig() {
  (umask 077; cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: previewd-testenv
  cluster:
    server: https://$NODE_HOST_IP:6443
    tls-server-name: kubernetes
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 <"$PKI/$2.crt")
    client-key-data: $(base64 -w0 <"$PKI/$2.key")
contexts:
- name: previewd-testenv
  context: {cluster: previewd-testenv, user: $2}
current-context: previewd-testenv
EOF
  )
}

node_wait() {   # node_wait COMPONENT WHAT SECONDS COMMAND...
  local name="$1" what="$2" limit="$3" deadline; shift 3
  deadline=$((SECONDS + limit))
  while ! "$@" >/dev/null 2>&1; do
    [[ -n "$(component_pid "$name")" ]] || node_fail "$name exited while waiting for $what (see $STATE/logs/$name.log)"
    ((SECONDS < deadline)) || node_fail "$name: timed out after ${limit}s waiting for $what (see $STATE/logs/$name.log)"
    sleep 0.2
  done
  log "real node: $what after $((SECONDS - NODE_T0)) s"
}

node_ready() {
  [[ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

# node_up NODE_BIN IMAGES_ENV: start the node for the running control plane ($API_PORT, $PKI).
node_up() {
  local node_bin="$1" images_env="$2" dir taints i
  dir="$(node_dir)"
  NODE_T0=$SECONDS
  node_claim
  mkdir -p "$dir"/{containerd,kubelet,kubelet-pki,cni/net.d,cni/ipam,pod-logs,volume-plugins,sysctl,runc}
  # shellcheck disable=SC1090
  source "$images_env"

  # --- certificates and kubeconfigs --------------------------------------------------------------
  grep -q '^\[kubelet_server\]' "$PKI/openssl.cnf" || cat >>"$PKI/openssl.cnf" <<EOF
[kubelet_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:$NODE_IP,DNS:$NODE_NAME
authorityKeyIdentifier = keyid
EOF
  node_leaf kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" client
  node_leaf kubelet-serving "/CN=$NODE_NAME" kubelet_server
  node_leaf kube-proxy "/CN=system:kube-proxy" client
  node_leaf kube-router "/O=system:masters/CN=kube-router" client
  for c in kubelet kube-proxy kube-router; do node_kubeconfig "$dir/$c.kubeconfig" "$c"; done

  # --- network: the netns, the veth pair, the host's routes ------------------------------------------
  for c in "${NODE_GUARDED_RANGES[@]}"; do ip route add unreachable "$c" metric 4000; done
  ip netns add "$NODE_NETNS"
  ip link add "$NODE_HOST_IF" type veth peer name "$NODE_IF" netns "$NODE_NETNS"
  ip addr add "$NODE_HOST_IP/30" dev "$NODE_HOST_IF"
  ip link set "$NODE_HOST_IF" up
  in_netns ip link set lo up
  in_netns ip addr add "$NODE_IP/30" dev "$NODE_IF"
  in_netns ip link set "$NODE_IF" up
  # No default route: from the netns only the host's end of the veth is reachable, so nothing
  # (an image pull, a pod) can send a packet towards the machine's own network.
  in_netns sysctl -qw net.ipv4.ip_forward=1
  # A stand-in for a cloud's instance-metadata server, inside the netns: something answers at
  # 169.254.169.254 from the node's pods, so a test can show a preview cannot reach it.
  in_netns ip addr add 169.254.169.254/32 dev lo
  ip route add "$NODE_POD_CIDR" via "$NODE_IP" dev "$NODE_HOST_IF"
  ip route add "$NODE_SERVICE_CIDR" via "$NODE_IP" dev "$NODE_HOST_IF"

  # --- the API server, reachable from the netns ------------------------------------------------------
  start_cmd socat "$(command -v socat)" \
    "TCP-LISTEN:6443,bind=$NODE_HOST_IP,reuseaddr,fork" "TCP:127.0.0.1:$API_PORT"

  # --- containerd ---------------------------------------------------------------------------------------
  cat >"$dir/containerd.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$IMAGE_PAUSE"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  tolerate_missing_hugetlb_controller = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$dir/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
EOF
  cat >"$dir/cni/net.d/10-previewd.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "previewd",
  "plugins": [
    { "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": { "type": "host-local", "dataDir": "$dir/cni/ipam",
                "ranges": [[{ "subnet": "$NODE_POD_CIDR", "gateway": "10.245.0.1" }]],
                "routes": [{ "dst": "0.0.0.0/0" }] } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
  # containerd, its shims and runc get a mount namespace of their own with empty /run and
  # /var/lib: the shim sockets (/run/containerd/s) and the CNI result cache (/var/lib/cni),
  # which no setting moves, stay off the machine and go with the namespace. The kubelet's
  # root directory is a shared mount, made before either namespace, so the volumes the
  # kubelet mounts there reach the containers.
  mount --bind "$dir/kubelet" "$dir/kubelet"
  mount --make-rshared "$dir/kubelet"
  # shellcheck disable=SC2016  # expanded by the inner shell
  start_cmd containerd nsenter --net="$NODE_NETNS_PATH" unshare --mount --propagation unchanged \
    sh -c 'mount -t tmpfs -o mode=0755 previewd-node-run /run &&
      mount -t tmpfs -o mode=0755 previewd-node-var-lib /var/lib && exec "$@"' _ \
    "$(command -v containerd)" --config "$dir/containerd.toml"
  local ctr_=(ctr --address "$dir/containerd.sock" -n k8s.io)
  node_wait containerd "containerd answers" 30 "${ctr_[@]}" version
  # Each image under its name and as name@digest (what pods that pin a digest ask for).
  for i in PAUSE COREDNS APP TESTRUNNER OPERATOR OPERATOR_NEXT; do
    local tar="TAR_$i" ref="IMAGE_$i"
    "${ctr_[@]}" images import --digests --base-name "${!ref%:*}" "${!tar}" \
      >"$STATE/logs/images-import.log" 2>&1 \
      || node_fail "ctr images import ${!tar} failed: $(tail -n3 "$STATE/logs/images-import.log")"
  done
  log "real node: images imported after $((SECONDS - NODE_T0)) s"

  # --- kubelet ---------------------------------------------------------------------------------------------
  taints="[]"
  ((NODES == 0)) || taints="[{key: $NODE_TAINT_KEY, value: \"true\", effect: NoSchedule}]"
  cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: true
containerRuntimeEndpoint: unix://$dir/containerd.sock
imageServiceEndpoint: unix://$dir/containerd.sock
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
registerNode: true
registerWithTaints: $taints
failSwapOn: false
oomScoreAdj: 0
protectKernelDefaults: false
resolvConf: ""
clusterDomain: cluster.local
clusterDNS: ["$NODE_DNS_IP"]
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
podLogsDir: $dir/pod-logs
volumePluginDir: $dir/volume-plugins
maxPods: 110
serializeImagePulls: false
EOF
  # The kubelet writes vm.overcommit_memory, kernel.panic and kernel.panic_on_oops unless they
  # hold the values it wants (protectKernelDefaults: true makes it exit instead). It runs in a
  # mount namespace of its own where those three files hold its values, so the machine's stay
  # as they are, and where /var/log is empty (it links every container's log into
  # /var/log/containers, a path no setting moves).
  printf '1\n' >"$dir/sysctl/overcommit_memory"
  printf '10\n' >"$dir/sysctl/panic"
  printf '1\n' >"$dir/sysctl/panic_on_oops"
  # shellcheck disable=SC2016  # expanded by the inner shell
  start_cmd kubelet nsenter --net="$NODE_NETNS_PATH" unshare --mount --propagation unchanged \
    sh -c 'mount --make-rprivate /proc &&
      mount --bind "$1/overcommit_memory" /proc/sys/vm/overcommit_memory &&
      mount --bind "$1/panic" /proc/sys/kernel/panic &&
      mount --bind "$1/panic_on_oops" /proc/sys/kernel/panic_on_oops &&
      mount -t tmpfs -o mode=0755 previewd-node-var-log /var/log &&
      shift && exec "$@"' _ "$dir/sysctl" "$BIN/kubelet" \
    --config="$dir/kubelet.yaml" --kubeconfig="$dir/kubelet.kubeconfig" --root-dir="$dir/kubelet" \
    --cert-dir="$dir/kubelet-pki" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
    --node-labels="$NODE_TAINT_KEY=true" --v=1
  node_wait kubelet "node $NODE_NAME Ready" 120 node_ready

  # --- kube-proxy, kube-router ---------------------------------------------------------------------------------
  cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $dir/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $NODE_POD_CIDR
detectLocalMode: ClusterCIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["primary"]
oomScoreAdj: 0
iptables: {localhostNodePorts: false, masqueradeAll: false}
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start_cmd kube-proxy nsenter --net="$NODE_NETNS_PATH" "$BIN/kube-proxy" --config="$dir/kube-proxy.yaml" --v=1
  node_wait kube-proxy "kube-proxy healthy" 60 in_netns curl -fsS --max-time 2 http://127.0.0.1:10256/healthz
  start_cmd kube-router nsenter --net="$NODE_NETNS_PATH" "$node_bin/kube-router" \
    --kubeconfig="$dir/kube-router.kubeconfig" --hostname-override="$NODE_NAME" \
    --run-firewall=true --run-router=false --run-service-proxy=false \
    --service-cluster-ip-range="$NODE_SERVICE_CIDR" --health-port=0 --metrics-port=0 \
    --enable-ipv6=false --v=1
  node_wait kube-router "kube-router's policy chains" 60 in_netns iptables -S KUBE-ROUTER-FORWARD

  start_cmd app nsenter --net="$NODE_NETNS_PATH" env PORT=80 PREVIEWD_SERVICE=metadata-stand-in \
    PREVIEWD_SHA=none "$node_bin/app" serve

  # --- cluster objects: the kubernetes Service's endpoints, DNS ------------------------------------------------
  node_manifests "$IMAGE_COREDNS" | kubectl_ apply --server-side --force-conflicts -f - \
    >"$STATE/logs/node-manifests.log" 2>&1 \
    || node_fail "applying the node's cluster objects failed: $(tail -n5 "$STATE/logs/node-manifests.log")"
  node_wait kubelet "CoreDNS ready" 120 node_dns_ready

  cat >"$STATE/node.env" <<EOF
# the real node's images (testenv/images/build), imported into its containerd
export PREVIEWD_TESTENV_REAL_NODE=1
export PREVIEWD_TESTENV_IMAGE_APP="$DIGEST_APP"
export PREVIEWD_TESTENV_IMAGE_TESTRUNNER="$DIGEST_TESTRUNNER"
export PREVIEWD_TESTENV_IMAGE_OPERATOR="$IMAGE_OPERATOR"
export PREVIEWD_TESTENV_IMAGE_OPERATOR_NEXT="$IMAGE_OPERATOR_NEXT"
export PREVIEWD_TESTENV_HELM="$node_bin/helm"
EOF
  log "real node $NODE_NAME ready in $((SECONDS - NODE_T0)) s (pods $NODE_POD_CIDR, taint: $taints)"
}

# CoreDNS available, and running in this containerd (after a restart of the node the API may
# still report the pod of the containerd before).
node_dns_ready() {
  local ctr_=(ctr --address "$(node_dir)/containerd.sock" -n k8s.io) ids id
  [[ "$(kubectl_ -n kube-system get deploy coredns -o jsonpath='{.status.availableReplicas}')" == 1 ]] || return 1
  ids="$("${ctr_[@]}" containers ls -q 'labels."io.kubernetes.container.name"==coredns')"
  for id in $ids; do
    "${ctr_[@]}" tasks ls | awk -v id="$id" '$1 == id && $3 == "RUNNING" {found=1} END {exit !found}' && return 0
  done
  return 1
}

# The objects the node needs in the cluster: endpoints for the `kubernetes` Service (the API
# server runs with --endpoint-reconciler-type=none) through the forwarder, and CoreDNS.
node_manifests() {
  local image="$1" placement=""
  if ((NODES > 0)); then
    placement="      nodeSelector: {$NODE_TAINT_KEY: \"true\"}
      tolerations: [{key: $NODE_TAINT_KEY, operator: Exists, effect: NoSchedule}]"
  fi
  cat <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes
  namespace: default
  labels: {kubernetes.io/service-name: kubernetes, endpointslice.kubernetes.io/managed-by: previewd-testenv}
addressType: IPv4
endpoints: [{addresses: ["$NODE_HOST_IP"], conditions: {ready: true}}]
ports: [{name: https, port: 6443, protocol: TCP}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
$placement
      securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: coredns
        image: $image
        imagePullPolicy: Never
        resources: {requests: {cpu: 50m, memory: 32Mi}, limits: {memory: 128Mi}}
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        livenessProbe: {httpGet: {path: /health, port: 8080}, periodSeconds: 10}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $NODE_DNS_IP
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
EOF
}
