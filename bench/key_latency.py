#!/usr/bin/env python3
"""Key latency of the console while a backup runs (issue 12 target: every key <= 100 ms).

    .venv/bin/python bench/key_latency.py                   # 3 GiB fileset, 3 rounds of keys
    .venv/bin/python bench/key_latency.py --mib 128 --rounds 1 --no-results   # smoke

The console (``App.run_test``, headless, 160x48) over a real engine: a small
fileset backed up a few times (so the inventory has rows to move through) and a
big one (``--mib`` of incompressible files in 4 MiB files and 2 KiB files). ``b``
and the picker start a real backup of the big one; while it runs, a round of
keys is pressed (``KEYS``: switch screens with ``j s d i``, move the cursor, open
and close the help ``?`` and the palette ``ctrl+p``/``escape``, the sources tab
and back) and each key's latency is taken:

* *reflected*: from the key event entering the app's driver (as a terminal's
  key does) to the app's state showing its effect (the screen switched, the
  cursor on the next row, the help open), checked every millisecond;
* *painted*: to the first frame the compositor produced after that, encoded to
  terminal output as a real terminal would be sent it (headless runs skip that
  encoding otherwise). That is the key's answer as a user sees it.

Each key also has the UI thread's own CPU time from the key to its frame
(``time.thread_time``): when it is close to the latency, the time goes to the
console's own work on the UI thread, not to waiting for the backup's threads.

Keys are pressed one at a time, each after the previous one is painted and 50 ms
of quiet. The backup's own figures (bytes, seconds) and whether it was still
running at each key go to the log; at the end the app exits (which cancels the
backup). ``tests/test_tui_latency.py`` drives the same rounds in pytest, asserts
only that every key took effect, and writes the same log.

Results: a section appended to RESULTS.md (machine, other load on this 2-core
machine) and the per-key log in WORK/key_latency.log. ``--profile`` prints cProfile
of the UI thread for the slowest keys. Experiments, for comparing (``--no-results``):
``--job-nice N`` sets ``[console] job_nice`` (the console's jobs N nice steps below
it), ``--switch-interval S`` sets
``sys.setswitchinterval``. (The footer recomposing only when its keys change, once the
experiment ``--footer-skip``, is what the console does now.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET_MS = 100.0


# ----------------------------------------------------------------- the data
def fill_big(folder: Path, mib: int, small_files: int = 1500) -> None:
    """``mib`` MiB of incompressible data in 4 MiB files, and ``small_files`` 2 KiB files."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(max(1, mib // 4)):
        (folder / f"blob-{i:04d}.bin").write_bytes(os.urandom(4 << 20))
    small = folder / "small"
    small.mkdir(exist_ok=True)
    for i in range(small_files):
        (small / f"note-{i:05d}.txt").write_text(f"note {i}\n" + os.urandom(1000).hex())


