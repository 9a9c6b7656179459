#!/usr/bin/env python3
"""The console's first paint with many snapshots (issue 12 target: <= 1 s at 10,000).

    .venv/bin/python bench/first_paint.py                     # 10,000 snapshots, 5 runs a size
    .venv/bin/python bench/first_paint.py --snapshots 2000 --runs 3 --no-results   # smoke
    .venv/bin/python bench/first_paint.py --profile           # + cProfile of one run
    .venv/bin/python bench/first_paint.py --uncached --runs 3 # the catalog's cache emptied

The data (built once, kept in WORK/first-paint/N/ and reused; ``--rebuild`` makes
it again): an encrypted repository (the default key derivation, as a user's) with
ten filesets of a few small files each. Each fileset is backed up for real
(``Engine.backup``); the other snapshots are copies of those real records, each
with its own time (one an hour going back), parent chain and sizes, written
through ``Repository.save_snapshot``: the call ``ops/backup.run_backup`` commits
a backup with (zstd, AES-GCM, a content-addressed, fsynced object in
``snapshots/``). That is what ``Engine.snapshots()`` lists and opens, so the
inventory reads them exactly as it reads real ones; only the pack data behind
them is shared, which the inventory never reads. 90% are marked verified in the
catalog (``Catalog.mark_verified``, as verify does).

A run is a fresh interpreter (``first_paint.py _sample``), so each one pays
what a user starting the console pays: imports, opening the repository (scrypt),
listing and decrypting every snapshot record, filling the table. It starts the
console headless (``App.run_test``) at a terminal size and reports:

* ``start -> rows painted``: from ``BackupConsole(...)`` being made to the first
  frame the compositor produced with every row in the inventory table (the frame
  is also encoded to terminal output, which headless runs otherwise skip);
* ``process -> rows painted``: the same from the process's start (imports
  included);
* the parts: ``Engine.snapshots()`` in its worker, and the UI thread's handling
  of ``SnapshotsLoaded`` (the table filled).

The engine caches each record's inventory fields in the catalog once it has read
it (``ops/resolve.inventory_rows``): runs after the first list from that cache
(each record's bytes are still read and checked against its name);
``--uncached`` empties it before each run, as for a console's very first listing.

The first screen is whatever the console shows first (the inventory, or the
dashboard once it exists: then ``--start inventory`` when the console takes a
``start=`` keyword, and a second figure for the dashboard's first paint). The
median of ``--runs`` runs per size is appended to RESULTS.md with the machine
and the load other processes put on it meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import inspect
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
TARGET_SECONDS = 1.0
SOURCES = 10


def log(msg: str) -> None:
    print(f"[first-paint {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the data
def write_config(root: Path) -> Path:
    cfg = root / "config.toml"
    lines = ["[repository]", f'path = "{root / "repo"}"',
             f'password_file = "{root / "repo.pass"}"', "[state]", f'dir = "{root / "state"}"']
    for i in range(SOURCES):
        lines += ["[[fileset]]", f'name = "app-{i:02d}"', f'paths = ["{root / "src" / str(i)}"]']
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def build(root: Path, count: int) -> Path:
    """The repository and catalog with ``count`` snapshots (see the module docstring)."""
    sys.path.insert(0, str(ROOT))
    from engine.config import load_config
    from engine.facade import Engine

    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    pw = root / "repo.pass"
    pw.write_text("bench-password")
    os.chmod(pw, 0o600)
    for i in range(SOURCES):
        d = root / "src" / str(i)
        d.mkdir(parents=True)
        for j in range(5):
            (d / f"file-{j}.txt").write_text(f"source {i} file {j}\n" * (50 + 37 * j))
    cfg = write_config(root)
    eng = Engine(load_config(cfg))
    eng.init()
    t0 = time.monotonic()
    real = [eng.backup("files", f"app-{i:02d}", replicate=False) for i in range(SOURCES)]
    repo = eng.repo()
    templates = [repo.load_snapshot(r.id) for r in real]
    log(f"{len(real)} real backups in {time.monotonic() - t0:.1f} s")
    newest = {t["source"]: datetime.fromisoformat(t["time"]) for t in templates}
    chain: dict[str, str | None] = {t["source"]: None for t in templates}
    ids: list[str] = [r.id for r in real]
    t0 = time.monotonic()
    copies = count - len(templates)
    # Oldest first, so that each copy's parent is the copy before it of the same source.
    for n in range(copies):
        tpl = templates[n % SOURCES]
        hours_back = copies // SOURCES + 1 - n // SOURCES
        rec = copy.deepcopy({k: v for k, v in tpl.items() if k != "id"})
        rec["time"] = (newest[tpl["source"]] - timedelta(hours=hours_back)).isoformat()
        rec["parent"] = chain[tpl["source"]]
        stats = rec.setdefault("stats", {})
        stats["size"] = int(stats.get("size", 0)) + 4096 * (n % 97)
        stats["added"] = 0 if n % 5 else 512 * (n % 13)
        stats["duration"] = round(0.05 + (n % 17) / 100, 3)
        sid = repo.save_snapshot(rec)
        chain[tpl["source"]] = sid
        ids.append(sid)
        if n and n % 2000 == 0:
            log(f"{n} snapshot records written ({time.monotonic() - t0:.0f} s)")
    log(f"{copies} snapshot records written in {time.monotonic() - t0:.1f} s")
    eng.catalog.mark_verified(ids[: len(ids) * 9 // 10], read_data=False)
    (root / "ready").write_text(json.dumps({"snapshots": count, "built": time.time()}))
    return cfg


# ------------------------------------------------------------------ one run
def sample(cfg: Path, size: tuple[int, int], expect: int, start: str | None,
           profile: Path | None) -> dict:
    """One run in this (fresh) interpreter: see the module docstring."""
    t_proc = process_start()
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # profile.py
    if not os.environ.get("PYTHONPATH"):  # else the code under test (--code) is there
        sys.path.insert(0, str(ROOT))
    from textual._compositor import CompositorUpdate

    from backup_tui.app import BackupConsole
    from backup_tui.widgets.snapshot_table import SnapshotTable
    from engine.config import load_config
    from engine.facade import Engine

    t_imported = time.time()
    marks: dict[str, float] = {}
    kwargs: dict = {"run_scheduler": False}
    if start and "start" in inspect.signature(BackupConsole.__init__).parameters:
        kwargs["start"] = start

    class Engine_(Engine):  # the parts: opening the repository, listing the snapshots
        def repo(self):
            t = time.perf_counter()
            try:
                return super().repo()
            finally:
                marks.setdefault("repo_open", time.perf_counter() - t)

        def snapshots(self, *a, **kw):
            self.repo()
            t = time.perf_counter()
            if profile is not None and "engine_snapshots" not in marks:  # in its thread
                import cProfile
                prof = cProfile.Profile()
                out = prof.runcall(super().snapshots, *a, **kw)
                prof.dump_stats(str(profile) + ".engine")
            else:
                out = super().snapshots(*a, **kw)
            marks.setdefault("engine_snapshots", time.perf_counter() - t)
            if not dashboard:  # the dashboard's call is its _read, timed on its own
                marks.setdefault("engine_call", marks["engine_snapshots"])
            return out

    def timed(cls, name: str, mark: str):
        """Time the first call of ``cls.name`` as ``mark`` (the handler or engine call)."""
        f = getattr(cls, name)

        def wrapper(self, *a, **kw):
            t = time.perf_counter()
            try:
                return f(self, *a, **kw)
            finally:
                marks.setdefault(mark, time.perf_counter() - t)

        setattr(cls, name, wrapper)

    dashboard = start == "dashboard"
    if dashboard:  # its one engine call reads status, health and history
        from backup_tui.screens.dashboard import DashboardScreen
        timed(DashboardScreen, "_read", "engine_call")
        timed(DashboardScreen, "on_dashboard_loaded", "ui_loaded")
    else:
        from backup_tui.screens.inventory import InventoryScreen
        timed(InventoryScreen, "on_snapshots_loaded", "ui_loaded")  # the table filled

    t0 = time.perf_counter()
    eng = Engine_(load_config(cfg))
    app = BackupConsole(eng, **kwargs)
    first_screen: dict[str, float] = {}

    def rows_shown(every: bool = False) -> bool:
        """The list was handled and the table holds a screenful of rows (``every``: all);
        the dashboard: its figures were handled."""
        if "ui_loaded" not in marks:
            return False
        if dashboard:
            return type(app.screen).__name__ == "DashboardScreen"
        try:
            table = app.screen.query_one(SnapshotTable)
        except Exception:  # another screen first
            return False
        want = expect if every else min(expect, max(1, table.size.height - 1))
        return table.row_count >= want

    display = app._display

    def hooked(screen, renderable) -> None:
        display(screen, renderable)
        if renderable is None:
            return
        if isinstance(renderable, CompositorUpdate):
            renderable.render_segments(app.console)  # what a real terminal would be sent
        now = time.perf_counter()
        first_screen.setdefault(type(app.screen).__name__, now - t0)
        if "painted" not in marks and rows_shown():
            marks["painted"] = now - t0
            marks["painted_wall"] = time.time()
        if "all_rows" not in marks and rows_shown(every=True):
            marks["all_rows"] = now - t0

    app._display = hooked  # type: ignore[method-assign]

    async def run() -> None:
        async with app.run_test(size=size, headless=True):
            deadline = time.monotonic() + 120
            while "all_rows" not in marks and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
                if not dashboard and type(app.screen).__name__ != "InventoryScreen":
                    if "switched" not in marks and "inventory" in app._modes:
                        marks["switched"] = time.perf_counter() - t0
                        app.switch_mode("inventory")

    if profile is not None:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(run())
        prof.disable()
        prof.dump_stats(profile)
        print("== the UI thread (cumulative)")
        pstats.Stats(str(profile)).sort_stats("cumulative").print_stats(45)
        print("== Engine.snapshots() in its worker (cumulative)")
        pstats.Stats(str(profile) + ".engine").sort_stats("cumulative").print_stats(25)
    else:
        asyncio.run(run())
    if "painted" not in marks:
        raise SystemExit("the inventory never showed its rows")
    return {
        "size": f"{size[0]}x{size[1]}",
        "start_to_painted": marks["painted"],
        "start_to_all_rows": marks.get("all_rows"),
        "process_to_painted": marks["painted_wall"] - t_proc,
        "imports": t_imported - t_proc,
        "repo_open": marks.get("repo_open"),
        "engine_snapshots": marks.get("engine_call"),
        "ui_loaded": marks.get("ui_loaded"),
        "first_screen": first_screen,
        "switched_to_inventory": "switched" in marks,
    }


def process_start() -> float:
    """This process's start as a time.time() value (from /proc)."""
    stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(stat[19])  # starttime, in clock ticks after boot
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ the report
def busy_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


