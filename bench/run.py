#!/usr/bin/env python3
"""Benchmark ``backup-tui backup files`` against restic and ``tar | zstd -3 -T0``.

Run from the repository root with the project's venv::

    .venv/bin/python bench/run.py                 # 1024 MiB, several minutes
    .venv/bin/python bench/run.py --size-mib 128  # quick smoke run

Phases, each tool side by side in one run, the page cache dropped before every
timed command when possible (root): initial backup, no-change backup, day-2
backup (after ``gen_tree.py --mutate``, ~1% of bytes), restore of the latest
snapshot into a fresh directory (checked file by file against the source), and
verify with read-data (``restic check --read-data``). Each command runs under
``/usr/bin/time -f %M`` (a fresh wrapper per command, so peak RSS is that
command's own). Stored bytes are ``du -sb`` of each repository (or the size of
the .tar.zst). A dated section with the machine, the dataset, one table per
phase and the targets is appended to bench/RESULTS.md.

restic missing: its columns are skipped with a note (install: ``apt-get install
restic``). Everything runs on local disk under --work (default bench/work/,
gitignored); the large directories are removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 1024 * 1024

OURS, RESTIC, TAR = "backup-tui", "restic", "tar|zstd"

# phase -> target ratio of our wall time to restic's (issue 14's targets)
TARGETS = {
    "initial": 0.8,
    "nochange": 0.8,
    "day2": 0.8,
    "restore": 0.7,
    "verify": 0.8,
}
TAR_INITIAL_TARGET = 1.4
DAY2_STORED_TARGET = 1.0
RSS_TARGET_MIB = 250

PHASE_TITLES = {
    "initial": "Initial backup",
    "nochange": "No-change backup",
    "day2": "Day-2 backup (after ~1% mutation)",
    "restore": "Restore (latest snapshot, fresh directory)",
    "verify": "Verify with read-data",
}


class BenchError(Exception):
    pass


# ------------------------------------------------------------------ helpers


def log(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def sh(cmd: list[str] | str, **kw) -> str:
    """Run a helper command (not timed); return stdout."""
    res = subprocess.run(cmd, capture_output=True, text=True, shell=isinstance(cmd, str), **kw)
    if res.returncode != 0:
        raise BenchError(f"command failed ({res.returncode}): {cmd}\n{res.stderr[-2000:]}")
    return res.stdout


def du_bytes(path: Path) -> int:
    if not path.exists():
        return 0
    return int(sh(["du", "-sb", str(path)]).split()[0])


class Cache:
    """Drops the page cache before each timed command when allowed."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.ok = False
        if enabled:
            self.ok = self.drop()

    def drop(self) -> bool:
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            return True
        except OSError:
            return False

    def before(self) -> None:
        if self.enabled and self.ok:
            self.drop()
        else:
            os.sync()

    @property
    def label(self) -> str:
        return (
            "cold cache (page cache dropped before each timed command)"
            if self.ok
            else (
                "warm cache (could not drop the page cache: not root, or not allowed here)"
                if self.enabled
                else "warm cache (--no-drop-caches)"
            )
        )


