"""The steering commands: ``advance``, ``rollback``, ``abort``, ``pause``, ``resume``, ``approve``, ``hold`` and
``verify``, each with ``--tenant`` where a migration moves tenant by tenant.

Each is a Temporal Update on the migration's workflow (:mod:`starter.transition`), so the workflow's
validator decides and a refusal comes back at once with its reason. What is checked here is only what needs
no workflow: a reason where one is required, and the confirmation ``--drop`` asks for.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from starter.command import EXIT_BAD_INPUT, EXIT_FAILED, command, err, fail
from starter.defaults import DEFAULT_ADDRESS, DEFAULT_NAMESPACE
from starter.options import (
    Address,
    ConfirmCleanup,
    ConfirmDrop,
    Drop,
    DryRun,
    Name,
    Namespace,
    OverrideStuck,
    PhaseOpt,
    Reason,
    RequiredReason,
    Target,
    TenantOpt,
    Timeout,
)

__all__ = ["abort", "advance", "approve", "commands", "hold", "pause", "resume", "rollback", "verify"]

commands = typer.Typer()


def _transition(update: str, name: str, target: Target, **request: Any) -> None:
    """Send the Update (see :func:`starter.transition.transition`)."""
    from starter.transition import transition  # noqa: PLC0415 - Temporal loads when a command runs, not for --help

    transition(update, name, target, **request)


def _drop_confirmation(name: str, drop: bool, confirm_cleanup: bool, confirm_drop: str) -> str:
    """--drop asks again: the migration's name, typed at a prompt or given with --confirm-drop."""
    if not drop:
        if confirm_drop:
            fail("--confirm-drop only goes with --drop", EXIT_BAD_INPUT)
        return ""
    if not confirm_cleanup:
        fail("--drop only applies when entering CLEANUP: add --confirm-cleanup", EXIT_BAD_INPUT)
    if confirm_drop:
        if confirm_drop != name:
            fail(f"--confirm-drop must be the migration's name {name!r}", EXIT_BAD_INPUT)
        return confirm_drop
    if not sys.stdin.isatty():
        fail("--drop asks for the migration's name: run it in a terminal, or add --confirm-drop NAME",
             EXIT_BAD_INPUT)
    err.print(f"[bold red]--drop[/] deletes the old tables of {escape(name)} for good (the default renames "
              "them and keeps the data).")
    typed = typer.prompt("type the migration's name to drop its old tables", default="", show_default=False)
    if typed.strip() != name:
        fail("not confirmed: the old tables are kept", EXIT_FAILED)
    return name


@command(commands, rich_help_panel="Steer")
def advance(
    name: Name,
    to: PhaseOpt = None,
    dry_run: DryRun = False,
    force: Annotated[bool, typer.Option("--force", help="Move even though the cutover gate does not pass "
                                                        "(needs --reason; recorded).")] = False,
    reason: Reason = "",
    tenant: TenantOpt = None,
    override_stuck: OverrideStuck = False,
    confirm_cleanup: ConfirmCleanup = False,
    drop: Drop = False,
    confirm_drop: ConfirmDrop = "",
    leaving: Annotated[str | None, typer.Option(
        "--from", metavar="PHASE", show_default=False,
        help="The phase this advance leaves (default: the current one, read from status). When the migration "
             "is no longer in it, nothing moves and the command says so: a repeated or concurrent advance "
             "never moves two phases.")] = None,
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    timeout: Timeout = 600.0,
) -> None:
    """Move a migration (or --tenant one tenant) to its next phase.

    Entering CUTOVER_READS / CUTOVER_WRITES is gated: shadow-read match rate, secondary write success,
    p99 latency impact, backfill completion and the reconciliation gap of a recent verification (one runs
    first when the last is too old). --dry-run prints that evaluation and what would change, and changes
    nothing. Entering CLEANUP is the point of no return and needs --confirm-cleanup. A refused move prints
    the workflow's reason (and the gate's evidence) and exits 1; nothing is recorded for it. The advance
    names the phase it leaves (--from, default the current phase): run twice, or by two operators at once,
    it moves one phase and the other call says "nothing done" (exit 0).
    """
    if force and not reason.strip():
        fail("--force needs --reason TEXT: a forced move is recorded with why", EXIT_BAD_INPUT)
    if override_stuck and not reason.strip():
        fail("--override-stuck-repairs needs --reason TEXT: the writes it gives up are recorded with why",
             EXIT_BAD_INPUT)
    confirmed = "" if dry_run else _drop_confirmation(name, drop, confirm_cleanup, confirm_drop)
    _transition("advance", name, Target(address, namespace, timeout), to=to, reason=reason, force=force,
               dry_run=dry_run, tenant=tenant, confirm_cleanup=confirm_cleanup, drop=drop,
               confirm_drop=confirmed or (name if dry_run and drop else ""), leaving=leaving,
               override_stuck=override_stuck)


