"""init's guard: a new repository only where there is no repository data.

``init`` writes a new ``config`` with a new key. Over the packs, index and
snapshots of an existing repository whose ``config`` was lost, that key opens
none of them: every snapshot becomes unreadable. So ``init`` refuses any
location that holds a ``config``, ``keys/``, ``data/``, ``index/`` or
``snapshots/`` object, and a lost ``config`` is named as such, with the way
back (a replica holds the same config and keys: ``repository adopt``).
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.errors import RepositoryError
from engine.storage.base import Backend

PARTS = ("keys/", "data/", "index/", "snapshots/")


def repository_parts(backend: Backend) -> list[str]:
    """Which parts of a repository are at the backend's location (first object of each)."""
    found = ["config"] if backend.exists("config") else []
    for prefix in PARTS:
        if next(iter(backend.list(prefix)), None) is not None:
            found.append(prefix)
    return found


def way_back(replicas: list[str]) -> str:
    if replicas:
        names = ", ".join(replicas)
        return (f"bring it back from a replica with 'backup-tui repository adopt --from "
                f"{replicas[0]}' (configured replicas: {names}), or put back a copy of the "
                "config file")
    return ("put back a copy of the config file, or, if a copy of the repository exists "
            "elsewhere, add it as a [[replica]] and run 'backup-tui repository adopt --from "
            "REPLICA'")


def refuse_existing(backend: Backend, replicas: list[str]) -> None:
    """Raise unless the location holds no repository data at all."""
    parts = repository_parts(backend)
    unfinished = _adopting(backend)
    if unfinished is not None and "config" not in parts:
        raise RepositoryError(
            f"{backend.location}: init refused: an adoption from {unfinished} is unfinished "
            f"here; run 'backup-tui repository adopt --from {unfinished}' again to finish it")
    if not parts:
        return
    if "config" in parts:
        raise RepositoryError(f"{backend.location}: a repository already exists here")
    raise RepositoryError(
        f"{backend.location}: init refused: this location holds repository data "
        f"({', '.join(parts)}) but no config: the repository lost its config, and a new one "
        f"would make every snapshot here unreadable; {way_back(replicas)}"
    )


def explain_missing_config(backend: Backend, replicas: list[str]) -> None:
    """When opening failed for want of a config: raise the lost-config error if the rest
    of a repository is there (else return, and the caller's 'no repository here' stands)."""
    if backend.exists("config"):
        return
    unfinished = _adopting(backend)
    if unfinished is not None:
        raise RepositoryError(
            f"{backend.location}: no repository here yet: an adoption from {unfinished} is "
            "unfinished (the config lands last); run 'backup-tui repository adopt --from "
            f"{unfinished}' again to finish it")
    parts = [p for p in repository_parts(backend) if p != "config"]
    if parts:
        raise RepositoryError(
            f"{backend.location}: the repository's config is missing, but its data is here "
            f"({', '.join(parts)}); do not run init (a new key would make every snapshot "
            f"unreadable): {way_back(replicas)}"
        )


def _adopting(backend: Backend) -> str | None:
    """The replica an unfinished ``repository adopt`` into this local folder copies from
    (its hidden marker, engine/ops/adopt.py), or None."""
    root = getattr(backend, "root", None)
    if root is None:
        return None
    try:
        marker = json.loads((Path(root) / ".adopting").read_text())
    except (OSError, ValueError):
        return None
    replica = marker.get("replica") if isinstance(marker, dict) else None
    return replica if isinstance(replica, str) and replica else "REPLICA"
