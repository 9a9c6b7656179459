"""A files backup from the CLI imports only what it needs: not the console (textual,
rich), not boto3 (no S3 replica configured), not the operations it does not run (the
doctor and drill, which bring psycopg2's server-side helpers; verify; adopt), not
urllib's HTTP client (notifications only when a webhook or command is configured)."""

from __future__ import annotations

import json
import subprocess
import sys

from support import Sandbox

FORBIDDEN = ("textual", "rich", "boto3", "botocore", "urllib.request", "http.client",
             "engine.ops.doctor", "engine.ops.drill", "engine.ops.verify", "engine.ops.adopt",
             "engine.ops.restore_db", "engine.notify", "engine.metrics", "psycopg2",
             "apscheduler")


def _imported(sb: Sandbox, *args: str) -> set[str]:
    """Every module the real CLI process imported for the command (-X importtime)."""
    r = sb.cli(*args)
    assert r.returncode == 0, r.stderr
    cmd = [sys.executable, "-X", "importtime", "-m", "backup_tui.cli",
           "--config", str(sb.config_path), *args]
    r = subprocess.run(cmd, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return {line.split("|")[-1].strip() for line in r.stderr.decode().splitlines()
            if line.startswith("import time:")}


def test_backup_files_imports_nothing_it_does_not_use(tmp_path):
    sb = Sandbox(tmp_path)
    (sb.src / "a").write_text("hello")
    sb.engine(init=True)
    imported = _imported(sb, "backup", "files", "src", "--json")
    assert "engine.sources.files" in imported and "engine.facade" in imported
    assert not [m for m in imported if m in FORBIDDEN or m.split(".")[0] in FORBIDDEN]


def test_a_configured_notification_is_still_sent(tmp_path):
    """notify is imported lazily: a configured command still runs after the job."""
    sb = Sandbox(tmp_path)
    (sb.src / "a").write_text("hello")
    out = tmp_path / "notified.json"
    sb.extra = (f"[notify]\ncommand = \"cat > {out}\"\non_success = true\n")
    sb.write_config()
    sb.engine(init=True)
    r = sb.cli("backup", "files", "src", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["job"]["state"] == "succeeded"
