"""Disk full for the repository, the state directory and the restore target
(tests/faults/).

Each case puts one of them on a small tmpfs mounted under a folder this test
creates (we are root here; the mount is undone in a finally), fills it with ballast
so that a seeded amount of space is left, and runs the real CLI: the command must
end in a clear "no space left" error (exit 1, no traceback), nothing already backed
up may be lost, and once the ballast is removed the same command must complete.
Where mounting is not allowed (not root, no CAP_SYS_ADMIN) the cases skip, saying so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from campaign import (
    check_files_repo,
    describe,
    diff_manifests,
    fill,
    manifest,
    popen_cli,
    run_cli,
)

CLS = "disk_full"
KIB, MIB = 1024, 1024 * 1024
NO_SPACE = re.compile(rb"no space|out of space|disk (is )?full", re.I)


@contextmanager
def small_fs(where: Path, size_mib: int):
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "tmpfs",
                        str(where)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}); disk-full "
                    "cases need root")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def leave_free(fs: Path, free: int) -> Path:
    """Fill fs with a ballast file until about ``free`` bytes are left."""
    ballast = fs / "ballast"
    st = os.statvfs(fs)
    avail = st.f_bavail * st.f_frsize
    chunk = b"\0" * MIB
    with open(ballast, "wb") as f:
        todo = max(0, avail - free)
        try:
            while todo > 0:
                n = f.write(chunk[: min(MIB, todo)])
                todo -= n
            f.flush()
            os.fsync(f.fileno())
        except OSError:
            pass
    return ballast


def no_space_error(proc) -> str:
    """'' when proc failed with a clear no-space error, else what it did instead."""
    if proc.returncode == 0:
        return "succeeded on a full disk (expected a no-space error)"
    if b"Traceback" in proc.stderr or proc.returncode not in (1, 2):
        return f"not a clean error: {describe(proc)}"
    if not NO_SPACE.search(proc.stderr):
        return f"the error does not say the disk is full: {describe(proc)}"
    return ""


class Episodes:
    def __init__(self, report):
        self.report, self.problems = report, []

    def record(self, what: str, lost: str, failed: str) -> None:
        if lost:
            self.report.record(CLS, "lost", f"{what}: {lost}")
            self.problems.append(f"{what}: lost: {lost}")
        elif failed:
            self.report.record(CLS, "failed", f"{what}: {failed}")
            self.problems.append(f"{what}: {failed}")
        else:
            self.report.record(CLS, "survived", what)

    def assert_survived(self):
        assert not self.problems, "\n".join(self.problems)


def free_amounts(rng, budget) -> list[int]:
    base = [0, 256 * KIB, 3 * MIB]
    extra = [rng.randint(0, 4 * MIB) for _ in range(budget.pick(0, 6))]
    return base + extra


def test_repository_disk_full(sandbox_factory, tmp_path, fault_budget, fault_report):
    eps = Episodes(fault_report)
    rng = fault_budget.rng()
    for n, free in enumerate(free_amounts(rng, fault_budget)):
        sb = sandbox_factory()
        with small_fs(tmp_path / f"fs{n}", 24) as fs:
            sb.repo = fs / "repo"
            sb.write_config()
            (sb.src / "small.txt").write_text("kept\n")
            sb.engine(init=True)
            expected = {}
            m = manifest(sb.src)
            expected[sb.engine().backup("files", "src", replicate=False).id] = m
            fill(sb.src, rng, 8, 2 * MIB)  # 16 MiB of new data
            ballast = leave_free(fs, free)
            proc = run_cli(sb, "backup", "files", "src", "--json")
            failed = no_space_error(proc)
            lost = check_files_repo(sb, expected, tmp_path)
            if not lost:
                ballast.unlink()  # space freed: the next run completes
                m = manifest(sb.src)
                again = run_cli(sb, "backup", "files", "src", "--json")
                if again.returncode != 0:
                    failed = failed or f"backup after space was freed: {describe(again)}"
                else:
                    import json

                    expected[json.loads(again.stdout)["id"]] = m
                    lost = check_files_repo(sb, expected, tmp_path)
            eps.record(f"repository with {free} bytes free", lost, failed)
    eps.assert_survived()


def test_state_dir_disk_full(sandbox_factory, tmp_path, fault_budget, fault_report):
    eps = Episodes(fault_report)
    rng = fault_budget.rng()
    for n, free in enumerate(free_amounts(rng, fault_budget)[:2] + [64 * KIB]):
        sb = sandbox_factory()
        with small_fs(tmp_path / f"fs{n}", 8) as fs:
            sb.state = fs / "state"
            sb.write_config()
            fill(sb.src, rng, 4, 256 * KIB)
            sb.engine(init=True)
            expected = {}
            m = manifest(sb.src)
            expected[sb.engine().backup("files", "src", replicate=False).id] = m
            (sb.src / "new.bin").write_bytes(rng.randbytes(MIB))
            ballast = leave_free(fs, free)
            proc = run_cli(sb, "backup", "files", "src", "--json")
            failed = "" if proc.returncode == 0 else no_space_error(proc)
            st = run_cli(sb, "status")  # read-only commands keep working or say why
            if st.returncode != 0 and not failed:
                failed = no_space_error(st)
            ballast.unlink()
            lost = check_files_repo(sb, expected, tmp_path, only=sorted(expected))
            if not lost:
                m = manifest(sb.src)
                again = run_cli(sb, "backup", "files", "src", "--json")
                if again.returncode != 0:
                    failed = failed or f"backup after space was freed: {describe(again)}"
                else:
                    import json

                    expected[json.loads(again.stdout)["id"]] = m
                    lost = check_files_repo(sb, expected, tmp_path)
            eps.record(f"state directory with {free} bytes free", lost, failed)
    eps.assert_survived()


def test_restore_target_disk_full(sandbox, tmp_path, fault_budget, fault_report):
    eps = Episodes(fault_report)
    rng = fault_budget.rng()
    fill(sandbox.src, rng, 6, 2 * MIB)  # 12 MiB
    eng = sandbox.engine(init=True)
    m = manifest(sandbox.src)
    sid = eng.backup("files", "src", replicate=False).id
    expected = {sid: m}
    for n, free in enumerate(free_amounts(rng, fault_budget)):
        with small_fs(tmp_path / f"fs{n}", 16) as fs:
            target = fs / "target"
            ballast = leave_free(fs, free)
            proc = run_cli(sandbox, "restore", "files", sid, "--target", str(target))
            failed = no_space_error(proc)
            lost = check_files_repo(sandbox, expected, tmp_path, only=[])
            ballast.unlink()
            again = run_cli(sandbox, "restore", "files", sid, "--target", str(target),
                            "--force")
            if again.returncode != 0:
                failed = failed or f"restore after space was freed: {describe(again)}"
            else:
                bad = diff_manifests(m, manifest(target / str(sandbox.src).lstrip("/")))
                failed = failed or (f"restore after space was freed differs: {bad}"
                                    if bad else "")
            eps.record(f"restore target with {free} bytes free", lost, failed)
    shutil.rmtree(tmp_path / "restored", ignore_errors=True)
    eps.assert_survived()


def test_dump_output_disk_full(sandbox, tmp_path, fault_budget, fault_report):
    """``dump > file`` onto a full disk: a clear error, not a traceback."""
    eps = Episodes(fault_report)
    rng = fault_budget.rng()
    fill(sandbox.src, rng, 6, 2 * MIB)
    sid = sandbox.engine(init=True).backup("files", "src", replicate=False).id
    for n, free in enumerate(free_amounts(rng, fault_budget)):
        with small_fs(tmp_path / f"dfs{n}", 8) as fs:
            ballast = leave_free(fs, free)
            with open(fs / "out.tar", "wb") as out:
                p = popen_cli(sandbox, "dump", sid, stdout=out)
                _, err = p.communicate(timeout=120)
            proc = subprocess.CompletedProcess(p.args, p.returncode, b"", err)
            failed = no_space_error(proc)
            (fs / "out.tar").unlink()
            ballast.unlink()
            eps.record(f"dump onto a disk with {free} bytes free", "", failed)
    eps.assert_survived()
