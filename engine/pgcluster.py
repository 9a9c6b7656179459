"""Throwaway PostgreSQL servers: for the demo now, for restore drills and PITR later.

``ScratchCluster`` runs initdb and pg_ctl on a free loopback port with a private
socket directory. PostgreSQL refuses to run as root, so under root every server
command runs as the ``postgres`` OS user (``runuser``) and the data directory is
owned by it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path

from engine.errors import EngineError


def server_bin_dir(major: int | None = None) -> Path:
    dirs = sorted(
        (d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.path.exists(f"{d}/initdb")),
        key=lambda d: int(d.split("/")[4]) if d.split("/")[4].isdigit() else 0,
    )
    if major is not None:
        dirs = [d for d in dirs if d.split("/")[4] == str(major)] or dirs
    if not dirs:
        raise EngineError("PostgreSQL server binaries not found (Debian: apt-get install "
                          "postgresql)")
    return Path(dirs[-1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ScratchCluster:
    def __init__(self, base: str | os.PathLike[str], port: int | None = None,
                 major: int | None = None):
        self.base = Path(base)
        self.data = self.base / "data"
        self.sockets = self.base / "sockets"
        self.log = self.base / "server.log"
        self.port = port or free_port()
        self.bin = server_bin_dir(major)
        self.as_root = os.geteuid() == 0
        self.owner = "postgres" if self.as_root else None

    def _cmd(self, *args: str) -> list[str]:
        prefix = ["runuser", "-u", self.owner, "--"] if self.owner else []
        return prefix + list(args)

    def _run(self, *args: str, timeout: int = 120) -> None:
        proc = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout,
                              cwd="/")
        if proc.returncode != 0:
            raise EngineError(f"{os.path.basename(args[0])} failed: "
                              f"{(proc.stderr or proc.stdout).strip()[-500:]}")

    def _chown(self, path: Path) -> None:
        if self.owner:
            pw = pwd.getpwnam(self.owner)
            os.chown(path, pw.pw_uid, pw.pw_gid)
            for root, _dirs, files in os.walk(path):
                os.chown(root, pw.pw_uid, pw.pw_gid)
                for f in files:
                    os.chown(os.path.join(root, f), pw.pw_uid, pw.pw_gid)

    def init(self) -> ScratchCluster:
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        self.sockets.mkdir(exist_ok=True)
        self._chown(self.base)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-sync")
        return self

    def start(self) -> ScratchCluster:
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                f"-c unix_socket_directories={self.sockets} -c fsync=off")
        if self.owner:
            self.log.touch()
            self._chown(self.log)
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o",
                  opts, "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m",
                                     "fast", "-w", "stop"), capture_output=True, timeout=120,
                           cwd="/")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def psql(self, sql: str, db: str = "postgres") -> str:
        proc = subprocess.run(
            [str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h",
             "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db],
            input=sql, capture_output=True, text=True, timeout=600,
        )
        if proc.returncode != 0:
            raise EngineError(f"psql failed: {proc.stderr.strip()[-500:]}")
        return proc.stdout
