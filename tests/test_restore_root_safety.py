"""Restore as root from an unencrypted repository hands out no privileges by default.

Nobody authenticates an unencrypted repository's content: whoever can write to it
can craft a snapshot. Restored as root, its device nodes (a /dev/mem of one's own),
setuid/setgid bits and file capabilities would be privileges handed to the crafter.
Without ``--allow-devices`` / ``--allow-setid`` they are left out, each with a
warning naming the path; with them, and from an encrypted repository, the restore is
exact. rsync (``-aHAX --checksum --dry-run --itemize-changes``) judges each restore
against the source.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="device nodes and setuid need root")


def make_source(src) -> None:
    (src / "dev").mkdir()
    os.mknod(src / "dev" / "null-like", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(src / "dev" / "loop-like", stat.S_IFBLK | 0o660, os.makedev(7, 200))
    (src / "bin").mkdir()
    for name, mode in (("suid", 0o4755), ("sgid", 0o2755), ("plain", 0o755)):
        p = src / "bin" / name
        p.write_bytes(b"#!/bin/sh\necho " + name.encode() + b"\n")
        os.chmod(p, mode)
    cap = src / "bin" / "cap"
    cap.write_bytes(b"#!/bin/sh\n")
    os.chmod(cap, 0o755)
    subprocess.run(["setcap", "cap_net_raw+ep", str(cap)], check=True)
    (src / "shared").mkdir()
    os.chmod(src / "shared", 0o2775)  # setgid directory: group inheritance, kept
    (src / "shared" / "f").write_text("x")


def differences(src, target) -> dict[str, str]:
    """rsync's itemized differences between the source and a restore (which holds it under
    its absolute path): {path: item}."""
    target = target / str(src).lstrip("/")
    proc = subprocess.run(["rsync", "-aHAX", "--checksum", "--dry-run", "--itemize-changes",
                           "--delete", f"{src}/", f"{target}/"],
                          capture_output=True, text=True, check=True)
    out = {}
    for line in proc.stdout.splitlines():
        item, _, path = line.partition(" ")
        if path and path != "./":
            out[path.strip()] = item
    return out


def restore(sb, target, *options):
    proc = sb.cli("restore", "files", "latest", "--target", str(target), "--json", *options)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)["warnings"]


@pytest.fixture
def plain(sandbox_factory):
    sb = sandbox_factory(password=None)
    make_source(sb.src)
    sb.engine(init=True)
    proc = sb.cli("backup", "files", "src")
    assert proc.returncode == 0, proc.stderr.decode()
    return sb


def test_unencrypted_repository_restores_no_devices_setid_or_capabilities(plain, tmp_path):
    target = tmp_path / "out"
    warnings = restore(plain, target)
    diff = differences(plain.src, target)
    # exactly these differ: the devices are missing, the set-id bits and capability gone
    assert set(diff) == {"dev/null-like", "dev/loop-like", "bin/suid", "bin/sgid", "bin/cap"}
    assert diff["dev/null-like"].startswith("cD+") and diff["dev/loop-like"].startswith("cD+")
    assert "p" in diff["bin/suid"] and "p" in diff["bin/sgid"]
    assert diff["bin/cap"].endswith("x") or "x" in diff["bin/cap"]
    target = target / str(plain.src).lstrip("/")
    assert not os.path.lexists(target / "dev" / "null-like")
    assert stat.S_IMODE(os.stat(target / "bin" / "suid").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(target / "bin" / "sgid").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(target / "shared").st_mode) == 0o2775
    assert subprocess.run(["getcap", str(target / "bin" / "cap")], capture_output=True,
                          text=True).stdout.strip() == ""
    # one warning per path, naming it and the option
    for path, option in (("dev/null-like", "--allow-devices"), ("dev/loop-like",
                         "--allow-devices"), ("bin/suid", "--allow-setid"),
                         ("bin/sgid", "--allow-setid"), ("bin/cap", "--allow-setid")):
        hits = [w for w in warnings if path in w]
        assert len(hits) == 1 and option in hits[0] and "not encrypted" in hits[0], \
            (path, warnings)
    # the human output says so on stderr too
    human = plain.cli("restore", "files", "latest", "--target", str(tmp_path / "out2"))
    assert human.returncode == 0 and b"dev/null-like" in human.stderr


def test_options_restore_them_exactly(plain, tmp_path):
    target = tmp_path / "out"
    warnings = restore(plain, target, "--allow-devices", "--allow-setid")
    assert differences(plain.src, target) == {}
    assert not [w for w in warnings if "not encrypted" in w]
    only_dev = tmp_path / "dev-only"
    restore(plain, only_dev, "--allow-devices")
    assert set(differences(plain.src, only_dev)) == {"bin/suid", "bin/sgid", "bin/cap"}


def test_encrypted_repository_restores_exactly(sandbox, tmp_path):
    make_source(sandbox.src)
    sandbox.engine(init=True)
    assert sandbox.cli("backup", "files", "src").returncode == 0
    target = tmp_path / "out"
    warnings = restore(sandbox, target)
    assert differences(sandbox.src, target) == {}
    assert not [w for w in warnings if "not encrypted" in w]


def test_engine_options_reach_the_plan(plain, tmp_path):
    eng = plain.engine()
    plan = eng.plan_restore(eng.snapshots()[0].id,
                            target=str(tmp_path / "x"), allow_devices=True)
    assert plan.allow_devices and not plan.allow_setid
