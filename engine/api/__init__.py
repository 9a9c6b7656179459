"""The daemon's HTTP API: FastAPI routes under ``/api/v1/backup`` in the daemon's process.

- ``keys``   — the API key store (``api-keys.json`` in the state directory): salted hashes,
  roles, authentication; standard library only, so the ``api-key`` CLI needs no web stack
- ``jobs``   — API jobs (queued, running, ... records in the catalog), run through the
  daemon's scheduler
- ``app``    — ``create_app``: every route, authentication and roles, errors
- ``server`` — ``serve``: uvicorn in a thread, TLS, the loopback rules
- ``models`` — the pydantic request and response models

This package imports nothing on its own: ``import engine.api.keys`` stays cheap and free
of fastapi. Only the daemon and the ``api-key`` CLI import it (never wal-push or the
console).
"""
