#!/usr/bin/env bash
# Builds Tongsuo's `openssl` program (with NTLS, i.e. TLCP) once and prints its path.
#
# The source comes from the `tongsuo-src` crate (a dev-dependency, so `cargo fetch` brings it);
# the binary is cached in $HOME/.cache/netpatrol/tongsuo-<crate version>/openssl and built only
# when missing (about 6-10 minutes on 2 cores). Build output goes to stderr and to build.log in
# the cache directory; stdout holds only the binary's path. Safe to run concurrently: a lock
# makes later callers wait for the first build.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(awk '/^name = "tongsuo-src"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
if [ -z "$version" ]; then
  echo "tongsuo.sh: tongsuo-src is not in Cargo.lock" >&2
  exit 1
fi
cache="$HOME/.cache/netpatrol/tongsuo-$version"
bin="$cache/openssl"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

cargo_home="${CARGO_HOME:-$HOME/.cargo}"
find_src() {
  for d in "$cargo_home"/registry/src/*/"tongsuo-src-$version"/tongsuo; do
    [ -x "$d/config" ] && { echo "$d"; return 0; }
  done
  return 1
}
src=$(find_src) || { cargo fetch --locked >&2 && src=$(find_src); } || {
  echo "tongsuo.sh: source of tongsuo-src $version not found under $cargo_home/registry/src" >&2
  exit 1
}

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
echo "tongsuo.sh: building Tongsuo $version from $src in $scratch (log: $cache/build.log)" >&2
cp -a "$src"/. "$scratch"/
(
  cd "$scratch"
  # The crate's copy of the source leaves test/ and fuzz/ nearly empty: build only the programs.
  ./config enable-ntls no-shared no-tests --prefix="$cache/prefix"
  make -j"${NETPATROL_TONGSUO_JOBS:-2}" build_programs
) >"$cache/build.log" 2>&1 || {
  echo "tongsuo.sh: build failed; last lines of $cache/build.log:" >&2
  tail -n 30 "$cache/build.log" >&2
  exit 1
}
"$scratch/apps/openssl" version >&2
install -m 0755 "$scratch/apps/openssl" "$bin.tmp"
mv "$bin.tmp" "$bin"
echo "$bin"