class Runner:
    def __init__(self, work: Path, cache: Cache, time_bin: str | None, quiet_wait: float = 0):
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.cache = cache
        self.time_bin = time_bin
        self.n = 0
        self.loads: list[tuple[str, float]] = []
        self.quiet_wait = quiet_wait
        self.waited: list[tuple[str, float, float]] = []  # label, seconds waited, load then

    def wait_quiet(self, label: str) -> None:
        """Wait (at most quiet_wait s) until other processes use < 0.2 core for 2 s running."""
        if self.quiet_wait <= 0:
            return
        t0 = time.monotonic()
        calm = 0
        load = 0.0
        while time.monotonic() - t0 < self.quiet_wait:
            b0 = _busy_seconds()
            time.sleep(1.0)
            load = _busy_seconds() - b0  # we are idle: all of it is others'
            calm = calm + 1 if load < 0.2 else 0
            if calm >= 2:
                break
        waited = time.monotonic() - t0
        if waited > 3 or calm < 2:
            self.waited.append((label, waited, load))
            log(
                f"{label}: waited {waited:.0f} s for the machine to be quiet "
                f"({'quiet' if calm >= 2 else f'still {load:.2f} cores busy, going on'})"
            )

    def run(self, label: str, cmd: list[str], env: dict | None = None, check: bool = True) -> dict:
        """Time one command: wall seconds, peak RSS of the command (KiB), stdout."""
        self.n += 1
        stem = f"{self.n:02d}-{re.sub(r'[^A-Za-z0-9]+', '-', label).strip('-')}"
        out_p, err_p, rss_p = (self.logs / f"{stem}.{x}" for x in ("out", "err", "rss"))
        if self.time_bin:
            full = [self.time_bin, "-f", "%M %U %S", "-o", str(rss_p), "--", *cmd]
        else:  # a fresh wrapper process per command, so RUSAGE_CHILDREN is this command's
            full = [sys.executable, "-c", _RSS_WRAPPER, str(rss_p), *cmd]
        self.wait_quiet(label)
        self.cache.before()
        log(f"{label}: {' '.join(cmd)[:160]}")
        busy0 = _busy_seconds()
        with open(out_p, "wb") as out, open(err_p, "wb") as err:
            t0 = time.perf_counter()
            rc = subprocess.call(full, stdout=out, stderr=err, env=env)
            wall = time.perf_counter() - t0
        busy = _busy_seconds() - busy0
        try:
            fields = rss_p.read_text().strip().splitlines()[-1].split()
            rss_kib = int(fields[0])
            cpu = float(fields[1]) + float(fields[2])
        except (OSError, ValueError, IndexError):
            rss_kib, cpu = 0, 0.0
        stdout = out_p.read_bytes().decode(errors="replace")
        if check and rc != 0:
            tail = err_p.read_bytes().decode(errors="replace")[-3000:]
            raise BenchError(f"{label} failed with exit code {rc}: {' '.join(cmd)}\n{tail}")
        # CPU used by other processes meanwhile (other sessions share this machine)
        other = max(0.0, busy - cpu) / max(wall, 1e-6)
        log(
            f"{label}: {wall:.2f} s, cpu {cpu:.2f} s, peak RSS {rss_kib / 1024:.0f} MiB, "
            f"other load {other:.2f} cores, exit {rc}"
        )
        self.loads.append((label, other))
        return {
            "wall": wall,
            "cpu": cpu,
            "rss_mib": rss_kib / 1024,
            "rc": rc,
            "stdout": stdout,
            "log": str(out_p),
        }


_RSS_WRAPPER = """
import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
u = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{u.ru_maxrss} {u.ru_utime} {u.ru_stime}")
sys.exit(rc)
"""


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    try:
        f = Path("/proc/stat").read_text().splitlines()[0].split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f[1:9])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


# --------------------------------------------------------- tree checking


