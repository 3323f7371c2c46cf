"""Private PostgreSQL and MariaDB servers with log capture switched on, for tests and benchmarks.

The machine's own servers run ``wal_level=replica`` and MariaDB without ``log_bin``; both settings need a
restart, which nobody may impose on a shared server. So the tests and ``bench/cdc.py`` start their own
instances on free ports under a directory of their own (``initdb`` run as the ``postgres`` user when we are
root; ``mariadb-install-db`` + ``mariadbd --log-bin ...``), and stop them at the end. Starting is
idempotent: a directory whose server still answers is reused, one whose server is gone is started again.
Durability is traded for speed (``fsync=off``, ``sync_binlog=0``): these servers hold throwaway data. Not
``synchronous_commit=off``: logical decoding reads only WAL already flushed, so a committed change would
reach the slot up to ``wal_writer_delay`` later.

Command line (for a shell or CI): ``python -m dualwrite.cdc.servers start DIR`` prints the two URLs' host
and port; ``python -m dualwrite.cdc.servers stop DIR`` stops them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dualwrite.errors import ServerStartError


@dataclass
class Server:
    kind: str  # "postgresql" | "mariadb"
    host: str
    port: int
    user: str
    datadir: Path

    def url(self, db: str) -> str:
        """A store URL with the project's preferred driver for the engine (config.normalise_url)."""
        from dualwrite.config import normalise_url  # noqa: PLC0415 - test servers load no config unless asked

        scheme = "postgresql" if self.kind == "postgresql" else "mysql"
        return normalise_url(f"{scheme}://{self.user}@{self.host}:{self.port}/{db}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found and name != "initdb" and name != "pg_ctl":
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if cands:
        return cands[-1]
    if found:
        return found
    raise ServerStartError(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the postgres user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _run(cmd: list[str], what: str, log: Path) -> None:
    with log.open("ab") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False, timeout=120)  # noqa: S603 - our own argv, no shell
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-1500:]
        raise ServerStartError(f"{what} failed (exit {proc.returncode}); log {log}:\n{tail}")


def start_postgres(root: Path) -> Server:
    """A PostgreSQL with ``wal_level=logical`` under ``root/pg`` (trust auth, user ``postgres``)."""
    root.mkdir(parents=True, exist_ok=True)
    data, port_file, log = root / "pg", root / "pg.port", root / "pg.log"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    if port_file.exists() and (data / "postmaster.pid").exists():
        port = int(port_file.read_text())
        if _answers(port):
            return Server("postgresql", "127.0.0.1", port, "postgres", data)
    if not (data / "PG_VERSION").exists():
        if data.exists():
            shutil.rmtree(data)
        _run(_as_postgres([_pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                           "--no-sync", "--no-instructions"]), "initdb", log)
    if os.geteuid() == 0:
        log.touch()
        shutil.chown(log, "postgres")  # the server appends its own log there
    with contextlib.suppress(FileNotFoundError):
        (data / "postmaster.pid").unlink()  # a server killed with the machine: its pid file is stale
    port = _free_port()
    opts = (f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c wal_level=logical -c max_replication_slots=20 "
            "-c max_wal_senders=20 -c fsync=off -c full_page_writes=off "
            "-c max_connections=200")
    _run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", opts, "start"]),
         "pg_ctl start", log)
    port_file.write_text(str(port))
    return Server("postgresql", "127.0.0.1", port, "postgres", data)


def stop_postgres(root: Path) -> None:
    data = root / "pg"
    if (data / "postmaster.pid").exists():
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),  # noqa: S603 - our own argv, no shell
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=60)


def _my_bin(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}")
                                            if os.path.exists(p)), None)
        if found:
            return found
    raise ServerStartError(f"MariaDB's {names[0]} is not installed (apt-get install mariadb-server)")


def start_mariadb(root: Path, server_id: int = 4242) -> Server:
    """A MariaDB with a ROW binlog (full images and metadata) under ``root/my`` (root, empty password)."""
    root.mkdir(parents=True, exist_ok=True)
    data, port_file, log = root / "my", root / "my.port", root / "my.log"
    pid_file = root / "my.pid"
    if port_file.exists() and pid_file.exists():
        port = int(port_file.read_text())
        if _answers(port):
            return Server("mariadb", "127.0.0.1", port, "root", data)
    if not (data / "mysql").exists():
        if data.exists():
            shutil.rmtree(data)
        _run([_my_bin("mariadb-install-db", "mysql_install_db"), "--no-defaults", f"--datadir={data}",
              "--user=root" if os.geteuid() == 0 else f"--user={os.environ.get('USER', 'mysql')}",
              "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"],
             "mariadb-install-db", log)
    port = _free_port()
    cmd = [_my_bin("mariadbd", "mysqld"), "--no-defaults", f"--datadir={data}", f"--port={port}",
           "--bind-address=127.0.0.1", f"--socket={root / 'my.sock'}", f"--pid-file={pid_file}",
           f"--log-error={log}", f"--log-bin={data / 'binlog'}", "--binlog-format=ROW",
           "--binlog-row-image=FULL", "--binlog-row-metadata=FULL", f"--server-id={server_id}",
           "--skip-name-resolve", "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=2",
           "--sync-binlog=0", "--innodb-doublewrite=0", "--max-connections=300"]
    if os.geteuid() == 0:
        cmd.append("--user=root")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # noqa: S603 - our own argv, no shell
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not _answers(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise ServerStartError(f"mariadbd did not start (exit {proc.poll()}); log {log}:\n{tail}")
        time.sleep(0.1)
    port_file.write_text(str(port))
    return Server("mariadb", "127.0.0.1", port, "root", data)


def stop_mariadb(root: Path) -> None:
    pid_file = root / "my.pid"
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text().strip())
    except ValueError:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 15)
    deadline = time.monotonic() + 5  # then killed: throwaway data, and open replica connections slow it down
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break  # our own child (started by this process): reaped, not left a zombie
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 9 if time.monotonic() > deadline else 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()


def watch(root: Path, pid: int, *, remove: bool = True) -> None:
    """Stop the servers under ``root`` (and remove it) once process ``pid`` is gone, from a detached
    process: a test session killed by a timeout must not leave two database servers running."""
    subprocess.Popen([sys.executable, "-m", "dualwrite.cdc.servers", "watch", str(root), str(pid),  # noqa: S603 - our own argv, no shell
                      "remove" if remove else "keep"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still answers kill(0)
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "watch":
        root, pid = Path(argv[1]), int(argv[2])
        while _alive(pid):
            time.sleep(1.0)
        stop_postgres(root)
        stop_mariadb(root)
        if argv[3] == "remove":
            shutil.rmtree(root, ignore_errors=True)
        return 0
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python -m dualwrite.cdc.servers start|stop DIR", file=sys.stderr)
        return 2
    root = Path(argv[1])
    if argv[0] == "stop":
        stop_postgres(root)
        stop_mariadb(root)
        return 0
    pg, my = start_postgres(root), start_mariadb(root)
    print(f"postgresql 127.0.0.1:{pg.port} user {pg.user}\nmariadb 127.0.0.1:{my.port} user {my.user}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
