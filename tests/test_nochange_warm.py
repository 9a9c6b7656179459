"""The warm process of a files backup (engine/sources/warm.py): it reads directories
ahead of the walk, in the walk's order, never more than its bound ahead, leaves excluded
directories out, and changes nothing the backup stores."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from test_files_walk_listing import expand, src_tree, twin_sandboxes

from engine.sources import files
from engine.sources.warm import Warmer


class Recording(Warmer):
    """A Warmer noting the directories it reads (the real reads, on a real tree)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.read_paths: list[bytes] = []

    def read(self, path: bytes, dev: int):
        self.read_paths.append(path)
        return super().read(path, dev)


def dirs(root: Path) -> None:
    for rel in ("b/x", "b/y/z", "a", "c", "cache/deep", "c/w"):
        (root / rel).mkdir(parents=True)
    (root / "a" / "f").write_bytes(b"f")
    (root / "c" / "g").write_bytes(b"g")


def test_reads_in_the_walks_order_without_excluded_directories(tmp_path):
    dirs(tmp_path)
    root = os.fsencode(tmp_path)
    w = Recording([root], 1000, ["cache/"], False, threads=1)
    w.run()  # ends once every directory is read
    rel = [p[len(root):] for p in w.read_paths]
    assert rel == [b"", b"/a", b"/b", b"/b/x", b"/b/y", b"/b/y/z", b"/c", b"/c/w"]


def test_never_more_than_its_bound_ahead_of_the_walk(tmp_path):
    dirs(tmp_path)
    w = Recording([os.fsencode(tmp_path)], 2, [], False, threads=2)
    t = threading.Thread(target=w.run)
    t.start()
    try:
        _until(lambda: w.done == 2)
        w.walked_to(1)  # one more may be read now, and no other
        _until(lambda: w.done == 3)
        with w.cond:
            assert w.done == 3 and w.busy == 0 and w.todo
    finally:
        w.end()
        t.join()
    assert len(w.read_paths) == 3


def _until(cond) -> None:
    """Wait for a condition of the warm threads (a bound, not a duration: never fails by
    being slow unless it never holds)."""
    ev = threading.Event()
    for _ in range(100_000):
        if cond():
            return
        ev.wait(0.001)
    raise AssertionError("the warm threads never got there")


def _warm_children() -> list[int]:
    """Processes of this one running warm.py."""
    out = []
    for task in os.listdir("/proc/self/task"):
        try:
            kids = Path(f"/proc/self/task/{task}/children").read_text().split()
        except OSError:
            continue
        for pid in kids:
            try:
                if b"warm.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(int(pid))
            except OSError:
                continue
    return out


def test_same_trees_with_or_without_the_warm_process(sandbox_factory, monkeypatch):
    ref, ref_engine, engine = twin_sandboxes(sandbox_factory)
    monkeypatch.setattr(files, "WARM_AHEAD", 0)
    first = ref_engine.backup("files", "src")
    monkeypatch.setattr(files, "WARM_AHEAD", 4)
    monkeypatch.setattr(files, "WARM_EVERY", 1)  # told at every directory
    res = engine.backup("files", "src")
    assert first.complete and res.complete, (first.errors, res.errors)
    assert not _warm_children()  # ended with the walk
    a, b = src_tree(ref_engine, first.id, ref.src), src_tree(engine, res.id, ref.src)
    assert expand(ref_engine.repo(), a) == expand(engine.repo(), b)
    again = engine.backup("files", "src")  # no change: the same tree, by its id
    assert src_tree(engine, again.id, ref.src) == b
    assert not _warm_children()
