"""Every object class of a repository damaged (tests/faults/): config, a keys/ record,
a pack, an index, a snapshot and a tree blob, each flipped, truncated, swapped with
another object of its class, and missing.

The repository holds two snapshots of two filesets with nothing in common: S1
("src") and S2 ("other"). The damage is always to what S1 needs (or to the whole
repository, for config and keys). Then the real CLI runs ``list``, ``verify
--read-data``, ``restore`` of S1 and of S2 (and, in the long campaign, ``verify``,
``dump`` and ``status``): none may print a traceback; every failure is an exit 1 or
2 with a message; verify fails and names the damaged object (or, for a missing one,
the snapshot that needs it); a restore that succeeds is identical; and S2, which
the damage did not touch, still restores identical.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from campaign import (
    clean_error,
    describe,
    diff_manifests,
    fill,
    manifest,
    popen_cli,
)

from engine.repo.crypto import wrap_master
from engine.repo.repository import Repository
from engine.storage.local import LocalBackend

CLS = "corruption"
KIB = 1024
OBJECTS = ("config", "keys", "pack", "index", "snapshot", "tree")
DAMAGES = ("flip", "truncate", "swap", "missing")
CHEAP_KDF = {"name": "scrypt", "n": 2**10, "r": 8, "p": 1}
ALT_PASSWORD = "alternate-password"

_TEMPLATE: dict = {}


def files_under(root: Path, folder: str) -> list[Path]:
    d = root / folder
    return sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith(".")) \
        if d.is_dir() else []


def template(sandbox_factory) -> dict:
    """Built once per session: a repository with S1 and S2, a keys/ record for the same
    master key under ALT_PASSWORD, and a config of another repository (for swaps)."""
    if _TEMPLATE:
        return _TEMPLATE
    import random

    rng = random.Random(1)
    sb = sandbox_factory()
    other = sb.root / "other"
    other.mkdir()
    sb.filesets["other"] = [str(other)]
    sb.write_config()
    fill(sb.src, rng, 6, 96 * KIB)
    for i in range(5):
        (other / f"o{i}.bin").write_bytes(rng.randbytes(80 * KIB))
    (other / "sub").mkdir()
    (other / "sub" / "note.txt").write_text("other\n")
    eng = sb.engine(init=True)
    s1 = eng.backup("files", "src", replicate=False).id
    made_by_s1 = {str(p.relative_to(sb.repo)) for f in ("data", "index")
                  for p in files_under(sb.repo, f)}
    s2 = eng.backup("files", "other", replicate=False).id
    made_by_s2 = {str(p.relative_to(sb.repo)) for f in ("data", "index")
                  for p in files_under(sb.repo, f)} - made_by_s1
    backend = LocalBackend(sb.repo)
    config = json.loads((sb.repo / "config").read_text())
    master = Repository._unwrap_any(backend, sb.password, config["encryption"])
    (sb.repo / "keys").mkdir(exist_ok=True)
    (sb.repo / "keys" / "alt").write_text(json.dumps(wrap_master(ALT_PASSWORD, master,
                                                                 CHEAP_KDF)))
    stranger = sandbox_factory()
    stranger.engine(init=True)
    repo = eng.repo()
    repo.load_index()
    tree = {}
    for sid, made in ((s1, made_by_s1), (s2, made_by_s2)):
        tid = repo.load_snapshot(sid)["tree"]
        e = repo.index[tid]
        tree_pack = f"data/{e.pack_id[:2]}/{e.pack_id}"
        assert tree_pack in made
        tree[sid] = {"id": tid, "pack": tree_pack, "offset": e.offset, "length": e.length,
                     "data_packs": sorted(m for m in made if m.startswith("data/")
                                          and m != tree_pack),
                     "indexes": sorted(m for m in made if m.startswith("index/"))}
        assert tree[sid]["data_packs"] and tree[sid]["indexes"], tree[sid]
    _TEMPLATE.update(sb=sb, s1=s1, s2=s2, m1=manifest(sb.src), m2=manifest(other),
                     stranger_config=(stranger.repo / "config").read_bytes(), tree=tree)
    return _TEMPLATE


def flip(path: Path, rng, start: int = 0, end: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = rng.randrange(start, end if end is not None else len(data))
    data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def damage(sb, t: dict, obj: str, how: str, rng) -> tuple[str, str]:
    """Damage one object; returns (object name, the ids of which verify must mention
    one: the object's, or for a missing one also the snapshot's that needs it)."""
    repo, s1, s2 = sb.repo, t["s1"], t["s2"]
    mine, theirs = t["tree"][s1], t["tree"][s2]
    if obj == "config":
        path, swap_with = repo / "config", t["stranger_config"]
    elif obj == "keys":
        path, swap_with = repo / "keys" / "alt", (repo / "config").read_bytes()
    elif obj == "pack":
        path = repo / rng.choice(mine["data_packs"])
        swap_with = (repo / theirs["data_packs"][0]).read_bytes()
    elif obj == "index":
        path = repo / rng.choice(mine["indexes"])
        swap_with = (repo / theirs["indexes"][0]).read_bytes()
    elif obj == "snapshot":
        path, swap_with = repo / "snapshots" / s1, (repo / "snapshots" / s2).read_bytes()
    else:  # the root tree blob of S1, inside its pack
        path = repo / mine["pack"]
        off, length = mine["offset"], mine["length"]
        data = bytearray(path.read_bytes())
        if how == "flip":
            data[rng.randrange(off, off + length)] ^= 1 << rng.randrange(8)
        elif how == "truncate":  # the pack ends inside the tree blob
            data = data[: rng.randrange(off, off + length)]
        elif how == "swap":  # another tree blob's bytes where this one was
            other = (repo / theirs["pack"]).read_bytes()
            alien = other[theirs["offset"]: theirs["offset"] + theirs["length"]]
            alien = (alien * (length // max(1, len(alien)) + 1))[:length]
            data[off: off + length] = alien
        else:
            path.unlink()
            return mine["pack"], (mine["id"], path.name, s1)
        path.write_bytes(bytes(data))
        return str(path.relative_to(repo)), (mine["id"],)
    name = str(path.relative_to(repo))
    if how == "flip":
        flip(path, rng)
    elif how == "truncate":
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(rng.randrange(0, size))
    elif how == "swap":
        path.write_bytes(swap_with)
    else:
        path.unlink()
    return name, ((path.name, s1) if how == "missing" else (path.name,))


def restore_check(proc, want: dict, src: str, target: Path) -> tuple[bool, str]:
    """(restored ok, problem): a failure must be clean; a success must be identical."""
    sid = proc.args[proc.args.index("files") + 1]
    if proc.returncode != 0:
        return False, clean_error(proc) or ""
    bad = diff_manifests(want, manifest(target / src.lstrip("/")))
    return True, f"restore {sid[:12]} succeeded but differs: {bad}" if bad else ""


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("obj", OBJECTS)
def test_damaged_object(obj, how, sandbox_factory, tmp_path, fault_budget, fault_report):
    t = template(sandbox_factory)
    rng = fault_budget.rng()
    sb = sandbox_factory()
    shutil.rmtree(sb.repo, ignore_errors=True)
    shutil.copytree(t["sb"].repo, sb.repo)
    sb.filesets["other"] = t["sb"].filesets["other"]
    sb.src = t["sb"].src
    sb.filesets["src"] = [str(sb.src)]
    if obj == "keys":  # the only way in is the keys/ record
        sb.pwfile.write_text(ALT_PASSWORD)
    sb.write_config()
    assert sb.engine().verify().ok  # checked once: the catalog has seen both snapshots
    name, must_name = damage(sb, t, obj, how, rng)
    whole = obj in ("config", "keys")
    problems, lost = [], ""
    commands = [("list", "--json"), ("verify", "--read-data")]
    if fault_budget.long:
        commands += [("verify",), ("status",), ("dump", t["s1"])]
    outputs = {}
    restores = [("restore", "files", sid, "--target", str(tmp_path / sid))
                for sid in (t["s1"], t["s2"])]
    running = [(args, popen_cli(sb, *args)) for args in commands + restores]  # all at once
    for args, p in running:
        out, err = p.communicate(timeout=300)
        proc = subprocess.CompletedProcess(p.args, p.returncode, out, err)
        outputs[" ".join(args)] = proc
        if proc.returncode != 0 or b"Traceback" in proc.stderr:
            bad = clean_error(proc)
            if bad:
                problems.append(f"{' '.join(args)}: {bad}")
    v = outputs["verify --read-data"]
    text = (v.stdout + v.stderr).decode(errors="replace")
    if v.returncode == 0:
        problems.append(f"verify --read-data says ok about a {how} {obj} ({name})")
    elif not whole and not any(n[:8] in text for n in must_name):
        problems.append(f"verify names none of {[n[:8] for n in must_name]} ({name}): "
                        f"{text[-600:]}")
    elif whole and not any(w in text for w in (obj, "password", "authentication failed")):
        problems.append(f"the error names neither the {obj} nor what failed: {text[-600:]}")
    r1, r2 = (outputs[" ".join(a)] for a in restores)
    ok1, bad = restore_check(r1, t["m1"], str(t["sb"].src), tmp_path / t["s1"])
    if bad:
        problems.append(bad)
    ok2, bad = restore_check(r2, t["m2"], t["sb"].filesets["other"][0], tmp_path / t["s2"])
    if bad:
        problems.append(bad)
    if not whole and not ok2:
        lost = f"S2 (untouched by the damage) no longer restores: {describe(r2)}"
    what = f"{how} {obj} ({name})"
    if lost:
        fault_report.record(CLS, "lost", f"{what}: {lost}")
    elif problems:
        fault_report.record(CLS, "failed", f"{what}: " + "; ".join(problems))
    else:
        fault_report.record(CLS, "survived", what)
    assert not lost, lost
    assert not problems, "\n".join(problems)
    assert os.path.isdir(sb.repo)
