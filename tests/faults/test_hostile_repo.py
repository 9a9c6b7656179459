"""Crafted repositories: every reader of repository data bounds what it allocates and
names what it refuses (issue 10, findings 3, 4 and 10).

Each case crafts one hostile object into an unencrypted repository (whose content
nobody authenticates: the objects only need their content-hash names) holding one
good snapshot, then runs each command as a subprocess: ``list``, ``verify``,
``verify --read-data``, ``restore``, ``dump``, ``status``, ``health`` and ``cleanup``.
Each must end cleanly: exit 0 or 1, no traceback, an exit-1 message on one line, the
crafted object named where the command had to read it, and the process's peak RSS
(ru_maxrss from wait4) under ``RSS_LIMIT``. The good snapshot must still restore.

Crafts: a tree DAG whose 40 levels each list the next twice (2^40 entries); a zstd
frame declaring 1 GiB (a few KiB stored); an index row of length 2^40; a 1 GiB object
under snapshots/; a snapshot,
an index file and a tree nested 100 000 deep; a truncated pack; two snapshot objects
swapped; malformed ``keys/`` records and ``encryption.kdf``; a non-numeric chunker.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading

import pytest
import zstandard

from engine.repo import codec
from engine.repo.pack import DATA, TREE, PackBuilder, pack_name
from engine.repo.repository import Repository, sha256_hex
from engine.repo.tree import encode_tree

MIB = 1024 * 1024
RSS_LIMIT = 300 * MIB
CLS = "crafted"

CHEAP_KDF = {"name": "scrypt", "n": 2**10, "r": 8, "p": 1}
NODE = {"mode": 0o644, "uid": os.getuid(), "gid": os.getgid(), "mtime_ns": 0, "size": 0}


def run(sb, *args: str, timeout: float = 240) -> tuple[int, str, str, int]:
    """(exit code, stdout, stderr, peak RSS in bytes) of the CLI in a subprocess."""
    cmd = [sys.executable, "-m", "backup_tui.cli", "--config", str(sb.config_path), *args]
    env = dict(os.environ)
    env.pop("BACKUP_TUI_PASSWORD", None)

    def limit():  # a safety net only: the figure that counts is ru_maxrss
        resource.setrlimit(resource.RLIMIT_AS, (6 * 1024 * MIB, 6 * 1024 * MIB))

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                             preexec_fn=limit)
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (p.returncode, out.read().decode(errors="replace"),
                err.read().decode(errors="replace"), usage.ru_maxrss * 1024)


# ------------------------------------------------------------------ the repository


@pytest.fixture
def world(sandbox_factory):
    """An unencrypted repository with one good snapshot of a small tree."""
    sb = sandbox_factory(password=None)
    (sb.src / "a.txt").write_text("hello\n" * 100)
    (sb.src / "sub").mkdir()
    (sb.src / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    eng = sb.engine(init=True)
    good = eng.backup("files", "src").id
    return sb, eng, good


def open_repo(sb) -> Repository:
    from engine.storage.local import LocalBackend

    return Repository.open(LocalBackend(str(sb.repo)), None)


def put_record(repo: Repository, folder: str, raw: bytes) -> str:
    """Store raw JSON bytes as a record (no canonical form: anything goes)."""
    stored = repo.keys.seal(codec.encode(raw, 3))
    rid = sha256_hex(stored)
    repo.backend.put(f"{folder}/{rid}", stored)
    return rid


def put_blobs(repo: Repository, blobs: list[tuple[str, str, bytes, int]]) -> None:
    """Write (type, id, stored payload, raw length) rows into packs and one index file,
    as they are, with no check of any of them."""
    packs = []
    for blob_type in (DATA, TREE):
        rows = [b for b in blobs if b[0] == blob_type]
        if not rows:
            continue
        pb = PackBuilder()
        for t, bid, payload, raw_len in rows:
            pb.add(t, bid, repo.keys.seal(payload), raw_len)
        entries = pb.entries
        pid, data = pb.finish(repo.keys)
        repo.backend.put(pack_name(pid), data)
        packs.append((pid, len(data), entries))
    repo.write_index(packs)


def put_snapshot(repo: Repository, good: str, **changes) -> str:
    snap = repo.load_snapshot(good)
    snap.pop("id")
    snap.update(changes)
    snap["time"] = "2030-01-01T00:00:00+00:00"  # the newest: 'latest' is the crafted one
    return repo.save_snapshot(snap)


def tree_blob(nodes: list[dict]) -> tuple[str, bytes]:
    raw = encode_tree(nodes)
    return hashlib.sha256(raw).hexdigest(), raw


def craft_dag_bomb(sb, good):
    repo = open_repo(sb)
    leaf_id, leaf = tree_blob([{**NODE, "name": "f", "type": "file", "content": []}])
    blobs = [(TREE, leaf_id, codec.encode(leaf, 3), len(leaf))]
    prev = leaf_id
    for _ in range(40):
        tid, raw = tree_blob([{**NODE, "name": n, "type": "dir", "mode": 0o755,
                               "subtree": prev} for n in ("a", "b")])
        blobs.append((TREE, tid, codec.encode(raw, 3), len(raw)))
        prev = tid
    put_blobs(repo, blobs)
    return put_snapshot(repo, good, tree=prev), prev[:16]


def craft_zstd_bomb(sb, good):
    """A data blob whose zstd frame declares (and holds) 1 GiB; the index claims 4 MiB."""
    repo = open_repo(sb)
    size = 1024 * MIB
    h = hashlib.sha256()
    cobj = zstandard.ZstdCompressor(level=19, write_content_size=True).compressobj(size=size)
    parts = []
    zero = bytes(MIB)
    for _ in range(size // MIB):
        h.update(zero)
        parts.append(cobj.compress(zero))
    parts.append(cobj.flush())
    frame = b"".join(parts)
    assert len(frame) < 64 * 1024
    bid = h.hexdigest()
    tid, raw = tree_blob([{**NODE, "name": "bomb", "type": "file", "size": size,
                           "content": [bid]}])
    put_blobs(repo, [(DATA, bid, b"\x01" + frame, 4 * MIB),
                     (TREE, tid, codec.encode(raw, 3), len(raw))])
    return put_snapshot(repo, good, tree=tid), "data/"


def craft_huge_length(sb, good):
    """The index names every pack as before, but one data row has length 2^40 in a pack
    claimed to be 2^41 bytes."""
    repo = open_repo(sb)
    ids = repo.list_ids("index")
    docs = [repo.load_record("index", i) for i in ids]
    victim = None
    for doc in docs:
        for p in doc["packs"]:
            for row in p["blobs"]:
                if row[0] == DATA and victim is None:
                    victim = p["id"]
                    row[3] = 2**40
                    p["size"] = 2**41
    assert victim
    repo.save_record("index", {"packs": [p for d in docs for p in d["packs"]]})
    for i in ids:
        repo.backend.delete(f"index/{i}")
    return good, "index/"


def craft_deep_snapshot(sb, good):
    repo = open_repo(sb)
    deep = b"[" * 100_000 + b"]" * 100_000
    sid = put_record(repo, "snapshots", b'{"kind":"files","source":"src","time":'
                     b'"2030-01-01T00:00:00+00:00","tree":' + deep + b"}")
    return sid, f"snapshots/{sid}"


def craft_deep_index(sb, good):
    repo = open_repo(sb)
    iid = put_record(repo, "index", b'{"packs":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    return good, f"index/{iid}"


def craft_deep_tree(sb, good):
    repo = open_repo(sb)
    raw = b'{"nodes":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    tid = hashlib.sha256(raw).hexdigest()
    put_blobs(repo, [(TREE, tid, codec.encode(raw, 3), len(raw))])
    return put_snapshot(repo, good, tree=tid), tid


def craft_truncated_pack(sb, good):
    repo = open_repo(sb)
    node_blob = None
    for info in repo.backend.list("data/"):
        path = sb.repo / info.name
        if info.size > 200_000:  # the data pack of b.bin
            with open(path, "r+b") as f:
                f.truncate(info.size // 2)
            node_blob = info.name
    assert node_blob
    return good, node_blob


def craft_swapped_snapshots(sb, good):
    repo = open_repo(sb)
    other = put_snapshot(repo, good)
    a, b = sb.repo / "snapshots" / good, sb.repo / "snapshots" / other
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    return good, f"snapshots/{good}"


def craft_huge_snapshot_file(sb, good):
    """A 1 GiB (sparse) object under snapshots/: refused from its listed size, unread."""
    name = "f" * 64
    with open(sb.repo / "snapshots" / name, "wb") as f:
        f.truncate(1024 * MIB)
    return name, f"snapshots/{name}"


CRAFTS = {
    "dag-bomb": craft_dag_bomb,
    "zstd-bomb": craft_zstd_bomb,
    "index-length-2^40": craft_huge_length,
    "deep-snapshot": craft_deep_snapshot,
    "deep-index": craft_deep_index,
    "deep-tree": craft_deep_tree,
    "truncated-pack": craft_truncated_pack,
    "swapped-snapshots": craft_swapped_snapshots,
    "huge-snapshot-file": craft_huge_snapshot_file,
}
# the crafted snapshot must be refused by these (the others may pass over it)
MUST_FAIL = {
    "dag-bomb": ("verify", "restore", "dump"),
    "zstd-bomb": ("verify --read-data", "restore", "dump"),
    "index-length-2^40": ("verify",),
    "deep-snapshot": ("verify",),
    "deep-index": ("verify",),
    "deep-tree": ("verify", "restore", "dump"),
    "truncated-pack": ("verify", "restore", "dump"),
    "swapped-snapshots": ("verify",),
    "huge-snapshot-file": ("verify", "restore", "dump"),
}


@pytest.mark.parametrize("craft", sorted(CRAFTS))
def test_crafted_repository(world, craft, tmp_path, fault_report):
    sb, _eng, good = world
    sid, named = CRAFTS[craft](sb, good)
    commands = {
        "list": ["list"],
        "verify": ["verify"],
        "verify --read-data": ["verify", "--read-data"],
        "restore": ["restore", "files", sid, "--target", str(tmp_path / "out")],
        "dump": ["dump", sid],
        "status": ["status"],
        "health": ["health"],
        "cleanup": ["cleanup"],
    }
    problems = []
    for label, args in commands.items():
        rc, out, err, rss = run(sb, *args)
        where = f"{craft}: {label}: exit {rc}, {rss // MIB} MiB"
        if "Traceback" in err or rc not in (0, 1):
            problems.append(f"{where}: not a clean end: {err[-1500:]}")
        elif rss > RSS_LIMIT:
            problems.append(f"{where}: peak RSS over {RSS_LIMIT // MIB} MiB")
        elif label in MUST_FAIL[craft]:
            text = out + err
            if rc != 1 or named not in text:
                problems.append(f"{where}: expected a refusal naming {named}: {text[-800:]}")
            elif label in ("restore", "dump") and len(err.strip().splitlines()) != 1:
                problems.append(f"{where}: expected one line on stderr: {err[-800:]}")
        fault_report.record(CLS, "failed" if problems and problems[-1].startswith(where)
                            else "survived", where)
    assert not problems, "\n".join(problems)


def test_good_snapshot_still_restores_after_crafts(world, tmp_path):
    """Crafted objects that the index skips or that only the crafted snapshot uses leave
    the good snapshot restorable (rsync judges)."""
    sb, _eng, good = world
    craft_dag_bomb(sb, good)
    craft_deep_index(sb, good)
    craft_zstd_bomb(sb, good)
    target = tmp_path / "out"
    rc, out, err, rss = run(sb, "restore", "files", good, "--target", str(target))
    assert rc == 0, err
    src = str(sb.src)
    restored = target / src.lstrip("/")
    proc = subprocess.run(["rsync", "-ani", "--delete", f"{src}/", f"{restored}/"],
                          capture_output=True, text=True, check=True)
    changed = [line for line in proc.stdout.splitlines() if not line.startswith(".d..t")]
    assert changed == [], proc.stdout


# ------------------------------------------------------------ keys, config, chunker


@pytest.fixture
def encrypted(sandbox):
    eng = sandbox.engine(init=True)
    (sandbox.src / "x").write_text("x")
    eng.backup("files", "src")
    return sandbox


def _config(sb) -> dict:
    return json.loads((sb.repo / "config").read_text())


def _write_config(sb, cfg: dict) -> None:
    (sb.repo / "config").write_text(json.dumps(cfg, indent=2))


@pytest.mark.parametrize("value", ["abc", None, 3.5, 2**40, True, [1]])
def test_malformed_kdf_is_a_clean_error(encrypted, value):
    cfg = _config(encrypted)
    cfg["encryption"]["kdf"]["n"] = value
    _write_config(encrypted, cfg)
    rc, out, err, _ = run(encrypted, "list")
    assert rc == 1 and "Traceback" not in err, err
    assert "encryption.kdf.n" in err and "config" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_kdf_not_an_object_and_bad_salt(encrypted):
    cfg = _config(encrypted)
    cfg["encryption"]["kdf"]["salt"] = "***"
    _write_config(encrypted, cfg)
    rc, _, err, _ = run(encrypted, "list")
    assert rc == 1 and "encryption.kdf.salt is not base64" in err, err
    cfg["encryption"]["kdf"] = "scrypt"
    _write_config(encrypted, cfg)
    rc, _, err, _ = run(encrypted, "list")
    assert rc == 1 and "encryption.kdf is missing or not an object" in err, err


@pytest.mark.parametrize("key,value", [("min", "abc"), ("avg", None), ("max", 2**60),
                                       ("min", -1), ("seed", "x")])
def test_malformed_chunker_is_a_clean_error(encrypted, key, value):
    """A malformed chunker is refused by name (config and key) before anything uses it,
    whatever the MAC says."""
    cfg = _config(encrypted)
    cfg["chunker"][key] = value
    _write_config(encrypted, cfg)
    (encrypted.src / "y").write_text("y")
    rc, _, err, _ = run(encrypted, "backup", "files", "src")
    assert rc == 1 and "Traceback" not in err, err
    assert f"chunker.{key}" in err, err


def test_malformed_chunker_unencrypted(world):
    sb, _eng, _good = world
    cfg = _config(sb)
    cfg["chunker"]["min"] = "64k"
    _write_config(sb, cfg)
    rc, _, err, _ = run(sb, "backup", "files", "src")
    assert rc == 1 and "Traceback" not in err, err
    assert "config: chunker.min is not a whole number" in err, err


def test_unusable_key_records_are_skipped_and_named(encrypted):
    """config.encryption does not open with the password; keys/ holds garbage, a record
    with a malformed kdf, a record nested deep, and one that opens: the repository
    opens. Without the good one, the error names each skipped record (verify, when the key
    cache let the open in; any command without the cache)."""
    from engine.repo.crypto import unwrap_master, wrap_master

    sb = encrypted
    cfg = _config(sb)
    master = unwrap_master(sb.password, cfg["encryption"])
    keys = sb.repo / "keys"
    keys.mkdir(exist_ok=True)
    (keys / "1-garbage").write_bytes(b"\x00\xffnot json")
    bad = wrap_master("other", master, CHEAP_KDF)
    bad["kdf"]["r"] = "eight"
    (keys / "2-badkdf").write_text(json.dumps(bad))
    (keys / "3-deep").write_bytes(b"[" * 20_000 + b"]" * 20_000)
    (keys / "4-good").write_text(json.dumps(wrap_master("other", master, CHEAP_KDF)))
    sb.pwfile.write_text("other")
    rc, out, err, _ = run(sb, "list")
    assert rc == 0 and "Traceback" not in err, err
    assert "skipped unusable key record keys/" in err, err  # those tried before it
    (keys / "4-good").unlink()
    # The first list wrote the key cache: list opens from it, verify reads the records.
    rc, out, err, _ = run(sb, "verify")
    assert rc == 1 and "wrong password" in err and "keys/1-garbage" in err, err
    # Without the cache (another user, another machine), the open itself refuses.
    from engine.repo import keycache

    keycache.cache_path(sb.state).unlink()
    rc, out, err, _ = run(sb, "list")
    assert rc == 1 and "wrong password" in err, err
    for name in ("keys/1-garbage", "keys/2-badkdf: kdf.r", "keys/3-deep: nested deeper"):
        assert name in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_config_mac_compared_in_constant_time(encrypted):
    """A wrong MAC, a MAC of another type: refused by name, never a TypeError."""
    for mac in ("0" * 64, 12345, None, ["x"], "\ud800"):
        cfg = _config(encrypted)
        cfg["mac"] = mac
        _write_config(encrypted, cfg)
        rc, _, err, _ = run(encrypted, "list")
        assert rc == 1 and "authenticator mismatch" in err and "Traceback" not in err, err


# ------------------------------------------------------------------ write side


def test_backup_splits_big_index_files(world, monkeypatch):
    """A backup names its packs in index files of at most MAX_INDEX_BLOBS rows, so no
    index record it writes passes the record cap (the cap never makes a legitimate
    repository unreadable)."""
    from engine.repo import repository

    sb, eng, _good = world
    monkeypatch.setattr(repository, "MAX_INDEX_BLOBS", 3)
    monkeypatch.setattr(repository, "PACK_TARGET", 64 * 1024)
    for i in range(12):
        (sb.src / f"r{i}").write_bytes(os.urandom(100_000))
    before = set(os.listdir(sb.repo / "index"))
    eng.backup("files", "src")
    new = set(os.listdir(sb.repo / "index")) - before
    assert len(new) > 1
    repo = open_repo(sb)
    for iid in new:
        rows = sum(len(p["blobs"]) for p in repo.load_record("index", iid)["packs"])
        packs = len(repo.load_record("index", iid)["packs"])
        assert rows <= 3 or packs == 1
    rc, out, err, _ = run(sb, "verify", "--read-data")
    assert rc == 0, out + err


@pytest.mark.parametrize("node", [
    {"name": "d", "type": "dir"},
    {"name": "d", "type": "dir", "subtree": [1]},
    {"name": "d", "type": "dir", "subtree": {"a": 1}},
    {"name": "f", "type": "file", "content": 7},
    {"name": "f", "type": "file", "content": [[1]]},
    {"name_b64": "0", "type": "file"},
    {"name": "\udfff\ud800", "type": "file"},
    {"name": "l", "type": "symlink", "target_b64": 5},
    {"name": "f", "type": "file", "size": "abc"},
    {"name": "f", "type": "file", "size": -5},
    {"name": "f", "type": "file", "mode": [1]},
    {"name": "f", "type": "file", "uid": "root"},
    {"name": "f", "type": "file", "mtime_ns": 2**70},
])
def test_malformed_nodes_are_named_problems(world, node):
    """verify (in process): a malformed node is a problem naming the snapshot or tree,
    never a KeyError or TypeError."""
    sb, eng, good = world
    repo = open_repo(sb)
    tid, raw = tree_blob([{**NODE, **node}])
    put_blobs(repo, [(TREE, tid, codec.encode(raw, 3), len(raw))])
    sid = put_snapshot(repo, good, tree=tid)
    report = sb.engine().verify([sid])
    if node.get("type") == "symlink":  # a malformed target is the restore's business
        rc, _, err, _ = run(sb, "restore", "files", sid, "--target", str(sb.root / "o"))
        assert rc == 1 and "malformed target" in err and "Traceback" not in err, err
        return
    assert not report.ok
    assert any(sid in p.snapshots for p in report.problems), report.as_json()
    for args in (["restore", "files", sid, "--target", str(sb.root / "o")], ["dump", sid]):
        rc, _, err, _ = run(sb, *args)
        assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("changes", [{"tree": [1]}, {"tree": {"a": 1}}, {"tree": 5}])
def test_malformed_snapshot_tree_id(world, changes):
    sb, _eng, good = world
    sid = put_snapshot(open_repo(sb), good, **changes)
    for args in (["restore", "files", sid, "--target", str(sb.root / "o")], ["dump", sid],
                 ["verify", sid]):
        rc, _, err, _ = run(sb, *args)
        assert rc == 1 and "Traceback" not in err, err
