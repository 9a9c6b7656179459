#!/usr/bin/env python3
"""Profile one backup-tui benchmark phase with py-spy and print where the time goes.

    .venv/bin/pip install py-spy          # into the venv only, not a project dependency
    .venv/bin/python bench/profile.py --phase initial --size-mib 1024

Builds its own tree and repository under WORK/profile/ (the tree is kept between
calls, so several phases can be profiled in a row), brings the repository to the
state the phase needs (unprofiled), drops the page cache, and runs the phase's
command under ``py-spy record --idle --threads``: every thread is sampled whether
it runs or waits, so a function's share of its thread's samples is its share of
that thread's wall time. Prints per thread, then per function, the inclusive
(function and everything it calls) and self (the function's own line, C calls
made from it included: zstd, AES-GCM, hashlib release the GIL but are attributed
to the Python line that called them) share of samples. The raw stacks are kept in
WORK/profile/PHASE.raw.txt (collapsed format, for flamegraph.pl or speedscope).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PHASES = ("initial", "nochange", "day2", "restore", "verify")

# frames where a thread only waits for work (thread pool workers, joins)
IDLE_FUNCS = re.compile(
    r"^(?:\w+\.)?(wait|get|_worker|acquire|result|join|_wait_for_tstate_lock) \("
)


def sh(cmd, **kw) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"profile: failed: {cmd}\n{r.stderr[-3000:]}")
    return r.stdout


def drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def parse_raw(path: Path) -> dict[str, list[tuple[list[str], int]]]:
    """thread name -> [(frames root..leaf, samples)] from py-spy's raw (collapsed) output."""
    out: dict[str, list[tuple[list[str], int]]] = defaultdict(list)
    rows = []
    names: dict[str, str] = {}
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        parts = stack.split(";")
        head = parts[0]  # "thread (tid): Name", or "thread (tid)" before py-spy knows the name
        tid, _, name = head.partition(": ")
        if name:
            names[tid] = name
        rows.append((tid, name, parts[1:], int(n)))
    for tid, name, frames, n in rows:
        name = name or names.get(tid, tid)
        name = re.sub(r"_\d+$", "_N", name)  # seal_0, seal_1 -> seal_N
        out[name].append((frames, n))
    return out


def func_of(frame: str) -> str:
    """ "func (file.py:12)" -> "func (file.py)" """
    return re.sub(r":\d+\)$", ")", frame)


def short(frame: str) -> str:
    # "func (path/to/file.py:12)" -> "func (file.py:12)"
    m = re.match(r"^(.*) \((.*?):?(\d*)\)$", frame)
    if not m:
        return frame
    func, file, line = m.groups()
    file = file.replace(str(ROOT) + "/", "")
    file = re.sub(r"^.*/site-packages/", "", file)
    file = re.sub(r"^.*/lib/python3\.\d+/", "", file)
    return f"{func} ({file}:{line})" if line else f"{func} ({file})"


