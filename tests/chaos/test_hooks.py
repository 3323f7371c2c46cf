"""The chaos hook points are inert unless enabled, and do what the control file says when they are."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dualwrite import hooks


def test_inert_without_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(hooks.ENV, raising=False)
    started = time.perf_counter()
    for _ in range(10_000):
        hooks.point("mirror.before_commit")
    assert time.perf_counter() - started < 0.5
    assert not hooks.enabled()


def test_fail_delay_and_times(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ctl = tmp_path / "hooks.json"
    ctl.write_text(json.dumps({"copy.after_batch_commit": {"action": "fail", "times": 2},
                               "phase.before_flip": {"action": "delay", "seconds": 0.2}}))
    monkeypatch.setenv(hooks.ENV, str(ctl))
    hooks._cache["path"] = None  # re-read
    hooks._fired.clear()
    for _ in range(2):
        with pytest.raises(hooks.ChaosError):
            hooks.point("copy.after_batch_commit")
    hooks.point("copy.after_batch_commit")  # the third time passes: times=2
    started = time.perf_counter()
    hooks.point("phase.before_flip")
    assert time.perf_counter() - started >= 0.18
    hooks.point("mirror.after_commit")  # no rule: nothing
    fired = (tmp_path / "hooks.json.fired").read_text().splitlines()
    assert len(fired) == 3 and fired[0].endswith("copy.after_batch_commit fail")


def test_kill_right_after_an_authoritative_commit(tmp_path: Path) -> None:
    ctl = tmp_path / "hooks.json"
    ctl.write_text(json.dumps({"adapter.after_primary_commit": {"action": "kill"}}))
    code = "from dualwrite import hooks; hooks.point('adapter.after_primary_commit'); print('survived')"
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, hooks.ENV: str(ctl)},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL and "survived" not in proc.stdout