@command(commands, rich_help_panel="Steer")
def rollback(
    name: Name,
    reason: RequiredReason,
    to: PhaseOpt = None,
    dry_run: DryRun = False,
    tenant: TenantOpt = None,
    override_stuck: OverrideStuck = False,
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    timeout: Timeout = 600.0,
) -> None:
    """Roll a migration (or --tenant one tenant) back to the previous phase (or --to an earlier one), old
    store authoritative again as the phase requires. Possible from every phase before CLEANUP. Out of
    CUTOVER_WRITES the old store is first verified against the new one and repaired; only then does
    authority flip back (behind the phase barrier)."""
    if not reason.strip():
        fail("--reason must say why: a rollback is recorded with its reason", EXIT_BAD_INPUT)
    _transition("rollback", name, Target(address, namespace, timeout), to=to, reason=reason, dry_run=dry_run,
               tenant=tenant, override_stuck=override_stuck)


@command(commands, rich_help_panel="Steer")
def abort(
    name: Name,
    reason: RequiredReason,
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    timeout: Timeout = 600.0,
) -> None:
    """Abandon a migration, from any phase before CLEANUP: authority returns to the old store (out of
    CUTOVER_WRITES through the same levelling and write fence as a rollback), then the migration's capture
    triggers, key-log entries, relay, child workflows and control rows are removed and the workflow
    completes as ABORTED. The old store's data is not touched; the new store's tables and data are left for
    you to drop or keep. Refused in CLEANUP and DONE."""
    if not reason.strip():
        fail("--reason must say why: an abort is recorded with its reason", EXIT_BAD_INPUT)
    _transition("abort", name, Target(address, namespace, timeout), reason=reason)


@command(commands, rich_help_panel="Steer")
def pause(
    name: Name,
    reason: Reason = "",
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    timeout: Timeout = 60.0,
) -> None:
    """Pause a migration: phase work (backfill, verification) stops at a checkpoint; no phase moves until
    `resume`. Dual writes keep flowing."""
    _transition("pause", name, Target(address, namespace, timeout), reason=reason)


@command(commands, rich_help_panel="Steer")
def resume(
    name: Name,
    reason: Reason = "",
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    timeout: Timeout = 60.0,
) -> None:
    """Resume a paused migration from its checkpoints."""
    _transition("resume", name, Target(address, namespace, timeout), reason=reason)


@command(commands, rich_help_panel="Steer")
def approve(
    name: Name,
    reason: Reason = "",
    tenant: TenantOpt = None,
    override_stuck: OverrideStuck = False,
    confirm_cleanup: ConfirmCleanup = False,
    drop: Drop = False,
    confirm_drop: ConfirmDrop = "",
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    timeout: Timeout = 60.0,
) -> None:
    """Approve the pending gated step (for specs with gates.require_approval, and the hold before CLEANUP
    in auto mode, which needs --confirm-cleanup)."""
    confirmed = _drop_confirmation(name, drop, confirm_cleanup, confirm_drop)
    _transition("approve", name, Target(address, namespace, timeout), reason=reason, tenant=tenant,
               confirm_cleanup=confirm_cleanup, drop=drop, confirm_drop=confirmed)


@command(commands, rich_help_panel="Steer")
def hold(
    name: Name,
    reason: Reason = "",
    release: Annotated[bool, typer.Option("--release", help="Release the hold.")] = False,
    tenant: TenantOpt = None,
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    timeout: Timeout = 60.0,
) -> None:
    """Hold a migration (or --tenant one tenant) where it is: no advance, manual or automatic, until
    `hold --release`. Phase work, verification and rollbacks go on. An automatic rollback places a hold
    by itself."""
    if not release and not reason.strip():
        fail("--reason must say why: a hold is shown to whoever wants to advance", EXIT_BAD_INPUT)
    _transition("hold", name, Target(address, namespace, timeout), reason=reason, tenant=tenant, release=release)


@command(commands, rich_help_panel="Steer")
def verify(
    name: Name,
    reason: Reason = "",
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the verification to finish; exit 1 if it "
                                                      "found drift or compared nothing.")] = False,
    tenant: TenantOpt = None,
    address: Address = DEFAULT_ADDRESS,
    namespace: Namespace = DEFAULT_NAMESPACE,
    timeout: Timeout = 60.0,
) -> None:
    """Run a full verification (chunked compare, repair, re-verify) now."""
    if wait and tenant:
        fail("--wait follows the migration-wide verification; a tenant's result shows in `status`", EXIT_BAD_INPUT)
    from starter.transition import verify_and_wait  # noqa: PLC0415 - Temporal loads when a command runs, not for --help

    verify_and_wait(name, Target(address, namespace, timeout), reason=reason, tenant=tenant, wait=wait)
