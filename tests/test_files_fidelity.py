"""Files restores that bring back everything (issue 9, items 3, 4 and 7).

Hard links (a pair in one directory, across directories, a partner outside a --path
selection), xattrs and POSIX access/default ACLs, sparse files (holes at the start, in
the middle, at the end; 1 GiB holding 12 KiB), sockets (skipped with a warning), and what
restored before (owners, setuid/sticky, devices, fifos, non-UTF-8 names and link
targets, 1969 and 2100 mtimes, 250-byte names); trees 600 levels deep, deeper than
the 4096-level limit, and with paths longer than PATH_MAX; and the incomplete-snapshot
warning saying what was stored of each path.

Restores are judged by real tools: ``rsync -aHAXn --checksum --numeric-ids
--itemize-changes`` (plus ``--modify-window=-1``, so nanoseconds count) prints nothing
when names, types, contents, owners, modes, mtimes, hard links, ACLs and xattrs are all
the same; ``getfacl -R``; ``st_blocks`` and the SEEK_DATA map for holes. A tree whose paths
are too long for rsync is compared by a walker on directory descriptors (below).
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_files_backup import restored_root
from test_restore import Crafter, meta

from engine.errors import UnsafeEntry
from engine.repo.tree import MAX_DEPTH
from engine.repo.walk import MAX_DEPTH as WALK_MAX_DEPTH
from engine.repo.walk import find

KIB, MIB, GIB = 1024, 1024 * 1024, 1024 * 1024 * 1024
ROOT = os.geteuid() == 0
T1969 = -12_345_678_987_654_321  # 1969-08-11, nanoseconds before the epoch
T2100 = 4_102_444_800_123_456_789  # 2100-01-01
SOCKET_WORDS = "skipped (sockets cannot be restored)"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def need(*tools: str) -> None:
    for t in tools:
        if shutil.which(t) is None:
            pytest.fail(f"{t} is not installed (.ci/setup installs it: apt-get install "
                        "rsync acl attr)")


def rsync_diff(src: Path, dst: Path) -> str:
    need("rsync")
    proc = subprocess.run(["rsync", "-aHAXn", "--checksum", "--numeric-ids", "--itemize-changes",
                           "--modify-window=-1", f"{src}/", f"{dst}/"],
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode("utf-8", "replace")


def getfacl_r(root: Path) -> str:
    need("getfacl")
    return subprocess.run(["getfacl", "-R", "-n", "-P", "."], cwd=root, capture_output=True,
                          check=True).stdout.decode("utf-8", "replace")


def setfacl(*args: str) -> None:
    need("setfacl")
    subprocess.run(["setfacl", *args], check=True, capture_output=True)


def data_map(path: Path) -> list[tuple[int, int]]:
    """The file's data ranges by SEEK_DATA/SEEK_HOLE."""
    out = []
    with open(path, "rb") as f:
        size, pos = os.fstat(f.fileno()).st_size, 0
        while pos < size:
            try:
                start = os.lseek(f.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(f.fileno(), start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
    return out


def same_sparse_file(a: Path, b: Path) -> None:
    """Same size, same data map, same bytes in every data range (holes read as zeros)."""
    assert os.stat(a).st_size == os.stat(b).st_size
    assert data_map(a) == data_map(b)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, end in data_map(a):
            fa.seek(start)
            fb.seek(start)
            assert fa.read(end - start) == fb.read(end - start)


def set_times_bottom_up(root: Path, special: dict[bytes, int] | None = None) -> None:
    """Distinct nanosecond mtimes for everything below root and root itself, deepest first
    (so directories keep theirs); ``special``: relative path -> mtime."""
    broot = os.fsencode(root)
    entries = [os.path.join(d, n) for d, ds, fs in os.walk(broot) for n in ds + fs]
    entries.sort(key=lambda p: p.count(b"/"), reverse=True)
    special = special or {}
    for i, p in enumerate(entries):
        t = special.get(os.path.relpath(p, broot), 1_500_000_000_000_000_000 + i * 1_000_000_007
                        + 123_456_789)
        os.utime(p, ns=(t, t), follow_symlinks=False)
    os.utime(broot, ns=(1_400_000_000_987_654_321,) * 2)


# --------------------------------------------------------------- the fidelity tree


def fidelity_tree(src: Path) -> None:
    """Every kind of entry and metadata a files restore must bring back (as root)."""
    bsrc = os.fsencode(src)
    # hard links: a pair in one directory (plus a third name elsewhere), a pair across
    # directories, one whose partner lies outside sel/, and a hard-linked symlink
    (src / "pair_a").write_bytes(b"pair\n")
    os.link(src / "pair_a", src / "pair_b")
    (src / "left").mkdir()
    (src / "right").mkdir()
    os.link(src / "pair_a", src / "left" / "pair_c")
    (src / "left" / "across").write_bytes(os.urandom(300_000))
    os.link(src / "left" / "across", src / "right" / "across2")
    (src / "sel").mkdir()
    (src / "sel" / "inside").write_text("my partner is outside sel/\n")
    os.link(src / "sel" / "inside", src / "elsewhere")
    os.symlink("pair_a", src / "sym")
    os.link(src / "sym", src / "sym_hard", follow_symlinks=False)
    # xattrs: binary and empty values, on files, directories and (trusted.*) a symlink
    os.setxattr(src / "pair_a", "user.note", b"binary\x00\xff value")
    os.setxattr(src / "pair_a", "user.empty", b"")
    os.setxattr(src / "left", "user.dir", b"on a directory")
    os.setxattr(src / "sym", "trusted.link", b"on a symlink", follow_symlinks=False)
    os.setxattr(src / "left" / "across", "trusted.secret", os.urandom(64))
    # POSIX ACLs: access ACLs on a file and a directory, a default ACL and what it gave
    (src / "acl_file").write_text("acl\n")
    setfacl("-m", "u:1234:rw-,g:5678:r--,u:4321:r--", str(src / "acl_file"))
    (src / "acl_dir").mkdir()
    setfacl("-m", "u:1234:rwx", str(src / "acl_dir"))
    setfacl("-d", "-m", "u:1234:r-x,g:5678:rwx", str(src / "acl_dir"))
    (src / "acl_dir" / "inherited").write_text("inherits the default ACL\n")
    (src / "acl_dir" / "sub").mkdir()
    # a sparse file: holes at the start, in the middle and at the end
    with open(src / "sparse", "wb") as f:
        f.truncate(8 * MIB)
        f.seek(1 * MIB)
        f.write(os.urandom(100_000))
        f.seek(5 * MIB)
        f.write(os.urandom(200_000))
    # owners and modes
    (src / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chown(src / "setuid", 1234, 5678)  # chown clears setuid: chmod after it
    os.chmod(src / "setuid", 0o4755)
    (src / "sticky").mkdir()
    os.chmod(src / "sticky", 0o1777)
    (src / "setgid_dir").mkdir()
    os.chown(src / "setgid_dir", 4242, 4343)
    os.chmod(src / "setgid_dir", 0o2750)
    (src / "setgid_dir" / "f").write_bytes(os.urandom(1000))
    # device nodes and a fifo
    try:
        os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(src / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 200))
    except PermissionError:
        pass  # mknod not allowed in this container: the rest still counts
    os.mkfifo(src / "fifo", 0o620)
    # names and link targets that are not UTF-8, 250-byte names
    os.mkdir(os.path.join(bsrc, b"dir-\xff\xfe"))
    with open(os.path.join(bsrc, b"dir-\xff\xfe", b"caf\xe9.txt"), "wb") as f:
        f.write(b"latin-1 name\n")
    os.symlink(b"target-\xe9", os.path.join(bsrc, b"link-\xe9"))
    (src / ("n" * 250)).write_text("long name\n")
    (src / ("D" * 250)).mkdir()
    (src / ("D" * 250) / ("f" * 250)).write_text("long names\n")
    (src / "old").write_text("1969\n")
    (src / "future").mkdir()
    (src / "future" / "f").write_text("2100\n")
    set_times_bottom_up(src, {b"old": T1969, b"future": T2100, b"future/f": T2100})


@pytest.fixture
def fidelity(sandbox, engine):
    """(sandbox, engine, snapshot id) of the fidelity tree, with a socket in it while the
    backup ran (removed after, the source's times put back)."""
    if not ROOT:
        pytest.skip("owners, devices, trusted.* xattrs and setuid bits need root")
    need("rsync", "getfacl", "setfacl")
    src = sandbox.src
    fidelity_tree(src)
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(src / "sock"))
        keep = os.stat(src).st_mtime_ns  # what the backup sees
        res = engine.backup("files", "src")
    finally:
        s.close()
        os.unlink(src / "sock")
        os.utime(src, ns=(keep, keep))
    assert res.complete, res.errors
    return sandbox, engine, res.id


def test_fidelity_tree_round_trips(fidelity, tmp_path):
    sandbox, engine, sid = fidelity
    src = sandbox.src
    repo = engine.repo()
    tree = engine.snapshot(sid)["tree"]

    def node(rel: str) -> dict:
        return find(repo, tree, str(src / rel))[1]

    # what the tree records (format 1.1 additions)
    a, b = node("pair_a"), node("pair_b")
    assert a["links"] == b["links"] == 3 and a["dev"] == b["dev"] and a["inode"] == b["inode"]
    assert "links" not in node("acl_file") and "links" not in node("left")
    assert [x[0] for x in a["xattrs"]] == ["dXNlci5lbXB0eQ==", "dXNlci5ub3Rl"]  # sorted
    assert {x[0] for x in node("acl_dir")["xattrs"]} == {
        "c3lzdGVtLnBvc2l4X2FjbF9hY2Nlc3M=", "c3lzdGVtLnBvc2l4X2FjbF9kZWZhdWx0"}
    data = data_map(src / "sparse")  # [1 MiB, ~1.1 MiB), [5 MiB, ~5.2 MiB) in fs blocks
    assert len(data) == 2 and data[0][0] == MIB and data[1][0] == 5 * MIB
    assert node("sparse")["holes"] == [[0, MIB], [data[0][1], 5 * MIB - data[0][1]],
                                       [data[1][1], 8 * MIB - data[1][1]]]
    assert node("sock")["type"] == "socket"

    result = engine.restore(engine.plan_restore(sid, target=str(tmp_path / "out")))
    dst = restored_root(tmp_path / "out", src)
    rel_sock = str(src / "sock").lstrip("/")
    assert f"socket {rel_sock}: {SOCKET_WORDS}" in result.warnings
    assert result.warnings == [f"socket {rel_sock}: {SOCKET_WORDS}"]
    assert not (dst / "sock").exists()

    assert rsync_diff(src, dst) == ""
    assert getfacl_r(dst) == getfacl_r(src)
    assert "user:1234:rw-" in getfacl_r(dst)  # the ACLs are there, not only equal
    # hard links are links again
    st = {p: os.lstat(dst / p) for p in ("pair_a", "pair_b", "left/pair_c", "left/across",
                                          "right/across2", "sym", "sym_hard", "sel/inside",
                                          "elsewhere")}
    assert st["pair_a"].st_ino == st["pair_b"].st_ino == st["left/pair_c"].st_ino
    assert st["pair_a"].st_nlink == 3
    assert st["left/across"].st_ino == st["right/across2"].st_ino
    assert st["sym"].st_ino == st["sym_hard"].st_ino and stat.S_ISLNK(st["sym"].st_mode)
    assert st["sel/inside"].st_ino == st["elsewhere"].st_ino
    assert os.getxattr(dst / "sym", "trusted.link", follow_symlinks=False) == b"on a symlink"
    # the sparse file is sparse again
    same_sparse_file(src / "sparse", dst / "sparse")
    assert os.stat(dst / "sparse").st_blocks == os.stat(src / "sparse").st_blocks
    assert os.stat(dst / "old").st_mtime_ns == T1969
    assert os.stat(dst / "future").st_mtime_ns == T2100


def test_hardlink_partner_outside_the_selection(fidelity, tmp_path):
    sandbox, _engine, sid = fidelity
    src = sandbox.src
    out = tmp_path / "out"
    proc = sandbox.cli("restore", "files", sid, "--target", str(out), "--path", str(src / "sel"),
                       "--path", str(src / "left"), "--path", str(src / "right"))
    assert proc.returncode == 0, proc.stderr
    dst = restored_root(out, src)
    inside = os.lstat(dst / "sel" / "inside")
    assert stat.S_ISREG(inside.st_mode) and inside.st_nlink == 1
    assert (dst / "sel" / "inside").read_text() == "my partner is outside sel/\n"
    assert not (dst / "elsewhere").exists()
    # a pair inside the selection is still one file; pair_c's partners are not restored
    assert os.lstat(dst / "left" / "across").st_ino == os.lstat(dst / "right" / "across2").st_ino
    assert os.lstat(dst / "left" / "pair_c").st_nlink == 1
    assert (dst / "left" / "pair_c").read_bytes() == b"pair\n"
    for d in ("sel", "left", "right"):
        assert rsync_diff(src / d, dst / d) == "", d
    assert getfacl_r(dst / "left") == getfacl_r(src / "left")


def test_sparse_gib_with_12_kib_of_data(sandbox, engine, tmp_path):
    """1 GiB holding 12 KiB (start, middle, end): the backup reads 12 KiB, not 1 GiB, and
    the restored file holds ~12 KiB on disk."""
    path = sandbox.src / "disk.img"
    with open(path, "wb") as f:
        f.truncate(GIB)
        f.write(os.urandom(4 * KIB))
        f.seek(GIB // 2)
        f.write(os.urandom(4 * KIB))
        f.seek(GIB - 4 * KIB)
        f.write(os.urandom(4 * KIB))
    if os.stat(path).st_blocks * 512 > 1 * MIB:
        pytest.skip("this file system does not keep holes")
    res = engine.backup("files", "src")
    assert res.complete
    stats = engine.snapshot(res.id)["stats"]
    assert stats["size"] == GIB
    assert stats["bytes_read"] == 12 * KIB  # the holes were never read
    assert stats["added"] < 256 * KIB  # a 4 MiB zero blob, two tails (zstd), the data
    node = find(engine.repo(), engine.snapshot(res.id)["tree"], str(path))[1]
    assert node["holes"] == [[4 * KIB, GIB // 2 - 4 * KIB], [GIB // 2 + 4 * KIB,
                                                                GIB // 2 - 8 * KIB]]
    engine.restore(engine.plan_restore(res.id, target=str(tmp_path / "out")))
    got = restored_root(tmp_path / "out", sandbox.src) / "disk.img"
    assert os.stat(got).st_size == GIB
    assert os.stat(got).st_blocks * 512 <= 12 * KIB + 3 * 64 * KIB  # fs block rounding
    du = subprocess.run(["du", "--block-size=1", str(got)], capture_output=True, check=True)
    assert int(du.stdout.split()[0]) <= 12 * KIB + 3 * 64 * KIB
    same_sparse_file(path, got)
    # a second backup reuses the content list, holes and all
    res2 = engine.backup("files", "src")
    assert engine.snapshot(res2.id)["stats"]["bytes_read"] == 0
    assert find(engine.repo(), engine.snapshot(res2.id)["tree"], str(path))[1] == node


def test_sparse_file_read_by_an_older_reader_has_the_right_bytes(sandbox, engine):
    """content covers the holes with zero blobs: concatenating it gives the file."""
    path = sandbox.src / "s"
    with open(path, "wb") as f:
        f.truncate(9 * MIB + 5)
        f.seek(3 * MIB)
        f.write(b"x" * 70_000)
    res = engine.backup("files", "src")
    repo = engine.repo()
    node = find(repo, engine.snapshot(res.id)["tree"], str(path))[1]
    assert node["holes"]
    data = b"".join(repo.load_blob(b, "data") for b in node["content"])
    assert hashlib.sha256(data).digest() == hashlib.sha256(path.read_bytes()).digest()


def test_refused_xattrs_are_warnings_not_failures(sandbox, engine, tmp_path):
    """An xattr the target refuses (unknown namespace; user.* on a symlink) is a warning
    naming the path; the rest of the entry is restored."""
    c = Crafter(engine)
    bad = [["Zm9vLmJhcg==", "eA=="]]  # foo.bar: no such namespace
    user = [["dXNlci54", "eA=="]]  # user.x: not allowed on a symlink
    sid = c.snapshot([c.file("f", xattrs=bad), meta("l", "symlink", target="f", xattrs=user)])
    result = engine.restore(engine.plan_restore(sid, target=str(tmp_path / "out")))
    assert (tmp_path / "out" / "f").read_bytes() == b"pwned\n"
    assert os.readlink(tmp_path / "out" / "l") == "f"
    assert any(w.startswith("f: extended attribute(s) not restored") and "foo.bar" in w
               for w in result.warnings), result.warnings
    assert any(w.startswith("l: extended attribute(s) not restored") and "user.x" in w
               for w in result.warnings), result.warnings


@pytest.mark.parametrize("field", [
    {"holes": [[0, 10]]},  # past the end of a 6-byte file
    {"holes": [[2, 2], [1, 2]]},  # not sorted
    {"holes": [[0, 0]]},
    {"holes": "0-6"},
    {"xattrs": [["not base64!", "eA=="]]},
    {"xattrs": [["", "eA=="]]},
    {"xattrs": [["dXNlci54"]]},
])
def test_malformed_additions_are_refused_before_writing(sandbox, engine, tmp_path, field):
    c = Crafter(engine)
    sid = c.snapshot([c.file("f", **field)])
    with pytest.raises(UnsafeEntry, match="malformed"):
        engine.plan_restore(sid, target=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("other", [False, True], ids=["empty-target", "force-non-empty"])
def test_inherited_acls_are_not_added(sandbox, engine, tmp_path, other):
    """A restore into a directory with a default ACL: entries get the ACLs of the
    snapshot (none here), not the ones the target would hand down."""
    need("setfacl", "getfacl")
    (sandbox.src / "f").write_text("f\n")
    (sandbox.src / "d").mkdir()
    (sandbox.src / "d" / "g").write_text("g\n")
    res = engine.backup("files", "src")
    out = tmp_path / "out"
    out.mkdir()
    setfacl("-d", "-m", "u:1234:rwx", str(out))
    if other:
        (out / "other").write_text("x")
    engine.restore(engine.plan_restore(res.id, target=str(out), force=other))
    dst = restored_root(out, sandbox.src)
    assert rsync_diff(sandbox.src, dst) == ""
    assert "1234" not in getfacl_r(out / "tmp")


# ------------------------------------------------------------------ depth and length


def make_chain(base: Path, names: list[bytes], leaf) -> None:
    """mkdir base/names[0]/names[1]/... by descriptors (paths may pass PATH_MAX); call
    leaf(fd, depth) in every directory made."""
    fds = [os.open(base, DIR_FLAGS)]
    try:
        for depth, name in enumerate(names, 1):
            os.mkdir(name, dir_fd=fds[-1])
            fds.append(os.open(name, DIR_FLAGS, dir_fd=fds[-1]))
            leaf(fds[-1], depth)
    finally:
        for fd in fds:
            os.close(fd)


def rm_deep(path: Path) -> None:
    """rm -rf without recursion or long paths (shutil.rmtree recurses per level)."""
    if not path.exists():
        return
    stack = [(os.open(path, DIR_FLAGS), None)]
    while stack:
        fd, _ = stack[-1]
        sub = None
        for name in os.listdir(fd):
            if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                sub = name
                break
            os.unlink(name, dir_fd=fd)
        if sub is not None:
            stack.append((os.open(sub, DIR_FLAGS, dir_fd=fd), sub))
            continue
        os.close(fd)
        _, name = stack.pop()
        if stack:
            os.rmdir(name, dir_fd=stack[-1][0])
    os.rmdir(path)


def describe_tree(root: Path) -> dict[bytes, tuple]:
    """Everything a restore must keep of every entry below root, walked by descriptors
    (paths past PATH_MAX): relative path -> (type, mode, uid, gid, mtime_ns, size,
    content hash or link target, xattrs, hard-link group)."""
    out: dict[bytes, tuple] = {}
    groups: dict[tuple[int, int], bytes] = {}
    stack = [(os.open(root, DIR_FLAGS), b"")]
    while stack:
        fd, rel = stack.pop()
        try:
            for name in sorted(os.fsencode(n) for n in os.listdir(fd)):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                path = rel + b"/" + name if rel else name
                proc = b"/proc/self/fd/%d/%s" % (fd, name)
                xattrs = sorted((n, os.getxattr(proc, n, follow_symlinks=False))
                                for n in os.listxattr(proc, follow_symlinks=False))
                what: object = None
                if stat.S_ISREG(st.st_mode):
                    f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
                    with open(f, "rb") as fh:
                        what = hashlib.sha256(fh.read()).hexdigest()
                elif stat.S_ISLNK(st.st_mode):
                    what = os.readlink(name, dir_fd=fd)
                group = None
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    group = groups.setdefault((st.st_dev, st.st_ino), path)
                out[path] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_uid, st.st_gid,
                             st.st_mtime_ns, st.st_size if not stat.S_ISDIR(st.st_mode) else 0,
                             what, xattrs, group)
                if stat.S_ISDIR(st.st_mode):
                    stack.append((os.open(name, DIR_FLAGS, dir_fd=fd), path))
        finally:
            os.close(fd)
    return out


def cli_with_few_fds(sb, *args: str, fds: int = 128) -> subprocess.CompletedProcess:
    """The real CLI with RLIMIT_NOFILE lowered: depth must not cost a descriptor a level."""
    env = dict(os.environ)
    env.pop("BACKUP_TUI_PASSWORD", None)
    return subprocess.run(
        [sys.executable, "-m", "backup_tui.cli", "--config", str(sb.config_path), *args],
        capture_output=True, env=env, timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (fds, fds)))


def test_600_levels_round_trip(sandbox, tmp_path):
    """A tree 600 directories deep (the old recursive walk died near 490; restore refused
    past 512): backed up complete and restored the same (rsync), with at most 128 file
    descriptors for the whole process."""
    def leaf(fd: int, depth: int) -> None:
        if depth % 100 == 0 or depth == 600:
            with open(os.open(b"f", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd), "wb") as f:
                f.write(b"level %d\n" % depth)
    make_chain(sandbox.src, [b"d"] * 600, leaf)
    set_times_bottom_up(sandbox.src)
    sandbox.cli("init", check=True)
    proc = cli_with_few_fds(sandbox, "backup", "files", "src")
    assert proc.returncode == 0 and b"complete" in proc.stdout, proc.stderr
    out = tmp_path / "out"
    proc = cli_with_few_fds(sandbox, "restore", "files", "latest", "--target", str(out))
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    dst = restored_root(out, sandbox.src)
    assert (dst / "/".join(["d"] * 600) / "f").read_bytes() == b"level 600\n"
    assert rsync_diff(sandbox.src, dst) == ""


def test_paths_longer_than_path_max_round_trip(sandbox, engine, tmp_path):
    """40 directories of 120-byte names: paths of ~5000 bytes, past PATH_MAX (4096). Files,
    a symlink, a hard-link pair, a fifo and xattrs at the bottom come back the same."""
    names = [(b"%03d" % i) + b"L" * 117 for i in range(40)]

    def leaf(fd: int, depth: int) -> None:
        if depth != len(names):
            return
        with open(os.open(b"file", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "wb") as f:
            f.write(os.urandom(400_000))
        os.link(b"file", b"hard", src_dir_fd=fd, dst_dir_fd=fd)
        os.symlink(b"file", b"link", dir_fd=fd)
        os.mkfifo(b"fifo", 0o640, dir_fd=fd)
        os.setxattr(b"/proc/self/fd/%d/file" % fd, b"user.deep", b"yes")
        os.setxattr(fd, b"user.dir", b"deep dir")

    make_chain(sandbox.src, names, leaf)
    assert len(os.fsencode(sandbox.src)) + sum(len(n) + 1 for n in names) > 4096
    try:
        res = engine.backup("files", "src")
        assert res.complete, res.errors
        result = engine.restore(engine.plan_restore(res.id, target=str(tmp_path / "out")))
        assert result.warnings == []
        dst = restored_root(tmp_path / "out", sandbox.src)
        want, got = describe_tree(sandbox.src), describe_tree(dst)
        assert len(want) == 44 and want.keys() == got.keys()
        for k in want:
            assert got[k] == want[k], k
        bottom = [v for k, v in got.items() if k.endswith(b"/hard")][0]
        assert bottom[-1].endswith(b"/file")  # hard and file are one file
    finally:
        rm_deep(sandbox.src)
        rm_deep(tmp_path / "out")


def test_deeper_than_the_limit_is_named_and_the_rest_restores(sandbox, engine, tmp_path):
    """The backup stores directories down to MAX_DEPTH (restore accepts exactly that much)
    and names the first one below as an error; no crash, the rest restores."""
    assert MAX_DEPTH == WALK_MAX_DEPTH >= 4096
    base_depth = len(sandbox.src.parts) - 1  # directories from / to src
    levels = MAX_DEPTH - base_depth + 3

    def leaf(fd: int, depth: int) -> None:
        if depth == 1:
            with open(os.open(b"top", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "wb") as f:
                f.write(b"top\n")

    make_chain(sandbox.src, [b"d"] * levels, leaf)
    try:
        res = engine.backup("files", "src")
        assert not res.complete
        (err,) = res.errors
        assert f"nested more than {MAX_DEPTH} directories deep" in err["error"]
        assert err["stored"] == "not read at all"
        assert len(Path(err["path"]).relative_to(sandbox.src).parts) == (
            MAX_DEPTH - base_depth + 1)
        result = engine.restore(engine.plan_restore(res.id, target=str(tmp_path / "out")))
        assert f"{err['path']}: not read at all" in "\n".join(result.warnings)
        dst = restored_root(tmp_path / "out", sandbox.src)
        assert (dst / "d" / "top").read_bytes() == b"top\n"
    finally:
        rm_deep(sandbox.src)
        rm_deep(tmp_path / "out")


def crafted_chain(c: Crafter, depth: int) -> str:
    """A snapshot whose root tree holds directories nested so that the deepest tree is
    at ``depth`` (the root tree is at 0)."""
    node = c.file("bottom")
    for _ in range(depth):
        node = c.dir("d", [node])
    return c.snapshot([node])


def test_restore_accepts_the_limit_and_refuses_one_more(sandbox, engine, tmp_path):
    ok = crafted_chain(Crafter(engine), MAX_DEPTH)
    plan = engine.plan_restore(ok, target=str(tmp_path / "out"))
    assert plan.dirs == MAX_DEPTH and plan.files == 1
    deep = crafted_chain(Crafter(engine), MAX_DEPTH + 1)
    with pytest.raises(UnsafeEntry, match="too deep"):
        engine.plan_restore(deep, target=str(tmp_path / "out2"))


# ---------------------------------------------------------------- item 7: the warning


def test_incomplete_warning_says_what_was_stored(sandbox, engine, tmp_path, monkeypatch):
    """A file read while it grew, and one that vanished: the restore says "read up to N
    bytes" of the first (that much is restored) and "not read at all" of the second."""
    monkeypatch.setenv("BACKUP_TUI_READERS", "0")  # read in the backup's own process
    monkeypatch.setattr("engine.sources.files.READERS", 1)
    monkeypatch.setattr("engine.sources.files.LISTERS", 0)
    src = sandbox.src
    big = src / "a_big"
    big.write_bytes(os.urandom(12 * MIB))
    (src / "z_gone").write_text("here at listing time\n")
    done = []

    def on_event(ev):
        if not done and ev.message == str(big):
            done.append(ev)
            with open(big, "ab") as f:
                f.write(b"grown" * 1000)
            (src / "z_gone").unlink()

    res = engine.backup("files", "src", on_event)
    assert done and not res.complete
    errors = {e["path"]: e for e in engine.snapshot(res.id)["errors"]}
    stored = find(engine.repo(), engine.snapshot(res.id)["tree"], str(big))[1]["size"]
    assert errors[str(big)]["read"] == stored
    assert errors[str(big)]["stored"] == f"read up to {stored} bytes"
    assert errors[str(src / "z_gone")]["stored"] == "not read at all"
    assert "read" not in errors[str(src / "z_gone")]

    result = engine.restore(engine.plan_restore(res.id, target=str(tmp_path / "out")))
    assert "is incomplete: 2 path(s)" in result.warnings[0]
    assert any(w.startswith(f"{big}: read up to {stored} bytes (changed while being read")
               for w in result.warnings), result.warnings
    assert any(w.startswith(f"{src / 'z_gone'}: not read at all (vanished")
               for w in result.warnings), result.warnings
    assert os.path.getsize(restored_root(tmp_path / "out", src) / "a_big") == stored

    # a selection names only its own paths
    part = engine.restore(engine.plan_restore(res.id, target=str(tmp_path / "part"),
                                              paths=[str(src / "a_big")]))
    assert "1 of them in what is restored" in part.warnings[0]
    assert not any("z_gone" in w for w in part.warnings)


def test_fidelity_tree_through_dump_and_gnu_tar(fidelity, tmp_path):
    """The same tree through ``dump | tar -x --xattrs --acls``: GNU tar, not our restore,
    brings it back, and rsync -aHAX, getfacl and the sparse map judge it."""
    from test_dump import TAR_ALL, pipeline

    sandbox, _engine, sid = fidelity
    src = sandbox.src
    out = tmp_path / "out"
    out.mkdir()
    tar = ["tar", "-x", "-p", "--numeric-owner", *TAR_ALL, "-C", str(out), "-f", "-"]
    proc = pipeline(sandbox, f"{{dump}} {sid} | {' '.join(repr(a) for a in tar)}")
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, err
    rel_sock = str(src / "sock").lstrip("/")
    # GNU tar remarks on the 1969 and 2100 mtimes (and restores them); we warn of the socket.
    # Both write to the same stderr, so our line may land inside one of tar's: take it out
    # whole (with its newline) before reading tar's lines.
    ours = f"warning: socket {rel_sock}: {SOCKET_WORDS}\n"
    assert err.count(ours) == 1, err
    said = [ln.strip() for ln in err.replace(ours, "").splitlines()
            if ln.strip() and "in the future" not in ln and "implausibly old" not in ln]
    assert said == [], err
    dst = restored_root(out, src)
    assert rsync_diff(src, dst) == ""
    assert getfacl_r(dst) == getfacl_r(src)
    st = {p: os.lstat(dst / p) for p in ("pair_a", "pair_b", "left/pair_c")}
    assert st["pair_a"].st_ino == st["pair_b"].st_ino == st["left/pair_c"].st_ino
    same_sparse_file(src / "sparse", dst / "sparse")
