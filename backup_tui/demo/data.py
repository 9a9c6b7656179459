"""What the demo holds: a small web app's files, its shop database, and the
configuration that backs them up. The same bytes and rows every time: the files
come from ``random.Random(SEED)``, the rows from ``generate_series``.

Kept apart from the servers (``backup_tui/demo/__init__.py``) so that what the
demo shows can change without touching how its sandbox runs.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

SEED = 42
FIRST_FILESET = "app-data"
DATABASE = "shop"
CLUSTER = "main"  # the [[cluster]] of the same server: base backups and archived WAL
REPLICAS = (("us-east", "us-east-1"), ("eu-west", "eu-west-1"))  # name, region
BUCKET = "backup-tui-demo-{}"  # the bucket of replica {name}
S3_PREFIX = "repo"

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
CREATE TABLE activity (
    id    bigserial PRIMARY KEY,
    at    timestamptz NOT NULL DEFAULT now(),
    event text NOT NULL
);
ANALYZE;
"""

# What the demo's write load runs every few seconds while the console is open (a page
# view and now and then a sign-in): WAL keeps flowing, so the point-in-time wizard has
# a window to recover into.
ACTIVITY_SQL = """
INSERT INTO activity (event)
    SELECT (ARRAY['view /shop', 'view /cart', 'view /api/products', 'sign-in'])[1 + g % 4]
    FROM generate_series(1, 1 + (extract(epoch FROM now())::int % 5)) g;
"""

# The schedule of the demo: short intervals, so that jobs appear while one watches.
SCHEDULE = (  # (schedule key, cron)
    ("files", "*/2 * * * *"),  # even minutes
    ("database", "1-59/2 * * * *"),  # odd minutes
    ("cluster", "*/3 * * * *"),
    ("verify", "*/5 * * * *"),
    ("replicate", "*/4 * * * *"),
    ("drill", "*/7 * * * *"),  # see schedule(): the first one 2 minutes after the build
    ("cleanup", "off"),  # the demo keeps its history
)
DRILL_EVERY = 7  # minutes


def schedule(built_minute: int | None = None) -> tuple[tuple[str, str], ...]:
    """SCHEDULE, its drills every 7 minutes counted from 2 minutes after ``built_minute``
    (the minute of the hour the sandbox was built): a cluster drill recovers to a minute
    ago, which must come after the base backup made at build."""
    if built_minute is None:
        return SCHEDULE
    first = (built_minute + 2) % DRILL_EVERY
    return tuple((key, f"{first}-59/{DRILL_EVERY} * * * *" if key == "drill" else cron)
                 for key, cron in SCHEDULE)
ARCHIVE_TIMEOUT = 30  # seconds: archive_timeout of the demo's server, a segment at least so often

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


def write_data_dir(data: Path, rng: random.Random) -> None:
    """The web app's data: uploads, avatars, CSV exports, JSON seeds, logs, a deep
    tree, a symlink and a cache the fileset excludes; about 20 MiB."""
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


def write_etc_dir(etc: Path) -> None:
    """The app's configuration files."""
    _write(etc / "app.env", "APP_ENV=production\nDATABASE_URL=postgresql://app@localhost/app\n")
    _write(etc / "settings.json", json.dumps({"uploads": "/srv/app/data/uploads",
                                               "workers": 4, "debug": False}, indent=2))
    _write(etc / "nginx/app.conf", "server {\n    listen 80;\n    root /srv/app/public;\n}\n")


def a_day_later(data: Path, rng: random.Random) -> None:
    """A day's changes to the data: new uploads, a new log."""
    _uploads(data, rng, range(7, 8), 6)
    _logs(data, rng, range(8, 9))


def toml_str(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def config_text(root: Path, dsn: str | None, s3_endpoint: str | None = None,
                cluster: tuple[str, str] | None = None,
                built_minute: int | None = None) -> str:
    """config.toml of the sandbox in ``root``: its filesets and schedule (``schedule``);
    the shop database at ``dsn``, the replicas at ``s3_endpoint`` and the cluster (its
    dsn and data directory) unless None."""
    lines = [
        "# The backup-tui demo sandbox (see backup_tui/demo/).",
        "[repository]",
        f"path = {toml_str(root / 'repo')}",
        f"password_file = {toml_str(root / 'repo.pass')}",
        "",
        "[state]",
        f"dir = {toml_str(root / 'state')}",
        "",
        "# Short intervals: the console runs this schedule, and jobs appear live.",
        "[schedule]",
        'timezone = "UTC"',
        "grace_seconds = 5",
        *(f'{key} = "{cron}"' for key, cron in schedule(built_minute)),
        "",
        "[[fileset]]",
        f'name = "{FIRST_FILESET}"',
        f"paths = [{toml_str(root / 'data')}]",
        'exclude = ["cache/", "*.tmp"]',
        "",
        "[[fileset]]",
        'name = "app-config"',
        f"paths = [{toml_str(root / 'etc')}]",
        "",
    ]
    if dsn is not None:
        lines += [
            "# The shop's database, on the sandbox's own PostgreSQL server (postgres/).",
            "[[database]]",
            f'name = "{DATABASE}"',
            f"dsn = {toml_str(dsn)}",
            "",
        ]
    if cluster is not None:
        cluster_dsn, pgdata = cluster
        lines += [
            "# The same server as a whole: base backups, WAL archived by its archive_command",
            "# (backup-tui wal-push), point-in-time recovery (t in the console).",
            "[[cluster]]",
            f'name = "{CLUSTER}"',
            f"dsn = {toml_str(cluster_dsn)}",
            f"pgdata = {toml_str(pgdata)}",
            "ship_interval_seconds = 30",
            "drill_delay_minutes = 1",
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
                f"endpoint_url = {toml_str(s3_endpoint)}",
                "",
            ]
    return "\n".join(lines)
