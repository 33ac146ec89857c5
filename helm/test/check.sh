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
#    the templates for what the schema cannot say).
#
# Needs: helm (scripts/helm-tool.sh) and kubernetes-validate (in
# .tools/venv, from tests/sdk/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
chart=helm/groupcast
helm=$(scripts/helm-tool.sh helm)
validate=${KUBERNETES_VALIDATE:-.tools/venv/bin/kubernetes-validate}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
fail() { echo "chart check FAILED: $*" >&2; exit 1; }

# Value sets: defaults; external NATS and NodePort; everything optional on.
sets=(
  ""
  "--set nats.enabled=false --set nats.urls[0]=nats://nats.example:4222 --set edge.service.type=NodePort --set edge.service.nodePort=30080"
  "--set edge.autoscaling.enabled=true --set edge.ingress.enabled=true --set edge.ingress.className=nginx --set membership.replicas=5 --set networkPolicy.enabled=false --set auth.existingSecret=mine --set membership.certs.existingSecret=certs"
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
done
grep -q '^apiVersion: autoscaling/v2beta2' "$out/r120.yaml" || fail "1.20: no autoscaling/v2beta2 HPA"

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
echo "chart checks passed"
