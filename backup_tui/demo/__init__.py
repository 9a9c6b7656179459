"""The demo: the console over a throwaway sandbox that looks like a small web app's server.

``build_demo(root)`` lays out, under ``root``:

- ``data/`` and ``etc/``: a web app's data and configuration, about 20 MiB in a
  few hundred files, the same bytes every time (``data.py``);
- ``postgres/``: a throwaway PostgreSQL server (``engine.sandbox.PgCluster`` on
  a free loopback port) holding ``shop``, the app's database: customers,
  products, orders and order lines tied by foreign keys, a few thousand rows
  that are the same every time. Without PostgreSQL server binaries the demo has
  files only, and ``Demo.note`` says so;
- the same server as the ``[[cluster]]`` ``main``: ``archive_mode = on``, its
  ``archive_command`` running ``backup-tui wal-push`` (with a python the
  server's OS user can run: ``engine.sandbox.python``, a copy in ``runtime/``
  as the last resort), ``archive_timeout`` 30 s, a base backup at build, and a
  small write load (``WriteLoad``: a few rows into ``shop.activity`` every few
  seconds) while the sandbox's servers run, so WAL keeps flowing and the
  point-in-time wizard (``t``) has a window to recover into. Under root the
  repository and state folders get the shared layout of docs/WAL.md (setgid,
  the server user's group) so that ``wal-push``, run as ``postgres``, can write
  WAL. When no python runs for that user the demo has no cluster, and
  ``Demo.note`` says why;
- two S3 replicas, ``us-east`` (a bucket in us-east-1) and ``eu-west`` (in
  eu-west-1), on the sandbox's own S3-protocol server (``engine.sandbox.S3Server``:
  ``moto_server`` on a free loopback port, all in memory, its output in
  ``s3-server.log``). The demo process gets dummy AWS credentials and no AWS
  configuration, so it never talks to anything but 127.0.0.1. Without moto
  (``pip install 'moto[server]'``) the demo has no replicas, and ``Demo.note``
  says so;
- ``config.toml`` with two filesets (``app-data``, ``app-config``), the
  ``shop`` database, the ``main`` cluster, the replicas, a repository in
  ``repo/`` encrypted with a random password kept in ``repo.pass`` (mode 0600;
  0640 to the server user's group under the shared layout), the state in
  ``state/``, and a schedule with short intervals (``data.SCHEDULE``: backups
  every two or three minutes, verify, replicate and drills every few) that the
  console runs;
- one snapshot of ``app-data``, one of ``shop`` and a base backup of ``main``,
  replicated to both
  replicas, then a day's changes (new uploads, a new log, new orders), so the
  next backups have something new to store (and to replicate: the replicas
  have ``replicate_after_backup``).

The servers (and the write load) keep running after ``build_demo``: whoever
holds the ``Demo`` stops them (``stop``), or stops them and removes the sandbox
(``remove``, for a folder the demo made). ``open_demo`` starts the servers of a
sandbox built earlier again. ``run_demo()`` (console.py) is ``backup-tui
--demo``: it builds or reuses the sandbox, runs the console on it, stops the
servers however the console ends and removes a sandbox it made.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import random
import secrets
import shlex
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from backup_tui.demo import data
from backup_tui.demo.data import (
    ACTIVITY_SQL,
    ARCHIVE_TIMEOUT,
    BUCKET,
    CLUSTER,
    DATABASE,
    FIRST_FILESET,
    REPLICAS,
    toml_str,
)
from engine.config import Config, load_config
from engine.errors import EngineError, UsageError
from engine.facade import Engine
from engine.sandbox import (
    PgCluster,
    S3Server,
    SandboxError,
    loopback_aws_env,
    make_dirs,
    moto_installed,
)
from engine.sandbox.python import SERVER_PYTHON_ENV, server_python

DEMO_DIR_ENV = "BACKUP_TUI_DEMO_DIR"
CONFIG_NAME = "config.toml"
CLUSTER_DIR = "postgres"
S3_LOG = "s3-server.log"  # moto_server's output, in the sandbox
S3_START_TIMEOUT = 30.0  # seconds
DEMO_AWS_KEY = "demo"  # the dummy access key and secret of the demo process
RUNTIME_DIR = "runtime"  # a copy of backup-tui the server's OS user can run, if needed
LOAD_SECONDS = 3.0  # the write load's pause between two inserts
SHARED_MODE = 0o2770  # repository and state folders under the shared layout (docs/WAL.md)

# The class the demo makes its PostgreSQL server with (a test replaces it to see
# the demo without PostgreSQL).
ScratchCluster = PgCluster

NO_MOTO = "moto[server] is not installed: the demo runs without S3 replicas."
_CLUSTER_ERRORS = (EngineError, OSError, subprocess.SubprocessError)


class WriteLoad:
    """A few rows into ``shop.activity`` every ``LOAD_SECONDS`` on a thread, until ``stop``:
    WAL keeps flowing (archived at least every ``ARCHIVE_TIMEOUT`` seconds). A failed
    insert (the server restarting) is skipped; the next one tries again."""

    def __init__(self, cluster: PgCluster, every: float = LOAD_SECONDS) -> None:
        self.cluster, self.every = cluster, every
        self.rounds = 0  # inserts that went through (tests wait on it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-write-load", daemon=True)

    def start(self) -> WriteLoad:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.cluster.psql(ACTIVITY_SQL, DATABASE, timeout=30)
                self.rounds += 1
            except _CLUSTER_ERRORS:
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(60)


@dataclass
class Demo:
    """A sandbox ready for the console.

    ``cluster`` is its PostgreSQL server and ``s3`` its S3 server, running
    until ``stop``; None when the sandbox has no running database or no
    replicas, and then ``note`` says why, one line each.
    """

    root: Path
    config_path: Path
    cluster: PgCluster | None = None
    note: str = ""
    s3: S3Server | None = None
    load: WriteLoad | None = None  # the write load on the shop database, while it runs

    def config(self) -> Config:
        """The sandbox's configuration, without its replicas when its S3 server is not
        running (a sandbox reused without moto): backups then do not wait on them."""
        config = load_config(self.config_path)
        if config.replicas and self.s3 is None:
            return dataclasses.replace(config, replicas=())
        return config

    def add_note(self, line: str) -> None:
        if line:
            self.note = f"{self.note}\n{line}" if self.note else line

    def stop(self) -> None:
        """Stop the write load, then the servers (the sandbox and its data stay; the
        replicas' contents go)."""
        try:
            if self.load is not None:
                self.load.stop()
            if self.cluster is not None:
                self.cluster.stop()
        finally:
            if self.s3 is not None:
                self.s3.stop()

    def remove(self) -> None:
        """Stop everything (the PostgreSQL server fast, else immediate, else killed), then
        remove the sandbox folder. Only for a folder the demo made itself."""
        try:
            if self.load is not None:
                self.load.stop()
            if self.cluster is not None:
                self.cluster.destroy()
        finally:
            try:
                if self.s3 is not None:
                    self.s3.stop()
            finally:
                shutil.rmtree(self.root, ignore_errors=True)


def _first_line(error: BaseException, width: int = 160) -> str:
    text = str(error).strip().splitlines()
    return text[0][:width] if text else type(error).__name__


# ------------------------------------------------------------------ the servers


def _archiver_python(root: Path, owner: str | None) -> tuple[list[str] | None, str]:
    """The argv prefix with which the server's OS user runs ``backup-tui wal-push`` (a
    copy in ``root/runtime`` as the last resort), or None and why not."""
    try:
        return server_python(owner, root / RUNTIME_DIR), ""
    except (EngineError, OSError, subprocess.SubprocessError) as e:
        return None, (f"The demo's PostgreSQL has no WAL archiving ({_first_line(e)}): no "
                      f"cluster {CLUSTER!r}, no point-in-time recovery.")


def _start_shop(root: Path, archive: bool = True
                ) -> tuple[PgCluster | None, list[str] | None, str]:
    """A new server under ``root`` with the shop database, or None and why not; and the
    python its archive_command will run (None: no archiving, the note says why).
    ``archive_mode`` is on from the start; the archive_command follows once the
    repository exists (``_archive``)."""
    try:
        cluster = ScratchCluster(root / CLUSTER_DIR)
    except EngineError as e:  # no server binaries
        return None, None, f"{_first_line(e)}: the demo runs with files only."
    python, note = _archiver_python(root, cluster.os_owner) if archive else (None, "")
    try:
        cluster.init()
        if python is not None:
            with open(cluster.data_dir / "postgresql.conf", "a") as conf:
                conf.write(f"# --- the backup-tui demo: WAL archiving (archive_command: "
                           f"postgresql.auto.conf) ---\narchive_mode = on\n"
                           f"archive_timeout = {ARCHIVE_TIMEOUT}\nwal_level = replica\n")
        cluster.start()
        cluster.createdb(DATABASE)
        cluster.psql(data.SHOP_SQL, DATABASE)
    except _CLUSTER_ERRORS as e:
        cluster.destroy()
        return None, None, (f"The demo database could not be set up ({_first_line(e)}): "
                            "the demo runs with files only.")
    except BaseException:
        cluster.destroy()
        raise
    return cluster, python, note


def _share(root: Path, owner: str) -> None:
    """The shared layout (docs/WAL.md, section 4) for ``owner``, who runs wal-push: the
    repository and state folders (new, made here) setgid to its group, the password file
    readable by that group. Before init, so that every later write follows."""
    gid = pwd.getpwnam(owner).pw_gid
    for name in ("repo", "state"):
        folder = root / name
        folder.mkdir()
        os.chown(folder, -1, gid)
        os.chmod(folder, SHARED_MODE)
    os.chown(root / "repo.pass", -1, gid)
    os.chmod(root / "repo.pass", 0o640)


def _archive(cluster: PgCluster, python: list[str], config_path: Path) -> None:
    """Point the server's archive_command at ``backup-tui wal-push`` (a reload suffices:
    archive_mode is on since the start); restore pitr gets the same python."""
    command = (f"{shlex.join(python)} -m backup_tui.cli --config "
               f"{shlex.quote(str(config_path))} wal-push %p --cluster {CLUSTER}")
    cluster.psql("ALTER SYSTEM SET archive_command = '{}'".format(command.replace("'", "''")))
    cluster.psql("SELECT pg_reload_conf()")
    os.environ.setdefault(SERVER_PYTHON_ENV, shlex.join(python))


def _launch_s3(root: Path, port: int = 0) -> tuple[S3Server | None, str]:
    """An S3 server for the sandbox in ``root``, starting (on ``port`` if free), or
    None and why not. This process's AWS environment is the demo's from now on."""
    if not moto_installed():
        return None, NO_MOTO
    loopback_aws_env(os.environ, DEMO_AWS_KEY, DEMO_AWS_KEY)
    server = S3Server(port=port, log_path=root / S3_LOG, access_key=DEMO_AWS_KEY,
                      secret_key=DEMO_AWS_KEY)
    try:
        return server.launch(), ""
    except OSError as e:
        return None, f"The demo's S3 server did not start ({_first_line(e)}): no replicas."


def _ready_s3(server: S3Server) -> tuple[S3Server | None, str]:
    """The launched ``server`` answering (perhaps on another port), with an empty bucket
    per replica in the replica's region; or None and why not."""
    try:
        server.start(S3_START_TIMEOUT)
        for name, region in REPLICAS:
            server.make_bucket(BUCKET.format(name), region)
    except (SandboxError, OSError) as e:
        server.stop()
        return None, f"The demo's S3 server did not start ({_first_line(e)}): no replicas."
    return server, ""


def _replicate(engine: Engine) -> str:
    """Fill every replica; "" or what failed, in one line."""
    failed = [r for r in engine.replicate() if not r.ok]
    return "; ".join(f"replica {r.replica}: {' '.join((r.error or 'failed').split())[:160]}"
                     for r in failed)


# ---------------------------------------------------------------- build, reopen


def build_demo(root: Path, kdf: dict | None = None, database: bool = True,
               replicas: bool = True) -> Demo:
    """Build the sandbox in ``root`` (missing or empty); its servers are left running.

    ``kdf`` is the repository's key derivation cost (the engine's default if None).
    ``database=False`` builds it without PostgreSQL, ``replicas=False`` without S3.
    Folders made here are 0755, so that the PostgreSQL server (the ``postgres`` OS
    user under root) reaches its own; an existing ``root`` keeps its mode.
    """
    root = Path(root).absolute()
    if root.exists() and any(root.iterdir()):
        raise UsageError(f"{root}: the demo needs an empty directory")
    make_dirs(root)
    demo = Demo(root, root / CONFIG_NAME)
    s3, s3_note = _launch_s3(root) if replicas else (None, "")  # it starts while we build
    try:
        _build(demo, kdf, database, s3, s3_note)
    except BaseException:
        if demo.cluster is not None:
            demo.cluster.destroy()
        if s3 is not None:
            s3.stop()
        raise
    return demo


def _build(demo: Demo, kdf: dict | None, database: bool, s3: S3Server | None,
           s3_note: str) -> None:
    root = demo.root
    rng = random.Random(data.SEED)
    data.write_data_dir(root / "data", rng)
    data.write_etc_dir(root / "etc")
    fd = os.open(root / "repo.pass", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(24) + "\n")
    python = None
    if database:
        demo.cluster, python, note = _start_shop(root)
        demo.add_note(note)
    if s3 is not None:
        demo.s3, s3_note = _ready_s3(s3)
    demo.add_note(s3_note)
    cluster = demo.cluster
    archived = cluster is not None and python is not None
    demo.config_path.write_text(data.config_text(
        root, cluster.dsn(DATABASE) if cluster else None,
        demo.s3.endpoint_url if demo.s3 else None,
        (cluster.dsn(), str(cluster.data_dir)) if archived else None,
        datetime.now(UTC).minute))
    if archived and cluster.os_owner:
        _share(root, cluster.os_owner)
    engine = Engine(load_config(demo.config_path), kdf=kdf)
    engine.init()
    engine.backup("files", FIRST_FILESET, replicate=False)
    if cluster is not None:
        engine.backup("db", DATABASE, replicate=False)
        if archived:
            _archive(cluster, python, demo.config_path)
            engine.backup("cluster", CLUSTER, replicate=False)
        cluster.psql(data.SHOP_A_DAY_LATER_SQL, DATABASE)
    if demo.s3 is not None:
        failed = _replicate(engine)
        demo.add_note(f"The demo's replicas could not be filled ({failed})." if failed else "")
    data.a_day_later(root / "data", rng)
    if cluster is not None:
        demo.load = WriteLoad(cluster).start()


def demo_cluster(root: Path) -> PgCluster | None:
    """The server of a sandbox built in ``root``, not started; None if it has none."""
    root = Path(root).absolute()
    if not (root / CLUSTER_DIR / "data").is_dir():
        return None
    config = load_config(root / CONFIG_NAME)
    dsn = next((getattr(s, "dsn", "") for s in config.sources if s.name == DATABASE), "")
    try:
        return ScratchCluster(root / CLUSTER_DIR, port=urlsplit(dsn).port or 0)
    except EngineError:  # the server binaries are gone
        return None


def server_running(cluster: PgCluster) -> bool:
    """Whether this very server answers on its port (say, left running by a killed console)."""
    return cluster.answers()


def open_demo(root: Path, say: Callable[[str], None] = lambda _line: None) -> Demo:
    """A sandbox ``build_demo`` made in ``root`` earlier, its servers started again.

    The S3 server starts empty: its buckets are made and the replicas filled
    again (``say`` is told so first, it takes a moment).
    """
    root = Path(root).absolute()
    demo = Demo(root, root / CONFIG_NAME)
    try:
        _reopen_shop(demo)
        _reopen_s3(demo, say)
    except BaseException:
        demo.stop()
        raise
    return demo


def _reopen_shop(demo: Demo) -> None:
    if not (demo.root / CLUSTER_DIR).exists():
        return  # built without a database
    cluster = demo_cluster(demo.root)
    if cluster is None:
        demo.add_note(f"PostgreSQL server binaries not found: backups of {DATABASE} will fail.")
        return
    try:
        if not cluster.answers():
            cluster.start()
    except _CLUSTER_ERRORS as e:
        demo.add_note(f"The demo's PostgreSQL did not start ({_first_line(e)}): "
                      f"backups of {DATABASE} will fail.")
        return
    demo.cluster = cluster
    if any(s.name == CLUSTER for s in load_config(demo.config_path).sources):
        python, note = _archiver_python(demo.root, cluster.os_owner)  # for restore pitr
        if python is not None:
            os.environ.setdefault(SERVER_PYTHON_ENV, shlex.join(python))
        demo.add_note(note)
    demo.load = WriteLoad(cluster).start()


def _reopen_s3(demo: Demo, say: Callable[[str], None]) -> None:
    endpoints = {r.endpoint_url for r in load_config(demo.config_path).replicas}
    if not endpoints:
        return  # built without replicas
    old = endpoints.pop()
    server, note = _launch_s3(demo.root, urlsplit(old).port or 0)
    if server is not None:
        say("The demo's S3 server keeps nothing: starting a new one and replicating again ...")
        server, note = _ready_s3(server)
    if server is None:
        demo.add_note(note)  # Demo.config leaves the replicas out
        return
    demo.s3 = server
    if server.endpoint_url != old:  # its old port is taken: point the replicas at the new one
        text = demo.config_path.read_text()
        demo.config_path.write_text(text.replace(toml_str(old), toml_str(server.endpoint_url)))
    failed = _replicate(Engine(load_config(demo.config_path)))
    demo.add_note(f"The demo's replicas could not be filled ({failed})." if failed else "")


def run_demo() -> int:
    """``backup-tui --demo``: the console on the sandbox (see console.py)."""
    from backup_tui.demo.console import run

    return run()
