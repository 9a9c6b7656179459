"""Notifications: tell people when a job fails (and, if asked, when it succeeds).

Two channels from ``[notify]``: a JSON POST to ``webhook_url`` (a Slack-compatible
``text`` field plus the job), and a ``command`` run with the job as JSON on its
standard input. Each is bounded by ``timeout_seconds``. A notification that
fails is logged and never fails the job. Job records carry no secrets.
"""

from __future__ import annotations

import json
import logging
import subprocess
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.config import NotifyConfig

log = logging.getLogger("backup_tui.notify")


def summary(job: dict) -> str:
    state = job.get("state", "?")
    head = f"backup-tui: {job.get('kind', 'job')} {job.get('target', '')} {state}"
    if job.get("error"):
        head += f": {job['error']}"
    return head[:3000]


def notify(settings: NotifyConfig, job: dict) -> list[str]:
    """Send the job's notifications as configured; returns what went wrong (logged too)."""
    failed = job.get("state") not in ("succeeded",)
    if not failed and not settings.on_success:
        return []
    timeout = max(1, int(settings.timeout_seconds))
    problems = []
    payload = json.dumps({"text": summary(job), "job": job}, default=str).encode()
    url = settings.webhook_url
    if url:
        req = urllib.request.Request(url, data=payload, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "backup-tui"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
                resp.read(1024)
        except urllib.error.HTTPError as e:
            problems.append(f"webhook answered HTTP {e.code}")
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            problems.append(f"webhook failed: {reason}")
    cmd = settings.command
    if cmd:
        try:
            proc = subprocess.run(cmd, shell=True, input=payload, capture_output=True,
                                  timeout=timeout)
            if proc.returncode != 0:
                problems.append(f"notify command exited {proc.returncode}: "
                                f"{proc.stderr.decode('utf-8', 'replace').strip()[-200:]}")
        except subprocess.TimeoutExpired:
            problems.append(f"notify command timed out after {timeout}s")
        except OSError as e:
            problems.append(f"notify command failed: {e.strerror}")
    for p in problems:
        log.warning("notification failed: %s (job %s)", p, job.get("id"))
    return problems
