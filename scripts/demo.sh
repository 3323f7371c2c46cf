#!/usr/bin/env bash
# Install dualwrite into ./.venv and run the demo migration (offline, embedded stores and Temporal).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! pkg-config --exists libmariadb 2>/dev/null && ! pkg-config --exists mariadb 2>/dev/null; then
  apt-get update -qq && apt-get install -y -qq libmariadb-dev pkg-config >/dev/null
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e .
exec .venv/bin/dualwrite demo "$@"
