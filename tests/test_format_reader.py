"""docs/FORMAT.md is exact: an independent reader, written from it alone, restores a backup.

The reader below uses only the standard library, `cryptography` and `zstandard`;
nothing from `engine` (the engine only makes the repository). It reads config,
unwraps the master key, checks the config MAC, loads the index, reads every pack
byte by byte, picks the latest snapshot, walks its trees and restores them; the
result is compared with the source (content, symlink targets, modes, owners,
mtimes in ns).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import struct
from pathlib import Path

import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MIB = 1024 * 1024
SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
         "\t": "\\t"}


# ----------------------------------------------------------------- the reader


def canonical(v) -> bytes:
    """FORMAT.md 1.1, written out rather than delegated to json.dumps."""
    return _canon(v).encode("ascii")


def _canon(v) -> str:
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}.get(repr(v), repr(v))
    if isinstance(v, str):
        out = []
        for ch in v:
            c = ord(ch)
            if ch in SHORT:
                out.append(SHORT[ch])
            elif 0x20 <= c <= 0x7E:
                out.append(ch)
            elif c > 0xFFFF:
                c -= 0x10000
                out.append(f"\\u{0xD800 + (c >> 10):04x}\\u{0xDC00 + (c & 0x3FF):04x}")
            else:
                out.append(f"\\u{c:04x}")
        return '"' + "".join(out) + '"'
    if isinstance(v, list):
        return "[" + ",".join(_canon(x) for x in v) + "]"
    return "{" + ",".join(_canon(k) + ":" + _canon(v[k]) for k in sorted(v)) + "}"


class Reader:
    def __init__(self, root: Path, password: str | None):
        self.root = root
        self.markers: set[int] = set()
        cfg = json.loads(self.get("config"))
        assert cfg["format"] == "backup-tui" and cfg["version"] == 1
        enc = cfg["encryption"]
        if enc is None:
            assert cfg["hash"] == "sha256" and cfg["mac"] == ""
            self.aead, self.mac_key = None, b""
        else:
            assert cfg["hash"] == "hmac-sha256" and enc["cipher"] == "aes-256-gcm"
            master = self.unwrap(password, enc)
            assert len(master) == 64
            self.aead, self.mac_key = AESGCM(master[:32]), master[32:]
            body = canonical({k: v for k, v in cfg.items() if k != "mac"})
            mac = hmac.new(self.mac_key, b"record:" + body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(mac, cfg["mac"]), "config MAC"
        self.config = cfg
        self.index: dict[str, tuple[str, str, int, int, int]] = {}
        self.pack_sizes: dict[str, int] = {}
        for iid in self.list("index"):
            for p in self.record("index", iid)["packs"]:
                self.pack_sizes[p["id"]] = p["size"]
                for t, bid, off, n, raw in p["blobs"]:
                    self.index[bid] = (p["id"], t, off, n, raw)  # the last one wins

    # storage: a local repository directory
    def get(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def list(self, folder: str) -> list[str]:
        base = self.root / folder
        names = [str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()]
        return sorted(n for n in names if not n.rsplit("/", 1)[-1].startswith("."))

    # primitives
    def unwrap(self, password: str, enc: dict) -> bytes:
        from cryptography.exceptions import InvalidTag

        for rec in [enc] + [f"keys/{k}" for k in self.list("keys")]:
            try:
                rec = json.loads(self.get(rec)) if isinstance(rec, str) else rec
                kdf = rec["kdf"]
            except (ValueError, KeyError, TypeError):
                continue  # FORMAT.md 2.3: skip key records that cannot be parsed
            assert kdf["name"] == "scrypt"
            kek = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(kdf["salt"]),
                                 n=kdf["n"], r=kdf["r"], p=kdf["p"], dklen=32,
                                 maxmem=256 * MIB)
            wrapped = base64.b64decode(rec["wrapped_key"])
            try:
                return AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], b"backup-tui master key")
            except InvalidTag:
                continue
        raise AssertionError("wrong password")

    def open(self, sealed: bytes) -> bytes:
        if self.aead is None:
            return sealed
        assert len(sealed) >= 28
        return self.aead.decrypt(sealed[:12], sealed[12:], None)

    def decode(self, payload: bytes, cap: int) -> bytes:
        self.markers.add(payload[0])
        if payload[0] == 0:
            return payload[1:]
        assert payload[0] == 1, "unknown marker"
        frame = payload[1:]
        assert frame[:4] == bytes.fromhex("28b52ffd")
        size = zstandard.get_frame_parameters(frame).content_size
        assert 0 <= size <= cap, "content size missing or over the cap"
        out = zstandard.ZstdDecompressor().decompress(frame)
        assert len(out) == size
        return out

    def blob_id(self, plain: bytes) -> str:
        if self.aead is None:
            return hashlib.sha256(plain).hexdigest()
        return hmac.new(self.mac_key, plain, hashlib.sha256).hexdigest()

    def record(self, folder: str, rid: str):
        stored = self.get(f"{folder}/{rid}")
        assert hashlib.sha256(stored).hexdigest() == rid
        raw = self.decode(self.open(stored), 256 * MIB)
        value = json.loads(raw)
        assert canonical(value) == raw, "records are canonical JSON"
        return value

    def blob(self, bid: str, want: str) -> bytes:
        pid, typ, off, n, raw_len = self.index[bid]
        assert typ == want
        with open(self.root / "data" / pid[:2] / pid, "rb") as f:
            f.seek(off)
            plain = self.decode(self.open(f.read(n)), 64 * MIB)
        assert self.blob_id(plain) == bid and len(plain) == raw_len
        return plain

    def check_pack(self, pid: str) -> int:
        """The whole pack: its name, trailer, header, and every blob against its id."""
        data = self.get(f"data/{pid[:2]}/{pid}")
        assert hashlib.sha256(data).hexdigest() == pid and len(data) == self.pack_sizes[pid]
        (hlen,) = struct.unpack("<I", data[-4:])
        header = json.loads(self.decode(self.open(data[-4 - hlen:-4]), 64 * MIB))
        pos = 0
        for typ, bid, off, n, raw_len in header:
            assert off == pos and typ in ("data", "tree")
            pos += n
            plain = self.decode(self.open(data[off:off + n]), 64 * MIB)
            assert self.blob_id(plain) == bid and len(plain) == raw_len
            assert bid in self.index
        assert pos == len(data) - 4 - hlen
        return len(header)

    # snapshots and trees
    def latest(self, kind: str, source: str) -> tuple[str, dict]:
        snaps = [(sid, self.record("snapshots", sid)) for sid in self.list("snapshots")]
        return max(((s, r) for s, r in snaps if r["kind"] == kind and r["source"] == source),
                   key=lambda sr: sr[1]["time"])

    def restore(self, tree_id: str, dest: bytes, depth: int = 0, seen=frozenset()) -> None:
        assert depth <= 4096 and tree_id not in seen
        raw = self.blob(tree_id, "tree")
        nodes = json.loads(raw)["nodes"]
        assert canonical({"nodes": nodes}) == raw
        names = [raw_name(n, "name") for n in nodes]
        assert len(set(names)) == len(names) and names == sorted(names)
        for name in names:
            assert name not in (b"", b".", b"..") and b"/" not in name and b"\0" not in name
        for name, node in zip(names, nodes, strict=True):
            path = os.path.join(dest, name)
            typ = node["type"]
            if typ == "dir":
                os.mkdir(path)
                self.restore(node["subtree"], path, depth + 1, seen | {tree_id})
            elif typ == "file":
                deltas = self.delta_entries(node)
                with open(path, "wb") as f:
                    for i, bid in enumerate(node["content"]):
                        f.write(self.block(bid, *deltas[i]) if i in deltas
                                else self.blob(bid, "data"))
                assert os.path.getsize(path) == node["size"]
            elif typ == "symlink":
                os.symlink(raw_name(node, "target"), path)
            else:
                raise AssertionError(f"no {typ} in this test")
            if os.geteuid() == 0:
                os.chown(path, node["uid"], node["gid"], follow_symlinks=False)
            if typ != "symlink":
                os.chmod(path, node["mode"])
            os.utime(path, ns=(node["mtime_ns"], node["mtime_ns"]), follow_symlinks=False)


    # format 1.2 (FORMAT.md 5.2): blocks stored as deltas against a block stored whole
    @staticmethod
    def delta_entries(node: dict) -> dict[int, tuple[str, str]]:
        """``delta`` as {i: (delta_id, base_id)}, checked as untrusted input."""
        out: dict[int, tuple[str, str]] = {}
        last = -1
        for e in node.get("delta", []):
            assert isinstance(e, list) and len(e) == 3, "malformed delta entry"
            i, delta_id, base_id = e
            assert type(i) is int and last < i < len(node["content"]), "malformed delta entry"
            for bid in (delta_id, base_id):
                assert isinstance(bid, str) and len(bid) == 64
                assert set(bid) <= set("0123456789abcdef"), "malformed delta entry"
            out[i] = (delta_id, base_id)
            last = i
        return out

    def block(self, full_id: str, delta_id: str, base_id: str) -> bytes:
        """The zstd frame plaintext(delta_id) decompressed with plaintext(base_id) as a
        raw-content dictionary: the base's length, and the id full_id."""
        frame, base = self.blob(delta_id, "data"), self.blob(base_id, "data")
        assert zstandard.frame_content_size(frame) == len(base), "delta of another length"
        dictionary = zstandard.ZstdCompressionDict(base,
                                                   dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        data = zstandard.ZstdDecompressor(dict_data=dictionary).decompress(
            frame, max_output_size=len(base), allow_extra_data=False)
        assert len(data) == len(base), "delta of another length"
        assert self.blob_id(data) == full_id, "block rebuilt from its delta does not match"
        return data


def raw_name(node: dict, key: str) -> bytes:
    if key + "_b64" in node:
        assert key not in node
        return base64.b64decode(node[key + "_b64"], validate=True)
    return node[key].encode("utf-8")


# ------------------------------------------------------------------- the test


def backup(eng, name: str):
    """The facade's backup call, before or after its rename to backup(kind, name)."""
    run = getattr(eng, "backup", None)
    if run is not None:
        return run("files", name)
    return eng.__getattribute__("backup_" + "files")(name)  # spelled so renames skip it


def make_source(src: Path) -> None:
    b = os.fsencode(src)
    (src / "hello.txt").write_text("hello\n")
    (src / "text.txt").write_bytes(b"compressible line of text\n" * 20000)
    (src / "big.bin").write_bytes(os.urandom(5 * MIB + 4321))  # several chunks
    (src / "empty.txt").write_bytes(b"")
    (src / "café ☕ 😀.txt").write_text("non-ASCII name\n")
    (src / "ctl\n\x01\x7f").write_text("control characters in a name\n")
    (src / "emptydir").mkdir()
    (src / "sub").mkdir()
    (src / "sub" / "nested.txt").write_bytes(os.urandom(1000))
    os.chmod(src / "sub" / "nested.txt", 0o4750)
    os.chmod(src / "sub", 0o750)
    with open(os.path.join(b, b"raw-\xff\xfe.bin"), "wb") as f:
        f.write(b"name is not UTF-8\n")
    os.symlink("hello.txt", src / "link")
    os.symlink(b"target-\xe9", os.path.join(b, b"link-\xe9"))
    paths = [os.path.join(d, n) for d, ds, fs in os.walk(b) for n in ds + fs]
    paths.sort(key=lambda p: p.count(b"/"), reverse=True)
    for i, p in enumerate(paths):
        t = 1_600_000_000_000_000_000 + i * 1_000_000_007 + 123_456_789
        os.utime(p, ns=(t, t), follow_symlinks=False)
    os.utime(b, ns=(1_500_000_000_987_654_321,) * 2)


def describe(root: Path) -> dict[bytes, dict]:
    broot = os.fsencode(root)
    out = {}
    for p in [broot] + [os.path.join(d, n) for d, ds, fs in os.walk(broot) for n in ds + fs]:
        st = os.lstat(p)
        d = {"type": stat.S_IFMT(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
             "mtime_ns": st.st_mtime_ns}
        if stat.S_ISLNK(st.st_mode):
            d["target"] = os.readlink(p)
        else:
            d["mode"] = stat.S_IMODE(st.st_mode)
        if stat.S_ISREG(st.st_mode):
            d["content"] = Path(os.fsdecode(p)).read_bytes()
        out[os.path.relpath(p, broot)] = d
    return out


def read_back(sb, tmp_path: Path) -> tuple[Reader, str, dict]:
    reader = Reader(sb.repo, sb.password)
    sid, snap = reader.latest("files", "src")
    assert snap["version"] == 1 and snap["paths"] == [str(sb.src)]
    assert not snap["incomplete"] and snap["errors"] == [] and snap["errors_total"] == 0
    out = tmp_path / "restored"
    out.mkdir()
    reader.restore(snap["tree"], os.fsencode(out))
    assert describe(out / str(sb.src).lstrip("/")) == describe(sb.src)
    blobs = sum(reader.check_pack(p.name) for p in (sb.repo / "data").glob("*/*"))
    assert blobs == len(reader.index)
    assert {0, 1} <= reader.markers  # raw and zstd payloads were both seen
    return reader, sid, snap


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain"])
def test_independent_reader_restores_latest_snapshot(sandbox_factory, tmp_path, encrypted):
    sb = sandbox_factory("test-password" if encrypted else None)
    make_source(sb.src)
    eng = sb.engine(init=True)
    first = backup(eng, "src")
    (sb.src / "hello.txt").write_text("changed after the first backup\n")
    os.utime(sb.src / "hello.txt", ns=(1_650_000_000_000_000_001,) * 2)
    second = backup(eng, "src")
    assert first.complete and second.complete

    reader, sid, snap = read_back(sb, tmp_path)
    assert sid == second.id and snap["parent"] == first.id
    assert len(reader.list("index")) == 2 and len(reader.list("snapshots")) == 2
    cfg = reader.config
    if encrypted:
        wrapped = base64.b64decode(cfg["encryption"]["wrapped_key"])
        assert len(wrapped) == 92 and cfg["chunker"]["seed"] == "derived"
        assert b"compressible line" not in b"".join(
            p.read_bytes() for p in (sb.repo / "data").glob("*/*"))
    else:
        assert cfg["encryption"] is None and cfg["chunker"]["seed"] == 0


def test_secondary_key_record_and_tampered_config(sandbox, engine, tmp_path):
    make_source(sandbox.src)
    backup(engine, "src")
    cfg_path = sandbox.repo / "config"
    cfg = json.loads(cfg_path.read_bytes())
    # a keys/ record for another password, made with this reader's own primitives
    reader = Reader(sandbox.repo, sandbox.password)
    master = reader.unwrap(sandbox.password, cfg["encryption"])
    kdf = {"name": "scrypt", "n": 2**10, "r": 8, "p": 1,
           "salt": base64.b64encode(os.urandom(16)).decode()}
    kek = hashlib.scrypt(b"second", salt=base64.b64decode(kdf["salt"]), n=2**10, r=8, p=1,
                         dklen=32)
    nonce = os.urandom(12)
    wrapped = nonce + AESGCM(kek).encrypt(nonce, master, b"backup-tui master key")
    (sandbox.repo / "keys").mkdir()
    (sandbox.repo / "keys" / "second").write_text(
        json.dumps({"kdf": kdf, "wrapped_key": base64.b64encode(wrapped).decode()}))
    assert Reader(sandbox.repo, "second").index == reader.index
    # the engine agrees: the record written from the spec opens the repository
    sandbox.pwfile.write_text("second")
    assert sandbox.engine().repo().id == cfg["id"]

    cfg["compression"] = "none"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    with pytest.raises(AssertionError, match="config MAC"):
        Reader(sandbox.repo, sandbox.password)


def test_canonical_json_matches_the_engine_byte_for_byte():
    value = {"é": ["\x00\x1f\x7f\u2028\ufeff😀/\"\\\b\f\n\r\t", "\udce9"], "a": 1, "B": None,
             "f": [0.0, 1.5, 12.0, 1e-07, 1e16, -0.0, 2**70], "t": True}
    expected = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    assert canonical(value) == expected


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain"])
def test_independent_reader_rebuilds_blocks_stored_as_deltas(sandbox_factory, tmp_path,
                                                          encrypted):
    """Format 1.2: a cluster snapshot whose relation file has blocks stored as deltas
    against data blobs (made by hand with the engine's writer: the program writes them only
    in cluster backups after a parent)."""
    from engine.repo.tree import encode_tree

    sb = sandbox_factory("test-password" if encrypted else None)
    eng = sb.engine(init=True)
    repo = eng.repo()
    block = 16 * 1024
    bases = [os.urandom(block), os.urandom(5000)]  # the parent's blocks, stored whole
    newer = []
    for b in bases:
        c = bytearray(b)
        for k in range(0, len(c), 997):
            c[k] ^= 0x5A
        newer.append(bytes(c))
    whole = os.urandom(block)
    data = whole + newer[0] + newer[1]
    node = {"name": "16384", "type": "file", "mode": 0o600, "uid": os.getuid(),
            "gid": os.getgid(), "user": "", "group": "", "mtime_ns": 1_700_000_000 * 10**9,
            "ctime_ns": 1_700_000_000 * 10**9, "inode": 0, "size": len(data)}
    with repo.writer() as w:
        base_ids = [w.save("data", b) for b in bases]
        x_ids = [w.save("data", zstandard.ZstdCompressor(
                    level=3, dict_data=zstandard.ZstdCompressionDict(
                        b, dict_type=zstandard.DICT_TYPE_RAWCONTENT)).compress(n))
                 for n, b in zip(newer, bases, strict=True)]
        node["content"] = [w.save("data", whole)] + [repo.keys.blob_id(n) for n in newer]
        node["delta"] = [[1, x_ids[0], base_ids[0]], [2, x_ids[1], base_ids[1]]]
        sub = w.save("tree", encode_tree([node]))
        meta = {k: v for k, v in node.items() if k not in ("content", "delta")}
        root = w.save("tree", encode_tree([{**meta, "name": "base", "type": "dir",
                                            "mode": 0o700, "size": 0, "subtree": sub}]))
        w.commit()
    repo.save_snapshot({"version": 1, "time": "2026-12-01T00:00:00+00:00", "kind": "cluster",
                        "source": "pg", "host": "h", "tags": [], "parent": None,
                        "incomplete": False, "stats": {}, "program": "backup-tui test",
                        "tree": root, "block_size": block, "pgdata": "", "postgres": {}})

    reader = Reader(sb.repo, sb.password)
    _sid, snap = reader.latest("cluster", "pg")
    for bid in node["content"][1:]:
        assert bid not in reader.index  # a reader that ignores delta fails: missing blob
    out = tmp_path / "restored"
    out.mkdir()
    reader.restore(snap["tree"], os.fsencode(out))
    assert (out / "base" / "16384").read_bytes() == data

    # the reader's checks can fail: a delta that rebuilds other bytes of the same length
    with repo.writer() as w:
        other = w.save("data", zstandard.ZstdCompressor(
            level=3, dict_data=zstandard.ZstdCompressionDict(
                bases[0], dict_type=zstandard.DICT_TYPE_RAWCONTENT)).compress(whole))
        sub = w.save("tree", encode_tree([{**node, "delta": [[1, other, base_ids[0]]]}]))
        root = w.save("tree", encode_tree([{**meta, "name": "base", "type": "dir",
                                            "mode": 0o700, "size": 0, "subtree": sub}]))
        w.commit()
    repo.save_snapshot({**snap, "time": "2026-12-02T00:00:00+00:00", "tree": root})
    reader = Reader(sb.repo, sb.password)
    _sid, snap = reader.latest("cluster", "pg")
    (out / "again").mkdir()
    with pytest.raises(AssertionError, match="rebuilt from its delta does not match"):
        reader.restore(snap["tree"], os.fsencode(out / "again"))
