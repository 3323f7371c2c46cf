"""MySQL/MariaDB without C headers: PyMySQL by default, mysqlclient when installed, a clear error without
either. Each case runs in its own interpreter with the missing driver made unimportable, the way a fresh
``pip install -e .`` (no mysqlclient) or a broken environment sees it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import MY_HOST, MY_PORT, MY_USER


def run_without(blocked: list[str], code: str) -> subprocess.CompletedProcess[str]:
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60)


def test_mysql_urls_use_pymysql_when_mysqlclient_is_not_installed() -> None:
    proc = run_without(["MySQLdb", "_mysql"], f"""
        from dualwrite.config import StoreRef, normalise_url
        from dualwrite.store import Store
        for scheme in ("mysql", "mariadb"):
            url = normalise_url(f"{{scheme}}://{MY_USER}@{MY_HOST}:{MY_PORT}/mysql")
            assert url.startswith("mysql+pymysql://"), url
            store = Store(StoreRef("legacy", url))
            with store.connect() as conn:
                cur = conn.cursor()
                cur.execute("SELECT @@session.time_zone, CAST('0000-00-00' AS DATE), 1")
                print(cur.fetchone())
            store.dispose()
        """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "('+00:00', None, 1)"


def test_without_any_mysql_driver_the_error_says_what_to_install() -> None:
    proc = run_without(["MySQLdb", "_mysql", "pymysql"], f"""
        from dualwrite.config import StoreRef, normalise_url
        from dualwrite.errors import StoreError
        from dualwrite.store import Store
        try:
            Store(StoreRef("legacy", normalise_url("mysql://{MY_USER}@{MY_HOST}:{MY_PORT}/mysql")))
        except StoreError as exc:
            print(exc)
        """)
    assert proc.returncode == 0, proc.stderr
    assert "store 'legacy'" in proc.stdout and "pip install PyMySQL" in proc.stdout
    assert "dualwrite[mysqlclient]" in proc.stdout and "libmariadb-dev" in proc.stdout


def test_mysqlclient_is_preferred_when_installed() -> None:
    import importlib.util

    from dualwrite.config import normalise_url

    expected = "mysqldb" if importlib.util.find_spec("MySQLdb") else "pymysql"
    assert normalise_url("mariadb://u@h/db") == f"mysql+{expected}://u@h/db"
    assert normalise_url("mysql+pymysql://u@h/db") == "mysql+pymysql://u@h/db"  # an explicit choice stays
