"""A throwaway PostgreSQL cluster for tests.

``initdb`` into a fresh temporary directory, ``pg_ctl start`` on a free loopback
port with a private unix-socket directory. PostgreSQL refuses to run as root, so
when the test process is root every server-side command (initdb, pg_ctl,
postgres) runs as the ``postgres`` OS user through ``runuser -u postgres --``,
and the cluster's directories are owned by that user.

Never touches the system cluster (port 5432): every client command gets an
explicit host and port, and ``PG*`` variables from the caller's environment are
dropped before ours are added.

Authentication (first matching pg_hba line wins, so the password lines come
first):

* ``app_user`` over TCP (127.0.0.1 / ::1): scram-sha-256, password ``secret``;
* everyone else over TCP from loopback, and everyone on the unix socket: trust;
* replication connections (pg_basebackup) from loopback / socket: trust.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from harness.net import LOOPBACK, free_port

OS_OWNER = "postgres"  # OS user that runs the server when we are root

HBA = """\
# TYPE  DATABASE     USER      ADDRESS        METHOD
# Password auth for app_user comes first: the first matching line wins.
host    all          app_user  127.0.0.1/32   scram-sha-256
host    all          app_user  ::1/128        scram-sha-256
local   all          all                      trust
host    all          all       127.0.0.1/32   trust
host    all          all       ::1/128        trust
local   replication  all                      trust
host    replication  all       127.0.0.1/32   trust
host    replication  all       ::1/128        trust
"""


class PgError(RuntimeError):
    """A PostgreSQL command of the harness failed."""


def _version_of(bin_dir: Path) -> tuple[int, ...]:
    """Version of the server binaries in ``bin_dir`` as a tuple, () if unknown."""
    try:
        out = subprocess.run(
            [str(bin_dir / "initdb"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    m = re.search(r"(\d+)(?:\.(\d+))?", out)
    if not m:
        return ()
    return tuple(int(g) for g in m.groups() if g is not None)


def find_bin_dir() -> Path:
    """Directory with the newest PostgreSQL server binaries.

    Candidates: ``$PG_BINDIR``, ``pg_config --bindir`` and
    ``/usr/lib/postgresql/*/bin``; a candidate counts only if it holds
    ``initdb``, ``pg_ctl`` and ``postgres`` (pg_config alone may be a client-only
    install).
    """
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]

    usable = [
        d
        for d in dict.fromkeys(candidates)
        if all((d / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres"))
    ]
    if not usable:
        raise PgError(
            "PostgreSQL server binaries not found (looked at $PG_BINDIR, pg_config --bindir, "
            "/usr/lib/postgresql/*/bin); run `bash .ci/setup` or apt-get install postgresql"
        )
    if os.environ.get("PG_BINDIR") and usable[0] == Path(os.environ["PG_BINDIR"]):
        return usable[0]
    return max(usable, key=_version_of)


