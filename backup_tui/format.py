"""Display formatting shared by the console and the CLI: the engine returns numbers and
times, the front ends decide how they read.

``human_bytes`` (binary units), ``duration`` (seconds as an operator reads them),
``local_time`` (an aware time in the local time zone) and ``cut`` (text on one
line, cut short with an ellipsis).
"""

from __future__ import annotations

from datetime import datetime

TIME_FORMAT = "%Y-%m-%d %H:%M"


def human_bytes(n: float) -> str:
    """``512 B``, ``1.5 KiB``, ... ``2.0 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def duration(seconds: float) -> str:
    """``4.2 s``, ``37 s``, ``3m 05s``, ``2h 07m``."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def local_time(moment: datetime, fmt: str = TIME_FORMAT) -> str:
    """An aware time in the local time zone."""
    return moment.astimezone().strftime(fmt)


def cut(text: str | None, width: int) -> str:
    """``text`` on one line (runs of white space become one space), cut to ``width`` with
    an ellipsis."""
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"
