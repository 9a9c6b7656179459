"""Point-in-time recovery of a ``[[cluster]]``: the plan and the restore.

``plan`` decides, before anything is written, which base backup and which
archived WAL reach a target (a time, an LSN, a transaction id, a named restore
point, or ``immediate``: the end of the base backup): the newest base backup
whose stop point is before the target, the WAL from its start segment to the
segment that reaches the target (following timeline switches through the
archived ``.history`` files), whether each segment is present locally and in
every replica (one LIST per place), the gaps, the newest point the WAL reaches
without a gap, and an estimate of the time a restore takes. A target past that
point, or before the oldest base backup, is refused with the point named.

``restore`` writes the base backup into an absent or empty data directory (or,
with ``replace``, moves the cluster's own stopped data directory aside to
``DIR.before-pitr-<time>`` first, never deleting it), writes the recovery
settings into ``postgresql.auto.conf`` (``restore_command`` through this
tool's ``wal-fetch``, a segment already fetched ahead into the spool renamed by
sh alone, engine/walspool.py; the target, ``recovery_target_action = 'promote'``,
``archive_mode = off`` so a copy never archives into the source's WAL, while a
recovery in place keeps archiving: its new timeline belongs in the archive) and
``recovery.signal``; with ``start`` it starts the spool's prefetcher on the
plan's segments before the base backup is written, starts the server as the
data directory's owner on a private socket folder, waits for promotion and
reports the point recovery stopped at.
"""

from __future__ import annotations

import bisect
import os
import pwd
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import walspool
from engine.errors import Cancelled, EngineError, NotFound, UsageError
from engine.events import CancelToken, Event, EventCallback, ignore
from engine.ops.resolve import parse_time
from engine.repo.locks import pid_alive

if TYPE_CHECKING:
    from engine.facade import Engine

TARGET_KINDS = ("time", "lsn", "xid", "name", "immediate")
SEG_SIZE = 16 * 1024 * 1024
JOB_TARGET = "pitr:"  # restore jobs of PITR are named pitr:<cluster> (estimates read them)
LOG_TAIL = 15
PREFETCH_NICE = 10  # the prefetcher restore pitr starts runs this much nicer (start_prefetcher)


class PitrRefused(EngineError):
    """The target cannot be reached with the base backups and WAL there are (exit 1)."""


# ---------------------------------------------------------------- LSNs, segments
def parse_lsn(text: str) -> int:
    """``0/3000028`` -> the 64-bit position."""
    m = re.fullmatch(r"\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\s*", str(text))
    if not m:
        raise UsageError(f"cannot read LSN {text!r}: write it as PostgreSQL does, e.g. "
                         "0/3000028")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segment_name(timeline: int, segno: int, seg_size: int = SEG_SIZE) -> str:
    per = 0x100000000 // seg_size
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def parse_segment(name: str, seg_size: int = SEG_SIZE) -> tuple[int, int] | None:
    """``000000010000000000000003`` -> (timeline 1, segment number 3); None for others."""
    if not re.fullmatch(r"[0-9A-F]{24}", name):
        return None
    per = 0x100000000 // seg_size
    return int(name[:8], 16), int(name[8:16], 16) * per + int(name[16:24], 16)


