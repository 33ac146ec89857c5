#!/usr/bin/env bash
# scripts/debian-tool.sh PACKAGE [BINARY]: prints the path of BINARY
# (default: PACKAGE), installing the Debian package first when it is
# missing. The package's own system service is never started: a temporary
# policy-rc.d refuses it during the install. The tests and scripts run
# these tools as their own foreground processes with their own config,
# never as the system service.
#
# Used by scripts/test.sh (nginx for the chaos tests, prometheus for the
# dashboard queries, iptables for the membership fault tests) and
# deploy/local/cluster.sh (nginx).
set -euo pipefail
package=${1:?usage: scripts/debian-tool.sh PACKAGE [BINARY]}
binary=${2:-$package}

path=$(command -v "$binary" || true)
[ -n "$path" ] || { [ -x "/usr/sbin/$binary" ] && path=/usr/sbin/$binary; } || true
[ -n "$path" ] || { [ -x "/usr/bin/$binary" ] && path=/usr/bin/$binary; } || true
if [ -z "$path" ]; then
  command -v apt-get >/dev/null || { echo "$binary is missing and there is no apt-get: install $package" >&2; exit 1; }
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "$binary missing: apt-get install -y $package (its system service is not started)" >&2
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    # shellcheck disable=SC2064 # expand now
    trap "$sudo rm -f $policy" EXIT
  fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$package" >/dev/null
  path=$(command -v "$binary" || true)
  [ -n "$path" ] || { [ -x "/usr/sbin/$binary" ] && path=/usr/sbin/$binary; } || true
  [ -n "$path" ] || { [ -x "/usr/bin/$binary" ] && path=/usr/bin/$binary; } || true
fi
[ -n "$path" ] && [ -x "$path" ] || { echo "no $binary after installing $package" >&2; exit 1; }
echo "$path"
