"""The Backend protocol: a flat namespace of named, immutable byte objects.

Names are relative, '/'-separated paths such as ``data/ab/ab12...`` or
``snapshots/9f...``. Contracts every backend keeps (and tests/test_backends.py
checks for each):

- ``get``/``get_range`` raise `engine.errors.NotFound` for a missing name; reads
  are idempotent and have no side effects.
- ``put`` is atomic: a reader sees the whole object or none of it, also after a
  crash mid-write. Putting an existing name replaces it (only ``config`` and
  ``locks/`` are ever replaced; everything else is content addressed).
- ``list(prefix)`` yields every object whose name starts with ``prefix``, in
  any order, never temporary files of an unfinished ``put``.
- ``delete`` of a missing name is not an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int


class Backend(Protocol):
    location: str  # human-readable place, for messages

    def get(self, name: str) -> bytes: ...

    def get_range(self, name: str, offset: int, length: int) -> bytes: ...

    def put(self, name: str, data: bytes) -> None: ...

    def stat(self, name: str) -> ObjectInfo: ...

    def exists(self, name: str) -> bool: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete(self, name: str) -> None: ...
