#!/usr/bin/env bash
# deploy/docker/local-image.sh [TAG]: builds the groupcast image without a
# registry or a base image, for clusters that cannot pull (the Kubernetes
# end-to-end test, helm/test/e2e.sh). Equivalent to deploy/docker/Dockerfile:
# the stripped release binary, the shared libraries it links (from this
# machine), /etc/passwd with the non-root user 65532, CA certificates, an
# empty /tmp; imported with `docker import` as groupcast:TAG (default
# "local"), entrypoint /usr/local/bin/groupcast, user 65532.
#
# Environment: GROUPCAST_BIN (default target/release/groupcast, built when
# missing), DOCKER_HOST (the daemon to import into).
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-local}
bin=${GROUPCAST_BIN:-target/release/groupcast}
if [ ! -x "$bin" ]; then
  cargo build --release --locked -p groupcast
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
chmod 1777 "$root/tmp"
strip "$bin" -o "$root/usr/local/bin/groupcast"
# The dynamic loader and every library the binary links, at the same paths.
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"

tar -C "$root" --owner=0 --group=0 -c . | docker import \
  --change 'ENTRYPOINT ["/usr/local/bin/groupcast"]' \
  --change 'CMD ["dev", "--listen", "0.0.0.0:8000"]' \
  --change 'USER 65532:65532' \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'EXPOSE 8000 7500/udp 7510' \
  - "groupcast:$tag" >/dev/null
echo "groupcast:$tag ($(du -sh "$root" | cut -f1) root filesystem)"
