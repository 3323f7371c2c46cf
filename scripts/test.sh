#!/usr/bin/env bash
# Install dualwrite with its test tools into ./.venv and run the whole test suite (lint, types, tests).
set -euo pipefail
cd "$(dirname "$0")/.."
# MySQL/MariaDB go through PyMySQL (pure Python) by default. DUALWRITE_MYSQLCLIENT=1 runs the suite on the
# faster C driver instead (the extra '.[mysqlclient]'), which builds against MariaDB's client library.
extras=test
if [ "${DUALWRITE_MYSQLCLIENT:-0}" = 1 ]; then
  extras=test,mysqlclient
  if ! pkg-config --exists libmariadb 2>/dev/null && ! pkg-config --exists mariadb 2>/dev/null; then
    apt-get update -qq && apt-get install -y -qq libmariadb-dev pkg-config >/dev/null
  fi
fi
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  # the Web UI test drives Debian's headless Chromium (Playwright never downloads a browser here)
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e ".[$extras]"
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/pytest -q -p no:cacheprovider "$@"