class PgCluster:
    """A private PostgreSQL cluster. Use :meth:`create` (or the ``pg_cluster``
    fixture) rather than calling the constructor directly.

    Attributes: ``host`` (127.0.0.1), ``port``, ``socket_dir``, ``superuser``,
    ``bin_dir``, ``base_dir``, ``data_dir``, ``log_path``, ``version`` (major),
    ``app_user`` / ``app_password`` (a password-authenticated login role),
    ``os_owner`` (OS user running the server, None when not root).
    """

    superuser = "postgres"
    app_user = "app_user"
    app_password = "secret"
    host = LOOPBACK

    def __init__(self, bin_dir: Path | None = None) -> None:
        self.bin_dir = Path(bin_dir) if bin_dir else find_bin_dir()
        self.version = (_version_of(self.bin_dir) or (0,))[0]
        self.os_owner = OS_OWNER if os.geteuid() == 0 else None
        self.base_dir: Path | None = None
        self.port = 0
        self._running = False
        self._destroyed = False

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def create(cls, bin_dir: Path | None = None) -> PgCluster:
        """initdb, configure and start a new cluster; destroy it again on failure."""
        cluster = cls(bin_dir)
        atexit.register(cluster.destroy)  # in case the session dies before teardown
        try:
            cluster._initdb()
            cluster._start_on_free_port()
            cluster._create_app_user()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "sock"

    @property
    def log_path(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "postgres.log"

    @property
    def running(self) -> bool:
        return self._running

    def _initdb(self) -> None:
        # Not under pytest's tmp dirs: /tmp/pytest-of-root is 0700, so the
        # postgres user could not reach anything below it.
        self.base_dir = Path(tempfile.mkdtemp(prefix="pgharness-"))
        self.base_dir.chmod(0o755)
        self.data_dir.mkdir(mode=0o700)
        self.socket_dir.mkdir(mode=0o755)
        self.log_path.touch()
        self.chown_to_owner(self.base_dir)
        if self.os_owner:
            self._check_reachable()
        self.run_as_owner(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.superuser,
                "-E",
                "UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=trust",
                "--no-sync",
                "--no-instructions",
            ]
        )
        (self.data_dir / "pg_hba.conf").write_text(HBA)
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# --- backup-tui test harness ---\n"
                f"listen_addresses = '{LOOPBACK}'\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "password_encryption = 'scram-sha-256'\n"
                "max_connections = 50\n"
                "shared_buffers = 32MB\n"
                # Throwaway cluster: durability across an OS crash is irrelevant.
                "fsync = off\n"
                "log_min_messages = warning\n"
            )
        self.chown_to_owner(self.data_dir)

    def _check_reachable(self) -> None:
        probe = self._owner_prefix() + ["test", "-w", str(self.data_dir)]
        if subprocess.run(probe, capture_output=True).returncode != 0:
            raise PgError(
                f"OS user {self.os_owner!r} cannot reach {self.data_dir}: every parent "
                "folder must be searchable (0755); check $TMPDIR"
            )

    def _start_on_free_port(self, attempts: int = 5) -> None:
        last: PgError | None = None
        for _ in range(attempts):
            self.port = free_port()
            try:
                self.start()
                return
            except PgError as exc:  # most likely someone grabbed the port meanwhile
                last = exc
                if "could not bind" not in str(exc) and "in use" not in str(exc):
                    raise
        assert last is not None
        raise last

    def start(self) -> None:
        """``pg_ctl start -w`` with this cluster's port (no-op when running)."""
        if self._running:
            return
        self._set_port_in_conf()
        res = self.run_as_owner(
            [
                str(self.bin_dir / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
            ],
            check=False,
        )
        if res.returncode != 0:
            raise PgError(
                f"pg_ctl start failed (exit {res.returncode}) on port {self.port}:\n"
                f"{res.stdout}{res.stderr}\n--- tail of {self.log_path} ---\n{self.log_tail()}"
            )
        self._running = True

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m MODE -w`` (no-op when not running)."""
        if not self._running:
            return
        res = self.run_as_owner(
            [str(self.bin_dir / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.data_dir)],
            check=False,
        )
        if res.returncode != 0 and self._postmaster_alive():
            raise PgError(
                f"pg_ctl stop failed (exit {res.returncode}):\n{res.stdout}{res.stderr}\n"
                f"--- tail of {self.log_path} ---\n{self.log_tail()}"
            )
        self._running = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop the server (fast, then immediate, then SIGKILL) and remove its files."""
        if self._destroyed:
            return
        self._destroyed = True
        if self.base_dir is None:
            return
        try:
            self._running = self._running or self._postmaster_alive()
            try:
                self.stop("fast")
            except PgError:
                try:
                    self.stop("immediate")
                except PgError:
                    self._kill_postmaster()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _postmaster_alive(self) -> bool:
        pid = self._postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _kill_postmaster(self) -> None:
        pid = self._postmaster_pid()
        if pid is None:
            return
        try:
            os.kill(pid, 9)
        except OSError:
            pass
        for _ in range(50):
            if not self._postmaster_alive():
                break
            time.sleep(0.1)
        self._running = False

    def _set_port_in_conf(self) -> None:
        conf = self.data_dir / "postgresql.auto.conf"
        lines = (
            [ln for ln in conf.read_text().splitlines() if not re.match(r"\s*port\s*=", ln)]
            if conf.exists()
            else []
        )
        lines.append(f"port = {self.port}")
        conf.write_text("\n".join(lines) + "\n")
        self.chown_to_owner(conf)

    def _create_app_user(self) -> None:
        self.psql(
            f"CREATE ROLE {self.app_user} LOGIN PASSWORD '{self.app_password}'",
            db="postgres",
        )

    # ------------------------------------------------------------ OS-user helpers

    def _owner_prefix(self) -> list[str]:
        return ["runuser", "-u", self.os_owner, "--"] if self.os_owner else []

    def owner_cmd(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` prefixed to run as the server's OS user (unchanged when not root)."""
        return self._owner_prefix() + [str(c) for c in cmd]

    def run_as_owner(
        self, cmd: Sequence[str], *, check: bool = True, **kwargs
    ) -> subprocess.CompletedProcess[str]:
        """Run a server-side command (initdb, pg_ctl, postgres ...) as the OS owner."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 120)
        # cwd must be reachable by the postgres user (root's cwd may be 0700).
        kwargs.setdefault("cwd", str(self.base_dir or "/"))
        kwargs.setdefault("env", self._clean_environ())
        res = subprocess.run(self.owner_cmd(cmd), check=False, **kwargs)
        if check and res.returncode != 0:
            raise PgError(
                f"{' '.join(map(str, cmd))} failed (exit {res.returncode}):\n"
                f"{res.stdout or ''}{res.stderr or ''}"
            )
        return res

    def chown_to_owner(self, path: str | os.PathLike[str]) -> None:
        """Give ``path`` (recursively) to the server's OS user; no-op when not root.

        Files extracted or written by root into a data directory need this
        before the server can start on them.
        """
        if not self.os_owner:
            return
        pw = pwd.getpwnam(self.os_owner)
        path = Path(path)
        os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
        if path.is_dir() and not path.is_symlink():
            for root, dirs, files in os.walk(path):
                for name in dirs + files:
                    os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid, follow_symlinks=False)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    # --------------------------------------------------------------- client side

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        """libpq URL ``postgresql://USER@127.0.0.1:PORT/DB``."""
        return f"postgresql://{user or self.superuser}@{self.host}:{self.port}/{dbname}"

    def env(self, dbname: str = "postgres") -> dict[str, str]:
        """Only the ``PG*`` variables that point libpq tools at this cluster."""
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.superuser,
            "PGDATABASE": dbname,
        }

    def client_environ(self, dbname: str = "postgres") -> dict[str, str]:
        """``os.environ`` without any foreign ``PG*`` variables, plus :meth:`env`."""
        return {**self._clean_environ(), **self.env(dbname)}

    @staticmethod
    def _clean_environ() -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("PG")}

    def psql(self, sql: str, db: str = "postgres") -> str:
        """Run ``sql`` with the psql binary as the superuser; return its stdout
        (unaligned, tuples only, so ``select 1`` gives ``"1\\n"``)."""
        res = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.superuser,
                "-d",
                db,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=self.client_environ(db),
        )
        if res.returncode != 0:
            raise PgError(f"psql failed (exit {res.returncode}) on {sql!r}:\n{res.stderr}")
        return res.stdout

    def createdb(self, name: str, owner: str | None = None) -> str:
        """Create database ``name``; return its name."""
        sql = f'CREATE DATABASE "{name}"'
        if owner:
            sql += f' OWNER "{owner}"'
        self.psql(sql)
        return name

    def __repr__(self) -> str:
        return (
            f"<PgCluster v{self.version} {self.host}:{self.port} "
            f"data={self.base_dir and self.data_dir} running={self._running}>"
        )
