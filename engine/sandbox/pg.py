"""A throwaway PostgreSQL cluster: the tests' server, the demo's shop database, the
benchmarks' scratch server (and later restore drills).

``initdb`` into a folder of the cluster's own, ``pg_ctl start`` on a free
loopback port with a private unix-socket folder. PostgreSQL refuses to run as
root, so when we are root every server-side command (initdb, pg_ctl, postgres)
runs as the ``postgres`` OS user through ``runuser -u postgres --``, and the
cluster's data, socket folder and log belong to that user; ``chown_to_owner``
does the same for files root extracts into a data directory.

Never touches the system cluster (port 5432): every client command gets an
explicit host and port, and ``PG*`` variables of the caller's environment are
dropped before ours are added.

Authentication (first matching pg_hba line wins, so the password lines come
first):

* ``app_user`` over TCP (127.0.0.1 / ::1): scram-sha-256, password ``secret``
  (made by ``create`` unless ``app_user=False``);
* everyone else over TCP from loopback, and everyone on the unix socket: trust;
* replication connections (pg_basebackup) from loopback / socket: trust.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from engine.repo.locks import pid_alive
from engine.sandbox.common import LOOPBACK, SandboxError, free_port, make_dirs, reachable_tempdir

OS_OWNER = "postgres"  # the OS user that runs the server when we are root

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

# Appended to postgresql.conf by init. Where the server listens is given on
# pg_ctl's command line instead (start), so it follows this object, not the files.
SETTINGS = """
# --- backup-tui sandbox (engine/sandbox/pg.py) ---
password_encryption = 'scram-sha-256'
max_connections = 50
shared_buffers = 32MB
# A throwaway cluster: durability across an OS crash is irrelevant.
fsync = off
log_min_messages = warning
"""


class PgError(SandboxError):
    """A PostgreSQL command of the sandbox failed, or the server binaries are missing."""


def _version_of(bin_dir: Path) -> tuple[int, ...]:
    """Version of the server binaries in ``bin_dir`` as a tuple, () if unknown."""
    try:
        out = subprocess.run([str(bin_dir / "initdb"), "--version"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    m = re.search(r"(\d+)(?:\.(\d+))?", out)
    if not m:
        return ()
    return tuple(int(g) for g in m.groups() if g is not None)


def find_bin_dir() -> Path:
    """The folder with the newest PostgreSQL server binaries.

    Candidates: ``$PG_BINDIR`` (wins when usable), ``pg_config --bindir`` and
    ``/usr/lib/postgresql/*/bin``; one counts only if it holds ``initdb``,
    ``pg_ctl`` and ``postgres`` (pg_config alone may be a client-only install).
    """
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.strip()
            if out:
                candidates.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    usable = [d for d in dict.fromkeys(candidates)
              if all((d / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres"))]
    if not usable:
        raise PgError("PostgreSQL server binaries not found (looked at $PG_BINDIR, "
                      "pg_config --bindir, /usr/lib/postgresql/*/bin; Debian: apt-get install "
                      "postgresql)")
    if os.environ.get("PG_BINDIR") and usable[0] == Path(os.environ["PG_BINDIR"]):
        return usable[0]
    return max(usable, key=_version_of)


