#!/usr/bin/env bash
# Run the platform on a fresh Debian machine with Rust installed: installs PostgreSQL if
# missing, builds, creates the first admin, and serves on 127.0.0.1:8080 (ELITE_BIND to change).
# Without DATABASE_URL, elite owns a private PostgreSQL cluster under ELITE_DATA_DIR (default
# ./.elite, or /var/lib/elite as root, since the postgres user cannot enter /root). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

# A TrueType font draws the typographic and flowchart images of generated pairs.
packages=(fonts-dejavu-core)
[ -n "${DATABASE_URL:-}" ] || packages+=(postgresql)
ensure_packages "${packages[@]}"

# Check before the long build that the postgres user can reach the data directory.
if [ -z "${DATABASE_URL:-}" ] && [ "$(id -u)" = 0 ]; then
  data_dir=${ELITE_DATA_DIR:-/var/lib/elite}
  mkdir -p "$data_dir"
  if ! runuser -u postgres -- test -x "$data_dir"; then
    echo "the postgres user cannot enter $data_dir: choose ELITE_DATA_DIR outside /root (or chmod o+x its parents)" >&2
    exit 1
  fi
  echo "data directory: $data_dir"
fi
cargo build --release --locked
elite=target/release/elite

if [ -n "${ELITE_ADMIN_PASSWORD:-}" ]; then
  printf '%s' "$ELITE_ADMIN_PASSWORD" | "$elite" user add admin --role admin --password-stdin --if-missing
else
  "$elite" user add admin --role admin --generate-password --if-missing
fi
exec "$elite" serve --bind "${ELITE_BIND:-127.0.0.1:8080}"
