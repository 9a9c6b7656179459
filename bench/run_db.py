#!/usr/bin/env python3
"""Benchmark ``backup-tui backup db`` / ``restore db`` against pg_dump -Fc / pg_restore -j2.

Run from the repository root with the project's venv (as root, so the page
cache can be dropped and the scratch server runs as the ``postgres`` user)::

    .venv/bin/python bench/run_db.py                        # ~1 GB each: ~12-15 minutes
    .venv/bin/python bench/run_db.py --scale 4 --app-mib 64 --no-results   # smoke (~2 min)

Two databases side by side in one run, on a throwaway PostgreSQL cluster of
its own (``engine.sandbox.PgCluster`` on a free loopback port, with
shared_buffers=256MB, max_wal_size=4GB, autovacuum off; never the system
server), destroyed at the end:

- ``pgbench``: ``pgbench -i -s 65``; day 2 = ``pgbench -T 30``.
- ``app``: bench/gen_db.py's application-like database (append-only events,
  mostly static documents with text bodies, a small users table); day 2 = 1% new
  events appended, 0.1% of users updated.

For each: day 1 ``backup-tui backup db`` against ``pg_dump -Fc -f FILE`` (wall,
peak RSS, bytes: ``du -sb`` of our repository, the size of the file), plus a
reference pipe ``pg_dump -Fc -Z0 | zstd -3`` (the dump stream our engine reads,
compressed as our repository compresses, without chunking, dedup, encryption);
day 2 the same again (our repository's growth against the second file's full
size); then ``backup-tui restore db latest`` into a new database against
``createdb && pg_restore -j2`` of the day-2 file (and ``pg_restore`` without -j,
a reference: the serial restore ours does from a stream). Every restored
database is compared with its source (per table row count and a sum of row
hashes, index and constraint counts) and dropped.

Timing is bench/run.py's: ``/usr/bin/time -f %M`` per command, the page cache
dropped before each, a wait for a quiet machine, the code under test from
``git archive HEAD`` of engine/ and backup_tui/. A ``CHECKPOINT`` precedes each
timed command, so nobody pays for the previous one's dirty buffers.
``--variants custom,directory,auto`` adds more of our configurations
(``format = "directory", jobs = 2``; ``format = "auto"``, the config's default,
which picks directory with jobs = cores from 512 MiB), each in its own repository.

A dated section is appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import benchlib as bl  # noqa: E402
import gen_db  # noqa: E402

ROOT = bl.ROOT
MiB = bl.MiB
DBS = ("pgbench", "app")
BACKUP_WALL_TARGET = 1.2
DAY1_BYTES_TARGET = 1.2
DAY2_APP_ADDED_TARGET = 0.10
RESTORE_WALL_TARGET = 1.2
RSS_TARGET_MIB = 250

VARIANTS = {
    "custom": 'format = "custom"\n',
    "directory": 'format = "directory"\njobs = 2\n',
    "auto": 'format = "auto"\n',  # the default: directory (jobs = cores) from 512 MiB
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=65, help="pgbench -i -s (default 65, ~1 GB)")
    ap.add_argument("--app-mib", type=int, default=1024, help="app database size (1024)")
    ap.add_argument("--pgbench-seconds", type=int, default=30, help="day 2: pgbench -T")
    ap.add_argument("--repeat", type=int, default=3,
                    help="day-1 samples of ours (custom) and pg_dump -Fc; the median is used")
    ap.add_argument("--variants", default="custom",
                    help="our configurations, comma-separated: custom (default), directory, "
                    "auto (the config's default format)")
    ap.add_argument("--work", type=Path, default=HERE / "work" / "db")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--no-results", action="store_true")
    ap.add_argument("--no-drop-caches", action="store_true")
    ap.add_argument("--quiet-wait", type=float, default=120,
                    help="wait up to this many seconds for an idle machine before each "
                    "timed command (default 120)")
    ap.add_argument("--code", default="HEAD", help="git revision to measure, or 'worktree'")
    ap.add_argument("--keep", action="store_true", help="keep the cluster's data and repos")
    ap.add_argument("--note", action="append", default=[], help="a line for the report")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}")

    sys.path.insert(0, str(ROOT))  # engine.sandbox for the scratch server (not measured)
    from engine.sandbox import PgCluster, make_dirs

    work: Path = args.work.resolve()
    if shutil.disk_usage(work.parent if work.parent.exists() else HERE).free < 12 * 2**30:
        raise SystemExit("bench: needs about 12 GiB free")
    shutil.rmtree(work, ignore_errors=True)
    # the server runs as the postgres user under root: folders made here are 0755 (the
    # cluster says so, should one above them not let that user through)
    make_dirs(work)
    time_bin = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
    cache = bl.Cache(not args.no_drop_caches)
    runner = bl.Runner(work, cache, time_bin, args.quiet_wait)
    ours_env, ours_cmd, code_label = bl.export_code(args.code, work)
    info = bl.machine(work, code_label)
    started = dt.datetime.now(dt.UTC)
    t_start = time.monotonic()

    cluster = PgCluster(work / "pg")
    bl.log(f"initdb in {cluster.base_dir}")
    cluster.init().start()
    bl.log(f"server on port {cluster.port}")
    try:
        return run(args, variants, work, cluster, runner, cache, ours_env, ours_cmd, info,
                   started, t_start)
    finally:
        if args.keep:
            bl.log(f"--keep: cluster left running on port {cluster.port}, data in {work}")
        else:
            cluster.destroy()
            shutil.rmtree(work, ignore_errors=True)
            bl.log("cluster stopped and removed, work dir removed")


def run(args, variants, work, cluster, runner, cache, ours_env, ours_cmd, info, started,
        t_start) -> int:
    settings = {"shared_buffers": "256MB", "max_wal_size": "4GB", "autovacuum": "off"}
    cluster.psql("".join(f"ALTER SYSTEM SET {k} = '{v}';" for k, v in settings.items()))
    cluster.restart()
    server_version = cluster.psql("SHOW server_version").strip()
    info["postgresql"] = (
        f"{server_version}, scratch cluster on 127.0.0.1:{cluster.port} (locale C, fsync=off, "
        "max_connections=50 as engine.sandbox.PgCluster sets it up; "
        + ", ".join(f"{k}={v}" for k, v in settings.items()) + "; other settings default)"
    )
    pgbin = cluster.bin_dir
    pgenv = cluster.client_environ()

    def checkpoint() -> None:
        cluster.psql("CHECKPOINT")

    postmaster = cluster.postmaster_pid()

    def timed(label: str, cmd: list[str], env: dict) -> dict:
        # the server's backends work for the command: their CPU is not "other load"
        return bl.run_beside(runner, lambda: bl.proc_cpu(postmaster), label, cmd, env)

    # ------------------------------------------------------------ databases
    gen: dict[str, dict] = {}
    for db in DBS:
        cluster.psql(f"CREATE DATABASE {db}")
    bl.log(f"pgbench -i -s {args.scale}")
    gen["pgbench"] = gen_db.gen_pgbench(str(pgbin / "pgbench"), pgenv, "pgbench", args.scale)
    bl.log(f"app database, {args.app_mib} MiB")
    gen["app"] = gen_db.gen_app(cluster.psql, "app", args.app_mib)
    for db in DBS:
        cluster.psql("VACUUM ANALYZE", db)
        gen[db]["db_size"] = int(cluster.psql(f"SELECT pg_database_size('{db}')").strip())
        gen[db]["tables"] = table_sizes(cluster, db)
        bl.log(f"{db}: {gen[db]['db_size'] / MiB:.0f} MiB in {gen[db]['seconds']} s")

    # ------------------------------------------------------------ our setups
    cfgs: dict[tuple[str, str], Path] = {}
    repos: dict[tuple[str, str], Path] = {}
    for db in DBS:
        for v in variants:
            d = work / f"ours-{db}-{v}"
            (d / "state").mkdir(parents=True)
            pw = d / "password"
            pw.write_text("bench-password\n")
            pw.chmod(0o600)
            repos[db, v] = d / "repo"
            cfgs[db, v] = d / "config.toml"
            cfgs[db, v].write_text(
                "[repository]\n"
                f"path = {json.dumps(str(d / 'repo'))}\n"
                f"password_file = {json.dumps(str(pw))}\n"
                'compression = "zstd:3"\n\n'
                f"[state]\ndir = {json.dumps(str(d / 'state'))}\n\n"
                "[[database]]\n"
                f"name = {json.dumps(db)}\n"
                f"dsn = {json.dumps(cluster.dsn(db))}\n" + VARIANTS[v]
            )
            bl.sh([*ours_cmd, "--config", str(cfgs[db, v]), "init"], env=ours_env)

    def ours(db: str, v: str, *a: str) -> list[str]:
        return [*ours_cmd, "--config", str(cfgs[db, v]), *a]

    dumps = work / "dumps"
    dumps.mkdir()
    os.chmod(dumps, 0o755)
    res: dict = {db: {"day1": {}, "day2": {}, "restore": {}} for db in DBS}

    def backups(day: str) -> None:
        for db in DBS:
            for v in variants:
                before = bl.du_bytes(repos[db, v])
                checkpoint()
                r = timed(f"{day} {db} ours-{v}", ours(db, v, "backup", "db", db, "--json"),
                               env=ours_env)
                j = json.loads(r["stdout"])
                after = bl.du_bytes(repos[db, v])
                res[db][day][f"ours-{v}"] = {
                    "wall": r["wall"], "cpu": r["cpu"], "rss": r["rss_mib"],
                    "server_cpu": r["server_cpu"], "stored": after, "new": after - before,
                    "added": j.get("added"),
                    "stream": j.get("size"),
                }
            f = dumps / f"{db}-{day}.dump"
            checkpoint()
            r = timed(f"{day} {db} pg_dump -Fc",
                           [str(pgbin / "pg_dump"), "-Fc", "-f", str(f), db], env=pgenv)
            res[db][day]["pg_dump"] = {"wall": r["wall"], "cpu": r["cpu"], "rss": r["rss_mib"],
                                       "server_cpu": r["server_cpu"],
                                       "stored": f.stat().st_size, "new": f.stat().st_size}
            checkpoint()
            r = timed(
                f"{day} {db} pg_dump -Fc -Z0 | zstd -3 (reference)",
                ["bash", "-c",
                 'set -o pipefail; "$1" -Fc -Z0 "$2" | zstd -q -3 -T1 -c | wc -c',
                 "_", str(pgbin / "pg_dump"), db], env=pgenv)
            res[db][day]["zstd"] = {"wall": r["wall"], "cpu": r["cpu"], "rss": r["rss_mib"],
                                    "server_cpu": r["server_cpu"],
                                    "stored": int(r["stdout"].strip()),
                                    "new": int(r["stdout"].strip())}

    # ------------------------------------------------------------ day 1
    backups("day1")
    # More day-1 samples of the two commands the backup-wall target compares (the machine
    # is shared; the median is what the target uses): ours into a fresh throwaway
    # repository each time (so nothing dedups), pg_dump into a scratch file.
    for db in DBS:
        for k in ("ours-custom", "pg_dump"):
            if k in res[db]["day1"]:
                res[db]["day1"][k]["samples"] = [res[db]["day1"][k]["wall"]]
    for i in range(2, args.repeat + 1):
        for db in DBS:
            if "custom" in variants:
                d = work / f"sample-{db}"
                shutil.rmtree(d, ignore_errors=True)
                (d / "state").mkdir(parents=True)
                cfg = d / "config.toml"
                cfg.write_text(cfgs[db, "custom"].read_text()
                               .replace(json.dumps(str(repos[db, "custom"])),
                                        json.dumps(str(d / "repo")))
                               .replace(json.dumps(str(repos[db, "custom"].parent / "state")),
                                        json.dumps(str(d / "state"))))
                bl.sh([*ours_cmd, "--config", str(cfg), "init"], env=ours_env)
                checkpoint()
                r = timed(f"day1 {db} ours-custom, sample {i}",
                          [*ours_cmd, "--config", str(cfg), "backup", "db", db, "--json"],
                          env=ours_env)
                res[db]["day1"]["ours-custom"]["samples"].append(r["wall"])
                shutil.rmtree(d)
            f = dumps / f"sample-{db}.dump"
            checkpoint()
            r = timed(f"day1 {db} pg_dump -Fc, sample {i}",
                      [str(pgbin / "pg_dump"), "-Fc", "-f", str(f), db], env=pgenv)
            res[db]["day1"]["pg_dump"]["samples"].append(r["wall"])
            f.unlink()
    for db in DBS:
        for row in res[db]["day1"].values():
            if "samples" in row:
                row["wall_first"] = row["wall"]
                row["wall"] = statistics.median(row["samples"])
    for db in DBS:  # the day-1 file is only measured; the day-2 one is restored
        (dumps / f"{db}-day1.dump").unlink()

    # ------------------------------------------------------------ day 2
    bl.log(f"day 2: pgbench -T {args.pgbench_seconds}; app: +1% events, 0.1% users updated")
    mut = {
        "pgbench": gen_db.pgbench_day2(str(pgbin / "pgbench"), pgenv, "pgbench",
                                       args.pgbench_seconds),
        "app": gen_db.app_day2(cluster.psql, "app", args.app_mib),
    }
    for db in DBS:
        cluster.psql("VACUUM ANALYZE", db)  # autovacuum is off: do its work before timing
        mut[db]["db_size"] = int(cluster.psql(f"SELECT pg_database_size('{db}')").strip())
    backups("day2")

    # ------------------------------------------------------------ restore
    checks: list[str] = []
    problems: list[str] = []
    for db in DBS:
        want = digest(cluster, db)
        dump = dumps / f"{db}-day2.dump"

        def restored(label: str, newdb: str, db: str = db, want: dict = want) -> None:
            got = digest(cluster, newdb)
            if got != want:
                diff = {k: (want.get(k), got.get(k)) for k in set(want) | set(got)
                        if want.get(k) != got.get(k)}
                problems.append(f"{label}: restored {newdb} differs from {db}: {diff}")
                checks.append(f"**{label}: RESTORED DATABASE DIFFERS** {diff}")
                bl.log(f"!!!!! {label}: restored database differs: {diff}")
            else:
                checks.append(
                    f"{label}: restored database matches {db} ({want['_tables']} tables: row "
                    f"counts and row-hash sums; {want['_indexes']} indexes, "
                    f"{want['_constraints']} constraints)"
                )
            cluster.psql(f"DROP DATABASE {newdb}")

        for v in variants:
            newdb = f"{db}_ours_{v}"
            checkpoint()
            r = timed(
                f"restore {db} ours-{v}",
                ours(db, v, "restore", "db", "latest", "--source", db, "--target-db", newdb,
                     "--json"),
                env=ours_env,
            )
            res[db]["restore"][f"ours-{v}"] = {"wall": r["wall"], "cpu": r["cpu"],
                                               "rss": r["rss_mib"],
                                               "server_cpu": r["server_cpu"]}
            restored(f"{db} ours-{v}", newdb)
        for label, jobs in (("pg_restore -j2", ["-j2"]), ("pg_restore (serial, reference)", [])):
            newdb = f"{db}_pgr{len(jobs)}"
            checkpoint()
            r = timed(
                f"restore {db} {label}",
                ["bash", "-c", 'set -e; "$1" "$2"; shift 2; exec "$@"', "_",
                 str(pgbin / "createdb"), newdb,
                 str(pgbin / "pg_restore"), *jobs, "--exit-on-error", "-d", newdb, str(dump)],
                env=pgenv,
            )
            key = "pg_restore" if jobs else "pg_restore_serial"
            res[db]["restore"][key] = {"wall": r["wall"], "cpu": r["cpu"], "rss": r["rss_mib"],
                                      "server_cpu": r["server_cpu"]}
            restored(f"{db} {label}", newdb)

    total_min = (time.monotonic() - t_start) / 60
    report = render(args, variants, info, cache, runner, gen, mut, res, checks, started,
                    total_min, work)
    sys.stdout.write(report)
    (work.parent / "last-db-run.json").write_text(json.dumps(
        {"gen": gen, "mutation": mut, "results": res, "checks": checks, "machine": info},
        indent=2, default=str))
    if not args.no_results:
        with open(args.results, "a") as f:
            f.write(report)
        bl.log(f"appended to {args.results}")
    if problems:
        sys.stderr.write("\n!!!!! PROBLEMS: " + "; ".join(problems) + " !!!!!\n")
        return 1
    return 0


# ----------------------------------------------------------------- helpers


def table_sizes(cluster, db: str) -> dict[str, int]:
    out = cluster.psql(
        "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 2 DESC",
        db,
    )
    return {ln.split("|")[0]: int(ln.split("|")[1]) for ln in out.splitlines() if "|" in ln}


def digest(cluster, db: str) -> dict:
    """Per table: row count and the sum of hashtext(row); index and constraint counts."""
    tables = [t for t in cluster.psql(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", db
    ).split() if t]
    out: dict = {"_tables": len(tables)}
    for t in tables:
        out[t] = cluster.psql(
            f"SELECT count(*) || '/' || coalesce(sum(hashtext(x::text)::bigint), 0) FROM {t} x",
            db).strip()
    out["_indexes"] = int(cluster.psql(
        "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'", db).strip())
    out["_constraints"] = int(cluster.psql(
        "SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
        "WHERE n.nspname = 'public'", db).strip())
    return out


def _r(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _x(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def render(args, variants, info, cache, runner, gen, mut, res, checks, started, total_min,
           work) -> str:
    L: list[str] = []
    L.append(f"\n## {started:%Y-%m-%d %H:%M} UTC: PostgreSQL logical backups "
             f"(pgbench -s {args.scale}, app {args.app_mib} MiB)\n")
    L.append("`bench/run_db.py"
             + (f" --scale {args.scale}" if args.scale != 65 else "")
             + (f" --app-mib {args.app_mib}" if args.app_mib != 1024 else "")
             + (f" --variants {args.variants}" if args.variants != "custom" else "")
             + (f" --repeat {args.repeat}" if args.repeat != 3 else "")
             + (f" --quiet-wait {args.quiet_wait:g}" if args.quiet_wait != 120 else "")
             + f"`, {total_min:.0f} minutes in all.\n")
    L.append("Machine:\n")
    for k, v in info.items():
        L.append(f"- {k}: {v}")
    L.append(f"- page cache: {cache.label}; PostgreSQL's own shared_buffers are not dropped")
    L.append(f"- work dir: {work} (one disk: cluster, dumps, repositories)")
    L.append("")
    g, a = gen["pgbench"], gen["app"]
    L.append(
        f"Databases: **pgbench** `pgbench -i -s {args.scale}`: "
        f"{g['db_size'] / MiB:,.0f} MiB (`pg_database_size`), generated in {g['seconds']} s; "
        f"**app** (`bench/gen_db.py`, {args.app_mib} MiB setting): {a['db_size'] / MiB:,.0f} MiB, "
        f"{a['users']:,} users, {a['documents']:,} documents, {a['events']:,} events, "
        f"generated in {a['seconds']} s. Table sizes with indexes: "
        + "; ".join(
            f"{db}: " + ", ".join(f"{t} {n / MiB:,.0f} MiB" for t, n in gen[db]["tables"].items())
            for db in DBS
        ) + "."
    )
    mp, ma = mut["pgbench"], mut["app"]
    L.append(
        f"\nDay 2: pgbench `-T {mp['seconds']}` ran {mp.get('transactions', 0):,} transactions "
        f"({mp.get('tps', 0)} tps; every one updates a random row of accounts, tellers, branches "
        f"and adds a history row), database now {mp['db_size'] / MiB:,.0f} MiB; app: "
        f"{ma['new_events']:,} events appended (1%), {ma['updated_users']:,} users updated "
        f"(0.1%), database now {ma['db_size'] / MiB:,.0f} MiB. `VACUUM ANALYZE` after each "
        "change (autovacuum is off so it cannot run during a timed command)."
    )
    L.append("")
    L.append(
        "Ours: `backup-tui backup db NAME` (pg_dump `--format=custom --compress=0` streamed "
        "through FastCDC into the repository, zstd:3, AES-GCM; one repository per database). "
        "pg_dump -Fc: its default compression (gzip/zlib, default level). Reference: "
        "`pg_dump -Fc -Z0 | zstd -3 -T1 | wc -c`, the same stream ours reads compressed the "
        "way ours compresses, as one zstd stream (no chunking, dedup, packing, encryption); "
        "it is timed too. Stored bytes = `du -sb` of our repository (for day 2 its growth), "
        "the dump file's size. CPU s: user+system time of the command and its children; "
        "server CPU s: what the PostgreSQL server's processes (backends, parallel workers) "
        "spent meanwhile, read from /proc, not counted as other load. Peak RSS: "
        "`/usr/bin/time -f %M` (the largest process of the command, pg_dump or pg_restore "
        "children included)."
    )
    L.append("")
    L.extend(bl.other_load_lines(runner))
    ours_keys = [f"ours-{v}" for v in variants]
    names = {"ours-custom": "backup-tui (format custom)",
             "ours-directory": "backup-tui (format directory, jobs 2)",
             "ours-auto": "backup-tui (format auto, the default)",
             "pg_dump": "pg_dump -Fc -f FILE",
             "zstd": "pg_dump -Fc -Z0 \\| zstd -3 (reference)",
             "pg_restore": "createdb + pg_restore -j2 FILE",
             "pg_restore_serial": "createdb + pg_restore FILE (serial, reference)"}
    for db in DBS:
        for day, title in (("day1", "day 1 backup"), ("day2", "day 2 backup")):
            rows = res[db][day]
            base = rows["pg_dump"]
            full2 = res[db]["day2"]["pg_dump"]["stored"]
            L.append(f"\n### {db}: {title}\n")
            hdr = "stored bytes" if day == "day1" else "added bytes (repo growth; files: full size)"
            L.append(f"| command | wall s | CPU s | server CPU s | peak RSS MiB | {hdr} | "
                     "vs pg_dump -Fc |")
            L.append("|---|---:|---:|---:|---:|---:|---|")
            for k in (*ours_keys, "pg_dump", "zstd"):
                row = rows[k]
                b = row["stored"] if day == "day1" else row["new"]
                if k == "pg_dump":
                    rel = ""
                elif day == "day1" or k == "zstd":
                    rel = (f"{_x(_r(row['wall'], base['wall']))} time, "
                           f"{_x(_r(b, base['stored']))} bytes")
                else:
                    rel = (f"{_x(_r(row['wall'], base['wall']))} time, added = "
                           f"{100 * b / full2:.1f}% of the full day-2 dump")
                L.append(f"| {names[k]} | {row['wall']:.2f} | {row['cpu']:.2f} | "
                         f"{row['server_cpu']:.2f} | {row['rss']:.0f} | {b:,} | {rel} |")
            sampled = [(k, rows[k]["samples"]) for k in (*ours_keys, "pg_dump")
                       if len(rows[k].get("samples", [])) > 1]
            if sampled:
                L.append(
                    "\nWall s of "
                    + " and ".join(names[k] for k, _ in sampled)
                    + f" is the median of {len(sampled[0][1])} samples (the first one is the "
                    "backup into the repository above, the others into fresh throwaway "
                    "repositories / scratch files, alternating): "
                    + "; ".join(f"{names[k]} " + ", ".join(f"{w:.2f}" for w in smp)
                                for k, smp in sampled)
                    + " s. CPU, server CPU and RSS are the first sample's."
                )
            for k in ours_keys:
                row = rows[k]
                L.append(
                    f"\n{names[k]}: dump stream {row['stream']:,} bytes; reports "
                    f"{row['added']:,} bytes added; repository now {row['stored']:,} bytes.")
        rows = res[db]["restore"]
        base = rows["pg_restore"]
        L.append(f"\n### {db}: restore of the day-2 backup into a new database\n")
        L.append("| command | wall s | CPU s | server CPU s | peak RSS MiB | vs pg_restore -j2 |")
        L.append("|---|---:|---:|---:|---:|---|")
        for k in (*ours_keys, "pg_restore", "pg_restore_serial"):
            row = rows[k]
            rel = "" if k == "pg_restore" else _x(_r(row["wall"], base["wall"]))
            L.append(f"| {names[k]} | {row['wall']:.2f} | {row['cpu']:.2f} | "
                     f"{row['server_cpu']:.2f} | {row['rss']:.0f} | {rel} |")

    L.append("\n### Targets\n")
    L.append("| target | database | measured | result |")
    L.append("|---|---|---:|---|")
    for k in ours_keys:
        tag = "" if k == "ours-custom" else f" ({names[k]})"
        for db in DBS:
            for day in ("day1", "day2"):
                r = _r(res[db][day][k]["wall"], res[db][day]["pg_dump"]["wall"])
                need = BACKUP_WALL_TARGET * res[db][day]["pg_dump"]["wall"]
                L.append(f"| {day} backup wall <= {BACKUP_WALL_TARGET}x pg_dump -Fc{tag} | {db} | "
                         f"{_x(r)} | {bl.verdict(r, BACKUP_WALL_TARGET)}"
                         + (f" (needs <= {need:.1f} s)" if r and r > BACKUP_WALL_TARGET else "")
                         + " |")
        for db in DBS:
            r = _r(res[db]["day1"][k]["stored"], res[db]["day1"]["pg_dump"]["stored"])
            L.append(f"| day-1 stored bytes <= {DAY1_BYTES_TARGET}x pg_dump -Fc file{tag} | {db} | "
                     f"{_x(r)} | {bl.verdict(r, DAY1_BYTES_TARGET)} |")
        for db in DBS:
            r = _r(res[db]["day2"][k]["new"], res[db]["day2"]["pg_dump"]["stored"])
            if db == "app":
                L.append(f"| day-2 added bytes <= {DAY2_APP_ADDED_TARGET:.0%} of a full pg_dump -Fc"
                         f"{tag} | app | {100 * r:.1f}% | {bl.verdict(r, DAY2_APP_ADDED_TARGET)} |")
            else:
                L.append(f"| day-2 added bytes vs a full pg_dump -Fc (no target){tag} | pgbench | "
                         f"{100 * r:.1f}% | (reported) |")
        for db in DBS:
            r = _r(res[db]["restore"][k]["wall"], res[db]["restore"]["pg_restore"]["wall"])
            need = RESTORE_WALL_TARGET * res[db]["restore"]["pg_restore"]["wall"]
            L.append(f"| restore wall <= {RESTORE_WALL_TARGET}x pg_restore -j2{tag} | {db} | "
                     f"{_x(r)} | {bl.verdict(r, RESTORE_WALL_TARGET)}"
                     + (f" (needs <= {need:.1f} s)" if r and r > RESTORE_WALL_TARGET else "")
                     + " |")
        peak = max((res[db][ph][k]["rss"], f"{db} {ph}") for db in DBS
                   for ph in ("day1", "day2", "restore"))
        L.append(f"| peak RSS <= {RSS_TARGET_MIB} MiB{tag} | all | {peak[0]:.0f} MiB ({peak[1]}) | "
                 f"{'met' if peak[0] <= RSS_TARGET_MIB else '**MISSED**'} |")
    L.append("\nChecks:\n")
    for c in checks:
        L.append(f"- {c}")
    for n in args.note:
        L.append(f"- note: {n}")
    L.append("")
    return "\n".join(L)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (bl.BenchError, subprocess.CalledProcessError, RuntimeError) as e:
        sys.stderr.write(f"bench: {e}\n")
        sys.exit(1)
