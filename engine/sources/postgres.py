"""The PostgreSQL logical source: pg_dump streamed into the repository.

``pg_dump --format=custom --compress=0`` writes to a pipe; the stream is cut by
FastCDC as it arrives, so unchanged tables dedup across days, and it is never
staged whole in memory or on disk. The cluster's roles and tablespaces
(``pg_dumpall --globals-only``) are saved beside each dump. A pg_dump that
exits non-zero, or is killed, fails the backup: no snapshot is written, and
the blobs already stored are only unreferenced garbage for prune.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import pyfastcdc

from engine.errors import EngineError
from engine.events import CancelToken
from engine.repo.repository import DATA, TREE, BlobWriter, Repository
from engine.repo.tree import encode_tree, name_fields
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


def _check_exit(t: PgTarget, rc: int, err) -> None:
    if rc != 0:
        raise EngineError(
            f"database {t.name!r}: pg_dump {_exit_reason(rc)}; no snapshot was written. "
            f"{_stderr_tail(err)}"
        )


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
        _check_exit(t, rc, err)
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


# --------------------------------------------------------------- directory format
def _process_tree(root_pid: int) -> list[int]:
    """root_pid and its descendants (pg_dump -j forks its workers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


def _open_files(root_pid: int, folder: str) -> set[str]:
    names = set()
    prefix = folder.rstrip("/") + "/"
    for pid in _process_tree(root_pid):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(prefix):
                names.add(target[len(prefix):])
    return names


def dump_database_directory(
    repo: Repository,
    writer: BlobWriter,
    t: PgTarget,
    jobs: int,
    scratch: str,
    progress,
    cancel: CancelToken,
) -> tuple[str, DumpResult]:
    """pg_dump -Fd -j N: each file is taken into the repository as soon as pg_dump has
    closed it, then deleted, so at most the files being written sit on disk."""
    facts = server_facts(t)
    tool, version = find_tool("pg_dump", facts["server_major"])
    mn, avg, mx, seed = repo.chunker_params()
    cdc = pyfastcdc.FastCDC(avg, min_size=mn, max_size=mx, seed=seed)
    os.makedirs(scratch, exist_ok=True)
    outdir = os.path.join(scratch, f"pgdump-{uuid.uuid4().hex}")
    start = time.monotonic()
    taken: dict[str, tuple[list[str], int]] = {}
    total = 0

    def take(name: str) -> None:
        nonlocal total
        path = os.path.join(outdir, name)
        content, size = [], 0
        with open(path, "rb", buffering=0) as f:
            for chunk in cdc.cut_stream(f):
                content.append(writer.save(DATA, chunk.data))
                size += chunk.length
                total += chunk.length
                progress(total, facts["database_size"])
        os.unlink(path)
        taken[name] = (content, size)

    try:
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                [tool, "--format=directory", f"--jobs={max(1, jobs)}", "--compress=0",
                 "--no-password", "--file", outdir, "--dbname", t.dbname],
                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, env=t.env(),
            )
            try:
                while True:
                    finished = proc.poll() is not None
                    try:
                        names = sorted(os.listdir(outdir))
                    except FileNotFoundError:
                        names = []
                    busy = set() if finished else _open_files(proc.pid, outdir)
                    for name in names:
                        if name in taken or name in busy:
                            continue
                        if name == "toc.dat" and not finished:
                            continue  # written last; complete only when pg_dump is done
                        take(name)
                    cancel.check()
                    if finished:
                        break
                    time.sleep(0.05)
                rc = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            _check_exit(t, rc, err)
    finally:
        shutil.rmtree(outdir, ignore_errors=True)
    if "toc.dat" not in taken:
        raise EngineError(f"database {t.name!r}: pg_dump wrote no toc.dat; no snapshot written")
    nodes = []
    now = time.time_ns()
    for name in sorted(taken):
        content, size = taken[name]
        node = name_fields("name", name.encode())
        node.update(type="file", mode=0o600, uid=os.getuid(), gid=os.getgid(), user="",
                    group="", mtime_ns=now, ctime_ns=now, inode=0, size=size, content=content)
        nodes.append(node)
    tree = writer.save(TREE, encode_tree(nodes))
    globals_sql, warnings = dump_globals(t, facts["server_major"])
    globals_ids = [writer.save(DATA, globals_sql)] if globals_sql else []
    facts.update(pg_dump=version, format="directory", jobs=jobs, dump_bytes=total,
                 dump_duration=round(time.monotonic() - start, 3), where=t.where,
                 connection_from=t.origin)
    return tree, DumpResult([], globals_ids, total, facts, warnings)
