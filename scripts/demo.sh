#!/usr/bin/env bash
# Install dualwrite into ./.venv and run the demo migration (offline, embedded stores and Temporal).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e .
exec .venv/bin/dualwrite demo "$@"