def self_cpu_children() -> float:
    r = os.times()
    return r.children_user + r.children_system


def machine() -> dict[str, str]:
    info = {"cpus (nproc)": str(os.cpu_count())}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory"] = f"{int(mem) / 1024 / 1024:.1f} GiB"
    except (OSError, IndexError, ValueError):
        pass
    info["kernel"] = platform.release()
    info["python"] = platform.python_version()
    try:
        import textual
        info["textual"] = textual.__version__
    except ImportError:
        pass
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--snapshots", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5, help="runs per terminal size")
    ap.add_argument("--sizes", default="160x48,80x24")
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--start", default="inventory",
                    help="the console's start= keyword, when it has one")
    ap.add_argument("--code", default="HEAD",
                    help="the revision of engine/ and backup_tui/ measured (git archive, as "
                    "the other benches), or 'worktree' for the files as they are")
    ap.add_argument("--profile", action="store_true",
                    help="also run once under cProfile (WORK/first-paint/first_paint.prof)")
    ap.add_argument("--uncached", action="store_true",
                    help="empty the catalog's cache of inventory rows before each run (a "
                    "console's first listing: a new catalog, or records it has not read)")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()

    root = args.work / "first-paint" / str(args.snapshots)
    if args.rebuild or not (root / "ready").exists():
        log(f"building a repository with {args.snapshots} snapshots in {root}")
        build(root, args.snapshots)
    cfg = write_config(root)
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    sys.path.insert(0, str(HERE))
    import benchlib
    env, _cmd, code_label = benchlib.export_code(args.code, args.work / "first-paint")
    cmd = [PYTHON, "-P", str(Path(__file__).resolve()), "_sample", str(cfg)]
    starts = [args.start]
    has_start = subprocess.run(
        [PYTHON, "-P", "-c", "import inspect, backup_tui.app as a; print('start' in "
         "inspect.signature(a.BackupConsole.__init__).parameters)"],
        capture_output=True, text=True, env=env).stdout.strip() == "True"
    if has_start and args.start != "dashboard":
        starts.append("dashboard")  # the console's own first screen, measured beside
    results: dict[str, list[dict]] = {}
    loads: list[float] = []
    for start in starts:
        for w, h in sizes:
            key = f"{start} {w}x{h}"
            for i in range(args.runs):
                if args.uncached:
                    forget_rows(root / "state" / "catalog.sqlite")
                b0, t0 = busy_cpu()
                c0 = self_cpu_children()
                wall0 = time.time()
                out = subprocess.run(cmd + [f"{w}x{h}", str(args.snapshots), start],
                                     capture_output=True, text=True, cwd=ROOT, env=env)
                wall = time.time() - wall0
                b1, t1 = busy_cpu()
                c1 = self_cpu_children()
                if out.returncode != 0:
                    raise SystemExit(f"run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                # other processes' CPU meanwhile, in cores (the machine's busy time less ours)
                hz = os.sysconf("SC_CLK_TCK")
                other = max(0.0, (b1 - b0) / hz - (c1 - c0)) / max(wall, 1e-6)
                r["other_load"] = other
                loads.append(other)
                results.setdefault(key, []).append(r)
                log(f"{key} run {i + 1}: start->painted {r['start_to_painted']:.3f} s, "
                    f"all rows {r['start_to_all_rows'] or 0:.3f} s, "
                    f"process->painted {r['process_to_painted']:.3f} s, repo open "
                    f"{r['repo_open'] or 0:.3f} s, engine.snapshots "
                    f"{r['engine_snapshots'] or 0:.3f} s, table fill {r['ui_loaded'] or 0:.3f} s"
                    f" (other load {other:.2f} cores)")
    if args.profile:
        prof = root.parent / "first_paint.prof"
        w, h = sizes[0]
        out = subprocess.run(cmd + [f"{w}x{h}", str(args.snapshots), args.start, str(prof)],
                             capture_output=True, text=True, cwd=ROOT, env=env)
        print(out.stdout[:20000])
    report = render(results, args.snapshots, loads, code_label, args.uncached)
    print(report)
    if not args.no_results:
        with open(args.results, "a") as f:
            f.write("\n" + report)
        log(f"appended to {args.results}")
    return 0


def forget_rows(catalog: Path) -> None:
    """Empty the catalog's cache of inventory rows (engine/catalog.py, table inventory_rows)."""
    import sqlite3
    db = sqlite3.connect(catalog)
    try:
        db.execute("DELETE FROM inventory_rows")
        db.commit()
    except sqlite3.OperationalError:  # no such table: an engine without the cache
        pass
    finally:
        db.close()


def med(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def render(results: dict[str, list[dict]], count: int, loads: list[float], code: str,
           uncached: bool = False) -> str:
    now = datetime.now(UTC)
    out = [f"## Console first paint with {count:,} snapshots: "
           f"{now.strftime('%Y-%m-%d %H:%M')} UTC (`bench/first_paint.py`)", ""]
    info = machine()
    info["backup-tui"] = code
    out += ["Machine: " + "; ".join(f"{k}: {v}" for k, v in info.items()) + ".", ""]
    cache = ("the catalog's cache of inventory rows emptied before each run (a first "
             "listing)" if uncached else "the catalog's cache of inventory rows filled by "
             "earlier runs, as after any console's first listing, where the engine has it")
    out += [f"Median of the runs (each a fresh interpreter; warm page cache; {cache}). "
            "First paint "
            "(\"rows painted\"): the first frame with the list handled and a screenful of "
            "rows in the table. Target: first paint <= 1 s.", "",
            "| first screen, size | runs | start -> rows painted | process -> rows painted "
            "(imports included) | start -> every row in the table | repository opened (scrypt, "
            "index) | engine call (inventory: Engine.snapshots(); dashboard: status, health, "
            "history) | its answer handled (UI thread) | target |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for key, rows in results.items():
        s = med(rows, "start_to_painted")
        p = med(rows, "process_to_painted")
        a = med(rows, "start_to_all_rows")
        o = med(rows, "repo_open")
        e = med(rows, "engine_snapshots")
        u = med(rows, "ui_loaded")
        verdict = "met" if s is not None and s <= TARGET_SECONDS else (
            f"**missed** by {(s / TARGET_SECONDS - 1) * 100:.0f}%")
        worst = max(r["start_to_painted"] for r in rows)
        out.append(f"| {key} | {len(rows)} | {s:.3f} s (max {worst:.3f}) | {p:.3f} s "
                   f"| {a or 0:.3f} s | {o or 0:.3f} s | {e or 0:.3f} s | {u or 0:.3f} s "
                   f"| {verdict} |")
    busy = [x for x in loads if x > 0.15]
    out += ["", f"Other load: {len(busy)} of {len(loads)} runs shared the machine with more "
            f"than 0.15 of a core of other work (at most {max(loads, default=0):.2f} cores)"
            f"; the machine has {os.cpu_count()} cores.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_sample":
        cfg_, size_, expect_, start_ = sys.argv[2:6]
        prof_ = Path(sys.argv[6]) if len(sys.argv) > 6 else None
        w_, h_ = (int(x) for x in size_.split("x"))
        print(json.dumps(sample(Path(cfg_), (w_, h_), int(expect_), start_, prof_)))
        sys.exit(0)
    sys.exit(main())