def fill_small(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(5):
        (folder / f"file-{i}.txt").write_text(f"line {i}\n" * 200)


# ----------------------------------------------------------------- the keys
@dataclass
class Step:
    key: str
    what: str
    done: Callable[[], bool] | None = None  # the app shows the key's effect
    arm: Callable[[], Callable[[], bool]] | None = None  # makes ``done`` as the key is sent

    def condition(self) -> Callable[[], bool]:
        return self.arm() if self.arm is not None else self.done  # type: ignore[return-value]


def steps(app) -> list[Step]:
    """One round of keys from the inventory's snapshots tab, back to it at the end."""
    from textual.command import CommandPalette

    from backup_tui.screens.help import HelpScreen
    from backup_tui.widgets.snapshot_table import SnapshotTable

    def mode(name: str) -> Callable[[], bool]:
        def shown() -> bool:
            screen = app.screen
            return app.current_mode == name and not screen.is_modal and screen.is_mounted
        return shown

    def table() -> SnapshotTable:
        return app.screen.query_one(SnapshotTable)

    def moved(by: int) -> Callable[[], Callable[[], bool]]:
        """The cursor one row down (by=1) or up from where it is when the key is sent."""
        def arm() -> Callable[[], bool]:
            start = table().cursor_row
            return lambda: mode("inventory")() and table().cursor_row == start + by
        return arm

    def tab(name: str) -> Callable[[], bool]:
        from textual.widgets import TabbedContent
        return lambda: app.screen.query_one("#views", TabbedContent).active == name

    out = [
        Step("j", "to the jobs screen", mode("jobs")),
        Step("s", "to the schedule", mode("schedule")),
    ]
    if "dashboard" in app._modes:
        out.append(Step("d", "to the dashboard", mode("dashboard")))
    out += [
        Step("i", "to the inventory", mode("inventory")),
        Step("down", "cursor one row down", arm=moved(1)),
        Step("down", "cursor one row down", arm=moved(1)),
        Step("down", "cursor one row down", arm=moved(1)),
        Step("up", "cursor one row up", arm=moved(-1)),
        Step("up", "cursor one row up", arm=moved(-1)),
        Step("up", "cursor one row up", arm=moved(-1)),
        Step("question_mark", "open the help", lambda: isinstance(app.screen, HelpScreen)),
        Step("question_mark", "close the help", mode("inventory")),
        Step("ctrl+p", "open the palette", lambda: isinstance(app.screen, CommandPalette)),
        Step("escape", "close the palette", mode("inventory")),
        Step("o", "to the sources tab", tab("sources-tab")),
        Step("escape", "back to the snapshots tab", tab("snapshots-tab")),
    ]
    return out


class FrameClock:
    """Times of the frames the app draws: wraps ``App._display`` and encodes each update to
    terminal output as a real terminal's driver would (headless runs skip that)."""

    def __init__(self, app) -> None:
        from textual._compositor import CompositorUpdate

        self.app = app
        self.frames = 0
        self.profiles: dict[str, list] | None = None  # key -> cProfile.Profile of each press
        self.waiting: tuple[Callable[[], bool], asyncio.Event, list[float]] | None = None
        display = app._display

        def hooked(screen, renderable) -> None:
            display(screen, renderable)
            if renderable is None:
                return
            if isinstance(renderable, CompositorUpdate):
                renderable.render_segments(app.console)
            self.frames += 1
            if self.waiting is not None:
                done, event, when = self.waiting
                if done():
                    when.append(time.perf_counter())
                    event.set()

        app._display = hooked

    async def press(self, step: Step, timeout: float = 20.0) -> dict:
        """Send ``step.key`` as a terminal would; the times until it shows and is painted."""
        import unicodedata

        from textual import events
        from textual.keys import _character_to_key, _get_unicode_name_from_key

        app = self.app
        key = step.key
        if len(key) == 1 and not key.isalnum():
            key = _character_to_key(key)
        try:
            char = unicodedata.lookup(_get_unicode_name_from_key(key))
        except KeyError:
            char = key if len(key) == 1 else None
        painted: list[float] = []
        event = asyncio.Event()
        done = step.condition()
        self.waiting = (done, event, painted)
        prof = None
        if self.profiles is not None:
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        cpu0 = time.thread_time()  # this (the UI) thread's CPU time
        t0 = time.perf_counter()
        message = events.Key(key, char)
        message.set_sender(app)
        app._driver.send_message(message)
        reflected = None
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            if reflected is None and done():
                reflected = time.perf_counter()
            if painted:
                break
            await asyncio.sleep(0.001)
        self.waiting = None
        ui_cpu = (time.thread_time() - cpu0) * 1000
        if painted and (reflected is None or painted[0] < reflected):
            reflected = painted[0]  # seen by a frame before this loop looked again
        if prof is not None:
            prof.disable()
            self.profiles.setdefault(f"{step.key} ({step.what})", []).append(prof)
        return {
            "key": step.key, "what": step.what,
            "reflected_ms": None if reflected is None else (reflected - t0) * 1000,
            "painted_ms": (painted[0] - t0) * 1000 if painted else None,
            "took_effect": reflected is not None,
            "ui_cpu_ms": ui_cpu,
        }


def start_steps(app, name: str = "big") -> list[Step]:
    """``b``, then the big fileset in the picker (it lists the sources in order: the big one
    second), then Enter: the backup starts."""
    from textual.widgets import OptionList

    from backup_tui.screens.source_picker import SourcePicker

    def highlighted() -> Callable[[], bool]:
        def arm() -> Callable[[], bool]:
            start = app.screen.query_one(OptionList).highlighted
            return lambda: app.screen.query_one(OptionList).highlighted != start
        return arm

    return [
        Step("b", "open the source picker", lambda: isinstance(app.screen, SourcePicker)),
        Step("down", "the next source", arm=highlighted()),
        Step("enter", "start the backup",
             lambda: not isinstance(app.screen, SourcePicker) and bool(app.job_tokens.running())),
    ]


async def backup_with_keys(app, rounds: int, quiet: float = 0.05,
                           progress: Callable[[], dict] | None = None,
                           source: str = "big") -> list[dict]:
    """Start the backup of ``source`` with keys, then press rounds of ``steps`` while it runs:
    at least one round, at most ``rounds``. Each row says whether the backup still ran."""
    from backup_tui.screens.source_picker import SourcePicker

    clock = FrameClock(app)
    if getattr(app, "_profile_keys", False):
        clock.profiles = {}
        app._key_profiles = clock.profiles
    rows: list[dict] = []

    async def press(step: Step, r: int) -> None:
        running = bool(app.job_tokens.running())
        row = await clock.press(step)
        row["round"] = r
        row["backup_running"] = running or step.key == "enter" and r == 0
        row["backup_running_after"] = bool(app.job_tokens.running())
        if progress is not None:
            row.update(progress())
        rows.append(row)
        await asyncio.sleep(quiet)

    for step in start_steps(app, source):
        if step.key == "down":  # as many as the source's place in the picker
            names = [s.name for s in app.screen.sources] if isinstance(
                app.screen, SourcePicker) else [source]
            for _ in range(names.index(source)):
                await press(step, 0)
        else:
            await press(step, 0)
    for r in range(1, rounds + 1):
        if r > 1 and not app.job_tokens.running():
            break
        for step in steps(app):
            await press(step, r)
    return rows


# ----------------------------------------------------------------- the report
def summary(rows: list[dict], which: str = "painted_ms") -> dict:
    vals = [r[which] for r in rows if r.get(which) is not None and r["backup_running"]]
    if not vals:
        return {"n": 0}
    vals.sort()
    return {"n": len(vals), "median": statistics.median(vals), "max": vals[-1],
            "p90": vals[min(len(vals) - 1, int(round(0.9 * (len(vals) - 1))))],
            "over": sum(1 for v in vals if v > TARGET_MS)}


def log_text(rows: list[dict], header: list[str]) -> str:
    out = [*header, "",
           f"{'round':>5}  {'key':<14} {'what':<28} {'reflected':>10} {'painted':>9} "
           f"{'UI CPU':>9}  backup running"]
    for r in rows:
        ref = "-" if r["reflected_ms"] is None else f"{r['reflected_ms']:.1f} ms"
        pnt = "-" if r["painted_ms"] is None else f"{r['painted_ms']:.1f} ms"
        ran = "yes" if r["backup_running"] else "not yet" if r["round"] == 0 else "no (ended)"
        cpu = f"{r['ui_cpu_ms']:.1f} ms"
        out.append(f"{r['round']:>5}  {r['key']:<14} {r['what']:<28} {ref:>10} {pnt:>9} "
                   f"{cpu:>9}  {ran}")
    for which in ("reflected_ms", "painted_ms", "ui_cpu_ms"):
        s = summary(rows, which)
        if s["n"]:
            out.append(f"{which[:-3]} while the backup ran: {s['n']} keys, median "
                       f"{s['median']:.1f} ms, p90 {s['p90']:.1f} ms, max {s['max']:.1f} ms, "
                       f"{s['over']} over {TARGET_MS:.0f} ms")
    return "\n".join(out) + "\n"


def own_cpu() -> float:
    """CPU seconds of this process and of its children that ended (the backup's reader and
    warm-up processes, reaped when it ends): not "other load"."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def busy_jiffies() -> tuple[int, int]:
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)


# ----------------------------------------------------------------- the bench
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=3072,
                    help="size of the big fileset (3 GiB: its backup, about 15 s here, lasts "
                    "through the 3 rounds of keys)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of keys at most, while the backup runs (one at least)")
    ap.add_argument("--size", default="160x48")
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--no-results", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the UI thread (the asyncio loop) and print its top functions")
    ap.add_argument("--job-nice", type=int, default=None,
                    help="[console] job_nice for the run (default: the config's default)")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds to wait after the rows show before the first key, as a "
                    "person reads the screen first (0: at once, while the console still "
                    "builds its other screens, about 0.8 s from the start)")
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="sys.setswitchinterval before the console starts (an experiment)")
    args = ap.parse_args()
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    sys.path.insert(0, str(ROOT))
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    import shutil

    from backup_tui.app import BackupConsole
    from engine.config import load_config
    from engine.facade import Engine

    root = args.work / "key-latency"
    made = root / f"big-{args.mib}-mib"  # the data is kept between runs; the rest is not
    for old in (root / "repo", root / "state"):
        shutil.rmtree(old, ignore_errors=True)
    if not made.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        t = time.monotonic()
        fill_big(root / "big", args.mib)
        fill_small(root / "small")
        made.write_text("")
        print(f"[key-latency] {args.mib} MiB written in {time.monotonic() - t:.1f} s",
              flush=True)
    (root / "repo.pass").write_text("bench-password")
    os.chmod(root / "repo.pass", 0o600)
    cfg = root / "config.toml"
    cfg.write_text("\n".join([
        "[repository]", f'path = "{root / "repo"}"', f'password_file = "{root / "repo.pass"}"',
        "[state]", f'dir = "{root / "state"}"',
        "[[fileset]]", 'name = "small"', f'paths = ["{root / "small"}"]',
        "[[fileset]]", 'name = "big"', f'paths = ["{root / "big"}"]',
        *(["[console]", f"job_nice = {args.job_nice}"] if args.job_nice is not None else [])])
        + "\n")
    engine = Engine(load_config(cfg))
    args.job_nice = engine.config.console.job_nice  # as the console runs it (the report)
    engine.init()
    for _ in range(5):
        engine.backup("files", "small", replicate=False)
    kwargs: dict = {"run_scheduler": False}
    import inspect
    if "start" in inspect.signature(BackupConsole.__init__).parameters:
        kwargs["start"] = "inventory"
    app = BackupConsole(engine, **kwargs)
    w, h = (int(x) for x in args.size.split("x"))
    rows: list[dict] = []
    started = [0.0]

    def progress() -> dict:
        from backup_tui.widgets.job_panel import JobPanel
        panels = app.screen.query(JobPanel) if app.current_mode == "inventory" else []
        state = next((c for p in panels for c in p.classes if c.startswith("-")), "")
        text = next((p.text for p in panels), "")
        return {"backup_seconds": time.monotonic() - started[0], "panel": f"{state} {text}"}

    async def run() -> None:
        async with app.run_test(size=(w, h)):
            for _ in range(500):
                if app.screen.query("SnapshotTable") and \
                        app.screen.query_one("SnapshotTable").row_count >= 5:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(args.settle)  # a person reads the screen before a key
            started[0] = time.monotonic()
            rows.extend(await backup_with_keys(app, args.rounds, progress=progress))

    b0, t0 = busy_jiffies()
    c0 = own_cpu()
    wall0 = time.monotonic()
    app._profile_keys = args.profile
    asyncio.run(run())
    if args.profile:  # the UI thread while each key was answered, slowest keys first
        import pstats
        by_key = {k: v for k, v in app._key_profiles.items()}
        slow = sorted(by_key, key=lambda k: -max(r["painted_ms"] or 0 for r in rows
                                                  if f"{r['key']} ({r['what']})" == k))
        for k in slow[:6]:
            stats = pstats.Stats(*by_key[k])
            print(f"==== {k}: {len(by_key[k])} presses")
            stats.sort_stats("cumulative").print_stats(35)
            stats.print_callers("recompose|refresh_bindings|_watch_compact")
    wall = time.monotonic() - wall0
    b1, t1 = busy_jiffies()
    other = max(0.0, (b1 - b0) / os.sysconf("SC_CLK_TCK") - (own_cpu() - c0)) / wall
    missing = [r for r in rows if not r["took_effect"]]
    now = datetime.now(UTC)
    header = [f"Key latency while a backup runs: {now.strftime('%Y-%m-%d %H:%M')} UTC, "
              f"{w}x{h}, big fileset {args.mib} MiB, {args.rounds} round(s); "
              f"{os.cpu_count()} cores, other processes used {other:.2f} cores meanwhile"]
    text = log_text(rows, header)
    print(text)
    for r in rows:
        print(f"{r['backup_seconds']:.1f} s: {r.get('panel', '')[:150]!r}")
    (args.work / "key_latency.log").write_text(text)
    if missing:
        print(f"keys without effect: {missing}")
        return 1
    if not args.no_results:
        with open(args.results, "a") as f:
            f.write("\n" + report(rows, args, w, h, other, now))
        print(f"[key-latency] appended to {args.results}")
    return 0


def report(rows, args, w, h, other, now) -> str:
    import subprocess
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "engine",
                            "backup_tui"], capture_output=True, text=True).stdout.strip()
    cpu = next((ln.split(":", 1)[1].strip() for ln in
                Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    p, r = summary(rows, "painted_ms"), summary(rows, "reflected_ms")
    ran = sum(1 for x in rows if x["backup_running"])
    verdict = "met" if p.get("n") and p["max"] <= TARGET_MS else "**missed**"
    out = [f"## Key latency while a backup runs: {now.strftime('%Y-%m-%d %H:%M')} UTC "
           "(`bench/key_latency.py`)", "",
           f"Machine: {os.cpu_count()} cores ({cpu}), python {platform.python_version()}; "
           f"backup-tui {rev}{' (work tree with uncommitted changes)' if dirty else ''} "
           "from the work tree. "
           f"Other processes used {other:.2f} cores on average meanwhile"
           + (" (other work on the machine: the figures are noisier)" if other > 0.15 else "")
           + ".", "",
           f"Console headless at {w}x{h}; a backup of {args.mib} MiB (incompressible, 4 MiB "
           f"files and 1,500 small ones) started with `b` "
           + (f"{args.settle:g} s after the rows showed" if args.settle else
              "as soon as the rows showed")
           + f" ([console] job_nice {args.job_nice})"
           + f"; {len(rows)} keys in "
           f"{args.rounds} round(s) (`j s d i`, down/up, `?` twice, ctrl+p/escape, `o`/"
           f"escape), {ran} of them while the backup ran. Every key took effect.", "",
           "| while the backup ran | keys | median | p90 | max | over 100 ms | target "
           "(every key <= 100 ms) |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, s in (("painted (answer on screen)", p), ("reflected (app state)", r)):
        if s.get("n"):
            out.append(f"| {name} | {s['n']} | {s['median']:.1f} ms | {s['p90']:.1f} ms | "
                       f"{s['max']:.1f} ms | {s['over']} | "
                       f"{verdict if name.startswith('painted') else ''} |")
    slow = sorted((x for x in rows if x["backup_running"] and (x["painted_ms"] or 0) > TARGET_MS),
                  key=lambda x: -x["painted_ms"])[:5]
    if slow:
        out += ["", "Slowest keys: " + "; ".join(
            f"`{x['key']}` {x['what']} {x['painted_ms']:.0f} ms" for x in slow) + "."]
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
