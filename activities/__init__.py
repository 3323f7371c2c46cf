"""Thin Temporal adapters over the dualwrite core: they own heartbeats and error mapping."""
