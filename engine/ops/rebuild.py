"""catalog rebuild: recreate the state directory's catalog from a repository.

The catalog is a cache: the local repository, or any replica when the ops host
was lost, holds everything needed to list and restore. The old catalog files
are kept beside, renamed with a time stamp.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.facade import Engine


def rebuild_catalog(engine: Engine, from_replica: str | None) -> dict:
    source = engine.for_replica(from_replica) if from_replica else engine
    snaps = source.snapshots()  # opens the repository: checks the password too
    path = engine.config.state_dir / "catalog.sqlite"
    if path.exists():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            old = path.with_name(path.name + suffix)
            if old.exists():
                old.rename(old.with_name(f"{old.name}.old-{stamp}"))
    catalog = engine.reopen_catalog()
    if from_replica:
        catalog.replica_done(from_replica, [s.id for s in snaps])
    catalog.audit("catalog rebuild", from_replica or "local", "succeeded",
                  detail=f"{len(snaps)} snapshot(s)")
    info = {"from": from_replica or "local", "snapshots": len(snaps),
            "state_dir": str(engine.config.state_dir)}
    if from_replica and not engine.backend.exists("config"):
        info["next"] = (f"no local repository: list and restore with --replica {from_replica}, "
                        f"or bring it home with: backup-tui repository adopt --from "
                        f"{from_replica}")
    return info