class PgCluster:
    """A private PostgreSQL cluster in ``base_dir`` (a new temporary folder if None).

    ``PgCluster.create()`` makes a new one and starts it; ``PgCluster(base_dir,
    port=...)`` names one made earlier (say, by another process), to ``start``,
    ``stop`` or ``destroy`` it. Layout: ``data/``, ``sock/`` (the unix socket),
    ``postgres.log``.

    Attributes: ``host`` (127.0.0.1), ``port``, ``superuser``, ``bin_dir``,
    ``version`` (major), ``base_dir``, ``data_dir``, ``socket_dir``,
    ``log_path``, ``app_user`` / ``app_password`` (a password-authenticated
    login role), ``os_owner`` (the OS user running the server; None unless root).
    """

    superuser = "postgres"
    app_user = "app_user"
    app_password = "secret"
    host = LOOPBACK

    def __init__(self, base_dir: str | os.PathLike[str] | None = None, *, port: int = 0,
                 bin_dir: str | os.PathLike[str] | None = None) -> None:
        self.bin_dir = Path(bin_dir) if bin_dir else find_bin_dir()
        self.version = (_version_of(self.bin_dir) or (0,))[0]
        self.os_owner = OS_OWNER if os.geteuid() == 0 else None
        self.base_dir = Path(base_dir).absolute() if base_dir is not None else None
        self.port = port
        self._port_fixed = bool(port)  # else start picks one (again, if it was taken)
        self._refused = False  # init refused base_dir: nothing in it is ours to remove
        self._destroyed = False

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def create(cls, base_dir: str | os.PathLike[str] | None = None, *,
               bin_dir: str | os.PathLike[str] | None = None,
               app_user: bool = True) -> PgCluster:
        """A new cluster, started (with ``app_user`` unless False); destroyed again if
        any step fails."""
        cluster = cls(base_dir, bin_dir=bin_dir)
        try:
            cluster.init()
            cluster.start()
            if app_user:
                cluster.psql(f"CREATE ROLE {cls.app_user} LOGIN PASSWORD '{cls.app_password}'")
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._base() / "sock"

    @property
    def log_path(self) -> Path:
        return self._base() / "postgres.log"

    def _base(self) -> Path:
        if self.base_dir is None:
            raise PgError("the cluster has no folder yet: call init() first")
        return self.base_dir

    def init(self) -> PgCluster:
        """initdb in ``base_dir``, which must be new or empty (a temporary one if None)."""
        if self.base_dir is None:
            self.base_dir = reachable_tempdir("pgsandbox-")
            # the last resort, should the process end without destroy(); a cluster in
            # a caller's folder is the caller's to stop (bench --keep leaves it running)
            atexit.register(self.destroy)
        elif self.base_dir.exists() and any(self.base_dir.iterdir()):
            self._refused = True
            raise PgError(f"{self.base_dir}: a new cluster needs a new or empty folder")
        else:
            make_dirs(self.base_dir)
        self.data_dir.mkdir(mode=0o700)
        self.socket_dir.mkdir(mode=0o755)
        self.log_path.touch()
        for path in (self.data_dir, self.socket_dir, self.log_path):
            self.chown_to_owner(path)
        if self.os_owner:
            self._check_reachable()
        self.run_as_owner([
            str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.superuser,
            "-E", "UTF8", "--locale=C", "--auth-local=trust", "--auth-host=trust",
            "--no-sync", "--no-instructions",
        ])
        (self.data_dir / "pg_hba.conf").write_text(HBA)
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(SETTINGS)
        self.chown_to_owner(self.data_dir)
        return self

    def _check_reachable(self) -> None:
        probe = self.owner_cmd(["test", "-w", str(self.data_dir)])
        if subprocess.run(probe, capture_output=True, cwd="/").returncode != 0:
            raise PgError(f"OS user {self.os_owner!r} cannot reach {self.data_dir}: every "
                          "folder above it must let that user through (mode 0755 or so)")

    def running(self) -> bool:
        """Whether the postmaster of this data directory is alive."""
        pid = self.postmaster_pid()
        return pid is not None and pid_alive(pid)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError, PgError):
            return None

    def answers(self) -> bool:
        """Whether this very cluster answers on its port (not another server that took it)."""
        try:
            answer = self.psql("SELECT current_setting('data_directory')", timeout=30)
        except (PgError, OSError, subprocess.SubprocessError):
            return False
        return Path(answer.strip()).resolve() == self.data_dir.resolve()

    def start(self) -> PgCluster:
        """``pg_ctl start -w`` on this cluster's port, 127.0.0.1 only (no-op when running).

        The first start of a cluster whose port nobody chose picks a free one, and
        another should someone take it meanwhile."""
        if self.running():
            return self
        attempts = 1 if self._port_fixed else 5
        for attempt in range(attempts):
            if not self._port_fixed:
                self.port = free_port()
            opts = (f"-p {self.port} -c listen_addresses={LOOPBACK} "
                    f"-c unix_socket_directories={shlex.quote(str(self.socket_dir))}")
            res = self.run_as_owner(
                [str(self.bin_dir / "pg_ctl"), "start", "-w", "-t", "60", "-D",
                 str(self.data_dir), "-l", str(self.log_path), "-o", opts], check=False)
            if res.returncode == 0:
                self._port_fixed = True
                return self
            error = PgError(f"pg_ctl start failed (exit {res.returncode}) on port {self.port}:\n"
                            f"{res.stdout}{res.stderr}\n--- tail of {self.log_path} ---\n"
                            f"{self.log_tail()}")
            taken = "could not bind" in str(error) or "in use" in str(error)
            if attempt == attempts - 1 or not taken:
                raise error
        raise AssertionError("unreachable")

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m MODE -w`` (no-op when not running)."""
        if not self.running():
            return
        res = self.run_as_owner([str(self.bin_dir / "pg_ctl"), "stop", "-w", "-m", mode, "-D",
                                 str(self.data_dir)], check=False)
        if res.returncode != 0 and self.running():
            raise PgError(f"pg_ctl stop failed (exit {res.returncode}):\n{res.stdout}"
                          f"{res.stderr}\n--- tail of {self.log_path} ---\n{self.log_tail()}")

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop the server (fast, then immediate, then SIGKILL) and remove ``base_dir``."""
        if self._destroyed:
            return
        self._destroyed = True
        if self.base_dir is None or self._refused:
            return
        try:
            try:
                self.stop("fast")
            except PgError:
                try:
                    self.stop("immediate")
                except PgError:
                    self._kill_postmaster()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        pid = self.postmaster_pid()
        if pid is None:
            return
        try:
            os.kill(pid, 9)
        except OSError:
            pass
        for _ in range(50):
            if not self.running():
                break
            time.sleep(0.1)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, PgError) as exc:
            return f"(no log: {exc})"

    # ------------------------------------------------------------ OS-user helpers

    def owner_cmd(self, cmd: Sequence[str | os.PathLike[str]]) -> list[str]:
        """``cmd`` prefixed to run as the server's OS user (unchanged when not root)."""
        prefix = ["runuser", "-u", self.os_owner, "--"] if self.os_owner else []
        return prefix + [str(c) for c in cmd]

    def run_as_owner(self, cmd: Sequence[str | os.PathLike[str]], *, check: bool = True,
                     **kwargs) -> subprocess.CompletedProcess[str]:
        """Run a server-side command (initdb, pg_ctl, postgres ...) as the OS owner."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 120)
        # the cwd must be reachable by the postgres user (root's may be 0700)
        kwargs.setdefault("cwd", str(self.base_dir or "/"))
        kwargs.setdefault("env", _clean_environ())
        res = subprocess.run(self.owner_cmd(cmd), check=False, **kwargs)
        if check and res.returncode != 0:
            raise PgError(f"{' '.join(map(str, cmd))} failed (exit {res.returncode}):\n"
                          f"{res.stdout or ''}{res.stderr or ''}")
        return res

    def chown_to_owner(self, path: str | os.PathLike[str]) -> None:
        """Give ``path`` (recursively) to the server's OS user; no-op when not root.

        Files that root extracts or writes into a data directory need this before
        the server can start on them.
        """
        if not self.os_owner:
            return
        pw = pwd.getpwnam(self.os_owner)
        path = Path(path)
        os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
        if path.is_dir() and not path.is_symlink():
            for root, dirs, files in os.walk(path):
                for name in dirs + files:
                    os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid,
                             follow_symlinks=False)

    # --------------------------------------------------------------- client side

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        """libpq URL ``postgresql://USER@127.0.0.1:PORT/DB``."""
        return f"postgresql://{user or self.superuser}@{self.host}:{self.port}/{dbname}"

    def env(self, dbname: str = "postgres") -> dict[str, str]:
        """Only the ``PG*`` variables that point libpq tools at this cluster."""
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.superuser,
                "PGDATABASE": dbname}

    def client_environ(self, dbname: str = "postgres") -> dict[str, str]:
        """``os.environ`` without any foreign ``PG*`` variables, plus :meth:`env`."""
        return {**_clean_environ(), **self.env(dbname)}

    def psql(self, sql: str, db: str = "postgres", *, timeout: float = 600) -> str:
        """Run ``sql`` (one statement or a script) with psql as the superuser; return
        its stdout, unaligned and tuples only (``select 1`` gives ``"1\\n"``). Each
        statement commits on its own, so ALTER SYSTEM and CREATE DATABASE work."""
        res = subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", self.host, "-p", str(self.port), "-U", self.superuser, "-d", db],
            input=sql, capture_output=True, text=True, timeout=timeout,
            env={**self.client_environ(db), "PGCONNECT_TIMEOUT": "10"},
        )
        if res.returncode != 0:
            shown = sql if len(sql) <= 200 else sql[:200] + " ..."
            raise PgError(f"psql failed (exit {res.returncode}) on {shown!r}:\n{res.stderr}")
        return res.stdout

    def createdb(self, name: str, owner: str | None = None) -> str:
        """Create database ``name``; return its name."""
        sql = f'CREATE DATABASE "{name}"'
        if owner:
            sql += f' OWNER "{owner}"'
        self.psql(sql)
        return name

    def __repr__(self) -> str:
        return (f"<PgCluster v{self.version} {self.host}:{self.port} base={self.base_dir} "
                f"running={self.running()}>")


def _clean_environ() -> dict[str, str]:
    """``os.environ`` without ``PG*`` variables (they could point at another server)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}
