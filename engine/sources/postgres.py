"""The PostgreSQL logical source: pg_dump streamed into the repository.

``pg_dump --format=custom --compress=0`` writes to a pipe; the stream is cut by
FastCDC as it arrives, so unchanged tables dedup across days, and it is never
staged whole in memory or on disk. The cluster's roles and tablespaces
(``pg_dumpall --globals-only``) are saved beside each dump. A pg_dump that
exits non-zero, or is killed, fails the backup: no snapshot is written, and
the blobs already stored are only unreferenced garbage for prune.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import pyfastcdc

from engine.errors import EngineError
from engine.events import CancelToken
from engine.repo.repository import DATA, BlobWriter, Repository
from engine.sources.pgconn import PgTarget, find_tool, server_facts

READ = 1024 * 1024


@dataclass
class DumpResult:
    stream: list[str]
    globals: list[str]
    bytes: int
    facts: dict
    warnings: list[str] = field(default_factory=list)


def _stderr_tail(f, limit: int = 2000) -> str:
    f.seek(0)
    text = f.read().decode("utf-8", "replace").strip()
    return text[-limit:]


def _exit_reason(rc: int) -> str:
    return f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"


def dump_globals(t: PgTarget, server_major: int) -> tuple[bytes, list[str]]:
    """roles and tablespaces as SQL; role passwords omitted when we may not read them."""
    tool, _ = find_tool("pg_dumpall", server_major)
    warnings: list[str] = []
    for extra in ([], ["--no-role-passwords"]):
        proc = subprocess.run(
            [tool, "--globals-only", "--no-password", *extra],
            capture_output=True,
            env=t.env(),
            timeout=300,
        )
        if proc.returncode == 0:
            if extra:
                warnings.append("globals saved without role passwords (not a superuser)")
            return proc.stdout, warnings
        err = proc.stderr.decode("utf-8", "replace").strip()
    warnings.append(f"globals not saved: pg_dumpall failed: {err[-300:]}")
    return b"", warnings


def dump_database(
    repo: Repository,
    writer: BlobWriter,
    t: PgTarget,
    progress,
    cancel: CancelToken,
) -> DumpResult:
    facts = server_facts(t)  # also proves we can connect, with a clear error if not
    tool, version = find_tool("pg_dump", facts["server_major"])
    mn, avg, mx, seed = repo.chunker_params()
    cdc = pyfastcdc.FastCDC(avg, min_size=mn, max_size=mx, seed=seed)
    start = time.monotonic()
    stream: list[str] = []
    total = 0
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [tool, "--format=custom", "--compress=0", "--no-password", "--dbname", t.dbname],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=t.env(),
            bufsize=READ,
        )
        try:
            assert proc.stdout is not None
            for chunk in cdc.cut_stream(proc.stdout):
                if not stream and bytes(chunk.data[:5]) != b"PGDMP":
                    raise EngineError(f"pg_dump of {t.where} did not write a custom archive")
                stream.append(writer.save(DATA, chunk.data))
                total += chunk.length
                progress(total, facts["database_size"])
                cancel.check()
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if rc != 0:
            raise EngineError(
                f"database {t.name!r}: pg_dump {_exit_reason(rc)}; no snapshot was written. "
                f"{_stderr_tail(err)}"
            )
    if total == 0:
        raise EngineError(f"database {t.name!r}: pg_dump wrote nothing; no snapshot was written")
    duration = time.monotonic() - start
    globals_sql, warnings = dump_globals(t, facts["server_major"])
    globals_ids = [writer.save(DATA, globals_sql)] if globals_sql else []
    facts.update(
        pg_dump=version,
        format="custom",
        dump_bytes=total,
        dump_duration=round(duration, 3),
        where=t.where,
        connection_from=t.origin,
    )
    return DumpResult(stream, globals_ids, total, facts, warnings)
