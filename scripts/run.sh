#!/usr/bin/env bash
# Run the platform on a fresh Debian machine with Rust installed: installs PostgreSQL if
# missing, builds, creates the first admin, and serves on 127.0.0.1:8080 (ELITE_BIND to change).
# Without DATABASE_URL, elite owns a private PostgreSQL cluster under ELITE_DATA_DIR (./.elite).
# Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

# A TrueType font draws the typographic and flowchart images of generated pairs.
packages=(fonts-dejavu-core)
[ -n "${DATABASE_URL:-}" ] || packages+=(postgresql)
ensure_packages "${packages[@]}"
cargo build --release --locked
elite=target/release/elite

if [ -n "${ELITE_ADMIN_PASSWORD:-}" ]; then
  printf '%s' "$ELITE_ADMIN_PASSWORD" | "$elite" user add admin --role admin --password-stdin --if-missing
else
  "$elite" user add admin --role admin --generate-password --if-missing
fi
exec "$elite" serve --bind "${ELITE_BIND:-127.0.0.1:8080}"
