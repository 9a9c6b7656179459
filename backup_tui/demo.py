"""The demo: the console over a throwaway sandbox that looks like a small web app's server.

``build_demo(root)`` lays out, under ``root``:

- ``data/``: a web app's data directory (image-like uploads of random bytes,
  avatars, CSV exports, JSON seeds, logs, a deep tree, a symlink, a cache that
  the fileset excludes), about 20 MiB in a few hundred files, the same bytes
  every time (``random.Random(42)``);
- ``etc/``: the app's configuration files;
- ``config.toml`` with two filesets (``app-data``, ``app-config``), a
  repository in ``repo/`` encrypted with a random password kept in
  ``repo.pass`` (mode 0600), and the state in ``state/``;
- one snapshot of ``app-data``, then a day's changes (new uploads, a new log),
  so the next backup has something new to store.

``run_demo()`` builds it in a new temporary directory, or reuses
``$BACKUP_TUI_DEMO_DIR`` (building there when it holds no demo yet), runs the
console, and tells where the sandbox lives.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import secrets
import sys
import tempfile
from pathlib import Path

from engine.config import load_config
from engine.errors import UsageError
from engine.facade import Engine

SEED = 42
DEMO_DIR_ENV = "BACKUP_TUI_DEMO_DIR"
FIRST_FILESET = "app-data"
CONFIG_NAME = "config.toml"


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


def _config(root: Path) -> str:
    return "\n".join([
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
    ])


def build_demo(root: Path, kdf: dict | None = None) -> Path:
    """Build the sandbox in ``root`` (missing or empty); returns its config file.

    ``kdf`` is the repository's key derivation cost (the engine's default if None).
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
    config_path = root / CONFIG_NAME
    config_path.write_text(_config(root))
    engine = Engine(load_config(config_path), kdf=kdf)
    engine.init()
    engine.backup_files(FIRST_FILESET)
    _a_day_later(root / "data", rng)
    return config_path


def _sandbox() -> tuple[Path, Path]:
    """The sandbox folder and its config, built unless $BACKUP_TUI_DEMO_DIR already holds one."""
    chosen = os.environ.get(DEMO_DIR_ENV)
    root = Path(chosen).absolute() if chosen else Path(tempfile.mkdtemp(prefix="backup-tui-demo-"))
    config_path = root / CONFIG_NAME
    if not config_path.exists():
        print(f"Building the demo sandbox in {root} ...", file=sys.stderr)
        config_path = build_demo(root)
    return root, config_path


def run_demo() -> int:
    """Build (or reuse) the sandbox, run the console on it, then say where it is."""
    from backup_tui.app import run_console

    root, config_path = _sandbox()
    code = run_console(Engine(load_config(config_path)))
    print(f"The demo sandbox is in {root}\n"
          f"  look again:  backup-tui --config {config_path} list\n"
          f"  remove it:   rm -rf {root}")
    return code
