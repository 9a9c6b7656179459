#!/usr/bin/env python3
"""Small files at scale: backup-tui against restic on trees of many 512-byte files.

    .venv/bin/python bench/small_files.py                        # 100k and 300k files
    .venv/bin/python bench/small_files.py --files 20000 --no-results   # smoke

For each file count N: a tree of N files of 512 seeded random bytes, 1,000 to a
directory, is made once; then each tool, cold cache before every command:
initial backup, no-change backup, restore of the newest snapshot into an empty
directory. Each restore is compared with the tree (``rsync -a --checksum
--dry-run``: content, size, mode, times; any difference fails the run).

Per command: wall seconds and three peak memory figures: *peak RSS* as GNU time
reports it for the command (its largest process), *tree RSS*, the peak of
the summed RSS of the command and every process under it, and *tree PSS*, the
same with each shared page divided among the processes sharing it (forked
writers share their parent's pages; summed RSS counts them once per process),
sampled every 20 ms
(our backups start reader processes, our restores fork writers: the PSS sum is
what the machine pays). The targets (issue 14): initial <= 1.0x restic and
restore <= 0.8x restic at 300k files, memory (tree PSS) <= 250 MiB in backup
and restore and not growing from 100k to
300k files. A dated section goes to bench/RESULTS.md unless --no-results.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import benchlib  # noqa: E402

MiB = 1024 * 1024


def make_tree(root: Path, n: int, seed: int) -> None:
    rnd = random.Random(seed)
    for d in range((n + 999) // 1000):
        sub = root / f"d{d:04}"
        sub.mkdir(parents=True)
        for i in range(min(1000, n - d * 1000)):
            (sub / f"f{i:04}.dat").write_bytes(rnd.randbytes(512))


def tree_rss_kib(pid: int) -> tuple[int, int]:
    """Summed RSS and summed PSS (KiB) of pid and its descendants, from /proc. RSS counts a
    page shared by several processes (a library, a forked child's copy-on-write pages) in
    each of them; PSS divides it among them, so its sum is what the machine pays."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    total, pss, todo = 0, 0, [pid]
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    total += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
    return total, pss


def timed(label: str, cmd: list[str], env: dict, cache: benchlib.Cache) -> dict:
    cache.before()
    rss_file = Path(f"/tmp/small-files-{os.getpid()}.rss")
    full = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), "--", *cmd]
    peak = [0, 0]
    t0 = time.monotonic()
    proc = subprocess.Popen(full, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss, pss = tree_rss_kib(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            stop.wait(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = proc.communicate()
    wall = time.monotonic() - t0
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise benchlib.BenchError(f"{label} failed ({proc.returncode}): {err.decode()[-2000:]}")
    gnu = int(rss_file.read_text().split()[-1]) if rss_file.exists() else 0
    rss_file.unlink(missing_ok=True)
    benchlib.log(f"{label}: {wall:.2f} s, peak RSS {gnu // 1024} MiB, "
                 f"tree RSS {peak[0] // 1024} MiB, tree PSS {peak[1] // 1024} MiB")
    return {"wall": wall, "rss": gnu // 1024, "tree_rss": peak[0] // 1024,
            "tree_pss": peak[1] // 1024}


def same(src: Path, out: Path) -> None:
    r = subprocess.run(["rsync", "-a", "--checksum", "--dry-run", "--itemize-changes",
                        f"{src}/", f"{out}/"], capture_output=True, text=True)
    changes = [x for x in r.stdout.splitlines() if x and not x.startswith(".d..t")]
    if r.returncode != 0 or changes:
        raise benchlib.BenchError(f"restore of {src} differs: {changes[:5]} {r.stderr[:500]}")


def run_count(n: int, work: Path, ours_env: dict, ours: list[str], restic: str | None,
              cache: benchlib.Cache, seed: int) -> dict:
    base = work / f"n{n}"
    shutil.rmtree(base, ignore_errors=True)
    src = base / "src"
    t0 = time.monotonic()
    make_tree(src, n, seed)
    benchlib.log(f"{n} files made in {time.monotonic() - t0:.1f} s")
    res: dict = {}
    pw = base / "pw"
    pw.write_text("bench-password")
    os.chmod(pw, 0o600)
    cfg = base / "config.toml"
    cfg.write_text(f'[repository]\npath = "{base}/repo"\npassword_file = "{pw}"\n'
                   f'[state]\ndir = "{base}/state"\n'
                   f'[[fileset]]\nname = "small"\npaths = ["{src}"]\n')
    cli = [*ours, "--config", str(cfg)]
    subprocess.run([*cli, "init"], env=ours_env, check=True, capture_output=True)
    res["ours"] = {
        "initial": timed(f"{n} ours initial", [*cli, "backup", "files", "small"], ours_env,
                         cache),
        "nochange": timed(f"{n} ours no-change", [*cli, "backup", "files", "small"],
                          ours_env, cache),
        "restore": timed(f"{n} ours restore", [*cli, "restore", "files", "latest", "--target",
                                                str(base / "out-ours")], ours_env, cache),
    }
    same(src, base / "out-ours" / str(src).lstrip("/"))
    shutil.rmtree(base / "out-ours")
    if restic:
        renv = dict(os.environ, RESTIC_REPOSITORY=str(base / "restic"),
                    RESTIC_PASSWORD="bench-password", RESTIC_CACHE_DIR=str(base / "rcache"))
        subprocess.run([restic, "init"], env=renv, check=True, capture_output=True)
        res["restic"] = {
            "initial": timed(f"{n} restic initial", [restic, "backup", str(src)], renv, cache),
            "nochange": timed(f"{n} restic no-change", [restic, "backup", str(src)], renv,
                              cache),
            "restore": timed(f"{n} restic restore", [restic, "restore", "latest", "--target",
                                                      str(base / "out-restic")], renv, cache),
        }
        same(src, base / "out-restic" / str(src).lstrip("/"))
    shutil.rmtree(base, ignore_errors=True)
    return res


def report(results: dict, info: dict) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {now}: small files at scale (`bench/small_files.py`)", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
             "Trees of 512-byte files, 1,000 to a directory; cold cache before every "
             "command. Peak RSS: GNU time (the largest process); tree RSS and tree PSS: the "
             "peak of the summed RSS and of the summed PSS (shared pages divided among the "
             "processes sharing them: what the machine pays) of the command and its child "
             "processes (sampled every 20 ms).", "",
             "| files | phase | ours s | restic s | ours / restic | ours peak / tree RSS / "
             "tree PSS MiB "
             "| restic RSS MiB |", "|---:|---|---:|---:|---:|---:|---:|"]
    for n, res in results.items():
        for phase in ("initial", "nochange", "restore"):
            o = res["ours"][phase]
            r = res.get("restic", {}).get(phase)
            ratio = f"{o['wall'] / r['wall']:.2f}x" if r else "-"
            mem = f"{o['rss']} / {o['tree_rss']} / {o['tree_pss']}"
            lines.append(f"| {n:,} | {phase} | {o['wall']:.2f} | {r['wall']:.2f} | {ratio} | "
                         f"{mem} | {r['rss']} |" if r else
                         f"| {n:,} | {phase} | {o['wall']:.2f} | - | - | {mem} | - |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", default="100000,300000", help="comma-separated file counts")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--work", type=Path, default=HERE / "work" / "small-files")
    ap.add_argument("--code", default="HEAD", help="git revision to measure, or 'worktree'")
    ap.add_argument("--no-restic", action="store_true")
    ap.add_argument("--no-drop-caches", action="store_true")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    env, ours, label = benchlib.export_code(args.code, args.work)
    restic = None if args.no_restic else shutil.which("restic")
    cache = benchlib.Cache(not args.no_drop_caches)
    info = benchlib.machine(args.work, label)
    if restic:
        info["restic"] = subprocess.run([restic, "version"], capture_output=True,
                                        text=True).stdout.strip()
    info["page cache"] = cache.label
    results = {}
    for n in (int(x) for x in args.files.split(",")):
        results[n] = run_count(n, args.work, env, ours, restic, cache, args.seed)
    text = report(results, info)
    sys.stdout.write(text)
    if not args.no_results:
        with open(args.results, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
