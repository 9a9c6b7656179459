"""``backup-tui --demo`` in a terminal: the sandbox, the console on it running the
sandbox's schedule (short intervals: jobs appear live), the servers stopped however
the console ends, and the sandbox removed when the demo made its folder.

The sandbox is built in a new temporary folder, removed when the demo ends (on
``q``, Ctrl+C, a closed terminal or an exception alike; its servers and write load
are stopped first). In ``$BACKUP_TUI_DEMO_DIR`` instead, it is kept, to look at or
run again: when that folder already holds one, its servers are started again (the
S3 server starts empty, so its buckets are made and filled again).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backup_tui.demo import CONFIG_NAME, DEMO_DIR_ENV, Demo, build_demo, open_demo
from engine.facade import Engine
from engine.sandbox import reachable_tempdir


def _sandbox() -> tuple[Demo, bool]:
    """The sandbox, built unless $BACKUP_TUI_DEMO_DIR already holds one; and whether it is
    in a temporary folder of the demo's own (removed at the end)."""
    chosen = os.environ.get(DEMO_DIR_ENV)
    if chosen and (Path(chosen) / CONFIG_NAME).exists():
        print(f"Reusing the demo sandbox in {Path(chosen).absolute()} ...", file=sys.stderr)
        return open_demo(Path(chosen), lambda line: print(line, file=sys.stderr)), False
    # a folder of our own: 0755, so that the PostgreSQL server's OS user reaches its part
    root = Path(chosen).absolute() if chosen else reachable_tempdir("backup-tui-demo-")
    print(f"Building the demo sandbox in {root} ...", file=sys.stderr)
    try:
        return build_demo(root), not chosen
    except BaseException:
        if not chosen:  # a half-built sandbox in a folder of our own is of no use
            shutil.rmtree(root, ignore_errors=True)
        raise


@contextmanager
def _exit_on_hangup() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal) end the demo like Ctrl+C, so its servers stop."""

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


def run() -> int:
    """Build (or reuse) the sandbox, run the console and its scheduler on it, stop its
    servers; remove a sandbox of its own, else say where it is."""
    from backup_tui.app import run_console

    with _exit_on_hangup():
        demo, own = _sandbox()
        try:
            if demo.note:
                print(demo.note, file=sys.stderr)
            # The console runs the demo's schedule (short intervals) when no daemon does;
            # it stops it (a running job gets a few seconds) before it returns.
            return run_console(Engine(demo.config()), notice=demo.note or None,
                               run_scheduler=True)
        finally:
            if own:
                demo.remove()
                print(f"The demo sandbox {demo.root} is removed{_stopped(demo)}; keep one "
                      f"with {DEMO_DIR_ENV}=FOLDER backup-tui --demo")
            else:
                demo.stop()
                print(f"The demo sandbox is in {demo.root}{_stopped(demo)}\n"
                      f"  look again:  backup-tui --config {demo.config_path} list\n"
                      f"  run again:   {DEMO_DIR_ENV}={demo.root} backup-tui --demo\n"
                      f"  remove it:   rm -rf {demo.root}")
