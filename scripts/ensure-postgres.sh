#!/usr/bin/env bash
# The test suite starts its own PostgreSQL cluster; it needs the server binaries, which Debian's
# `postgresql` package provides. Install them when they are missing.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1; then
  exit 0
fi
echo "ensure-postgres: PostgreSQL server not found, installing Debian's postgresql package"
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q postgresql
