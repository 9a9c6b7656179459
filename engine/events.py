"""Progress events: the one type every operation reports through.

An operation calls `on_event(Event(...))` from the thread that runs it (the
caller's thread for the facade's blocking methods). Consumers must be cheap and
thread-safe: the TUI turns an event into a Textual message, the CLI redraws a
line, the catalog stores the latest one per job (throttled).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    """A job's state at one moment."""

    job_id: str
    phase: str  # "scan", "backup", "restore", "verify", "done", "failed", ...
    bytes_done: int = 0
    bytes_total: int = 0
    items_done: int = 0
    items_total: int = 0
    message: str = ""
    time: float = field(default_factory=time.time)
    final: bool = False  # the last event of a job

    @property
    def fraction(self) -> float | None:
        if self.bytes_total > 0:
            return min(1.0, self.bytes_done / self.bytes_total)
        if self.items_total > 0:
            return min(1.0, self.items_done / self.items_total)
        return None


EventCallback = Callable[[Event], None]


def ignore(_event: Event) -> None:
    """The default callback."""


class CancelToken:
    """Set by a caller to ask a running operation to stop at its next check."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a cancel request; True once there is one."""
        return self._event.wait(timeout)

    def check(self) -> None:
        if self._event.is_set():
            from engine.errors import Cancelled

            raise Cancelled("cancelled by request")


class Throttle:
    """Pass at most one non-final event per `interval` seconds to `callback`."""

    def __init__(self, callback: EventCallback, interval: float = 0.1):
        self.callback = callback
        self.interval = interval
        self._last = 0.0

    def __call__(self, event: Event) -> None:
        now = time.monotonic()
        if event.final or now - self._last >= self.interval:
            self._last = now
            self.callback(event)
