"""``cdc``: changes are read from the database's log (PostgreSQL logical decoding, MariaDB/MySQL binlog);
the application is not changed (dualwrite/cdc/)."""

from dualwrite.capture._method import CaptureMethod, Evidence

METHOD = CaptureMethod(
    name="cdc", summary="the database's replication log, decoded by the relay",
    inline=False, through_adapter=False, key_log=None, database_capture=True, evidence=Evidence.WORKER,
    relay_lag_gated=True, latency_measurable=False,
    notes_keys=False, writes_before_commit=False, mirrors_after_commit=False, queues_keys=False)
