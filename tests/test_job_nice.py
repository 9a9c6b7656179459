"""Jobs the console runs yield the CPU to it: ``[console] job_nice`` (engine.jobs.run_niced).

A job runs on a thread of its own, that many nice steps below the thread that asked for
it; the threads and processes the job starts inherit that priority (Linux keeps the nice
value per thread); the asking thread, often a pool's, keeps its own."""

from __future__ import annotations

import asyncio
import contextvars
import os
import subprocess
import threading
import tomllib

import pytest
from test_tui_jobs import until

from backup_tui.app import BackupConsole
from engine.config import parse_config
from engine.errors import ConfigError
from engine.jobs import run_niced


def nice_now() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_run_niced_runs_lower_and_leaves_the_caller_as_it_was():
    before = nice_now()
    assert run_niced(nice_now, 5) == min(19, before + 5)
    assert nice_now() == before
    assert run_niced(nice_now, 0) == before  # 0: here, as it is


def test_what_the_job_starts_inherits_its_priority():
    before = nice_now()

    def job() -> tuple[int, int]:
        seen: list[int] = []
        t = threading.Thread(target=lambda: seen.append(nice_now()))
        t.start()
        t.join()
        child = int(subprocess.run(["nice"], capture_output=True, text=True,
                                   check=True).stdout)
        return seen[0], child

    assert run_niced(job, 3) == (min(19, before + 3),) * 2


def test_run_niced_passes_errors_and_context_on():
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var")
    var.set("the caller's")
    assert run_niced(var.get, 2) == "the caller's"

    def fails() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        run_niced(fails, 2)


@pytest.mark.parametrize("value", ["-1", "20", "\"5\""])
def test_a_job_nice_out_of_range_is_refused(value, tmp_path):
    text = (f"[repository]\npath = \"{tmp_path / 'repo'}\"\n"
            f"[state]\ndir = \"{tmp_path / 'state'}\"\n[console]\njob_nice = {value}\n")
    with pytest.raises(ConfigError, match="console.job_nice"):
        parse_config(tomllib.loads(text))


def test_a_backup_from_the_console_runs_job_nice_steps_below_it(sandbox):
    (sandbox.src / "a.txt").write_text("a\n")
    sandbox.extra = "[console]\njob_nice = 7\n"
    sandbox.write_config()
    engine = sandbox.engine(init=True)
    assert engine.config.console.job_nice == 7
    ran_at: list[int] = []
    real = engine.backup

    def backup(*args, **kwargs):
        ran_at.append(nice_now())
        return real(*args, **kwargs)

    engine.backup = backup
    app = BackupConsole(engine, start="inventory", run_scheduler=False)
    ui: list[int] = []

    async def flow():
        async with app.run_test(size=(120, 40)) as pilot:
            ui.append(nice_now())
            await until(pilot, lambda: app.screen.sources is not None, 10, "sources read")
            await pilot.press("b")  # one source: it starts at once
            await until(pilot, lambda: engine.snapshots(), 60, "the snapshot")

    asyncio.run(flow())
    assert ran_at == [min(19, ui[0] + 7)]
    assert nice_now() == ui[0]
