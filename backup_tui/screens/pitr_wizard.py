"""The point-in-time wizard: recover a cluster, or a database's dump, as of a time.

One modal screen whose steps take turns (a ``ContentSwitcher``): **source** (the
sources recoverable by time), **time** (typed, ISO in the schedule's time zone,
or picked from a timeline of reachable points), **plan** (what the engine would
do, or why it refuses), **target** (a cluster: data directory and port; a
database: the new database's name), **confirm** (the data directory or
database name typed again), **run** (live progress; ``c`` cancels) and
**result**. Esc cancels every step before the run and closes the result; the
screen answers the result (a dict) or None through ``dismiss``.

Words. A *cluster* source has its WAL archived (its status carries ``wal``):
it is recovered to the second by replaying WAL over a base backup
(``Engine.pitr_plan`` / ``Engine.restore_pitr``), into a new data directory,
started and promoted on its own port. A *logical* source (a database: its
status carries a restore ``drill`` but no WAL) has dumps only: the wizard
restores the newest dump taken at or before the time into a new database
(``Engine.snapshot_at``, ``plan_restore``, ``restore``) and says plainly that
this is what it does. Restoring over a cluster's own data directory or over a
database stays on the command line (``restore pitr --replace``, ``restore db
--replace``).

Every engine call runs in a thread worker through ``EngineCaller.call_engine``;
the answers are the ``Pitr...`` messages of ``backup_tui.messages``.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import on
from textual.app import ComposeResult, RenderResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import ContentSwitcher, Input, Label, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from backup_tui.engine_calls import EngineCaller
from backup_tui.format import human_bytes
from backup_tui.messages import (
    EventRelay,
    JobProgress,
    PitrFailed,
    PitrFinished,
    PitrPlanned,
    PitrSourcesLoaded,
    PitrStepFailed,
    PitrTargetChecked,
    PitrTimelineLoaded,
)
from engine.errors import UsageError
from engine.events import CancelToken

if TYPE_CHECKING:
    from engine.sources.base import SourceInfo

STEPS = ("source", "time", "plan", "target", "confirm", "run", "result")
KEYS = {  # the hint line of each step
    "source": "Enter choose · Esc cancel",
    "time": "Enter plan · Tab/↓ the timeline, Enter there picks · Esc cancel",
    "plan": "Enter continue · Esc cancel",
    "target": "Enter check · Tab next field · Esc cancel",
    "confirm": "Enter start · Esc cancel",
    "run": "c cancel the recovery",
    "result": "Enter or Esc close",
}
BASE_POINTS = 8  # base backups or dumps on the timeline, newest first
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


# ------------------------------------------------------------------ the data
@dataclass(frozen=True)
class Choice:
    """A source the wizard can recover, and how: WAL replay (a cluster) or a dump."""

    info: SourceInfo
    by_wal: bool
    entry: dict  # its status entry (Engine.status()["sources"])


@dataclass(frozen=True)
class Point:
    """A reachable point on the timeline."""

    when: datetime
    what: str  # "base backup 1a2b3c4d consistent", "newest reachable point (WAL …)"
    row: str  # the strip row that marks it ("base", "dumps")


@dataclass(frozen=True)
class Window:
    """The span one copy's WAL covers: from the oldest base backup to its newest WAL."""

    copy: str  # "local" or a replica
    start: datetime | None
    end: datetime | None
    note: str = ""


@dataclass
class Timeline:
    """What a source can be recovered to."""

    points: list[Point] = field(default_factory=list)  # newest first
    windows: list[Window] = field(default_factory=list)
    reachable: datetime | None = None  # the newest point the WAL reaches without a gap
    problem: str = ""  # why the timeline is incomplete (no base backup, ...)


def recoverable(info: SourceInfo, entry: dict | None) -> Choice | None:
    """A cluster (its WAL archived) or a logical database (drilled, no WAL); else None."""
    if entry is None:
        return None
    if "wal" in entry:
        return Choice(info, True, entry)
    if "drill" in entry:  # restored into a server by drills: a database, dumps only
        return Choice(info, False, entry)
    return None


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def show_time(when: datetime | None, tz: tzinfo) -> str:
    return when.astimezone(tz).strftime(TIME_FORMAT) if when else "?"