def report(raw: Path, wall: float, rate: int, top: int) -> str:
    threads = parse_raw(raw)
    lines: list[str] = []
    total_wall_samples = max(1, round(wall * rate))
    lines.append(
        f"wall {wall:.2f} s, {rate} samples/s per thread (~{total_wall_samples} per "
        "thread over the run)\n"
    )
    lines.append(
        "Threads (samples, share of the run's wall time, share busy i.e. not waiting for work):"
    )
    groups = sorted(threads.items(), key=lambda kv: -sum(n for _, n in kv[1]))
    for name, stacks in groups:
        n = sum(c for _, c in stacks)
        idle = sum(c for fr, c in stacks if fr and IDLE_FUNCS.match(fr[-1]))
        lines.append(
            f"  {name:24} {n:7d} samples  {100 * n / total_wall_samples:6.1f}% of wall"
            f"  busy {100 * (n - idle) / max(1, n):5.1f}%"
        )
    for name, stacks in groups:
        n = sum(c for _, c in stacks)
        if n < 0.02 * total_wall_samples:
            continue
        incl: Counter[str] = Counter()
        selft: Counter[str] = Counter()
        lines_self: Counter[str] = Counter()
        for frames, c in stacks:
            seen = set()
            for f in frames:
                s = func_of(short(f))
                if s not in seen:
                    incl[s] += c
                    seen.add(s)
            if frames:
                selft[func_of(short(frames[-1]))] += c
                lines_self[short(frames[-1])] += c
        lines.append(f"\n== thread {name}: {n} samples ==")
        lines.append("  self %   incl %   function")
        keys = [k for k, _ in selft.most_common(top)]
        for k in keys:
            lines.append(f"  {100 * selft[k] / n:6.1f}   {100 * incl[k] / n:6.1f}   {k}")
        lines.append("  -- inclusive, top --")
        for k, v in incl.most_common(top):
            lines.append(f"  {100 * selft[k] / n:6.1f}   {100 * v / n:6.1f}   {k}")
        lines.append("  -- self by source line (C calls are charged to the calling line) --")
        for k, v in lines_self.most_common(top):
            lines.append(f"  {100 * v / n:6.1f}            {k}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", choices=PHASES, required=True)
    ap.add_argument(
        "--report-only",
        type=float,
        metavar="WALL_S",
        help="do not run: print the report of WORK/profile/PHASE.raw.txt (wall time given)",
    )
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument(
        "--code",
        default="worktree",
        help="'worktree' (default: the checked-out engine) or a git revision",
    )
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    ap.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    args = ap.parse_args(argv)

    pyspy = ROOT / ".venv" / "bin" / "py-spy"
    if not pyspy.exists():
        pyspy = Path(shutil.which("py-spy") or "")
        if not pyspy.name:
            raise SystemExit("profile: py-spy missing: .venv/bin/pip install py-spy")
    python = str(ROOT / ".venv" / "bin" / "python")
    base = args.work.resolve() / "profile"
    if args.report_only:
        print(report(base / f"{args.phase}.raw.txt", args.report_only, args.rate, args.top))
        return 0
    base.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.code == "worktree":
        env["PYTHONPATH"] = str(ROOT)
        code_label = "work tree as checked out"
    else:
        code = base / "code"
        shutil.rmtree(code, ignore_errors=True)
        code.mkdir()
        subprocess.run(
            f"git -C {ROOT} archive {args.code} engine backup_tui | tar -x -C {code}",
            shell=True,
            check=True,
        )
        env["PYTHONPATH"] = str(code)
        code_label = sh(["git", "-C", str(ROOT), "rev-parse", "--short", args.code]).strip()
    ours = [python, "-P", "-m", "backup_tui.cli"]

    src = base / f"src-{args.size_mib}" / "app-data"
    if not src.exists():
        print(f"generating {args.size_mib} MiB tree in {src}", file=sys.stderr)
        sh(
            [
                sys.executable,
                str(HERE / "gen_tree.py"),
                str(src),
                "--size-mib",
                str(args.size_mib),
                "--seed",
                str(args.seed),
            ]
        )
    repo = base / "repo"
    state = base / "state"
    for d in (repo, state, base / "restore"):
        shutil.rmtree(d, ignore_errors=True)
    state.mkdir()
    pw = base / "password"
    pw.write_text("bench-password\n")
    cfg = base / "config.toml"
    cfg.write_text(
        f"[repository]\npath = {json.dumps(str(repo))}\npassword_file = {json.dumps(str(pw))}\n"
        f"[state]\ndir = {json.dumps(str(state))}\n"
        f'[[fileset]]\nname = "app"\npaths = [{json.dumps(str(src))}]\n'
    )
    c = [*ours, "--config", str(cfg)]
    sh([*c, "init"], env=env)
    if args.phase != "initial":
        print("preparing: first backup (not profiled)", file=sys.stderr)
        sh([*c, "backup", "files", "app", "--json"], env=env)
    if args.phase == "day2":
        sh(
            [
                sys.executable,
                str(HERE / "gen_tree.py"),
                str(src),
                "--mutate",
                "--seed",
                str(args.seed + int(time.time()) % 1000),
            ]
        )
    cmd = {
        "initial": [*c, "backup", "files", "app", "--json"],
        "nochange": [*c, "backup", "files", "app", "--json"],
        "day2": [*c, "backup", "files", "app", "--json"],
        "restore": [*c, "restore", "files", "latest", "--target", str(base / "restore")],
        "verify": [*c, "verify", "--read-data"],
    }[args.phase]
    raw = base / f"{args.phase}.raw.txt"
    spy = [
        str(pyspy),
        "record",
        "--idle",
        "--threads",
        "-f",
        "raw",
        "-r",
        str(args.rate),
        "-o",
        str(raw),
    ]
    if args.gil:
        spy.append("--gil")
    if args.native:
        spy.append("--native")
    cold = drop_caches()
    print(
        f"profiling {args.phase} ({'cold' if cold else 'warm'} cache): {' '.join(cmd[2:])}",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    r = subprocess.run([*spy, "--", *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"profile: command failed:\n{r.stderr[-3000:]}")
    text = (
        f"phase {args.phase}, {args.size_mib} MiB, {'cold' if cold else 'warm'} cache, "
        f"code {code_label}\n" + report(raw, wall, args.rate, args.top)
    )
    (base / f"{args.phase}.report.txt").write_text(text)
    print(text)
    shutil.rmtree(base / "restore", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
