"""How the files backup's walk lists directories (engine/sources/files.py): ahead, in lister
threads, while listings read from the disk, or in the walk itself once the metadata is
cached. Either way the snapshot holds the same trees, and a no-change backup reuses them.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from engine.repo.tree import node_name
from engine.repo.walk import find
from engine.sources import files


def make_tree(src: Path) -> None:
    """Nested directories, files, symlinks, a hard link, a fifo, empty directories, names
    that are not UTF-8, and an extended attribute where the file system keeps them."""
    bsrc = os.fsencode(src)
    for d in range(12):
        sub = src / f"d{d:02}"
        for e in range(d % 4):
            sub = sub / f"e{e}"
        sub.mkdir(parents=True)
        for i in range(d % 3 + 1):
            (sub / f"f{i}.txt").write_bytes(os.urandom(100 + d * 10 + i))
        (sub / "empty").mkdir()
    os.symlink("d00/f0.txt", src / "link")
    os.link(src / "d01" / "e0" / "f0.txt", src / "hard")
    os.mkfifo(src / "fifo")
    os.mkdir(os.path.join(bsrc, b"dir-\xff"))
    with open(os.path.join(bsrc, b"dir-\xff", b"caf\xe9"), "wb") as f:
        f.write(b"latin-1\n")
    os.symlink(b"target-\xe9", os.path.join(bsrc, b"link-\xe9"))
    try:
        os.setxattr(src / "d00" / "f0.txt", "user.note", b"kept")
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


def expand(repo, tree_id: str) -> list:
    """A tree's nodes with every subtree id replaced by that subtree's expanded nodes:
    comparable across repositories (whose blob ids differ)."""
    out = []
    for n in repo.load_tree(tree_id)["nodes"]:
        n = dict(n)
        if n.get("type") == "dir":
            n["subtree"] = expand(repo, n["subtree"])
        if "content" in n:
            n["content"] = [repo.load_blob(b) for b in n["content"]]
        out.append(n)
    return out


def src_tree(engine, sid: str, src: Path) -> str:
    return find(engine.repo(), engine.snapshot(sid)["tree"], str(src))[1]["subtree"]


def twin_sandboxes(sandbox_factory):
    """Two sandboxes backing up the same tree (make_tree) into repositories of their own:
    (the first sandbox, its engine, the other's engine)."""
    ref = sandbox_factory()
    make_tree(ref.src)
    other = sandbox_factory()
    other.filesets = {"src": [str(ref.src)]}
    other.write_config()
    return ref, ref.engine(init=True), other.engine(init=True)


@pytest.mark.parametrize("mode", ["always ahead", "in the walk", "ahead until quiet"])
def test_same_trees_however_directories_are_listed(sandbox_factory, monkeypatch, mode):
    ref, ref_engine, engine = twin_sandboxes(sandbox_factory)
    first = ref_engine.backup("files", "src")  # as configured
    assert first.complete, first.errors
    if mode == "always ahead":
        monkeypatch.setattr(files, "LIST_QUIET", 10**9)
    elif mode == "in the walk":
        monkeypatch.setattr(files, "LISTERS", 0)
    else:
        monkeypatch.setattr(files, "LIST_QUIET", 3)
    res = engine.backup("files", "src")
    assert res.complete, res.errors
    a, b = src_tree(ref_engine, first.id, ref.src), src_tree(engine, res.id, ref.src)
    ta, tb = expand(ref_engine.repo(), a), expand(engine.repo(), b)
    assert ta == tb
    names = [node_name(n) for n in tb]
    assert names == sorted(names) and b"dir-\xff" in names and b"link-\xe9" in names
    # a no-change backup stores the same tree again, by its id
    again = engine.backup("files", "src")
    assert src_tree(engine, again.id, ref.src) == b
    assert again.unchanged_files == res.unchanged_files + sum(
        1 for p in ref.src.rglob("*") if p.is_file() and not p.is_symlink())


def test_listers_stop_while_listings_read_nothing_from_disk(sandbox, engine, monkeypatch):
    """With the tree's metadata cached, the walk lists the directories itself after
    LIST_QUIET listings in a row that read nothing from the disk."""
    if files._RUSAGE_THREAD is None:
        pytest.skip("no per-thread block counts here")
    for d in range(150):
        sub = sandbox.src / f"d{d:03}" / "sub"
        sub.mkdir(parents=True)
        (sub / "f").write_bytes(b"x" * d)
    for p in sandbox.src.rglob("*"):  # the metadata is in the cache now
        os.lstat(p)
    ahead: list[bytes] = []
    real = files._list_path

    def counted(path: bytes):
        ahead.append(path)
        return real(path)

    monkeypatch.setattr(files, "_list_path", counted)
    monkeypatch.setattr(files, "LIST_QUIET", 8)
    res = engine.backup("files", "src")
    assert res.complete, res.errors
    # about LIST_QUIET listings, the ones handed out before the walk knew (LIST_AHEAD
    # per directory on its way), not one per directory (301 below src)
    assert 0 < len(ahead) < 100, len(ahead)
    second = engine.backup("files", "src")
    assert second.unchanged_files == 150
    assert src_tree(engine, second.id, sandbox.src) == src_tree(engine, res.id, sandbox.src)


@pytest.mark.parametrize("quiet", [1, 10**9], ids=["listed in the walk", "listed ahead"])
def test_directory_replaced_by_a_symlink_during_the_walk(sandbox, engine, monkeypatch,
                                                          tmp_path, quiet):
    """A subdirectory listed with its parent and replaced by a symlink (to a directory
    outside the fileset) before the walk gets there is named, and nothing of the
    symlink's target is stored, however the walk lists directories. The replacement is
    made deterministic as in test_files_backup: one reader thread, and the first progress
    event naming the big file (read before the walk goes into subdirectories)."""
    monkeypatch.setenv("BACKUP_TUI_READERS", "0")
    monkeypatch.setattr(files, "READERS", 1)
    monkeypatch.setattr(files, "LIST_QUIET", quiet)
    src = sandbox.src
    big = src / "a_big"
    big.write_bytes(os.urandom(48 * 1024 * 1024))
    for d in range(4):  # quiet listings before src's, for LIST_QUIET=1
        (src / f"b{d}").mkdir()
        (src / f"b{d}" / "f").write_text("x")
    (src / "z_dir").mkdir()
    (src / "z_dir" / "f").write_text("inside\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not in the fileset\n")
    done = []

    def on_event(ev):
        if not done and ev.message == str(big):
            done.append(ev)
            (src / "z_dir" / "f").unlink()
            (src / "z_dir").rmdir()
            os.symlink(outside, src / "z_dir")

    res = engine.backup("files", "src", on_event)
    assert done, "the progress callback never named the big file"
    errors = {e["path"]: e["error"] for e in res.errors}
    assert set(errors) == {str(src / "z_dir")}
    assert errors[str(src / "z_dir")] in ("replaced during backup",  # ENOTDIR (Linux)
                                          "replaced by a symlink during backup")  # ELOOP
    repo = engine.repo()
    sub = src_tree(engine, res.id, src)
    names = {node_name(n) for n in repo.load_tree(sub)["nodes"]}
    assert names == {b"a_big", b"b0", b"b1", b"b2", b"b3"}
    assert find(repo, engine.snapshot(res.id)["tree"], str(src / "b3" / "f"))[1]["size"] == 1
