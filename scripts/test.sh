#!/usr/bin/env bash
# Keel's whole test suite. Installs what the tests need when it is missing, then runs them:
#   - Debian packages redis-server, redis-tools, prometheus, openssl, logrotate, strace (apt-get, when root;
#     otherwise it prints the command to run and stops);
#   - a Python venv with osmem-server and prometheus-client (pip), at $KEEL_VENV
#     (default: target/keel-venv).
# Tests start their own servers on free 127.0.0.1 ports; nothing needs to be running.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v pgrep >/dev/null 2>&1 || missing+=(procps)
# logrotate lives in /usr/sbin, which is not on every user's PATH.
command -v logrotate >/dev/null 2>&1 || [ -x /usr/sbin/logrotate ] || missing+=(logrotate)
# strace shows keel-log's fdatasync before a rotation's rename (tests/durability.rs).
command -v strace >/dev/null 2>&1 || missing+=(strace)
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    say "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing system packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

export KEEL_VENV="${KEEL_VENV:-$PWD/target/keel-venv}"
if ! "$KEEL_VENV/bin/python" -c 'import prometheus_client, osmem_server' >/dev/null 2>&1; then
  say "creating the test venv at $KEEL_VENV (osmem-server, prometheus-client)"
  python3 -m venv "$KEEL_VENV"
  "$KEEL_VENV/bin/pip" install -q --disable-pip-version-check osmem-server prometheus-client
fi

say "cargo test --workspace --all-features"
cargo test --workspace --all-features --locked
