#!/usr/bin/env bash
# helm/test/check.sh: the fast checks of the Helm chart, run by
# scripts/test.sh (no cluster needed, about 20 s):
#
# 1. `helm lint --strict` (warnings fail) for Kubernetes 1.20 and 1.33;
# 2. `helm template` for Kubernetes 1.20 (the oldest supported: PDB
#    policy/v1beta1, HPA autoscaling/v2beta2) and 1.29 to 1.33 (policy/v1,
#    autoscaling/v2), with several value sets, each output validated by
#    `kubernetes-validate --strict` (PyPI, schemas 1.25+) against 1.29 to
#    1.33; any ERROR or WARN line fails;
# 3. bad values are refused, each with its message (values.schema.json, or
#    the templates for what the schema cannot say);
# 4. the bundled NATS: its rendered configuration is accepted by
#    `nats-server -t`, its `edge` user has exactly the permissions of
#    deploy/local/nats-auth.conf.tmpl (the definition the local cluster and
#    the tests use), each backend only its targets and inbox, no anonymous
#    user; the edges log in as `edge` and get the cluster secret; the
#    monitoring port is closed unless networkPolicy.natsMonitoring names
#    someone; api.over_nats is off.
#
# Needs: helm (scripts/helm-tool.sh), kubernetes-validate and nats-server
# (in .tools/venv, from tests/sdk/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
chart=helm/groupcast
helm=$(scripts/helm-tool.sh helm)
validate=${KUBERNETES_VALIDATE:-.tools/venv/bin/kubernetes-validate}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
fail() { echo "chart check FAILED: $*" >&2; exit 1; }

# Value sets: defaults; external NATS (with a .creds file) and NodePort;
# everything optional on; backends on the bundled NATS.
backends="--set nats.backends[0].name=chat --set nats.backends[0].targets={chat,chat.>} --set nats.backends[1].name=game-1 --set nats.backends[1].targets={game.*.room,>}"
sets=(
  ""
  "--set nats.enabled=false --set nats.urls[0]=nats://nats.example:4222 --set nats.auth.credentialsSecret=nats-creds --set edge.service.type=NodePort --set edge.service.nodePort=30080"
  "--set edge.autoscaling.enabled=true --set edge.ingress.enabled=true --set edge.ingress.className=nginx --set membership.replicas=5 --set networkPolicy.enabled=false --set auth.existingSecret=mine --set membership.certs.existingSecret=certs --set nats.auth.existingSecret=mine-nats"
  "$backends --set networkPolicy.natsClients[0].podSelector.matchLabels.app=chat --set networkPolicy.natsMonitoring[0].namespaceSelector.matchLabels.team=monitoring --set config.api.over_nats=true"
)

echo "-- helm lint --strict"
for kv in 1.20.2 1.33.0; do
  for s in "${sets[@]}"; do
    # shellcheck disable=SC2086 # $s is a list of flags
    "$helm" lint --strict --quiet --kube-version "$kv" $s "$chart" >"$out/lint" 2>&1 ||
      { cat "$out/lint" >&2; fail "helm lint --strict --kube-version $kv $s"; }
  done
done

echo "-- helm template for Kubernetes 1.20"
for s in "${sets[@]}"; do
  # shellcheck disable=SC2086
  "$helm" template gc "$chart" --kube-version 1.20.2 $s >"$out/r120.yaml"
  grep -q '^apiVersion: policy/v1beta1' "$out/r120.yaml" || fail "1.20: no policy/v1beta1 PodDisruptionBudget"
  if grep -q '^apiVersion: policy/v1$\|^apiVersion: autoscaling/v2$' "$out/r120.yaml"; then
    fail "1.20: an API version 1.20 does not serve ($s)"
  fi
  case "$s" in
    *autoscaling.enabled=true*)
      grep -q '^apiVersion: autoscaling/v2beta2' "$out/r120.yaml" || fail "1.20: no autoscaling/v2beta2 HPA"
      ;;
  esac
done

echo "-- helm template for Kubernetes 1.29 to 1.33, kubernetes-validate --strict"
for kv in 1.29 1.30 1.31 1.32 1.33; do
  i=0
  for s in "${sets[@]}"; do
    i=$((i + 1))
    # The ServiceMonitor is the Prometheus operator's: validated apart.
    # shellcheck disable=SC2086
    "$helm" template gc "$chart" --kube-version "$kv.0" $s --set metrics.serviceMonitor.enabled=false >"$out/r.yaml"
    if grep -q '^apiVersion: policy/v1beta1\|^apiVersion: autoscaling/v2beta2' "$out/r.yaml"; then
      fail "$kv: a removed API version ($s)"
    fi
    "$validate" --strict -k "$kv.0" "$out/r.yaml" >"$out/v" 2>&1 || true
    if grep -v '^INFO' "$out/v" | grep -q .; then
      grep -v '^INFO' "$out/v" >&2
      fail "kubernetes-validate --strict -k $kv.0 (value set $i: $s)"
    fi
    n=$(grep -c '^INFO.*passed' "$out/v" || true)
    [ "$n" -gt 10 ] || fail "kubernetes-validate checked only $n resources"
  done
  echo "   $kv: ${#sets[@]} value sets valid"
