#!/usr/bin/env bash
# Prints the path of nginx, installing Debian's package first when it is
# missing. The package's own system service is never started: a temporary
# policy-rc.d refuses it during the install. Used by scripts/test.sh (the
# chaos tests put nginx in front of three edges) and deploy/local/cluster.sh.
set -euo pipefail

nginx=$(command -v nginx || true)
[ -n "$nginx" ] || { [ -x /usr/sbin/nginx ] && nginx=/usr/sbin/nginx; } || true
if [ -z "$nginx" ]; then
  command -v apt-get >/dev/null || { echo "nginx is missing and there is no apt-get: install nginx" >&2; exit 1; }
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "nginx missing: apt-get install -y nginx (the system service is not started)" >&2
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    # shellcheck disable=SC2064 # expand now
    trap "$sudo rm -f $policy" EXIT
  fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx >/dev/null
  nginx=/usr/sbin/nginx
fi
[ -x "$nginx" ] || { echo "no nginx at $nginx" >&2; exit 1; }
echo "$nginx"
