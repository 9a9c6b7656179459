"""Resumable files restore (issue 14, item 2): ``restore files --resume`` into a target that
an earlier restore left keeps every file whose content is already the snapshot's (checked
piece by piece against the blob ids, not fetched again) and writes the rest as --force does;
the tree then matches the source exactly. With forked writers and with threads
(``BACKUP_TUI_READERS=0``), in process and after a restore killed part way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_files_backup import assert_same_tree, restored_root
from test_files_fidelity import rsync_diff

MIB = 1024 * 1024
MODES = {"forked": "2", "threads": "0"}  # BACKUP_TUI_READERS


def resume_tree(src: Path) -> None:
    """Files of one and of many blobs, an empty one, a sparse one, a hard-linked pair, a
    symlink, xattrs, odd modes and times."""
    for i in range(12):
        (src / f"small{i:02}").write_bytes(os.urandom(1000 + 517 * i))
    (src / "big").mkdir()
    for i in range(4):
        (src / "big" / f"multi{i}").write_bytes(os.urandom(3 * MIB + 12345 * i))
    (src / "empty").write_bytes(b"")
    with open(src / "sparse", "wb") as f:
        f.truncate(6 * MIB)
        f.seek(2 * MIB)
        f.write(os.urandom(150_000))
    (src / "pair_a").write_bytes(os.urandom(70_000))
    os.link(src / "pair_a", src / "pair_b")
    os.symlink("small00", src / "link")
    os.setxattr(src / "small01", "user.note", b"kept with the file")
    os.chmod(src / "small02", 0o640)
    os.utime(src / "small03", ns=(1_500_000_000_123_456_789,) * 2)


@pytest.fixture
def backed_up(sandbox, engine):
    resume_tree(sandbox.src)
    res = engine.backup("files", "src")
    assert res.complete, res.errors
    return sandbox, engine, res.id


def regular_files(root: Path) -> dict[str, int]:
    """Relative path -> size of every regular file under root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = p.stat().st_size
    return out


def assert_matches_source(src: Path, target: Path) -> None:
    dst = restored_root(target, src)
    assert_same_tree(src, dst)
    diff = rsync_diff(src, dst)
    assert diff.strip() == "", diff
    assert os.stat(dst / "pair_a").st_ino == os.stat(dst / "pair_b").st_ino


@pytest.mark.parametrize("mode", sorted(MODES))
def test_resume_keeps_what_matches_and_rewrites_the_damage(backed_up, tmp_path, monkeypatch,
                                                           mode):
    sandbox, engine, sid = backed_up
    monkeypatch.setenv("BACKUP_TUI_READERS", MODES[mode])
    src, target = sandbox.src, tmp_path / "out"
    first = engine.restore(engine.plan_restore(sid, target=str(target)))
    assert first.skipped_files == first.skipped_bytes == 0
    dst = restored_root(target, src)
    assert_matches_source(src, target)

    # the damage: a truncated file, one changed byte (same size, same time), a deleted file,
    # a file replaced by a symlink to a file outside the target
    truncated, changed, deleted, symlinked = "big/multi1", "small04", "small05", "big/multi2"
    with open(dst / truncated, "r+b") as f:
        f.truncate(MIB)
    st = os.stat(dst / changed)
    with open(dst / changed, "r+b") as f:
        f.seek(700)
        byte = f.read(1)
        f.seek(700)
        f.write(bytes([byte[0] ^ 0x01]))
    os.utime(dst / changed, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(dst / changed).st_size == st.st_size
    os.unlink(dst / deleted)
    outside = tmp_path / "outside"
    outside.write_bytes(os.urandom((src / symlinked).stat().st_size))  # the same size
    before_outside = outside.read_bytes()
    os.unlink(dst / symlinked)
    os.symlink(outside, dst / symlinked)
    # metadata a kept file must get back: mode, time, an xattr it never had, its own one
    os.chmod(dst / "small06", 0o777)
    os.utime(dst / "small07", ns=(1, 1))
    os.setxattr(dst / "small08", "user.stray", b"not in the snapshot")
    os.removexattr(dst / "small01", "user.note")

    plan = engine.plan_restore(sid, target=str(target), resume=True)
    assert plan.resume
    result = engine.restore(plan)
    assert_matches_source(src, target)
    assert outside.read_bytes() == before_outside  # replaced, never written through
    assert os.listxattr(dst / "small08") == []

    sizes = regular_files(src)
    damaged = {truncated, changed, deleted, symlinked}
    kept = set(sizes) - damaged - {"pair_b"}  # pair_b is linked to pair_a again
    assert result.skipped_files == len(kept), (result, sorted(kept))
    assert result.skipped_bytes == sum(sizes[k] for k in kept)
    assert result.files == len(sizes)
    assert result.files - result.skipped_files == len(damaged) + 1
    assert result.bytes - result.skipped_bytes == sum(sizes[k] for k in damaged)
    assert result.as_json()["skipped_files"] == len(kept)

    # once more: everything is kept, nothing written
    again = engine.restore(engine.plan_restore(sid, target=str(target), resume=True))
    assert again.skipped_files == len(sizes) - 1
    assert again.bytes == again.skipped_bytes
    assert_matches_source(src, target)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_killed_restore_resumed(sandbox, tmp_path, mode):
    """The CLI restore killed (with its writers: the process group) once some files are
    whole, then ``--resume``: the tree matches and some files were kept."""
    for d in range(4):
        (sandbox.src / f"d{d}").mkdir()
        for i in range(40):
            (sandbox.src / f"d{d}" / f"f{i:02}").write_bytes(os.urandom(200_000 + 997 * i))
    sandbox.cli("init", check=True)
    sid = json.loads(sandbox.cli("backup", "files", "src", "--json", check=True).stdout)["id"]
    sizes = regular_files(sandbox.src)
    target = tmp_path / "out"
    dst = restored_root(target, sandbox.src)
    env = dict(os.environ, BACKUP_TUI_READERS=MODES[mode])
    env.pop("BACKUP_TUI_PASSWORD", None)
    cmd = [sys.executable, "-m", "backup_tui.cli", "--config", str(sandbox.config_path),
           "restore", "files", sid, "--target", str(target), "--json"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)

    def whole() -> int:
        n = 0
        for rel, size in sizes.items():
            try:
                n += os.stat(dst / rel).st_size == size
            except FileNotFoundError:
                pass
        return n

    # run it in short slices (the whole group stopped between them) until some files are
    # whole, then kill it: it cannot finish between two looks
    try:
        while proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)
            time.sleep(0.01)
            os.killpg(proc.pid, signal.SIGSTOP)
            if whole() >= 10:
                break
        assert proc.poll() is None, f"the restore ended before it was killed: {proc.returncode}"
        done_before = whole()
        assert done_before < len(sizes), "every file was whole already"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err

    again = sandbox.cli("restore", "files", sid, "--target", str(target))
    assert again.returncode == 2 and b"not empty" in again.stderr, again.stderr
    assert b"--resume" in again.stderr

    resumed = sandbox.cli("restore", "files", sid, "--target", str(target), "--resume",
                          "--json", env={"BACKUP_TUI_READERS": MODES[mode]})
    assert resumed.returncode == 0, resumed.stderr
    res = json.loads(resumed.stdout)
    assert res["files"] == len(sizes)
    assert 0 < res["skipped_files"] < len(sizes), res
    assert res["skipped_files"] >= done_before  # whole when it was killed: kept
    assert_matches_source_plain(sandbox.src, target)

    text = sandbox.cli("restore", "files", sid, "--target", str(target), "--resume",
                       env={"BACKUP_TUI_READERS": MODES[mode]})
    assert text.returncode == 0, text.stderr
    assert f"kept {len(sizes)} files".encode() in text.stdout, text.stdout
    assert b"wrote 0 files" in text.stdout, text.stdout


