"""Readers of blocks stored as deltas against older blocks (format 1.2, engine/repo/blockdelta.py):
restore (threads, forked writers, a remote backend's read-ahead, resume, sparse files,
a cluster snapshot's restore_base) and dump (through GNU tar) give the file's bytes; a
delta that does not rebuild its block fails naming the file and the block, with nothing
wrong written; a malformed ``delta`` list is refused before anything is written.

The repositories are written by hand (BlobWriter + commit + save_snapshot), as a base
backup would: an older backup's blocks stored whole, a newer one's changed blocks stored
as deltas against them (the block's own id is not stored)."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import EngineError, IntegrityError, UnsafeEntry
from engine.events import CancelToken
from engine.ops import dump as dump_op
from engine.ops.restore import _Restorer, execute_restore, plan_restore
from engine.repo.blockdelta import make_delta
from engine.repo.repository import DATA, TREE, Repository, now_iso
from engine.repo.tree import encode_tree
from engine.sources.cluster import restore_base
from engine.storage import MemoryBackend

BLOCK = 16 * 1024
T0 = 1_600_000_000_123_456_789
KDF = {"name": "scrypt", "n": 2**10, "r": 8, "p": 1}


def node(name: str, typ: str, **kw) -> dict:
    n = {"type": typ, "name": name, "mode": 0o755 if typ == "dir" else 0o640, "uid": 0,
         "gid": 0, "user": "root", "group": "root", "mtime_ns": T0, "size": 0}
    n.update(kw)
    return n


def changed(rnd: random.Random, block: bytes) -> bytes:
    """The block with a few bytes changed (as an update changes a page)."""
    b = bytearray(block)
    for _ in range(8):
        b[rnd.randrange(len(b))] ^= rnd.randrange(1, 256)
    return bytes(b)


class Builder:
    """Writes two "backups" of files into a repository: ``old`` blocks stored whole by a
    first writer, then the new files (blocks unchanged, changed and stored whole, or
    changed and stored as deltas against the old block) by a second one."""

    def __init__(self, repo: Repository, seed: int = 1):
        self.repo = repo
        self.rnd = random.Random(seed)
        self.blob_id = repo.keys.blob_id
        self.old = repo.writer()
        self.new = repo.writer()
        self.expected: dict[str, bytes] = {}
        self.deltas: list[str] = []  # ids of blocks stored only as deltas

    def blocks(self, n: int, size: int = BLOCK) -> list[bytes]:
        return [self.rnd.randbytes(size) for _ in range(n)]

    def file(self, name: str, old: list[bytes], plan: str, **kw) -> dict:
        """``plan``: one letter a block: ``=`` unchanged, ``w`` changed and stored whole,
        ``x`` changed and stored as a delta, ``z`` zeros stored whole (a hole)."""
        self.last_old = old
        ids = [self.old.save(DATA, b) for b in old]
        self.old.commit()  # the older backup: the new one finds its blocks stored
        content, xor, data = [], [], []
        for i, (b, how) in enumerate(zip(old, plan, strict=True)):
            if how == "=":
                new = b
                self.new.save(DATA, new)
            elif how == "w":
                new = changed(self.rnd, b)
                self.new.save(DATA, new)
            elif how == "z":
                new = bytes(len(b))
                self.new.save(DATA, new)
            else:
                new = changed(self.rnd, b)
                d = make_delta(new, b)
                assert d is not None
                xor.append([i, self.new.save(DATA, d), ids[i]])
                self.deltas.append(self.blob_id(new))
            content.append(self.blob_id(new))
            data.append(new)
        self.expected[name] = b"".join(data)
        extra = {"delta": xor} if xor else {}
        return node(name, "file", content=content, size=len(self.expected[name]),
                    **extra, **kw)

    def snapshot(self, children: list[dict], kind: str = "files") -> dict:
        self.old.commit()
        root = self.new.save(TREE, encode_tree(sorted(children, key=lambda n: n["name"])))
        self.new.commit()
        for w in (self.old, self.new):
            w.close()
        for f in self.deltas:  # what the test is about: the blocks' own ids are not stored
            assert not self.repo.has_blob(f)
        snap = {"version": 1, "time": now_iso(), "kind": kind, "source": "main",
                "host": "test", "paths": ["/"], "tags": [], "tree": root, "parent": None,
                "incomplete": False, "errors": [], "stats": {"files": len(children)}}
        self.repo.save_snapshot(snap)
        return snap


def standard(b: Builder) -> list[dict]:
    """A two-block file (A' as a delta, B), a 300-block file with every other block a
    delta (and a few changed blocks stored whole), a plain file, a file with a hole."""
    many = "".join("x" if i % 2 else ("w" if i % 50 == 0 else "=") for i in range(300))
    return [
        b.file("small", b.blocks(2), "x="),
        b.file("many", b.blocks(300), many),
        b.file("plain", b.blocks(3, 1000), "==w"),
        b.file("tail", b.blocks(1, 777), "x"),  # a short last block as a delta
    ]


def check_tree(target: Path, expected: dict[str, bytes]) -> None:
    assert sorted(os.listdir(target)) == sorted(expected)
    for name, data in expected.items():
        p = target / name
        assert p.read_bytes() == data, name
        assert p.stat().st_mode & 0o7777 == 0o640 and p.stat().st_mtime_ns == T0, name


def restore(repo, snap, target, processes: int = 1, resume: bool = False):
    plan = plan_restore(repo, snap, target, resume=resume)
    return execute_restore(repo, plan, "test", lambda e: None, None, processes=processes)


@pytest.fixture
def local(engine):
    return engine.repo()


# ------------------------------------------------------------------ restore


@pytest.mark.parametrize("processes", [1, 2])
def test_restore_rebuilds_the_deltas(local, tmp_path, processes):
    b = Builder(local)
    snap = b.snapshot(standard(b))
    result = restore(local, snap, tmp_path / "out", processes)
    check_tree(tmp_path / "out", b.expected)
    assert result.files == 4 and result.bytes == sum(map(len, b.expected.values()))


def test_restore_from_a_remote_backend_reads_the_deltas_ahead(tmp_path):
    """A backend that is not local: the runs of every file, those of deltas too, are read
    ahead (_Prefetch), and the restore takes them from there."""
    repo = Repository.init(MemoryBackend(), "pw", kdf=KDF)
    b = Builder(repo)
    snap = b.snapshot(standard(b))
    plan = plan_restore(repo, snap, tmp_path / "out")
    r = _Restorer(repo, plan, "test", lambda e: None, CancelToken())
    pf = r._start_prefetch()
    try:
        added = sum(len(v) for v in pf.runs.values())
        assert added >= 8  # the windows of the delta files, not just the plain file
    finally:
        pf.close()
    taken = []
    original = repo.backend.get_range

    def counting(name, offset, length):
        taken.append(length)
        return original(name, offset, length)

    repo.backend.get_range = counting  # counts the requests; each still reads the backend
    result = execute_restore(repo, plan, "test", lambda e: None, None)
    check_tree(tmp_path / "out", b.expected)
    assert result.files == 4
    # read ahead as a few segments, not as one request a run (let alone a blob)
    assert 0 < len(taken) < added


def test_a_many_block_file_is_read_in_windows_of_few_runs(local):
    b = Builder(local)
    snap = b.snapshot(standard(b))
    plan = plan_restore(local, snap, "/nonexistent-target")
    many = next(n for p, n in plan.entries if p == b"many")
    r = _Restorer(local, plan, "test", lambda e: None, CancelToken())
    windows = list(r._delta_windows(many, "many"))
    assert [len(pieces) for pieces, _ in windows] == [256, 44]
    assert [i for pieces, _ in windows for i, *_ in pieces] == list(range(300))
    for pieces, runs in windows:
        blobs = sum(len(run) for run in runs)
        # the window's unchanged blocks and bases lie back to back in the old backup's
        # packs (cut where a block changed and stored whole was: every 50th), its deltas
        # and new blocks in the new one's: a few runs, not one a blob
        whole = sum(1 for i, *_ in pieces if i % 50 == 0)
        assert blobs > len(pieces) and len(runs) <= whole + 2, [len(run) for run in runs]


def test_restore_base_of_a_cluster_snapshot(local, tmp_path):
    b = Builder(local)
    children = standard(b) + [node("PG_VERSION", "file", content=[], size=0)]
    snap = b.snapshot(children, kind="cluster")
    b.expected["PG_VERSION"] = b""
    out = restore_base(local, snap, tmp_path / "pgdata", "test", lambda e: None, None,
                       owner=None)
    assert out["files"] == 5
    for name, data in b.expected.items():
        assert (tmp_path / "pgdata" / name).read_bytes() == data, name


def test_sparse_file_with_deltas(local, tmp_path):
    """Holes and deltas in one file (cluster snapshots have no holes; files ones may)."""
    b = Builder(local)
    f = b.file("sparse", b.blocks(4), "xz=x")
    f["holes"] = [[BLOCK, BLOCK]]
    snap = b.snapshot([f])
    for processes in (1, 2):
        out = tmp_path / f"out{processes}"
        restore(local, snap, out, processes)
        assert (out / "sparse").read_bytes() == b.expected["sparse"]
    data, warnings = dump_all(local, snap)
    untar(data, tmp_path / "untar")
    assert (tmp_path / "untar" / "sparse").read_bytes() == b.expected["sparse"]


# ------------------------------------------------------------- a wrong delta


def wrong_delta(b: Builder, same_length: bool = True) -> dict:
    """A 300-block file whose block 280 (in the second window) is a delta that rebuilds
    other data, or is an x blob of another length than its base."""
    f = b.file("bad", b.blocks(300), "".join("x" if i % 2 else "=" for i in range(300)))
    entry = next(e for e in f["delta"] if e[0] == 281)
    base = b.last_old[281]
    if same_length:  # a valid delta of the base that rebuilds other bytes
        other = make_delta(changed(b.rnd, base), base)
    else:  # not a zstd frame of the base's length
        other = b.rnd.randbytes(BLOCK - 1)
    entry[1] = b.new.save(DATA, other)
    return f


def good_prefix(path: Path, expected: bytes) -> None:
    """Whatever was written is the start of the right bytes (whole windows before the
    bad block), never the wrong block."""
    got = path.read_bytes() if path.exists() else b""
    assert len(got) <= 281 * BLOCK and expected.startswith(got)


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("same_length", [True, False])
def test_a_wrong_delta_fails_naming_the_block(local, tmp_path, processes, same_length):
    b = Builder(local)
    snap = b.snapshot([wrong_delta(b, same_length), b.file("ok", b.blocks(1), "x")])
    with pytest.raises(IntegrityError) as err:
        restore(local, snap, tmp_path / "out", processes)
    assert "bad (block 281)" in str(err.value), err.value
    assert ("does not match its id" in str(err.value) if same_length
            else "not a zstd frame" in str(err.value)), err.value
    good_prefix(tmp_path / "out" / "bad", b.expected["bad"])
    with pytest.raises(IntegrityError) as err:
        dump_all(local, snap)
    assert "bad (block 281)" in str(err.value)


def test_a_wrong_delta_fails_the_cli_dump(sandbox, engine, tmp_path):
    b = Builder(engine.repo())
    snap = b.snapshot([wrong_delta(b)])
    proc = sandbox.cli("dump", snap["id"])
    assert proc.returncode == 1
    assert b"bad (block 281)" in proc.stderr, proc.stderr


# ---------------------------------------------------------- a malformed list


def malformed_cases(f: dict) -> dict[str, list]:
    x, base = f["delta"][0][1], f["delta"][0][2]
    return {
        "index-out-of-range": [[2, x, base]],
        "negative-index": [[-1, x, base]],
        "not-sorted": [[1, x, base], [0, x, base]],
        "duplicate-index": [[0, x, base], [0, x, base]],
        "bad-id": [[0, x[:-1] + "G", base]],
        "short-id": [[0, x, base[:10]]],
        "bool-index": [[False, x, base]],
        "not-a-list": {"0": [x, base]},
        "entry-too-short": [[0, x]],
    }


@pytest.mark.parametrize("case", sorted(malformed_cases({"delta": [[0, "0" * 64, "1" * 64]]})))
def test_a_malformed_delta_list_is_refused_before_writing(local, tmp_path, case):
    b = Builder(local)
    ok = b.file("a-ok", b.blocks(1), "=")
    f = b.file("bad", b.blocks(2), "x=")
    f["delta"] = malformed_cases(f)[case]
    snap = b.snapshot([ok, f])
    target = tmp_path / "out"
    with pytest.raises(UnsafeEntry) as err:
        plan_restore(local, snap, target)
    assert "bad" in str(err.value) and "delta" in str(err.value)
    assert not target.exists()
    with pytest.raises(UnsafeEntry):
        restore_base(local, snap, target, "test", lambda e: None, None, owner=None)
    assert not target.exists()
    out = io.BytesIO()
    with pytest.raises(UnsafeEntry):
        dump_op.dump(local, snap, out)
    assert b"bad" not in out.getvalue()  # not even the member's header


# ------------------------------------------------------------------- resume


@pytest.mark.parametrize("processes", [1, 2])
def test_resume_keeps_right_files_and_rewrites_wrong_ones(local, tmp_path, processes):
    b = Builder(local)
    snap = b.snapshot(standard(b))
    target = tmp_path / "out"
    restore(local, snap, target, processes)
    # a byte changed in a block stored as a delta (many: block 101), and in one stored
    # whole (small: block 1); same sizes, so only the content check can tell
    for name, at in (("many", 101 * BLOCK + 5), ("small", BLOCK + 7)):
        with open(target / name, "r+b") as fh:
            fh.seek(at)
            byte = fh.read(1)
            fh.seek(at)
            fh.write(bytes([byte[0] ^ 1]))
    result = restore(local, snap, target, processes, resume=True)
    check_tree(target, b.expected)
    kept = {"plain", "tail"}
    assert result.skipped_files == len(kept)
    assert result.skipped_bytes == sum(len(b.expected[n]) for n in kept)
    again = restore(local, snap, target, processes, resume=True)  # now all of them
    assert again.skipped_files == 4
    check_tree(target, b.expected)


def test_resume_check_needs_no_blob_read(local, tmp_path):
    """The check hashes the file's pieces (cut at the x blobs' lengths) and compares them
    with the blocks' ids: it never reads the deltas or their bases."""
    b = Builder(local)
    snap = b.snapshot(standard(b))
    target = tmp_path / "out"
    restore(local, snap, target)
    plan = plan_restore(local, snap, target, resume=True)
    r = _Restorer(local, plan, "test", lambda e: None, CancelToken())
    calls = []
    local.backend.get_range = lambda *a: calls.append(a)  # any read fails the test
    for p, n in plan.entries:
        if n["type"] == "file":
            fd = os.open(target / os.fsdecode(p), os.O_RDONLY)
            try:
                assert r._same_content(fd, n), p
            finally:
                os.close(fd)
    assert calls == []


