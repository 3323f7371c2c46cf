"""Test-only models and helpers shared by several test modules."""
