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
