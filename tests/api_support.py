"""The daemon's HTTP API as a client sees it: a real ``backup-tui --run-scheduler`` process
serving ``[api]`` on a free loopback port, keys made with the real ``api-key`` CLI, httpx
clients, bounded polls that fail saying what they waited for (with the daemon's log).

``ApiDaemon`` owns one sandbox (config, repository, state, a files source, optionally a
database source on the test PostgreSQL and two S3 replicas on moto_server) and its
daemon process: ``start`` / ``stop`` (SIGTERM, kill on timeout) / ``restart`` (same state).
``TableLock`` holds a table of a database locked in an open transaction, so that a database
backup's pg_dump waits for it: a job that stays running until the test lets it go, without
any timing. ``self_signed`` writes a certificate and key for 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from support import CHEAP_KDF

from engine.sandbox import free_port

PREFIX = "/api/v1/backup"
FINAL = ("succeeded", "failed", "cancelled")
KEY_RE = re.compile(r"btk_[0-9a-f]{8}_[A-Za-z0-9_\-]+")


def wait_for(pred: Callable[[], object], timeout: float, what: str,
             detail: Callable[[], str] = lambda: "", step: float = 0.2):
    """Poll ``pred`` until it returns something true (returned); AssertionError naming
    ``what`` (and ``detail()``) after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{detail()}")
        time.sleep(step)


def schedule_toml(grace_seconds: int = 30) -> str:
    """A schedule that runs nothing while the tests run."""
    kinds = ("database", "files", "cluster", "cleanup", "verify", "replicate")
    return ("[schedule]\ntimezone = \"UTC\"\n" + "".join(f'{k} = "off"\n' for k in kinds)
            + f"grace_seconds = {grace_seconds}\n")


