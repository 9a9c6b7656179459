"""The dashboard's four plots, from ``Engine.history()``: Textual's ``Sparkline`` under a
title that says the latest value and the range (no plotting dependency).

* repository size at the end of each day (read back from the stored bytes now);
* stored bytes added per day;
* each backup's duration, oldest first;
* each passed restore drill's RTO, oldest first.

``series(history)`` turns the engine's answer into ``Series`` (what a plot shows);
``Plot`` shows one. A sparkline scales from the smallest value to the largest: the
title's range says what the bottom and the top stand for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Sparkline, Static

from backup_tui.format import duration, human_bytes

MUTED = "$foreground-muted"


@dataclass(frozen=True)
class Series:
    """One plot: its title, values oldest first, how a value reads, what the values are
    (``over``: "30 d", "12 backups") and what to say without any."""

    key: str
    title: str
    values: tuple[float, ...]
    shown: Callable[[float], str]
    over: str
    empty: str
    latest: float | None = None  # the value the title leads with (default: the last one)

    def label(self) -> Content:
        """Two lines: ``Repository 1.2 GiB``, then ``0.9 GiB–1.2 GiB over 30 d``."""
        if not self.values:
            return Content.assemble((self.title, "bold"), "\n", (self.empty, MUTED))
        latest = self.values[-1] if self.latest is None else self.latest
        low, high = min(self.values), max(self.values)
        return Content.assemble(
            (self.title, "bold"), " ", self.shown(latest), "\n",
            (f"{self.shown(low)}–{self.shown(high)} over {self.over}", MUTED))


def series(history: dict) -> list[Series]:
    """The four plots of an ``Engine.history()`` answer."""
    days = history.get("daily") or []
    span = f"{len(days)} d"
    sizes = tuple(float(d["size"]) for d in days)
    added = tuple(float(d["added"]) for d in days)
    took = tuple(float(b["seconds"]) for b in history.get("backups") or []
                 if b.get("seconds") is not None)
    rto = tuple(float(d["rto_seconds"]) for d in history.get("drills") or []
                if d.get("ok") and d.get("rto_seconds") is not None)
    return [
        Series("size", "Repository", sizes, human_bytes, span, "no data yet",
               latest=history.get("repository_bytes")),
        Series("added", "Added/day", added if any(added) else (), human_bytes, span,
               f"nothing added in {span}"),
        Series("duration", "Backup time", took, duration,
               f"{len(took)} backup{'s' * (len(took) != 1)}", f"no backup in {span}"),
        Series("rto", "Drill RTO", rto, duration, f"{len(rto)} drill{'s' * (len(rto) != 1)}",
               f"no passed drill in {span}"),
    ]


class Plot(Vertical):
    """A title with the latest value and the range, over a sparkline."""

    def __init__(self, key: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="plot")
        self.key = key

    def compose(self) -> ComposeResult:
        yield Static("", classes="plot-title")
        yield Sparkline([], classes="plot-line")

    @property
    def title_text(self) -> str:
        """The title as plain text."""
        visual = self.query_one(".plot-title", Static).visual
        return visual.plain if isinstance(visual, Content) else str(visual)

    def show(self, one: Series) -> None:
        self.query_one(".plot-title", Static).update(one.label())
        self.query_one(Sparkline).data = list(one.values)
