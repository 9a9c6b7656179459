"""The Backend protocol: a flat namespace of named, immutable byte objects.

Names are relative, '/'-separated paths such as ``data/ab/ab12...`` or
``snapshots/9f...``. Contracts every backend keeps (and tests/test_backends.py
checks for each):

- ``get``/``get_range``/``stat`` raise `engine.errors.NotFound` for a missing
  name (also for a zero-length range); the message names the object and the
  ``location``. Reads are idempotent and have no side effects.
- ``get_range(name, offset, length)`` (both non-negative) returns the bytes at
  ``offset`` up to ``length`` of them, clipped at the end of the object: fewer,
  or none when ``offset`` is at or past the end. ``length`` 0 gives ``b""``.
- ``put`` takes any bytes-like object and is atomic: a reader sees the whole
  object or none of it, also after a crash mid-write. Putting an existing name
  replaces it (only ``config``, ``locks/`` and a repaired object are ever
  replaced; everything else is content addressed), and later reads of any kind
  see the new bytes.
- ``list(prefix)`` yields every object whose name starts with ``prefix`` (a
  plain string prefix, not a folder), once, in any order, never temporary
  files of an unfinished ``put``.
- ``delete`` of a missing name is not an error.
- Names are a flat namespace: ``a/b`` is no object just because ``a/b/c`` is
  one. A name is never also the folder of other names (``a/b`` beside
  ``a/b/c``): LocalBackend cannot store both, and the format never needs it.
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

    def put(self, name: str, data: bytes | memoryview) -> None: ...

    def stat(self, name: str) -> ObjectInfo: ...

    def exists(self, name: str) -> bool: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete(self, name: str) -> None: ...
