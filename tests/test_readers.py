"""Reader processes (engine/sources/readers.py): a files backup's reading, chunking,
hashing, compression, sealing and packing in processes of their own.

Each case runs real backups of a real tree into a real local repository and judges
the result with restore + rsync --checksum, verify --read-data, and the repository's
own index. The thread path (``BACKUP_TUI_READERS=0``) is the reference the process path
must agree with, blob for blob.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine.errors import EngineError
from engine.events import CancelToken

MIB = 1024 * 1024


def make_tree(src: Path) -> None:
    rnd = os.urandom(3 * MIB)
    (src / "big.bin").write_bytes(os.urandom(9 * MIB))
    (src / "empty").write_bytes(b"")
    small = src / "small"
    small.mkdir()
    for i in range(300):  # several batches of small files
        (small / f"f{i:03}.txt").write_bytes(rnd[i * 997: i * 997 + 200 + i * 13])
    deep = src / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "mid.bin").write_bytes(rnd[: 2 * MIB])
    with open(src / "sparse.img", "wb") as f:  # data, a 32 MiB hole, data
        f.write(rnd[:100_000])
        f.seek(32 * MIB, os.SEEK_CUR)
        f.write(rnd[:5000])
    os.link(src / "big.bin", src / "big.link")
    os.symlink("big.bin", src / "sym")
    os.chmod(small / "f007.txt", 0o640)


def readers_alive() -> list[int]:
    """Reader processes that are children of this test process."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat_line = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat_line.rsplit(")", 1)[1].split()[1])
        if b"engine.sources.readers" in cmd and ppid == os.getpid():
            out.append(int(pid))
    return out


def rsync_same(a: Path, b: Path) -> None:
    proc = subprocess.run(["rsync", "-aHAX", "--checksum", "--dry-run", "--itemize-changes",
                           "--delete", f"{a}/", f"{b}/"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", proc.stdout


def test_process_readers_back_up_what_threads_back_up(sandbox, monkeypatch):
    make_tree(sandbox.src)
    monkeypatch.setenv("BACKUP_TUI_READERS", "2")
    eng = sandbox.engine(init=True)
    res = eng.backup("files", "src")
    assert res.complete and res.errors == []
    assert readers_alive() == []  # stopped at the end of the backup
    out = sandbox.root / "out"
    eng.restore(eng.plan_restore(res.id, target=str(out)))
    rsync_same(sandbox.src, out / str(sandbox.src).lstrip("/"))
    assert eng.verify([res.id], read_data=True).ok
    # the sparse file's hole is a hole again, not 32 MiB of written zeros
    st = os.stat(out / str(sandbox.src).lstrip("/") / "sparse.img")
    assert st.st_blocks * 512 < 8 * MIB

    # the same tree read in this process (threads) needs no new blob at all: both paths
    # cut, hash and name every chunk alike
    monkeypatch.setenv("BACKUP_TUI_READERS", "0")
    (sandbox.src / "touch").write_bytes(b"")
    for p in sandbox.src.rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.utime(p)  # every file looks changed, so every file is read again
    again = sandbox.engine().backup("files", "src")
    assert again.complete
    assert again.added < 64 * 1024  # only tree blobs may be new


def test_readers_never_store_a_blob_twice(sandbox, monkeypatch):
    """Identical files read by different readers at the same time: the claim in the
    backup's process lets exactly one of them store each blob."""
    blob = os.urandom(200 * 1024)
    big = os.urandom(2 * MIB)
    for d in range(4):
        sub = sandbox.src / f"d{d}"
        sub.mkdir()
        for i in range(60):
            (sub / f"same{i}").write_bytes(blob)
        (sub / "bigsame").write_bytes(big)
    monkeypatch.setenv("BACKUP_TUI_READERS", "3")
    eng = sandbox.engine(init=True)
    res = eng.backup("files", "src")
    assert res.complete
    # stored once: one copy of each content plus trees and pack headers
    assert res.added < len(blob) + len(big) + 256 * 1024, res.added
    repo = sandbox.engine().repo()
    repo.load_index()
    data = [b for b in repo.index if repo.index[b].type == "data"]
    assert 2 <= len(data) <= 4, data  # the small content, and the big one's 1-3 chunks


def test_a_killed_reader_fails_the_backup_cleanly(sandbox, monkeypatch):
    for i in range(40):
        (sandbox.src / f"f{i:02}").write_bytes(os.urandom(6 * MIB))
    monkeypatch.setenv("BACKUP_TUI_READERS", "2")
    eng = sandbox.engine(init=True)
    first = eng.backup("files", "src")  # something already backed up, that must stay
    assert first.complete
    for p in sandbox.src.iterdir():
        with open(p, "ab") as f:
            f.write(os.urandom(1000))
    killed: list[int] = []

    def on_event(ev):  # at the first file named: the readers are at work
        if not killed and ev.phase == "backup" and "/f" in (ev.message or ""):
            alive = readers_alive()
            if alive:
                os.kill(alive[0], signal.SIGKILL)
                killed.append(alive[0])

    with pytest.raises(EngineError) as err:
        eng.backup("files", "src", on_event)
    assert killed
    assert "reader process" in str(err.value) and "killed by signal 9" in str(err.value)
    deadline = time.monotonic() + 10
    while readers_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert readers_alive() == []
    assert eng.verify([first.id], read_data=True).ok
    again = eng.backup("files", "src")
    assert again.complete
    assert eng.verify([again.id], read_data=True).ok


def test_cancel_stops_the_readers(sandbox, monkeypatch):
    for i in range(30):
        (sandbox.src / f"f{i:02}").write_bytes(os.urandom(4 * MIB))
    monkeypatch.setenv("BACKUP_TUI_READERS", "2")
    eng = sandbox.engine(init=True)
    token = CancelToken()
    seen = []

    def on_event(ev):
        if ev.phase == "backup" and "/f" in (ev.message or "") and not seen:
            seen.append(readers_alive())
            token.cancel()

    with pytest.raises(EngineError):
        eng.backup("files", "src", on_event, token)
    assert seen and seen[0], "no reader process was running during the backup"
    deadline = time.monotonic() + 10
    while readers_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert readers_alive() == []
    res = eng.backup("files", "src")
    assert res.complete


def test_bad_reader_setting_is_a_clear_error(sandbox, monkeypatch):
    (sandbox.src / "f").write_bytes(b"x" * 10)
    monkeypatch.setenv("BACKUP_TUI_READERS", "many")
    eng = sandbox.engine(init=True)
    with pytest.raises(EngineError, match="BACKUP_TUI_READERS='many'"):
        eng.backup("files", "src")


def test_progress_counts_what_readers_read_before_files_are_done(sandbox, monkeypatch):
    """The bytes reader processes have read show in the progress at once, not only when a
    file's result comes back (the console's bar must not sit at 0 B)."""
    for i in range(6):
        (sandbox.src / f"f{i}").write_bytes(os.urandom(12 * MIB))
    monkeypatch.setenv("BACKUP_TUI_READERS", "2")
    eng = sandbox.engine(init=True)
    events = []
    res = eng.backup("files", "src", events.append)
    total = 72 * MIB
    during = [e for e in events if e.phase == "backup" and not e.final
              and str(sandbox.src) in (e.message or "")]
    # the first is sent as a reader reports its first window, before any file is done
    assert during and 0 < during[0].bytes_done < total, [e.bytes_done for e in during]
    assert res.size == total
