"""The demo: the console over a throwaway sandbox that looks like a small web app's server.

``build_demo(root)`` lays out, under ``root``:

- ``data/``: a web app's data directory (image-like uploads of random bytes,
  avatars, CSV exports, JSON seeds, logs, a deep tree, a symlink, a cache that
  the fileset excludes), about 20 MiB in a few hundred files, the same bytes
  every time (``random.Random(42)``);
- ``etc/``: the app's configuration files;
- ``postgres/``: a throwaway PostgreSQL server (``engine.pgcluster.ScratchCluster``
  on a free loopback port) holding ``shop``, the app's database: customers,
  products, orders and order lines tied by foreign keys, a few thousand rows
  that ``generate_series`` makes the same every time. Without PostgreSQL server
  binaries the demo has files only, and ``Demo.note`` says so;
- two S3 replicas, ``us-east`` (a bucket in us-east-1) and ``eu-west`` (in
  eu-west-1), on the sandbox's own S3-protocol server: ``moto_server`` on a free
  loopback port, holding everything in memory. The demo process gets dummy AWS
  credentials and no AWS configuration (``use_demo_aws_environment``), so it
  never talks to anything but 127.0.0.1. Without moto (``pip install
  'moto[server]'``) the demo has no replicas, and ``Demo.note`` says so;
- ``config.toml`` with two filesets (``app-data``, ``app-config``), the
  ``shop`` database, the replicas, a repository in ``repo/`` encrypted with a
  random password kept in ``repo.pass`` (mode 0600), and the state in ``state/``;
- one snapshot of ``app-data`` and one of ``shop``, replicated to both
  replicas, then a day's changes (new uploads, a new log, new orders), so the
  next backups have something new to store (and to replicate: the replicas
  have ``replicate_after_backup``).

The servers keep running after ``build_demo``: whoever holds the ``Demo`` stops
them. ``run_demo()`` builds the sandbox in a new temporary directory, or reuses
``$BACKUP_TUI_DEMO_DIR`` (building there when it holds no demo yet, else starting
its servers again: the S3 server starts empty, so its buckets are made and
filled again), runs the console, stops the servers however the console ends,
and tells where the sandbox lives.
"""

from __future__ import annotations

import atexit
import csv
import dataclasses
import importlib.util
import io
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from engine.config import Config, load_config
from engine.errors import EngineError, UsageError
from engine.facade import Engine
from engine.pgcluster import ScratchCluster

SEED = 42
DEMO_DIR_ENV = "BACKUP_TUI_DEMO_DIR"
FIRST_FILESET = "app-data"
CONFIG_NAME = "config.toml"
DATABASE = "shop"
CLUSTER_DIR = "postgres"
REPLICAS = (("us-east", "us-east-1"), ("eu-west", "eu-west-1"))  # name, region
BUCKET = "backup-tui-demo-{}"  # the bucket of replica {name}
S3_PREFIX = "repo"
S3_LOG = "s3-server.log"  # moto_server's output, in the sandbox
LOOPBACK = "127.0.0.1"
S3_START_TIMEOUT = 30.0  # seconds

