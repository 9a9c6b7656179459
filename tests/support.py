"""What tests share besides fixtures: the engine sandbox and cheap key derivation.

Tests import these from here (``from support import Sandbox``), never from
``conftest``: pytest loads every folder's conftest.py under the same module name,
so ``from conftest import ...`` would find whichever folder's was loaded last.
"""

from __future__ import annotations

from pathlib import Path

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
_COPY: Path | None = None  # where a copy of the project any OS user can run goes


def _copy_dir() -> Path:
    """A folder for that copy (``engine.sandbox.python.bundle``), inside a temporary folder
    every user can pass through; not made yet; all removed at exit."""
    global _COPY
    import atexit
    import shutil

    from engine.sandbox.common import reachable_tempdir

    if _COPY is None:
        parent = reachable_tempdir("btui-runtime-")
        atexit.register(shutil.rmtree, parent, True)
        _COPY = parent / "copy"
    return _COPY


def server_python(user: str = "postgres") -> list[str]:
    """An argv prefix with which ``user`` (who runs archive_command and restore_command)
    runs this checkout's backup-tui, and the same in ``$BACKUP_TUI_SERVER_PYTHON`` for
    restore pitr: ``engine.sandbox.python.server_python`` (this interpreter, the system
    python over the checkout, or a copy of the project and its runtime packages in a folder
    every user can pass through). Fails the test, saying why, when none runs."""
    global _SERVER_PYTHON
    import os
    import shlex

    import pytest

    from engine.sandbox import python as sandbox_python
    from engine.sandbox.common import SandboxError

    if _SERVER_PYTHON is None:
        try:
            _SERVER_PYTHON = sandbox_python.server_python(user, _copy_dir())
        except SandboxError as e:
            pytest.fail(str(e))
        os.environ[SERVER_PYTHON_ENV] = shlex.join(_SERVER_PYTHON)
    return _SERVER_PYTHON


def python_for_anyone() -> tuple[str, list[str]]:
    """An interpreter and the PYTHONPATH entries with which any OS user (a throwaway test
    user, nobody) runs this checkout's backup-tui: the system python over a copy of the
    project and its runtime packages, since a checkout or venv may sit in a folder only
    root can enter. Fails the test when no copy can be made."""
    import pytest

    from engine.sandbox import python as sandbox_python
    from engine.sandbox.common import SandboxError

    into = _copy_dir()
    try:
        if not (into / "src").is_dir():
            sandbox_python.bundle(into)
    except SandboxError as e:
        pytest.fail(str(e))
    return sandbox_python.system_python(), [str(into / "src"), str(into / "site")]
