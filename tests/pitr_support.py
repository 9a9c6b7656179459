"""The archiving cluster the PITR, WAL shipping, WAL retention and console PITR tests share.

``Setup``: a config, repository and state the postgres OS user can use (it runs wal-push and
wal-fetch), and a real PostgreSQL cluster archiving into it through the CLI's ``wal-push``.
The ``setup`` fixture (tests/conftest.py) builds one per test; ``mark_time``,
``restored_sql`` and ``stop_server`` are the steps the tests repeat.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from support import CHEAP_KDF

from engine.ops import pitr
from engine.sandbox import PgCluster

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = "main"


def pg_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


class Setup:
    """A config, repository and state readable and writable by the postgres OS user (who
    runs wal-push and wal-fetch), and a PostgreSQL cluster archiving into it."""

    def __init__(self, root: Path, extra: str = ""):
        self.root = root
        self.repo = root / "repo"
        self.state = root / "state"
        self.pwfile = root / "repo.pass"
        self.config_path = root / "config.toml"
        self.pwfile.write_text("test-password")
        os.chmod(self.pwfile, 0o600)
        self.extra = extra
        self.pg: PgCluster | None = None

    def write_config(self) -> None:
        assert self.pg is not None
        self.config_path.write_text(
            f'[repository]\npath = "{self.repo}"\npassword_file = "{self.pwfile}"\n'
            f'[state]\ndir = "{self.state}"\n[schedule]\ntimezone = "UTC"\n'
            f'[[cluster]]\nname = "{CLUSTER}"\ndsn = "{self.pg.dsn()}"\n'
            f'pgdata = "{self.pg.data_dir}"\n' + self.extra)

    def engine(self):
        from engine.config import load_config
        from engine.facade import Engine

        return Engine(load_config(self.config_path), kdf=CHEAP_KDF)

    def cli(self, *args: str, check: bool = True, timeout: float = 300):
        cmd = [sys.executable, "-m", "backup_tui.cli", "--config", str(self.config_path),
               *args]
        res = subprocess.run(cmd, capture_output=True, text=True, env=pg_env(), timeout=timeout,
                             cwd=str(ROOT))
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: exit {res.returncode}\n{res.stdout}\n"
                                 f"{res.stderr}")
        return res

    def share(self) -> None:
        """The shared layout (README, WAL archiving): the repository and state folders
        setgid to a group holding the postgres user (here its own group), the password
        file readable by that group; made before init, so every later write follows."""
        gid = pwd.getpwnam("postgres").pw_gid
        for d in (self.repo, self.state):
            d.mkdir(exist_ok=True)
            os.chown(d, -1, gid)
            os.chmod(d, 0o2770)
        os.chown(self.pwfile, -1, gid)
        os.chmod(self.pwfile, 0o640)

    def archived(self) -> set[str]:
        from engine import wal

        return {o.name for o in wal.list_wal(self.engine().backend, CLUSTER)}

    def switch_and_wait(self, timeout: float = 60) -> str:
        """pg_switch_wal and wait until the segment it closed is archived."""
        assert self.pg is not None
        seg = self.pg.psql("SELECT pg_walfile_name(pg_switch_wal())").strip()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.pg.psql("SELECT last_archived_wal, last_failed_wal FROM "
                               "pg_stat_archiver").strip()
            last = row.split("|")[0]
            if last and last >= seg and seg in self.archived():
                return seg
            time.sleep(0.2)
        raise AssertionError(f"{seg} not archived in {timeout}s: pg_stat_archiver {row!r}\n"
                             f"{self.pg.log_tail()}")


def restored_sql(port: int, sql: str) -> str:
    res = subprocess.run(["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/psql",
                          "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                          "-d", "postgres", "-c", sql], capture_output=True, text=True,
                         env=pg_env(), cwd="/", timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def stop_server(out: dict) -> None:
    if out.get("server"):
        pitr.Server(pgdata=out["pgdata"], **{k: out["server"][k] for k in (
            "port", "socket_dir", "log", "bin_dir", "owner", "user")}).stop()
        shutil.rmtree(Path(out["server"]["log"]).parent, ignore_errors=True)


def mark_time(s: Setup) -> str:
    """Archive what exists, then a time T with a second of quiet on each side."""
    s.switch_and_wait()
    time.sleep(1.1)
    when = datetime.now(UTC).isoformat()
    time.sleep(1.1)
    return when