# The shop's schema and rows. Every value derives from generate_series, so each
# build holds the same data. About 500 customers, 200 products, 3,000 orders and
# 7,500 order lines.
SHOP_SQL = """
CREATE TABLE customers (
    id         integer PRIMARY KEY,
    email      text NOT NULL UNIQUE,
    name       text NOT NULL,
    country    text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE products (
    id     integer PRIMARY KEY,
    sku    text NOT NULL UNIQUE,
    name   text NOT NULL,
    price  numeric(10, 2) NOT NULL CHECK (price >= 0),
    stock  integer NOT NULL
);
CREATE TABLE orders (
    id          integer PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers,
    placed_at   timestamptz NOT NULL,
    status      text NOT NULL CHECK (status IN ('paid', 'shipped', 'delivered', 'cancelled'))
);
CREATE TABLE order_items (
    order_id   integer NOT NULL REFERENCES orders ON DELETE CASCADE,
    line       integer NOT NULL,
    product_id integer NOT NULL REFERENCES products,
    quantity   integer NOT NULL CHECK (quantity > 0),
    unit_price numeric(10, 2) NOT NULL,
    PRIMARY KEY (order_id, line)
);
CREATE INDEX ON orders (customer_id);
CREATE INDEX ON order_items (product_id);
CREATE VIEW order_totals AS
    SELECT order_id, sum(quantity * unit_price) AS total FROM order_items GROUP BY order_id;

INSERT INTO customers
    SELECT g, 'customer' || g || '@example.org', 'Customer ' || g,
           (ARRAY['DE', 'FR', 'NL', 'SE', 'US', 'JP'])[1 + g % 6],
           timestamptz '2023-01-01 00:00Z' + g * interval '17 hours'
    FROM generate_series(1, 500) g;
INSERT INTO products
    SELECT g, 'SKU-' || lpad(g::text, 5, '0'), 'Product ' || g,
           2 + (g * 7919) % 39800 / 100.0, (g * 31) % 250
    FROM generate_series(1, 200) g;
INSERT INTO orders
    SELECT g, 1 + (g * 7) % 500, timestamptz '2024-01-01 00:00Z' + g * interval '71 minutes',
           (ARRAY['paid', 'shipped', 'delivered', 'delivered', 'cancelled'])[1 + g % 5]
    FROM generate_series(1, 3000) g;
INSERT INTO order_items
    SELECT o, l, p.id, 1 + (o + l) % 5, p.price
    FROM generate_series(1, 3000) o
    CROSS JOIN LATERAL generate_series(1, 1 + o % 4) l
    JOIN products p ON p.id = 1 + (o * 13 + l * 101) % 200;
ANALYZE;
"""

# A day later: new orders, and stock goes down.
SHOP_A_DAY_LATER_SQL = """
INSERT INTO orders
    SELECT g, 1 + (g * 11) % 500,
           timestamptz '2024-06-08 08:00Z' + (g - 3000) * interval '9 minutes', 'paid'
    FROM generate_series(3001, 3060) g;
INSERT INTO order_items
    SELECT o, 1, 1 + (o * 17) % 200, 1 + o % 3, p.price
    FROM generate_series(3001, 3060) o JOIN products p ON p.id = 1 + (o * 17) % 200;
UPDATE products SET stock = greatest(stock - 3, 0) WHERE id % 9 = 0;
"""


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)


def _image(rng: random.Random, size: int, kind: str = "jpg") -> bytes:
    # A real file header, then noise: it does not compress, as real photos don't.
    if kind == "png":
        return b"\x89PNG\r\n\x1a\n" + rng.randbytes(size)
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + rng.randbytes(size) + b"\xff\xd9"


def _uploads(data: Path, rng: random.Random, months: range, per_month: int) -> None:
    for month in months:
        for n in range(per_month):
            name = f"uploads/2024/{month:02d}/IMG_{month:02d}{n:03d}.jpg"
            _write(data / name, _image(rng, rng.randint(40_000, 200_000)))


def _tables(data: Path, rng: random.Random) -> None:
    products = [
        {"id": i, "name": f"Product {i}", "price": round(rng.uniform(2, 400), 2),
         "tags": rng.sample(["new", "sale", "eco", "gift", "bulk", "rare"], 2)}
        for i in range(1, 401)
    ]
    _write(data / "seeds/products.json", json.dumps(products, indent=2))
    users = [{"id": i, "email": f"user{i}@example.org", "active": rng.random() > 0.1}
             for i in range(1, 301)]
    _write(data / "seeds/users.json", json.dumps(users, indent=2))
    for month in range(1, 13):
        buf = io.StringIO()
        out = csv.writer(buf)
        out.writerow(["order_id", "user_id", "product_id", "quantity", "total"])
        for n in range(rng.randint(150, 600)):
            qty = rng.randint(1, 5)
            out.writerow([f"{month:02d}{n:05d}", rng.randint(1, 300), rng.randint(1, 400), qty,
                          f"{qty * rng.uniform(2, 400):.2f}"])
        _write(data / f"exports/orders-2024-{month:02d}.csv", buf.getvalue())


