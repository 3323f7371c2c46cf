"""dualwrite: zero-downtime database migrations with dual writes, driven by durable Temporal workflows.

The public API is listed in ``__all__`` and loaded lazily: Temporal workflow code imports
``dualwrite.spec`` inside its sandbox, and an eager import of SQLAlchemy and the drivers here would slow
every workflow run. ``from dualwrite import copy_range`` still works as usual.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # errors: one hierarchy, catch DualwriteError for all of it
    "DualwriteError": "dualwrite.errors",
    "ConfigError": "dualwrite.errors",
    "SpecError": "dualwrite.errors",
    "SchemaError": "dualwrite.errors",
    "UnknownStoreError": "dualwrite.errors",
    "StoreError": "dualwrite.errors",
    "StoreUnavailableError": "dualwrite.errors",
    "WriteFencedError": "dualwrite.errors",
    "StrictWriteError": "dualwrite.errors",
    "VerificationError": "dualwrite.errors",
    "Problem": "dualwrite.errors",
    # spec and configuration
    "MigrationSpec": "dualwrite.spec",
    "TableSpec": "dualwrite.spec",
    "ReverseMap": "dualwrite.spec",
    "load_spec": "dualwrite.spec",
    "parse_spec": "dualwrite.spec",
    "StoreResolver": "dualwrite.config",
    "StoreRef": "dualwrite.config",
    "redact": "dualwrite.config",
    # stores and mappings
    "Store": "dualwrite.store",
    "open_store": "dualwrite.store",
    "TableMapping": "dualwrite.mapping",
    "compile_table": "dualwrite.mapping",
    "identity_mapping": "dualwrite.mapping",
    "preflight": "dualwrite.preflight",
    # the data path
    "mirror_keys": "dualwrite.mirror",
    "MirrorResult": "dualwrite.mirror",
    "copy_range": "dualwrite.backfill_copy",
    "CopyProgress": "dualwrite.backfill_copy",
    "verify_range": "dualwrite.verify",
    "verify_keys": "dualwrite.verify",
    "VerifyReport": "dualwrite.verify",
    "Difference": "dualwrite.verify",
    "DiffKind": "dualwrite.verify",
    "repair": "dualwrite.repair",
    "RepairResult": "dualwrite.repair",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dualwrite' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return [*globals(), *__all__]