def assert_matches_source_plain(src: Path, target: Path) -> None:
    dst = restored_root(target, src)
    assert_same_tree(src, dst)
    diff = rsync_diff(src, dst)
    assert diff.strip() == "", diff


def test_a_non_empty_target_still_needs_force_or_resume(backed_up, tmp_path):
    sandbox, engine, sid = backed_up
    target = tmp_path / "out"
    target.mkdir()
    (target / "mine.txt").write_text("mine\n")
    proc = sandbox.cli("restore", "files", sid, "--target", str(target))
    assert proc.returncode == 2, proc.stderr
    assert b"not empty" in proc.stderr and b"--force" in proc.stderr
    assert sorted(os.listdir(target)) == ["mine.txt"]
    proc = sandbox.cli("restore", "files", sid, "--target", str(target), "--resume")
    assert proc.returncode == 0, proc.stderr
    assert (target / "mine.txt").read_text() == "mine\n"
    assert b"kept 0 files" in proc.stdout, proc.stdout
    assert_same_tree(sandbox.src, restored_root(target, sandbox.src))


def test_resume_through_the_api(tmp_path):
    """``resume`` on POST restore/files: an admin's, with ``confirm`` = target, like force;
    the job's result counts what was kept."""
    from api_support import ApiDaemon, api

    d = ApiDaemon(tmp_path / "api", grace_seconds=0)
    for i in range(6):
        (d.src / f"f{i}").write_bytes(os.urandom(5000 * (i + 1)))
    d.init()
    d.create_key("ops", "operator")
    d.create_key("boss", "admin")
    d.start()
    try:
        target = tmp_path / "restored"
        body = {"snapshot": "latest", "source": "src", "target": str(target)}
        with d.client("ops") as c:
            r = c.post(api("trigger"), json={"source": "src"})
            assert r.status_code == 202, r.text
            assert d.wait_job(c, r.json()["job_id"])["state"] == "succeeded"
            r = c.post(api("restore/files"), json=body)
            assert r.status_code == 202, r.text
            assert d.wait_job(c, r.json()["job_id"])["state"] == "succeeded"
            dst = restored_root(target, d.src)
            with open(dst / "f3", "r+b") as f:
                first = f.read(1)
                f.seek(0)
                f.write(bytes([first[0] ^ 0xFF]))
            r = c.post(api("restore/files"), json=body | {"resume": True,
                                                          "confirm": str(target)})
            assert r.status_code == 403, r.text
        with d.client("boss") as c:
            r = c.post(api("restore/files"), json=body | {"resume": True})
            assert r.status_code == 400 and "confirm" in r.text, r.text
            r = c.post(api("restore/files"), json=body | {"resume": True,
                                                          "confirm": str(target)})
            assert r.status_code == 202, r.text
            done = d.wait_job(c, r.json()["job_id"])
        assert done["state"] == "succeeded", done
        assert done["result"]["files"] == 6 and done["result"]["skipped_files"] == 5, done
        assert done["result"]["skipped_bytes"] == sum(5000 * (i + 1) for i in range(6)) - 20000
        assert_same_tree(d.src, dst)
    finally:
        rc = d.stop()
        assert rc in (0, None), f"daemon exit {rc}\n{d.log_tail()}"
