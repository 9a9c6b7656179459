"""The files source (engine/sources/files.py): what a backup keeps, skips and reports.

Engine tests call the facade; the error paths are also run through the real CLI.

Permission denied: the tests run as root, where permission bits do not stop a read.
The CLI is started under ``setpriv --bounding-set -dac_override,-dac_read_search``,
which removes root's capabilities to bypass file permissions for that process
only; a ``chmod 000`` file then cannot be opened, as for any user.

Files that grow or vanish during a backup: made deterministic through the engine's
public progress callback (``on_event``): the first event that names the big file
being read appends to it and deletes a file (and a directory) that the walk has
already listed but not yet reached. No test hook, no monkeypatching.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import EngineError
from engine.repo.walk import find

MIB = 1024 * 1024


def restored_root(target: Path, src: Path) -> Path:
    return target / str(src).lstrip("/")


def restore(engine, sid: str, target: Path, paths=()) -> Path:
    engine.restore(engine.plan_restore(sid, target=str(target), paths=list(paths)))
    return target


def describe(path: bytes) -> dict:
    """Everything a restore must reproduce about one entry."""
    st = os.lstat(path)
    d = {
        "type": stat.S_IFMT(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime_ns": st.st_mtime_ns,
    }
    if stat.S_ISLNK(st.st_mode):
        d["target"] = os.readlink(path)
    else:
        d["mode"] = stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        d["size"] = st.st_size
        with open(path, "rb") as f:
            d["content"] = f.read()
    return d


def tree_of(root: Path) -> dict[bytes, dict]:
    """Relative path (bytes) -> describe(), for root itself and everything below."""
    broot = os.fsencode(root)
    out = {b".": describe(broot)}
    for dirpath, dirnames, filenames in os.walk(broot):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, broot)] = describe(p)
    return out


def assert_same_tree(src: Path, restored: Path) -> None:
    a, b = tree_of(src), tree_of(restored)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k] == b[k], k


def snap_stats(engine, sid: str) -> dict:
    return engine.snapshot(sid)["stats"]


def cli_without_dac(sandbox, *args: str) -> subprocess.CompletedProcess:
    """The real CLI, as root but without the capabilities that bypass file permissions."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is needed to drop root's DAC override")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    env = dict(os.environ)
    env.pop("BACKUP_TUI_PASSWORD", None)
    cmd = [*prefix, sys.executable, "-m", "backup_tui.cli",
           "--config", str(sandbox.config_path), *args]
    return subprocess.run(cmd, capture_output=True, env=env, timeout=120)


# ------------------------------------------------------------------ metadata


