#!/usr/bin/env bash
# helm/test/e2e.sh: the chart on a real Kubernetes, end to end, on this
# machine (root, Debian; about 15 minutes cold, 5 with the Kubernetes build
# cached). Not part of scripts/test.sh (it needs root, changes the machine's
# network settings while it runs and takes longer than CI allows); run it
# before each change to the chart and record its output in
# docs/kubernetes.md.
#
#   helm/test/e2e.sh            # everything, then tears it all down
#   GROUPCAST_E2E_KEEP=1 helm/test/e2e.sh   # leave the cluster up to look
#
# Steps:
#  1. helm/test/kube.sh tools + up: Kubernetes 1.20.2 built from Debian's
#     source package (cached), docker, etcd, one node (see kube.sh).
#  2. Images without a registry: groupcast:e2e (deploy/docker/local-image.sh
#     from the release build) and nats-local:e2e (the nats-server binary of
#     .tools/venv).
#  3. helm install --wait: bundled 3-node NATS JetStream (with its users:
#     the edges, one backend `app` for relay targets app.>), 3 membership
#     replicas, 2 edges (Service type NodePort); every pod ready. NATS
#     permissions through its Service: no anonymous connection; the backend
#     may read only its targets and its inbox and send commands (it is
#     refused gc.>, the channels, the node bus, the edges' inboxes, forged
#     publications and history reads); no NATS server refused an edge.
#  4. `groupcast probe` through the Service; then 40 centrifuge-js clients
#     through the Service (tests/sdk/helm_e2e.mjs) while an API publisher
#     runs: presence is exact and spread over both edges; an edge pod is
#     deleted (its clients drain with 3001, reconnect and recover); `helm
#     upgrade` with a config change rolls both edges; every client holds
#     every publication exactly once and in order.
#  5. The generated API key, NATS passwords, cluster secret and
#     certificates survived the upgrade; `helm test` passes; `helm
#     uninstall` leaves only the PVCs.
#  6. kube.sh down --purge: every process stopped, network settings put
#     back (kube.sh checks them against a snapshot), its state deleted.
set -euo pipefail
cd "$(dirname "$0")/../.."
kube=helm/test/kube.sh
ns=groupcast-e2e
rel=gc
fn=gc-groupcast
t0=$(date +%s)
step() { printf '\n== [%4ss] %s\n' "$(($(date +%s) - t0))" "$*"; }
die() { echo "E2E FAILED: $*" >&2; exit 1; }

