#!/usr/bin/env python3
"""Profile ``backup-tui backup db`` / ``restore db`` with py-spy, on a scratch cluster.

    .venv/bin/pip install py-spy          # into the venv only, not a project dependency
    .venv/bin/python bench/profile_db.py --db pgbench --scale 65
    .venv/bin/python bench/profile_db.py --db app --mib 1024 --phase restore

Starts its own PostgreSQL cluster (as bench/run_db.py does, under WORK/profile-db),
generates the database (bench/gen_db.py or pgbench -i), then, page cache dropped
and after a CHECKPOINT:

1. times the pieces of a dump without us: ``pg_dump -Fc -Z0 > /dev/null`` (the raw
   stream, server and pg_dump only), ``pg_dump -Fc -f FILE`` (the comparison);
2. runs our command under ``py-spy record --idle --threads`` and prints bench/
   profile.py's per-thread report (inclusive and self share of each function);
3. reports the CPU time of the command (with its pg_dump child) and of the
   server's backends while it ran.

The cluster is destroyed at the end; the raw py-spy stacks stay in
WORK/profile-db/PHASE.raw.txt unless --clean.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import benchlib as bl  # noqa: E402
import gen_db  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", choices=["pgbench", "app"], default="pgbench")
    ap.add_argument("--scale", type=int, default=65)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--phase", choices=["backup", "restore"], default="backup")
    ap.add_argument("--format", choices=["custom", "directory"], default="custom")
    ap.add_argument("--work", type=Path, default=HERE / "work" / "profile-db")
    ap.add_argument("--code", default="HEAD")
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--top", type=int, default=18)
    ap.add_argument("--clean", action="store_true", help="remove the work dir at the end")
    ap.add_argument("--active", action="store_true",
                    help="sample only threads on the CPU (no --idle): shares of CPU, not wall")
    args = ap.parse_args()

    spec = importlib.util.spec_from_file_location("bench_profile", HERE / "profile.py")
    prof = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prof)
    pyspy = str(Path(bl.PYTHON).parent / "py-spy")
    if not os.access(pyspy, os.X_OK):
        raise SystemExit("py-spy missing: .venv/bin/pip install py-spy")

    sys.path.insert(0, str(bl.ROOT))
    from engine.sandbox import PgCluster, make_dirs

    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    make_dirs(work)  # 0755: the postgres OS user reaches the cluster's folder in it
    env, ours_cmd, label = bl.export_code(args.code, work)
    cluster = PgCluster(work / "pg").init().start()
    try:
        cluster.psql("ALTER SYSTEM SET shared_buffers = '256MB'; ALTER SYSTEM SET "
                     "max_wal_size = '4GB'; ALTER SYSTEM SET autovacuum = off;")
        cluster.restart()
        pgenv = cluster.client_environ()
        db = args.db
        cluster.psql(f"CREATE DATABASE {db}")
        if db == "pgbench":
            gen_db.gen_pgbench(str(cluster.bin_dir / "pgbench"), pgenv, db, args.scale)
        else:
            gen_db.gen_app(cluster.psql, db, args.mib)
        cluster.psql("VACUUM ANALYZE", db)
        size = int(cluster.psql(f"SELECT pg_database_size('{db}')").strip())
        postmaster = cluster.postmaster_pid()
        repo = work / "repo"
        (work / "state").mkdir()
        (work / "pw").write_text("bench-password\n")
        cfg = work / "config.toml"
        cfg.write_text(
            f"[repository]\npath = {json.dumps(str(repo))}\n"
            f"password_file = {json.dumps(str(work / 'pw'))}\n"
            f"[state]\ndir = {json.dumps(str(work / 'state'))}\n"
            f"[[database]]\nname = {json.dumps(db)}\ndsn = {json.dumps(cluster.dsn(db))}\n"
            f'format = "{args.format}"\n' + ("jobs = 2\n" if args.format == "directory" else "")
        )
        ours = [*ours_cmd, "--config", str(cfg)]
        bl.sh([*ours, "init"], env=env)
        cache = bl.Cache(True)

        def timed(cmd: list[str], e: dict, **kw) -> tuple[float, float, float]:
            """(wall, cpu of the command and children, server cpu)"""
            cluster.psql("CHECKPOINT")
            cache.before()
            s0 = bl.proc_cpu(postmaster)
            r0 = os.times()
            t0 = time.perf_counter()
            subprocess.run(cmd, env=e, check=True, **kw)
            wall = time.perf_counter() - t0
            r1 = os.times()
            cpu = (r1.children_user - r0.children_user) + (r1.children_system
                                                           - r0.children_system)
            return wall, cpu, bl.proc_cpu(postmaster) - s0

        lines = [f"{db}: {size / 2**20:,.0f} MiB; code {label}; format {args.format}", ""]
        pg_dump = str(cluster.bin_dir / "pg_dump")
        if args.phase == "backup":
            for name, cmd, kw in (
                ("pg_dump -Fc -Z0 > /dev/null", [pg_dump, "-Fc", "-Z0", db],
                 {"stdout": subprocess.DEVNULL}),
                ("pg_dump -Fc -f FILE", [pg_dump, "-Fc", "-f", str(work / "f.dump"), db], {}),
            ):
                w, c, s = timed(cmd, pgenv, **kw)
                lines.append(f"{name:34} wall {w:6.2f} s  cpu {c:5.2f} s  server cpu {s:5.2f} s")
            (work / "f.dump").unlink()
            cmd = [*ours, "backup", "db", db, "--json"]
        else:
            bl.sh([*ours, "backup", "db", db, "--json"], env=env)
            cmd = [*ours, "restore", "db", "latest", "--source", db, "--target-db", f"{db}_r"]
        raw = work / f"{args.phase}.raw.txt"
        idle = [] if args.active else ["--idle"]
        w, c, s = timed([pyspy, "record", *idle, "--threads", "-f", "raw", "-r",
                         str(args.rate), "-o", str(raw), "--", *cmd], env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lines.append(f"{'ours under py-spy: ' + args.phase:34} wall {w:6.2f} s  cpu {c:5.2f} s  "
                     f"server cpu {s:5.2f} s (py-spy's own CPU included in cpu)")
        if args.active:
            lines.append("(--active: only on-CPU samples; a share of 100% = one core busy "
                         "for the whole run)")
        lines.append("")
        text = "\n".join(lines) + "\n" + prof.report(raw, w, args.rate, args.top)
        (work / f"{args.phase}.report.txt").write_text(text)
        print(text)
    finally:
        cluster.destroy()
        if args.clean:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
