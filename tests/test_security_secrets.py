"""Where secrets may and may not appear (docs/SECURITY.md, "Secrets").

One run with distinctive secrets: the repository password (password_file), a
database password (in a libpq passfile the dsn names, the dsn itself free of
it) and an AWS secret key (the environment). Backup of a database and of files,
replicate to S3, restore of both, and failing commands (wrong repository
password, a database password that does not match). Then every place a secret
could leak is searched: process listings sampled while the backups run
(``ps`` and every ``/proc/*/cmdline``), everything the commands printed
(stdout and stderr, tracebacks included), every file of the state directory
(catalog, admin store with the audit log, locks), the metrics textfile, the
decrypted snapshot records and every byte of the repository and the replica.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid

import boto3
from test_s3 import replica_toml


def _ps_sampler(stop: threading.Event, seen: list[str]) -> None:
    while not stop.is_set():
        seen.append(subprocess.run(["ps", "-eo", "pid,args", "--no-headers", "-ww"],
                                   capture_output=True, text=True).stdout)
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        seen.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
                except OSError:
                    pass
        time.sleep(0.01)


def _run_watched(sandbox, args, env, seen) -> subprocess.CompletedProcess:
    """Run the CLI while ps samples every process's arguments."""
    stop = threading.Event()
    sampler = threading.Thread(target=_ps_sampler, args=(stop, seen), daemon=True)
    sampler.start()
    try:
        return sandbox.cli(*args, env=env)
    finally:
        stop.set()
        sampler.join()


def test_secrets_appear_nowhere(sandbox, pg_cluster, s3_server, s3_buckets, tmp_path):
    tag = uuid.uuid4().hex[:12]
    repo_pw = f"repoPW-{tag}-x"
    db_pw = f"dbPW-{tag}-y"
    aws_secret = f"awsSECRET-{tag}-z"
    wrong_pw = f"wrongPW-{tag}-w"
    secrets = [repo_pw, db_pw, aws_secret, wrong_pw]

    sandbox.pwfile.write_text(repo_pw)
    db = f"sec_{tag}"
    app = pg_cluster.app_user
    pg_cluster.psql(f"ALTER ROLE {app} PASSWORD '{db_pw}'")  # scram over TCP (pg_hba)
    try:
        pg_cluster.createdb(db, owner=app)
        pg_cluster.psql(f"CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v "
                        f"FROM generate_series(1, 300000) g; ALTER TABLE t OWNER TO {app}", db)
        passfile = tmp_path / "pgpass"
        passfile.write_text(f"{pg_cluster.host}:{pg_cluster.port}:*:{app}:{db_pw}\n")
        os.chmod(passfile, 0o600)
        metrics = tmp_path / "metrics.prom"
        dsn = f"postgresql://{app}@{pg_cluster.host}:{pg_cluster.port}/{db}?passfile={passfile}"
        sandbox.extra = (f'[[database]]\nname = "sec"\ndsn = "{dsn}"\n'
                         + replica_toml("offsite", s3_buckets.euw1, "eu-west-1",
                                        s3_server.endpoint_url, replicate_after_backup=False)
                         + f'[metrics]\ntextfile = "{metrics}"\n')
        sandbox.write_config()
        for i in range(40):
            (sandbox.src / f"f{i}").write_bytes(os.urandom(256 << 10))
        env = {"AWS_SECRET_ACCESS_KEY": aws_secret, "AWS_ACCESS_KEY_ID": "testing"}
        seen: list[str] = []
        outputs: list[bytes] = []

        def run(*args, code: int | None = 0, extra_env=None):
            proc = _run_watched(sandbox, args, {**env, **(extra_env or {})}, seen)
            outputs.extend([proc.stdout, proc.stderr])
            if code is not None:
                assert proc.returncode == code, (args, proc.stderr.decode(errors="replace"))
            return proc

        run("init")
        db_snap = json.loads(run("backup", "db", "sec", "--json").stdout)
        files_snap = json.loads(run("backup", "files", "src", "--json").stdout)
        run("replicate")
        run("verify", "--read-data")
        run("restore", "files", files_snap["id"], "--target", str(tmp_path / "restored"))
        # a database restore as a role that may not create databases: a failing command
        run("restore", "db", db_snap["id"], "--target-db", f"{db}_copy", code=None)
        for args in (["list", "--json"], ["status", "--json"], ["audit", "--json"],
                     ["show", db_snap["id"], "--json"], ["list", "--replica", "offsite"]):
            run(*args)

        # failing commands: a wrong repository password, a wrong database password
        wrong = tmp_path / "wrong.pass"
        wrong.write_text(wrong_pw)
        os.chmod(wrong, 0o600)
        good_config = sandbox.config_path.read_text()
        sandbox.config_path.write_text(good_config.replace(str(sandbox.pwfile), str(wrong)))
        assert run("list", code=None).returncode != 0
        sandbox.config_path.write_text(good_config)
        passfile.write_text(f"{pg_cluster.host}:{pg_cluster.port}:*:{app}:{wrong_pw}\n")
        assert run("backup", "db", "sec", code=None).returncode != 0
        passfile.write_text(f"{pg_cluster.host}:{pg_cluster.port}:*:{app}:{db_pw}\n")
        # an unexpected failure's traceback: the CLI run with a broken interpreter state
        tb = subprocess.run(
            [sys.executable, "-c", "import sys, backup_tui.cli as c; "
             "c.COMMANDS['list'] = lambda a, e: 1 / 0; sys.exit(c.main(sys.argv[1:]))",
             "--config", str(sandbox.config_path), "list"],
            capture_output=True, env={**os.environ, **env})
        assert b"ZeroDivisionError" in tb.stderr
        outputs.extend([tb.stdout, tb.stderr])
    finally:
        pg_cluster.psql(f"ALTER ROLE {app} PASSWORD '{pg_cluster.app_password}'")

    assert any("backup_tui.cli" in s for s in seen)  # the sampler saw the commands
    assert any("pg_dump" in s and db in s for s in seen)  # and their children's arguments
    places: dict[str, bytes] = {"ps": "\n".join(seen).encode()}
    places["outputs"] = b"\n".join(outputs)
    for root in (sandbox.state, sandbox.repo):
        for p in root.rglob("*"):
            if p.is_file():
                places[str(p)] = p.read_bytes()
    places["metrics"] = metrics.read_bytes()
    eng = sandbox.engine()
    places["snapshots"] = json.dumps([eng.snapshot(i.id) for i in eng.snapshots()]).encode()
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="eu-west-1")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_buckets.euw1):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=s3_buckets.euw1, Key=obj["Key"])["Body"].read()
            places[f"s3:{obj['Key']}"] = body
    assert len(places) > 10
    for where, blob in places.items():
        for secret in secrets:
            assert secret.encode() not in blob, f"{secret[:6]}... found in {where}"
