"""The chaos tests import the harness itself (``bench.chaos``): put the repository root on the import path
(``bench`` is a directory of scripts run with ``python -m``, not an installed package)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[2])
if REPO not in sys.path:
    sys.path.insert(0, REPO)
