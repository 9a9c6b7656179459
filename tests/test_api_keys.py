"""API keys (issue 13): the key store, the ``api-key`` CLI, and the audit actor.

Keys are made, listed and revoked through the real CLI in subprocesses; the store is then
checked the way the daemon uses it (``KeyStore.authenticate``), including a store object made
before the CLI changed the file. No key text may reach the key file, the catalog or the audit
store. ``security.acting_as`` names the API caller in audit lines of its own thread only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from engine import security
from engine.api.keys import ROLES, ApiKey, KeyStore
from engine.errors import NotFound, UsageError

KEY_RE = re.compile(r"btk_([0-9a-f]{8})_([A-Za-z0-9_-]{43})")


def one_line_error(proc, code: int) -> str:
    err = proc.stderr.decode()
    assert proc.returncode == code, (proc.returncode, err, proc.stdout)
    assert len(err.splitlines()) == 1, err
    return err


def create(sandbox, name: str, role: str) -> str:
    """``api-key create`` through the CLI: the key, the one line of its stdout."""
    proc = sandbox.cli("api-key", "create", name, "--role", role)
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert len(out.splitlines()) == 1, out
    key = out.strip()
    assert KEY_RE.fullmatch(key), key
    err = proc.stderr.decode()
    assert "only this once" in err and "Authorization: Bearer" in err, err
    assert not KEY_RE.search(err), "the key went to stderr too"
    return key


def state_files(sandbox) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sandbox.state.iterdir() if p.is_file()}


# ------------------------------------------------------------------- the CLI
def test_create_list_revoke_through_the_cli(sandbox):
    key = create(sandbox, "grafana", "viewer")
    secret = KEY_RE.fullmatch(key).group(2)
    made = sandbox.cli("api-key", "create", "ci.deploy-1", "--role", "operator", "--json")
    assert made.returncode == 0, made.stderr.decode()
    data = json.loads(made.stdout)  # pure JSON on stdout
    assert data["name"] == "ci.deploy-1" and data["role"] == "operator"
    assert KEY_RE.fullmatch(data["key"]) and data["key"] != key

    path = sandbox.state / "api-keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())
    # no key text and no secret in the key file, the catalog or the audit store (nor their
    # -wal files): only salted hashes
    for name, content in state_files(sandbox).items():
        for k in (key, data["key"]):
            for part in (k, KEY_RE.fullmatch(k).group(2)):
                assert part.encode() not in content, f"key text in {name}"
    assert not [p for p in sandbox.state.iterdir() if p.name.endswith(".tmp")]
    rec = next(r for r in stored["keys"] if r["name"] == "grafana")
    assert rec["role"] == "viewer" and rec["revoked"] is None
    assert rec["key_id"] == KEY_RE.fullmatch(key).group(1)
    assert rec["hash"] != secret and len(rec["hash"]) == 64

    listed = sandbox.cli("api-key", "list")
    assert listed.returncode == 0, listed.stderr.decode()
    text = listed.stdout.decode()
    assert "grafana" in text and "viewer" in text and "ci.deploy-1" in text
    assert "operator" in text and rec["created"] in text
    assert rec["hash"] not in text and rec["salt"] not in text and secret not in text
    rows = json.loads(sandbox.cli("api-key", "list", "--json").stdout)
    assert [r["name"] for r in rows] == ["grafana", "ci.deploy-1"]
    assert all(set(r) == {"name", "role", "created", "revoked"} for r in rows)

    revoked = sandbox.cli("api-key", "revoke", "grafana")
    assert revoked.returncode == 0, revoked.stderr.decode()
    rows = json.loads(sandbox.cli("api-key", "list", "--json").stdout)
    assert rows[0]["name"] == "grafana" and rows[0]["revoked"]
    assert rows[1]["revoked"] is None
    assert "grafana" in one_line_error(sandbox.cli("api-key", "revoke", "grafana"), 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    audit = sandbox.engine().audit_log()
    lines = [(a["action"], a["target"], a["outcome"]) for a in reversed(audit)]
    assert lines[:3] == [("api-key create", "grafana", "created"),
                         ("api-key create", "ci.deploy-1", "created"),
                         ("api-key revoke", "grafana", "revoked")]
    assert all(a["user"] == security.current_user() for a in audit)


def test_an_empty_store_lists_nothing(sandbox):
    listed = sandbox.cli("api-key", "list")
    assert listed.returncode == 0 and "no API keys" in listed.stdout.decode()
    assert json.loads(sandbox.cli("api-key", "list", "--json").stdout) == []


def test_duplicate_name_bad_name_and_unknown_role_are_refused(sandbox):
    first = create(sandbox, "grafana", "viewer")
    err = one_line_error(sandbox.cli("api-key", "create", "grafana", "--role", "admin"), 2)
    assert "grafana" in err and "exists" in err
    err = one_line_error(sandbox.cli("api-key", "create", "boss", "--role", "root"), 2)
    assert "'root'" in err and all(role in err for role in ROLES)
    err = one_line_error(sandbox.cli("api-key", "create", "a b", "--role", "viewer"), 2)
    assert "'a b'" in err
    assert one_line_error(sandbox.cli("api-key", "create", "x" * 65, "--role", "viewer"), 2)
    assert one_line_error(sandbox.cli("api-key", "create", "nameless"), 2)  # --role missing
    assert one_line_error(sandbox.cli("api-key", "revoke", "nobody-has-it"), 1)
    names = [r["name"] for r in json.loads(sandbox.cli("api-key", "list", "--json").stdout)]
    assert names == ["grafana"]  # nothing of the refused ones was stored

    # a revoked key's name may be used again; the old key stays refused
    assert sandbox.cli("api-key", "revoke", "grafana").returncode == 0
    second = create(sandbox, "grafana", "admin")
    store = KeyStore(sandbox.state)
    assert store.authenticate(first) is None
    assert store.authenticate(second) == ApiKey("grafana", "admin")

    store = KeyStore(sandbox.state)  # the same rules in the store itself
    with pytest.raises(UsageError, match="exists"):
        store.create("grafana", "viewer")
    with pytest.raises(UsageError, match="viewer, operator, admin"):
        store.create("other", "superuser")
    with pytest.raises(UsageError):
        store.create("../etc", "viewer")
    with pytest.raises(NotFound):
        store.revoke("missing")


# -------------------------------------------------------------- authentication
def test_authenticate_accepts_the_key_and_nothing_else(sandbox, sandbox_factory):
    key = create(sandbox, "ci", "operator")
    store = KeyStore(sandbox.state)
    found = store.authenticate(key)
    assert found == ApiKey("ci", "operator")
    assert found.allows("viewer") and found.allows("operator") and not found.allows("admin")
    assert ApiKey("a", "admin").allows("operator") and not ApiKey("v", "viewer").allows(
        "operator")

    key_id, secret = KEY_RE.fullmatch(key).groups()
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    other_id = f"{(int(key_id, 16) + 1) % 2**32:08x}"
    for bad in (f"btk_{key_id}_{flipped}", f"btk_{other_id}_{secret}",
                f"btk_{key_id}_{secret[:-1]}", key + "x", key.upper(), "xtk" + key[3:],
                f"Bearer {key}", "", "btk_", "garbage", "x" * 10_000, None, 42, key.encode()):
        assert store.authenticate(bad) is None, bad

    other = sandbox_factory()  # a key of another store is no key here
    other_key = create(other, "ci", "operator")
    assert KeyStore(other.state).authenticate(other_key) == ApiKey("ci", "operator")
    assert store.authenticate(other_key) is None
    assert KeyStore(other.state).authenticate(key) is None
    assert store.authenticate(key) == ApiKey("ci", "operator")  # refusals changed nothing


def test_a_store_made_before_sees_cli_changes_at_once(sandbox):
    store = KeyStore(sandbox.state)  # as the daemon holds it, before any key exists
    assert store.authenticate("btk_00000000_" + "A" * 43) is None
    key = create(sandbox, "ops", "admin")
    assert store.authenticate(key) == ApiKey("ops", "admin")
    assert sandbox.cli("api-key", "revoke", "ops").returncode == 0
    assert store.authenticate(key) is None
    again = create(sandbox, "ops", "viewer")
    assert store.authenticate(again) == ApiKey("ops", "viewer")
    assert store.authenticate(key) is None
    assert [r["name"] for r in store.list()] == ["ops", "ops"]


def test_a_damaged_key_file_admits_no_key(sandbox, caplog):
    key = create(sandbox, "ops", "admin")
    store = KeyStore(sandbox.state)
    assert store.authenticate(key) is not None
    path = sandbox.state / "api-keys.json"
    path.write_text("{ not json")
    assert store.authenticate(key) is None
    assert "api-keys.json" in caplog.text
    from engine.errors import EngineError

    with pytest.raises(EngineError, match="not a valid API key file"):
        store.list()
    assert one_line_error(sandbox.cli("api-key", "list"), 1)


def test_concurrent_creates_all_land(sandbox):
    """Several writers (each its own store object, as separate processes would be) are
    serialised by the file lock: no create is lost."""
    sandbox.engine().catalog  # noqa: B018 - the state directory
    errors = []

    def writer(n: int) -> None:
        store = KeyStore(sandbox.state)
        try:
            for i in range(5):
                store.create(f"w{n}-{i}", "viewer")
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(KeyStore(sandbox.state).list()) == 30


def test_the_key_module_loads_no_web_stack():
    code = ("import sys, engine.api.keys\n"
            "print(sorted(m for m in sys.modules if m.partition('.')[0] in "
            "('fastapi', 'starlette', 'uvicorn', 'pydantic', 'httpx', 'anyio')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ audit actor
def test_acting_as_names_the_api_caller_in_its_own_context_only(sandbox):
    eng = sandbox.engine()
    me = security.current_user()
    assert security.actor() is None
    other_thread_entered, main_may_leave = threading.Event(), threading.Event()
    seen_in_thread = []

    def other() -> None:
        seen_in_thread.append(security.actor())
        eng.catalog.audit("thread line", "t", "ok")
        other_thread_entered.set()
        main_may_leave.wait(30)

    with security.acting_as("api:ops@127.0.0.1"):
        assert security.actor() == "api:ops@127.0.0.1"
        eng.catalog.audit("api test", "x", "ok")
        key = eng.api_key_create("made-by-api", "viewer")  # the engine's own audit line
        t = threading.Thread(target=other)
        t.start()
        assert other_thread_entered.wait(30)
        with security.acting_as("api:inner@::1"):
            eng.catalog.audit("inner", "y", "ok")
        assert security.actor() == "api:ops@127.0.0.1"  # restored after the inner block
        main_may_leave.set()
        t.join()
    assert security.actor() is None
    eng.catalog.audit("after", "z", "ok")

    users = {a["action"]: a for a in eng.audit_log()}
    assert users["api test"]["user"] == "api:ops@127.0.0.1"
    assert users["api-key create"]["user"] == "api:ops@127.0.0.1"
    assert users["api-key create"]["target"] == "made-by-api"
    assert users["inner"]["user"] == "api:inner@::1"
    assert users["thread line"]["user"] == me and seen_in_thread == [None]
    assert users["after"]["user"] == me
    assert all(a["uid"] == os.getuid() for a in users.values())
    secret = KEY_RE.fullmatch(key).group(2)
    assert not any(secret in json.dumps(a) for a in eng.audit_log())
    with pytest.raises(ValueError):
        with security.acting_as(""):
            pass


# ------------------------------------------------------------------ admin gate
def test_admin_gate_in_process(sandbox, monkeypatch, capsys):
    from backup_tui import cli

    base = ["--config", str(sandbox.config_path)]
    assert cli.main([*base, "api-key", "create", "keep", "--role", "admin"]) == 0
    monkeypatch.setattr(security, "is_admin", lambda group, uid=None, gids=None: False)
    before = (sandbox.state / "api-keys.json").read_bytes()
    for args in (["api-key", "create", "sneaky", "--role", "admin"],
                 ["api-key", "revoke", "keep"]):
        capsys.readouterr()
        assert cli.main([*base, *args]) == 1, args
        err = capsys.readouterr().err
        assert "permission denied" in err and "backup-admins" in err, (args, err)
    assert (sandbox.state / "api-keys.json").read_bytes() == before
    assert cli.main([*base, "api-key", "list"]) == 0  # reading is not gated (file mode is)


def test_non_admin_cannot_create_or_revoke_keys():
    """A real other user (nobody) runs the CLI: create and revoke are refused by the admin
    gate, list by the key file's mode, and the file is unchanged."""
    from support import Sandbox, python_for_anyone

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the CLI as another user")
    base = Path(tempfile.mkdtemp(prefix="apikeys-"))  # reachable by others, unlike tmp_path
    os.chmod(base, 0o755)
    try:
        sandbox = Sandbox(base)
        key = create(sandbox, "keep", "admin")
        path = sandbox.state / "api-keys.json"
        before = path.read_bytes()
        python, pypath = python_for_anyone()
        env = {**os.environ, "PYTHONPATH": ":".join(pypath)}

        def as_nobody(*args):
            return subprocess.run(
                ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                 python, "-m", "backup_tui.cli", "--config", str(sandbox.config_path),
                 *args], capture_output=True, timeout=120, cwd="/", env=env)

        for args in (("api-key", "create", "sneaky", "--role", "admin"),
                     ("api-key", "revoke", "keep")):
            err = one_line_error(as_nobody(*args), 1)
            assert "permission denied" in err and "backup-admins" in err, err
        listed = as_nobody("api-key", "list")
        err = one_line_error(listed, 1)
        assert "api-keys.json" in err and "may not read" in err, err
        assert path.read_bytes() == before
        assert KeyStore(sandbox.state).authenticate(key) == ApiKey("keep", "admin")
        assert [a["target"] for a in sandbox.engine().audit_log()
                if a["action"].startswith("api-key")] == ["keep"]
    finally:
        shutil.rmtree(base, ignore_errors=True)
