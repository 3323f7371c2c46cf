"""``dualwrite codec-server``: the payload codec over HTTP, so the Web UI shows encrypted history in clear.

Temporal's remote codec protocol: the Web UI (or ``temporal`` CLI with ``--codec-endpoint``) POSTs
``{"payloads": [...]}`` (protobuf JSON) to ``/decode`` or ``/encode`` and gets the same shape back. The
browser calls it directly, so the server answers CORS preflights for the UI's origin. It holds the key:
run it where only the people allowed to read row keys can reach it (by default it listens on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any

import typer

from starter.command import EXIT_BAD_INPUT

commands = typer.Typer()


DEFAULT_ORIGINS = ("http://localhost:8233", "http://127.0.0.1:8233", "http://localhost:8080")


def make_server(codec: Any, host: str, port: int, origins: list[str]) -> ThreadingHTTPServer:
    """An HTTP server answering ``/encode`` and ``/decode`` with ``codec`` (not started)."""
    from google.protobuf import json_format  # noqa: PLC0415
    from temporalio.api.common.v1 import Payloads  # noqa: PLC0415

    allowed = set(origins)

    class Handler(BaseHTTPRequestHandler):
        def _cors(self) -> None:
            origin = self.headers.get("Origin")
            if origin and ("*" in allowed or origin in allowed):
                self.send_header("Access-Control-Allow-Origin", origin)
                self.send_header("Access-Control-Allow-Credentials", "true")
                self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
                self.send_header("Access-Control-Allow-Headers", "Content-Type, X-Namespace, Authorization")
                self.send_header("Vary", "Origin")

        def do_OPTIONS(self) -> None:
            self.send_response(200)
            self._cors()
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            if not path.endswith(("/encode", "/decode")):
                self._reply(404, {"message": "POST /encode or /decode"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                payloads = json_format.Parse(self.rfile.read(length) or b"{}", Payloads())
                work = codec.encode if path.endswith("/encode") else codec.decode
                done = asyncio.run(work(list(payloads.payloads)))
            except Exception as exc:  # noqa: BLE001 - a bad request must not stop the server
                self._reply(400, {"message": f"{type(exc).__name__}: cannot {path.rsplit('/', 1)[-1]} these "
                                             "payloads"})
                return
            self._reply(200, json.loads(json_format.MessageToJson(Payloads(payloads=done))))

        def _reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self._cors()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - no payload in any log line
            return

    return ThreadingHTTPServer((host, port), Handler)


@commands.command("codec-server")
def codec_server(
    port: Annotated[int, typer.Option("--port", help="port to listen on")] = 8888,
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    origin: Annotated[list[str] | None, typer.Option(
        "--origin", help="Web UI origin allowed to call it (repeatable; default the dev server's and the "
                         "compose stack's UI)")] = None,
    new_key: Annotated[bool, typer.Option("--new-key", help="print a fresh DUALWRITE_PAYLOAD_KEY and exit")] = False,
) -> None:
    """Serve the payload codec (DUALWRITE_PAYLOAD_KEY) to the Temporal Web UI: /encode and /decode.

    In the Web UI: the codec settings (top right, the glasses icon) -> codec server endpoint
    http://127.0.0.1:PORT. Encrypted payloads then show in clear for whoever reaches this server.
    """
    from dualwrite.codec import CLEAR_WARNING, codec_from_env  # noqa: PLC0415
    from dualwrite.codec import new_key as make_key  # noqa: PLC0415
    from dualwrite.errors import ConfigError  # noqa: PLC0415

    if new_key:
        typer.echo(make_key())
        return
    try:
        codec = codec_from_env()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if codec is None:
        typer.echo(f"error: {CLEAR_WARNING}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    server = make_server(codec, host, port, list(origin or DEFAULT_ORIGINS))
    typer.echo(f"codec server on http://{host}:{server.server_address[1]} (key {codec.current}); "
               f"allowed origins: {', '.join(origin or DEFAULT_ORIGINS)}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
