"""Small loopback-only networking helpers shared by the harness modules."""

from __future__ import annotations

import os
import socket

LOOPBACK = "127.0.0.1"
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that was free on ``host`` a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def bypass_proxies_for_loopback() -> None:
    """Make sure HTTP clients (urllib, botocore, requests) never send loopback
    traffic through a proxy configured in the environment.

    Only touches the environment when a proxy variable is actually set.
    """
    proxy_vars = ("http_proxy", "https_proxy", "all_proxy")
    if not any(os.environ.get(v) or os.environ.get(v.upper()) for v in proxy_vars):
        return
    for var in ("no_proxy", "NO_PROXY"):
        entries = [e for e in os.environ.get(var, "").split(",") if e.strip()]
        for name in _LOOPBACK_NAMES:
            if name not in entries:
                entries.append(name)
        os.environ[var] = ",".join(entries)
