"""What tests share besides fixtures: the engine sandbox and cheap key derivation.

Tests import these from here (``from support import Sandbox``), never from
``conftest``: pytest loads every folder's conftest.py under the same module name,
so ``from conftest import ...`` would find whichever folder's was loaded last.
"""

from __future__ import annotations

CHEAP_KDF = {"name": "scrypt", "n": 2**10, "r": 8, "p": 1}


class Sandbox:
    """A config file, a source tree, a repository and a state dir under one tmp folder."""

    def __init__(self, root, password: str | None = "test-password"):
        import os

        self.root = root
        self.src = root / "src"
        self.src.mkdir()
        self.repo = root / "repo"
        self.state = root / "state"
        self.password = password
        self.config_path = root / "config.toml"
        self.filesets = {"src": [str(self.src)]}
        self.extra = ""
        if password:
            self.pwfile = root / "repo.pass"
            self.pwfile.write_text(password)
            os.chmod(self.pwfile, 0o600)
        self.write_config()

    def write_config(self) -> None:
        lines = ["[repository]", f'path = "{self.repo}"']
        if self.password:
            lines.append(f'password_file = "{self.pwfile}"')
        lines += ["[state]", f'dir = "{self.state}"']
        for name, paths in self.filesets.items():
            quoted = ", ".join(f'"{p}"' for p in paths)
            lines += ["[[fileset]]", f'name = "{name}"', f"paths = [{quoted}]"]
        self.config_path.write_text("\n".join(lines) + "\n" + self.extra)

    def engine(self, init: bool = False):
        from engine.config import load_config
        from engine.facade import Engine

        eng = Engine(load_config(self.config_path), kdf=CHEAP_KDF)
        if init:
            eng.init()
        return eng

    def cli(self, *args: str, input: bytes | None = None, check: bool = False, env=None):
        """Run the real CLI in a subprocess; returns CompletedProcess (bytes stdout)."""
        import os
        import subprocess
        import sys

        e = dict(os.environ)
        e.pop("BACKUP_TUI_PASSWORD", None)
        e.update(env or {})
        cmd = [sys.executable, "-m", "backup_tui.cli", "--config", str(self.config_path), *args]
        return subprocess.run(cmd, input=input, capture_output=True, check=check, env=e,
                              timeout=300)


# ------------------------------------------------------------ the server's python
_SERVER_PYTHON: list[str] | None = None
SERVER_PYTHON_ENV = "BACKUP_TUI_SERVER_PYTHON"  # engine/ops/pitr.py command_python reads it


def _runs_as(user: str, argv: list[str]) -> str:
    """'' when ``user`` can import backup-tui's CLI and WAL code with ``argv``; else why."""
    import shutil
    import subprocess

    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    res = subprocess.run([runuser, "-u", user, "--", *argv, "-c",
                          "import backup_tui.cli, engine.wal"],
                         capture_output=True, text=True, cwd="/", env=env, timeout=120)
    return "" if res.returncode == 0 else (res.stderr.strip().splitlines() or ["?"])[-1]


def _runtime_files() -> set[str]:
    """Files (relative to site-packages) of backup-tui's runtime distributions, requirements
    followed recursively (no extras: the test tools stay out)."""
    import re
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
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0])
    return files


_BUNDLE: tuple[str, str] | None = None  # (src, site) of the copy every user can read


def _bundle() -> tuple[str, str]:
    """A copy of this checkout's packages and their runtime distributions in a folder every
    user can pass through and read, made once and removed at exit: (src, site)."""
    global _BUNDLE
    import atexit
    import os
    import shutil
    import sysconfig
    from pathlib import Path

    from engine.sandbox.common import reachable_tempdir

    if _BUNDLE is None:
        root = Path(__file__).resolve().parents[1]
        bundle = reachable_tempdir("btui-runtime-")
        atexit.register(shutil.rmtree, bundle, True)
        src, site = bundle / "src", bundle / "site"
        for pkg in ("engine", "backup_tui"):
            shutil.copytree(root / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
        base = Path(sysconfig.get_paths()["purelib"])
        for rel in sorted(_runtime_files()):
            if (base / rel).is_file():
                (site / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(base / rel, site / rel)
        for d in [bundle, *(p for p in bundle.rglob("*") if p.is_dir())]:
            d.chmod(0o755)  # made here: readable by the server's OS user
        for f in (p for p in bundle.rglob("*") if p.is_file()):
            f.chmod(0o755 if os.access(f, os.X_OK) else 0o644)
        _BUNDLE = (str(src), str(site))
    return _BUNDLE


def _system_python() -> str:
    import sys

    return f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"


def server_python(user: str = "postgres") -> list[str]:
    """An argv prefix with which ``user`` (who runs archive_command and restore_command)
    runs this checkout's backup-tui, and the same in ``$BACKUP_TUI_SERVER_PYTHON`` for
    restore pitr. This interpreter when ``user`` can reach it; else (a checkout or venv in
    a folder only root can enter, as in a fresh CI clone) the system python of the same
    version over a copy of the project and its runtime packages in a folder every user
    can pass through, removed at exit. Fails the test, saying why, when neither runs."""
    global _SERVER_PYTHON
    import os
    import shlex
    import sys
    import sysconfig
    from pathlib import Path

    import pytest

    if _SERVER_PYTHON is None:
        root = Path(__file__).resolve().parents[1]
        system = _system_python()
        purelib = sysconfig.get_paths()["purelib"]
        argv = [sys.executable]
        why = _runs_as(user, argv)
        if why and os.path.exists(system):  # the system python over this checkout and venv
            argv = ["env", f"PYTHONPATH={root}:{purelib}", system]
            why = _runs_as(user, argv) and why
        if why:
            if not os.path.exists(system):
                pytest.fail(f"{user} cannot run {sys.executable} ({why}) and there is no "
                            f"{system} to run a copy with")
            src, site = _bundle()
            argv = ["env", f"PYTHONPATH={src}:{site}", system]
            why2 = _runs_as(user, argv)
            if why2:
                pytest.fail(f"{user} cannot run {sys.executable} ({why}) nor a copy with "
                            f"{system} ({why2})")
        _SERVER_PYTHON = argv
        os.environ[SERVER_PYTHON_ENV] = shlex.join(argv)
    return _SERVER_PYTHON


def python_for_anyone() -> tuple[str, list[str]]:
    """An interpreter and the PYTHONPATH entries with which any OS user (a throwaway test
    user, nobody) runs this checkout's backup-tui: the system python over a copy of the
    project and its runtime packages (``_bundle``), since a checkout or venv may sit in a
    folder only root can enter. Fails the test when there is no system python."""
    import os

    import pytest

    system = _system_python()
    if not os.path.exists(system):
        pytest.fail(f"no {system} to run backup-tui as another user with")
    src, site = _bundle()
    return system, [src, site]
