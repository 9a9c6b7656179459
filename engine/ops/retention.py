"""Retention: which snapshots a GFS policy keeps. Pure logic, no I/O.

`plan` decides per group of snapshots of one (kind, source), with the semantics
of restic's ``forget``:

- the group is sorted newest first (ties broken by id, so plans are stable);
- ``keep_last N`` keeps the N newest snapshots;
- each bucket rule (``keep_hourly``, ``keep_daily``, ``keep_weekly`` by ISO
  week, ``keep_monthly``, ``keep_yearly``) keeps one snapshot, the newest, of
  each of the N most recent buckets *that have snapshots* (a day without a
  backup does not use up a daily slot); buckets are computed in the time zone
  given to `plan`;
- ``keep_within_days N`` keeps every snapshot newer than ``now - N days``;
- a pinned snapshot is always kept;
- safety: the newest complete snapshot of each group is always kept, even under
  a policy of all zeros (if a group has no complete snapshot at all, its newest
  snapshot is kept instead, so a source that always has read errors is never
  left with nothing). A policy of all zeros keeps nothing else.

Incomplete snapshots (a files backup that hit read errors) are second class:

- ``keep_last`` counts an incomplete snapshot only while no complete snapshot
  of its group is newer (a newer complete one supersedes it);
- within a bucket, the newest *complete* snapshot represents the bucket; an
  incomplete snapshot represents it only when the bucket holds no complete one
  (a day whose only backup had read errors still keeps that backup);
- a forgotten incomplete snapshot with a newer complete one says
  ``"incomplete: newer complete exists"``.

Every kept snapshot lists all the rules that keep it; a forgotten one says why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

BUCKET_RULES = ("hourly", "daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True)
class Policy:
    """How many snapshots of one source to keep. Every field is a count >= 0."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within_days: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"retention {f.name} must be a whole number, not {value!r}")
            if value < 0:
                raise ValueError(f"retention {f.name} must not be negative ({value})")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Policy:
        """Build a policy from a mapping such as the [retention] table.

        Raises ValueError naming the key for an unknown key, a negative value or
        a value that is not a whole number. Missing keys are 0.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in names:
                raise ValueError(
                    f"unknown retention key {key!r} (known: {', '.join(sorted(names))})"
                )
        return cls(**dict(d))

    def merged(self, overrides: Mapping[str, Any]) -> Policy:
        """This policy with the given keys replaced (e.g. a source's own retention).

        Same validation as `from_dict`.
        """
        base = self.as_dict()
        Policy.from_dict(overrides)  # validates the keys and values of the overrides
        base.update(overrides)
        return Policy(**base)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @property
    def keeps_nothing(self) -> bool:
        """All counts are zero: only pins and the newest-of-source safety keep anything."""
        return not any(self.as_dict().values())


@dataclass
class Decision:
    """What the policy does with one snapshot."""

    snapshot_id: str
    time: datetime  # aware
    source: str
    kind: str
    keep: bool
    reasons: list[str] = field(default_factory=list)
    complete: bool = True

    def as_json(self) -> dict:
        return {
            "id": self.snapshot_id,
            "time": self.time.astimezone(UTC).isoformat(),
            "source": self.source,
            "kind": self.kind,
            "keep": self.keep,
            "complete": self.complete,
            "reasons": list(self.reasons),
        }


# ----------------------------------------------------------------- helpers


def _get(snap: Any, name: str, default: Any = None) -> Any:
    if isinstance(snap, Mapping):
        return snap.get(name, default)
    return getattr(snap, name, default)


def _time_of(snap: Any) -> datetime:
    t = _get(snap, "time")
    if isinstance(t, str):
        t = datetime.fromisoformat(t)
    if not isinstance(t, datetime):
        raise ValueError(f"snapshot {_get(snap, 'id')}: time {t!r} is not a date and time")
    if t.tzinfo is None:  # the repository stores UTC; a naive time can only mean UTC
        t = t.replace(tzinfo=UTC)
    return t


def _complete_of(snap: Any) -> bool:
    complete = _get(snap, "complete")
    if complete is None:  # a raw snapshot record says "incomplete"
        return not bool(_get(snap, "incomplete", False))
    return bool(complete)


def bucket(rule: str, t: datetime, tz: tzinfo) -> tuple[tuple, str]:
    """(key, label) of the bucket of `t` for a bucket rule, in time zone `tz`."""
    local = t.astimezone(tz)
    if rule == "hourly":
        # the offset tells apart the two 02:00 hours of a daylight-saving fall-back
        return (local.date(), local.hour, local.utcoffset()), local.strftime("%Y-%m-%d %H:00")
    if rule == "daily":
        return (local.date(),), local.strftime("%Y-%m-%d")
    if rule == "weekly":
        year, week, _ = local.isocalendar()
        return (year, week), f"{year}-W{week:02d}"
    if rule == "monthly":
        return (local.year, local.month), f"{local.year}-{local.month:02d}"
    if rule == "yearly":
        return (local.year,), f"{local.year}"
    raise ValueError(f"unknown bucket rule {rule!r}")


# -------------------------------------------------------------------- plan


def plan(
    snapshots: Iterable[Any],
    policy_for: Callable[[str, str], Policy],
    pinned: set[str] | frozenset[str],
    now: datetime,
    tz: tzinfo,
) -> list[Decision]:
    """Decide, for every snapshot, whether the retention policy keeps it.

    snapshots: mappings or objects with ``id``, ``time`` (aware datetime or ISO
      8601 text; naive means UTC), ``source``, ``kind`` and ``complete`` (or a raw
      record's ``incomplete``).
    policy_for(kind, source): the policy of one group; called once per group.
    pinned: ids of pinned snapshots (always kept).
    now: the aware current time (for keep_within_days).
    tz: the time zone in which hours, days, weeks, months and years are counted.

    Returns one Decision per snapshot, grouped by (kind, source) in sorted order,
    newest first within a group.
    """
    if now.tzinfo is None:
        raise ValueError("plan: 'now' must be an aware datetime")
    groups: dict[tuple[str, str], list[Decision]] = {}
    for s in snapshots:
        d = Decision(
            snapshot_id=str(_get(s, "id")),
            time=_time_of(s),
            source=str(_get(s, "source", "") or ""),
            kind=str(_get(s, "kind", "") or ""),
            keep=False,
            complete=_complete_of(s),
        )
        groups.setdefault((d.kind, d.source), []).append(d)
    out: list[Decision] = []
    for (kind, source), group in sorted(groups.items()):
        _plan_group(group, policy_for(kind, source), pinned, now, tz)
        out.extend(group)
    return out


def _plan_group(
    group: list[Decision], policy: Policy, pinned: set[str] | frozenset[str],
    now: datetime, tz: tzinfo,
) -> None:
    # newest first; equal times by id descending so the order is total and stable
    group.sort(key=lambda d: (d.time, d.snapshot_id), reverse=True)
    reasons: dict[str, list[str]] = {d.snapshot_id: [] for d in group}

    newest_complete = next((d for d in group if d.complete), None)
    # incomplete snapshots count for the rules only while no complete one is newer
    eligible = [
        d for d in group
        if d.complete or newest_complete is None or d.time > newest_complete.time
        or (d.time == newest_complete.time and d.snapshot_id > newest_complete.snapshot_id)
    ]
    eligible_ids = {d.snapshot_id for d in eligible}

    if policy.keep_last:
        for d in eligible[: policy.keep_last]:
            reasons[d.snapshot_id].append(f"last {policy.keep_last}")

    for rule in BUCKET_RULES:
        count = getattr(policy, f"keep_{rule}")
        if not count:
            continue
        buckets: dict[tuple, tuple[str, list[Decision]]] = {}
        order: list[tuple] = []
        for d in group:  # newest first, so buckets appear newest first
            key, label = bucket(rule, d.time, tz)
            if key not in buckets:
                buckets[key] = (label, [])
                order.append(key)
            buckets[key][1].append(d)
        for key in order[:count]:
            label, members = buckets[key]
            chosen = next((d for d in members if d.complete), members[0])
            reasons[chosen.snapshot_id].append(f"{rule} {label}")

    if policy.keep_within_days:
        cutoff = now - timedelta(days=policy.keep_within_days)
        for d in group:
            if d.time > cutoff:
                reasons[d.snapshot_id].append(f"within {policy.keep_within_days} days")

    for d in group:
        if d.snapshot_id in pinned:
            reasons[d.snapshot_id].append("pinned")

    safety = newest_complete or (group[0] if group else None)
    if safety is not None:
        reasons[safety.snapshot_id].append(
            "newest of its source" if safety.complete else "newest of its source (incomplete)"
        )

    for d in group:
        d.reasons = reasons[d.snapshot_id]
        d.keep = bool(d.reasons)
        if not d.keep:
            if not d.complete and d.snapshot_id not in eligible_ids:
                d.reasons = ["incomplete: newer complete exists"]
            else:
                d.reasons = ["no rule keeps it"]


__all__ = ["Policy", "Decision", "plan", "bucket", "BUCKET_RULES"]
