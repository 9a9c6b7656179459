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

import os
import re
import subprocess
import tempfile
from collections.abc import Callable

from engine.errors import EngineError
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

