"""Where the CLI and the client look for Temporal when nothing says otherwise.

Kept apart with no imports: :mod:`starter.options` (loaded for ``dualwrite --help``) and
:mod:`starter.client` (which loads Temporal's SDK) both read these, so the defaults have one home."""

from __future__ import annotations

__all__ = ["ADDRESS_ENV", "DEFAULT_ADDRESS", "DEFAULT_NAMESPACE", "DEFAULT_TASK_QUEUE", "NAMESPACE_ENV",
           "TASK_QUEUE_ENV"]

DEFAULT_ADDRESS = "localhost:7233"
DEFAULT_NAMESPACE = "default"
DEFAULT_TASK_QUEUE = "dualwrite"
"""Equal to ``workflows.models.TASK_QUEUE``; repeated so the CLI's help needs no workflow import."""

ADDRESS_ENV = "DUALWRITE_TEMPORAL_ADDRESS"
NAMESPACE_ENV = "DUALWRITE_NAMESPACE"
TASK_QUEUE_ENV = "DUALWRITE_TASK_QUEUE"
