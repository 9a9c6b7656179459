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
- ``config.toml`` with two filesets (``app-data``, ``app-config``), the
  ``shop`` database, a repository in ``repo/`` encrypted with a random
  password kept in ``repo.pass`` (mode 0600), and the state in ``state/``;
- one snapshot of ``app-data`` and one of ``shop``, then a day's changes (new
  uploads, a new log, new orders), so the next backups have something new to store.

The server keeps running after ``build_demo``: whoever holds the ``Demo`` stops
it. ``run_demo()`` builds the sandbox in a new temporary directory, or reuses
``$BACKUP_TUI_DEMO_DIR`` (building there when it holds no demo yet, else starting
its server again), runs the console, stops the server however the console ends,
and tells where the sandbox lives.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from engine.config import load_config
from engine.errors import EngineError, UsageError
from engine.facade import Engine
from engine.pgcluster import ScratchCluster

SEED = 42
DEMO_DIR_ENV = "BACKUP_TUI_DEMO_DIR"
FIRST_FILESET = "app-data"
CONFIG_NAME = "config.toml"
DATABASE = "shop"
CLUSTER_DIR = "postgres"

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


def _config(root: Path, dsn: str | None) -> str:
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
    return "\n".join(lines)


@dataclass
class Demo:
    """A sandbox ready for the console.

    ``cluster`` is its PostgreSQL server, running until ``stop``; None when the
    sandbox has no running database, and then ``note`` says why in one line.
    """

    root: Path
    config_path: Path
    cluster: ScratchCluster | None = None
    note: str = ""

    def stop(self) -> None:
        """Stop the server (the sandbox and its data stay)."""
        if self.cluster is not None:
            self.cluster.stop()


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


def build_demo(root: Path, kdf: dict | None = None, database: bool = True) -> Demo:
    """Build the sandbox in ``root`` (missing or empty); its server is left running.

    ``kdf`` is the repository's key derivation cost (the engine's default if None).
    ``database=False`` builds it without PostgreSQL.
    """
    root = Path(root).absolute()
    if root.exists() and any(root.iterdir()):
        raise UsageError(f"{root}: the demo needs an empty directory")
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    _data_dir(root / "data", rng)
    _etc_dir(root / "etc")
    fd = os.open(root / "repo.pass", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(24) + "\n")
    cluster, note = _start_shop(root) if database else (None, "")
    try:
        config_path = root / CONFIG_NAME
        config_path.write_text(_config(root, cluster.dsn(DATABASE) if cluster else None))
        engine = Engine(load_config(config_path), kdf=kdf)
        engine.init()
        engine.backup_files(FIRST_FILESET)
        if cluster is not None:
            engine.backup_db(DATABASE)
            cluster.psql(SHOP_A_DAY_LATER_SQL, DATABASE)
        _a_day_later(root / "data", rng)
    except BaseException:
        if cluster is not None:
            cluster.destroy()
        raise
    return Demo(root, config_path, cluster, note)


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


def open_demo(root: Path) -> Demo:
    """A sandbox ``build_demo`` made in ``root`` earlier, its server started again."""
    root = Path(root).absolute()
    demo = Demo(root, root / CONFIG_NAME)
    if not (root / CLUSTER_DIR).exists():
        return demo  # built without a database
    cluster = demo_cluster(root)
    if cluster is None:
        demo.note = f"PostgreSQL server binaries not found: backups of {DATABASE} will fail."
        return demo
    try:
        if not server_running(cluster):
            cluster.start()
    except _CLUSTER_ERRORS as e:
        demo.note = (f"The demo's PostgreSQL did not start ({_first_line(e)}): "
                     f"backups of {DATABASE} will fail.")
        return demo
    demo.cluster = cluster
    return demo


def _sandbox() -> Demo:
    """The sandbox: built, unless $BACKUP_TUI_DEMO_DIR already holds one."""
    chosen = os.environ.get(DEMO_DIR_ENV)
    if chosen and (Path(chosen) / CONFIG_NAME).exists():
        print(f"Reusing the demo sandbox in {Path(chosen).absolute()} ...", file=sys.stderr)
        return open_demo(Path(chosen))
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


def run_demo() -> int:
    """Build (or reuse) the sandbox, run the console on it, stop its server, say where it is."""
    from backup_tui.app import run_console

    with _exit_on_hangup():
        demo = _sandbox()
        try:
            if demo.note:
                print(demo.note, file=sys.stderr)
            return run_console(Engine(load_config(demo.config_path)), notice=demo.note or None)
        finally:
            demo.stop()
            print(f"The demo sandbox is in {demo.root}"
                  + (" (its PostgreSQL server is stopped)" if demo.cluster else "") + "\n"
                  f"  look again:  backup-tui --config {demo.config_path} list\n"
                  f"  run again:   {DEMO_DIR_ENV}={demo.root} backup-tui --demo\n"
                  f"  remove it:   rm -rf {demo.root}")
