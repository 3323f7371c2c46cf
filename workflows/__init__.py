"""Deterministic orchestration: the migration phase machine and its backfill / verify / repair children."""