cleanup() {
  local rc=$?
  if [ -n "${driver_pid:-}" ]; then kill "$driver_pid" 2>/dev/null || true; fi
  if [ "${GROUPCAST_E2E_KEEP:-}" = 1 ]; then
    echo "GROUPCAST_E2E_KEEP=1: the cluster stays up ($kube env; $kube down when done)"
  else
    step "kube.sh down --purge"
    "$kube" down --purge || rc=1
  fi
  [ -n "${work:-}" ] && rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
work=$(mktemp -d)

step "Kubernetes: tools (cached after the first run) and up"
"$kube" tools
"$kube" up
eval "$("$kube" env)"
helm=$(scripts/helm-tool.sh helm)
# kube.sh's PATH puts its kubectl (built with the cluster, v1.20.2) first.
kubectl=$(command -v kubectl)
k() { "$kubectl" -n "$ns" "$@"; }
"$kubectl" version --short

step "images: groupcast:e2e and nats-local:e2e"
[ -x target/release/groupcast ] || cargo build --release --locked -p groupcast
deploy/docker/local-image.sh e2e
nats_root="$work/nats-root"
mkdir -p "$nats_root/usr/local/bin" "$nats_root/tmp"
cp .tools/venv/bin/nats-server "$nats_root/usr/local/bin/"
tar -C "$nats_root" --owner=0 --group=0 -c . | docker import --change 'ENV PATH=/usr/local/bin:/bin' - nats-local:e2e >/dev/null
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^(groupcast|nats-local):e2e'

values=(
  --set image.tag=e2e --set image.pullPolicy=Never
  --set nats.image.repository=nats-local --set nats.image.tag=e2e --set nats.image.pullPolicy=Never
  --set edge.service.type=NodePort
  # A backend with its own NATS user, for relay targets app.>.
  --set 'nats.backends[0].name=app' --set 'nats.backends[0].targets={app.>}'
  --set 'networkPolicy.natsClients[0].podSelector.matchLabels.app=backend'
  # One small node: leave CPU to the test.
  --set edge.resources.requests.cpu=50m --set membership.resources.requests.cpu=50m
  --set nats.resources.requests.cpu=50m
)

step "helm install --wait (bundled NATS, 3 membership replicas, 2 edges)"
# A cluster kept from an earlier run (GROUPCAST_E2E_KEEP=1) may hold it.
"$kubectl" delete namespace "$ns" --ignore-not-found --wait=true --timeout=3m
"$kubectl" create namespace "$ns"
"$helm" install "$rel" helm/groupcast -n "$ns" "${values[@]}" --wait --timeout 8m
k get pods -o wide
ready=$(k get pods -l app.kubernetes.io/instance=$rel -o jsonpath='{range .items[*]}{.status.containerStatuses[0].ready}{"\n"}{end}' | grep -c true)
[ "$ready" = 8 ] || die "$ready of 8 pods ready"

svc=$(k get svc "$fn" -o jsonpath='{.spec.clusterIP}')
url="http://$svc:80"
api_key=$(k get secret "$fn-auth" -o jsonpath='{.data.api-key}' | base64 -d)
secret=$(k get secret "$fn-auth" -o jsonpath='{.data.token-hmac-secret}' | base64 -d)
certs_before=$(k get secret "$fn-membership-certs" -o jsonpath='{.data.ca\.pem}' | sha256sum)

nats_auth() { k get secret "$fn-nats-auth" -o jsonpath="{.data.$1}" | base64 -d; }
nats_before=$(for key in cluster-secret edge-password route-password backend-app-password; do nats_auth "$key" | sha256sum; done)

step "groupcast probe through the Service ($url)"
target/release/groupcast probe --url "$url" --api-key "$api_key" --token-hmac-secret "$secret"

step "NATS permissions through its Service"
nats_host=$(k get svc "$fn-nats" -o jsonpath='{.spec.clusterIP}')
# nats_talk CONNECT-JSON LINE...: sends CONNECT, the lines and PING to the
# NATS Service; prints what the server answers (without INFO), up to PONG.
nats_talk() {
  local connect=$1 line
  shift
  exec {nc}<>"/dev/tcp/$nats_host/4222"
  { printf 'CONNECT %s\r\n' "$connect"; printf '%s\r\n' "$@" PING; } >&"$nc"
  while IFS= read -r -t 10 -u "$nc" line; do
    line=${line%$'\r'}
    case "$line" in INFO*) continue ;; esac
    echo "$line"
    case "$line" in PONG | "-ERR 'Authorization Violation'") break ;; esac
  done
  exec {nc}>&-
}
got=$(nats_talk '{"verbose":false}')
echo "anonymous: $got"
[ "$got" = "-ERR 'Authorization Violation'" ] || die "NATS let an anonymous client in: $got"
got=$(nats_talk '{"verbose":false,"user":"app","pass":"wrong"}')
[ "$got" = "-ERR 'Authorization Violation'" ] || die "NATS let a wrong password in: $got"
app_password=$(nats_auth backend-app-password)
got=$(nats_talk '{"verbose":false,"user":"app","pass":"'"$app_password"'"}' \
  'SUB gc.relay.app.lobby 1' 'SUB _INBOX_app.x 2' 'PUB gc.api 2' '{}' \
  'SUB gc.> 3' 'SUB gc.g.> 4' 'SUB gc.h.> 5' 'SUB gc.n.> 6' 'SUB _INBOX.> 7' 'SUB gc.relay.other 8' \
  'PUB gc.g.~.~24alice 2' '{}' 'PUB gc.h.~.~24alice 2' '{}' 'PUB gc.n.edge 2' '{}' \
  'PUB $JS.API.STREAM.MSG.GET.gc_h_~ 2' '{}' 'PUB $JS.API.DIRECT.GET.gc_h_~ 2' '{}')
echo "backend app:"
sed 's/^/   /' <<<"$got"
want="-ERR 'Permissions Violation for Subscription to \"gc.>\"'
-ERR 'Permissions Violation for Subscription to \"gc.g.>\"'
-ERR 'Permissions Violation for Subscription to \"gc.h.>\"'
-ERR 'Permissions Violation for Subscription to \"gc.n.>\"'
-ERR 'Permissions Violation for Subscription to \"_INBOX.>\"'
-ERR 'Permissions Violation for Subscription to \"gc.relay.other\"'
-ERR 'Permissions Violation for Publish to \"gc.g.~.~24alice\"'
-ERR 'Permissions Violation for Publish to \"gc.h.~.~24alice\"'
-ERR 'Permissions Violation for Publish to \"gc.n.edge\"'
-ERR 'Permissions Violation for Publish to \"\$JS.API.STREAM.MSG.GET.gc_h_~\"'
-ERR 'Permissions Violation for Publish to \"\$JS.API.DIRECT.GET.gc_h_~\"'
PONG"
[ "$got" = "$want" ] || die "backend app's permissions: want
$want"
for p in $(k get pods -l app.kubernetes.io/component=nats -o name); do
  refused=$(k logs "$p" | grep 'Violation' | grep 'user:edge' || true)
  [ -z "$refused" ] || die "$p refused an edge: $refused"
