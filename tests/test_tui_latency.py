"""Key latency while a backup runs (issue 12): logged, never asserted.

A real console over a real engine (``sandbox``): a small fileset backed up five
times, so the inventory has rows to move through, and a big one (512 MiB of
incompressible files) that ``b``, the picker and Enter back up. While that backup
runs, rounds of keys are pressed one at a time (``bench/key_latency.py``, which
this test loads from its file: switch screens ``j s d i``, move the cursor, open
and close the help and the palette, the sources tab and back), each sent as a
terminal's key is (the driver's queue, not Pilot's ``press``, which waits for the
process to go idle and so cannot measure anything while a backup keeps it busy).

For each key the log has the time until the app's state shows its effect and
until the next frame is drawn (and encoded as a terminal would be sent it), and
whether the backup still ran; then the median, p90 and max while it ran. The log
goes to the terminal (``-s``), to the test's ``record_property`` and to
``bench/work/key_latency.log``. The test asserts that every key took effect (the
screen switched, the help opened and closed, the cursor moved), and that the keys
were pressed while the backup ran; never a time. Speed is figured in bench/.
"""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import sys
from pathlib import Path

from backup_tui.app import BackupConsole

ROOT = Path(__file__).resolve().parent.parent
SIZE = (80, 24)
BIG_MIB = 512


def key_latency():
    """bench/key_latency.py as a module (bench/ itself is not put on sys.path: its profile.py
    would shadow the standard library's)."""
    name = "bench_key_latency"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "key_latency.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclass looks its module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_keys_answer_while_a_backup_runs(sandbox, record_property):
    kl = key_latency()
    small, big = sandbox.root / "small", sandbox.root / "big"
    kl.fill_small(small)
    kl.fill_big(big, BIG_MIB)
    sandbox.filesets = {"small": [str(small)], "big": [str(big)]}
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    for _ in range(5):
        engine.backup("files", "small", replicate=False)
    app = BackupConsole(engine, run_scheduler=False, start="inventory")
    rows: list[dict] = []

    async def flow():
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            for _ in range(1000):  # the list is read in a worker
                if app.screen.query("SnapshotTable") and \
                        app.screen.query_one("SnapshotTable").row_count == 5:
                    break
                await asyncio.sleep(0.01)
            rows.extend(await kl.backup_with_keys(app, rounds=2))

    asyncio.run(flow())

    header = [f"Key latency while a backup runs (tests/test_tui_latency.py): {SIZE[0]}x{SIZE[1]}, "
              f"a backup of {BIG_MIB} MiB started with b; times are logged, not asserted"]
    text = kl.log_text(rows, header)
    print("\n" + text)
    record_property("key_latency", text)
    painted = [r["painted_ms"] for r in rows if r["backup_running"] and r["painted_ms"]]
    if painted:
        record_property("key_latency_median_ms", round(statistics.median(painted), 1))
        record_property("key_latency_max_ms", round(max(painted), 1))
    log = ROOT / "bench" / "work" / "key_latency.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(text)

    # Every key took effect: a cursor move only while the backup ran before and after it
    # (the backup's end reloads the list, a moment later, and puts the cursor on the new
    # snapshot).
    for r in rows:
        moved = r["what"].startswith("cursor")
        if moved and not (r["backup_running"] and r["backup_running_after"]):
            continue
        assert r["took_effect"], f"{r['key']} ({r['what']}) in round {r['round']} had no effect"
    first_round = [r for r in rows if r["round"] == 1]
    assert first_round and first_round[0]["backup_running"], \
        "the backup had ended before the first key: nothing measured under load"
    assert {r["what"] for r in first_round} >= {
        "to the jobs screen", "to the schedule", "to the dashboard", "to the inventory",
        "open the help", "close the help", "open the palette", "close the palette"}
