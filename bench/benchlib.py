"""Shared by run_db.py and run_s3.py: the code under test, the machine, verdicts.

The timing, RSS, quiet-machine and page-cache machinery is run.py's own
(``Runner``, ``Cache``); this module only adds what both newer benchmarks need
on top of it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import run as filesbench  # noqa: E402  (bench/run.py: Runner, Cache, sh, du_bytes, ...)

BenchError = filesbench.BenchError
Cache = filesbench.Cache
Runner = filesbench.Runner
du_bytes = filesbench.du_bytes
log = filesbench.log
sh = filesbench.sh
MiB = filesbench.MiB

PYTHON = str(ROOT / ".venv" / "bin" / "python")


def export_code(rev: str, work: Path) -> tuple[dict, list[str], str]:
    """(env, command prefix, label) running backup-tui from ``git archive REV`` of
    engine/ and backup_tui/ (as run.py does), or from the work tree for 'worktree'."""
    env = dict(os.environ)
    if rev == "worktree":
        code_dir = ROOT
        label = "work tree as checked out"
    else:
        code_dir = work / "code"
        shutil.rmtree(code_dir, ignore_errors=True)
        code_dir.mkdir(parents=True)
        short = sh(["git", "-C", str(ROOT), "rev-parse", "--short", rev]).strip()
        sh(f"git -C {ROOT} archive {short} engine backup_tui | tar -x -C {code_dir}")
        # compiled to bytecode, as `pip install` leaves a package (with
        # PYTHONDONTWRITEBYTECODE set, every command would compile every module)
        sh([PYTHON, "-m", "compileall", "-q", str(code_dir)])
        label = (f"{short} (git archive of engine/ and backup_tui/ at that commit, compiled "
                 "to bytecode)")
    env["PYTHONPATH"] = str(code_dir)
    where = sh([PYTHON, "-P", "-c", "import engine; print(engine.__file__)"], env=env)
    if not where.startswith(str(code_dir)):
        raise BenchError(f"the engine under test was imported from {where.strip()}, not {code_dir}")
    return env, [PYTHON, "-P", "-m", "backup_tui.cli"], label


def machine(work: Path, code_label: str) -> dict:
    info = filesbench.machine_info(work, None)
    for k in ("restic", "tar", "zstd"):
        info.pop(k, None)
    info["backup-tui"] = code_label
    return info


def verdict(measured: float | None, limit: float) -> str:
    if measured is None:
        return "n/a"
    if measured <= limit:
        return "met"
    return f"**MISSED** by {(measured / limit - 1) * 100:.0f}%"


def other_load_lines(runner: Runner) -> list[str]:
    busy = [(lbl, ld) for lbl, ld in runner.loads if ld > 0.15]
    out = []
    if busy:
        out.append(
            "Other load: processes outside the measured command used more than 0.15 of a "
            "core on average during "
            + ", ".join(f"{lbl} ({ld:.2f} cores)" for lbl, ld in busy)
            + f"; those timings are noisier (the machine has {os.cpu_count()} cores)."
        )
    else:
        out.append(
            "Other load: no timed command shared the machine with more than 0.15 of a core "
            "of other work."
        )
    noisy = [(lbl, ld) for lbl, _w, ld in runner.waited if ld >= 0.2]
    if noisy:
        out.append(
            "The machine did not become quiet within --quiet-wait before: "
            + ", ".join(f"{lbl} ({ld:.2f} cores busy)" for lbl, ld in noisy)
            + "."
        )
    return out


def proc_cpu(pid: int, children: bool = True) -> float:
    """CPU seconds of a process: its own, its reaped children's, and (children=True) the
    user+system time of its live children. Exited children that were reaped are in the
    parent's cutime/cstime, so a before/after difference counts short-lived workers too
    (e.g. PostgreSQL backends under the postmaster)."""
    tck = os.sysconf("SC_CLK_TCK")

    def fields(p: int | str) -> list[str]:
        return Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()

    try:
        f = fields(pid)
    except OSError:
        return 0.0
    total = sum(int(x) for x in f[11:15])  # utime stime cutime cstime
    if children:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                c = fields(entry)
            except OSError:
                continue
            if int(c[1]) == pid:
                total += int(c[11]) + int(c[12])
    return total / tck


def run_beside(runner: Runner, server_cpu, label: str, cmd: list[str], env: dict) -> dict:
    """runner.run, with the CPU time a server process spent meanwhile (server_cpu():
    cumulative seconds) taken out of the "other load" and returned as server_cpu."""
    c0 = server_cpu()
    r = runner.run(label, cmd, env=env)
    spent = max(0.0, server_cpu() - c0)
    lbl, other = runner.loads[-1]
    runner.loads[-1] = (lbl, max(0.0, other - spent / max(r["wall"], 1e-6)))
    r["server_cpu"] = spent
    return r
