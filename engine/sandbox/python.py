"""A python the server's OS user can run backup-tui with: for the ``archive_command``
(``wal-push``) and ``restore_command`` (``wal-fetch``) of a sandbox cluster.

PostgreSQL runs those commands as its own OS user (``postgres`` when we are root),
who may not reach this interpreter or this checkout (a venv under ``/root``, a
fresh clone in a 0700 folder). ``server_python`` finds an argv prefix that works,
in this order: ``$BACKUP_TUI_SERVER_PYTHON``; this interpreter; the system python
of the same version over this checkout and this interpreter's packages; and last a
copy of the project and its runtime packages (``bundle``) in a folder the sandbox
makes, which every OS user can pass through (the caller removes it with the
sandbox). Each candidate is tried as that user (``import backup_tui.cli,
engine.wal``). The demo uses it; ``engine/ops/pitr.py`` ``command_python`` reads
``$BACKUP_TUI_SERVER_PYTHON``, which the caller may set to the answer.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from engine.sandbox.common import REACHABLE, SandboxError, make_dirs

SERVER_PYTHON_ENV = "BACKUP_TUI_SERVER_PYTHON"
PROBE = "import backup_tui.cli, engine.wal"
PROJECT = Path(__file__).resolve().parents[2]  # the checkout: engine/ and backup_tui/


def runs_as(owner: str | None, argv: list[str]) -> str:
    """'' when ``owner`` (None: this user) imports backup-tui's CLI and WAL code with
    ``argv``; else why not, in one line."""
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    prefix = [runuser, "-u", owner, "--"] if owner and os.geteuid() == 0 else []
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    try:
        res = subprocess.run([*prefix, *argv, "-c", PROBE], capture_output=True, text=True,
                             cwd="/", env=env, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    return "" if res.returncode == 0 else (res.stderr.strip().splitlines() or ["?"])[-1]


def system_python() -> str:
    """The system python of this interpreter's version: a copy of the project runs on it."""
    return f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"


def candidates() -> list[list[str]]:
    """The argv prefixes worth trying, best first (without the bundle)."""
    found = []
    override = os.environ.get(SERVER_PYTHON_ENV, "").strip()
    if override:
        found.append(shlex.split(override))
    found.append([sys.executable])
    system = system_python()
    if os.path.exists(system):
        paths = sysconfig.get_paths()
        pypath = os.pathsep.join(dict.fromkeys([str(PROJECT), paths["purelib"],
                                                paths["platlib"]]))
        found.append(["env", f"PYTHONPATH={pypath}", system])
    return found


def runtime_files() -> set[str]:
    """Files (relative to site-packages) of backup-tui's runtime distributions, their
    requirements followed (no extras)."""
    from importlib import metadata

    seen: set[str] = set()
    files: set[str] = set()
    todo = ["backup-tui"]
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if name != "backup-tui":
            files.update(str(f) for f in dist.files or () if not str(f).startswith(".."))
        for req in dist.requires or ():
            if "extra ==" not in req:
                todo.append(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0])
    return files


def bundle(into: Path) -> list[str]:
    """Copy the project and its runtime packages into ``into`` (new: made here, 0755, so
    every OS user passes through); the argv prefix that runs the system python over it."""
    system = system_python()
    if not os.path.exists(system):
        raise SandboxError(f"no {system} to run a copy of backup-tui with")
    if into.exists():
        raise SandboxError(f"{into}: a copy of backup-tui needs a new folder")
    make_dirs(into)
    src, site = into / "src", into / "site"
    for pkg in ("engine", "backup_tui"):
        shutil.copytree(PROJECT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    base = Path(sysconfig.get_paths()["purelib"])
    for rel in sorted(runtime_files()):
        if (base / rel).is_file():
            (site / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(base / rel, site / rel)
    for d in [into, *(p for p in into.rglob("*") if p.is_dir())]:
        d.chmod(REACHABLE)  # all made here
    for f in (p for p in into.rglob("*") if p.is_file()):
        f.chmod(0o755 if os.access(f, os.X_OK) else 0o644)
    return ["env", f"PYTHONPATH={src}{os.pathsep}{site}", system]


def server_python(owner: str | None, bundle_dir: Path | None = None) -> list[str]:
    """An argv prefix with which ``owner`` (the server's OS user; None when the server runs
    as us) runs backup-tui: see the module docstring. ``bundle_dir``: where a copy may be
    made as the last resort (a folder of the caller's sandbox; an earlier copy there is
    used again). SandboxError saying why when nothing runs."""
    tried = []
    options = candidates()
    if bundle_dir is not None and (bundle_dir / "src").is_dir():
        options.append(["env", f"PYTHONPATH={bundle_dir / 'src'}{os.pathsep}"
                        f"{bundle_dir / 'site'}", system_python()])
    for argv in options:
        why = runs_as(owner, argv)
        if not why:
            return argv
        tried.append(f"{shlex.join(argv)}: {why}")
    if bundle_dir is not None and not bundle_dir.exists():
        argv = bundle(bundle_dir)
        why = runs_as(owner, argv)
        if not why:
            return argv
        tried.append(f"a copy in {bundle_dir}: {why}")
    raise SandboxError(f"OS user {owner or 'this user'} cannot run backup-tui "
                       f"({'; '.join(tried)})")
