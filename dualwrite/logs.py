"""Structured logs for the worker, the CLI and applications: JSON in production, readable in a terminal.

One configuration serves both logging APIs in use here: ``structlog`` loggers and the standard library
loggers the core, the adapter and Temporal's own ``workflow.logger`` / ``activity.logger`` write to. Every
record passes the same processors, so every line carries, where known:

- ``migration`` and ``phase``: bound by the activity interceptor (:mod:`activities.observe`) from the
  activity's input, or passed by workflow code as ``workflow.logger.info(..., extra={"phase": ...})``;
- ``workflow_id``, ``run_id``, ``workflow_type``: from the ``temporal_workflow`` extra that Temporal's
  workflow logger adds, or from ``activity.info()`` inside an activity;
- ``activity_id``, ``activity_type``, ``attempt``: from ``activity.info()``.

Credentials never reach a log line: :func:`redact_secrets` runs last before rendering and passes every
string value (nested too) through :func:`dualwrite.config.redact`, so a store URL inside an exception
message comes out as ``postgresql://app:***@db/app``. Row values are a matter of what callers log: the
worker and the CLI log names, counts and key-range bounds only.

No Temporal import at module level: applications use this module. Temporal context is looked up only
when ``temporalio`` is already imported (that is, inside a worker).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

from dualwrite.config import redact

FORMAT_ENV = "DUALWRITE_LOG_FORMAT"
"""``json`` or ``console``; default: console on a terminal, JSON otherwise."""
LEVEL_ENV = "DUALWRITE_LOG_LEVEL"

WORKFLOW_ID_PREFIX = "dualwrite-"

#: record attributes (``extra=``) lifted into the event, in this order
_LIFTED = ("migration", "phase", "table", "tenant", "entity")
_WORKFLOW_FIELDS = {"workflow_id": "workflow_id", "run_id": "run_id", "workflow_type": "workflow_type"}
_ACTIVITY_FIELDS = {"activity_id": "activity_id", "activity_type": "activity_type", "attempt": "attempt",
                    "workflow_id": "workflow_id", "workflow_run_id": "run_id", "workflow_type": "workflow_type"}


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value


def redact_secrets(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Processor: every string value, however deep, with passwords in URLs and DSNs replaced by ``***``.

    It runs after the exception has been formatted, so a traceback quoting a connection URL is redacted
    too."""
    for key in list(event.keys()):
        event[key] = _redact_value(event[key])
    return event


def migration_of_workflow(workflow_id: str, workflow_type: str | None = None) -> str | None:
    """The migration name of a MigrationWorkflow id (``dualwrite-<name>``); None for other workflows,
    whose ids append a suffix to that and so cannot be split back unambiguously."""
    if workflow_type == "MigrationWorkflow" and workflow_id.startswith(WORKFLOW_ID_PREFIX):
        return workflow_id[len(WORKFLOW_ID_PREFIX):]
    return None


def _temporal_activity_info() -> Any:
    """``activity.info()`` when called inside an activity of a worker in this process, else None."""
    mod = sys.modules.get("temporalio.activity")
    if mod is None:
        return None
    try:
        if mod.in_activity():
            return mod.info()
    except Exception:  # noqa: BLE001 - never let context lookup break a log call
        return None
    return None


_INFO_SUFFIX = re.compile(r" \(\{'[a-z_]+': .*\}\)$", re.DOTALL)


