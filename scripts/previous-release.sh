#!/usr/bin/env bash
# Prints the path of the previous release's `groupcast` binary, building it
# first when it is not there yet: the rolling-upgrade test
# (crates/groupcast/tests/chaos.rs, chaos (h)) runs the cluster on it and
# upgrades it to this tree under load.
#
#   scripts/previous-release.sh      # -> .../previous-release/groupcast-0.1.0
#
# The release is a commit of this repository's history (tag v0.1.0; the
# commit is named here too, so a clone without tags works). Its source is
# read with `git archive` into a temporary directory (the work tree is not
# touched) and built in debug with this tree's target directory
# (${CARGO_TARGET_DIR:-target}), so it shares the compiled dependencies
# (same Cargo.lock): only its own crates are compiled, a few minutes. Its
# crates have their own version (0.1.0; this tree is 0.2.0-dev), which is
# what keeps cargo from taking them for this tree's (it names artifacts of
# path crates by name and version, not by path). Its binary is built under
# the name `groupcast-previous`, so it never replaces this tree's
# `groupcast`, and kept in <target>/previous-release/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

version=0.1.0
commit=15ede26de706527c839d381f3d605a67dde6b0c9

target=${CARGO_TARGET_DIR:-$root/target}
case $target in /*) ;; *) target=$root/$target ;; esac
out=$target/previous-release/groupcast-$version
if [ -x "$out" ]; then
  echo "$out"
  exit 0
fi

if ! git -C "$root" cat-file -e "$commit^{commit}" 2>/dev/null; then
  # A shallow clone: fetch just that commit from where this one came from.
  git -C "$root" fetch --quiet --depth 1 origin "$commit" 2>/dev/null || true
fi
if ! git -C "$root" cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "previous-release.sh: release $version (commit $commit, tag v$version) is not in this" \
       "clone's history and could not be fetched from origin: clone without --depth" >&2
  exit 1
fi

src=$(mktemp -d /tmp/groupcast-previous-release.XXXXXX)
trap 'rm -rf "$src"' EXIT
git -C "$root" archive "$commit" | tar -x -C "$src"
# Newer than anything already built: cargo tells the release's crates from
# this tree's by their version (0.1.0 here, the tree is later), and a
# leftover artifact of the same version must not pass for fresh.
find "$src" -type f -exec touch {} +
# Its binary under another name (the package and its crates keep theirs:
# cargo tells them from this tree's by their path).
sed -i '/^\[\[bin\]\]$/,/^path/ s/^name = "groupcast"$/name = "groupcast-previous"/' \
  "$src/crates/groupcast/Cargo.toml"
grep -q '^name = "groupcast-previous"$' "$src/crates/groupcast/Cargo.toml" ||
  { echo "previous-release.sh: could not rename the release's binary" >&2; exit 1; }
echo "previous-release.sh: building groupcast $version ($commit) into $target" >&2
(cd "$src" && CARGO_TARGET_DIR=$target cargo build --locked --quiet -p groupcast --bin groupcast-previous)
mkdir -p "$(dirname "$out")"
cp "$target/debug/groupcast-previous" "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
