"""The CLI contract (README.md, "Use it"), run as a user would: real subprocesses.

Repository states (before init, init twice, wrong or missing password, unencrypted
init), snapshot references (full id, prefix, latest, ambiguity), exit codes and
``--json`` output that is pure JSON on stdout.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support import CHEAP_KDF

from engine.config import load_config
from engine.errors import NotFound, UsageError
from engine.facade import Engine
from engine.storage.memory import MemoryBackend

HEX = set("0123456789abcdef")


def fail_line(proc, code: int) -> str:
    """Assert the exit code and one stderr line; return that line."""
    err = proc.stderr.decode()
    assert proc.returncode == code, (proc.returncode, err, proc.stdout)
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def pure_json(proc):
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)  # fails on anything but one JSON document


def repo_state(repo: Path) -> dict[str, str]:
    """Every file of the repository with the SHA-256 of its content."""
    out = {}
    for p in sorted(repo.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(repo))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def inited(sandbox):
    """A sandbox whose repository was created through the CLI, with one snapshot."""
    (sandbox.src / "a.txt").write_text("alpha\n")
    (sandbox.src / "sub").mkdir()
    (sandbox.src / "sub" / "b.bin").write_bytes(os.urandom(100_000))
    sandbox.cli("init", check=True)
    return sandbox


# ------------------------------------------------------------- repository states


@pytest.mark.parametrize(
    "args",
    [
        ("list",),
        ("backup", "files", "src"),
        ("verify",),
        ("show", "latest"),
        ("dump", "latest"),
        ("restore", "files", "latest", "--target", "{tmp}/out"),
    ],
)
def test_commands_before_init(sandbox, tmp_path, args):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = sandbox.cli(*args)
    line = fail_line(proc, 1)
    assert str(sandbox.repo) in line and "no repository" in line and "backup-tui init" in line
    assert proc.stdout == b""
    assert not sandbox.repo.exists()
    assert not (tmp_path / "out").exists()


def test_init_creates_encrypted_repository(sandbox):
    proc = sandbox.cli("init")
    assert proc.returncode == 0, proc.stderr
    assert b"NOT ENCRYPTED" not in proc.stderr
    config = json.loads((sandbox.repo / "config").read_text())
    assert config["encryption"]["cipher"] == "aes-256-gcm"
    assert config["hash"] == "hmac-sha256"
    assert "test-password" not in (sandbox.repo / "config").read_text()


def test_init_twice_is_refused_and_repository_intact(inited):
    assert inited.cli("backup", "files", "src").returncode == 0
    before = repo_state(inited.repo)
    line = fail_line(inited.cli("init"), 1)
    assert "already exists" in line and str(inited.repo) in line
    assert repo_state(inited.repo) == before
    assert len(pure_json(inited.cli("list", "--json"))) == 1
    assert inited.cli("verify", "--read-data").returncode == 0


def test_wrong_password_changes_nothing(inited):
    assert inited.cli("backup", "files", "src").returncode == 0
    before = repo_state(inited.repo)
    inited.pwfile.write_text("not-the-password")
    (inited.src / "new.txt").write_text("new\n")
    for args in (("list",), ("backup", "files", "src"), ("verify",), ("show", "latest")):
        proc = inited.cli(*args)
        line = fail_line(proc, 1)
        assert "wrong password" in line and str(inited.repo) in line
        assert proc.stdout == b""
    assert repo_state(inited.repo) == before


def test_no_password_for_encrypted_repository(inited):
    inited.password = None
    inited.write_config()
    line = fail_line(inited.cli("list"), 1)
    assert "encrypted" in line and "no password" in line
    assert "BACKUP_TUI_PASSWORD" in line


def test_password_from_environment(inited):
    inited.password = None
    inited.write_config()
    proc = inited.cli("backup", "files", "src", env={"BACKUP_TUI_PASSWORD": "test-password"})
    assert proc.returncode == 0, proc.stderr


def test_unencrypted_init_warns_loudly(tmp_path):
    from support import Sandbox

    sb = Sandbox(tmp_path, password=None)
    proc = sb.cli("init")
    assert proc.returncode == 0, proc.stderr
    assert b"NOT ENCRYPTED" in proc.stderr
    assert b"NOT ENCRYPTED" not in proc.stdout
    assert json.loads((sb.repo / "config").read_text())["encryption"] is None


def test_unencrypted_init_warns_also_with_json(tmp_path):
    """--json keeps stdout pure JSON, but the warning still goes to stderr."""
    from support import Sandbox

    sb = Sandbox(tmp_path, password=None)
    proc = sb.cli("--json", "init")
    info = pure_json(proc)
    assert info["encrypted"] is False and info["location"] == str(sb.repo)
    assert b"NOT ENCRYPTED" in proc.stderr


# ----------------------------------------------------------- snapshot references


def two_snapshots(sb) -> list[str]:
    assert sb.cli("backup", "files", "src").returncode == 0
    (sb.src / "a.txt").write_text("changed\n")
    assert sb.cli("backup", "files", "src").returncode == 0
    return [s["id"] for s in pure_json(sb.cli("list", "--json"))]


def test_snapshot_references(inited):
    first, second = two_snapshots(inited)
    assert len(first) == 64 and set(first) <= HEX
    for ref, want in [
        (first, first),
        (first[:8], first),
        (second[:12], second),
        (second.upper()[:10], second),
        ("latest", second),
    ]:
        assert pure_json(inited.cli("show", ref, "--json"))["id"] == want, ref


def test_prefix_matching_nothing(inited):
    assert inited.cli("backup", "files", "src").returncode == 0
    sid = pure_json(inited.cli("list", "--json"))[0]["id"]
    other = next(c for c in "0123456789abcdef" if c != sid[0]) + sid[1:8]
    proc = inited.cli("show", other)
    line = fail_line(proc, 1)
    assert f"no snapshot matches '{other}'" in line
    assert proc.stdout == b""


@pytest.mark.parametrize("ref", ["abc", "1234567", "not-a-hex-id", "ghijklmnop"])
def test_bad_references_are_usage_errors(inited, ref):
    assert inited.cli("backup", "files", "src").returncode == 0
    line = fail_line(inited.cli("show", ref), 2)
    assert "8+ hex characters" in line


def test_latest_without_snapshots(inited):
    line = fail_line(inited.cli("show", "latest"), 1)
    assert "no snapshots" in line


def test_latest_is_ambiguous_with_two_sources(inited, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "o.txt").write_text("o\n")
    inited.filesets["other"] = [str(other)]
    inited.write_config()
    assert inited.cli("backup", "files", "src").returncode == 0
    assert inited.cli("backup", "files", "other").returncode == 0
    line = fail_line(inited.cli("show", "latest"), 2)
    assert "ambiguous" in line and "--source" in line and "other" in line and "src" in line
    snap = pure_json(inited.cli("show", "latest", "--source", "other", "--json"))
    assert snap["source"] == "other"
    line = fail_line(inited.cli("show", "latest", "--source", "nope"), 1)
    assert "no snapshots of source 'nope'" in line


def test_ambiguous_prefix_engine_level(sandbox):
    """Two snapshot names sharing 8 characters cannot be made by hashing in a test, so
    they are placed as raw objects in a MemoryBackend: resolution works on names."""
    backend = MemoryBackend()
    eng = Engine(load_config(sandbox.config_path), backend=backend, kdf=CHEAP_KDF)
    eng.init()
    a = "deadbeef00" + "0" * 54
    b = "deadbeef11" + "1" * 54
    backend.put(f"snapshots/{a}", b"x")
    backend.put(f"snapshots/{b}", b"y")
    with pytest.raises(UsageError, match="'deadbeef' is ambiguous: it matches 2 snapshots"):
        eng.snapshot("deadbeef")
    with pytest.raises(UsageError, match="ambiguous"):
        eng.snapshot("DEADBEEF")
    with pytest.raises(NotFound, match="no snapshot matches 'deadbeef2'"):
        eng.snapshot("deadbeef2")
    # a unique prefix resolves to the name; loading then checks the content
    from engine.errors import IntegrityError

    with pytest.raises(IntegrityError, match=f"snapshots/{a}"):
        eng.snapshot("deadbeef00")


# ----------------------------------------------------------------------- JSON


def test_list_json(inited):
    first, second = two_snapshots(inited)
    # times are UTC whatever the local time zone
    rows = pure_json(inited.cli("list", "--json", env={"TZ": "America/New_York"}))
    assert [r["id"] for r in rows] == [first, second]
    for r in rows:
        for key in ("id", "time", "kind", "source", "size", "added", "verified", "replicas"):
            assert key in r, key
        t = datetime.fromisoformat(r["time"])
        assert t.utcoffset() is not None and t.utcoffset().total_seconds() == 0
        assert abs((datetime.now(UTC) - t).total_seconds()) < 600
        assert r["kind"] == "files" and r["source"] == "src"
        assert isinstance(r["size"], int)
        assert r["size"] == 100_000 + (len("changed\n") if r["id"] == second else len("alpha\n"))
        assert isinstance(r["added"], int) and r["added"] > 0
        assert r["verified"] is None
        assert isinstance(r["replicas"], dict)
    # the second one added less than the first (b.bin deduplicated)
    assert rows[1]["added"] < rows[0]["added"]


def test_list_json_filters(inited):
    assert inited.cli("backup", "files", "src").returncode == 0
    assert pure_json(inited.cli("list", "--source", "nope", "--json")) == []
    assert len(pure_json(inited.cli("list", "--kind", "files", "--json"))) == 1
    assert pure_json(inited.cli("list", "--kind", "db", "--json")) == []


def test_list_json_verified_after_verify(inited):
    assert inited.cli("backup", "files", "src").returncode == 0
    assert inited.cli("verify").returncode == 0
    (row,) = pure_json(inited.cli("list", "--json"))
    assert row["verified"] is not None
    datetime.fromisoformat(row["verified"])


def test_backup_json(inited):
    proc = inited.cli("backup", "files", "src", "--json")
    obj = pure_json(proc)
    assert isinstance(obj, dict)
    for key in ("id", "kind", "source", "size", "added"):
        assert key in obj
    assert obj["kind"] == "files" and obj["source"] == "src"
    assert obj["size"] == 6 + 100_000 and obj["added"] > 0
    assert pure_json(inited.cli("list", "--json"))[0]["id"] == obj["id"]


def test_backup_all_json_is_a_list(inited):
    obj = pure_json(inited.cli("backup", "all", "--json"))
    assert isinstance(obj, list) and [o["source"] for o in obj] == ["src"]


def test_json_flag_before_command(inited):
    assert isinstance(pure_json(inited.cli("--json", "list")), list)


def test_other_json_outputs_are_pure(inited, tmp_path):
    sid = pure_json(inited.cli("backup", "files", "src", "--json"))["id"]
    show = pure_json(inited.cli("show", sid[:8], "--json"))
    assert show["id"] == sid and show["kind"] == "files"
    report = pure_json(inited.cli("verify", "--read-data", "--json"))
    assert report["ok"] is True and report["snapshots"] == [sid] and report["packs_checked"] > 0
    res = pure_json(inited.cli("restore", "files", sid, "--target", str(tmp_path / "out"),
                               "--json"))
    assert res["snapshot"] == sid and res["files"] == 2


# ------------------------------------------------------------------ exit codes


@pytest.mark.parametrize(
    "args",
    [("frobnicate",), ("backup",), ("backup", "files"), ("restore", "files", "latest"),
     ("list", "--kind", "tape"), ("verify", "--bogus")],
)
def test_bad_usage_exits_2_with_one_line(sandbox, args):
    proc = sandbox.cli(*args)
    fail_line(proc, 2)
    assert proc.stdout == b""



# ------------------------------------------------------- damaged repository place


def test_repository_path_is_a_file(sandbox):
    sandbox.repo.write_text("not a repository\n")
    line = fail_line(sandbox.cli("list"), 1)
    assert str(sandbox.repo) in line and "no repository" in line
    proc = sandbox.cli("init")
    line = fail_line(proc, 1)
    assert str(sandbox.repo) in line and "not a directory" in line
    assert b"Traceback" not in proc.stderr
    assert sandbox.repo.read_text() == "not a repository\n"


@pytest.mark.parametrize(
    "content, expect",
    [
        (b"garbage", "unreadable"),
        (b"[1]", "not a backup-tui repository"),
        (b'{"format": "other"}', "not a backup-tui repository"),
        (b'{"format": "backup-tui", "version": 1}', "unreadable"),
        (b'{"format": "backup-tui", "version": 2, "id": "x", "chunker": {}}',
         "format 2 is not supported"),
    ],
)
def test_damaged_repository_config(sandbox, content, expect):
    sandbox.repo.mkdir()
    (sandbox.repo / "config").write_bytes(content)
    for args in (("list",), ("backup", "files", "src")):
        proc = sandbox.cli(*args)
        line = fail_line(proc, 1)
        assert str(sandbox.repo) in line and expect in line
        assert b"Traceback" not in proc.stderr
    assert (sandbox.repo / "config").read_bytes() == content
    assert sorted(p.name for p in sandbox.repo.iterdir()) == ["config"]