# --------------------------------------------------------------------- dump


def dump_all(repo, snap) -> tuple[bytes, list[str]]:
    out, warnings = io.BytesIO(), []
    dump_op.dump(repo, snap, out, warn=warnings.append)
    return out.getvalue(), warnings


def untar(data: bytes, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["tar", "-x", "-p", "--numeric-owner", "-C", str(dest), "-f", "-"],
                          input=data, capture_output=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode(errors="replace")


@pytest.mark.parametrize("kind", ["files", "cluster"])
def test_dump_through_gnu_tar(sandbox, engine, tmp_path, kind):
    b = Builder(engine.repo())
    snap = b.snapshot(standard(b), kind=kind)
    data, warnings = dump_all(engine.repo(), snap)
    assert warnings == []
    untar(data, tmp_path / "engine")
    check_tree(tmp_path / "engine", b.expected)
    # the CLI through a real pipe
    dest = tmp_path / "cli"
    dest.mkdir()
    env = dict(os.environ)
    env.pop("BACKUP_TUI_PASSWORD", None)
    proc = subprocess.run(
        f"{sys.executable} -m backup_tui.cli --config {sandbox.config_path} dump "
        f"{snap['id']} | tar -x -p --numeric-owner -C {dest} -f -; "
        "echo ${PIPESTATUS[@]}", shell=True, executable="/bin/bash",
        capture_output=True, env=env, timeout=300)
    assert proc.stdout.split() == [b"0", b"0"], proc.stderr
    check_tree(dest, b.expected)


def test_dump_of_a_selected_path(local, tmp_path):
    b = Builder(local)
    sub = b.file("small", b.blocks(2), "x=")
    snap = b.snapshot([node("d", "dir", subtree=b.new.save(TREE, encode_tree([sub])))])
    out = io.BytesIO()
    dump_op.dump(local, snap, out, "d/small")
    untar(out.getvalue(), tmp_path / "sel")
    assert (tmp_path / "sel" / "d" / "small").read_bytes() == b.expected["small"]


def test_a_delta_blob_that_is_not_stored_is_named(local, tmp_path):
    """A delta id that is not a stored blob at all: the missing blob is named (load_blob)."""
    b = Builder(local)
    f = b.file("bad", b.blocks(2), "x=")
    f["delta"][0][1] = "ab" * 32
    snap = b.snapshot([f])
    for processes in (1, 2):
        with pytest.raises(EngineError) as err:
            restore(local, snap, tmp_path / f"out{processes}", processes)
        assert "ab" * 32 in str(err.value)


# ------------------------------------------------------------- the frames


def test_delta_frames_are_zstd_with_the_base_as_raw_content_both_ways(local):
    """make_delta and rebuild (zstd's own calls, the base as a prefix) agree with what
    docs/FORMAT.md 5.2 says: a frame decoded with the base as a raw-content dictionary,
    here by python-zstandard's classes, and the other way round; a base that begins
    like a zstd dictionary (its magic) is still raw content."""
    import zstandard

    from engine.repo.blockdelta import rebuild

    rnd = random.Random(5)
    magic = (0xEC30A437).to_bytes(4, "little")
    for base in (rnd.randbytes(BLOCK), magic + rnd.randbytes(BLOCK - 4)):
        block = changed(rnd, base)
        raw = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        frame = make_delta(block, base)
        assert frame is not None and len(frame) < 512
        assert zstandard.ZstdDecompressor(dict_data=raw).decompress(frame) == block
        theirs = zstandard.ZstdCompressor(level=3, dict_data=raw).compress(block)
        full = local.keys.blob_id(block)
        assert bytes(rebuild(local.keys, full, theirs, base, "f")) == block
        assert bytes(rebuild(local.keys, full, frame, base, "f")) == block
        with pytest.raises(IntegrityError, match="not one zstd frame"):
            rebuild(local.keys, full, frame + frame, base, "f")
    assert make_delta(rnd.randbytes(BLOCK), rnd.randbytes(BLOCK)) is None  # not worth it