def _logs(data: Path, rng: random.Random, days: range) -> None:
    paths = ["/", "/shop", "/cart", "/api/orders", "/api/products", "/login", "/static/app.js"]
    for day in days:
        lines = [
            f"2024-06-{day:02d}T{h:02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z "
            f"{rng.choice(['GET', 'GET', 'GET', 'POST'])} {rng.choice(paths)} "
            f"{rng.choice([200, 200, 200, 201, 302, 404, 500])} {rng.randint(1, 900)}ms"
            for h in sorted(rng.randint(0, 23) for _ in range(1500))
        ]
        _write(data / f"logs/app-2024-06-{day:02d}.log", "\n".join(lines) + "\n")


def _data_dir(data: Path, rng: random.Random) -> None:
    _uploads(data, rng, range(1, 7), 27)
    for n in range(120):
        _write(data / f"uploads/avatars/user-{n + 1}.png", _image(rng, rng.randint(2_000, 12_000),
                                                                  "png"))
    _tables(data, rng)
    _logs(data, rng, range(1, 8))
    deep = data / "docs/handbook/operations/runbooks/database"
    for name in ("restore.md", "failover.md", "vacuum.md"):
        _write(deep / name, f"# {name[:-3].title()}\n\n" + "Step.\n" * rng.randint(20, 80))
    _write(data / "docs/README.md", "# Docs\n\nThe handbook lives in handbook/.\n")
    for n in range(8):
        _write(data / f"cache/sessions/{n:04x}.tmp", rng.randbytes(4096))
    (data / "uploads/latest").symlink_to("2024/06")


def _etc_dir(etc: Path) -> None:
    _write(etc / "app.env", "APP_ENV=production\nDATABASE_URL=postgresql://app@localhost/app\n")
    _write(etc / "settings.json", json.dumps({"uploads": "/srv/app/data/uploads",
                                               "workers": 4, "debug": False}, indent=2))
    _write(etc / "nginx/app.conf", "server {\n    listen 80;\n    root /srv/app/public;\n}\n")


def _a_day_later(data: Path, rng: random.Random) -> None:
    _uploads(data, rng, range(7, 8), 6)
    _logs(data, rng, range(8, 9))


