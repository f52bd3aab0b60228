#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test termsgate (Debian packages):
#   cmake         Pingora's zlib-ng (libz-ng-sys) is built with it
#   redis-server  the Redis limiter tests start their own
#   openssl       the TLS test offers a TLS 1.1 handshake with s_client
# Nothing is installed when everything is already there.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
if [ "${1:-}" = "--test" ]; then
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
fi
# The test script runs rustfmt and clippy: make sure the toolchain has them.
if [ "${1:-}" = "--test" ] && command -v rustup >/dev/null 2>&1; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" \
      || rustup component add "$component"
  done
fi
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
# A Debian redis-server package starts a system instance on 6379; the tests never use it.
