"""Reading one WAL file for wal-push ahead of everything else (engine/wal.py).

wal-push spends most of its time importing modules and compressing the segment. Reading,
hashing and compressing release the GIL, so `Prepared` does them on a thread started
before the rest of the program is imported (backup_tui/cli_wal.py): on two cores the
segment is ready about when the imports are. This module imports only the standard
library (zstandard inside the thread).
"""

from __future__ import annotations

import hashlib
import threading

MAX_WAL_FILE = 1024 * 1024 * 1024  # the largest wal_segment_size PostgreSQL allows
WAL_LEVEL = 1  # zstd level of archived WAL: PostgreSQL waits for wal-push


def encode(raw: bytes, level: int | None) -> bytes:
    """engine.repo.codec.encode for one WAL file (single-threaded zstd, content size in
    the frame header): 0x01 + frame, or 0x00 + raw when that is not smaller."""
    if level is None or len(raw) <= 64:
        return b"\x00" + raw
    import zstandard

    packed = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(raw)
    if len(packed) + 1 < len(raw):
        return b"\x01" + packed
    return b"\x00" + raw


class Prepared:
    """The file at ``path`` read, hashed and encoded at WAL_LEVEL on a thread."""

    def __init__(self, path: str, level: int | None = WAL_LEVEL):
        self.path = path
        self.level = level
        self.raw = b""
        self.sha256 = ""
        self.encoded: bytes | None = None
        self.error: OSError | None = None  # reading failed
        self.too_large = False
        self._thread = threading.Thread(target=self._run, name="wal-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_WAL_FILE + 1)
        except OSError as e:
            self.error = e
            return
        if len(raw) > MAX_WAL_FILE:
            self.too_large = True
            return
        self.raw = raw
        self.sha256 = hashlib.sha256(raw).hexdigest()
        try:
            self.encoded = encode(raw, self.level)
        except Exception:  # noqa: BLE001 - push encodes again and says what failed
            self.encoded = None

    def wait(self) -> Prepared:
        self._thread.join()
        return self
