"""The PostgreSQL logical source: pg_dump streamed into the repository.

``pg_dump --format=custom --compress=0`` writes to a pipe; the stream is cut by
FastCDC as it arrives, so unchanged tables dedup across days, and it is never
staged whole in memory or on disk. The cluster's roles and tablespaces
(``pg_dumpall --globals-only``) are saved beside each dump. A pg_dump that
exits non-zero, or is killed, fails the backup: no snapshot is written, and
the blobs already stored are only unreferenced garbage for prune.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyfastcdc

from engine.errors import EngineError
from engine.events import CancelToken
from engine.repo.repository import DATA, TREE, BlobWriter, Repository
from engine.repo.tree import encode_tree, name_fields
from engine.sources.basebackup import enlarge_pipe
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


@contextlib.contextmanager
def _killed_on_cancel(proc: subprocess.Popen, cancel: CancelToken | None) -> Iterator[None]:
    """While the body runs, a cancel request kills ``proc`` at once: its reader may be
    blocked on a pipe that the process, waiting on a table lock, never writes to."""
    if cancel is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.is_set() and proc.poll() is None:
            if cancel.wait(0.2):
                if not done.is_set():
                    proc.kill()
                return

    watcher = threading.Thread(target=watch, daemon=True, name="pg_dump-cancel")
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join(timeout=1)


def dump_database(
    repo: Repository,
    writer: BlobWriter,
    t: PgTarget,
    progress,
    cancel: CancelToken,
    facts: dict | None = None,
) -> DumpResult:
    """``facts``: the server's (``server_facts``), when the caller has them already."""
    facts = facts or server_facts(t)  # also proves we can connect, with a clear error if not
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
            enlarge_pipe(proc.stdout)  # pg_dump writes on while we cut and seal (1.3x faster)
            with _killed_on_cancel(proc, cancel):  # a pg_dump waiting on a lock writes nothing
                for chunk in cdc.cut_stream(proc.stdout):
                    if not stream and bytes(chunk.data[:5]) != b"PGDMP":
                        raise EngineError(f"pg_dump of {t.where} did not write a custom "
                                          "archive")
                    stream.append(writer.save(DATA, chunk.data))
                    total += chunk.length
                    progress(total, facts["database_size"])
                    cancel.check()
                rc = proc.wait()
            cancel.check()  # killed on request: cancelled, not "pg_dump failed"
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
    facts: dict | None = None,
) -> tuple[str, DumpResult]:
    """pg_dump -Fd -j N: each file is taken into the repository while pg_dump writes it
    (read as it grows, cut and sealed as the custom format's stream is, on up to N + 1
    threads) and deleted once pg_dump has closed it and it is read to its end, so at
    most the files being written sit on disk. ``toc.dat`` is written last, and taken
    when pg_dump has exited."""
    facts = facts or server_facts(t)
    tool, version = find_tool("pg_dump", facts["server_major"])
    mn, avg, mx, seed = repo.chunker_params()
    os.makedirs(scratch, exist_ok=True)
    outdir = os.path.join(scratch, f"pgdump-{uuid.uuid4().hex}")
    start = time.monotonic()
    taken: dict[str, tuple[list[str], int]] = {}
    lock = threading.Lock()
    busy: set[str] = set()  # files pg_dump holds open, as of the last look
    done = threading.Event()  # pg_dump has exited: nothing grows any more
    stop = threading.Event()  # a failure or a cancel: the takers give up
    emitting = threading.Lock()
    total = 0

    class Growing:
        """A file pg_dump may still be writing: reads wait at its end until it grows or
        pg_dump has closed it (then one last read finds what came before the close)."""

        def __init__(self, name: str):
            self.name = name
            self.f = open(os.path.join(outdir, name), "rb", buffering=0)  # noqa: SIM115
            self.closed_seen = False

        def readinto(self, buf) -> int:
            while True:
                if stop.is_set() or cancel.cancelled:
                    cancel.check()
                    raise EngineError("stopped")
                n = self.f.readinto(buf)
                if n or self.closed_seen:
                    return n or 0
                with lock:
                    open_now = self.name in busy and not done.is_set()
                if not open_now:
                    self.closed_seen = True
                    continue
                time.sleep(0.005)

    def take(name: str) -> None:
        nonlocal total
        cdc = pyfastcdc.FastCDC(avg, min_size=mn, max_size=mx, seed=seed)
        content, size = [], 0
        src = Growing(name)
        try:
            for chunk in cdc.cut_stream(src):
                content.append(writer.save(DATA, chunk.data))
                size += chunk.length
                with emitting:  # progress events one at a time, in order
                    total += chunk.length
                    progress(total, facts["database_size"])
        finally:
            src.f.close()
        os.unlink(os.path.join(outdir, name))
        with lock:
            taken[name] = (content, size)

    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=max(1, jobs) + 1,
                              thread_name_prefix="pg_dump-take")
    started: dict[str, object] = {}
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
                    now_busy = set() if finished else _open_files(proc.pid, outdir)
                    with lock:
                        busy.clear()
                        busy.update(now_busy)
                    if finished:
                        done.set()
                    for name in names:
                        if name in started or (name == "toc.dat" and not finished):
                            continue  # toc.dat: written last, complete when pg_dump is done
                        started[name] = pool.submit(take, name)
                    for fut in started.values():
                        if fut.done() and fut.exception() is not None:
                            raise fut.exception()
                    cancel.check()
                    if finished:
                        break
                    time.sleep(0.05)
                rc = proc.wait()
                _check_exit(t, rc, err)
                for fut in started.values():
                    fut.result()
                cancel.check()  # asked while the last files were read
            except BaseException:
                stop.set()
                proc.kill()
                proc.wait()
                raise
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
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


