"""Where repository objects live: a small Backend protocol and its implementations."""

from engine.storage.base import Backend, ObjectInfo
from engine.storage.local import LocalBackend
from engine.storage.memory import MemoryBackend

__all__ = ["Backend", "ObjectInfo", "LocalBackend", "MemoryBackend"]
