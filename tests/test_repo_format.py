"""Repository format units: keys, sealing, packs, records, chunking and dedup."""

import json
import os

import pytest

from engine.errors import IntegrityError, RepositoryError, WrongPassword
from engine.repo.pack import DATA, read_header
from engine.repo.repository import Repository
from engine.storage import MemoryBackend

KDF = {"name": "scrypt", "n": 2**10, "r": 8, "p": 1}


def test_init_open_with_password_and_wrong_password():
    be = MemoryBackend()
    repo = Repository.init(be, "secret", kdf=KDF)
    cfg = json.loads(be.get("config"))
    assert cfg["encryption"]["cipher"] == "aes-256-gcm" and cfg["hash"] == "hmac-sha256"
    assert "secret" not in be.get("config").decode()
    assert Repository.open(be, "secret").id == repo.id
    with pytest.raises(WrongPassword):
        Repository.open(be, "wrong")
    with pytest.raises(WrongPassword):
        Repository.open(be, None)
    with pytest.raises(RepositoryError):
        Repository.init(be, "secret", kdf=KDF)


def test_tampered_config_is_refused():
    be = MemoryBackend()
    Repository.init(be, "secret", kdf=KDF)
    cfg = json.loads(be.get("config"))
    cfg["compression"] = "none"
    be.put("config", json.dumps(cfg).encode())
    with pytest.raises(IntegrityError):
        Repository.open(be, "secret")


@pytest.mark.parametrize("password", ["secret", None])
def test_blobs_roundtrip_through_packs_and_index(password):
    be = MemoryBackend()
    repo = Repository.init(be, password, kdf=KDF)
    payloads = [os.urandom(1000), b"text " * 5000, b""]
    with repo.writer() as w:
        ids = [w.save(DATA, p) for p in payloads]
        assert w.save(DATA, payloads[0]) == ids[0]  # dedup within a write
        w.commit()
    reopened = Repository.open(be, password)
    for i, p in zip(ids, payloads, strict=True):
        assert reopened.load_blob(i) == p
    packs = [o.name for o in be.list("data/")]
    assert len(packs) == 1
    entries = read_header(reopened.keys, be.get(packs[0]), packs[0].rsplit("/", 1)[1])
    assert sorted(e.id for e in entries) == sorted(ids)
    if password:  # plaintext never appears in an encrypted pack
        assert b"text text" not in be.get(packs[0])


def test_flipped_byte_in_a_blob_is_detected_by_name():
    be = MemoryBackend()
    repo = Repository.init(be, "pw", kdf=KDF)
    with repo.writer() as w:
        bid = w.save(DATA, os.urandom(5000))
        w.commit()
    name = next(be.list("data/")).name
    raw = bytearray(be.get(name))
    raw[100] ^= 0x01
    be.put(name, bytes(raw))
    fresh = Repository.open(be, "pw")
    with pytest.raises(IntegrityError) as e:
        fresh.load_blob(bid)
    assert name in str(e.value)


def test_records_are_content_addressed_and_checked():
    be = MemoryBackend()
    repo = Repository.init(be, "pw", kdf=KDF)
    sid = repo.save_record("snapshots", {"time": "t", "kind": "files"})
    assert repo.load_record("snapshots", sid)["kind"] == "files"
    raw = bytearray(be.get(f"snapshots/{sid}"))
    raw[-1] ^= 0xFF
    be.put(f"snapshots/{sid}", bytes(raw))
    with pytest.raises(IntegrityError, match=f"snapshots/{sid}"):
        repo.load_record("snapshots", sid)


def test_secondary_key_record_opens_the_repository():
    from engine.repo.crypto import wrap_master

    be = MemoryBackend()
    Repository.init(be, "first", kdf=KDF)
    # an operator added a second password: a key record under keys/
    cfg = json.loads(be.get("config"))
    from engine.repo.crypto import unwrap_master

    master = unwrap_master("first", cfg["encryption"])
    be.put("keys/second", json.dumps(wrap_master("second", master, KDF)).encode())
    assert Repository.open(be, "second").id == cfg["id"]


def test_compiled_fastcdc_is_in_use_and_chunks_are_content_defined():
    import pyfastcdc

    assert pyfastcdc.FastCDC.__module__.startswith("pyfastcdc.cy"), "pure-Python fallback loaded"
    cdc = pyfastcdc.FastCDC(1 << 20, min_size=256 << 10, max_size=4 << 20, seed=7)
    data = os.urandom(12 << 20)
    a = [c.length for c in cdc.cut_buf(data)]
    shifted = [c.length for c in cdc.cut_buf(b"inserted" + data)]
    assert 4 <= len(a) <= 40
    # an insert at the front changes the first chunk only; the rest realign
    assert a[1:] == shifted[1:]