def api_toml(listen: str, **extra) -> str:
    lines = ["[api]", f"listen = {json.dumps(listen)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


class ApiDaemon:
    """A sandbox and its daemon process serving the API on ``127.0.0.1:<port>``."""

    def __init__(self, root: Path, *, extra: str = "", grace_seconds: int = 30):
        self.root = Path(root)
        self.src = self.root / "src"
        self.src.mkdir(parents=True, exist_ok=True)
        self.repo = self.root / "repo"
        self.state = self.root / "state"
        self.pwfile = self.root / "repo.pass"
        self.password = "api-test-password"
        self.pwfile.write_text(self.password)
        os.chmod(self.pwfile, 0o600)
        self.config_path = self.root / "config.toml"
        self.log_path = self.root / "daemon.log"
        self.port = free_port()
        self.extra = extra  # sources, replicas: TOML appended to the config
        self.grace_seconds = grace_seconds
        self.api = api_toml(f"127.0.0.1:{self.port}")  # the [api] table (tests may change it)
        self.scheme = "http"
        self.verify: object = True  # an ssl.SSLContext for https
        self.proc: subprocess.Popen | None = None
        self.keys: dict[str, str] = {}  # key name -> key text (to check it is never echoed)
        self.seen: list[str] = []  # every response body the clients read (and SSE data)
        self._logs: list[str] = []  # the logs of earlier runs (restart)
        self.write_config()

    # ---------------------------------------------------------------- sandbox
    def write_config(self) -> None:
        self.config_path.write_text(
            f'[repository]\npath = "{self.repo}"\npassword_file = "{self.pwfile}"\n'
            f'[state]\ndir = "{self.state}"\n'
            f'[[fileset]]\nname = "src"\npaths = ["{self.src}"]\n'
            + self.extra + schedule_toml(self.grace_seconds) + self.api)

    def init(self) -> None:
        """The repository, initialised in-process with a cheap key derivation."""
        from engine.config import load_config
        from engine.facade import Engine

        Engine(load_config(self.config_path), kdf=CHEAP_KDF).init()

    def cli(self, *args: str, check: bool = True, timeout: float = 300):
        env = {k: v for k, v in os.environ.items() if k != "BACKUP_TUI_PASSWORD"}
        res = subprocess.run([sys.executable, "-m", "backup_tui.cli", "--config",
                              str(self.config_path), *args], capture_output=True, text=True,
                             env=env, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"backup-tui {' '.join(args)}: exit {res.returncode}\n"
                                 f"stdout: {res.stdout}\nstderr: {res.stderr}")
        return res

    def create_key(self, name: str, role: str) -> str:
        """``backup-tui api-key create NAME --role ROLE``: the key read from its stdout."""
        res = self.cli("api-key", "create", name, "--role", role)
        found = KEY_RE.findall(res.stdout)
        assert len(found) == 1, f"api-key create printed no single key: {res.stdout!r}"
        assert not KEY_RE.search(res.stderr), "the key went to stderr too"
        self.keys[name] = found[0]
        return found[0]

    def revoke_key(self, name: str) -> None:
        self.cli("api-key", "revoke", name)

    # ---------------------------------------------------------------- process
    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def log(self) -> str:
        now = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "".join(self._logs) + now

    def log_tail(self, lines: int = 40) -> str:
        return "daemon log (tail):\n" + "\n".join(self.log().splitlines()[-lines:])

    def launch(self) -> subprocess.Popen:
        """Start ``--run-scheduler`` (not waiting for anything); its stderr goes to the log."""
        assert self.proc is None or self.proc.poll() is not None, "the daemon already runs"
        if self.log_path.exists():
            self._logs.append(self.log_path.read_text(errors="replace"))
        env = {k: v for k, v in os.environ.items() if k != "BACKUP_TUI_PASSWORD"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "backup_tui.cli", "--config", str(self.config_path),
                 "--run-scheduler"], stdout=subprocess.DEVNULL, stderr=log, env=env)
        return self.proc

    def health(self) -> httpx.Response | None:
        try:
            return httpx.get(self.base_url + "/health", timeout=5, verify=self.verify)
        except httpx.TransportError:
            return None

    def start(self, timeout: float = 60) -> ApiDaemon:
        """Launch and wait until ``GET /health`` answers (any HTTP status: it needs a key
        when the API does not listen on loopback)."""
        proc = self.launch()

        def up():
            if proc.poll() is not None:
                raise AssertionError(f"the daemon exited with {proc.returncode} before its "
                                     f"API answered\n{self.log_tail()}")
            return self.health() is not None

        wait_for(up, timeout, f"GET {self.base_url}/health", self.log_tail)
        return self

    def stop(self, timeout: float = 100) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` s; the exit code (None if not running).
        The bound is over the scheduler's own: it waits up to 60 s for the jobs it
        interrupted to end."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
            raise AssertionError(f"the daemon did not stop within {timeout} s of SIGTERM; "
                                 f"killed\n{self.log_tail()}") from None

    def restart(self, timeout: float = 60) -> int | None:
        """Stop, then start again on the same state (started even when the stop failed)."""
        try:
            rc = self.stop()
        finally:
            self.start(timeout)
        return rc

    # ---------------------------------------------------------------- clients
    def client(self, key: str | None = None, **kwargs) -> httpx.Client:
        """An httpx client for this daemon; every body it reads (but an event stream's) is
        kept in ``self.seen``. ``key`` is a key text or the name of a key made here."""
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {self.keys.get(key, key)}"

        def keep(response: httpx.Response) -> None:
            if not response.request.url.path.endswith("/events"):
                response.read()
                self.seen.append(response.text)
                self.seen.append(str(response.headers))

        return httpx.Client(base_url=self.base_url, headers=headers, verify=self.verify,
                            timeout=kwargs.pop("timeout", 30),
                            event_hooks={"response": [keep]}, **kwargs)

    def job(self, client: httpx.Client, job_id: str) -> dict:
        r = client.get(f"{PREFIX}/jobs/{job_id}")
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()

    def wait_job(self, client: httpx.Client, job_id: str, timeout: float = 180,
                 states: tuple[str, ...] = FINAL) -> dict:
        """Poll ``GET jobs/{id}`` until its state is one of ``states``; the job JSON."""
        last: dict = {}

        def reached():
            last.update(self.job(client, job_id))
            return last["state"] in states and dict(last)

        return wait_for(reached, timeout, f"job {job_id} to reach {'/'.join(states)}",
                        lambda: f"last: {json.dumps(last)}\n{self.log_tail()}", step=0.25)

    @contextmanager
    def events(self, client: httpx.Client, job_id: str) -> Iterator[Iterator[tuple[str, dict]]]:
        """``GET jobs/{id}/events`` opened: yields an iterator of (event, data) pairs, data
        parsed as JSON; comments (keep-alive) skipped. Reads time out after 60 s (the
        server sends a keep-alive every 15 s)."""
        timeout = httpx.Timeout(30, read=60)
        with client.stream("GET", f"{PREFIX}/jobs/{job_id}/events", timeout=timeout) as r:
            assert r.status_code == 200, (r.status_code, r.read())
            ctype = r.headers.get("content-type", "")
            assert ctype.startswith("text/event-stream"), ctype

            def parse() -> Iterator[tuple[str, dict]]:
                event, data = "", []
                for line in r.iter_lines():
                    if line.startswith(":"):
                        continue
                    if not line:
                        if data:
                            text = "\n".join(data)
                            self.seen.append(text)
                            yield event or "message", json.loads(text)
                        event, data = "", []
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                if data:  # a last event without its blank line
                    text = "\n".join(data)
                    self.seen.append(text)
                    yield event or "message", json.loads(text)

            yield parse()


def api(path: str) -> str:
    return f"{PREFIX}/{path.lstrip('/')}"


# -------------------------------------------------------------------- a held job
class TableLock:
    """``LOCK TABLE ... IN ACCESS EXCLUSIVE MODE`` in an open transaction of a psql session:
    pg_dump (which takes ACCESS SHARE on every table it dumps) waits until ``release``."""

    def __init__(self, cluster, db: str, table: str):
        self.cluster, self.db, self.table = cluster, db, table
        self.proc: subprocess.Popen | None = None

    def acquire(self, timeout: float = 30) -> TableLock:
        self.proc = subprocess.Popen(
            [str(self.cluster.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", self.cluster.host, "-p", str(self.cluster.port), "-U",
             self.cluster.superuser, "-d", self.db], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=self.cluster.client_environ(self.db))
        self.proc.stdin.write(f"BEGIN;\nLOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE;\n"
                              "SELECT 'locked';\n")
        self.proc.stdin.flush()
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        if not got or got[0].strip() != "locked":
            self.proc.kill()
            raise AssertionError(f"could not lock {self.db}.{self.table}: {got} "
                                 f"{self.proc.stderr.read()}")
        return self

    def waiting(self) -> bool:
        """Someone (pg_dump) waits for this lock."""
        out = self.cluster.psql(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            f"WHERE c.relname = '{self.table}' AND NOT l.granted", self.db)
        return int(out.strip() or 0) > 0

    def release(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.stdin.write("COMMIT;\n")
            proc.stdin.close()
            proc.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(30)

    def __enter__(self) -> TableLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# -------------------------------------------------------------------- TLS
def self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM): (cert, key)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "api-cert.pem", folder / "api-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path
