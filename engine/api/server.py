"""Serving the API: uvicorn in a thread of the daemon's process (so API jobs share the
scheduler's queue, locks and job records), with TLS when configured.

``[api] listen`` on a non-loopback address is refused by the config check unless TLS is
set or ``allow_plaintext`` is; the latter is logged as a warning at every start. uvicorn's
own access log is off: it would print query strings, and our lines never carry a key.
"""

from __future__ import annotations

import logging
import threading
import time

from engine.config import is_loopback, split_listen
from engine.errors import EngineError

log = logging.getLogger("backup_tui.api")

STARTUP_WAIT = 15.0  # seconds for uvicorn to bind before the daemon gives up


class ApiServer:
    """One uvicorn server on its own thread; ``stop()`` ends it (open event streams are
    closed after a short grace)."""

    def __init__(self, app, listen: str, tls_cert: str = "", tls_key: str = "",
                 what: str = "api") -> None:
        import uvicorn

        host, port = split_listen(listen)
        self.listen, self.what = listen, what
        self.tls = bool(tls_cert)
        config = uvicorn.Config(app, host=host, port=port, log_config=None,
                                access_log=False, lifespan="off", server_header=False,
                                timeout_graceful_shutdown=3,
                                ssl_certfile=tls_cert or None, ssl_keyfile=tls_key or None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True,
                                        name=f"http-{what}")

    def start(self) -> ApiServer:
        self._thread.start()
        deadline = time.monotonic() + STARTUP_WAIT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._server.should_exit = True
                raise EngineError(f"[{self.what}] listen = {self.listen!r}: cannot serve there "
                                  "(address in use, or not an address of this machine?)")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def serve_api(engine, scheduler) -> ApiServer:
    """The API of ``[api]``, started. Raises EngineError when it cannot listen."""
    from engine.api.app import create_app
    from engine.api.jobs import ApiJobs

    api = engine.config.api
    host, _port = split_listen(api.listen)
    loopback = is_loopback(host)
    if not loopback and not api.tls_cert:
        log.warning("THE API SERVES PLAIN HTTP ON A NON-LOOPBACK ADDRESS (%s): API keys and "
                    "data cross the network unencrypted (allow_plaintext = true); put a TLS "
                    "proxy in front or set api.tls_cert and api.tls_key", api.listen)
    app = create_app(engine, scheduler, ApiJobs(engine, scheduler), open_health=loopback)
    server = ApiServer(app, api.listen, api.tls_cert, api.tls_key).start()
    log.info("serving the API", extra={"fields": {
        "listen": api.listen, "tls": "yes" if api.tls_cert else "no",
        "openapi": "/api/v1/openapi.json"}})
    return server


def serve_metrics(engine, listen: str) -> ApiServer:
    """``[metrics] listen``: /health and /metrics only, on a loopback address."""
    from engine.api.app import create_app

    try:
        host, _port = split_listen(listen)
    except ValueError:
        host = ""
    if not is_loopback(host):
        raise EngineError(f"metrics.listen {listen!r}: only a loopback address may be used "
                          "(127.0.0.1:PORT or [::1]:PORT)")
    server = ApiServer(create_app(engine, metrics_only=True), listen, what="metrics").start()
    log.info("serving /health and /metrics", extra={"fields": {"listen": listen}})
    return server
