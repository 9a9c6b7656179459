"""MemoryBackend: a dict, for fast unit tests. Same contracts as LocalBackend."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from engine.errors import NotFound
from engine.storage.base import ObjectInfo


class MemoryBackend:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.location = "memory"
        self._lock = threading.Lock()

    def get(self, name: str) -> bytes:
        try:
            return self.objects[name]
        except KeyError:
            raise NotFound(f"memory: object {name} not found") from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        return self.get(name)[offset : offset + length]

    def put(self, name: str, data: bytes | memoryview) -> None:
        with self._lock:
            self.objects[name] = bytes(data)

    def stat(self, name: str) -> ObjectInfo:
        return ObjectInfo(name, len(self.get(name)))

    def exists(self, name: str) -> bool:
        return name in self.objects

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._lock:
            items = [(n, len(d)) for n, d in self.objects.items() if n.startswith(prefix)]
        for n, size in items:
            yield ObjectInfo(n, size)

    def delete(self, name: str) -> None:
        with self._lock:
            self.objects.pop(name, None)