def add_temporal_context(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Processor: bind migration / phase / workflow / activity ids from the record or the activity context."""
    record = event.get("_record")
    if record is not None:
        _lift_record(record, event)
    if "activity_id" not in event:
        info = _temporal_activity_info()
        if info is not None:
            for src, dst in _ACTIVITY_FIELDS.items():
                value = getattr(info, src, None)
                if value is not None:
                    event.setdefault(dst, value)
    if "migration" not in event and "workflow_id" in event:
        name = migration_of_workflow(str(event["workflow_id"]), event.get("workflow_type"))
        if name:
            event["migration"] = name
    return event


def _lift_record(record: Any, event: MutableMapping[str, Any]) -> None:
    """Fields of a stdlib log record (ours, or Temporal's with its workflow / activity info) into the event."""
    if hasattr(record, "temporal_workflow") or hasattr(record, "temporal_activity"):
        # Temporal's loggers also append the same info to the message; it is in fields now
        _quiet_temporal_messages()
        if isinstance(event.get("event"), str):
            event["event"] = _INFO_SUFFIX.sub("", event["event"])
    for attr in _LIFTED:
        value = getattr(record, attr, None)
        if value is not None:
            event.setdefault(attr, value)
    for attr, fields in (("temporal_workflow", _WORKFLOW_FIELDS), ("temporal_activity", _ACTIVITY_FIELDS)):
        info = getattr(record, attr, None)
        if isinstance(info, Mapping):
            for src, dst in fields.items():
                if info.get(src) is not None:
                    event.setdefault(dst, info[src])


def _drop_internal(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.pop("_record", None)
    event.pop("_from_structlog", None)
    return event


def use_json(stream: TextIO | None = None) -> bool:
    """JSON unless a person is watching: ``$DUALWRITE_LOG_FORMAT`` wins, else console on a TTY."""
    fmt = os.environ.get(FORMAT_ENV, "").strip().lower()
    if fmt in ("json", "console"):
        return fmt == "json"
    s = stream if stream is not None else sys.stderr
    try:
        return not s.isatty()
    except (AttributeError, ValueError):
        return True


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_temporal_context,
    ]


def configure(*, json_logs: bool | None = None, level: int | str | None = None, stream: TextIO | None = None,
              filename: str | os.PathLike[str] | None = None) -> logging.Handler:
    """Route all logging (stdlib and structlog) through one handler with the processors above.

    ``json_logs`` None picks by :func:`use_json`; ``filename`` logs to a file (always JSON: files are read
    by tools) instead of ``stream``. Idempotent: a second call replaces the handler of the first. Returns
    the handler (tests capture from it).
    """
    lvl = level if level is not None else os.environ.get(LEVEL_ENV, "INFO")
    if isinstance(lvl, str):
        lvl = logging.getLevelName(lvl.upper())
        if not isinstance(lvl, int):
            lvl = logging.INFO
    if filename is not None:
        as_json = True
        handler: logging.Handler = logging.FileHandler(filename, encoding="utf-8")
    else:
        as_json = use_json(stream) if json_logs is None else json_logs
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    renderer: Any = (structlog.processors.JSONRenderer(sort_keys=False) if as_json
                     else structlog.dev.ConsoleRenderer(colors=_colors(stream)))
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _drop_internal,
            structlog.processors.format_exc_info,  # before redaction: tracebacks may quote a URL
            redact_secrets,
            renderer,
        ],
        pass_foreign_args=False,
        keep_exc_info=False,
        keep_stack_info=False,
    )
    handler.setFormatter(formatter)
    handler.set_name("dualwrite")
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == "dualwrite":
            root.removeHandler(h)
            h.close()
    root.addHandler(handler)
    root.setLevel(lvl)
    structlog.configure(
        processors=[*_shared_processors(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    _quiet_temporal_messages()
    return handler


def _colors(stream: TextIO | None) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    s = stream if stream is not None else sys.stderr
    try:
        return bool(s.isatty())
    except (AttributeError, ValueError):
        return False


def _quiet_temporal_messages() -> None:
    """Temporal's loggers append the workflow / activity info to the *message* text; the processors put it
    in fields already, so keep messages short. Only when temporalio is loaded (a worker)."""
    for name in ("temporalio.workflow", "temporalio.activity"):
        mod = sys.modules.get(name)
        adapter = getattr(mod, "logger", None) if mod is not None else None
        if adapter is not None and hasattr(adapter, "workflow_info_on_message"):
            adapter.workflow_info_on_message = False
        if adapter is not None and hasattr(adapter, "activity_info_on_message"):
            adapter.activity_info_on_message = False


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger (``log.info("event", key=value)``) rendered like every other line."""
    return structlog.get_logger(name, **initial)


def bind(**values: Any) -> None:
    """Bind context (e.g. ``migration=``, ``phase=``) to every log line of this task / thread."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in values.items() if v is not None})


def unbind(*keys: str) -> None:
    structlog.contextvars.unbind_contextvars(*keys)
