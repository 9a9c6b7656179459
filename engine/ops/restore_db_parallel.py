"""restore db, custom format: the restore in sections, the post-data section in parallel.

A custom-format archive written to a pipe (ours: ``pg_dump --format=custom
--compress=0`` at backup time) has no data offsets, so ``pg_restore --jobs`` cannot
read it, and one ``pg_restore`` reading the whole stream on stdin builds every index
and constraint one after another. The archive's header and table of contents come
first in the stream, and the post-data items (indexes, constraints, triggers) carry
no data. So the restore runs in three steps:

1. the head: the stream is fed to ``pg_restore -l`` (which reads only the table of
   contents) and every byte fed is also written to ``head.dump`` in the scratch
   folder: a small file holding the archive's header and whole table of contents.
   The entries are sorted into three lists (``-L`` files): pre-data, data, and
   post-data; ACLs (``ACL``, ``DEFAULT ACL``) go last, with post-data, as in a full
   restore (pg_restore's ACL pass), so a grant that takes rights away from the
   restoring role cannot stop the data load;
2. pre-data from ``head.dump``, then data: one ``pg_restore -L data.list`` reading
   the stream on stdin. (Two, each loading half the tables from its own stream of the
   archive, were measured on 2 cores against the bench's databases: no better, since
   each reads and decrypts the whole stream; bench/RESULTS.md, 2026-11-30 20:15.)
3. post-data and ACLs: ``pg_restore --jobs=N -L post.list head.dump`` (N = cores, at
   most 4). pg_restore keeps the dependencies (a foreign key after the key it needs).

Every step runs with ``--exit-on-error``; a failure of any step fails the restore
(the caller drops the temporary database). ``RestoreFailed`` carries pg_restore's
stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import Cancelled, EngineError
from engine.events import CancelToken
from engine.repo.repository import Repository

MAX_JOBS = 4

# one entry of `pg_restore -l`: "ID; catalog-oid oid DESC ...", comments start with ";"
_ENTRY = re.compile(r"^\s*(\d+);\s+\d+\s+\d+\s+(.*)$")
_ACL_PASS = ("ACL ", "DEFAULT ACL ", "ACL LANGUAGE ")  # pg_restore's ACL pass


class RestoreFailed(EngineError):
    """A pg_restore step failed; ``text`` is its stderr."""

    def __init__(self, step: str, text: str):
        super().__init__(f"pg_restore ({step}) failed")
        self.step = step
        self.text = text


def post_jobs() -> int:
    return max(1, min(MAX_JOBS, os.cpu_count() or 1))


def _entries(listing: str) -> list[tuple[int, str, str]]:
    """(id, description and names, the line) of each entry of a ``pg_restore -l`` text."""
    out = []
    for line in listing.splitlines():
        m = _ENTRY.match(line)
        if m:
            out.append((int(m.group(1)), m.group(2), line))
    return out


def _is_acl(rest: str) -> bool:
    return rest.startswith(_ACL_PASS)


def _is_table_data(rest: str) -> bool:
    return rest.startswith("TABLE DATA ")


def split_lists(full: str, pre: str, data: str) -> tuple[list[str], list[str], list[str]]:
    """The pre-data, data and post-data lists (``-L`` lines, archive order) from the
    listings of the whole archive and of its pre-data and data sections. Every entry
    lands in exactly one list; entries of no section land in the last one, and the
    ACLs at its end."""
    pre_ids = {i for i, rest, _ in _entries(pre) if not _is_acl(rest)}
    data_ids = {i for i, rest, _ in _entries(data) if not _is_acl(rest)}
    pre_l: list[str] = []
    data_l: list[str] = []
    post_l: list[str] = []
    acls: list[str] = []
    for i, rest, line in _entries(full):
        (pre_l if i in pre_ids else data_l if i in data_ids else
         acls if _is_acl(rest) else post_l).append(line)
    return pre_l, data_l, post_l + acls


def _run(argv: list[str], env: dict, step: str, cancel: CancelToken) -> None:
    """Run one pg_restore reading a file; RestoreFailed with its stderr when it fails."""
    from engine.ops.restore_db import run_tool

    def wait(proc: subprocess.Popen) -> int:
        while True:
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                cancel.check()

    rc, err, _ = run_tool(argv, env, wait=wait)
    if rc != 0:
        raise RestoreFailed(step, err)


def _listing(tool: str, path: str, args: list[str], env: dict) -> str:
    proc = subprocess.run([tool, "-l", *args, path], capture_output=True, env=env)
    if proc.returncode != 0:
        raise RestoreFailed("table of contents", proc.stderr.decode("utf-8", "replace"))
    return proc.stdout.decode("utf-8", "replace")


def capture_head(repo: Repository, snap: dict, tool: str, path: str, env: dict,
                 cancel: CancelToken) -> str:
    """Feed the stream to ``pg_restore -l`` until it has read the table of contents
    (it then exits), writing every byte fed to ``path`` too. Returns the listing."""
    from engine.ops.restore_db import run_tool

    def feed(proc: subprocess.Popen) -> None:
        assert proc.stdin is not None
        try:
            for bid in snap.get("stream", []):
                data = repo.load_blob(bid, "data")
                head.write(data)
                proc.stdin.write(data)
                cancel.check()
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it has read what it needs

    with tempfile.TemporaryFile() as out, open(path, "wb") as head:
        rc, err, _ = run_tool([tool, "-l"], env, feed=feed, stdout=out)
        if rc != 0:
            raise RestoreFailed("table of contents", err)
        out.seek(0)
        return out.read().decode("utf-8", "replace")


def _stream_step(repo: Repository, snap: dict, argv: list[str], env: dict, step: str,
                 on_bytes: Callable[[int], None], after_first) -> int:
    """One pg_restore reading the whole stream on stdin; bytes written."""
    from engine.ops.restore_db import run_tool, stream_into

    rc, err, written = run_tool(
        argv, env, feed=lambda proc: stream_into(repo, snap, proc, on_bytes, after_first))
    if rc != 0:
        raise RestoreFailed(step, err)
    return int(written)


def restore_sections(repo: Repository, snap: dict, tool: str, base: list[str], env: dict,
                     folder: str, on_bytes: Callable[[int], None], cancel: CancelToken,
                     fault: Callable[[], None], jobs: int | None = None) -> int:
    """Restore a streamed custom-format snapshot in sections (module docstring) into the
    database ``base`` names (``[tool, --exit-on-error, .., -d DB]``); ``folder`` is a
    scratch folder of this restore (the caller removes it). Returns the stream's bytes.
    ``fault`` is called while pg_restore runs (after the first bytes of the data)."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    head = os.path.join(folder, "head.dump")
    full = capture_head(repo, snap, tool, head, env, cancel)
    pre, data, post = split_lists(full, _listing(tool, head, ["--section=pre-data"], env),
                                  _listing(tool, head, ["--section=data"], env))

    def write_list(name: str, lines: list[str]) -> str:
        path = os.path.join(folder, name)
        with open(path, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        return path

    _run([*base, "-L", write_list("pre.list", pre), head], env, "pre-data", cancel)
    # the data even when there is none (a schema-only archive): the stream is read whole,
    # so it is checked as before and the progress reaches its end
    written = _stream_step(repo, snap, [*base, "-L", write_list("data.list", data)], env,
                           "data", on_bytes, fault)
    if post:
        _run([*base, f"--jobs={jobs or post_jobs()}", "-L", write_list("post.list", post),
              head], env, "post-data", cancel)
    return written



# --------------------------------------------------------------- directory format
# A directory-format dump (``pg_dump -Fd``) keeps each table's data in a file of its
# own (``<dumpId>.dat``, written with --compress=0), COPY text ready to send. pg_restore
# -Fd --jobs would need every file on disk: it refuses anything but a regular file (a
# FIFO fed from the repository fails with '"N.dat" is not a regular file', pg_restore
# 15.20), so the whole dump would be staged. Instead the restore runs in sections, as the
# custom format's does, and the table data is sent by this process:
#
# 1. ``toc.dat`` (small) is written to the scratch folder, with an empty file in place of
#    each table's data file; the lists are split as above (``split_lists``);
# 2. pre-data: ``pg_restore -L pre.list``;
# 3. table data: ``pg_restore -f - -L data.list`` over the empty files prints the
#    session settings of the archive and each table's ``COPY .. FROM stdin`` (pg_restore's
#    own quoting); N connections (``post_jobs``, the largest tables first) each run one
#    table's COPY at a time, streaming its file from the repository (every blob checked
#    on read; a bad blob, a cancel or a refused row aborts that COPY, and the restore);
#    the other data entries (sequence values; large objects, whose few files are then
#    written to the folder) go through ``pg_restore -L rest.list``;
# 4. post-data and ACLs: ``pg_restore --jobs=N -L post.list``.

_COPY = re.compile(r"^COPY .*? FROM stdin;$", re.M | re.S)


@dataclass
class _Table:
    entry: int
    line: str  # its -L line
    name: str  # the file in the dump
    size: int
    content: list[str]
    copy: str = ""

    @property
    def label(self) -> str:
        """The table as its COPY names it (``public.orders``)."""
        what = self.copy[len("COPY "):].split(" FROM stdin;")[0]
        return what.split(" (", 1)[0] if what else self.name


def _dump_files(repo: Repository, snap: dict) -> dict[str, dict]:
    """The files of a directory-format snapshot by name (its tree's top level)."""
    from engine.repo.walk import walk

    out: dict[str, dict] = {}
    for path, node in walk(repo, snap["tree"]):
        name = os.fsdecode(path)
        if node.get("type") == "file" and "/" not in name:
            out[name] = node
    return out


def _write_file(repo: Repository, node: dict, path: str) -> None:
    with open(path, "wb") as f:
        for bid in node.get("content", []):
            f.write(repo.load_blob(bid, "data"))


def _preamble(script: str) -> str:
    """The session settings at the head of a pg_restore script (before its first entry),
    without psql meta-commands (``\\restrict``)."""
    head = script.split("\n--\n-- ", 1)[0]
    return "\n".join(ln for ln in head.splitlines()
                     if ln.strip() and not ln.startswith(("\\", "--")))


class _BlobReader:
    """A file-like object over a file's blobs for ``copy_expert``: one blob per read
    (psycopg2 sends whatever ``read`` returns), progress and cancel on each."""

    def __init__(self, repo: Repository, content: list[str], on_blob, cancel: CancelToken):
        self.repo, self.todo, self.on_blob, self.cancel = repo, iter(content), on_blob, cancel
        self.error: BaseException | None = None  # psycopg2 reports it as a failed COPY

    def read(self, size: int = -1) -> bytes:
        try:
            self.cancel.check()
            bid = next(self.todo, None)
            if bid is None:
                return b""
            data = self.repo.load_blob(bid, "data")
            self.on_blob(len(data))
            return data
        except BaseException as e:
            self.error = e
            raise

    readline = read


def _copy_tables(repo: Repository, tables: list[_Table], settings: str, connect,
                 jobs: int, on_bytes: Callable[[int], None], cancel: CancelToken,
                 fault: Callable[[], None]) -> int:
    """Each table's COPY on one of ``jobs`` connections, largest first. The first error
    (a bad blob, a refused row, a cancel) stops the others at their next blob; every
    COPY that did not finish is rolled back. Returns the bytes sent."""
    import psycopg2

    todo = sorted(tables, key=lambda t: -t.size)
    lock = threading.Lock()
    state = {"sent": 0, "next": 0, "faulted": False}
    errors: list[BaseException] = []
    stop = CancelToken()

    emitting = threading.Lock()  # progress callbacks one at a time, in order

    def on_blob(n: int) -> None:
        with emitting:
            state["sent"] += n
            if not state["faulted"]:
                state["faulted"] = True
                fault()
            on_bytes(state["sent"])

    def worker() -> None:
        conn = None
        try:
            conn = connect()
            conn.autocommit = False
            with conn.cursor() as cur:
                if settings:
                    cur.execute(settings)
            conn.commit()
            while not stop.cancelled:
                with lock:
                    if state["next"] >= len(todo):
                        return
                    table = todo[state["next"]]
                    state["next"] += 1
                reader = _BlobReader(repo, table.content, on_blob, stop)
                try:
                    with conn.cursor() as cur:
                        cur.copy_expert(table.copy, reader, size=READ_SIZE)
                    conn.commit()
                except BaseException as e:
                    with contextlib.suppress(psycopg2.Error):
                        conn.rollback()
                    e = reader.error or e  # the COPY ended by our read, not the server
                    if isinstance(e, Cancelled) and stop.cancelled and not cancel.cancelled:
                        return  # stopped by another table's error
                    if isinstance(e, Cancelled):
                        raise e from None
                    if isinstance(e, EngineError):  # a blob that fails its check, named
                        e.args = (f"table {table.label} ({table.name} of the dump): {e}",)
                        raise e from None
                    if isinstance(e, psycopg2.Error):
                        raise RestoreFailed(f"data of {table.label}", _pg_text(e)) from None
                    raise e
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            with lock:
                errors.append(e)
            stop.cancel()
        finally:
            if conn is not None:
                conn.close()

    def watch_cancel() -> None:
        while not stop.cancelled:
            if cancel.wait(0.2):
                stop.cancel()

    threads = [threading.Thread(target=worker, name=f"restore-copy-{i}", daemon=True)
               for i in range(max(1, min(jobs, len(todo))))]
    watcher = threading.Thread(target=watch_cancel, name="restore-copy-cancel", daemon=True)
    for t in threads:
        t.start()
    watcher.start()
    try:
        for t in threads:
            t.join()
    finally:
        stop.cancel()
        watcher.join()
    if errors:
        cancel.check()  # cancelled on request: Cancelled, whatever a COPY said
        real = [e for e in errors if not isinstance(e, Cancelled)]
        raise (real or errors)[0]
    cancel.check()
    return state["sent"]


def _pg_text(e: Exception) -> str:
    return (getattr(e, "pgerror", None) or str(e)).strip()


READ_SIZE = 1024 * 1024


def restore_directory(repo: Repository, snap: dict, tool: str, base: list[str], env: dict,
                      folder: str, connect, on_bytes: Callable[[int], None],
                      cancel: CancelToken, fault: Callable[[], None],
                      jobs: int | None = None) -> int:
    """Restore a directory-format snapshot in sections without staging its table data
    (see above). ``base`` is ``[tool, --exit-on-error, .., -d DB]``; ``connect()`` opens a
    connection to that database; ``folder`` is a scratch folder of this restore (the
    caller removes it). Returns the bytes of table data sent."""
    jobs = jobs or post_jobs()
    os.makedirs(folder, mode=0o700, exist_ok=True)
    files = _dump_files(repo, snap)
    if "toc.dat" not in files:
        raise EngineError(f"snapshot {snap['id'][:8]}: the directory-format dump has no "
                          "toc.dat")
    _write_file(repo, files["toc.dat"], os.path.join(folder, "toc.dat"))
    cancel.check()
    full = _listing(tool, folder, [], env)
    pre, data, post = split_lists(full, _listing(tool, folder, ["--section=pre-data"], env),
                                  _listing(tool, folder, ["--section=data"], env))
    tables: list[_Table] = []
    rest: list[str] = []
    for line in data:
        m = _ENTRY.match(line)
        name = f"{m.group(1)}.dat" if m else ""
        if m and _is_table_data(m.group(2)) and name in files:
            node = files[name]
            tables.append(_Table(int(m.group(1)), line, name, int(node.get("size", 0)),
                                 list(node.get("content", []))))
        else:
            rest.append(line)
    for t in tables:  # empty stand-ins: pg_restore prints each COPY over them
        open(os.path.join(folder, t.name), "wb").close()

    def write_list(name: str, lines: list[str]) -> str:
        path = os.path.join(folder, name)
        with open(path, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        return path

    settings = ""
    if tables:
        proc = subprocess.run([tool, "-f", "-", "-L", write_list("copy.list",
                                                                  [t.line for t in tables]),
                               folder], capture_output=True, env=env)
        if proc.returncode != 0:
            raise RestoreFailed("table of contents", proc.stderr.decode("utf-8", "replace"))
        script = proc.stdout.decode("utf-8", "replace")
        copies = _COPY.findall(script)
        if len(copies) != len(tables):
            raise EngineError(f"snapshot {snap['id'][:8]}: pg_restore printed {len(copies)} "
                              f"COPY statements for {len(tables)} tables")
        for t, stmt in zip(tables, copies, strict=True):
            t.copy = stmt
        settings = _preamble(script)
    _run([*base, "-L", write_list("pre.list", pre), folder], env, "pre-data", cancel)
    sent = _copy_tables(repo, tables, settings, connect, jobs, on_bytes, cancel, fault)
    if rest:
        sent_already = {t.name for t in tables} | {"toc.dat"}
        for name, node in files.items():  # large objects' (and any compressed) files
            if name not in sent_already:
                _write_file(repo, node, os.path.join(folder, name))
                cancel.check()
        _run([*base, "-L", write_list("rest.list", rest), folder], env, "data", cancel)
    if post:
        _run([*base, f"--jobs={jobs}", "-L", write_list("post.list", post), folder], env,
             "post-data", cancel)
    return sent