def listing(root: Path) -> dict[str, tuple]:
    """path -> (type, size, sha256 or link target, mode, mtime_s) for every entry under root."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", 0, os.readlink(p), mode, 0)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", 0, "", mode, 0)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                out[rel] = ("file", st.st_size, digest, mode, int(st.st_mtime))
            else:
                out[rel] = ("other", 0, "", mode, 0)
    return out


def compare(expected: dict, got: dict) -> tuple[list[str], list[str]]:
    """(mismatches, soft warnings). Content, type, size and mode must match; mtime warns."""
    bad: list[str] = []
    warn: list[str] = []
    for p in sorted(expected.keys() - got.keys())[:20]:
        bad.append(f"missing: {p}")
    missing = len(expected.keys() - got.keys())
    if missing > 20:
        bad.append(f"... {missing - 20} more missing")
    extra = sorted(got.keys() - expected.keys())
    for p in extra[:20]:
        bad.append(f"extra: {p}")
    n_bad = 0
    n_mtime = 0
    for p in sorted(expected.keys() & got.keys()):
        e, g = expected[p], got[p]
        if e[:4] != g[:4]:
            n_bad += 1
            if n_bad <= 20:
                bad.append(
                    f"differs: {p}: expected {e[:2]} {e[2][:12]} mode {e[3]:o}, "
                    f"got {g[:2]} {g[2][:12]} mode {g[3]:o}"
                )
        elif e[0] == "file" and e[4] != g[4]:
            n_mtime += 1
    if n_bad > 20:
        bad.append(f"... {n_bad - 20} more differ")
    if n_mtime:
        warn.append(f"{n_mtime} file(s) restored with a different mtime")
    return bad, warn


# ------------------------------------------------------------- machine


def machine_info(work: Path, restic: str | None) -> dict:
    info: dict[str, str] = {}
    info["cpus (nproc)"] = sh(["nproc"]).strip()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory"] = f"{int(mem) / 1024 / 1024:.1f} GiB"
    except (OSError, IndexError, ValueError):
        pass
    try:
        df = sh(["df", "-T", "-B1", str(work)]).splitlines()[-1].split()
        dev = df[0]
        info["disk"] = (
            f"{dev} ({df[1]}), {int(df[2]) / 1024**3:.0f} GiB, "
            f"{int(df[4]) / 1024**3:.0f} GiB free at start"
        )
        base = os.path.basename(os.path.realpath(dev))
        rot = Path(f"/sys/block/{base}/queue/rotational")
        if rot.exists():
            info["disk"] += f", rotational={rot.read_text().strip()} (as the kernel reports it)"
            if base.startswith("vd"):
                info["disk"] += ", a virtio disk of a VM"
    except (BenchError, IndexError, ValueError, OSError):
        pass
    info["kernel"] = platform.release()
    info["python"] = platform.python_version()
    try:
        rev = sh(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).strip()
        dirty = sh(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "engine", "backup_tui"]
        ).strip()
        info["backup-tui"] = rev + (" (engine has uncommitted changes)" if dirty else "")
    except BenchError:
        pass
    info["restic"] = sh([restic, "version"]).strip() if restic else "not installed"
    info["zstd"] = sh(["zstd", "--version"]).strip()
    info["tar"] = sh(["tar", "--version"]).splitlines()[0]
    return info


# ------------------------------------------------------------- the run


def find_bin(name: str) -> str | None:
    return shutil.which(name)


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n:,}"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return a / b


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="backup-tui vs restic vs tar|zstd benchmark")
    ap.add_argument("--size-mib", type=int, default=1024, help="dataset size (default 1024)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--work", type=Path, default=HERE / "work", help="work dir (bench/work)")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--no-drop-caches", action="store_true")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=300,
        help="before each timed command, wait up to this many seconds for other processes "
        "to leave the CPUs idle (0: do not wait); default 300",
    )
    ap.add_argument("--no-restic", action="store_true", help="skip restic even if installed")
    ap.add_argument("--keep", action="store_true", help="keep the tree and repositories")
    ap.add_argument(
        "--code",
        default="HEAD",
        help="git revision of engine/ and backup_tui/ to measure, exported to "
        "WORK/code (default HEAD, so uncommitted edits do not leak in); "
        "'worktree' runs the checked-out files as they are",
    )
    ap.add_argument(
        "--python",
        default=str(ROOT / ".venv" / "bin" / "python"),
        help="the venv's python, with backup-tui's dependencies",
    )
    args = ap.parse_args(argv)

    work: Path = args.work.resolve()
    if not os.access(args.python, os.X_OK):
        raise SystemExit(
            f"bench: {args.python} not found; set up the venv "
            "(python -m venv .venv && .venv/bin/pip install -e .)"
        )
    restic = None if args.no_restic else find_bin("restic")
    notes: list[str] = []
    if restic is None and not args.no_restic:
        msg = (
            "restic is not installed: restic columns are skipped. Install it with "
            "'apt-get update && apt-get install -y restic' (Debian package restic)."
        )
        log(msg)
        notes.append(msg)
    for tool in ("tar", "zstd", "du"):
        if not find_bin(tool):
            raise SystemExit(f"bench: {tool} is required (apt-get install -y {tool})")
    time_bin = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
    if time_bin is None:
        notes.append(
            "/usr/bin/time missing (apt-get install -y time): peak RSS measured "
            "with a Python wrapper's RUSAGE_CHILDREN instead"
        )

    # disk: the tree, three repositories or archives, one restore at a time
    need = args.size_mib * MiB * 5
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    if free < need:
        raise SystemExit(
            f"bench: {work} has {free / 2**30:.1f} GiB free, needs about {need / 2**30:.1f} GiB"
        )
    for sub in ("src", "ours", "restic", "tar", "restore"):
        shutil.rmtree(work / sub, ignore_errors=True)
    shutil.rmtree(work / "logs", ignore_errors=True)

    cache = Cache(not args.no_drop_caches)
    runner = Runner(work, cache, time_bin, args.quiet_wait)
    machine = machine_info(work, restic)
    ours_env = dict(os.environ)
    if args.code == "worktree":
        code_dir = ROOT
        machine["backup-tui"] += " (run from the work tree as is)"
    else:
        code_dir = work / "code"
        shutil.rmtree(code_dir, ignore_errors=True)
        code_dir.mkdir()
        rev = sh(["git", "-C", str(ROOT), "rev-parse", "--short", args.code]).strip()
        sh(f"git -C {ROOT} archive {rev} engine backup_tui | tar -x -C {code_dir}")
        # compiled to bytecode, as `pip install` leaves a package (a machine with
        # PYTHONDONTWRITEBYTECODE set would otherwise compile every module at every
        # command: 0.1-0.15 s each on this machine)
        sh([args.python, "-m", "compileall", "-q", str(code_dir)])
        machine["backup-tui"] = (f"{rev} (git archive of engine/ and backup_tui/ at that "
                                 "commit, compiled to bytecode)")
    # -P: do not put the current directory first on sys.path (the work tree)
    ours_env["PYTHONPATH"] = str(code_dir)
    ours_bin_cmd = [args.python, "-P", "-m", "backup_tui.cli"]
    started = dt.datetime.now(dt.UTC)

    # ---------------------------------------------------------- dataset
    src = work / "src" / "app-data"
    log(f"generating {args.size_mib} MiB tree (seed {args.seed}) in {src}")
    gen = json.loads(
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
    )
    log(f"tree: {gen['files']} files, {gen['bytes'] / MiB:.0f} MiB in {gen['seconds']} s")
    list_day1 = listing(src)

    # ---------------------------------------------------------- setups
    ours_dir = work / "ours"
    (ours_dir / "state").mkdir(parents=True)
    pw = ours_dir / "password"
    pw.write_text("bench-password\n")
    pw.chmod(0o600)
    ours_repo = ours_dir / "repo"
    cfg = ours_dir / "config.toml"
    cfg.write_text(
        "[repository]\n"
        f"path = {json.dumps(str(ours_repo))}\n"
        f"password_file = {json.dumps(str(pw))}\n"
        'compression = "zstd:3"\n\n'
        "[state]\n"
        f"dir = {json.dumps(str(ours_dir / 'state'))}\n\n"
        "[[fileset]]\n"
        'name = "app"\n'
        f"paths = [{json.dumps(str(src))}]\n"
    )
    ours = [*ours_bin_cmd, "--config", str(cfg)]
    sh([*ours, "init"], env=ours_env)
    where = sh([args.python, "-P", "-c", "import engine; print(engine.__file__)"], env=ours_env)
    if not where.startswith(str(code_dir)):
        raise BenchError(f"the engine under test was imported from {where.strip()}, not {code_dir}")

    restic_repo = work / "restic" / "repo"
    renv = dict(os.environ)
    renv.update(
        RESTIC_REPOSITORY=str(restic_repo),
        RESTIC_PASSWORD="bench-password",
        RESTIC_CACHE_DIR=str(work / "restic" / "cache"),
    )
    if restic:
        (work / "restic").mkdir(parents=True, exist_ok=True)
        sh([restic, "init"], env=renv)
    tar_dir = work / "tar"
    tar_dir.mkdir()
    tar_out = tar_dir / "day1.tar.zst"

    res: dict[str, dict[str, dict]] = {p: {} for p in PHASE_TITLES}
    checks: list[str] = []
    mismatches: list[str] = []

    def backup_ours(phase: str) -> None:
        before = du_bytes(ours_repo)
        r = runner.run(f"{phase} {OURS}", [*ours, "backup", "files", "app", "--json"], env=ours_env)
        data = json.loads(r["stdout"])
        if not data.get("complete", False):
            raise BenchError(f"{OURS} {phase}: snapshot incomplete: {data.get('errors')}")
        after = du_bytes(ours_repo)
        res[phase][OURS] = {
            "wall": r["wall"],
            "cpu": r["cpu"],
            "rss": r["rss_mib"],
            "stored": after,
            "new": after - before,
            "reported_added": data.get("added"),
        }

    def backup_restic(phase: str) -> None:
        if not restic:
            return
        before = du_bytes(restic_repo)
        r = runner.run(f"{phase} {RESTIC}", [restic, "backup", "--json", str(src)], env=renv)
        summary = {}
        for line in r["stdout"].splitlines():
            if '"summary"' in line:
                summary = json.loads(line)
        after = du_bytes(restic_repo)
        res[phase][RESTIC] = {
            "wall": r["wall"],
            "cpu": r["cpu"],
            "rss": r["rss_mib"],
            "stored": after,
            "new": after - before,
            "reported_added": summary.get("data_added"),
        }

    # ---------------------------------------------------------- initial
    backup_ours("initial")
    backup_restic("initial")
    r = runner.run(
        f"initial {TAR}",
        [
            "bash",
            "-c",
            'set -o pipefail; tar -C "$1" -cf - "$2" | zstd -q -3 -T0 -o "$3"',
            "_",
            str(src.parent),
            src.name,
            str(tar_out),
        ],
    )
    res["initial"][TAR] = {
        "wall": r["wall"],
        "cpu": r["cpu"],
        "rss": r["rss_mib"],
        "stored": tar_out.stat().st_size,
        "new": tar_out.stat().st_size,
    }

    # ---------------------------------------------------------- no change
    backup_ours("nochange")
    backup_restic("nochange")

    # ---------------------------------------------------------- day 2
    log("mutating the tree (day 2)")
    mut = json.loads(
        sh(
            [
                sys.executable,
                str(HERE / "gen_tree.py"),
                str(src),
                "--mutate",
                "--seed",
                str(args.seed),
            ]
        )
    )
    list_day2 = listing(src)
    backup_ours("day2")
    backup_restic("day2")

    # ---------------------------------------------------------- restore
    rdir = work / "restore"

    def restored(tool: str, root: Path, expected: dict) -> None:
        bad, warn = compare(expected, listing(root))
        if bad:
            mismatches.append(f"{tool}: {len(bad)} problem(s)")
            sys.stderr.write(
                f"\n!!!!! RESTORE MISMATCH for {tool} !!!!!\n" + "\n".join(bad[:40]) + "\n\n"
            )
            checks.append(f"**{tool}: RESTORE MISMATCH** - " + "; ".join(bad[:5]))
        else:
            checks.append(
                f"{tool}: restored tree matches the source ({len(expected)} entries; "
                "content sha256, size, type, mode)" + (f"; note: {'; '.join(warn)}" if warn else "")
            )

    target = rdir / "ours"
    r = runner.run(
        f"restore {OURS}",
        [*ours, "restore", "files", "latest", "--target", str(target), "--json"],
        env=ours_env,
    )
    res["restore"][OURS] = {"wall": r["wall"], "cpu": r["cpu"], "rss": r["rss_mib"], "stored": None}
    restored(OURS, target / str(src).lstrip("/"), list_day2)
    shutil.rmtree(target)
    if restic:
        target = rdir / "restic"
        r = runner.run(
            f"restore {RESTIC}", [restic, "restore", "latest", "--target", str(target)], env=renv
        )
        res["restore"][RESTIC] = {
            "wall": r["wall"],
            "cpu": r["cpu"],
            "rss": r["rss_mib"],
            "stored": None,
        }
        restored(RESTIC, target / str(src).lstrip("/"), list_day2)
        shutil.rmtree(target)
    target = rdir / "tar"
    target.mkdir(parents=True)
    r = runner.run(
        f"restore {TAR}",
        [
            "bash",
            "-c",
            'set -o pipefail; zstd -q -d -c "$1" | tar -C "$2" -xf -',
            "_",
            str(tar_out),
            str(target),
        ],
    )
    res["restore"][TAR] = {
        "wall": r["wall"],
        "cpu": r["cpu"],
        "rss": r["rss_mib"],
        "stored": None,
        "note": "day-1 archive",
    }
    restored(TAR + " (day-1 archive)", target / src.name, list_day1)
    shutil.rmtree(target)

    # ---------------------------------------------------------- verify
    r = runner.run(
        f"verify {OURS}", [*ours, "verify", "--read-data", "--json"], env=ours_env, check=False
    )
    try:
        vj = json.loads(r["stdout"])
    except ValueError:
        vj = {"ok": False}
    if r["rc"] != 0 or not vj.get("ok"):
        mismatches.append(f"{OURS} verify reported problems (exit {r['rc']})")
        checks.append(f"**{OURS} verify --read-data FAILED** (exit {r['rc']}), see {r['log']}")
    else:
        checks.append(
            f"{OURS} verify --read-data: ok, {vj.get('packs_checked')} packs, "
            f"{vj.get('blobs_checked')} blobs, {vj.get('bytes_read'):,} bytes read"
        )
    res["verify"][OURS] = {"wall": r["wall"], "cpu": r["cpu"], "rss": r["rss_mib"], "stored": None}
    if restic:
        r = runner.run(f"verify {RESTIC}", [restic, "check", "--read-data"], env=renv, check=False)
        if r["rc"] != 0:
            mismatches.append(f"restic check failed (exit {r['rc']})")
        checks.append(f"restic check --read-data: exit {r['rc']}")
        res["verify"][RESTIC] = {
            "wall": r["wall"],
            "cpu": r["cpu"],
            "rss": r["rss_mib"],
            "stored": None,
        }
    r = runner.run(f"verify {TAR}", ["zstd", "-q", "-t", str(tar_out)])
    res["verify"][TAR] = {
        "wall": r["wall"],
        "cpu": r["cpu"],
        "rss": r["rss_mib"],
        "stored": None,
        "note": "zstd -t (frame checksums only)",
    }

    # ---------------------------------------------------------- report
    report = render(args, machine, cache, gen, mut, res, checks, notes, started, work, runner)
    sys.stdout.write(report)
    (work / "last-run.json").write_text(
        json.dumps(
            {
                "size_mib": args.size_mib,
                "seed": args.seed,
                "machine": machine,
                "gen": gen,
                "mutation": mut,
                "results": res,
                "checks": checks,
            },
            indent=2,
        )
    )
    if not args.no_results:
        with open(args.results, "a") as f:
            f.write(report)
        log(f"appended to {args.results}")
    if not args.keep:
        for sub in ("src", "ours", "restic", "tar", "restore"):
            shutil.rmtree(work / sub, ignore_errors=True)
    if mismatches:
        sys.stderr.write("\n!!!!! PROBLEMS: " + "; ".join(mismatches) + " !!!!!\n")
        return 1
    return 0


# ----------------------------------------------------------- rendering


def _prev_rss(results: Path, size: int) -> list[tuple[int, float]]:
    """(size_mib, max our peak RSS) of earlier runs recorded in RESULTS.md."""
    out = []
    if not results.exists():
        return out
    for m in re.finditer(r"<!-- bench: (\{.*?\}) -->", results.read_text()):
        try:
            d = json.loads(m.group(1))
            if d["size_mib"] != size:
                out.append((d["size_mib"], d["ours_max_rss_mib"]))
        except (ValueError, KeyError):
            continue
    return out


def render(args, machine, cache, gen, mut, res, checks, notes, started, work, runner) -> str:
    loads = runner.loads
    L: list[str] = []
    L.append(f"\n## {started:%Y-%m-%d %H:%M} UTC: {args.size_mib} MiB, seed {args.seed}\n")
    L.append("Machine:\n")
    for k, v in machine.items():
        L.append(f"- {k}: {v}")
    L.append(f"- page cache: {cache.label}")
    L.append(f"- work dir: {work} (same disk for source, repositories and restores)")
    L.append("")
    L.append(
        f"Dataset (`gen_tree.py --size-mib {args.size_mib} --seed {args.seed}`): "
        f"{gen['files']:,} files, {gen['bytes']:,} bytes "
        f"({gen['bytes'] / MiB:.0f} MiB): text {gen['text_bytes'] / MiB:.0f} MiB, "
        f"binary {gen['binary_bytes'] / MiB:.0f} MiB, {gen['small_files']:,} small files "
        f"{gen['small_bytes'] / MiB:.0f} MiB."
    )
    L.append(
        f"Day-2 mutation: {mut['changed_bytes']:,} bytes changed ({mut['changed_pct']}%): "
        f"{mut['edited_files']} files edited in place ({mut['edited_bytes']:,} B), "
        f"{mut['inserted_files']} mid-file inserts ({mut['inserted_bytes']:,} B), "
        f"{mut['appended_files']} appends ({mut['appended_bytes']:,} B), "
        f"{mut['new_files']} new files ({mut['new_bytes']:,} B), "
        f"{mut['deleted_files']} deleted ({mut['deleted_bytes']:,} B)."
    )
    L.append("")
    L.append(
        "Ratio = backup-tui / restic (wall time; for stored bytes, new bytes where "
        "given). CPU s = user + system time of the command (all its threads and "
        "children). Peak RSS = the command's max resident set (`/usr/bin/time -f %M`; "
        "for tar|zstd the larger of the two processes)."
    )
    busy = [(lbl, ld) for lbl, ld in loads if ld > 0.15]
    L.append("")
    if busy:
        L.append(
            "Other load: processes outside the measured command used more than 0.15 "
            "of a core on average during "
            + ", ".join(f"{lbl} ({ld:.2f} cores)" for lbl, ld in busy)
            + "; those timings are noisier (the machine has 2 cores)."
        )
    else:
        L.append(
            "Other load: no timed command shared the machine with more than 0.15 "
            "of a core of other work."
        )
    noisy = [(lbl, w, ld) for lbl, w, ld in runner.waited if ld >= 0.2]
    if noisy:
        L.append(
            "The machine did not become quiet within --quiet-wait before: "
            + ", ".join(f"{lbl} ({ld:.2f} cores busy)" for lbl, _w, ld in noisy)
            + "."
        )
    for phase, title in PHASE_TITLES.items():
        rows = res[phase]
        if not rows:
            continue
        L.append(f"\n### {title}\n")
        stored_hdr = "new bytes (repo growth)" if phase in ("nochange", "day2") else "stored bytes"
        L.append(f"| tool | wall s | CPU s | peak RSS MiB | {stored_hdr} | ratio ours/restic |")
        L.append("|---|---:|---:|---:|---:|---:|")
        rr = rows.get(RESTIC)
        for tool in (OURS, RESTIC, TAR):
            row = rows.get(tool)
            if row is None:
                continue
            stored = row.get("new") if phase in ("nochange", "day2") else row.get("stored")
            if tool == OURS and rr:
                rat = f"{fmt_ratio(ratio(row['wall'], rr['wall']))} time"
                if phase in ("initial", "nochange", "day2"):
                    key = "new" if phase != "initial" else "stored"
                    rat += f", {fmt_ratio(ratio(row[key], rr[key]))} bytes"
                rat += f", {fmt_ratio(ratio(row['rss'], rr['rss']))} RSS"
            else:
                rat = ""
            name = tool + (f" ({row['note']})" if row.get("note") else "")
            L.append(
                f"| {name} | {row['wall']:.2f} | {row['cpu']:.2f} | {row['rss']:.0f} | "
                f"{fmt_bytes(stored)} | {rat} |"
            )
        if phase in ("day2", "nochange"):
            extra = []
            for tool in (OURS, RESTIC):
                row = rows.get(tool)
                if row:
                    extra.append(
                        f"{tool} total {fmt_bytes(row['stored'])}, reports "
                        f"{fmt_bytes(row.get('reported_added'))} added"
                    )
            L.append("\nRepository after: " + "; ".join(extra) + ".")

    # targets
    L.append("\n### Targets\n")
    L.append("| target | measured | result |")
    L.append("|---|---:|---|")

    def verdict(
        meas: float | None, limit: float, unit: str = "x", base_s: float | None = None
    ) -> str:
        if meas is None:
            return "n/a (restic not run)"
        if meas <= limit:
            return "met"
        over = (meas / limit - 1) * 100
        s = f"**MISSED** by {over:.0f}%"
        if base_s is not None:
            s += f" (needs <= {limit * base_s:.1f} s)"
        return s

    def row_time(phase: str, limit: float, label: str, against: str = RESTIC) -> None:
        o = res[phase].get(OURS)
        b = res[phase].get(against)
        r = ratio(o["wall"], b["wall"]) if (o and b) else None
        L.append(
            f"| {label} <= {limit}x | {fmt_ratio(r)} | "
            f"{verdict(r, limit, base_s=b['wall'] if b else None)} |"
        )

    row_time("initial", TARGETS["initial"], "initial backup vs restic")
    row_time("initial", TAR_INITIAL_TARGET, "initial backup vs tar|zstd", TAR)
    row_time("nochange", TARGETS["nochange"], "no-change backup vs restic")
    row_time("day2", TARGETS["day2"], "day-2 backup vs restic")
    o, rr = res["day2"].get(OURS), res["day2"].get(RESTIC)
    r = ratio(o["new"], rr["new"]) if rr else None
    L.append(
        f"| day-2 new stored bytes vs restic <= {DAY2_STORED_TARGET}x | {fmt_ratio(r)} | "
        f"{verdict(r, DAY2_STORED_TARGET)} |"
    )
    row_time("restore", TARGETS["restore"], "restore vs restic")
    row_time("verify", TARGETS["verify"], "verify --read-data vs restic check --read-data")
    max_rss = max(res[p][OURS]["rss"] for p in PHASE_TITLES if OURS in res[p])
    worst = max((p for p in PHASE_TITLES if OURS in res[p]), key=lambda p: res[p][OURS]["rss"])
    prev = _prev_rss(args.results, args.size_mib)
    growth = ""
    if prev:
        growth = "; earlier runs: " + ", ".join(f"{s} MiB data -> {m:.0f} MiB" for s, m in prev)
    L.append(
        f"| peak RSS <= {RSS_TARGET_MIB} MiB (every phase) | {max_rss:.0f} MiB ({worst})"
        f"{growth} | {'met' if max_rss <= RSS_TARGET_MIB else '**MISSED**'} |"
    )

    L.append("\nChecks:\n")
    for c in checks:
        L.append(f"- {c}")
    for n in notes:
        L.append(f"- note: {n}")
    L.append("")
    L.append(
        "<!-- bench: "
        + json.dumps({"size_mib": args.size_mib, "ours_max_rss_mib": round(max_rss, 1)})
        + " -->"
    )
    L.append("")
    return "\n".join(L)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        sys.stderr.write(f"bench: {e}\n")
        sys.exit(1)
