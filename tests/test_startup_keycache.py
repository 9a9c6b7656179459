"""Every command's repository open takes the master key from the state directory's key
cache (engine/repo/keycache.py) when it holds this config's and this password's key,
with the rules wal-push uses: a wrong password, a cache holding another key, another
config, or a replica engine all derive the key from the password as before."""

from __future__ import annotations

import json
import os

import pytest
from support import Sandbox

from engine.errors import IntegrityError, WrongPassword
from engine.repo import keycache
from engine.repo.repository import Repository
from engine.storage.local import LocalBackend


@pytest.fixture
def derivations(monkeypatch):
    """The real key derivation, counted."""
    calls: list = []
    real = Repository._unwrap_any

    def counted(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(Repository, "_unwrap_any", staticmethod(counted))
    return calls


def test_open_uses_the_key_cache_written_by_an_earlier_open(tmp_path, derivations):
    sb = Sandbox(tmp_path)
    master = sb.engine(init=True).repo().keys.master_key()
    sb.engine().repo()  # the first open derives the key and writes the cache
    assert len(derivations) == 1
    assert keycache.cache_path(sb.state).exists()
    repo = sb.engine().repo()
    assert len(derivations) == 1  # from the cache: no derivation
    assert repo.keys.master_key() == master
    (sb.src / "f").write_text("x")
    res = sb.engine().backup("files", "src")
    assert len(derivations) == 1 and res.complete


def test_a_wrong_password_is_refused_with_a_cache_present(tmp_path, derivations):
    sb = Sandbox(tmp_path)
    sb.engine(init=True)
    sb.engine().repo()
    assert keycache.cache_path(sb.state).exists()
    sb.pwfile.write_text("another password")
    with pytest.raises(WrongPassword):
        sb.engine().repo()


def test_a_cache_holding_another_key_is_not_trusted(tmp_path, derivations):
    sb = Sandbox(tmp_path)
    master = sb.engine(init=True).repo().keys.master_key()
    config = json.loads((sb.repo / "config").read_bytes())
    # bound to this config and password, but not the key that opens its authenticator
    assert keycache.store(sb.state, config, os.urandom(64), sb.password)
    derivations.clear()
    repo = sb.engine().repo()
    assert len(derivations) == 1 and repo.keys.master_key() == master
    # ... and the open wrote the right key back
    assert keycache.load(sb.state, config, sb.password) == master


def test_a_changed_config_is_checked_with_the_derived_key(tmp_path, derivations):
    """A config altered after the cache was written (its mac no longer matches the cached
    entry) is a miss: the password derives the key and the authenticator still decides."""
    sb = Sandbox(tmp_path)
    sb.engine(init=True)
    sb.engine().repo()
    path = sb.repo / "config"
    config = json.loads(path.read_bytes())
    config["compression"] = "none"  # tampered; its mac left as it was
    os.chmod(path, 0o600)
    path.write_text(json.dumps(config))
    derivations.clear()
    with pytest.raises(IntegrityError, match="authenticator"):
        sb.engine().repo()
    assert len(derivations) == 1


def test_no_key_cache_without_a_state_dir_or_for_a_replica(tmp_path, derivations):
    sb = Sandbox(tmp_path)
    sb.engine(init=True)
    sb.engine().repo()
    derivations.clear()
    Repository.open(LocalBackend(sb.repo), sb.password)  # no key_cache: derived
    assert len(derivations) == 1
    eng = sb.engine()
    eng.replica_name = "r"  # an Engine whose repository is a replica
    eng.repo()
    assert len(derivations) == 2



def test_verify_reads_the_key_records_that_an_open_from_the_cache_skips(tmp_path):
    """With the key cache, a damaged key record does not stop the open (the cache holds
    the key), but verify still reads the records, as an open without the cache must."""
    from engine.repo.crypto import wrap_master

    sb = Sandbox(tmp_path)
    master = sb.engine(init=True).repo().keys.master_key()
    (sb.repo / "keys").mkdir(exist_ok=True)
    (sb.repo / "keys" / "alt").write_text(json.dumps(wrap_master("another one", master)))
    sb.pwfile.write_text("another one")  # only keys/alt opens with it
    (sb.src / "f").write_text("x")
    assert sb.engine().backup("files", "src").complete  # derives, writes the cache
    assert sb.engine().verify().ok
    record = sb.repo / "keys" / "alt"
    os.chmod(record, 0o600)
    record.write_text("{}")  # damaged
    engine = sb.engine()
    assert engine.repo().key_from_cache  # still opens: the key came from the cache
    with pytest.raises(WrongPassword, match="key"):
        engine.verify()
