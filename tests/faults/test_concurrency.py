"""Concurrency: backup, restore, dump, verify, cleanup and replicate (to moto_server) in
parallel loops, each a real CLI process, for a bounded, seeded time (issue 10).

At the end: no loop is stuck (no deadlock), no lock is left, every operation either
succeeded or gave up with the lock's "busy, retry" message (a restore or dump of a
snapshot a concurrent cleanup forgot may also be refused, before it reads any of its
data), every restore and dump that succeeded was identical to the source as it was backed up, verify
--read-data is clean here and on the replica, and every snapshot still present
restores identical. Each operation is one injected event of class ``concurrency``
in the fault report. Duration: 40 s (bounded), 10 minutes (``--fault-budget=long``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

RETENTION = ("[retention]\nkeep_last = 2\nkeep_daily = 0\nkeep_weekly = 0\n"
             "keep_monthly = 0\n")


def manifest(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for fn in files:
            p = Path(dirpath) / fn
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def replica_toml(name: str, bucket: str, endpoint: str) -> str:
    return (f'[[replica]]\nname = "{name}"\nbucket = "{bucket}"\nregion = "us-east-1"\n'
            f'endpoint_url = "{endpoint}"\nreplicate_after_backup = false\n')


class Loops:
    """Shared state of the loops: expected content per snapshot, outcomes, problems."""

    def __init__(self, sandbox, fault_report, deadline: float):
        self.sb = sandbox
        self.report = fault_report
        self.deadline = deadline
        self.expected: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.problems: list[str] = []

    def outcome(self, op: str, proc: subprocess.CompletedProcess, check=None) -> bool:
        """Classify one run; returns True when it succeeded."""
        err = proc.stderr.decode(errors="replace")
        if proc.returncode == 0:
            bad = check() if check else ""
            if bad:
                self._bad(op, "lost", bad)
                return False
            self.counts[f"{op} ok"] += 1
            self.report.record("concurrency", "survived", f"{op} ok")
            return True
        if "busy, retry" in err and "Traceback" not in err:
            self.counts[f"{op} busy"] += 1
            self.report.record("concurrency", "survived", f"{op}: busy, retry")
            return False
        out = proc.stdout.decode(errors="replace") if isinstance(proc.stdout, bytes) else ""
        self._bad(op, "failed", f"exit {proc.returncode}: {err.strip()[-600:]}"
                  + (f" | stdout: {out.strip()[-600:]}" if out.strip() else ""))
        return False

    def gone(self, op: str, sid: str, proc: subprocess.CompletedProcess) -> bool:
        """A reader of a snapshot that a concurrent cleanup forgot, refused before it read
        any of its data (under the shared lock, a prune cannot remove data mid-read: a
        missing pack or blob is a failure)."""
        err = proc.stderr.decode(errors="replace")
        refused = ("no longer exists", "no snapshot matches", f"snapshots/{sid} not found")
        if (proc.returncode != 0 and not (self.sb.repo / "snapshots" / sid).exists()
                and "Traceback" not in err and any(r in err for r in refused)):
            self.counts[f"{op} forgotten"] += 1
            self.report.record("concurrency", "survived", f"{op}: snapshot forgotten meanwhile")
            return True
        return False

    def _bad(self, op: str, outcome: str, detail: str) -> None:
        with self.lock:
            self.problems.append(f"{op}: {outcome}: {detail}")
        self.counts[f"{op} {outcome}"] += 1
        self.report.record("concurrency", outcome, f"{op}: {detail}")

    def pick(self, rng) -> str | None:
        """A snapshot that exists now (the oldest ones are the next a cleanup forgets)."""
        with self.lock:
            ids = sorted(self.expected)
        present = [i for i in ids if (self.sb.repo / "snapshots" / i).exists()]
        return rng.choice(present or ids) if ids else None


def _backup_loop(lp: Loops, rng) -> None:
    src = lp.sb.src
    while time.monotonic() < lp.deadline:
        for _ in range(rng.randint(1, 3)):  # change a few files, add one, drop one
            name = f"f{rng.randint(0, 11):02d}"
            (src / name).write_bytes(rng.randbytes(rng.randint(1, 2048) << 10))
        victims = sorted(src.iterdir())
        if len(victims) > 8 and rng.random() < 0.3:
            rng.choice(victims).unlink()
        want = manifest(src)
        proc = lp.sb.cli("backup", "files", "src", "--json")
        if lp.outcome("backup", proc):
            sid = json.loads(proc.stdout)["id"]
            with lp.lock:
                lp.expected[sid] = want


def _restore_loop(lp: Loops, rng, work: Path) -> None:
    n = 0
    while time.monotonic() < lp.deadline:
        sid = lp.pick(rng)
        if sid is None:
            time.sleep(0.2)
            continue
        n += 1
        target = work / f"r{n}"
        proc = lp.sb.cli("restore", "files", sid, "--target", str(target))
        root = target / str(lp.sb.src).lstrip("/")

        def same(sid=sid, root=root) -> str:
            got = manifest(root)
            return "" if got == lp.expected[sid] else f"restore of {sid[:12]} differs"

        if not lp.gone("restore", sid, proc):
            lp.outcome("restore", proc, same)
        shutil.rmtree(target, ignore_errors=True)


def _dump_loop(lp: Loops, rng, work: Path) -> None:
    n = 0
    while time.monotonic() < lp.deadline:
        sid = lp.pick(rng)
        if sid is None:
            time.sleep(0.2)
            continue
        n += 1
        tar = work / f"d{n}.tar"
        out = work / f"d{n}"
        proc = lp.sb.cli("dump", sid)
        tar.write_bytes(proc.stdout)

        def same(sid=sid, tar=tar, out=out) -> str:
            out.mkdir()
            x = subprocess.run(["tar", "-xf", str(tar), "-C", str(out)], capture_output=True)
            if x.returncode:
                return f"GNU tar cannot read the dump of {sid[:12]}: {x.stderr.decode()[-300:]}"
            got = manifest(out / str(lp.sb.src).lstrip("/"))
            return "" if got == lp.expected[sid] else f"dump of {sid[:12]} differs"

        if not lp.gone("dump", sid, proc):
            lp.outcome("dump", proc, same)
        tar.unlink(missing_ok=True)
        shutil.rmtree(out, ignore_errors=True)


def _simple_loop(lp: Loops, op: str, args: tuple[str, ...], rng, pause: float) -> None:
    while time.monotonic() < lp.deadline:
        lp.outcome(op, lp.sb.cli(*args))
        time.sleep(rng.uniform(0, pause))


def test_parallel_loops_stay_consistent(sandbox, s3_server, s3_buckets, fault_budget,
                                        fault_report, tmp_path):
    seconds = fault_budget.pick(40, 600)
    sandbox.extra = RETENTION + replica_toml("use1", s3_buckets.use1, s3_server.endpoint_url)
    sandbox.write_config()
    rng = fault_budget.rng("setup")
    for i in range(10):
        (sandbox.src / f"f{i:02d}").write_bytes(rng.randbytes(rng.randint(1, 2048) << 10))
    sandbox.cli("init", check=True)
    lp = Loops(sandbox, fault_report, time.monotonic() + seconds)
    work = tmp_path / "work"
    work.mkdir()
    threads = [
        threading.Thread(target=_backup_loop, args=(lp, fault_budget.rng("backup")),
                         name="backup"),
        threading.Thread(target=_restore_loop, args=(lp, fault_budget.rng("restore"), work),
                         name="restore"),
        threading.Thread(target=_dump_loop, args=(lp, fault_budget.rng("dump"), work),
                         name="dump"),
        threading.Thread(target=_simple_loop, name="verify",
                         args=(lp, "verify", ("verify",), fault_budget.rng("verify"), 1.0)),
        threading.Thread(target=_simple_loop, name="cleanup",
                         args=(lp, "cleanup", ("cleanup",), fault_budget.rng("cleanup"), 1.0)),
        threading.Thread(target=_simple_loop, name="replicate",
                         args=(lp, "replicate", ("replicate",), fault_budget.rng("repl"), 2.0)),
    ]
    for t in threads:
        t.start()
    for t in threads:  # every loop ends its last run: no deadlock (the CLI's own waits
        t.join(seconds + 400)  # are 60 s for readers and backups, 300 s for cleanup)
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"loops still running long after the deadline: {stuck}"
    print(dict(sorted(lp.counts.items())))
    assert not lp.problems, "\n".join(lp.problems[:10])
    for op in ("backup", "restore", "dump", "verify", "cleanup", "replicate"):
        assert lp.counts[f"{op} ok"] > 0, (op, lp.counts)

    # the end state: no lock, data intact here and on the replica
    locks = sorted(p.name for p in (sandbox.repo / "locks").iterdir()
                   if not p.name.startswith("."))
    assert locks == [], f"locks left: {locks}"
    assert not list(sandbox.repo.rglob(".tmp-*")), "partial objects left by finished writers"
    proc = sandbox.cli("verify", "--read-data")
    assert proc.returncode == 0, proc.stderr
    proc = sandbox.cli("replicate")
    assert proc.returncode == 0, proc.stderr
    proc = sandbox.cli("verify", "--read-data", "--replica", "use1")
    assert proc.returncode == 0, proc.stderr
    proc = sandbox.cli("lock", "list", "--replica", "use1")
    assert proc.stdout.strip() == b"no locks", (proc.stdout, proc.stderr)
    present = [p.name for p in (sandbox.repo / "snapshots").iterdir()]
    assert present and set(present) <= set(lp.expected)
    for sid in present:
        target = tmp_path / "final" / sid
        proc = sandbox.cli("restore", "files", sid, "--target", str(target))
        assert proc.returncode == 0, proc.stderr
        assert manifest(target / str(sandbox.src).lstrip("/")) == lp.expected[sid], sid
