"""Shared pieces of the fault campaign (tests/faults/), and its one-command runner.

    python tests/faults/campaign.py            # the bounded campaign (what CI runs)
    python tests/faults/campaign.py --long     # the long campaign
    python tests/faults/campaign.py --long --seed 7 -x   # further pytest arguments pass through

The helpers: the real CLI as a subprocess that can be killed, a manifest of a
directory tree (what a restore must reproduce), and the integrity check every
fault ends with (verify --read-data, then every complete snapshot restored and
compared with the tree as it was when that snapshot was taken).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ processes
def cli_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.pop("BACKUP_TUI_PASSWORD", None)
    env.update(extra or {})
    return env


def popen_cli(sb, *args: str, stdout=subprocess.PIPE, env: dict | None = None
              ) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "backup_tui.cli", "--config", str(sb.config_path), *args],
        stdout=stdout, stderr=subprocess.PIPE, env=cli_env(env), cwd=ROOT)


def run_cli(sb, *args: str, env: dict | None = None, timeout: float = 300
            ) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "backup_tui.cli", "--config", str(sb.config_path), *args],
        capture_output=True, env=cli_env(env), cwd=ROOT, timeout=timeout)


def timed_cli(sb, *args: str, **kw) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = run_cli(sb, *args, **kw)
    return proc, time.monotonic() - t0


def kill_after(proc: subprocess.Popen, delay: float) -> bool:
    """SIGKILL proc after delay seconds; True if it was still running (the fault hit)."""
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        return True
    proc.communicate(timeout=60)
    return False


def clean_error(proc: subprocess.CompletedProcess) -> str | None:
    """None when proc failed the way the CLI promises (exit 1 or 2, a message on stderr
    or, for verify, its report on stdout; no traceback); else what is wrong with it."""
    err = proc.stderr.decode(errors="replace")
    said = err + proc.stdout.decode(errors="replace")  # verify reports on stdout
    if proc.returncode not in (1, 2):
        return f"exit {proc.returncode}: {err[-600:]}"
    if "Traceback" in said or not said.strip():
        return f"not a clean error (exit {proc.returncode}): {err[-1200:] or '(no message)'}"
    return None


def describe(proc: subprocess.CompletedProcess) -> str:
    return (f"exit {proc.returncode}: " + proc.stderr.decode(errors="replace")[-1500:]
            + proc.stdout.decode(errors="replace")[-500:])


# -------------------------------------------------------------------- trees
def manifest(root: Path) -> dict[str, tuple]:
    """Every entry below root: type, mode, mtime_ns (not of directories, whose times a
    partial restore may leave), size and SHA-256 of files, the target of symlinks."""
    out: dict[str, tuple] = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size,
                            h.hexdigest())
    return out


def diff_manifests(want: dict, got: dict) -> str:
    """'' when equal, else a short description of the first differences."""
    if want == got:
        return ""
    lines = []
    for k in sorted(set(want) | set(got)):
        if want.get(k) != got.get(k):
            lines.append(f"{k}: want {want.get(k)} got {got.get(k)}")
        if len(lines) >= 5:
            break
    return "; ".join(lines)


def mutate(src: Path, rng, round_no: int, files: int = 6, size: int = 256 << 10) -> None:
    """Change the tree a little, as between two backups: new, changed and removed files."""
    d = src / f"r{round_no % 5}"
    d.mkdir(exist_ok=True)
    for i in range(files):
        (d / f"f{round_no}_{i}.bin").write_bytes(rng.randbytes(rng.randint(1, size)))
    existing = sorted(p for p in src.rglob("*.bin"))
    if len(existing) > 8:
        for p in rng.sample(existing, 2):
            p.unlink()
        victim = rng.choice([p for p in existing if p.exists()])
        with open(victim, "r+b") as f:
            f.seek(rng.randint(0, max(0, victim.stat().st_size - 1)))
            f.write(rng.randbytes(64))


def fill(src: Path, rng, files: int, size: int) -> None:
    for i in range(files):
        (src / f"d{i % 4}").mkdir(exist_ok=True)
        (src / f"d{i % 4}" / f"base{i:03}.bin").write_bytes(rng.randbytes(size))
    (src / "text.txt").write_text("hello\n" * 1000)
    if not (src / "link").is_symlink():
        os.symlink("text.txt", src / "link")


# ---------------------------------------------------------------- repository
def snapshot_ids(sb) -> list[str]:
    snaps = Path(sb.repo) / "snapshots"
    return sorted(p.name for p in snaps.iterdir() if not p.name.startswith(".")) \
        if snaps.is_dir() else []


def live_locks(repo: Path) -> list[dict]:
    d = Path(repo) / "locks"
    out = []
    if d.is_dir():
        for p in d.iterdir():
            if not p.name.startswith("."):
                try:
                    out.append(json.loads(p.read_text()))
                except (OSError, ValueError):
                    out.append({"unreadable": p.name})
    return out


def check_files_repo(sb, expected: dict[str, dict], workdir: Path,
                     only: list[str] | None = None, engine=None) -> str:
    """verify --read-data, then restore each complete snapshot (or those in ``only``)
    and compare it with ``expected[sid]`` (a manifest of the source when it was taken).
    Returns '' when everything holds, else what did not (data lost or unreadable)."""
    try:
        eng = engine or sb.engine()
        report = eng.verify(read_data=True)
        if not report.ok:
            return "verify --read-data: " + "; ".join(p.message for p in report.problems[:5])
        present = set(snapshot_ids(sb)) if engine is None else \
            {s.id for s in eng.snapshots()}
        missing = [s for s in expected if s not in present]
        if missing:
            return f"complete snapshots gone: {missing}"
        for sid in only if only is not None else sorted(expected):
            out = workdir / f"check-{sid[:12]}-{time.monotonic_ns()}"
            eng.restore(eng.plan_restore(sid, target=str(out)))
            got = manifest(out / str(sb.src).lstrip("/"))
            bad = diff_manifests(expected[sid], got)
            _rmtree(out)
            if bad:
                return f"snapshot {sid[:12]} restores different: {bad}"
    except Exception:
        return "integrity check raised: " + traceback.format_exc()[-1500:]
    return ""


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)


# -------------------------------------------------------------------- runner
def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--long", action="store_true", help="the long campaign")
    ap.add_argument("--seed", type=int, default=10)
    args, rest = ap.parse_known_args(argv)
    cmd = [sys.executable, "-m", "pytest", str(Path(__file__).parent), "-m", "faults",
           f"--fault-budget={'long' if args.long else 'bounded'}",
           f"--fault-seed={args.seed}", *rest]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