def _toml_str(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _config(root: Path, dsn: str | None, s3_endpoint: str | None = None) -> str:
    lines = [
        "# The backup-tui demo sandbox (see backup_tui/demo.py).",
        "[repository]",
        f"path = {_toml_str(root / 'repo')}",
        f"password_file = {_toml_str(root / 'repo.pass')}",
        "",
        "[state]",
        f"dir = {_toml_str(root / 'state')}",
        "",
        "[[fileset]]",
        f'name = "{FIRST_FILESET}"',
        f"paths = [{_toml_str(root / 'data')}]",
        'exclude = ["cache/", "*.tmp"]',
        "",
        "[[fileset]]",
        'name = "app-config"',
        f"paths = [{_toml_str(root / 'etc')}]",
        "",
    ]
    if dsn is not None:
        lines += [
            "# The shop's database, on the sandbox's own PostgreSQL server (postgres/).",
            "[[database]]",
            f'name = "{DATABASE}"',
            f"dsn = {_toml_str(dsn)}",
            "",
        ]
    if s3_endpoint is not None:
        lines.append("# Two S3 replicas on the sandbox's own S3 server (moto_server, in memory).")
        for name, region in REPLICAS:
            lines += [
                "[[replica]]",
                f'name = "{name}"',
                f'bucket = "{BUCKET.format(name)}"',
                f'region = "{region}"',
                f'prefix = "{S3_PREFIX}"',
                f"endpoint_url = {_toml_str(s3_endpoint)}",
                "",
            ]
    return "\n".join(lines)


# ------------------------------------------------------------------ S3 server


class DemoS3Error(Exception):
    """The demo's S3 server did not start or would not take its buckets."""


def use_demo_aws_environment() -> None:
    """Dummy AWS credentials and no AWS configuration, in this process's environment.

    The demo talks to its own S3 server on 127.0.0.1 and to nothing else: no
    profile or credentials of the machine, no instance metadata, no proxy.
    """
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(var, None)
    os.environ.update({
        "AWS_ACCESS_KEY_ID": "demo",
        "AWS_SECRET_ACCESS_KEY": "demo",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    })
    for var in ("NO_PROXY", "no_proxy"):
        entries = [e for e in os.environ.get(var, "").split(",") if e.strip()]
        if LOOPBACK not in entries:
            os.environ[var] = ",".join([*entries, LOOPBACK])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will bind
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class S3Server:
    """The demo's S3-protocol server: ``moto_server`` on a loopback port, all in memory.

    ``launch`` starts the process and returns at once (it takes a moment to
    import); ``wait`` blocks until it answers HTTP. A new server starts empty.
    """

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.log_path = log_path
        self.port = port or _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def launch(self) -> S3Server:
        use_demo_aws_environment()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # our signal handlers decide when it stops
            )
        atexit.register(self.stop)  # the last resort, should the demo die another way
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _answers(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.endpoint_url + "/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer: it serves
        except OSError:
            return False

    def wait(self, timeout: float = S3_START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise DemoS3Error(f"moto_server exited ({code}); see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise DemoS3Error(f"moto_server did not answer in {timeout:.0f} s")
            time.sleep(0.05)

    def make_buckets(self) -> None:
        """One empty bucket per replica, in the replica's region."""
        import boto3
        import botocore.config
        import botocore.exceptions

        for name, region in REPLICAS:
            client = boto3.session.Session(region_name=region).client(
                "s3", endpoint_url=self.endpoint_url,
                config=botocore.config.Config(s3={"addressing_style": "path"},
                                              retries={"max_attempts": 2}))
            params: dict = {"Bucket": BUCKET.format(name)}
            if region != "us-east-1":
                params["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                client.create_bucket(**params)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
                raise DemoS3Error(f"cannot create bucket {params['Bucket']}: {e}") from None

    def stop(self) -> None:
        """Stop the server (idempotent); what it held is gone."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def moto_installed() -> bool:
    return importlib.util.find_spec("moto") is not None


NO_MOTO = "moto[server] is not installed: the demo runs without S3 replicas."


def _launch_s3(root: Path, port: int | None = None) -> tuple[S3Server | None, str]:
    """A starting S3 server for the sandbox in ``root``, or None and why not."""
    if not moto_installed():
        return None, NO_MOTO
    try:
        return S3Server(root / S3_LOG, port).launch(), ""
    except OSError as e:
        return None, f"The demo's S3 server did not start ({_first_line(e)}): no replicas."


def _ready_s3(server: S3Server, attempts: int = 3) -> tuple[S3Server | None, str]:
    """The launched ``server`` answering, with its buckets: or a new one (its port was
    taken meanwhile), or None and why not."""
    for attempt in range(attempts):
        try:
            server.wait()
            server.make_buckets()
            return server, ""
        except (DemoS3Error, OSError) as e:
            server.stop()
            if attempt == attempts - 1:
                return None, (f"The demo's S3 server did not start ({_first_line(e)}): "
                              "no replicas.")
            server = S3Server(server.log_path).launch()
    raise AssertionError("unreachable")


def _replicate(engine: Engine) -> str:
    """Fill every replica; "" or what failed, in one line."""
    failed = [r for r in engine.replicate() if not r.ok]
    return "; ".join(f"replica {r.replica}: {' '.join((r.error or 'failed').split())[:160]}"
                     for r in failed)


@dataclass
class Demo:
    """A sandbox ready for the console.

    ``cluster`` is its PostgreSQL server and ``s3`` its S3 server, running
    until ``stop``; None when the sandbox has no running database or no
    replicas, and then ``note`` says why, one line each.
    """

    root: Path
    config_path: Path
    cluster: ScratchCluster | None = None
    note: str = ""
    s3: S3Server | None = None

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
        """Stop the servers (the sandbox and its data stay; the replicas' contents go)."""
        try:
            if self.cluster is not None:
                self.cluster.stop()
        finally:
            if self.s3 is not None:
                self.s3.stop()


_CLUSTER_ERRORS = (EngineError, OSError, subprocess.SubprocessError)


def _first_line(error: BaseException, width: int = 160) -> str:
    text = str(error).strip().splitlines()
    return text[0][:width] if text else type(error).__name__


def _start_shop(root: Path) -> tuple[ScratchCluster | None, str]:
    """A new server under ``root`` with the shop database, or None and why not."""
    try:
        cluster = ScratchCluster(root / CLUSTER_DIR)
    except EngineError as e:  # no server binaries
        return None, f"{_first_line(e)}: the demo runs with files only."
    try:
        if cluster.owner:  # the server runs as another OS user, who must reach its folder
            os.chmod(root, 0o755)
        cluster.init().start()
        cluster.psql(f"CREATE DATABASE {DATABASE}")
        cluster.psql(SHOP_SQL, DATABASE)
    except _CLUSTER_ERRORS as e:
        cluster.destroy()
        return None, (f"The demo database could not be set up ({_first_line(e)}): "
                      "the demo runs with files only.")
    except BaseException:
        cluster.destroy()
        raise
    return cluster, ""


def build_demo(root: Path, kdf: dict | None = None, database: bool = True,
               replicas: bool = True) -> Demo:
    """Build the sandbox in ``root`` (missing or empty); its servers are left running.

    ``kdf`` is the repository's key derivation cost (the engine's default if None).
    ``database=False`` builds it without PostgreSQL, ``replicas=False`` without S3.
    """
    root = Path(root).absolute()
    if root.exists() and any(root.iterdir()):
        raise UsageError(f"{root}: the demo needs an empty directory")
    root.mkdir(parents=True, exist_ok=True)
    demo = Demo(root, root / CONFIG_NAME)
    s3, s3_note = _launch_s3(root) if replicas else (None, "")  # it starts while we build
    try:
        _build(demo, kdf, database, s3, s3_note)
    except BaseException:
        if demo.cluster is not None:
            demo.cluster.destroy()
        if s3 is not None:
            s3.stop()
        if demo.s3 is not None:
            demo.s3.stop()
        raise
    return demo


def _build(demo: Demo, kdf: dict | None, database: bool, s3: S3Server | None,
           s3_note: str) -> None:
    root = demo.root
    rng = random.Random(SEED)
    _data_dir(root / "data", rng)
    _etc_dir(root / "etc")
    fd = os.open(root / "repo.pass", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(24) + "\n")
    if database:
        demo.cluster, note = _start_shop(root)
        demo.add_note(note)
    if s3 is not None:
        demo.s3, s3_note = _ready_s3(s3)
    demo.add_note(s3_note)
    cluster = demo.cluster
    demo.config_path.write_text(_config(root, cluster.dsn(DATABASE) if cluster else None,
                                        demo.s3.endpoint_url if demo.s3 else None))
    engine = Engine(load_config(demo.config_path), kdf=kdf)
    engine.init()
    engine.backup_files(FIRST_FILESET, replicate=False)
    if cluster is not None:
        engine.backup_db(DATABASE, replicate=False)
        cluster.psql(SHOP_A_DAY_LATER_SQL, DATABASE)
    if demo.s3 is not None:
        failed = _replicate(engine)
        demo.add_note(f"The demo's replicas could not be filled ({failed})." if failed else "")
    _a_day_later(root / "data", rng)


def demo_cluster(root: Path) -> ScratchCluster | None:
    """The server of a sandbox built in ``root``, not started; None if it has none."""
    root = Path(root).absolute()
    if not (root / CLUSTER_DIR / "data").is_dir():
        return None
    config = load_config(root / CONFIG_NAME)
    dsn = next((d["dsn"] for d in config.databases if d["name"] == DATABASE), "")
    try:
        return ScratchCluster(root / CLUSTER_DIR, port=urlsplit(dsn).port)
    except EngineError:  # the server binaries are gone
        return None


def server_running(cluster: ScratchCluster) -> bool:
    """Whether this very server answers on its port (say, left running by a killed console)."""
    try:
        answer = cluster.psql("SELECT current_setting('data_directory')")
    except _CLUSTER_ERRORS:
        return False
    return Path(answer.strip()).resolve() == cluster.data.resolve()


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
        if not server_running(cluster):
            cluster.start()
    except _CLUSTER_ERRORS as e:
        demo.add_note(f"The demo's PostgreSQL did not start ({_first_line(e)}): "
                      f"backups of {DATABASE} will fail.")
        return
    demo.cluster = cluster


def _reopen_s3(demo: Demo, say: Callable[[str], None]) -> None:
    config = load_config(demo.config_path)
    endpoints = {r["endpoint_url"] for r in config.replicas}
    if not endpoints:
        return  # built without replicas
    old = endpoints.pop()
    port = urlsplit(old).port
    server, note = _launch_s3(demo.root, port if port and _port_free(port) else None)
    if server is not None:
        say("The demo's S3 server keeps nothing: starting a new one and replicating again ...")
        server, note = _ready_s3(server)
    if server is None:
        demo.add_note(note)  # Demo.config leaves the replicas out
        return
    demo.s3 = server
    if server.endpoint_url != old:  # its old port is taken: point the replicas at the new one
        text = demo.config_path.read_text()
        demo.config_path.write_text(text.replace(_toml_str(old), _toml_str(server.endpoint_url)))
    failed = _replicate(Engine(load_config(demo.config_path)))
    demo.add_note(f"The demo's replicas could not be filled ({failed})." if failed else "")


def _sandbox() -> Demo:
    """The sandbox: built, unless $BACKUP_TUI_DEMO_DIR already holds one."""
    chosen = os.environ.get(DEMO_DIR_ENV)
    if chosen and (Path(chosen) / CONFIG_NAME).exists():
        print(f"Reusing the demo sandbox in {Path(chosen).absolute()} ...", file=sys.stderr)
        return open_demo(Path(chosen), lambda line: print(line, file=sys.stderr))
    root = Path(chosen).absolute() if chosen else Path(tempfile.mkdtemp(prefix="backup-tui-demo-"))
    print(f"Building the demo sandbox in {root} ...", file=sys.stderr)
    try:
        return build_demo(root)
    except BaseException:
        if not chosen:  # a half-built sandbox in a folder of our own is of no use
            shutil.rmtree(root, ignore_errors=True)
        raise


@contextmanager
def _exit_on_hangup() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal) end the demo like Ctrl+C, so its server stops."""

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    saved = {sig: signal.signal(sig, leave) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _stopped(demo: Demo) -> str:
    servers = [n for n, s in (("PostgreSQL", demo.cluster), ("S3", demo.s3)) if s is not None]
    if not servers:
        return ""
    return f" (its {' and '.join(servers)} server{'s are' if len(servers) > 1 else ' is'} stopped)"


def run_demo() -> int:
    """Build (or reuse) the sandbox, run the console on it, stop its server, say where it is."""
    from backup_tui.app import run_console

    with _exit_on_hangup():
        demo = _sandbox()
        try:
            if demo.note:
                print(demo.note, file=sys.stderr)
            # No scheduler in the demo: its servers live only as long as the console, so
            # a schedule would only catch up "missed" runs on every reopen. Run now (n)
            # still works through a daemon started on the demo's config.
            return run_console(Engine(demo.config()), notice=demo.note or None,
                               run_scheduler=False)
        finally:
            demo.stop()
            print(f"The demo sandbox is in {demo.root}{_stopped(demo)}\n"
                  f"  look again:  backup-tui --config {demo.config_path} list\n"
                  f"  run again:   {DEMO_DIR_ENV}={demo.root} backup-tui --demo\n"
                  f"  remove it:   rm -rf {demo.root}")
