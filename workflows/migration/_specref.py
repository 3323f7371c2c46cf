"""The migration's spec, published once, and the reference to it that activity inputs carry.

Activity inputs used to carry the whole spec: every copy_range, plan_ranges and verify_table input held
every table, store name and setting of the migration (rule 6, docs/architecture.md: history holds names,
never bulk). Now the workflow stores the spec once in the control store (``publish_spec``, idempotent,
keyed by migration and digest) and hands the children a :class:`~workflows.models.SpecRef`; workers resolve
it through a per-process cache keyed by digest."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow

from workflows.migration._constants import SPEC_REF_PATCH
from workflows.migration._state import MigrationState

with workflow.unsafe.imports_passed_through():
    from workflows.models import ActivityNames, PublishSpecInput, SpecRef
    from workflows.retry import ACTIVITY_RETRY

__all__ = ["published_spec_ref", "spec_or_ref"]


async def published_spec_ref(st: MigrationState) -> SpecRef | None:
    """The reference to the migration's spec, publishing the spec first if this migration has not yet (once
    per migration, the carry remembers it across continue-as-new); None in histories from before the patch,
    whose inputs carry the spec inline."""
    if not workflow.patched(SPEC_REF_PATCH):
        return None
    if st.spec_ref is None:
        st.spec_ref = SpecRef.of(st.spec)  # hashes the spec's JSON once per run
    ref = st.spec_ref
    if st.s.spec_published != ref.digest:
        await workflow.execute_activity(
            ActivityNames.PUBLISH_SPEC, PublishSpecInput(spec=st.spec, digest=ref.digest),
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=st.short_heartbeat(), retry_policy=ACTIVITY_RETRY, summary="publish the spec")
        st.s.spec_published = ref.digest
    return ref


async def spec_or_ref(st: MigrationState, patch: str) -> dict[str, Any]:
    """The spec field of an activity input that names the whole migration (a ``SpecCarrier``): the
    reference once the call site's ``patch`` is in (publishing the spec first if this run has not), else the
    spec inline (histories recorded before the patch, and runs begun before specs were published)."""
    if workflow.patched(patch):
        ref = await published_spec_ref(st)
        if ref is not None:
            return {"spec_ref": ref}
    return {"spec": st.spec}