def parse_history(text: str) -> list[tuple[int, int]]:
    """A timeline's ``.history`` file: [(parent timeline, switch LSN)], oldest first."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            out.append((int(parts[0]), parse_lsn(parts[1])))
        except (IndexError, ValueError, UsageError):
            raise EngineError(f"malformed timeline history line {line[:80]!r}") from None
    return out


# ----------------------------------------------------------------------- target
@dataclass(frozen=True)
class Target:
    """Where recovery stops. value: an aware datetime (time), an int (lsn, xid), a str
    (name), None (immediate: as soon as the base backup is consistent)."""

    kind: str
    value: Any = None
    inclusive: bool = True

    @classmethod
    def parse(cls, kind: str, text: str | None, tz: tzinfo, inclusive: bool = True) -> Target:
        if kind not in TARGET_KINDS:
            raise UsageError(f"unknown recovery target {kind!r} (known: "
                             f"{', '.join(TARGET_KINDS)})")
        if kind == "immediate":
            return cls(kind, None, inclusive)
        text = (text or "").strip()
        if not text:
            raise UsageError(f"--target-{kind} needs a value")
        if kind == "time":
            return cls(kind, parse_time(text, tz), inclusive)
        if kind == "lsn":
            return cls(kind, parse_lsn(text), inclusive)
        if kind == "xid":
            if not text.isdigit() or int(text) < 3 or int(text) >= 2**64:
                raise UsageError(f"transaction id {text!r}: a whole number of 3 or more")
            return cls(kind, int(text), inclusive)
        if len(text) >= 64 or "\n" in text:
            raise UsageError(f"restore point name {text[:80]!r}: up to 63 characters, one line")
        return cls(kind, text, inclusive)

    @property
    def text(self) -> str:
        if self.kind == "time":
            return self.value.astimezone(UTC).isoformat()
        if self.kind == "lsn":
            return format_lsn(self.value)
        return "" if self.value is None else str(self.value)

    def describe(self) -> str:
        return "immediate (the end of the base backup)" if self.kind == "immediate" \
            else f"{self.kind} {self.text}"

    def settings(self) -> list[tuple[str, str]]:
        """The recovery_target* settings."""
        if self.kind == "immediate":
            return [("recovery_target", "immediate")]
        if self.kind == "time":
            value = self.value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
        else:
            value = self.text
        return [(f"recovery_target_{self.kind}", value),
                ("recovery_target_inclusive", "true" if self.inclusive else "false")]

    def as_json(self) -> dict:
        return {"kind": self.kind, "value": self.text or None, "inclusive": self.inclusive}


# ------------------------------------------------------------------------ plan
@dataclass
class Place:
    """One copy of the WAL archive: the local repository or a replica."""

    name: str
    reads: bool  # the restore reads WAL from it (wal-fetch's order)
    error: str = ""
    objects: int = 0
    present: int = 0  # of the needed segments
    missing: list[str] = field(default_factory=list)  # needed segments it lacks

    def as_json(self) -> dict:
        return {"name": self.name, "reads": self.reads, "error": self.error or None,
                "objects": self.objects, "present": self.present,
                "complete": not self.error and not self.missing,
                "missing": self.missing[:100], "missing_count": len(self.missing)}


@dataclass
class PitrPlan:
    source: str  # the [[cluster]] name
    target: Target
    replica: str | None  # read from this replica alone (no local repository needed)
    snapshot: dict  # the base backup's snapshot record
    segments: list[str]  # the WAL segments recovery needs, in order
    timelines: list[dict]  # [{timeline, parent, switch_lsn}] switches on the way
    places: list[Place]
    gaps: list[str]  # WAL missing from every place the restore reads
    reachable: dict  # the newest point: {wal, lsn, time}
    estimate_seconds: float | None
    estimate_basis: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def feasible(self) -> bool:
        return not self.problems

    @property
    def postgres(self) -> dict:
        return self.snapshot.get("postgres") or {}

    def check(self) -> None:
        """PitrRefused naming the first problem, unless the plan is feasible."""
        if self.problems:
            raise PitrRefused(self.problems[0])

    def as_json(self) -> dict:
        pg = self.postgres
        return {
            "source": self.source,
            "target": self.target.as_json(),
            "replica": self.replica,
            "feasible": self.feasible,
            "problems": self.problems,
            "notes": self.notes,
            "base_backup": {
                "id": self.snapshot["id"], "time": self.snapshot.get("time"),
                "system_identifier": pg.get("system_identifier"),
                "timeline": pg.get("timeline"), "start_lsn": pg.get("start_lsn"),
                "stop_lsn": pg.get("stop_lsn"), "start_time": pg.get("start_time"),
                "stop_time": pg.get("stop_time"), "server_version": pg.get("server_version"),
            },
            "wal": {"first": self.segments[0] if self.segments else None,
                    "last": self.segments[-1] if self.segments else None,
                    "segments": len(self.segments)},
            "timeline_switches": self.timelines,
            "places": [p.as_json() for p in self.places],
            "gaps": self.gaps,
            "newest_reachable": self.reachable,
            "estimate_seconds": self.estimate_seconds,
            "estimate_basis": self.estimate_basis,
        }


def _wal():
    from engine import wal

    return wal


def _cluster_kind() -> str:
    from engine.sources.cluster import ClusterSource

    return ClusterSource.kind


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None


def _stop_time(snap: dict) -> datetime:
    text = (snap.get("postgres") or {}).get("stop_time") or snap["time"]
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def base_backups(engine: Engine, cluster: str) -> list[dict]:
    """The complete base backups of a cluster, oldest stop point first."""
    repo = engine.repo()
    snaps = []
    for info in engine.snapshots(source=cluster, kind=_cluster_kind()):
        if not info.complete:
            continue
        snap = repo.load_snapshot(info.id)
        pg = snap.get("postgres")
        if isinstance(pg, dict) and pg.get("stop_lsn") and pg.get("start_wal"):
            snaps.append(snap)
    snaps.sort(key=lambda s: (parse_lsn(s["postgres"]["stop_lsn"]), _stop_time(s)))
    return snaps


def choose_base(snaps: list[dict], target: Target, cluster: str) -> dict:
    """The newest base backup whose stop point is at or before the target."""
    if not snaps:
        raise NotFound(f"no base backup of cluster {cluster!r}: take one with "
                       f"'backup-tui backup cluster {cluster}'")
    if target.kind == "time":
        ok = [s for s in snaps if _stop_time(s) <= target.value]
        if not ok:
            first = min(snaps, key=_stop_time)
            raise PitrRefused(
                f"target {target.text} is before the oldest base backup of {cluster!r} "
                f"({first['id'][:8]}, consistent at {_stop_time(first).isoformat()})")
        return max(ok, key=_stop_time)
    if target.kind == "lsn":
        ok = [s for s in snaps if parse_lsn(s["postgres"]["stop_lsn"]) <= target.value]
        if not ok:
            raise PitrRefused(
                f"target LSN {target.text} is before the oldest base backup of {cluster!r} "
                f"({snaps[0]['id'][:8]}, consistent at LSN {snaps[0]['postgres']['stop_lsn']})")
        return ok[-1]
    return snaps[-1]


class _Archive:
    """The WAL objects of a cluster as each place lists them (one LIST per place)."""

    def __init__(self, engine: Engine, cluster: str, replica: str | None, seg_size: int):
        self.engine, self.cluster, self.seg_size = engine, cluster, seg_size
        self.places: list[Place] = []
        self.backends: dict[str, Any] = {}
        self.names: dict[str, set[str]] = {}  # place -> object names
        wal = _wal()
        here = engine.replica_name or "local"
        order: list[tuple[str, Any]] = [(here, engine.backend)]
        if engine.replica_name:  # the local repository may still be there: show it
            from engine.storage.local import LocalBackend

            order.append(("local", LocalBackend(engine.config.repo_path)))
        order += [(r.name, None) for r in engine.config.replicas if r.name != here]
        for name, backend in order:
            # wal-fetch reads the local repository, then each replica in order; with
            # --replica only that one
            place = Place(name, name == replica if replica else True)
            self.places.append(place)
            objs: list = []
            try:
                if backend is None:
                    backend = engine.replica_backend(name)
                if name == "local" and not engine.config.repo_path.exists():
                    place.error = f"no local repository at {engine.config.repo_path}"
                else:
                    objs = wal.list_wal(backend, cluster)
            except (EngineError, OSError) as e:
                place.error = str(e) or type(e).__name__
            self.backends[name] = backend
            self.names[name] = {o.name for o in objs}
            place.objects = len(objs)

    @property
    def reading(self) -> list[Place]:
        return [p for p in self.places if p.reads and not p.error]

    def where(self, name: str) -> str | None:
        """The first place the restore reads ``name`` from."""
        for p in self.reading:
            if name in self.names[p.name]:
                return p.name
        return None

    def header(self, name: str) -> dict:
        place = self.where(name)
        if place is None:
            raise NotFound(f"WAL {name} of cluster {self.cluster!r} is not archived")
        return _wal().wal_header(self.engine.repo(), self.backends[place], self.cluster, name)

    def read(self, name: str) -> bytes:
        place = self.where(name)
        if place is None:
            raise NotFound(f"WAL {name} of cluster {self.cluster!r} is not archived")
        wal = _wal()
        obj = wal.object_name(self.cluster, name)
        _header, body = wal.read_object(self.engine.repo().keys,
                                        self.backends[place].get(obj), obj, name)
        return body

    def segments_of(self, timeline: int) -> list[int]:
        out = set()
        for p in self.reading:
            for n in self.names[p.name]:
                seg = parse_segment(n, self.seg_size)
                if seg and seg[0] == timeline:
                    out.add(seg[1])
        return sorted(out)

    def timelines(self) -> set[int]:
        out = set()
        for p in self.reading:
            for n in self.names[p.name]:
                seg = parse_segment(n, self.seg_size)
                if seg:
                    out.add(seg[0])
                elif re.fullmatch(r"[0-9A-F]{8}\.history", n):
                    out.add(int(n[:8], 16))
        return out


def _timeline_chain(archive: _Archive, base_tli: int) -> tuple[list[tuple[int, int]],
                                                                list[dict], list[str]]:
    """[(timeline, first segment number)] from the base backup's timeline to the latest
    one that descends from it (recovery_target_timeline = 'latest'); the switches; and
    problems (a history file missing)."""
    latest = max(archive.timelines() | {base_tli})
    if latest == base_tli:
        return [(base_tli, 0)], [], []
    hist_name = f"{latest:08X}.history"
    if archive.where(hist_name) is None:
        return [(base_tli, 0)], [], [f"timeline {latest} has WAL but its history file "
                                     f"{hist_name} is not archived"]
    entries = parse_history(archive.read(hist_name).decode("utf-8", "replace"))
    ancestors = [tli for tli, _ in entries]
    if base_tli not in ancestors:
        # the newest timeline does not descend from the backup's: recovery stays on it
        return [(base_tli, 0)], [], []
    chain = [(base_tli, 0)]
    switches = []
    for i, (tli, switch) in enumerate(entries):
        if tli < base_tli or (tli != base_tli and tli not in [c[0] for c in chain]):
            continue
        child = entries[i + 1][0] if i + 1 < len(entries) else latest
        chain.append((child, switch // archive.seg_size))
        switches.append({"timeline": child, "parent": tli, "switch_lsn": format_lsn(switch),
                         "first_wal": segment_name(child, switch // archive.seg_size,
                                                   archive.seg_size)})
    return chain, switches, []


def _timeline_for(chain: list[tuple[int, int]], segno: int) -> int:
    tli = chain[0][0]
    for t, first in chain:
        if first <= segno:
            tli = t
    return tli


def plan(engine: Engine, cluster: str, target: Target, replica: str | None = None) -> PitrPlan:
    """What recovering ``cluster`` to ``target`` needs, and whether it is all there."""
    if replica and engine.replica_name != replica:
        engine.config.replica(replica)  # UsageError for an unknown one
        engine = engine.for_replica(replica)
    snaps = base_backups(engine, cluster)
    snap = choose_base(snaps, target, cluster)
    pg = snap["postgres"]
    seg_size = int(pg.get("wal_segment_size") or SEG_SIZE)
    archive = _Archive(engine, cluster, replica, seg_size)
    problems: list[str] = []
    notes: list[str] = []
    if not archive.reading:
        errors = "; ".join(f"{p.name}: {p.error}" for p in archive.places if p.error)
        raise EngineError(f"cannot list the WAL of cluster {cluster!r} anywhere"
                          + (f" ({errors})" if errors else ""))

    base_tli = int(pg.get("timeline") or 1)
    start = parse_segment(pg["start_wal"], seg_size)
    stop_seg = parse_lsn(pg["stop_lsn"]) // seg_size
    if start is None:
        raise EngineError(f"base backup {snap['id'][:8]}: malformed start_wal "
                          f"{pg['start_wal']!r}")
    start_seg = start[1]
    chain, switches, chain_problems = _timeline_chain(archive, base_tli)
    problems += chain_problems

    def name_of(segno: int) -> str:
        return segment_name(_timeline_for(chain, segno), segno, seg_size)

    # the newest segment archived on the chain, and the contiguous run from the start
    newest = start_seg
    for i, (tli, first) in enumerate(chain):
        # a timeline's segments from its start to the next one's switch (later ones
        # belong to the branch that was left)
        until = chain[i + 1][1] if i + 1 < len(chain) else None
        segs = [s for s in archive.segments_of(tli) if s >= first
                and (until is None or s < until)]
        if segs:
            newest = max(newest, segs[-1])
    reach = start_seg - 1
    while reach + 1 <= newest and archive.where(name_of(reach + 1)) is not None:
        reach += 1
    holes = [name_of(s) for s in range(reach + 1, newest + 1)
             if archive.where(name_of(s)) is None]

    # the identity of the archive against the base backup's
    probe = name_of(reach) if reach >= start_seg else None
    if probe is None:
        existing = [n for p in archive.reading for n in sorted(archive.names[p.name])
                    if parse_segment(n, seg_size)]
        probe = existing[-1] if existing else None
    if probe is not None:
        ident = str(archive.header(probe).get("system_identifier", ""))
        mine = str(pg.get("system_identifier", ""))
        if ident and mine and ident != mine:
            raise PitrRefused(
                f"base backup {snap['id'][:8]} is of database system {mine} but the WAL "
                f"archive of cluster {cluster!r} holds WAL of system {ident} ({probe}): "
                "they are different clusters")

    reachable: dict = {"wal": None, "lsn": None, "time": None}
    reach_time: float | None = None
    if reach >= start_seg:
        reach_time = archive.header(name_of(reach)).get("archived")
        reachable = {"wal": name_of(reach), "lsn": format_lsn((reach + 1) * seg_size),
                     "time": _iso(reach_time)}
    point = (f"{reachable['time']} (LSN {reachable['lsn']}, WAL {reachable['wal']})"
             if reachable["wal"] else "none: the base backup's first WAL segment "
             f"{name_of(start_seg)} is not archived")
    gap_words = f"; WAL {holes[0]} is missing" if holes else ""

    # the segment that reaches the target
    end_seg = reach
    if target.kind == "immediate":
        end_seg = stop_seg
    elif target.kind == "lsn":
        end_seg = target.value // seg_size
    elif target.kind == "time":
        end_seg = _first_archived_at(archive, name_of, start_seg, reach, target.value)
        if end_seg is None:
            end_seg = max(reach + 1, stop_seg)
            problems.append(f"target {target.text} is past the newest reachable point "
                            f"{point}{gap_words}")
    else:  # where the xid or name is, only replay finds out: all the WAL there is
        end_seg = newest
        notes.append(f"target {target.describe()}: recovery replays all the WAL there is, from "
                     f"base backup {snap['id'][:8]} (consistent at "
                     f"{_stop_time(snap).isoformat()}); the target must come after that")
    end_seg = max(end_seg, stop_seg)
    if not problems and end_seg > reach:
        problems.append(f"target {target.describe()} is past the newest reachable point "
                        f"{point}{gap_words}" if target.kind in ("time", "lsn", "immediate")
                        else f"target {target.describe()} cannot be reached safely: the "
                        f"WAL reaches {point} without a gap{gap_words}")

    segments = [name_of(s) for s in range(start_seg, end_seg + 1)]
    gaps = [n for n in segments if archive.where(n) is None]
    for extra in holes:
        if extra not in gaps:
            gaps.append(extra)
    for p in archive.places:
        if p.error:
            continue
        have = archive.names[p.name]
        p.missing = [n for n in segments if n not in have]
        p.present = len(segments) - len(p.missing)
    if gaps and not problems:
        notes.append(f"WAL missing after the target (not needed): {', '.join(gaps[:5])}")
    for tli, _first in chain[1:]:
        hist = f"{tli:08X}.history"
        if archive.where(hist) is None:
            problems.append(f"history file {hist} of timeline {tli} is not archived")
    estimate, basis = estimate_seconds(engine, cluster)
    return PitrPlan(cluster, target, replica, snap, segments, switches, archive.places,
                    gaps, reachable, estimate, basis, problems, notes)


def _first_archived_at(archive: _Archive, name_of, lo: int, hi: int,
                       when: datetime) -> int | None:
    """The first segment in lo..hi archived at or after ``when`` (binary search over the
    headers: archive times grow with the segment number); None when none is."""
    if hi < lo:
        return None
    ts = when.timestamp()
    cache: dict[int, float] = {}

    def archived(segno: int) -> float:
        if segno not in cache:
            cache[segno] = float(archive.header(name_of(segno)).get("archived") or 0.0)
        return cache[segno]

    if archived(hi) < ts:
        return None
    segnos = range(lo, hi + 1)
    i = bisect.bisect_left(segnos, ts, key=archived)
    return segnos[i]


def estimate_seconds(engine: Engine, cluster: str) -> tuple[float | None, str]:
    """How long a recovery of this cluster took before: past drills, else past PITR
    restores; (None, 'unknown') when neither exists."""
    catalog = engine.catalog.lenient()
    drills = getattr(catalog, "drills", None)
    if drills is not None:
        try:
            rows = [d for d in (drills(kind=_cluster_kind(), source=cluster, limit=20) or [])
                    if d.get("ok") and d.get("rto_seconds")]
        except Exception:  # noqa: BLE001 - an estimate never fails a plan
            rows = []
        if rows:
            values = [float(d["rto_seconds"]) for d in rows[:5]]
            return round(statistics.median(values), 1), \
                f"median RTO of the last {len(values)} drill(s)"
    try:
        jobs = catalog.jobs(500) or []
    except Exception:  # noqa: BLE001
        jobs = []
    runs = [j["ended"] - j["started"] for j in jobs
            if j.get("kind") == "restore" and j.get("target") == JOB_TARGET + cluster
            and j.get("state") == "succeeded"
            and j.get("ended")]
    if runs:
        values = runs[:5]
        return round(statistics.median(values), 1), \
            f"median of the last {len(values)} point-in-time restore(s)"
    return None, "unknown"


# --------------------------------------------------------------------- restore
def _quote_conf(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def command_python(owner: str | None) -> list[str]:
    """The argv prefix that runs this project's python as the server's OS user (who runs
    restore_command): this interpreter, else (when the owner cannot reach it, say a venv
    under /root) the system python of the same version with this interpreter's packages
    and the project on PYTHONPATH. ``$BACKUP_TUI_SERVER_PYTHON`` (a command line, say
    ``env PYTHONPATH=/opt/backup-tui /usr/bin/python3.11``) is tried first: an install that
    user can run. EngineError when the owner can run none."""
    import sysconfig

    root = str(Path(__file__).resolve().parents[2])
    choices = [[sys.executable]]
    override = os.environ.get("BACKUP_TUI_SERVER_PYTHON", "").strip()
    if override:  # an install of backup-tui that user can run (tests: a copy; README)
        choices.insert(0, shlex.split(override))
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if os.path.exists(system) and os.path.realpath(system) != os.path.realpath(sys.executable):
        paths = sysconfig.get_paths()
        pypath = os.pathsep.join(dict.fromkeys([root, paths["purelib"], paths["platlib"]]))
        choices.append(["env", f"PYTHONPATH={pypath}", system])
    if not owner or os.geteuid() != 0:
        return choices[0]
    for argv in choices:
        probe = _as_owner([*argv, "-c", "import backup_tui.cli, engine.wal"], owner)
        try:
            if subprocess.run(probe, capture_output=True, timeout=60, cwd="/",
                              env=_env()).returncode == 0:
                return argv
        except (OSError, subprocess.SubprocessError):
            continue
    raise EngineError(f"OS user {owner!r} (who runs the restored server's restore_command) "
                      f"cannot run {sys.executable} with backup-tui: install backup-tui where "
                      "that user can run it")


def restore_command(engine: Engine, cluster: str, replica: str | None,
                    python: list[str] | None = None, spool: Path | None = None,
                    prefetch: int = 0) -> str:
    """The restore_command: this python, this config, wal-fetch (from ``replica`` alone
    when one is named; with ``spool``, ``prefetch`` segments fetched ahead into it)."""
    config = engine.config.path
    if config is None:
        raise UsageError("restore pitr needs a config file (wal-fetch reads it)")
    cmd = [*(python or [sys.executable]), "-m", "backup_tui.cli", "--config",
           str(Path(config).absolute()), "wal-fetch", "%f", "%p"]
    fast = spool is not None and prefetch > 0
    if fast:
        cmd += ["--spool", str(spool), "--prefetch", str(prefetch)]
    cmd += ["--cluster", cluster]
    if replica:
        cmd += ["--replica", replica]
    line = " ".join(c if c in ("%f", "%p") else _quote_cmd(c) for c in cmd)
    # with the spool: a segment fetched ahead is renamed by sh, no Python process starts;
    # any other name, or a segment not there, goes to wal-fetch (engine/walspool.py)
    return walspool.fast_path(str(spool)) + "exec " + line if fast else line


def _quote_cmd(arg: str) -> str:
    """One argument of a command PostgreSQL runs: quoted for sh, ``%`` doubled (PostgreSQL
    replaces ``%f``, ``%p``, ``%r`` and reads ``%%`` as ``%``)."""
    return shlex.quote(arg).replace("%", "%%")


def recovery_settings(engine: Engine, plan: PitrPlan, port: int | None,
                      python: list[str] | None = None, in_place: bool = False,
                      spool: Path | None = None, prefetch: int = 0) -> list[tuple[str, str]]:
    """The settings a recovery needs. A copy never archives (archive_mode off: its new
    timeline would go into the source's archive); a recovery in place of the cluster's
    own data directory keeps the cluster's archiving, so the new timeline's history file
    and WAL are archived and a later recovery can follow the switch. With a ``spool``,
    wal-fetch fetches ``prefetch`` segments ahead into it, and recovery_end_command
    removes it when recovery ends (engine/walspool.py)."""
    out = [("restore_command", restore_command(engine, plan.source, plan.replica, python,
                                               spool, prefetch))]
    if spool is not None and prefetch > 0:
        cmd = [*(python or [sys.executable]), "-m", "engine.walspool", "remove", str(spool)]
        out.append(("recovery_end_command", " ".join(_quote_cmd(c) for c in cmd)))
    out += plan.target.settings()
    out += [("recovery_target_timeline", "latest"),
            ("recovery_target_action", "promote")]
    if not in_place:
        out.append(("archive_mode", "off"))
    if port:
        out.append(("port", str(port)))
    return out


def write_recovery(pgdata: Path, settings: list[tuple[str, str]], owner: str | None) -> None:
    """Append the settings to postgresql.auto.conf (the last value wins) and touch
    recovery.signal; a standby.signal from the source is removed."""
    auto = pgdata / "postgresql.auto.conf"
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [f"\n# --- backup-tui restore pitr, {stamp} ---"]
    lines += [f"{k} = {_quote_conf(v)}" for k, v in settings]
    with open(auto, "a") as f:
        f.write("\n".join(lines) + "\n")
    (pgdata / "standby.signal").unlink(missing_ok=True)
    signal = pgdata / "recovery.signal"
    signal.touch()
    for p in (auto, signal):
        os.chmod(p, 0o600)
        _chown(p, owner)


def _chown(path: Path, owner: str | None) -> None:
    if owner and os.geteuid() == 0:
        pw = pwd.getpwnam(owner)
        os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)


def _postmaster_alive(pgdata: Path) -> int | None:
    """The pid of a running postmaster of ``pgdata``, else None."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def _owner_of(path: Path) -> str | None:
    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (OSError, KeyError):
        return None


def _cluster_config(engine: Engine, cluster: str) -> Any | None:
    from engine.sources import registry

    src = registry.find(engine.config, _cluster_kind(), cluster)
    return src.config if src is not None else None


def prepare_target(engine: Engine, cluster: str, pgdata: Path, replace: bool) -> dict:
    """Check the data directory (absent or empty; the cluster's own only with replace and
    the server stopped, then moved aside). Returns {owner, moved_aside, existed, python}."""
    pgdata = Path(os.path.abspath(pgdata))
    cfg = _cluster_config(engine, cluster)
    own = Path(os.path.abspath(cfg.pgdata)) if cfg is not None and getattr(cfg, "pgdata", "") \
        else None
    is_own = own is not None and (pgdata == own or (pgdata.exists() and own.exists()
                                                    and pgdata.resolve() == own.resolve()))
    owner = None
    if os.geteuid() == 0:
        owner = (_owner_of(own) if own is not None and own.exists() else None) or "postgres"
        try:
            pwd.getpwnam(owner)
        except KeyError:
            raise EngineError(f"OS user {owner!r} does not exist: PostgreSQL cannot run as "
                              "root, so the data directory needs an owner") from None
    pid = _postmaster_alive(pgdata)
    if pid:
        raise EngineError(f"data directory {pgdata} is in use: a server runs on it (pid "
                          f"{pid}); stop it first")
    if pgdata.exists() and not pgdata.is_dir():
        raise EngineError(f"{pgdata} exists and is not a directory")
    try:
        non_empty = pgdata.is_dir() and any(pgdata.iterdir())
    except OSError as e:
        raise EngineError(f"cannot read data directory {pgdata}: {e.strerror}") from None
    moved = None
    python = command_python(owner)  # before anything moves: fails when the owner cannot
    if replace and not is_own:
        raise UsageError(f"--replace only restores over the data directory of cluster "
                         f"{cluster!r} ({own or 'no pgdata configured'}); {pgdata} is not it")
    if non_empty:
        if not is_own:
            raise EngineError(f"data directory {pgdata} is not empty: restore into a new or "
                              "empty directory")
        if not replace:
            raise EngineError(f"{pgdata} is the data directory of cluster {cluster!r}: "
                              "restoring over it needs --replace (with the server stopped; "
                              "the old directory is moved aside, not deleted)")
        if own is not None and own.exists():
            owner = _owner_of(own) if os.geteuid() == 0 else None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        moved = Path(f"{pgdata}.before-pitr-{stamp}")
        if moved.exists():
            raise EngineError(f"{moved} exists already: try again in a second")
        os.rename(pgdata, moved)
    return {"owner": owner, "moved_aside": str(moved) if moved else None,
            "existed": pgdata.is_dir(), "python": python}


def make_spool(pgdata: Path, owner: str | None) -> Path | None:
    """The folder wal-fetch fetches WAL ahead into: ``<pgdata>/pg_wal/backup-tui-spool``,
    0700, owned by the server's OS user, who runs wal-fetch (engine/walspool.py says why
    there). None when it cannot be made (recovery then fetches one segment at a time)."""
    spool = pgdata / "pg_wal" / walspool.SPOOL_DIR
    try:
        if spool.is_symlink() or spool.exists():  # from the base backup: not ours
            return None
        spool.mkdir(mode=0o700)
        os.chmod(spool, 0o700)
        _chown(spool, owner)
    except OSError:
        return None
    return spool


def _early_spool(pgdata: Path, owner: str | None) -> Path | None:
    """The spool while the base backup is written (the data directory must be empty):
    ``.<name>.backup-tui-spool-*`` beside it, 0700, the server's OS user's; renamed into
    pg_wal after (`_adopt_spool`). None when its parent is missing or on another file
    system (the spool is then made after the restore)."""
    parent = pgdata.parent
    try:
        if not parent.is_dir() or (pgdata.exists()
                                   and pgdata.stat().st_dev != parent.stat().st_dev):
            return None
        path = Path(tempfile.mkdtemp(prefix=f".{pgdata.name}.{walspool.SPOOL_DIR}-",
                                     dir=parent))
        os.chmod(path, 0o700)
        _chown(path, owner)
    except OSError:
        return None
    return path


def _adopt_spool(early: Path, pgdata: Path) -> Path | None:
    """Rename the early spool into ``<pgdata>/pg_wal`` (its prefetcher works inside it and
    goes on); None when it cannot be (it is removed then)."""
    final = pgdata / "pg_wal" / walspool.SPOOL_DIR
    try:
        if (pgdata / "pg_wal").is_dir() and not (final.is_symlink() or final.exists()):
            os.rename(early, final)
            return final
    except OSError:
        pass
    walspool.remove(early)
    return None


def start_prefetcher(engine: Engine, plan: PitrPlan, spool: Path, pgdata: Path,
                     python: list[str] | None, owner: str | None,
                     ahead: int) -> subprocess.Popen | None:
    """Start the prefetcher of the plan's segments in ``spool`` as the server's OS user
    (engine/walspool.py): the first segments are there when recovery asks. The process
    returned ends as soon as the prefetcher runs detached (wait for it). None when it
    could not start (wal-fetch starts one then)."""
    config = engine.config.path
    if config is None or not plan.segments or ahead <= 0:
        return None
    seg_size = int(plan.postgres.get("wal_segment_size") or SEG_SIZE)
    cmd = [*(python or [sys.executable]), "-m", "engine.walspool", "prefetch", str(spool),
           "--config", str(Path(config).absolute()), "--ahead", str(ahead),
           "--seg-size", str(seg_size), "--cluster", plan.source, "--pgdata", str(pgdata),
           "--parent", str(os.getpid())]
    if plan.replica:
        cmd += ["--replica", plan.replica]
    # Niced: while the base backup is written, its writers have every core and the
    # prefetcher takes what they leave (it competed with them for one of the two cores
    # here: bench/pitr.py); once recovery runs, on one core, it has the others.
    nice = shutil.which("nice")
    if nice:
        cmd = [nice, "-n", str(PREFETCH_NICE), *cmd]
    try:
        proc = subprocess.Popen(_as_owner(cmd, owner), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                cwd="/", env=_env())
    except OSError:
        return None
    try:
        assert proc.stdin is not None
        proc.stdin.write("\n".join(plan.segments).encode() + b"\n")
        proc.stdin.close()
    except OSError:
        pass
    return proc


def _reap(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bin_dir_for(major: int) -> Path:
    path = Path(f"/usr/lib/postgresql/{major}/bin")
    override = os.environ.get("BACKUP_TUI_PG_BIN")
    if override:
        path = Path(override)
    if not (path / "pg_ctl").exists():
        raise EngineError(f"PostgreSQL {major} server binaries not found in {path}: install "
                          f"postgresql-{major} (the restored cluster needs the same major "
                          "version)")
    return path


def _as_owner(cmd: list[str], owner: str | None) -> list[str]:
    if owner and os.geteuid() == 0:
        return ["runuser", "-u", owner, "--", *cmd]
    return cmd


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def log_tail(path: str | Path, lines: int = LOG_TAIL) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no server log: {e.strerror})"


@dataclass
class Server:
    """A server started on a restored data directory."""

    pgdata: str
    port: int
    socket_dir: str
    log: str
    bin_dir: str
    owner: str | None
    user: str

    def psql(self, sql: str, db: str = "postgres",
             timeout: float = 30) -> subprocess.CompletedProcess:
        cmd = [str(Path(self.bin_dir) / "psql"), "-X", "-q", "-A", "-t", "-F", "|",
               "-h", self.socket_dir, "-p", str(self.port), "-U", self.user, "-d", db,
               "-c", sql]
        return subprocess.run(_as_owner(cmd, self.owner), capture_output=True, text=True,
                              timeout=timeout, env={**_env(), "PGCONNECT_TIMEOUT": "5"},
                              cwd="/")

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop; the socket folder goes too."""
        if _postmaster_alive(Path(self.pgdata)):
            subprocess.run(_as_owner([str(Path(self.bin_dir) / "pg_ctl"), "stop", "-w",
                                      "-t", "60", "-m", mode, "-D", self.pgdata], self.owner),
                           capture_output=True, text=True, timeout=120, env=_env(), cwd="/")
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def as_json(self) -> dict:
        return {"port": self.port, "socket_dir": self.socket_dir, "log": self.log,
                "bin_dir": self.bin_dir, "owner": self.owner, "user": self.user}


def start_server(pgdata: Path, major: int, port: int, owner: str | None, user: str,
                 log_dir: Path) -> Server:
    """pg_ctl start (not waiting: recovery may take long) on 127.0.0.1:port with a private
    socket folder, as the data directory's owner."""
    bins = bin_dir_for(major)
    sock = Path(tempfile.mkdtemp(prefix="backup-tui-pitr-"))
    os.chmod(sock, 0o700)
    _chown(sock, owner)
    log = log_dir / "server.log"
    log.touch()
    _chown(log, owner)
    server = Server(str(pgdata), port, str(sock), str(log), str(bins), owner, user)
    opts = (f"-p {port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={shlex.quote(str(sock))}")
    res = subprocess.run(_as_owner([str(bins / "pg_ctl"), "start", "-W", "-D", str(pgdata),
                                    "-l", str(log), "-o", opts], owner),
                         capture_output=True, text=True, timeout=120, env=_env(), cwd="/")
    if res.returncode != 0:
        shutil.rmtree(sock, ignore_errors=True)
        raise EngineError(f"pg_ctl start failed (exit {res.returncode}): "
                          f"{(res.stderr or res.stdout).strip()[:300]}\n--- the server log's last "
                          f"lines ---\n{log_tail(log)}")
    return server


def wait_for_promotion(server: Server, timeout: float, cancel: CancelToken | None,
                       on_event: EventCallback, job_id: str) -> dict:
    """Poll until pg_is_in_recovery() is false; EngineError with the log's tail when the
    server stops (recovery failed) or the timeout passes (the server is stopped then)."""
    began = time.monotonic()
    seen_pid = False
    last = ""
    # PostgreSQL removes recovery.signal as archive recovery ends: while it is there, ask
    # the server only once a second (progress); once it is gone, ask at once (a psql is
    # a process: asking often would take CPU from the replay)
    signal = Path(server.pgdata) / "recovery.signal"
    next_ask = 0.0
    gone = 0.0  # when recovery.signal was first seen gone
    while True:
        if cancel is not None and cancel.cancelled:
            server.stop("immediate")
            raise Cancelled("restore pitr cancelled: the server was stopped")
        alive = _postmaster_alive(Path(server.pgdata))
        seen_pid = seen_pid or bool(alive)
        if not alive and (seen_pid or time.monotonic() - began > 10):
            time.sleep(0.3)  # let the log be written
            raise EngineError(f"the restored server stopped during recovery: "
                              f"{_fatal(server.log) or 'see its log'}\n--- the server log's "
                              f"last lines ---\n{log_tail(server.log)}")
        now = time.monotonic()
        try:
            os.stat(signal)
            pause = 1.0
        except FileNotFoundError:  # at once, then every 0.05 s, after 3 s every 0.2 s
            gone = gone or now
            pause = 0.05 if now - gone < 3 else 0.2
            if gone == now:
                next_ask = now
        except OSError:  # cannot tell: every 0.2 s
            pause = 0.2
        if alive and now >= next_ask:
            next_ask = now + pause
            res = server.psql("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(), "
                              "pg_last_xact_replay_timestamp()")
            if res.returncode == 0 and res.stdout.strip():
                recovering, lsn, ts = (res.stdout.strip().split("|") + ["", ""])[:3]
                if recovering == "f":
                    return {"seconds": round(time.monotonic() - began, 2), "replay_lsn": lsn,
                            "replay_time": ts or None}
                if lsn and lsn != last:
                    last = lsn
                    on_event(Event(job_id, "recovery", message=f"replayed to {lsn}"))
        if time.monotonic() - began > timeout:
            server.stop("fast")
            raise EngineError(f"recovery did not finish within {timeout:.0f} s (the server "
                              f"was stopped)\n--- the server log's last lines ---\n"
                              f"{log_tail(server.log)}")
        time.sleep(0.03)


def _fatal(log: str) -> str:
    for line in reversed(log_tail(log, 200).splitlines()):
        if "FATAL" in line or "PANIC" in line:
            return line.split("FATAL:", 1)[-1].split("PANIC:", 1)[-1].strip()
    return ""


def _log_facts(log: str) -> dict:
    text = log_tail(log, 400)
    facts: dict = {}
    m = re.findall(r"recovery stopping (.*)", text)
    if m:
        facts["stopped"] = m[-1].strip()
    m = re.findall(r"selected new timeline ID: (\d+)", text)
    if m:
        facts["timeline"] = int(m[-1])
    m = re.findall(r"last completed transaction was at log time (.*)", text)
    if m:
        facts["last_transaction"] = m[-1].strip()
    return facts


def restore(engine: Engine, plan: PitrPlan, pgdata: str | os.PathLike[str],
            port: int | None = None, start: bool = False, replace: bool = False,
            job_id: str = "", on_event: EventCallback = ignore,
            cancel: CancelToken | None = None, wait_seconds: float = 3600.0) -> dict:
    """Recover ``plan``'s cluster into ``pgdata`` (see the module text). ``engine`` reads
    the base backup (a replica's Engine for a replica). With start=True the server is left
    running, promoted, on ``port`` (a free one when None); result["server"] names it
    (``Server(**...)`` rebuilds the handle, whose ``stop()`` ends it)."""
    plan.check()
    from engine.sources.cluster import restore_base

    pgdata = Path(os.path.abspath(pgdata))
    began = time.monotonic()
    prep = prepare_target(engine, plan.source, pgdata, replace)
    owner = prep["owner"]
    conf_port = port  # only a port asked for goes into the settings
    if start and port is None:
        port = _free_port()
    python = prep["python"]
    on_event(Event(job_id, "restore", message=f"base backup {plan.snapshot['id'][:8]} "
                   f"into {pgdata}"))
    cfg = _cluster_config(engine, plan.source)
    prefetch = int(getattr(cfg, "wal_prefetch", walspool.DEFAULT_AHEAD))
    # with start: the prefetcher fetches the first segments while the base backup is
    # written (into a spool beside the data directory, moved into pg_wal after)
    spool = early = starter = None
    if start and prefetch > 0:
        early = _early_spool(pgdata, owner)
        if early is not None:
            starter = start_prefetcher(engine, plan, early, pgdata, python, owner, prefetch)
    try:
        counts = restore_base(engine.repo(), plan.snapshot, pgdata, job_id, on_event, cancel,
                              owner=owner)
        if early is not None:
            _reap(starter)
            spool, early = _adopt_spool(early, pgdata), None
        if spool is None and prefetch > 0:
            spool = make_spool(pgdata, owner)
            if start and spool is not None:
                starter = start_prefetcher(engine, plan, spool, pgdata, python, owner,
                                           prefetch)
        settings = recovery_settings(engine, plan, conf_port, python,
                                     in_place=prep["moved_aside"] is not None,
                                     spool=spool, prefetch=prefetch)
        write_recovery(pgdata, settings, owner)
    except BaseException as e:
        _reap(starter)
        for folder in (early, spool):  # a prefetcher stopped before its folder goes
            if folder is not None:
                walspool.remove(folder)
        if not prep["existed"]:
            shutil.rmtree(pgdata, ignore_errors=True)
        elif pgdata.is_dir():
            for child in pgdata.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        if prep["moved_aside"] and isinstance(e, EngineError):
            raise EngineError(f"{e}; the old data directory is kept as {prep['moved_aside']} "
                              f"(put it back with: mv {prep['moved_aside']} {pgdata})") from e
        raise
    result: dict = {
        "source": plan.source, "snapshot": plan.snapshot["id"], "pgdata": str(pgdata),
        "target": plan.target.as_json(), "replica": plan.replica,
        "files": counts.get("files", 0), "bytes": counts.get("bytes", 0),
        "moved_aside": prep["moved_aside"], "port": port, "started": False,
        "promoted": False, "settings": dict(settings),
        "restore_seconds": round(time.monotonic() - began, 2),
        "spool": str(spool) if spool is not None else None,
    }
    _reap(starter)
    if not start:
        return result  # recovery_end_command removes the spool
    # the server's OS user is its bootstrap superuser as a rule (peer authentication)
    user = owner or pwd.getpwuid(os.geteuid()).pw_name
    if cfg is not None and os.geteuid() != 0:
        user = _dsn_user(getattr(cfg, "dsn", "")) or user
    log_dir = Path(tempfile.mkdtemp(prefix="backup-tui-pitr-log-"))
    os.chmod(log_dir, 0o755)
    try:
        server = start_server(pgdata, int(plan.postgres.get("server_major") or 0)
                              or int(plan.postgres.get("server_version", 0)) // 10000,
                              port, owner, user, log_dir)
        result.update(started=True, server=server.as_json(), log=server.log)
        on_event(Event(job_id, "recovery", message=f"server started on port {port}, "
                       "replaying"))
        waited = wait_for_promotion(server, wait_seconds, cancel, on_event, job_id)
    except BaseException as e:
        # the error carries the log's last lines; the server, its socket and log folders
        # go; the data directory stays for a look (remove it before another try)
        if result["started"]:
            server.stop("immediate")
        if spool is not None:  # a prefetcher stopped, nothing fetched ahead left behind
            walspool.remove(spool)
        shutil.rmtree(log_dir, ignore_errors=True)
        if isinstance(e, EngineError) and not isinstance(e, Cancelled):
            raise EngineError(f"{e}\nthe restored data directory {pgdata} is left as it is "
                              "for a look; remove it before another try") from e
        raise
    if spool is not None:  # recovery_end_command removed it; a prefetcher it missed stops
        walspool.remove(spool)
    result.update(promoted=True, seconds_to_promotion=waited["seconds"],
                  replay_lsn=waited["replay_lsn"], replay_time=waited["replay_time"],
                  total_seconds=round(time.monotonic() - began, 2), **_log_facts(server.log))
    return result


def _dsn_user(dsn: str) -> str | None:
    m = re.match(r"postgres(?:ql)?://([^:@/]+)(?::[^@]*)?@", dsn or "")
    if m:
        return m.group(1)
    m = re.search(r"\buser=(\S+)", dsn or "")
    return m.group(1) if m else None
