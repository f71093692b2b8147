#!/usr/bin/env bash
# Run every test on a fresh Debian machine with Rust installed: installs PostgreSQL, Chromium
# and chromedriver if missing, runs the whole suite against a throwaway private PostgreSQL
# cluster (or DATABASE_URL when set), and removes the cluster afterwards. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

packages=(chromium chromium-driver fonts-dejavu-core)
[ -n "${DATABASE_URL:-}" ] || packages+=(postgresql)
ensure_packages "${packages[@]}"

# A short path the postgres user can reach even when the checkout lives under /root.
if [ -z "${DATABASE_URL:-}" ] && [ -z "${ELITE_TEST_DATA_DIR:-}" ]; then
  ELITE_TEST_DATA_DIR=$(mktemp -d /tmp/elite-test.XXXXXX)
  export ELITE_TEST_DATA_DIR
  chmod 755 "$ELITE_TEST_DATA_DIR"
  cleanup() {
    if [ -f "$ELITE_TEST_DATA_DIR/pgdata/PG_VERSION" ] && [ -x target/debug/elite ]; then
      target/debug/elite --data-dir "$ELITE_TEST_DATA_DIR" db stop >/dev/null 2>&1 || true
    fi
    rm -rf "$ELITE_TEST_DATA_DIR"
  }
  trap cleanup EXIT
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --lib --bins --tests --no-fail-fast
  cargo test --locked --doc
else
  cargo test --locked --lib --bins --tests --no-fail-fast
fi
