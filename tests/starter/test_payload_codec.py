"""Encrypted history: with DUALWRITE_PAYLOAD_KEY set, no key value reaches Temporal in clear.

A table keyed by e-mail address is backfilled in ranges whose bounds are e-mail addresses. Read with a
client that has no codec (what the server stores, what an exported history holds), the histories of the
migration and of its children contain none of them; with the codec, status works as always; and the
codec server decodes the same payloads for the Web UI, answering its CORS preflight.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from conftest import (
    NO_TRAFFIC_GATES,
    MigrationDriver,
    execute,
    fast_tuning,
    history_text,
    migration_histories,
)
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads
from temporalio.client import Client

from dualwrite.codec import KEY_ENV, data_converter, new_key
from dualwrite.config import StoreResolver
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store

DOMAIN = "mail-secret.example"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: bytes, origin: str) -> dict[str, object]:
    req = urllib.request.Request(url, data=body, method="POST", headers={  # noqa: S310 - local test server
        "Content-Type": "application/json", "X-Namespace": "default", "Origin": origin})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - local test server
        return json.loads(resp.read())  # type: ignore[no-any-return]


async def test_string_keys_never_reach_history_in_clear_with_the_codec(
        temporal_client: Client, dw_resolver: StoreResolver, pg_old: Store, pg_new: Store, table_name: str,
        tmp_path: Path) -> None:
    from activities.core import DualwriteActivities
    from worker import build_worker

    ddl = f"CREATE TABLE {table_name} (email text PRIMARY KEY, name text NOT NULL, version bigint NOT NULL)"
    execute(pg_old, ddl, f"INSERT INTO {table_name} SELECT 'user' || g || '@{DOMAIN}', 'n' || g, 1 "
                         "FROM generate_series(1, 400) g")
    execute(pg_new, ddl)
    key = new_key()
    codec_client = await Client.connect(temporal_client.service_client.config.target_host,
                                        namespace=temporal_client.namespace,
                                        data_converter=data_converter({KEY_ENV: key}))
    name = f"codec-{secrets.token_hex(3)}"
    queue = f"codec-{secrets.token_hex(3)}"
    spec = MigrationSpec.model_validate({
        "name": name, "old": "pgold", "new": "pgnew", "gates": NO_TRAFFIC_GATES,
        "tables": [{"source": table_name, "batch_size": 50, "version_column": "version"}]})
    acts = DualwriteActivities(dw_resolver)
    driver = MigrationDriver(codec_client)
    async with build_worker(codec_client, acts, task_queue=queue, max_activities=4, shutdown_seconds=5):
        handle = await driver.start(spec, task_queue=queue, tuning=fast_tuning(backfill_ranges=4))
        await driver.advance_to(handle, "BACKFILL")
        st = await driver.wait(handle, lambda s: bool(s.tables) and s.tables[0].done, "backfill done", 120)
        assert st.tables[0].rows_copied == 400  # status through the codec works as always
        await handle.terminate("test over")
    acts.close()

    # what the server holds, read without the codec: no e-mail address (names of tables and stores are
    # not data: the Web UI's summary still shows them)
    histories = await migration_histories(temporal_client, handle.id)
    assert len(histories) >= 2  # the migration and its backfill child
    raw = "\n".join(history_text(h) for h in histories)
    assert DOMAIN not in raw
    assert base64.b64encode(b"binary/encrypted").decode() in raw

    # the Web UI's view, through the codec server
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", "from starter.cli import main; main()", "codec-server",
                               "--port", str(port)], env={**os.environ, KEY_ENV: key},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            await asyncio.sleep(0.1)
        origin = "http://localhost:8233"
        pre = urllib.request.Request(f"http://127.0.0.1:{port}/decode", method="OPTIONS", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace"})
        with urllib.request.urlopen(pre, timeout=10) as resp:  # noqa: S310
            assert resp.headers["Access-Control-Allow-Origin"] == origin
            assert "x-namespace" in resp.headers["Access-Control-Allow-Headers"].lower()
        payloads = [p for h in histories for e in h.events for p in _payloads(e)]
        body = json_format.MessageToJson(Payloads(payloads=payloads)).encode()
        decoded = await asyncio.to_thread(post, f"http://127.0.0.1:{port}/decode", body, origin)
        clear = "\n".join(base64.b64decode(str(p.get("data", ""))).decode("utf-8", "replace")
                          for p in decoded["payloads"])  # type: ignore[union-attr]
        assert f"@{DOMAIN}" in clear and table_name in clear
    finally:
        server.terminate()
        server.wait(10)


def _payloads(event: object) -> list[object]:
    """Every payload of a history event (inputs, results, heartbeat details, memo-free)."""
    out: list[object] = []

    def walk(msg: object) -> None:
        for field, value in msg.ListFields():  # type: ignore[attr-defined]
            if field.message_type is None:
                continue
            items = list(value) if isinstance(value, Sequence) or hasattr(value, "append") else [value]
            for item in items:
                if type(item).__name__ == "Payload":
                    out.append(item)
                elif hasattr(item, "ListFields"):
                    walk(item)

    walk(event)
    return out


async def test_keys_rotate_and_plain_payloads_still_read() -> None:
    from temporalio.api.common.v1 import Payload

    from dualwrite.codec import OLD_KEYS_ENV, codec_from_env
    from dualwrite.errors import ConfigError

    first, second = new_key(), new_key()
    plain = [Payload(metadata={"encoding": b"json/plain"}, data=b'{"email": "a@b.example"}')]
    old_codec = codec_from_env({KEY_ENV: first})
    assert old_codec is not None
    sealed = await old_codec.encode(plain)
    assert b"a@b.example" not in sealed[0].SerializeToString()
    rotated = codec_from_env({KEY_ENV: second, OLD_KEYS_ENV: first})
    assert rotated is not None
    assert await rotated.decode(sealed) == plain  # written under the old key, read after the rotation
    assert await rotated.decode(plain) == plain  # written before any key was set
    newer = await rotated.encode(plain)
    assert newer[0].metadata["encryption-key-id"] != sealed[0].metadata["encryption-key-id"]
    alone = codec_from_env({KEY_ENV: second})
    assert alone is not None
    try:
        await alone.decode(sealed)
    except ConfigError as exc:
        assert "DUALWRITE_PAYLOAD_OLD_KEYS" in str(exc)
    else:
        raise AssertionError("a payload under an unknown key was decoded")
    try:
        codec_from_env({KEY_ENV: "too-short"})
    except ConfigError as exc:
        assert "too-short" not in str(exc)
    else:
        raise AssertionError("a bad key was accepted")


def test_check_warns_that_string_keys_travel_in_clear_without_a_key(
        pg_old: Store, pg_new: Store, table_name: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from starter.cli import _register, app

    _register()
    ddl = f"CREATE TABLE {table_name} (email text PRIMARY KEY, name text)"
    execute(pg_old, ddl)
    execute(pg_new, ddl)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: m\nold: pgold\nnew: pgnew\ntables: [{{source: {table_name}}}]\n")
    env = {"DUALWRITE_CONFIG": "", "DUALWRITE_TEMPORAL_ADDRESS": "127.0.0.1:1",
           "DUALWRITE_STORE_PGOLD": pg_old.ref.url, "DUALWRITE_STORE_PGNEW": pg_new.ref.url}
    clear = CliRunner().invoke(app, ["check", str(spec)], env={**env, KEY_ENV: ""})
    assert clear.exit_code == 0, clear.output
    assert f"warning: {table_name}: keys are not integers. {KEY_ENV} is not set" in clear.stderr
    sealed = CliRunner().invoke(app, ["check", str(spec)], env={**env, KEY_ENV: new_key()})
    assert sealed.exit_code == 0 and "warning" not in sealed.stderr


def test_dev_server_ui_is_pointed_at_the_codec_server(tmp_path: Path) -> None:
    """``dualwrite dev --codec-endpoint URL``: the Web UI it starts decodes through that codec server."""
    import time

    port, ui = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from starter.cli import main; main()", "dev", "--port", str(port), "--ui-port",
         str(ui), "--ip", "127.0.0.1", "--ephemeral", "--codec-endpoint", "http://127.0.0.1:8888"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})
    try:
        deadline = time.monotonic() + 60
        settings: dict[str, object] = {}
        while time.monotonic() < deadline and not settings:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ui}/api/v1/settings", timeout=5) as resp:
                    settings = json.loads(resp.read())
            except OSError:
                time.sleep(0.5)
        assert settings, "the Web UI did not answer"
        assert settings["Codec"]["Endpoint"] == "http://127.0.0.1:8888"  # type: ignore[index]
    finally:
        proc.terminate()
        proc.wait(30)