done
echo "no NATS server refused an edge"

step "40 centrifuge-js clients through the Service, an API publisher"
coproc DRIVER { node tests/sdk/helm_e2e.mjs "$url" "$api_key" "$secret" 40 2>&1; }
# shellcheck disable=SC2153 # set by coproc
driver_pid=$DRIVER_PID
exec {to_driver}>&"${DRIVER[1]}"
exec {from_driver}<&"${DRIVER[0]}"
read_until() { # print the driver's lines until one matches $1
  local line
  while IFS= read -r -t 120 -u "$from_driver" line; do
    echo "   driver: $line"
    case "$line" in *"$1"*) return 0 ;; *FAIL*) die "driver: $line" ;; esac
  done
  die "driver: no '$1' within 120 s"
}
say() { echo "$1" >&"$to_driver"; }
read_until READY
sleep 2
say presence
read_until "presence:"

step "delete one edge pod: its clients drain (3001), reconnect, recover"
victim=$(k get pods -l app.kubernetes.io/component=edge -o jsonpath='{.items[0].metadata.name}')
say "phase delete $victim"
read_until "phase delete"
k delete pod "$victim" --wait=true
k rollout status deploy/"$fn-edge" --timeout=3m
sleep 8
say presence
read_until "presence:"

step "helm upgrade with a config change: both edges roll"
say "phase upgrade"
read_until "phase upgrade"
"$helm" upgrade "$rel" helm/groupcast -n "$ns" "${values[@]}" --set config.channel.history_size=200 --wait --timeout 8m
k rollout status deploy/"$fn-edge" --timeout=3m
k get pods -l app.kubernetes.io/component=edge
sleep 8
say presence
read_until "presence:"

step "stop: every client holds every publication once, in order"
say stop
read_until '"clients_with_problems":0'
wait "$driver_pid" || die "driver exited with failure"
driver_pid=

step "generated secrets survived the upgrade"
[ "$(k get secret "$fn-auth" -o jsonpath='{.data.api-key}' | base64 -d)" = "$api_key" ] || die "API key changed on upgrade"
[ "$(k get secret "$fn-membership-certs" -o jsonpath='{.data.ca\.pem}' | sha256sum)" = "$certs_before" ] || die "membership CA changed on upgrade"
nats_after=$(for key in cluster-secret edge-password route-password backend-app-password; do nats_auth "$key" | sha256sum; done)
[ "$nats_after" = "$nats_before" ] || die "NATS passwords or cluster secret changed on upgrade"
echo "API key, NATS passwords, cluster secret and membership CA unchanged"

step "helm test"
# The test pod is deleted when it passes (a failed one stays, with its logs).
"$helm" test "$rel" -n "$ns" --timeout 3m

step "membership status (from a replica)"
k exec "$fn-membership-0" -- groupcast membership status --via 127.0.0.1:7500 --certs /etc/groupcast/membership --server-name "$fn-membership" | head -20

step "helm uninstall: only the PVCs stay"
"$helm" uninstall "$rel" -n "$ns" --wait --timeout 3m
deadline=$(($(date +%s) + 120))
while [ -n "$(k get pods -o name)" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || die "pods left after uninstall: $(k get pods -o name | tr '\n' ' ')"
  sleep 2
done
left=$(k get all,configmap,secret,pdb,networkpolicy,serviceaccount -o name | grep -v -e '^configmap/kube-root-ca.crt$' -e '^serviceaccount/default$' -e '^secret/default-token-' || true)
[ -z "$left" ] || die "left after uninstall: $left"
pvcs=$(k get pvc -o name | wc -l)
[ "$pvcs" = 6 ] || die "$pvcs PVCs after uninstall, want 6 (3 NATS, 3 membership)"
k get pvc
"$kubectl" delete namespace "$ns" --wait=true --timeout=2m

step "passed in $(($(date +%s) - t0)) s"
