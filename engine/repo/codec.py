"""Compression of blob and file payloads.

An encoded payload starts with one byte: 0x00 the rest is stored as is,
0x01 the rest is one zstd frame. Data that zstd cannot shrink is stored as is,
so incompressible files cost no decompression on restore.
"""

from __future__ import annotations

import threading

import zstandard

from engine.errors import IntegrityError

RAW = 0
ZSTD = 1
MAX_RAW = 64 * 1024 * 1024  # no blob, tree or record decompresses to more than this

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "c", None)
    if cache is None:
        cache = _local.c = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def encode(data: bytes | memoryview, level: int | None) -> bytes:
    """level None: no compression."""
    if level is not None and len(data) > 64:
        packed = _compressor(level).compress(data)
        if len(packed) + 1 < len(data):
            return b"\x01" + packed
    return b"\x00" + bytes(data)


def decode(payload: bytes, what: str, max_size: int = MAX_RAW) -> bytes:
    if not payload:
        raise IntegrityError(f"{what}: empty payload", what)
    kind = payload[0]
    if kind == RAW:
        return payload[1:]
    if kind == ZSTD:
        try:
            return _decompressor().decompress(payload[1:], max_output_size=max_size)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"{what}: cannot decompress: {e}", what) from None
    raise IntegrityError(f"{what}: unknown payload encoding {kind}", what)


def parse_level(setting: str) -> int | None:
    if setting == "none":
        return None
    _, _, level = setting.partition(":")
    return int(level) if level else 3