done
"$helm" template gc "$chart" --kube-version 1.33.0 --set metrics.serviceMonitor.enabled=true | grep -q '^kind: ServiceMonitor' ||
  fail "metrics.serviceMonitor.enabled=true renders no ServiceMonitor"
if "$helm" template gc "$chart" --kube-version 1.33.0 | grep -q '^kind: ServiceMonitor'; then
  fail "metrics.serviceMonitor.enabled=auto renders a ServiceMonitor without the operator's API"
fi
"$helm" template gc "$chart" --kube-version 1.33.0 --api-versions monitoring.coreos.com/v1/ServiceMonitor | grep -q '^kind: ServiceMonitor' ||
  fail "metrics.serviceMonitor.enabled=auto renders no ServiceMonitor with the operator's API"

echo "-- bad values are refused"
refused() {
  local want=$1
  shift
  if "$helm" template gc "$chart" "$@" >/dev/null 2>"$out/err"; then
    fail "accepted: $*"
  fi
  grep -qF -- "$want" "$out/err" || { cat "$out/err" >&2; fail "refused without '$want': $*"; }
}
refused "membership.replicas must be one of the following: 1, 3, 5" --set membership.replicas=4
refused "membership.replicas must be one of the following" --set membership.replicas=three
refused "edge.service.type must be one of the following" --set edge.service.type=External
refused "Additional property servce is not allowed" --set edge.servce.type=ClusterIP
refused "nats.urls: Array must have at least 1 items" --set nats.enabled=false
refused "nats.urls.0: Does not match pattern" --set nats.enabled=false --set "nats.urls[0]=http://nats:4222"
refused "edge.replicas: Must be greater than or equal to 1" --set edge.replicas=0
refused "edge.port: Must be less than or equal to 65535" --set edge.port=70000
refused "image.pullPolicy must be one of the following" --set image.pullPolicy=Sometimes
refused "metrics.serviceMonitor.enabled must be one of the following" --set metrics.serviceMonitor.enabled=maybe
refused "membership.persistence.size: Does not match pattern" --set membership.persistence.size=lots
refused "tests.timeout: Does not match pattern" --set tests.timeout=soon
refused "config.listen is set by the chart" --set config.listen=0.0.0.0:1
refused "config.membership is set by the chart" --set config.membership.seeds[0]=x:1
refused "name: Does not match pattern" --set "config.namespaces[0].name=bad name"
refused "config.api.key is set by the chart" --set config.api.key=k
refused "nats.backends.0.name: Must not validate the schema (not)" --set "nats.backends[0].name=edge" --set "nats.backends[0].targets={x}"
refused "nats.backends.0.targets.0: Does not match pattern" --set "nats.backends[0].name=a" --set "nats.backends[0].targets={a b}"
refused "nats.backends.0: targets is required" --set "nats.backends[0].name=a"
refused "nats.backends: two entries named a" --set "nats.backends[0].name=a" --set "nats.backends[0].targets={x}" --set "nats.backends[1].name=a" --set "nats.backends[1].targets={y}"
refused "nats.backends: gc-edges is the edges' user" --set nats.auth.edgeUser=gc-edges --set "nats.backends[0].name=gc-edges" --set "nats.backends[0].targets={x}"
refused "networkPolicy.natsClients.0: Additional property podselector is not allowed" --set "networkPolicy.natsClients[0].podselector.app=x"

echo "-- the bundled NATS: configuration, users, permissions, ports"
nats_server=${NATS_SERVER:-.tools/venv/bin/nats-server}
# shellcheck disable=SC2086 # $backends is a list of flags
"$helm" template gc "$chart" --kube-version 1.33.0 $backends >"$out/nats.yaml"
# One document (a ConfigMap's nats.conf, the edge Deployment...) at a time.
doc() { # doc FILE KIND NAME: the YAML document of that object
  awk -v kind="kind: $2" -v name="  name: $3" '
    /^---/ { if (hit) exit; buf = ""; k = 0; n = 0; next }
    { buf = buf $0 "\n" } $0 == kind { k = 1 } $0 == name { n = 1 }
    k && n { hit = 1 } END { if (hit) printf "%s", buf }' "$1"
}
doc "$out/nats.yaml" ConfigMap gc-groupcast-nats-config | sed -n '/^  nats.conf: |$/,$p' | sed '1d; s/^    //' >"$out/nats.conf"
grep -q '^authorization {' "$out/nats.conf" || fail "no authorization in the bundled NATS's configuration"
mkdir -p "$out/js"
sed -i "s|\"/data\"|\"$out/js\"|" "$out/nats.conf"
env POD_NAME=gc-groupcast-nats-0 NATS_CLUSTER_ADVERTISE=127.0.0.1:6222 NATS_ROUTE_PASSWORD=r \
  NATS_ROUTE_0=nats://route:r@127.0.0.1:6222 NATS_ROUTE_1=nats://route:r@127.0.0.1:6223 \
  NATS_ROUTE_2=nats://route:r@127.0.0.1:6224 NATS_EDGE_PASSWORD=e NATS_BACKEND_0_PASSWORD=b0 \
  NATS_BACKEND_1_PASSWORD=b1 "$nats_server" -c "$out/nats.conf" -t >"$out/t" 2>&1 ||
  { cat "$out/t" >&2; fail "nats-server -t refuses the bundled NATS's configuration"; }
