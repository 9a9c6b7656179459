"""restore and dump: selections, metadata, target rules, and malicious snapshots.

The repository is untrusted input (docs/ARCHITECTURE.md, section 4). Malicious snapshots are
built with the repository's own write API (BlobWriter + commit + save_snapshot), so
they are perfectly authentic objects: only restore's own checks stand between
them and the file system. "Outside" is always a temporary directory, never /etc.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_files_backup import assert_same_tree, restored_root, rich_tree, tree_of  # noqa: F401

from engine.errors import UnsafeEntry, UsageError
from engine.repo.repository import DATA, TREE, now_iso
from engine.repo.tree import encode_tree


def all_paths(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


def sample_tree(src: Path) -> None:
    (src / "a.txt").write_text("alpha\n")
    (src / "docs").mkdir()
    (src / "docs" / "readme.md").write_text("# readme\n")
    (src / "docs" / "deep").mkdir()
    (src / "docs" / "deep" / "x.bin").write_bytes(os.urandom(200_000))
    os.chmod(src / "docs" / "deep" / "x.bin", 0o751)
    os.symlink("../a.txt", src / "docs" / "link")
    (src / "empty").mkdir()
    os.utime(src / "docs" / "deep", ns=(1_600_000_000_111_222_333,) * 2)


@pytest.fixture
def backed_up(sandbox):
    """An initialised sandbox with one snapshot of sample_tree; returns (sandbox, id)."""
    sample_tree(sandbox.src)
    sandbox.cli("init", check=True)
    proc = sandbox.cli("backup", "files", "src", "--json", check=True)
    import json

    return sandbox, json.loads(proc.stdout)["id"]


# ------------------------------------------------------------------ selections


def test_restore_whole_snapshot_with_metadata(backed_up, tmp_path):
    sb, sid = backed_up
    target = tmp_path / "out"
    proc = sb.cli("restore", "files", sid[:8], "--target", str(target))
    assert proc.returncode == 0, proc.stderr
    assert b"restored 3 files" in proc.stdout
    assert_same_tree(sb.src, restored_root(target, sb.src))


def test_restore_path_selection_file_and_dir(backed_up, tmp_path):
    sb, sid = backed_up
    target = tmp_path / "out"
    proc = sb.cli("restore", "files", sid, "--target", str(target),
                  "--path", str(sb.src / "docs" / "deep"), "--path", str(sb.src / "a.txt"))
    assert proc.returncode == 0, proc.stderr
    root = restored_root(target, sb.src)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [
        "a.txt", "docs", "docs/deep", "docs/deep/x.bin"]
    assert_same_tree(sb.src / "docs" / "deep", root / "docs" / "deep")
    assert (root / "a.txt").read_text() == "alpha\n"
    # parents of a selection get their stored metadata, too
    assert (root / "docs").stat().st_mode == (sb.src / "docs").stat().st_mode


def test_restore_path_relative_form(backed_up, tmp_path):
    """A selection may be given without the leading slash."""
    sb, sid = backed_up
    target = tmp_path / "out"
    rel = str(sb.src / "docs" / "readme.md").lstrip("/")
    assert sb.cli("restore", "files", sid, "--target", str(target), "--path", rel).returncode == 0
    assert (restored_root(target, sb.src) / "docs" / "readme.md").read_text() == "# readme\n"


def test_restore_path_not_in_snapshot(backed_up, tmp_path):
    sb, sid = backed_up
    target = tmp_path / "out"
    proc = sb.cli("restore", "files", sid, "--target", str(target),
                  "--path", str(sb.src / "nope"))
    assert proc.returncode == 1
    assert b"not found in snapshot" in proc.stderr and str(sb.src / "nope").encode() in proc.stderr
    assert not target.exists()


def test_restore_path_through_a_symlink_is_not_found(backed_up, tmp_path):
    sb, sid = backed_up
    target = tmp_path / "out"
    proc = sb.cli("restore", "files", sid, "--target", str(target),
                  "--path", str(sb.src / "docs" / "link" / "x"))
    assert proc.returncode == 1 and b"not found" in proc.stderr
    assert not target.exists()


# --------------------------------------------------------------------- targets


def test_target_is_a_file(backed_up, tmp_path):
    sb, sid = backed_up
    target = tmp_path / "a-file"
    target.write_text("keep me\n")
    proc = sb.cli("restore", "files", sid, "--target", str(target))
    assert proc.returncode == 2
    line = proc.stderr.decode().strip()
    assert str(target) in line and "not a directory" in line and "\n" not in line
    assert target.read_text() == "keep me\n"
    proc = sb.cli("restore", "files", sid, "--target", str(target), "--force")
    assert proc.returncode == 2 and target.read_text() == "keep me\n"


def test_target_is_a_symlink(backed_up, tmp_path):
    sb, sid = backed_up
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    proc = sb.cli("restore", "files", sid, "--target", str(link))
    assert proc.returncode == 2 and b"symlink" in proc.stderr
    assert list(real.iterdir()) == []


def test_non_empty_target_needs_force(backed_up, tmp_path):
    sb, sid = backed_up
    target = tmp_path / "out"
    target.mkdir()
    (target / "existing.txt").write_text("mine\n")
    before = all_paths(target)
    proc = sb.cli("restore", "files", sid, "--target", str(target))
    assert proc.returncode == 2
    assert b"not empty" in proc.stderr and b"--force" in proc.stderr
    assert all_paths(target) == before
    proc = sb.cli("restore", "files", sid, "--target", str(target), "--force")
    assert proc.returncode == 0, proc.stderr
    assert (target / "existing.txt").read_text() == "mine\n"
    assert_same_tree(sb.src, restored_root(target, sb.src))


def test_force_replaces_entries_in_the_way(backed_up, tmp_path):
    """With --force an existing file, dir or symlink where the snapshot has something
    else is replaced, and never written through."""
    sb, sid = backed_up
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "out"
    root = restored_root(target, sb.src)
    (root / "docs").mkdir(parents=True)
    os.symlink(outside / "victim", root / "a.txt")          # file over a symlink
    os.symlink(outside, root / "docs" / "deep")             # dir over a symlink to a dir
    (root / "empty").write_text("a file where a dir goes")  # dir over a file
    (root / "docs" / "link").mkdir()                         # symlink over a dir
    (root / "docs" / "link" / "junk").write_text("j")
    (outside / "hard").write_text("outside content\n")
    os.link(outside / "hard", root / "docs" / "readme.md")  # file over a hard link
    proc = sb.cli("restore", "files", sid, "--target", str(target), "--force")
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in outside.iterdir()] == ["hard"]
    assert (outside / "hard").read_text() == "outside content\n"
    assert_same_tree(sb.src, root)


def test_restore_engine_level_target_checks(sandbox, engine, tmp_path):
    (sandbox.src / "f").write_text("f")
    sid = engine.backup("files", "src").id
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        engine.plan_restore(sid, target=str(f))
    d = tmp_path / "d"
    d.mkdir()
    (d / "x").write_text("x")
    with pytest.raises(UsageError, match="not empty"):
        engine.plan_restore(sid, target=str(d))
    plan = engine.plan_restore(sid, target=str(d), force=True)
    assert plan.summary()["files"] == 1


def test_target_filled_between_plan_and_execute(sandbox, engine, tmp_path):
    """The target rule is checked again when the restore starts."""
    (sandbox.src / "f").write_text("f")
    sid = engine.backup("files", "src").id
    target = tmp_path / "out"
    plan = engine.plan_restore(sid, target=str(target))
    target.mkdir()
    (target / "late").write_text("x")
    with pytest.raises(UsageError, match="not empty"):
        engine.restore(plan)
    assert all_paths(target) == {str(target / "late")}


# ------------------------------------------------------------ malicious snapshots


def meta(name: str | bytes, typ: str, **kw) -> dict:
    node = {"type": typ, "mode": 0o644 if typ != "dir" else 0o755, "uid": 0, "gid": 0,
            "mtime_ns": 1_600_000_000_000_000_000, "size": 0}
    if isinstance(name, bytes):
        import base64

        node["name_b64"] = base64.b64encode(name).decode()
    else:
        node["name"] = name
    node.update(kw)
    return node


class Crafter:
    """Writes authentic but malicious trees and snapshots into a repository."""

    def __init__(self, engine, source: str = "src"):
        self.engine = engine
        self.repo = engine.repo()
        self.writer = self.repo.writer()
        self.source = source
        self.payload = b"pwned\n"
        self.content = self.writer.save(DATA, self.payload)

    def file(self, name, **kw) -> dict:
        return meta(name, "file", content=[self.content], size=len(self.payload), **kw)

    def dir(self, name, children: list[dict], **kw) -> dict:
        return meta(name, "dir", subtree=self.tree(children), **kw)

    def link(self, name, target: str) -> dict:
        return meta(name, "symlink", target=target)

    def tree(self, children: list[dict]) -> str:
        return self.writer.save(TREE, encode_tree(children))

    def snapshot(self, children: list[dict]) -> str:
        root = self.tree(children)
        self.writer.commit()
        self.writer.close()
        snap = {"version": 1, "time": now_iso(), "kind": "files", "source": self.source,
                "host": "evil", "paths": ["/"], "tags": [], "tree": root, "parent": None,
                "incomplete": False, "errors": [], "stats": {"files": 1, "size": 6}}
        return self.repo.save_snapshot(snap)


@pytest.fixture
def evil(sandbox, engine, tmp_path):
    """(crafter factory, target, outside): target two levels below tmp, outside beside."""
    work = tmp_path / "work"
    work.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    return Crafter, work / "target", outside


def malicious_cases(outside: Path):
    """name -> function(crafter) -> children of the root tree."""
    rel = os.path.relpath(outside, "/")
    return {
        "dotdot-in-name": lambda c: [c.file("../../outside/passwd")],
        "dotdot-dirs": lambda c: [c.dir("..", [c.dir("..", [c.dir("outside",
                                                                  [c.file("passwd")])])])],
        "absolute-name": lambda c: [c.file(str(outside / "passwd"))],
        "absolute-dir-name": lambda c: [c.dir("/" + rel, [c.file("passwd")])],
        "slash-in-name": lambda c: [c.dir("sub", [c.file("a/b")])],
        "dot-name": lambda c: [c.dir(".", [c.file("passwd")])],
        "empty-name": lambda c: [c.file("")],
        "nul-in-name": lambda c: [c.file("pass\x00wd")],
        "dotdot-b64": lambda c: [c.file(b"../passwd")],
        "dup-link-then-dir": lambda c: [c.link("a", str(outside)),
                                        c.dir("a", [c.file("passwd")])],
        "dup-dir-then-link": lambda c: [c.dir("a", [c.file("passwd")]),
                                        c.link("a", str(outside))],
        "dup-link-then-file": lambda c: [c.link("a", str(outside / "passwd")), c.file("a")],
        "dup-nested": lambda c: [c.dir("d", [c.link("x", str(outside)),
                                             c.dir("x", [c.file("passwd")])])],
        "unknown-type": lambda c: [meta("h", "hardlink", target=str(outside / "passwd"))],
    }


CASES = sorted(malicious_cases(Path("/x")))


@pytest.mark.parametrize("case", CASES)
def test_malicious_snapshot_refused(sandbox, evil, tmp_path, case):
    crafter, target, outside = evil
    c = crafter(sandbox.engine())
    sid = c.snapshot(malicious_cases(outside)[case](c))
    before = all_paths(tmp_path)
    proc = sandbox.cli("restore", "files", sid, "--target", str(target))
    err = proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, err)
    assert len(err.splitlines()) == 1
    assert any(w in err for w in ("refused", "unsafe", "escape", "unknown type")), err
    # nothing written anywhere: not outside, not even the target
    assert list(outside.iterdir()) == []
    assert not target.exists()
    # (the plan reads under a shared repository lock: the lock folder is the only trace)
    assert all_paths(tmp_path) - {str(sandbox.repo / "locks")} == before
    # the engine refuses at plan time, before writing anything
    with pytest.raises(UnsafeEntry):
        sandbox.engine().plan_restore(sid, target=str(target))


@pytest.mark.parametrize("case", ["dotdot-dirs", "dup-link-then-dir", "absolute-dir-name"])
def test_malicious_snapshot_refused_by_dump(sandbox, evil, case):
    crafter, _target, outside = evil
    c = crafter(sandbox.engine())
    sid = c.snapshot(malicious_cases(outside)[case](c))
    proc = sandbox.cli("dump", sid)
    assert proc.returncode == 1
    assert b"refused" in proc.stderr or b"unsafe" in proc.stderr
    assert b"passwd" not in proc.stdout


def test_malicious_snapshot_refused_with_force_into_non_empty(sandbox, evil):
    crafter, target, outside = evil
    target.mkdir()
    (target / "keep").write_text("k")
    c = crafter(sandbox.engine())
    sid = c.snapshot(malicious_cases(outside)["dup-link-then-dir"](c))
    proc = sandbox.cli("restore", "files", sid, "--target", str(target), "--force")
    assert proc.returncode == 1
    assert list(outside.iterdir()) == []
    assert all_paths(target) == {str(target / "keep")}


def test_symlink_out_then_file_through_it_in_a_second_restore(sandbox, evil):
    """Snapshot 1 has a symlink ``a`` -> outside (a legitimate entry: restored as a
    link, not followed). Snapshot 2 has a directory ``a`` with a file inside. Restoring
    2 over 1 with --force must replace the link, never write through it."""
    crafter, target, outside = evil
    c = crafter(sandbox.engine())
    s1 = c.snapshot([c.link("a", str(outside)), c.link("b", str(outside / "passwd"))])
    c = crafter(sandbox.engine())
    s2 = c.snapshot([c.dir("a", [c.file("passwd")]), c.file("b")])
    assert sandbox.cli("restore", "files", s1, "--target", str(target)).returncode == 0
    assert os.readlink(target / "a") == str(outside)
    proc = sandbox.cli("restore", "files", s2, "--target", str(target), "--force")
    assert proc.returncode == 0, proc.stderr
    assert list(outside.iterdir()) == []
    assert not (target / "a").is_symlink() and (target / "a" / "passwd").read_bytes() == b"pwned\n"
    assert not (target / "b").is_symlink() and (target / "b").read_bytes() == b"pwned\n"


def test_symlink_restored_as_link_not_followed(sandbox, evil):
    """A snapshot's symlink that points outside is created as a link, and restore of a
    selected path below such a link is refused ("not found"), never followed."""
    crafter, target, outside = evil
    c = crafter(sandbox.engine())
    sid = c.snapshot([c.link("a", str(outside))])
    proc = sandbox.cli("restore", "files", sid, "--target", str(target), "--path", "a/passwd")
    assert proc.returncode == 1 and b"not found" in proc.stderr
    assert not target.exists()
    assert sandbox.cli("restore", "files", sid, "--target", str(target)).returncode == 0
    assert (target / "a").is_symlink() and list(outside.iterdir()) == []


def test_malformed_content_list_refused(sandbox, evil):
    crafter, target, outside = evil
    c = crafter(sandbox.engine())
    sid = c.snapshot([meta("f", "file", content="not-a-list", size=3)])
    proc = sandbox.cli("restore", "files", sid, "--target", str(target))
    assert proc.returncode == 1 and b"malformed" in proc.stderr
    assert not target.exists()


def test_content_blob_missing_from_index(sandbox, evil):
    """A file node naming a blob the repository does not have: clear error naming it."""
    crafter, target, outside = evil
    c = crafter(sandbox.engine())
    missing = "ab" * 32
    sid = c.snapshot([meta("f", "file", content=[missing], size=3)])
    proc = sandbox.cli("restore", "files", sid, "--target", str(target))
    assert proc.returncode == 1
    assert missing.encode() in proc.stderr


# ------------------------------------------------------------------------ dump


def dump_to_tar(sb, *args: str, dest: Path) -> tuple[int, bytes]:
    """``backup-tui dump ... | tar -x -C dest`` with a real pipe."""
    dest.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("BACKUP_TUI_PASSWORD", None)
    dump = subprocess.Popen(
        [sys.executable, "-m", "backup_tui.cli", "--config", str(sb.config_path), "dump", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    tar = subprocess.run(["tar", "-x", "-p", "--numeric-owner", "-C", str(dest), "-f", "-"],
                         stdin=dump.stdout, capture_output=True, timeout=120)
    dump.stdout.close()
    err = dump.stderr.read()
    dump.wait(timeout=60)
    assert tar.returncode == 0, tar.stderr
    return dump.returncode, err


def seconds_only(tree: dict) -> dict:
    out = {}
    for k, v in tree.items():
        v = dict(v)
        v["mtime_ns"] //= 1_000_000_000
        out[k] = v
    return out


def test_dump_pipe_to_tar_gives_the_same_tree(sandbox, tmp_path):
    src = sandbox.src
    sample_tree(src)
    os.mkfifo(src / "fifo", 0o640)
    (src / "setuid").write_bytes(b"x")
    os.chmod(src / "setuid", 0o4755)
    os.symlink("nowhere", src / "dangling")
    with open(os.path.join(os.fsencode(src), b"caf\xe9"), "wb") as f:
        f.write(b"bytes name\n")
    for p in [src / "docs", src]:
        os.utime(p, ns=(1_500_000_000_500_000_000,) * 2)
    sandbox.cli("init", check=True)
    sandbox.cli("backup", "files", "src", check=True)
    out = tmp_path / "untar"
    rc, err = dump_to_tar(sandbox, "latest", dest=out)
    assert rc == 0, err
    a = seconds_only(tree_of(src))
    b = seconds_only(tree_of(restored_root(out, src)))
    assert sorted(a) == sorted(b)
    for k in a:
        if a[k]["type"] == stat.S_IFLNK:  # tar does not keep a symlink's own mtime
            a[k].pop("mtime_ns"), b[k].pop("mtime_ns")
        assert a[k] == b[k], k


def test_dump_path_selection(sandbox, tmp_path):
    sample_tree(sandbox.src)
    sandbox.cli("init", check=True)
    sandbox.cli("backup", "files", "src", check=True)
    out = tmp_path / "untar"
    rc, err = dump_to_tar(sandbox, "latest", "--path", str(sandbox.src / "docs"), dest=out)
    assert rc == 0, err
    root = restored_root(out, sandbox.src)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [
        "docs", "docs/deep", "docs/deep/x.bin", "docs/link", "docs/readme.md"]
    assert (root / "docs" / "deep" / "x.bin").read_bytes() == (
        sandbox.src / "docs" / "deep" / "x.bin").read_bytes()
    assert os.readlink(root / "docs" / "link") == "../a.txt"
    # a single file
    out2 = tmp_path / "untar2"
    rc, err = dump_to_tar(sandbox, "latest", "--path", str(sandbox.src / "a.txt"), dest=out2)
    assert rc == 0, err
    assert (restored_root(out2, sandbox.src) / "a.txt").read_text() == "alpha\n"


def test_dump_errors(sandbox):
    sample_tree(sandbox.src)
    sandbox.cli("init", check=True)
    sandbox.cli("backup", "files", "src", check=True)
    proc = sandbox.cli("dump", "latest", "--path", str(sandbox.src / "nope"))
    assert proc.returncode == 1 and b"not found" in proc.stderr and proc.stdout == b""
    proc = sandbox.cli("dump", "0123456789")
    assert proc.returncode == 1 and b"no snapshot matches" in proc.stderr and proc.stdout == b""


def test_dump_rich_tree_through_tar(sandbox, rich_tree, tmp_path):  # noqa: F811 (fixture)
    """Every kind of entry, owners, setuid/sticky bits and names that are not UTF-8."""
    sandbox.cli("init", check=True)
    sandbox.cli("backup", "files", "src", check=True)
    out = tmp_path / "untar"
    rc, err = dump_to_tar(sandbox, "latest", dest=out)
    assert rc == 0, err
    a = seconds_only(tree_of(rich_tree))
    b = seconds_only(tree_of(restored_root(out, rich_tree)))
    assert sorted(a) == sorted(b)
    for k in a:
        if a[k]["type"] == stat.S_IFLNK:
            a[k].pop("mtime_ns"), b[k].pop("mtime_ns")
        assert a[k] == b[k], k


@pytest.mark.parametrize("target", [""])
def test_empty_target_is_refused(backed_up, tmp_path, target):
    """An empty --target (an unset shell variable) must not mean the current directory."""
    sb, sid = backed_up
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "mine").write_text("mine\n")
    env = dict(os.environ)
    env.pop("BACKUP_TUI_PASSWORD", None)
    proc = subprocess.run(
        [sys.executable, "-m", "backup_tui.cli", "--config", str(sb.config_path),
         "restore", "files", sid, "--target", target, "--force"],
        cwd=cwd, capture_output=True, env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert b"target is empty" in proc.stderr
    assert all_paths(cwd) == {str(cwd / "mine")}


def test_target_below_a_file(backed_up, tmp_path):
    sb, sid = backed_up
    (tmp_path / "f").write_text("f")
    proc = sb.cli("restore", "files", sid, "--target", str(tmp_path / "f" / "out"))
    assert proc.returncode in (1, 2)
    err = proc.stderr.decode()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(tmp_path / "f") in err
    assert (tmp_path / "f").read_text() == "f"


def test_dump_into_a_closed_pipe(sandbox):
    """``dump | head -c 100``: the reader goes away; a normal end: exit 0, nothing said."""
    (sandbox.src / "big").write_bytes(os.urandom(8 * 1024 * 1024))
    sandbox.cli("init", check=True)
    sandbox.cli("backup", "files", "src", check=True)
    env = dict(os.environ)
    env.pop("BACKUP_TUI_PASSWORD", None)
    dump = subprocess.Popen(
        [sys.executable, "-m", "backup_tui.cli", "--config", str(sandbox.config_path),
         "dump", "latest"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    head = dump.stdout.read(100)
    dump.stdout.close()
    err = dump.stderr.read()
    assert dump.wait(timeout=60) == 0
    assert len(head) == 100 and err == b""


def test_restoring_an_incomplete_snapshot_warns(sandbox, engine, tmp_path, monkeypatch):
    # One reader, no listing ahead: files are read in name order, so deleting z_file while
    # a_big is being read makes it vanish after it was listed (an incomplete snapshot).
    monkeypatch.setenv("BACKUP_TUI_READERS", "0")  # read in the backup's own process
    monkeypatch.setattr("engine.sources.files.READERS", 1)
    monkeypatch.setattr("engine.sources.files.LISTERS", 0)
    big = sandbox.src / "a_big"
    big.write_bytes(os.urandom(12 << 20))
    (sandbox.src / "z_file").write_text("z")

    def on_event(ev):
        if ev.message == str(big) and (sandbox.src / "z_file").exists():
            (sandbox.src / "z_file").unlink()

    res = engine.backup("files", "src", on_event)
    assert not res.complete
    result = engine.restore(engine.plan_restore(res.id, target=str(tmp_path / "out")))
    assert "is incomplete: 1 path(s)" in result.warnings[0]