@pytest.fixture
def rich_tree(sandbox) -> Path:
    """A source tree with every kind of entry and metadata the files source keeps."""
    if os.geteuid() != 0:
        pytest.skip("owners and setuid bits need root")
    src = sandbox.src
    bsrc = os.fsencode(src)
    (src / "plain.txt").write_text("plain\n")
    (src / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chown(src / "setuid", 1234, 5678)  # chown clears setuid: chmod after it
    os.chmod(src / "setuid", 0o4755)
    (src / "setgid_dir").mkdir()
    os.chmod(src / "setgid_dir", 0o2750)
    (src / "setgid_dir" / "inside").write_bytes(os.urandom(300_000))
    os.chown(src / "setgid_dir" / "inside", 0, 4242)
    os.chmod(src / "setgid_dir" / "inside", 0o2640)  # setgid on a file, too
    (src / "sticky").mkdir()
    os.chmod(src / "sticky", 0o1777)
    (src / "empty").mkdir()
    (src / "empty" / "nested_empty").mkdir()
    (src / "zero.bin").write_bytes(b"")
    (src / "big.bin").write_bytes(os.urandom(3 * MIB + 12345))
    os.chmod(src / "big.bin", 0o600)
    os.symlink("plain.txt", src / "link_rel")
    os.symlink("/nonexistent/elsewhere", src / "link_abs_dangling")
    os.symlink("does/not/exist", src / "link_dangling")
    os.lchown(src / "link_rel", 4321, 8765)
    os.mkfifo(src / "fifo", 0o620)
    # names and link targets that are not valid UTF-8
    os.mkdir(os.path.join(bsrc, b"dir-\xff\xfe"))
    with open(os.path.join(bsrc, b"dir-\xff\xfe", b"caf\xe9.txt"), "wb") as f:
        f.write(b"latin-1 name\n")
    os.symlink(b"target-\xe9", os.path.join(bsrc, b"link-\xe9"))
    # distinct nanosecond mtimes, set bottom-up so directories keep theirs
    entries = []
    for dirpath, dirnames, filenames in os.walk(bsrc):
        for n in dirnames + filenames:
            entries.append(os.path.join(dirpath, n))
    entries.sort(key=lambda p: p.count(b"/"), reverse=True)
    for i, p in enumerate(entries):
        t = 1_500_000_000_000_000_000 + i * 1_000_000_007 + 123_456_789
        os.utime(p, ns=(t, t), follow_symlinks=False)
    os.utime(bsrc, ns=(1_400_000_000_987_654_321,) * 2)
    assert stat.S_IMODE(os.lstat(src / "setuid").st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(src / "setgid_dir" / "inside").st_mode) == 0o2640
    return src


def test_metadata_roundtrip(sandbox, engine, rich_tree, tmp_path):
    res = engine.backup("files", "src")
    assert res.complete, res.errors
    target = restore(engine, res.id, tmp_path / "out")
    assert_same_tree(rich_tree, restored_root(target, rich_tree))


def test_tree_records_types_and_raw_names(sandbox, engine, rich_tree):
    res = engine.backup("files", "src")
    repo = engine.repo()
    root = engine.snapshot(res.id)["tree"]
    base = str(rich_tree)
    assert find(repo, root, base + "/fifo")[1]["type"] == "fifo"
    assert find(repo, root, base + "/link_dangling")[1]["target"] == "does/not/exist"
    node = find(repo, root, base + "/link-\udce9")[1]
    assert node["type"] == "symlink" and "name_b64" in node and "target_b64" in node
    setuid = find(repo, root, base + "/setuid")[1]
    assert setuid["mode"] == 0o4755 and (setuid["uid"], setuid["gid"]) == (1234, 5678)
    assert find(repo, root, base + "/sticky")[1]["mode"] == 0o1777
    assert find(repo, root, base + "/setgid_dir")[1]["mode"] == 0o2750
    assert find(repo, root, base + "/empty/nested_empty")[1]["type"] == "dir"


def test_device_node_roundtrip(sandbox, engine, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    dev = sandbox.src / "null"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod not allowed in this container")
    res = engine.backup("files", "src")
    assert res.complete
    out = restored_root(restore(engine, res.id, tmp_path / "out"), sandbox.src)
    st = os.lstat(out / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


def test_socket_is_kept_in_tree_and_reported_on_restore(sandbox, engine, tmp_path):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(sandbox.src / "sock"))
        res = engine.backup("files", "src")
    finally:
        s.close()
    assert res.complete
    result = engine.restore(engine.plan_restore(res.id, target=str(tmp_path / "out")))
    assert any("sock" in w and "socket" in w for w in result.warnings)


# ------------------------------------------------------------------- excludes


def test_excludes(sandbox, engine, tmp_path):
    src = sandbox.src
    sandbox.extra = 'exclude = ["*.tmp", "cache/"]\n'  # inside the [[fileset]]
    sandbox.write_config()
    engine = sandbox.engine()
    (src / "keep.txt").write_text("k")
    (src / "drop.tmp").write_text("d")
    (src / "deep" / "deeper").mkdir(parents=True)
    (src / "deep" / "deeper" / "x.tmp").write_text("d")
    (src / "deep" / "deeper" / "x.tmpl").write_text("k")
    (src / "cache").mkdir()
    (src / "cache" / "blob").write_text("d")
    (src / "deep" / "cache").mkdir()
    (src / "deep" / "cache" / "blob").write_text("d")
    (src / "deep" / "cache.d").mkdir()
    (src / "notdir").mkdir()
    (src / "notdir" / "cache").write_text("a file named cache is kept")  # dir-only pattern
    (src / "dir.tmp").mkdir()
    (src / "dir.tmp" / "inside").write_text("d")
    res = engine.backup("files", "src")
    assert res.complete
    out = restored_root(restore(engine, res.id, tmp_path / "out"), src)
    found = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert found == sorted([
        "keep.txt", "deep", "deep/deeper", "deep/deeper/x.tmpl", "deep/cache.d",
        "notdir", "notdir/cache",
    ])
    assert res.files == 3


# ------------------------------------------------------- incremental and dedup


def test_unchanged_files_are_not_read_again(sandbox, engine):
    for i in range(20):
        (sandbox.src / f"f{i}").write_bytes(os.urandom(50_000 + i))
    (sandbox.src / "big").write_bytes(os.urandom(5 * MIB))
    first = engine.backup("files", "src")
    s1 = snap_stats(engine, first.id)
    assert s1["bytes_read"] == s1["size"] == 5 * MIB + sum(50_000 + i for i in range(20))
    assert s1["unchanged_files"] == 0
    second = engine.backup("files", "src")
    s2 = snap_stats(engine, second.id)
    assert s2["unchanged_files"] == 21 and second.unchanged_files == 21
    assert s2["bytes_read"] == 0
    assert s2["size"] == s1["size"]
    # no new data; at most the trees of the ancestors of src, whose mtimes other
    # processes may change (/tmp), are stored again
    assert s2["added_raw"] < 20_000
    assert engine.snapshot(second.id)["parent"] == first.id
    repo = engine.repo()
    sub1 = find(repo, engine.snapshot(first.id)["tree"], str(sandbox.src))[1]["subtree"]
    sub2 = find(repo, engine.snapshot(second.id)["tree"], str(sandbox.src))[1]["subtree"]
    assert sub1 == sub2


def test_changed_content_same_size_and_mtime_is_read(sandbox, engine, tmp_path):
    """A rewrite that keeps size and mtime still changes ctime: the file is re-read."""
    f = sandbox.src / "f"
    f.write_bytes(b"A" * 100_000)
    (sandbox.src / "other").write_bytes(b"o" * 1000)
    engine.backup("files", "src")
    st = f.stat()
    f.write_bytes(b"B" * 100_000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_size == st.st_size
    res = engine.backup("files", "src")
    stats = snap_stats(engine, res.id)
    assert stats["bytes_read"] == 100_000 and stats["unchanged_files"] == 1
    out = restored_root(restore(engine, res.id, tmp_path / "out"), sandbox.src)
    assert (out / "f").read_bytes() == b"B" * 100_000


def test_one_byte_change_adds_about_one_chunk(sandbox, engine):
    size = 32 * MIB
    f = sandbox.src / "big"
    f.write_bytes(os.urandom(size))
    first = engine.backup("files", "src")
    assert snap_stats(engine, first.id)["added_raw"] >= size
    with open(f, "r+b") as fh:
        fh.seek(size // 2 + 777)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 0xFF]))
    second = engine.backup("files", "src")
    stats = snap_stats(engine, second.id)
    repo = engine.repo()
    c1 = find(repo, engine.snapshot(first.id)["tree"], str(f))[1]["content"]
    c2 = find(repo, engine.snapshot(second.id)["tree"], str(f))[1]["content"]
    assert len(c1) >= 8  # ~1 MiB chunks
    assert len(set(c2) - set(c1)) <= 2
    # new data: the chunk with the changed byte (and perhaps its neighbour), plus trees
    assert stats["added_raw"] <= 2 * 4 * MIB
    assert stats["added_raw"] < size // 4
    assert stats["bytes_read"] == size  # the file changed, so it was read in full


# ---------------------------------------------------------------- error paths


def test_source_path_does_not_exist(sandbox):
    sandbox.cli("init", check=True)
    missing = sandbox.root / "gone"
    sandbox.filesets["src"] = [str(sandbox.src), str(missing)]
    sandbox.write_config()
    proc = sandbox.cli("backup", "files", "src")
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.decode()
    assert len(err.splitlines()) == 1
    assert str(missing) in err and "does not exist" in err
    assert proc.stdout == b""
    assert list((sandbox.repo / "snapshots").glob("*")) == []
    assert not (sandbox.repo / "data").exists() or not any((sandbox.repo / "data").rglob("*"))


def test_source_path_does_not_exist_engine(sandbox, tmp_path):
    sandbox.filesets["src"] = [str(tmp_path / "gone")]
    sandbox.write_config()
    eng = sandbox.engine(init=True)
    with pytest.raises(EngineError, match="does not exist"):
        eng.backup("files", "src")
    assert eng.snapshots() == []


def test_permission_denied_on_one_file(sandbox):
    """As root without DAC override: see the module docstring."""
    sandbox.cli("init", check=True)
    (sandbox.src / "ok.txt").write_text("readable\n")
    secret = sandbox.src / "secret.txt"
    secret.write_text("you may not read me\n")
    os.chmod(secret, 0)
    locked = sandbox.src / "locked_dir"
    locked.mkdir()
    (locked / "inner").write_text("x")
    os.chmod(locked, 0)
    raw = os.path.join(os.fsencode(sandbox.src), b"secr\xe9t")  # a name that is not UTF-8
    with open(raw, "wb") as f:
        f.write(b"x")
    os.chmod(raw, 0)
    raw_name = os.fsdecode(raw)
    proc = cli_without_dac(sandbox, "backup", "files", "src")
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert str(secret) in err and "permission denied" in err.lower()
    assert str(locked) in err
    assert "/secr\\udce9t: permission denied" in err  # shown escaped, not dropped
    assert b"INCOMPLETE" in proc.stdout
    snap = json.loads(sandbox.cli("show", "latest", "--json", check=True).stdout)
    assert snap["incomplete"] is True and snap["errors_total"] == 3
    assert {e["path"] for e in snap["errors"]} == {str(secret), str(locked), raw_name}
    (row,) = json.loads(sandbox.cli("list", "--json", check=True).stdout)
    assert row["complete"] is False
    # what could be read is in the snapshot
    out = sandbox.root / "out"
    assert sandbox.cli("restore", "files", "latest", "--target", str(out)).returncode == 0
    assert (restored_root(out, sandbox.src) / "ok.txt").read_text() == "readable\n"
    assert not (restored_root(out, sandbox.src) / "secret.txt").exists()
    # and the JSON of the backup carries the same list
    proc = cli_without_dac(sandbox, "backup", "files", "src", "--json")
    assert proc.returncode == 1
    obj = json.loads(proc.stdout)
    assert obj["complete"] is False
    assert {e["path"] for e in obj["errors"]} == {str(secret), str(locked), raw_name}


def test_file_grows_and_another_vanishes_during_backup(sandbox, engine, monkeypatch):
    # One reader thread in the backup's process (no reader processes, which open every
    # file as the walk lists it), so the files of a directory are read in name order and
    # the deletions below happen after listing and before the reader gets there.
    monkeypatch.setenv("BACKUP_TUI_READERS", "0")
    monkeypatch.setattr("engine.sources.files.READERS", 1)
    monkeypatch.setattr("engine.sources.files.LISTERS", 0)  # no listing ahead either
    src = sandbox.src
    big = src / "a_big"
    big.write_bytes(os.urandom(48 * MIB))
    (src / "m_stays").write_text("stays\n")
    (src / "z_vanish").write_text("here at listing time\n")
    (src / "z_dir").mkdir()
    (src / "z_dir" / "f").write_text("x")
    done = []

    def on_event(ev):
        if not done and ev.message == str(big):
            done.append(ev)
            with open(big, "ab") as f:
                f.write(b"grown" * 1000)
            os.unlink(src / "z_vanish")
            shutil.rmtree(src / "z_dir")

    res = engine.backup("files", "src", on_event)
    assert done, "the progress callback never named the big file"
    errors = {e["path"]: e["error"] for e in res.errors}
    assert set(errors) == {str(big), str(src / "z_vanish"), str(src / "z_dir")}
    assert "changed while being read" in errors[str(big)]
    assert "vanished" in errors[str(src / "z_vanish")]
    assert "vanished" in errors[str(src / "z_dir")]
    assert not res.complete
    snap = engine.snapshot(res.id)
    assert snap["incomplete"] is True
    # the grown file is still stored (what was read); the rest is intact
    repo = engine.repo()
    assert find(repo, snap["tree"], str(big))[1]["size"] >= 48 * MIB
    assert find(repo, snap["tree"], str(src / "m_stays"))[1]["type"] == "file"
    # the next backup reads the grown file again and is complete
    res2 = engine.backup("files", "src")
    assert res2.complete
    assert find(repo, engine.snapshot(res2.id)["tree"], str(big))[1]["size"] == (
        48 * MIB + 5000
    )


def test_a_directory_too_big_for_one_tree_blob_is_named(sandbox, engine, monkeypatch):
    """A directory whose tree would pass the tree-blob cap is named in the errors and stored
    empty; the rest of the backup is kept (the snapshot says it is incomplete)."""
    from engine.repo import codec

    big = sandbox.src / "big"
    big.mkdir()
    for i in range(50):
        (big / f"entry-{i:04d}").write_text("x")
    (sandbox.src / "small.txt").write_text("kept")
    monkeypatch.setattr(codec, "MAX_RAW", 4000)  # a 50-entry tree is ~10 KB of JSON
    res = engine.backup("files", "src", replicate=False)
    assert not res.complete
    [err] = res.errors
    assert err["path"] == str(big) and "larger than the 4000 bytes" in err["error"]
    assert err["stored"].startswith("not stored")
    monkeypatch.undo()
    out = sandbox.root / "out"
    engine.restore(engine.plan_restore(res.id, target=str(out)))
    root = out / str(sandbox.src).lstrip("/")
    assert (root / "small.txt").read_text() == "kept" and list((root / "big").iterdir()) == []
