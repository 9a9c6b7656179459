"""``backup-tui --demo`` in a terminal: the sandbox, the console on it, the servers
stopped however the console ends, and where the sandbox lives.

The sandbox is built in a new temporary folder, or in ``$BACKUP_TUI_DEMO_DIR``;
when that folder already holds one, its servers are started again instead (the
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


def _sandbox() -> Demo:
    """The sandbox: built, unless $BACKUP_TUI_DEMO_DIR already holds one."""
    chosen = os.environ.get(DEMO_DIR_ENV)
    if chosen and (Path(chosen) / CONFIG_NAME).exists():
        print(f"Reusing the demo sandbox in {Path(chosen).absolute()} ...", file=sys.stderr)
        return open_demo(Path(chosen), lambda line: print(line, file=sys.stderr))
    # a folder of our own: 0755, so that the PostgreSQL server's OS user reaches its part
    root = Path(chosen).absolute() if chosen else reachable_tempdir("backup-tui-demo-")
    print(f"Building the demo sandbox in {root} ...", file=sys.stderr)
    try:
        return build_demo(root)
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
    """Build (or reuse) the sandbox, run the console on it, stop its servers, say where it is."""
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