# The edge user's permissions, one line "publish: [...] subscribe: [...]"
# from the chart and from deploy/local's definition.
chart_edge=$(grep '{user: "edge"' "$out/nats.conf" | grep -o 'publish: \[[^]]*\]\|subscribe: \[[^]]*\]\|allow_responses: true' | tr '\n' ' ')
local_edge=$(sed -n '/user: "edge"/,/^    }/p' deploy/local/nats-auth.conf.tmpl | sed 's/@PREFIX@/gc/g' |
  grep -o 'publish: \[[^]]*\]\|subscribe: \[[^]]*\]\|allow_responses: true' | tr '\n' ' ')
[ -n "$local_edge" ] && [ "$chart_edge" = "$local_edge" ] ||
  fail "the chart's edge permissions ($chart_edge) differ from deploy/local/nats-auth.conf.tmpl's ($local_edge)"
grep -qF '{user: "chat", password: $NATS_BACKEND_0_PASSWORD, permissions: {publish: ["gc.api", "gc.api.*"], subscribe: ["gc.relay.chat", "gc.relay.chat.>", "_INBOX_chat.>"], allow_responses: true}}' "$out/nats.conf" ||
  fail "backend chat: not exactly its targets, its inbox and the commands"
grep -qF 'subscribe: ["gc.relay.game.*.room", "gc.relay.>", "_INBOX_game-1.>"]' "$out/nats.conf" || fail "backend game-1's targets"
[ "$(grep -c '{user: ' "$out/nats.conf")" = 3 ] || fail "users other than edge, chat, game-1"
if grep -q 'no_auth_user\|accounts' "$out/nats.conf"; then fail "anonymous access"; fi
doc "$out/nats.yaml" Secret gc-groupcast-nats-auth | grep -q '^  backend-game-1-password: ' || fail "no generated password for backend game-1"
edge_doc=$(doc "$out/nats.yaml" Deployment gc-groupcast-edge)
grep -q 'name: GROUPCAST_NATS__USER' <<<"$edge_doc" && grep -q 'key: edge-password' <<<"$edge_doc" ||
  fail "the edges do not log in to the bundled NATS as edge"
grep -q 'key: cluster-secret' <<<"$edge_doc" || fail "the edges get no cluster secret"
"$helm" template gc "$chart" --kube-version 1.33.0 >"$out/default.yaml"
doc "$out/default.yaml" ConfigMap gc-groupcast-config | grep -q '^ *over_nats = false$' || fail "api.over_nats is not off by default"
if doc "$out/default.yaml" NetworkPolicy gc-groupcast-nats | grep -q 'port: 8222'; then
  fail "NATS monitoring (8222) is open by default"
fi
"$helm" template gc "$chart" --kube-version 1.33.0 --set "networkPolicy.natsMonitoring[0].podSelector.matchLabels.app=prometheus" >"$out/mon.yaml"
doc "$out/mon.yaml" NetworkPolicy gc-groupcast-nats | grep -q 'port: 8222' || fail "networkPolicy.natsMonitoring does not open 8222"
ext=$("$helm" template gc "$chart" --kube-version 1.33.0 --set nats.enabled=false --set "nats.urls[0]=nats://n:4222")
if grep -q 'GROUPCAST_NATS__USER' <<<"$ext"; then fail "own NATS without a password: the edges send a user"; fi
grep -q 'key: cluster-secret' <<<"$ext" || fail "own NATS: the edges get no cluster secret"
ext=$("$helm" template gc "$chart" --kube-version 1.33.0 --set nats.enabled=false --set "nats.urls[0]=nats://n:4222" --set nats.auth.edgePassword=pw)
grep -q 'name: GROUPCAST_NATS__PASSWORD' <<<"$ext" || fail "own NATS with nats.auth.edgePassword: no password for the edges"
echo "chart checks passed"