# ------------------------------------------------------- roles a dump names
# pg_restore (pre- and post-data sections) prints every entry of an archive's table
# of contents under a header ("-- Name: ...; Type: ...; Schema: ...; Owner: ..."); the roles an
# entry needs are read from its SQL with a small tokenizer (quoted identifiers,
# strings and dollar quotes are single tokens, so names inside them never match).

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>--[^\n]*|/\*.*?\*/)
  | (?P<ident>"(?:[^"]|"")*")
  | (?P<estr>[Ee]'(?:[^'\\]|\\.|'')*')
  | (?P<str>'(?:[^']|'')*')
  | (?P<dollar>\$(?P<tag>(?:[A-Za-z_][A-Za-z0-9_]*)?)\$.*?\$(?P=tag)\$)
  | (?P<word>[^\W\d][\w$]*)
  | (?P<num>\d+(?:\.\d+)?)
  | (?P<punct>[(),;.])
  | (?P<other>.)
""", re.S | re.X)

_HEADER = re.compile(r"^-- Name: (?P<name>.*); Type: (?P<type>.*?); Schema: (?P<schema>.*?); "
                     r"Owner: (?P<owner>.*?)(?:; Tablespace: .*)?$", re.M)

# role specifications that are not roles of the cluster
_NOT_ROLES = {"PUBLIC", "CURRENT_USER", "SESSION_USER", "CURRENT_ROLE", "GROUP"}


@dataclass(frozen=True)
class Tok:
    kind: str  # ident (quoted), word (bare), str, punct, other
    text: str

    @property
    def up(self) -> str:
        return self.text.upper() if self.kind == "word" else ""

    @property
    def name(self) -> str:
        """The identifier or string this token stands for."""
        if self.kind == "ident":
            return self.text[1:-1].replace('""', '"')
        if self.kind == "str":
            return self.text[1:-1].replace("''", "'")
        return self.text


def sql_statements(script: str) -> list[list[Tok]]:
    """The statements of a script as token lists; psql meta-commands (``\\connect``,
    ``\\restrict``) and comments are dropped."""
    script = "\n".join(ln for ln in script.splitlines() if not ln.startswith("\\"))
    out: list[list[Tok]] = []
    cur: list[Tok] = []
    depth = 0
    for m in _TOKEN.finditer(script):
        kind = m.lastgroup
        if kind in ("ws", "comment"):
            continue
        kind = {"estr": "str", "dollar": "str"}.get(kind, kind)
        tok = Tok(kind, m.group())
        if tok.text == "(" and kind == "punct":
            depth += 1
        elif tok.text == ")" and kind == "punct":
            depth = max(0, depth - 1)
        if tok.text == ";" and kind == "punct" and depth == 0:
            if cur:
                out.append(cur)
            cur = []
            continue
        cur.append(tok)
    if cur:
        out.append(cur)
    return out


def statement_text(toks: list[Tok]) -> str:
    out = ""
    for t in toks:
        if out and not (t.text in (",", ")", ".") or out.endswith(("(", "."))):
            out += " "
        out += t.text
    return out + ";"


def _top_level(toks: list[Tok]) -> list[int]:
    """Indexes of the tokens outside parentheses."""
    depth, out = 0, []
    for i, t in enumerate(toks):
        if t.kind == "punct" and t.text == "(":
            depth += 1
        elif t.kind == "punct" and t.text == ")":
            depth -= 1
        elif depth == 0:
            out.append(i)
    return out


def _role_list(toks: list[Tok], i: int) -> list[str]:
    """Comma-separated role specifications from toks[i] on."""
    roles = []
    while i < len(toks):
        t = toks[i]
        if t.up == "GROUP":  # GRANT .. TO GROUP x
            i += 1
            continue
        if t.kind == "ident" or (t.kind == "word" and t.up not in _NOT_ROLES):
            roles.append(t.name)
        elif not (t.kind == "word" and t.up in _NOT_ROLES):
            break
        i += 1
        if i < len(toks) and toks[i].kind == "punct" and toks[i].text == ",":
            i += 1
            continue
        break
    return roles


def _after(toks: list[Tok], top: list[int], *words: str, last: bool = False) -> int | None:
    """Index just after the (first or last) top-level run of ``words``."""
    found = None
    for n, i in enumerate(top):
        if all(n + k < len(top) and top[n + k] == i + k and toks[i + k].up == w
               for k, w in enumerate(words)):
            found = i + len(words)
            if not last:
                return found
    return found


def statement_roles(toks: list[Tok]) -> list[str]:
    """The roles one statement of a pg_dump archive or a globals script names."""
    if not toks:
        return []
    top = _top_level(toks)
    head = toks[0].up
    roles: list[str] = []
    if head == "SET" and len(toks) >= 3 and toks[1].up in ("SESSION", "ROLE"):
        who = toks[-1]
        if who.kind in ("ident", "str") or (who.kind == "word" and who.up not in
                                            _NOT_ROLES | {"DEFAULT", "NONE", "AUTHORIZATION"}):
            roles.append(who.name)
        return roles
    if head == "ALTER" and len(toks) > 2 and toks[1].up == "DEFAULT":
        at = _after(toks, top, "FOR", "ROLE") or _after(toks, top, "FOR", "USER")
        if at is not None:
            roles += _role_list(toks, at)
        for i in top:
            if toks[i].up in ("GRANT", "REVOKE"):
                roles += statement_roles(toks[i:])
                break
        return roles
    if head == "GRANT":
        at = _after(toks, top, "TO", last=True)
        if at is not None:
            roles += _role_list(toks, at)
        by = _after(toks, top, "GRANTED", "BY")
        if by is not None:
            roles += _role_list(toks, by)
        if _after(toks, top, "ON") is None:  # GRANT role TO role: the granted roles too
            roles += _role_list(toks, 1)
        return roles
    if head == "REVOKE":
        at = _after(toks, top, "FROM", last=True)
        if at is not None:
            roles += _role_list(toks, at)
        return roles
    if head in ("CREATE", "ALTER") and len(toks) > 1 and toks[1].up == "POLICY":
        at = _after(toks, top, "TO")
        if at is not None:
            roles += _role_list(toks, at)
    if head == "CREATE" and _after(toks, top, "USER", "MAPPING", "FOR") is not None:
        roles += _role_list(toks, _after(toks, top, "USER", "MAPPING", "FOR"))
    at = _after(toks, top, "OWNER", "TO", last=True)
    if head == "ALTER" and at is not None:
        roles += _role_list(toks, at)
    return roles


@dataclass(frozen=True)
class RoleUse:
    """One object of a dump that needs a role."""

    role: str
    what: str  # "owner of TABLE app.orders", "POLICY p ON app.orders", ...
    # what leaves it out: "owner" (pg_restore --no-owner), "acl" (--no-acl), "" nothing
    skip_with: str


def _describe(entry_type: str, name: str, schema: str) -> str:
    where = "" if schema in ("-", "") else schema
    if entry_type == "BLOB":
        entry_type = "LARGE OBJECT"
    if name.startswith(entry_type + " "):  # USER MAPPING's tag names its type already
        return name
    if entry_type == "POLICY" and " " in name:
        table, policy = name.split(" ", 1)
        return f"POLICY {policy} ON {where + '.' if where else ''}{table}"
    if entry_type == "DEFAULT ACL":
        return name.lower() + (f" in schema {where}" if where else "")
    if entry_type == "ACL":
        return f"privileges on {name}" + (f" in schema {where}" if where else "")
    return f"{entry_type} {where + '.' if where else ''}{name}"


def archive_role_uses(schema_sql: str) -> list[RoleUse]:
    """Every (role, object) pair in the SQL text pg_restore prints for an archive."""
    uses: dict[tuple[str, str], RoleUse] = {}
    marks = list(_HEADER.finditer(schema_sql))
    for n, m in enumerate(marks):
        body = schema_sql[m.end(): marks[n + 1].start() if n + 1 < len(marks) else None]
        etype, name, schema = m.group("type"), m.group("name"), m.group("schema")
        obj = _describe(etype, name, schema)
        acl = etype in ("ACL", "DEFAULT ACL")
        for toks in sql_statements(body):
            top = _top_level(toks)
            owner_at = _after(toks, top, "OWNER", "TO", last=True)
            owner = (toks[0].up == "ALTER" and owner_at is not None and not acl
                     and toks[1].up != "DEFAULT")
            for role in statement_roles(toks):
                if owner:
                    use = RoleUse(role, f"owner of {obj}", "owner")
                else:
                    use = RoleUse(role, obj, "acl" if acl else "")
                uses.setdefault((use.role, use.what), use)
    return list(uses.values())


# ------------------------------------------------------------- saved globals
@dataclass
class Globals:
    """pg_dumpall --globals-only, statement by statement, grouped by role."""

    roles: dict[str, list[list[Tok]]] = field(default_factory=dict)  # CREATE/ALTER/COMMENT
    memberships: list[tuple[str, str, list[Tok]]] = field(default_factory=list)  # role, member
    other: list[list[Tok]] = field(default_factory=list)  # tablespaces and their grants

    @classmethod
    def parse(cls, script: str) -> Globals:
        g = cls()
        for toks in sql_statements(script):
            top = _top_level(toks)
            head = toks[0].up
            role_at = None
            if head in ("CREATE", "ALTER") and len(toks) > 2 and toks[1].up in ("ROLE", "USER"):
                role_at = 2
            elif head == "COMMENT" and len(toks) > 3 and toks[2].up == "ROLE":
                role_at = 3
            elif head == "SECURITY":
                at = _after(toks, top, "ON", "ROLE")
                role_at = at
            if role_at is not None and role_at < len(toks):
                g.roles.setdefault(toks[role_at].name, []).append(toks)
            elif head == "GRANT" and _after(toks, top, "ON") is None:
                to = _after(toks, top, "TO", last=True)
                members = _role_list(toks, to) if to is not None else []
                for granted in _role_list(toks, 1):
                    for member in members:
                        g.memberships.append((granted, member, toks))
            elif head != "SET" and not (head == "SELECT"):
                g.other.append(toks)
        return g


    def role_facts(self, role: str) -> dict:
        """Attributes, password, settings and comment of one role, as its statements say."""
        facts: dict = {"attributes": [], "password": None, "settings": {}, "comment": None}
        for toks in self.roles.get(role, []):
            head = toks[0].up
            if head == "ALTER" and len(toks) > 3 and toks[3].up == "WITH":
                i = 4
                while i < len(toks):
                    word = toks[i].up
                    if word == "PASSWORD" and i + 1 < len(toks):
                        facts["password"] = toks[i + 1].text
                        i += 2
                        continue
                    if word in ("VALID", "CONNECTION") and i + 2 < len(toks):
                        facts["attributes"].append(f"{word} {toks[i + 1].up} {toks[i + 2].text}")
                        i += 3
                        continue
                    facts["attributes"].append(toks[i].text)
                    i += 1
            elif head == "ALTER" and len(toks) > 3 and toks[3].up in ("SET", "RESET"):
                rest = toks[4:]
                cut = next((n for n, t in enumerate(rest) if t.up == "TO"
                            or t.text == "="), len(rest))
                name = "".join(t.text for t in rest[:cut])
                facts["settings"][name] = statement_text(rest[cut + 1:])[:-1]
            elif head == "COMMENT":
                facts["comment"] = toks[-1].name
        return facts

    def changes_against(self, current: Globals, password_readable: bool) -> list[str]:
        """What applying these globals would change on a server whose globals are
        ``current``: one line per change, never a password or its hash."""
        out: list[str] = []
        for role in self.roles:
            saved = self.role_facts(role)
            attrs = " ".join(a for a in saved["attributes"])
            if role not in current.roles:
                out.append(f"role {role}: would be created ({attrs}"
                           + (", with the password saved at backup" if saved["password"]
                              else "") + ")")
                continue
            now = current.role_facts(role)
            flip = {a.upper().removeprefix("NO"): a for a in now["attributes"]}
            for a in saved["attributes"]:
                was = flip.get(a.upper().removeprefix("NO"))
                if was is None or was.upper() != a.upper():
                    out.append(f"role {role}: {was or 'unset'} -> {a}")
            if saved["password"] and saved["password"] != now["password"]:
                if now["password"] or password_readable:
                    out.append(f"role {role}: password would be set back to the one saved "
                               "at backup")
                else:
                    out.append(f"role {role}: password would be set to the one saved at "
                               "backup (the current one cannot be read to compare)")
            for name, value in saved["settings"].items():
                if now["settings"].get(name) != value:
                    cur = now["settings"].get(name)
                    out.append(f"role {role}: setting {name} -> {value}"
                               + (f" (now {cur})" if cur is not None else " (now unset)"))
            if saved["comment"] is not None and saved["comment"] != now["comment"]:
                out.append(f"role {role}: comment would change")
        have = {(g, m) for g, m, _ in current.memberships}
        for granted, member, _ in self.memberships:
            if (granted, member) not in have:
                out.append(f"role {member}: would become a member of {granted}")
        texts = {statement_text(t) for t in current.other}
        for toks in self.other:
            text = statement_text(toks)
            if text not in texts:
                out.append(f"would run: {mask_passwords(text)}")
        return out


def mask_passwords(text: str) -> str:
    """Never show a password or its hash."""
    return re.sub(r"(PASSWORD\s+)(E?'(?:[^']|'')*')", r"\1'***'", text, flags=re.I)
