"""A migration's spec by reference (:class:`SpecRef`) and the base of the activity inputs that carry one
(:class:`SpecCarrier`): separate from the other models so every model module can use them."""

from __future__ import annotations

import hashlib

from pydantic import Field, model_validator

from dualwrite.spec import MigrationSpec
from workflows.models._core import _Model

__all__ = ["SpecCarrier", "SpecRef", "spec_digest"]


def spec_digest(spec: MigrationSpec) -> str:
    """sha256 of the spec's JSON: the key a published spec is stored and cached under."""
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()


class SpecRef(_Model):
    """A migration's spec by reference: the workflow publishes the spec once to the control store
    (``dualwrite_specs``, keyed by migration and digest) and activity inputs carry these three names instead
    of the whole spec, so a copy_range input stays a few hundred bytes however many tables the spec has.
    Workers resolve it through a per-process cache keyed by ``digest``."""

    migration: str
    control_store: str
    digest: str = Field(description="sha256 of the spec's JSON, computed once by the workflow")

    @classmethod
    def of(cls, spec: MigrationSpec) -> SpecRef:
        """The reference to ``spec`` (hashes its JSON: call once per workflow run, not per activity)."""
        return cls(migration=spec.name, control_store=spec.control, digest=spec_digest(spec))


class SpecCarrier(_Model):
    """Base of activity inputs that name a whole migration: exactly one of ``spec_ref`` (current workflows:
    the spec published once, see :class:`SpecRef`) and ``spec`` (inline: recorded histories, and workflows
    started before their call site sent references) is set. Workers resolve it with
    ``StoreCache.spec_of``."""

    spec: MigrationSpec | None = None
    spec_ref: SpecRef | None = None

    @model_validator(mode="after")
    def _one_spec(self) -> SpecCarrier:
        if (self.spec is None) == (self.spec_ref is None):
            raise ValueError(f"a {type(self).__name__} carries exactly one of spec and spec_ref")
        return self

    def inline_spec(self) -> MigrationSpec:
        """The spec carried inline (after the worker resolved the reference, or from a recorded history)."""
        if self.spec is None:
            raise ValueError(f"{type(self).__name__}: the spec is not inline here (only a spec_ref)")
        return self.spec