def load_timeline(engine: Any, choice: Choice) -> Timeline:
    """The reachable points of ``choice`` (blocking: call it from a worker)."""
    info = choice.info
    infos = [i for i in engine.snapshots(source=info.name, kind=info.kind) if i.complete]
    newest = infos[-BASE_POINTS:]
    if not choice.by_wal:
        points = [Point(i.time, f"dump {i.id[:8]} ({human_bytes(i.size)})", "dumps")
                  for i in reversed(newest)]
        return Timeline(points, [], None,
                        "" if infos else f"no dump of {info.title} yet")
    points = []
    oldest: datetime | None = None
    for i in reversed(newest):
        pg = engine.snapshot(i.id).get("postgres") or {}
        when = _when(pg.get("stop_time")) or i.time
        points.append(Point(when, f"base backup {i.id[:8]} consistent", "base"))
    if infos:
        first = engine.snapshot(infos[0].id).get("postgres") or {}
        oldest = _when(first.get("stop_time")) or infos[0].time
    timeline = Timeline(points, [], None, "" if infos else
                        f"no base backup of {info.title} yet")
    wal = choice.entry.get("wal") or {}
    timeline.windows.append(Window("local", oldest, _when(wal.get("archived")),
                                   wal.get("error") or ""))
    for name, rep in (wal.get("replicas") or {}).items():
        timeline.windows.append(Window(name, oldest, _when(rep.get("archived")),
                                       rep.get("error") or ""))
    if infos:
        try:
            plan = engine.pitr_plan(info.name, engine.pitr_target("immediate", None))
        except Exception as e:  # noqa: BLE001 - the timeline shows what it could not read
            timeline.problem = str(e)
        else:
            reach = plan.as_json()["newest_reachable"]
            timeline.reachable = _when(reach.get("time"))
            if timeline.reachable is not None:
                timeline.points.insert(0, Point(timeline.reachable,
                                                f"newest reachable (WAL {reach['wal']})",
                                                "reach"))
    timeline.points.sort(key=lambda p: p.when, reverse=True)
    return timeline


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_data_dir(text: str, own: str | None) -> str:
    """An absolute path, absent or an empty directory, not the cluster's own (blocking)."""
    if not text.strip():
        raise UsageError("give a data directory: an absolute path, absent or empty")
    path = Path(text.strip()).expanduser()
    if not path.is_absolute():
        raise UsageError(f"{text.strip()}: give an absolute path")
    if own and os.path.abspath(own) == os.path.abspath(path):
        raise UsageError(f"{path} is the cluster's own data directory: the wizard recovers "
                         "into a new one (over it: 'restore pitr --replace', server stopped)")
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise UsageError(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise UsageError(f"{path} is not empty: give a new or empty directory")
    return os.path.abspath(path)


def check_port(text: str) -> int:
    """A port from 1024 to 65535 free on 127.0.0.1 (blocking)."""
    if not text.strip().isdigit() or not 1024 <= int(text) <= 65535:
        raise UsageError(f"port {text.strip()!r}: a number from 1024 to 65535")
    port = int(text)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise UsageError(f"port {port} is in use on 127.0.0.1: pick another "
                             f"(free now: {free_port()})") from None
    return port


def span(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    s = int(round(seconds))
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{h}h {m}m {s}s" if h else f"{m}m {s}s" if m else f"{seconds:.1f}s")


# ------------------------------------------------------------------- widgets
class TimelineStrip(Widget):
    """One row per WAL copy (━ where it reaches) and one of markers (▲ a base backup or a
    dump, ◆ the newest reachable point), scaled to the widget's width."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.timeline = Timeline()
        self.tz: tzinfo = UTC

    def show(self, timeline: Timeline, tz: tzinfo) -> None:
        self.timeline, self.tz = timeline, tz
        rows = len(timeline.windows) + (1 if timeline.points else 0)
        self.styles.height = rows + 1 if rows else 0
        self.refresh(layout=True)

    def render(self) -> RenderResult:
        t = self.timeline
        times = [p.when for p in t.points] + [w.end for w in t.windows if w.end] + \
            [w.start for w in t.windows if w.start]
        if not times:
            return Content("")
        lo, hi = min(times), max(times)
        if hi <= lo:
            hi = lo + timedelta(seconds=1)
        label = max([len(w.copy) for w in t.windows] + [5]) + 1
        width = max(8, self.size.width - label)

        def cell(when: datetime) -> int:
            return min(width - 1, int((when - lo) / (hi - lo) * (width - 1) + 0.5))

        lines: list[Content] = []
        for w in t.windows:
            bar = ["·"] * width
            if w.start and w.end and w.end >= w.start:
                for i in range(cell(w.start), cell(w.end) + 1):
                    bar[i] = "━"
            lines.append(Content.assemble((f"{w.copy:<{label}}", "$text-muted"), "".join(bar)))
        if t.points:
            marks = [" "] * width
            for p in t.points:
                marks[cell(p.when)] = "◆" if p.row == "reach" else "▲"
            name = "base" if any(p.row == "base" for p in t.points) else "dumps"
            lines.append(Content.assemble((f"{name:<{label}}", "$text-muted"), "".join(marks)))
        left, right = show_time(lo, self.tz), show_time(hi, self.tz)
        gap = max(1, label + width - len(left) - len(right))
        lines.append(Content(f"{left}{' ' * gap}{right}").stylize("$text-muted"))
        return Content("\n").join(lines)


# -------------------------------------------------------------------- screen
class PitrWizard(EngineCaller, ModalScreen["dict | None"]):
    """Recover a source as of a time: see the module docstring."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="pitr-cancel"),
        Binding("enter", "next", "Continue", show=False, id="pitr-next"),
        Binding("c", "stop", "Cancel recovery", id="pitr-stop"),
    ]

    def __init__(self, engine: Any, source: str | None = None) -> None:
        """``source``: the name of the source to recover, to skip choosing it."""
        super().__init__()
        self.engine = engine
        self.preselect = source
        self.step = "source"
        self.choices: list[Choice] = []
        self.choice: Choice | None = None
        self.timeline = Timeline()
        self.target_text = ""  # the time as typed
        self.planned: PitrPlanned | None = None
        self.target: PitrTargetChecked | None = None
        self.cancel_token: CancelToken | None = None
        self.phase = ""  # the last progress phase of the run
        self.result: dict | None = None
        self.error = ""  # the inline error showing

    @property
    def tz(self) -> tzinfo:
        return self.engine.timezone

    # ---------------------------------------------------------------- layout
    def compose(self) -> ComposeResult:
        with Vertical(id="pitr-dialog"):
            yield Label(Content("Point-in-time recovery"), id="pitr-title")
            with ContentSwitcher(initial="pitr-source", id="pitr-steps"):
                with Vertical(id="pitr-source"):
                    yield Static(Content("Loading the sources…"), id="pitr-source-note")
                    yield OptionList(id="pitr-sources")
                with Vertical(id="pitr-time"):
                    yield Static("", id="pitr-time-note")
                    yield Input(placeholder="YYYY-MM-DD HH:MM:SS", id="pitr-time-input")
                    yield TimelineStrip(id="pitr-strip")
                    yield OptionList(id="pitr-points")
                with VerticalScroll(id="pitr-plan", can_focus=True):
                    yield Static("", id="pitr-plan-text")
                with Vertical(id="pitr-target"):
                    yield Static("", id="pitr-target-note")
                    yield Input(id="pitr-target-input")
                    yield Label(Content("Port"), id="pitr-port-label")
                    yield Input(id="pitr-port-input", restrict=r"[0-9]*", max_length=5)
                with Vertical(id="pitr-confirm"):
                    yield Static("", id="pitr-confirm-note")
                    yield Input(id="pitr-confirm-input")
                with Vertical(id="pitr-run"):
                    yield Static("", id="pitr-run-title")
                    yield ProgressBar(total=None, show_eta=False, id="pitr-bar")
                    yield Static("", id="pitr-run-numbers")
                with VerticalScroll(id="pitr-result", can_focus=True):
                    yield Static("", id="pitr-result-text")
            yield Static("", id="pitr-error")
            yield Static(Content(KEYS["source"]), id="pitr-keys")

    def on_mount(self) -> None:
        self.query_one("#pitr-sources").focus()
        self.call_engine(self._load_sources, group="pitr-sources",
                         failed=partial(PitrStepFailed, "source"))

    def _text(self, widget_id: str, text: str | Content) -> None:
        # Content, not markup: names, paths and engine messages are data.
        self.query_one(f"#{widget_id}", Static).update(
            text if isinstance(text, Content) else Content(text))

    def _go(self, step: str) -> None:
        self.step = step
        self._show_error("")
        self.query_one("#pitr-steps", ContentSwitcher).current = f"pitr-{step}"
        self._text("pitr-keys", KEYS[step])
        self.refresh_bindings()
        focus = {"source": "#pitr-sources", "time": "#pitr-time-input", "plan": "#pitr-plan",
                 "target": "#pitr-target-input", "confirm": "#pitr-confirm-input",
                 "run": None, "result": "#pitr-result"}[step]
        if focus:
            self.query_one(focus).focus()

    def _show_error(self, text: str) -> None:
        self.error = text
        self._text("pitr-error", text)
        self.query_one("#pitr-error").set_class(bool(text), "-shown")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.step == "run" and self.cancel_token is not None
        return True

    # --------------------------------------------------------------- actions
    def action_cancel(self) -> None:
        if self.step == "run":
            self.notify("The recovery is running: press c to cancel it.", severity="warning")
        else:
            self.dismiss(self.result if self.step == "result" else None)

    def action_next(self) -> None:
        if self.step == "plan":
            if self.planned is not None and self.planned.refused:  # another time, then
                refused = self.error
                self._go("time")
                self._show_error(refused)
            elif self.planned is not None:
                self._open_target()
        elif self.step == "result":
            self.dismiss(self.result)

    def action_stop(self) -> None:
        if self.cancel_token is not None and not self.cancel_token.cancelled:
            self.cancel_token.cancel()
            self._text("pitr-run-title", "Cancelling…")

    # ---------------------------------------------------------------- source
    def _load_sources(self) -> PitrSourcesLoaded:
        entries = {(e["kind"], e["name"]): e for e in self.engine.status()["sources"]}
        choices = [c for info in self.engine.sources()
                   if (c := recoverable(info, entries.get((info.kind, info.name))))]
        return PitrSourcesLoaded(choices)

    def on_pitr_sources_loaded(self, message: PitrSourcesLoaded) -> None:
        self.choices = list(message.choices)
        options = self.query_one("#pitr-sources", OptionList)
        options.clear_options()
        if not self.choices:
            self._text("pitr-source-note", "No cluster or database is configured: nothing "
                       "to recover to a point in time.")
            return
        self._text("pitr-source-note", "Recover which source?")
        width = max(len(c.info.label) for c in self.choices)
        for i, c in enumerate(self.choices):
            how = "WAL replay to the second" if c.by_wal else "newest dump before the time"
            options.add_option(Option(Content.assemble(
                (f"{c.info.label:<{width}}  ", "$text-muted"), c.info.name,
                (f"  {how}", "$text-muted")), id=str(i)))
        names = [c.info.name for c in self.choices]
        if self.preselect in names:
            self._choose(self.choices[names.index(self.preselect)])
        else:
            options.highlighted = 0

    @on(OptionList.OptionSelected, "#pitr-sources")
    def _source_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self._choose(self.choices[int(event.option.id or 0)])

    def _choose(self, choice: Choice) -> None:
        self.choice = choice
        zone = getattr(self.tz, "key", str(self.tz))
        if choice.by_wal:
            note = (f"Recover {choice.info.title} to a time: base backup plus WAL replayed "
                    f"to the second. Type the time ({zone}) or pick a point below.")
        else:
            note = (f"{choice.info.title.capitalize()} has logical dumps only: this restores "
                    f"the newest dump taken before the time you give, into a new database; "
                    f"changes after that dump are not replayed. Type the time ({zone}) or "
                    "pick a dump below.")
        self._text("pitr-time-note", note)
        self.query_one("#pitr-points", OptionList).clear_options()
        self.query_one(TimelineStrip).show(Timeline(), self.tz)
        self._go("time")
        self.call_engine(partial(self._load_timeline, choice), group="pitr-timeline",
                         failed=partial(PitrStepFailed, "time"))

    # ------------------------------------------------------------------ time
    def _load_timeline(self, choice: Choice) -> PitrTimelineLoaded:
        return PitrTimelineLoaded(load_timeline(self.engine, choice))

    def on_pitr_timeline_loaded(self, message: PitrTimelineLoaded) -> None:
        self.timeline = message.timeline
        self.query_one(TimelineStrip).show(self.timeline, self.tz)
        options = self.query_one("#pitr-points", OptionList)
        options.clear_options()
        for i, p in enumerate(self.timeline.points):
            options.add_option(Option(Content.assemble(
                (f"{show_time(p.when, self.tz)}  ", "$text-muted"), p.what), id=str(i)))
        for w in self.timeline.windows:
            reach = (f"WAL {show_time(w.start, self.tz)} → {show_time(w.end, self.tz)}"
                     if w.end else "no WAL")
            options.add_option(Option(Content.assemble(
                (f"{w.copy:<19}  ", "$text-muted"), reach + (f" ({w.note})" if w.note else "")),
                id=f"w{w.copy}", disabled=True))
        if self.timeline.problem and self.step == "time":
            self._show_error(self.timeline.problem)

    @on(OptionList.OptionSelected, "#pitr-points")
    def _point_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        point = self.timeline.points[int(event.option.id or 0)]
        field_ = self.query_one("#pitr-time-input", Input)
        field_.value = show_time(point.when, self.tz)
        field_.focus()

    @on(Input.Submitted, "#pitr-time-input")
    def _time_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        if not text:
            self._show_error("Type a time, e.g. 2026-11-30 07:12:00, or pick a point below.")
            return
        assert self.choice is not None
        self.target_text = text
        self.planned = None
        self._show_error("")
        self._text("pitr-plan-text", f"Planning the recovery to {text}…")
        self._go("plan")
        self.call_engine(partial(self._plan, self.choice, text), group="pitr-plan",
                         failed=partial(PitrStepFailed, "plan"))

    # ------------------------------------------------------------------ plan
    def _plan(self, choice: Choice, text: str) -> PitrPlanned:
        from engine.errors import EngineError

        name = choice.info.name
        if choice.by_wal:
            target = self.engine.pitr_target("time", text)  # a UsageError: back to the time
            try:
                plan = self.engine.pitr_plan(name, target)
            except EngineError as e:  # before the oldest base backup, none at all
                return PitrPlanned(text, None, None, str(e))
            plan_json = plan.as_json()
            return PitrPlanned(text, plan_json, None, "" if plan.feasible
                               else plan_json["problems"][0], plan.target.describe())
        when = self.engine.parse_time(text)
        if when > datetime.now(UTC):
            newest = [i for i in self.engine.snapshots(source=name, kind=choice.info.kind)
                      if i.complete]
            return PitrPlanned(text, None, None, f"{when.isoformat()} is in the future"
                               + (f": the newest dump of {choice.info.title} was taken at "
                                  f"{newest[-1].time.isoformat()}" if newest else ""))
        try:
            snap, before = self.engine.snapshot_at(name, when)
        except EngineError as e:
            return PitrPlanned(text, None, None, str(e))
        return PitrPlanned(text, None, {"snapshot": snap, "before": before, "when": when}, "",
                           f"time {when.isoformat()}")

    def on_pitr_planned(self, message: PitrPlanned) -> None:
        self.planned = message
        assert self.choice is not None
        self._text("pitr-plan-text", self._plan_text(message))
        self.query_one("#pitr-plan-text").set_class(bool(message.refused), "-refused")
        self._text("pitr-keys", "Enter another time · Esc cancel" if message.refused
                   else KEYS["plan"])
        if message.refused:
            self._show_error(f"Refused: {message.refused}")

    def _plan_text(self, m: PitrPlanned) -> Content:
        assert self.choice is not None
        title = self.choice.info.title
        if m.refused:
            return Content(f"Recovering {title} to {m.target} is refused:\n\n{m.refused}")
        if m.dump is not None:
            snap, before = m.dump["snapshot"], m.dump["before"]
            return Content(
                f"Restores the newest dump of {title} taken before "
                f"{show_time(m.dump['when'], self.tz)}: dump {snap['id'][:8]} taken "
                f"{show_time(_when(snap['time']), self.tz)}, {span(before)} before it.\n"
                "This is a logical dump: changes made after it are not replayed.\n"
                "Next: the name of the new database it is restored into.")
        j = m.plan or {}
        base, wal, reach = j["base_backup"], j["wal"], j["newest_reachable"]
        lines = [f"Recover {title} to {m.describe}",
                 f"Base backup  {base['id'][:8]}, consistent at "
                 f"{show_time(_when(base['stop_time']), self.tz)}",
                 f"             (LSN {base['stop_lsn']}, timeline {base['timeline']})",
                 f"WAL          {wal['first']} .. {(wal['last'] or '')[-8:]} "
                 f"({wal['segments']} segment(s))"]
        for sw in j["timeline_switches"]:
            lines.append(f"Timeline     {sw['parent']} -> {sw['timeline']} at "
                         f"{sw['switch_lsn']}")
        for p in j["places"]:
            state = (f"error: {p['error']}" if p["error"] else "all present" if p["complete"]
                     else f"{p['missing_count']} missing")
            lines.append(f"  {p['name']:<11}{p['present']}/{wal['segments']}  {state}"
                         + ("" if p["reads"] else " (not read)"))
        lines.append(f"Gaps         {', '.join(j['gaps'][:3]) if j['gaps'] else 'none'}")
        lines.append(f"Reachable    up to {show_time(_when(reach['time']), self.tz)}"
                     + (f" (WAL {reach['wal'][-8:]})" if reach.get("wal") else ""))
        lines.append(f"Estimate     {span(j['estimate_seconds'])}"
                     + (f" ({j['estimate_basis']})" if j["estimate_seconds"] else ""))
        lines += [f"Note: {n}" for n in j["notes"]]
        return Content("\n".join(lines))

    # ---------------------------------------------------------------- target
    def _open_target(self) -> None:
        assert self.choice is not None and self.planned is not None
        target = self.query_one("#pitr-target-input", Input)
        port = self.query_one("#pitr-port-input", Input)
        stamp = re.sub(r"[^0-9]", "", self.target_text)[:12] or "now"
        if self.choice.by_wal:
            own = dict(self.choice.info.details).get("data directory", "")
            self._text("pitr-target-note", "Recover into which data directory? It must be "
                       "absent or empty; the server starts there on the port below.")
            target.placeholder = "/var/lib/postgresql/recovered"
            if not target.value:
                target.value = f"{own.rstrip('/')}-at-{stamp}" if own else ""
            if not port.value:
                port.value = str(free_port())
        else:
            self._text("pitr-target-note", "Restore into which new database? (a name of "
                       "letters, digits and _, not an existing database)")
            target.placeholder = "name"
            if not target.value:
                target.value = f"{self.choice.info.name}_at_{stamp}"[:63]
        port.display = self.choice.by_wal
        self.query_one("#pitr-port-label").display = self.choice.by_wal
        self._go("target")

    @on(Input.Submitted, "#pitr-target-input")
    @on(Input.Submitted, "#pitr-port-input")
    def _target_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        assert self.choice is not None
        text = self.query_one("#pitr-target-input", Input).value
        port = self.query_one("#pitr-port-input", Input).value
        self._show_error("Checking…")
        self.call_engine(partial(self._check_target, self.choice, text, port),
                         group="pitr-target", failed=partial(PitrStepFailed, "target"))

    def _check_target(self, choice: Choice, text: str, port: str) -> PitrTargetChecked:
        if choice.by_wal:
            own = dict(choice.info.details).get("data directory")
            return PitrTargetChecked(check_data_dir(text, own), check_port(port), None)
        name = text.strip()
        if not IDENT.fullmatch(name):
            raise UsageError(f"{name!r} is not a database name this wizard makes: letters, "
                             "digits and _, starting with a letter or _, up to 63")
        assert self.planned is not None and self.planned.dump is not None
        plan = self.engine.plan_restore(self.planned.dump["snapshot"], target_db=name)
        return PitrTargetChecked(name, None, plan)

    def on_pitr_target_checked(self, message: PitrTargetChecked) -> None:
        if self.step != "target":
            return
        self.target = message
        what = "data directory" if message.port is not None else "database name"
        self._text("pitr-confirm-note", Content.assemble(
            f"Type the {what} to confirm:\n", (message.target, "bold"),
            "\n" + self._review()))
        self.query_one("#pitr-confirm-input", Input).value = ""
        self._go("confirm")

    def _review(self) -> str:
        assert self.choice is not None and self.target is not None
        if self.target.port is not None:
            return (f"Restores the base backup there, starts PostgreSQL on 127.0.0.1 port "
                    f"{self.target.port} and replays WAL up to {self.target_text}; the server "
                    "is left running, promoted.")
        return (f"Restores the dump into the new database {self.target.target} on the "
                f"database's server; {self.choice.info.name} itself is not touched.")

    # --------------------------------------------------------------- confirm
    @on(Input.Submitted, "#pitr-confirm-input")
    def _confirm_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        assert self.target is not None
        if event.value.strip() != self.target.target:
            self._show_error(f"That is not {self.target.target!r}: type it exactly to go on, "
                             "or Esc to cancel.")
            return
        self._run()

    # ------------------------------------------------------------------- run
    def _run(self) -> None:
        assert self.choice is not None and self.target is not None
        self.cancel_token = cancel = CancelToken()
        self._text("pitr-run-title", f"Recovering {self.choice.info.title} to "
                   f"{self.target_text}…" if self.choice.by_wal else
                   f"Restoring {self.choice.info.title} into {self.target.target}…")
        self._text("pitr-run-numbers", "starting")
        self._go("run")
        # the token makes the job cancellable from the jobs screen and makes q ask first
        relay = EventRelay(self, cancel=cancel, what=(
            f"the point-in-time recovery of {self.choice.info.title}" if self.choice.by_wal
            else f"the restore of {self.choice.info.title} into {self.target.target}"))
        self.call_engine(partial(self._execute, self.choice, self.target, relay, cancel),
                         group="pitr-run", failed=PitrFailed)  # not niced: _execute

    def _execute(self, choice: Choice, target: PitrTargetChecked, relay: EventRelay,
                 cancel: CancelToken) -> PitrFinished:
        # Run at the console's own priority, not [console] job_nice below it: the server
        # this starts is the recovered database and lives on, with the priority it gets.
        if choice.by_wal:
            when = self.engine.pitr_target("time", self.target_text)
            return PitrFinished(self.engine.restore_pitr(
                choice.info.name, when, target.target, target.port, start=True,
                on_event=relay, cancel=cancel))
        res = self.engine.restore(target.plan, relay, cancel)
        return PitrFinished({"snapshot": res.snapshot, "target_db": res.target_db,
                             "bytes": res.bytes, "warnings": list(res.warnings),
                             "notes": list(res.notes),
                             "server": target.plan.summary().get("server")})

    def on_job_progress(self, message: JobProgress) -> None:
        ev = message.event
        if ev.final or self.step != "run":
            return
        self.phase = ev.phase
        bar = self.query_one("#pitr-bar", ProgressBar)
        if ev.phase == "recovery":
            bar.update(total=None)
            self._text("pitr-run-numbers", f"recovering: {ev.message}")
        elif ev.bytes_total:
            bar.update(total=ev.bytes_total, progress=min(ev.bytes_done, ev.bytes_total))
            what = "base restore" if self.choice and self.choice.by_wal else "restore"
            files = f" · {ev.items_done}/{ev.items_total} files" if ev.items_total else ""
            self._text("pitr-run-numbers", f"{what}: {human_bytes(ev.bytes_done)} of "
                       f"{human_bytes(ev.bytes_total)}{files}")
        elif ev.message:
            self._text("pitr-run-numbers", ev.message)

    def on_pitr_finished(self, message: PitrFinished) -> None:
        self.cancel_token = None
        self.result = message.result
        self._text("pitr-result-text", self._result_text(message.result))
        self.query_one("#pitr-result-text").remove_class("-failed")
        self.query_one("#pitr-title", Label).update(Content("Point-in-time recovery: done"))
        self._go("result")

    def on_pitr_failed(self, message: PitrFailed) -> None:
        cancelled = self.cancel_token is not None and self.cancel_token.cancelled
        self.cancel_token = None
        assert self.target is not None
        if self.target.port is None:
            left = "The new database was not made (a restore works aside and swaps last)."
        elif self.phase == "recovery":
            left = (f"The server was stopped; the restored data directory {self.target.target} "
                    "is left for a look: remove it before another try.")
        else:
            left = (f"Nothing is left: what was written into {self.target.target} was "
                    "removed.")
        head = "Cancelled." if cancelled else f"Failed: {message.error}"
        self.result = {"error": message.error, "cancelled": cancelled}
        self._text("pitr-result-text", f"{head}\n\n{left}")
        self.query_one("#pitr-result-text").add_class("-failed")
        self.query_one("#pitr-title", Label).update(Content(
            "Point-in-time recovery: " + ("cancelled" if cancelled else "failed")))
        self._go("result")

    def _result_text(self, r: dict) -> str:
        if "target_db" in r:
            lines = [f"Restored dump {r['snapshot'][:8]} into database {r['target_db']} "
                     f"({human_bytes(r['bytes'])}).",
                     f"Connect: psql -h {str(r.get('server') or '').split(':')[0] or 'HOST'} "
                     f"-d {r['target_db']}"]
            return "\n".join(lines + [f"Note: {n}" for n in r["notes"]]
                             + [f"Warning: {w}" for w in r["warnings"]])
        srv = r.get("server") or {}
        title = self.choice.info.title if self.choice else r["source"]
        lines = [f"Recovered {title} to {self.target_text}: base backup "
                 f"{r['snapshot'][:8]}, {r['files']} files, {human_bytes(r['bytes'])}.",
                 f"Promoted after {span(r.get('seconds_to_promotion'))} of recovery "
                 f"({span(r.get('total_seconds'))} in all).",
                 f"Last replayed: LSN {r.get('replay_lsn')}, last transaction "
                 f"{r.get('replay_time') or 'none'}"
                 + (f", new timeline {r['timeline']}" if r.get("timeline") else "") + "."]
        if r.get("stopped"):
            lines.append(f"Recovery stopped {r['stopped']}.")
        pg_ctl = f"{srv['bin_dir']}/pg_ctl" if srv.get("bin_dir") else "pg_ctl"
        as_owner = f"runuser -u {srv['owner']} -- " if srv.get("owner") else ""
        lines += [f"Running on 127.0.0.1 port {r['port']}, data directory {r['pgdata']}.",
                  f"Connect: psql -h 127.0.0.1 -p {r['port']} -U {srv.get('user', 'postgres')}"
                  " -d postgres",
                  f"Stop it: {as_owner}{pg_ctl} -D {r['pgdata']} stop",
                  f"Server log: {srv.get('log', r.get('log', '?'))}"]
        return "\n".join(lines)

    # ---------------------------------------------------------------- errors
    def on_pitr_step_failed(self, message: PitrStepFailed) -> None:
        if message.step == "plan":  # an unreadable time: back to typing it
            self._go("time")
        elif message.step == "source":
            self._text("pitr-source-note", "Cannot list the sources.")
        if message.step == self.step or message.step in ("plan", "source"):
            self._show_error(message.error)
