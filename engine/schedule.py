"""Schedules: cron expressions from ``[schedule]`` turned into triggers and next run times.

The schedule kinds are one per source kind (``database``, ``files``: from the
registry) plus the operations (``cleanup``, ``verify``, ``replicate``); see
``engine.config.schedule_kinds``.

Whether a schedule has anything to run (``runnable``): a source kind's schedule
needs a source of that kind, ``replicate`` a ``[[replica]]``, ``drill`` a source
whose kind can be drilled; the scheduler runs nothing for the others and records
"nothing to run" (``engine.daemon.Scheduler._targets``). ``status.schedules``
says so per schedule, and the console shows such a schedule greyed out.

An expression has 5 fields (minute hour day month weekday, as cron) or 6 with
seconds first (``*/5 * * * * *``: every 5 seconds, for tests and drills of the
daemon itself); ``off`` or an empty string disables a schedule.
"""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.config import Config


def make_trigger(expr: str, tz: tzinfo):
    """An APScheduler CronTrigger, or None for a disabled schedule. ValueError if bad."""
    from apscheduler.triggers.cron import CronTrigger

    expr = expr.strip()
    if expr in ("", "off"):
        return None
    fields = expr.split()
    if len(fields) == 5:
        return CronTrigger.from_crontab(expr, timezone=tz)
    if len(fields) == 6:
        second, minute, hour, day, month, dow = fields
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                           day_of_week=dow, timezone=tz)
    raise ValueError(f"expected 5 fields (or 6 with seconds first), got {len(fields)}")


def next_run(expr: str, tz: tzinfo, after: datetime) -> datetime | None:
    trig = make_trigger(expr, tz)
    return trig.get_next_fire_time(None, after) if trig else None


def missed_since(
    expr: str, tz: tzinfo, last_run: datetime | None, now: datetime
) -> datetime | None:
    """The most recent fire time after last_run and not after now, if any (a run missed
    while nothing was running). A last run in the future (the clock went back) misses
    nothing."""
    trig = make_trigger(expr, tz)
    if trig is None or last_run is None or last_run >= now:
        return None
    fire = trig.get_next_fire_time(None, last_run)
    missed = None
    for _ in range(100_000):  # bounded: a seconds schedule down for a long time
        if fire is None or fire > now:
            break
        missed = fire
        fire = trig.get_next_fire_time(fire, fire + timedelta(microseconds=1))
    return missed


def runnable(config: Config, kind: str) -> tuple[bool, str]:
    """Whether schedule ``kind`` has anything to run with ``config``; if not, why (a
    sentence fragment: "no [[replica]] is configured"). See the module docstring."""
    from engine.ops.drill import drillable
    from engine.sources import registry

    for cls in registry.kinds():
        if cls.schedule == kind:
            if registry.for_schedule(config, kind):
                return True, ""
            sections = [f"[[{c.section()}]]" for c in registry.kinds() if c.schedule == kind]
            return False, f"no {' or '.join(sections)} is configured"
    if kind == "replicate" and not config.replicas:
        return False, "no [[replica]] is configured"
    if kind == "drill" and not any(drillable(s) for s in registry.sources(config)):
        return False, "no configured source can be drilled"
    return True, ""
