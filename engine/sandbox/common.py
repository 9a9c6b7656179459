"""What every throwaway server of the sandbox needs: loopback ports, folders
another OS user can reach, and one error type.

* Ports: the servers listen on 127.0.0.1 only, on a port the OS called free a
  moment ago. Nothing here ever contacts another address: the helpers refuse
  any host that is not loopback.
* Folders: under root PostgreSQL runs as the ``postgres`` OS user, who must be
  able to reach its cluster's folder. The sandbox sets the mode only of folders
  it creates itself (never of ``/tmp`` or a folder a caller handed in): a new
  folder gets 0755, so that every OS user can pass through it.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from engine.errors import EngineError

LOOPBACK = "127.0.0.1"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
REACHABLE = 0o755  # the mode of folders the sandbox makes for another OS user


class SandboxError(EngineError):
    """A throwaway server of the sandbox could not be set up, started or stopped."""


def _loopback(host: str) -> str:
    if host not in LOOPBACK_NAMES:
        raise ValueError(f"the sandbox talks to loopback only, not to {host!r}")
    return host


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on ``host`` (loopback) a moment ago."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((_loopback(host), 0))
        return s.getsockname()[1]


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could bind ``host:port`` now (with SO_REUSEADDR, as servers do)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((_loopback(host), port))
        except OSError:
            return False
    return True


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host:port`` (loopback)."""
    try:
        with socket.create_connection((_loopback(host), port), timeout=timeout):
            return True
    except OSError:
        return False


def make_dirs(path: str | os.PathLike[str], mode: int = REACHABLE) -> list[Path]:
    """Create ``path`` and its missing parents; give ``mode`` to those created here
    only (the umask would otherwise decide). Returns the folders created, top first."""
    path = Path(path).absolute()
    created = []
    for p in [p for p in (path, *path.parents) if not p.exists()][::-1]:
        try:
            p.mkdir()
        except FileExistsError:  # made by someone else meanwhile: not ours to change
            continue
        p.chmod(mode)
        created.append(p)
    return created


def reachable_tempdir(prefix: str) -> Path:
    """A new temporary folder that every OS user can pass through (mkdtemp makes 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(REACHABLE)
    return path
