#!/usr/bin/env python3
"""Benchmark physical backups, WAL archiving and PITR against pgBackRest 2.45.

Run from the repository root with the project's venv, as root (the page cache
is dropped before each timed command; the scratch server and both tools run as
the ``postgres`` OS user)::

    .venv/bin/python bench/pitr.py                      # ~1 GB pgbench cluster, ~10 minutes
    .venv/bin/python bench/pitr.py --scale 5 --no-results --quiet-wait 0   # smoke (~2 min)
    .venv/bin/python bench/pitr.py --no-ours            # pgBackRest and pg_basebackup only

In one run, on one throwaway cluster (``engine.sandbox.PgCluster`` on a free
loopback port, ``pgbench -i -s 66``, archiving on), side by side:

1. full base backup: ``backup-tui backup cluster NAME`` against ``pgbackrest
   backup --type=full`` (wall, stored bytes); ``pg_basebackup -Ft -X fetch -D -``
   to /dev/null alone for scale;
2. after ``pgbench -T 30``, a second base backup: our snapshot's added bytes
   against pgBackRest's incremental backup (``--type=incr``) in its repository;
3. WAL push per 16 MiB segment, a fresh process each, process start included:
   ``backup-tui wal-push`` against ``pgbackrest archive-push`` on the same real
   segments (copied out of pg_wal) into scratch archives; median and p90;
4. PITR to a target time, wall from an empty data directory to a promoted
   server: ``backup-tui restore pitr ... --start`` against ``pgbackrest restore
   --type=time`` + ``pg_ctl start`` + waiting for promotion; each restored server
   is checked (the state at the target: pgbench balances, history rows, a marker
   row written before the target present, one written after it absent);
5. peak RSS of each of our commands (``/usr/bin/time -f %M``).

Everything lives in a temporary folder under --work-parent (default
bench/work/), removed at the end unless --keep. A table with ratios
(ours / pgBackRest) is printed, the figures go to --json (default
bench/work/last-pitr-run.json) and a dated section is appended to
bench/RESULTS.md unless --no-results. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import pwd
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import benchlib as bl  # noqa: E402
import gen_db  # noqa: E402

ROOT = bl.ROOT
MiB = bl.MiB
STANZA = "bench"
CLUSTER = "bench"  # our [[cluster]] name
DB = "bench"  # the pgbench database
TOOLS = ("pgbackrest", "ours")

# targets of issue 11, item 8
FULL_WALL_TARGET = 1.2  # ours / pgBackRest full
ADDED_TARGET = 0.5  # ours' added bytes / pgBackRest's incremental
WALPUSH_TARGET_MS = 150.0  # ours, per 16 MiB segment, process start included
PITR_TARGET = 1.0  # ours / pgBackRest restore + the same recovery
RSS_TARGET_MIB = 250


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=66, help="pgbench -i -s (default 66, ~1 GB)")
    ap.add_argument("--pgbench-seconds", type=int, default=30,
                    help="pgbench -T between the two base backups (default 30)")
    ap.add_argument("--replay-seconds", type=int, default=10,
                    help="pgbench -T after the second base backup, before the PITR target: "
                    "WAL the recoveries replay (default 10)")
    ap.add_argument("--segments", type=int, default=20,
                    help="WAL segments each tool pushes in the wal-push test (default 20)")
    ap.add_argument("--work-parent", type=Path, default=HERE / "work",
                    help="the temporary work folder is made in here (default bench/work)")
    ap.add_argument("--json", type=Path, default=None,
                    help="write the figures here (default WORK_PARENT/last-pitr-run.json)")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--no-drop-caches", action="store_true")
    ap.add_argument("--quiet-wait", type=float, default=60,
                    help="wait up to this many seconds for an idle machine before each "
                    "timed command (default 60)")
    ap.add_argument("--code", default="HEAD", help="git revision to measure, or 'worktree'")
    ap.add_argument("--python", default=None,
                    help="the interpreter our commands run with as the postgres user "
                    "(default: the venv's if postgres may run it, else /usr/bin/python3.X "
                    "of the venv's version with the venv's site-packages on PYTHONPATH)")
    ap.add_argument("--no-ours", action="store_true",
                    help="measure pgBackRest and pg_basebackup only (our side not built yet)")
    ap.add_argument("--pitr-runs", type=int, default=3,
                    help="PITR runs of each tool, alternating who goes first; the median is "
                         "reported (default 3)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work folder and leave the source cluster running")
    ap.add_argument("--note", action="append", default=[], help="a line for the report")
    args = ap.parse_args(argv)

    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (the servers and both tools run as the postgres "
                         "user, the page cache is dropped before each timed command)")
    for tool in ("pgbackrest", "setpriv", "du"):
        if not shutil.which(tool):
            hint = " (apt-get install -y pgbackrest)" if tool == "pgbackrest" else ""
            raise SystemExit(f"bench: {tool} is required{hint}")
    time_bin = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
    if time_bin is None:
        raise SystemExit("bench: GNU time is required for peak RSS (apt-get install -y time)")

    sys.path.insert(0, str(ROOT))  # engine.sandbox for the scratch server (not measured)
    from engine.sandbox import PgCluster, make_dirs

    # SIGTERM (timeout, kill) ends the run through the finally below: servers stopped,
    # the work folder removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parent = args.work_parent.resolve()
    make_dirs(parent)
    if shutil.disk_usage(parent).free < max(2, args.scale // 8) * 2**30:
        raise SystemExit(f"bench: {parent} needs about {max(2, args.scale // 8)} GiB free")
    work = Path(tempfile.mkdtemp(prefix="pitr-", dir=parent))
    work.chmod(0o755)  # made here: the postgres user must pass through it
    json_path = args.json or parent / "last-pitr-run.json"
    cluster = None
    try:
        cache = bl.Cache(not args.no_drop_caches)
        runner = bl.Runner(work, cache, time_bin, args.quiet_wait)
        b = Bench(args, work, runner, cache, time_bin)
        b.setup_code()
        cluster = PgCluster(work / "pg")
        bl.log(f"initdb in {cluster.base_dir}")
        cluster.init().start()
        b.cluster = cluster
        rc = b.run()
        report = b.render()
        sys.stdout.write(report)
        json_path.write_text(json.dumps(b.as_json(), indent=2, default=str))
        bl.log(f"figures in {json_path}")
        if not args.no_results:
            with open(args.results, "a") as f:
                f.write(report)
            bl.log(f"appended to {args.results}")
        return rc
    finally:
        if args.keep:
            bl.log(f"--keep: work folder {work} kept"
                   + (f", source cluster running on port {cluster.port}" if cluster else ""))
        else:
            for d in sorted(work.glob("restore-*")):
                stop_pgdata(d / "data")
            if cluster is not None:
                cluster.destroy()
            shutil.rmtree(work, ignore_errors=True)
            bl.log("servers stopped, work folder removed")


# ----------------------------------------------------------------- postgres user

_PG = pwd.getpwnam("postgres")
AS_PG = ["setpriv", f"--reuid={_PG.pw_uid}", f"--regid={_PG.pw_gid}", "--init-groups", "--"]


def chown_pg(path: Path) -> None:
    """Give a folder made here (and what is in it) to the postgres user."""
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            os.chown(os.path.join(root, n), _PG.pw_uid, _PG.pw_gid, follow_symlinks=False)
    os.chown(path, _PG.pw_uid, _PG.pw_gid)


def mkdir_pg(path: Path, mode: int = 0o750) -> Path:
    path.mkdir(parents=False)
    path.chmod(mode)
    os.chown(path, _PG.pw_uid, _PG.pw_gid)
    return path


def pg_ctl_bin() -> Path:
    from engine.sandbox import find_bin_dir
    return find_bin_dir() / "pg_ctl"


def stop_pgdata(data: Path) -> None:
    """Stop a server we started on a restored data directory (fast, then immediate)."""
    if not (data / "postmaster.pid").exists():
        return
    for mode in ("fast", "immediate"):
        r = subprocess.run([*AS_PG, str(pg_ctl_bin()), "stop", "-w", "-t", "60", "-m", mode,
                            "-D", str(data)], capture_output=True, text=True, cwd="/")
        if r.returncode == 0 or not (data / "postmaster.pid").exists():
            return


def percentile(xs: list[float], p: float) -> float:
    """The p-th percentile, linear between closest ranks (numpy's default)."""
    s = sorted(xs)
    k = (len(s) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# ----------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args, work: Path, runner, cache, time_bin: str):
        self.args = args
        self.work = work
        self.runner = runner
        self.cache = cache
        self.time_bin = time_bin
        self.ours_on = not args.no_ours
        self.cluster = None
        self.res: dict = {"full": {}, "second": {}, "walpush": {}, "pitr": {}, "reference": {}}
        self.checks: list[str] = []
        self.problems: list[str] = []
        self.notes: list[str] = list(args.note)
        self.started = dt.datetime.now(dt.UTC)
        self.t0 = time.monotonic()
        self.flags = work / "flags"
        self.spool = work / "spool"

    # ------------------------------------------------------------ setup

    def setup_code(self) -> None:
        env, _cmd, label = bl.export_code(self.args.code, self.work)
        code_dir = env["PYTHONPATH"]
        venv_py = str(ROOT / ".venv" / "bin" / "python")
        py = self.args.python
        pypath = code_dir
        if py is None:
            # as the server's archive_command would run it (runuser, as PgCluster does)
            probe = subprocess.run(["runuser", "-u", "postgres", "--", venv_py, "-c", "pass"],
                                   capture_output=True, cwd="/")
            if probe.returncode == 0:
                py = venv_py
            else:
                ver = sysconfig.get_python_version()
                py = f"/usr/bin/python{ver}"
                site = ROOT / ".venv" / "lib" / f"python{ver}" / "site-packages"
                pypath = f"{code_dir}:{site}"
                version = subprocess.run([py, "--version"], capture_output=True,
                                         text=True).stdout.strip()
                self.notes.append(
                    f"The postgres user may not run the venv's interpreter ({venv_py} lives "
                    f"under /root, mode 0700), so our commands run as `{py}` ({version}) "
                    "with the code under test and the venv's site-packages on PYTHONPATH.")
        self.py = py
        self.env_pg = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": _PG.pw_dir,
            "LANG": "C.UTF-8",
            "PYTHONPATH": pypath,
        }
        where = subprocess.run(
            [*AS_PG, py, "-P", "-c", "import sys, engine, zstandard, cryptography; "
             "print(engine.__file__); print(sys.version.split()[0], sys.base_prefix)"],
            capture_output=True, text=True, env=self.env_pg, cwd="/")
        if where.returncode != 0 or not where.stdout.startswith(code_dir):
            raise bl.BenchError(f"our code does not import as the postgres user with {py}: "
                                f"{where.stdout.strip()} {where.stderr.strip()[-500:]}")
        self.interpreter = where.stdout.splitlines()[1]  # what postgres really runs
        self.code_label = label
        self.info = bl.machine(self.work, label)
        self.info["pgbackrest"] = bl.sh(["pgbackrest", "version"]).strip()
        self.info["ours runs as"] = (f"postgres (setpriv), `{py} -P -m backup_tui.cli`, "
                                     f"which as that user is Python {self.interpreter}")

    def ours_cmd(self, config: Path, *a: str) -> list[str]:
        return [self.py, "-P", "-m", "backup_tui.cli", "--config", str(config), *a]

    def pgbr_cmd(self, config: Path, *a: str) -> list[str]:
        return ["pgbackrest", f"--config={config}", f"--stanza={STANZA}", *a]

    def pg(self, cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        """An untimed command as the postgres user."""
        r = subprocess.run([*AS_PG, *cmd], capture_output=True, text=True, env=self.env_pg,
                           cwd="/", **kw)
        if check and r.returncode != 0:
            raise bl.BenchError(f"failed ({r.returncode}): {' '.join(cmd)}\n"
                                f"{r.stdout[-1500:]}{r.stderr[-1500:]}")
        return r

    def timed(self, label: str, cmd: list[str]) -> dict:
        """A timed command as the postgres user (bench/run.py's Runner: quiet wait, cache
        dropped, /usr/bin/time -f %M); the source server's CPU meanwhile apart."""
        post = self.cluster.postmaster_pid()
        return bl.run_beside(self.runner, lambda: bl.proc_cpu(post), label, [*AS_PG, *cmd],
                             self.env_pg)

    def write_pgbr_conf(self, path: Path, repo: Path) -> Path:
        c = self.cluster
        path.write_text(
            "[global]\n"
            f"repo1-path={repo}\n"
            "repo1-retention-full=99\n"
            "compress-type=zst\n"
            "process-max=2\n"
            "start-fast=y\n"
            "archive-timeout=300\n"
            "log-level-console=warn\n"
            "log-level-stderr=warn\n"
            "log-level-file=off\n"
            f"lock-path={path.parent / 'lock'}\n"
            f"spool-path={path.parent / 'spool'}\n\n"
            f"[{STANZA}]\n"
            f"pg1-path={c.data_dir}\n"
            f"pg1-port={c.port}\n"
            f"pg1-socket-path={c.socket_dir}\n"
            "pg1-user=postgres\n"
        )
        path.chmod(0o644)
        return path

    def write_ours_conf(self, d: Path) -> Path:
        mkdir_pg(d)
        pw = d / "password"
        pw.write_text("bench-password\n")
        pw.chmod(0o600)
        cfg = d / "config.toml"
        cfg.write_text(
            "[repository]\n"
            f"path = {json.dumps(str(d / 'repo'))}\n"
            f"password_file = {json.dumps(str(pw))}\n"
            'compression = "zstd:3"\n\n'
            f"[state]\ndir = {json.dumps(str(d / 'state'))}\n\n"
            '[security]\nadmin_group = "postgres"\n\n'
            "[[cluster]]\n"
            f"name = {json.dumps(CLUSTER)}\n"
            f"dsn = {json.dumps(self.cluster.dsn('postgres'))}\n"
            f"pgdata = {json.dumps(str(self.cluster.data_dir))}\n"
        )
        chown_pg(d)
        self.pg(self.ours_cmd(cfg, "init"))
        return cfg

    def write_archive_script(self) -> Path:
        """archive_command: each tool pushes, unless its flag says off (not measured) or
        defer (copied to a spool, pushed after the timed command of the other tool)."""
        for t in TOOLS:
            (self.spool / t).mkdir(parents=True)
        self.flags.mkdir()
        chown_pg(self.spool)
        chown_pg(self.flags)
        if not self.ours_on:
            (self.flags / "off-ours").touch()
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env_pg.items())
        push = {
            "pgbackrest": " ".join(map(shlex.quote, self.pgbr_cmd(self.pgbr_conf,
                                                                    "archive-push"))),
            "ours": f"env -i {env} " + " ".join(map(shlex.quote, self.ours_cmd(
                self.ours_conf, "wal-push"))),
        }
        # pgBackRest's backup and check insist that archive_command contains "pgbackrest"
        script = self.work / "archive-pgbackrest-and-ours.sh"
        lines = ["#!/bin/sh", "# archive_command of the bench cluster: $1 = %p, $2 = %f",
                 'p="$1"; f="$2"']
        for t in TOOLS:
            fl, sp = shlex.quote(str(self.flags)), shlex.quote(str(self.spool / t))
            lines += [
                f'if [ ! -e {fl}/off-{t} ]; then',
                f'  if [ -e {fl}/defer-{t} ]; then',
                f'    cp "$p" {sp}/"$f".part && mv {sp}/"$f".part {sp}/"$f" || exit 1',
                "  else",
                f'    {push[t]} "$p" || exit 1',
                "  fi",
                "fi",
            ]
        script.write_text("\n".join(lines) + "\n")
        script.chmod(0o755)
        return script

    @contextlib.contextmanager
    def solo(self, *pushing: str):
        """While the body runs only the tools in ``pushing`` archive WAL themselves; the
        others' segments wait in a spool (a cp) and are pushed afterwards, untimed."""
        self.wait_archived()
        deferred = [t for t in TOOLS if t not in pushing
                    and not (self.flags / f"off-{t}").exists()]
        for t in deferred:
            (self.flags / f"defer-{t}").touch()
        try:
            yield
        finally:
            for t in deferred:
                (self.flags / f"defer-{t}").unlink()
            self.wait_archived()
            for t in deferred:
                self.flush_spool(t)

    def flush_spool(self, tool: str) -> None:
        for f in sorted((self.spool / tool).iterdir()):
            if f.name.endswith(".part"):
                continue
            if tool == "pgbackrest":
                self.pg(self.pgbr_cmd(self.pgbr_conf, "archive-push", str(f)))
            else:
                self.pg(self.ours_cmd(self.ours_conf, "wal-push", str(f)))
            f.unlink()

    def wait_archived(self, timeout: float = 900, failing: float = 90) -> None:
        """Until the server has no segment waiting for archive_command; an error when it
        keeps failing (no success for ``failing`` s after a failure) or after ``timeout``."""
        status = self.cluster.data_dir / "pg_wal" / "archive_status"
        t0 = time.monotonic()
        ok_at = t0
        archived = None
        while True:
            ready = [p.name for p in status.iterdir() if p.name.endswith(".ready")]
            if not ready:
                return
            st = self.cluster.psql("SELECT archived_count, failed_count FROM pg_stat_archiver")
            now_archived, failed = (int(x) for x in st.strip().split("|"))
            if now_archived != archived:
                archived, ok_at = now_archived, time.monotonic()
            if failed and time.monotonic() - ok_at > failing:
                raise bl.BenchError(f"archive_command keeps failing ({len(ready)} segments "
                                    f"waiting, {failed} failures); server log:\n"
                                    f"{self.cluster.log_tail(20)}")
            if time.monotonic() - t0 > timeout:
                st = self.cluster.psql("SELECT failed_count, last_failed_wal FROM "
                                       "pg_stat_archiver").strip()
                raise bl.BenchError(f"archiving stalled: {len(ready)} segments waiting "
                                    f"(failed_count|last_failed_wal: {st}); server log:\n"
                                    f"{self.cluster.log_tail(20)}")
            time.sleep(0.5)

    def psql(self, sql: str, db: str = DB) -> str:
        return self.cluster.psql(sql, db)

    # ------------------------------------------------------------ the run

    def run(self) -> int:
        a, c, w = self.args, self.cluster, self.work
        for d in ("pgbr", "pgbr/lock", "pgbr/spool", "pgbr-scratch", "pgbr-scratch/lock",
                  "pgbr-scratch/spool", "walsample"):
            mkdir_pg(w / d)
        self.pgbr_conf = self.write_pgbr_conf(w / "pgbr" / "pgbackrest.conf", w / "pgbr" / "repo")
        self.pgbr_scratch_conf = self.write_pgbr_conf(w / "pgbr-scratch" / "pgbackrest.conf",
                                                      w / "pgbr-scratch" / "repo")
        if self.ours_on:
            self.ours_conf = self.write_ours_conf(w / "ours")
            self.ours_scratch_conf = self.write_ours_conf(w / "ours-scratch")
        else:
            self.ours_conf = self.ours_scratch_conf = w / "ours-not-measured.toml"
        script = self.write_archive_script()
        settings = {"shared_buffers": "256MB", "max_wal_size": "4GB", "autovacuum": "off",
                    "checkpoint_timeout": "30min", "archive_mode": "on",
                    "archive_command": f"{script} %p %f"}
        c.psql("".join(f"ALTER SYSTEM SET {k} = '{v}';" for k, v in settings.items()))
        c.restart()
        self.info["postgresql"] = (
            f"{c.psql('SHOW server_version').strip()}, scratch cluster on 127.0.0.1:{c.port} "
            "(engine.sandbox.PgCluster: locale C, fsync=off, max_connections=50; "
            + ", ".join(f"{k}={v}" for k, v in settings.items() if k != "archive_command")
            + "; archive_command = a script running `pgbackrest archive-push` then "
            "`backup-tui wal-push`)")
        pgbin = c.bin_dir
        pgenv = c.client_environ(DB)
        for cfg in (self.pgbr_conf, self.pgbr_scratch_conf):
            self.pg(self.pgbr_cmd(cfg, "stanza-create"))

        # ------------------------------------------------------------ data
        c.psql(f"CREATE DATABASE {DB}")
        bl.log(f"pgbench -i -s {a.scale}")
        self.gen = gen_db.gen_pgbench(str(pgbin / "pgbench"), pgenv, DB, a.scale)
        self.gen["db_size"] = int(c.psql(f"SELECT pg_database_size('{DB}')").strip())
        self.gen["cluster_size"] = bl.du_bytes(c.data_dir)
        bl.log(f"{self.gen['db_size'] / MiB:.0f} MiB in {self.gen['seconds']} s; "
               "waiting for both tools to archive the WAL")
        self.wait_archived()
        self.sample_segments()
        self.pg(self.pgbr_cmd(self.pgbr_conf, "check"))

        # ------------------------------------------------------------ (1) full backups
        def checkpoint() -> None:
            c.psql("CHECKPOINT")

        with self.solo():
            checkpoint()
            r = self.timed("pg_basebackup -Ft -X fetch -D - > /dev/null", [
                "sh", "-c", 'exec "$@" > /dev/null', "_", str(pgbin / "pg_basebackup"),
                "-h", str(c.socket_dir), "-p", str(c.port), "-U", "postgres", "-Ft",
                "-X", "fetch", "-c", "fast", "-D", "-"])
            self.res["reference"]["pg_basebackup"] = self.row(r)
        self.backups("full")

        # ------------------------------------------------------------ (2) second backups
        bl.log(f"pgbench -T {a.pgbench_seconds}")
        self.day2 = gen_db.pgbench_day2(str(pgbin / "pgbench"), pgenv, DB, a.pgbench_seconds)
        self.wait_archived()
        self.backups("second")

        # ------------------------------------------------------------ (3) wal-push
        self.walpush()

        # ------------------------------------------------------------ (4) PITR
        self.pitr()

        self.res["wal_archive"] = {"pgbackrest": bl.du_bytes(w / "pgbr" / "repo" / "archive")}
        if self.ours_on:
            self.res["wal_archive"]["ours"] = bl.du_bytes(w / "ours" / "repo" / "wal")
        self.total_min = (time.monotonic() - self.t0) / 60
        if self.problems:
            sys.stderr.write("\n!!!!! PROBLEMS: " + "; ".join(self.problems) + " !!!!!\n")
            return 1
        return 0

    def row(self, r: dict) -> dict:
        return {"wall": r["wall"], "cpu": r["cpu"], "rss": r["rss_mib"],
                "server_cpu": r["server_cpu"]}

    def ours_stored(self) -> int:
        repo = self.work / "ours" / "repo"
        return bl.du_bytes(repo) - bl.du_bytes(repo / "wal")

    def pgbr_info(self) -> dict:
        out = self.pg(self.pgbr_cmd(self.pgbr_conf, "info", "--output=json")).stdout
        return json.loads(out)[0]["backup"][-1]

    def backups(self, phase: str) -> None:
        c = self.cluster
        pgbr_dir = self.work / "pgbr" / "repo" / "backup"
        before = bl.du_bytes(pgbr_dir)
        with self.solo("pgbackrest"):
            c.psql("CHECKPOINT")
            kind = "full" if phase == "full" else "incr"
            r = self.timed(f"{phase}: pgbackrest backup --type={kind}",
                           self.pgbr_cmd(self.pgbr_conf, "backup", f"--type={kind}"))
        info = self.pgbr_info()
        row = self.row(r)
        row.update({"new": bl.du_bytes(pgbr_dir) - before, "label": info["label"],
                    "type": info["type"], "repo_size": info["info"]["repository"]["size"],
                    "repo_delta": info["info"]["repository"]["delta"],
                    "db_size": info["info"]["size"], "db_delta": info["info"]["delta"]})
        self.res[phase]["pgbackrest"] = row
        if not self.ours_on:
            return
        before = self.ours_stored()
        with self.solo("ours"):
            c.psql("CHECKPOINT")
            r = self.timed(f"{phase}: backup-tui backup cluster",
                           self.ours_cmd(self.ours_conf, "backup", "cluster", CLUSTER, "--json"))
        j = json.loads(r["stdout"])
        row = self.row(r)
        row.update({"new": self.ours_stored() - before, "added": j.get("added"),
                    "size": j.get("size"), "id": j.get("id")})
        self.res[phase]["ours"] = row

    # ------------------------------------------------------------ wal-push

    def sample_segments(self) -> None:
        """Copy real, archived segments out of pg_wal (before a checkpoint recycles them)."""
        status = self.cluster.data_dir / "pg_wal" / "archive_status"
        done = sorted(p.name[:-5] for p in status.iterdir()
                      if p.name.endswith(".done") and re.fullmatch(r"[0-9A-F]{24}", p.name[:-5]))
        want = self.args.segments + 1  # one warm-up push each
        mid = max(0, (len(done) - want) // 2)
        picked = []
        for name in done[mid:]:
            src = self.cluster.data_dir / "pg_wal" / name
            try:
                shutil.copyfile(src, self.work / "walsample" / name)
            except FileNotFoundError:  # recycled meanwhile
                continue
            picked.append(name)
            if len(picked) == want:
                break
        chown_pg(self.work / "walsample")
        if len(picked) < 2:
            raise bl.BenchError(f"only {len(picked)} archived segments in pg_wal to sample")
        self.samples = picked
        bl.log(f"sampled {len(picked)} archived segments {picked[0]} .. {picked[-1]} "
               f"(of {len(done)} in pg_wal)")

    def walpush(self) -> None:
        segs = [self.work / "walsample" / n for n in self.samples]
        cmds = {"pgbackrest": lambda p: self.pgbr_cmd(self.pgbr_scratch_conf, "archive-push",
                                                      str(p))}
        if self.ours_on:
            cmds["ours"] = lambda p: self.ours_cmd(self.ours_scratch_conf, "wal-push", str(p))
        out = {t: {"wall_ms": [], "rss": [], "cpu_ms": []} for t in cmds}
        self.runner.wait_quiet("wal-push")
        busy0, t_all = bl.filesbench._busy_seconds(), time.perf_counter()
        order = list(cmds)
        for i, seg in enumerate(segs):
            for t in (order if i % 2 == 0 else order[::-1]):  # alternate who goes first
                rss_p = self.work / "logs" / f"walpush-{t}-{i:02d}.rss"
                full = [self.time_bin, "-f", "%M %U %S", "-o", str(rss_p), "--", *AS_PG,
                        *cmds[t](seg)]
                t0 = time.perf_counter()
                r = subprocess.run(full, capture_output=True, text=True, env=self.env_pg,
                                   cwd="/")
                wall = time.perf_counter() - t0
                if r.returncode != 0:
                    raise bl.BenchError(f"{t} push of {seg.name} failed ({r.returncode}): "
                                        f"{r.stdout[-800:]}{r.stderr[-800:]}")
                f = rss_p.read_text().split()
                if i == 0:
                    continue  # the warm-up push
                out[t]["wall_ms"].append(wall * 1000)
                out[t]["rss"].append(int(f[0]) / 1024)
                out[t]["cpu_ms"].append((float(f[1]) + float(f[2])) * 1000)
        span = time.perf_counter() - t_all
        cpu = sum(sum(v["cpu_ms"]) for v in out.values()) / 1000
        other = max(0.0, bl.filesbench._busy_seconds() - busy0 - cpu) / span
        self.runner.loads.append(("wal-push loop", other))
        for t, v in out.items():
            ms = v["wall_ms"]
            v.update({"n": len(ms), "median_ms": statistics.median(ms),
                      "p90_ms": percentile(ms, 90), "max_ms": max(ms),
                      "median_cpu_ms": statistics.median(v["cpu_ms"]), "rss": max(v["rss"]),
                      "segment_bytes": segs[1].stat().st_size})
            bl.log(f"{t} push: median {v['median_ms']:.0f} ms, p90 {v['p90_ms']:.0f} ms, "
                   f"peak RSS {v['rss']:.0f} MiB")
        out["stored"] = {"pgbackrest": bl.du_bytes(self.work / "pgbr-scratch" / "repo" /
                                                   "archive")}
        if self.ours_on:
            out["stored"]["ours"] = bl.du_bytes(self.work / "ours-scratch" / "repo" / "wal")
        out["segments"] = [s.name for s in segs[1:]]
        self.res["walpush"] = out

    # ------------------------------------------------------------ PITR

    def digest(self, port: int | None = None) -> dict:
        """What the server holds at the target (balances, history rows, markers)."""
        sql = ("SELECT (SELECT count(*) FROM pgbench_accounts) || '|' || "
               "(SELECT sum(abalance) FROM pgbench_accounts) || '|' || "
               "(SELECT sum(bbalance) FROM pgbench_branches) || '|' || "
               "(SELECT count(*) FROM pgbench_history) || '|' || "
               "(SELECT string_agg(tag, ',' ORDER BY tag) FROM bench_marker)")
        if port is None:
            out = self.psql(sql)
        else:
            r = subprocess.run(
                [str(self.cluster.bin_dir / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                 "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", DB, "-c", sql],
                capture_output=True, text=True, env=self.cluster.client_environ(DB))
            if r.returncode != 0:
                return {"error": r.stderr.strip()[-300:]}
            out = r.stdout
        k = ("accounts", "sum_abalance", "sum_bbalance", "history", "markers")
        return dict(zip(k, out.strip().split("|"), strict=True))

    def pitr(self) -> None:
        a, c = self.args, self.cluster
        bl.log(f"pgbench -T {a.replay_seconds} (WAL the recoveries replay), then the target")
        self.replay = gen_db.pgbench_day2(str(c.bin_dir / "pgbench"), c.client_environ(DB), DB,
                                          a.replay_seconds)
        self.psql("CREATE TABLE bench_marker (tag text PRIMARY KEY, at timestamptz NOT NULL "
                  "DEFAULT clock_timestamp()); INSERT INTO bench_marker (tag) VALUES ('before')")
        before = float(self.psql("SELECT extract(epoch FROM at) FROM bench_marker").strip())
        target = math.floor(before) + 1  # a whole second, after the 'before' commit
        want = self.digest()
        while time.time() < target + 1.0:
            time.sleep(0.05)
        self.psql("BEGIN; INSERT INTO bench_marker (tag) VALUES ('after'); "
                  "UPDATE pgbench_branches SET bbalance = bbalance + 1; COMMIT")
        after = float(self.psql("SELECT extract(epoch FROM at) FROM bench_marker "
                                "WHERE tag = 'after'").strip())
        if not (before < target < after):
            raise bl.BenchError(f"clock: before {before}, target {target}, after {after}")
        c.psql("SELECT pg_switch_wal()")
        self.wait_archived()
        t_utc = dt.datetime.fromtimestamp(target, dt.UTC)
        self.target = {"unix": target, "iso": t_utc.isoformat(),
                       "pgbackrest": t_utc.strftime("%Y-%m-%d %H:%M:%S+00"),
                       "want": want}
        bl.log(f"target {t_utc.isoformat()}; expected at the target: {want}")
        pg_ctl = str(c.bin_dir / "pg_ctl")
        psql = str(c.bin_dir / "psql")
        wait_promoted = (
            'n=0; until [ "$("$PSQL" -X -A -t -h 127.0.0.1 -p "$PORT" -U postgres -d postgres '
            '-c "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ]; do '
            'n=$((n+1)); [ $n -gt 12000 ] && { echo "not promoted in 600 s" >&2; exit 1; }; '
            "sleep 0.05; done")
        tools = ["pgbackrest"] + (["ours"] if self.ours_on else [])
        runs: dict[str, list[dict]] = {t: [] for t in tools}
        order = [list(tools) if k % 2 == 0 else list(reversed(tools))
                 for k in range(max(1, a.pitr_runs))]
        for t in (t for turn in order for t in turn):
            base = mkdir_pg(self.work / f"restore-{t}", 0o755)
            data = mkdir_pg(base / "data", 0o700)
            sock = mkdir_pg(base / "sock", 0o755)
            port = _free_port()
            if t == "pgbackrest":
                label = "PITR: pgbackrest restore --type=time + pg_ctl start + promotion"
                opts = (f"-p {port} -c listen_addresses=127.0.0.1 "
                        f"-c unix_socket_directories={sock}")
                body = (
                    'set -e; t0=$(date +%s.%N); "$@"; t1=$(date +%s.%N); '
                    f'"$PGCTL" start -w -t 600 -D {shlex.quote(str(data))} '
                    f'-l {shlex.quote(str(base / "postgres.log"))} -o {shlex.quote(opts)} '
                    "> /dev/null; t2=$(date +%s.%N); " + wait_promoted
                    + '; echo "$t0 $t1 $t2 $(date +%s.%N)"')
                cmd = self.pgbr_cmd(self.pgbr_conf, f"--pg1-path={data}", "restore",
                                    "--type=time", f"--target={self.target['pgbackrest']}",
                                    "--target-action=promote", "--archive-mode=off")
            else:
                label = "PITR: backup-tui restore pitr --start (+ promotion check)"
                body = 'set -e; "$@"; ' + wait_promoted
                cmd = self.ours_cmd(self.ours_conf, "restore", "pitr", "--cluster", CLUSTER,
                                    "--target-time", self.target["iso"], "--pgdata", str(data),
                                    "--port", str(port), "--start", "--json")
            full = ["env", f"PGCTL={pg_ctl}", f"PSQL={psql}", f"PORT={port}",
                    "sh", "-c", body, "_", *cmd]
            try:
                r = self.timed(label, full)
                row = self.row(r)
                got = self.digest(port)
                row["digest"] = got
                row["port"] = port
                row["phases"] = self.pitr_phases(t, r["stdout"])
                if got == want and not any(c.startswith(f"{t}: the promoted") for c in
                                           self.checks):
                    self.checks.append(
                        f"{t}: the promoted server holds the state at the target "
                        f"({want['accounts']} accounts, sum(abalance) {want['sum_abalance']}, "
                        f"{want['history']} history rows, marker 'before' present, 'after' "
                        "absent)")
                elif got != want:
                    self.problems.append(f"{t} PITR: got {got}, want {want}")
                    self.checks.append(f"**{t}: RESTORED SERVER DIFFERS** got {got}, want {want}")
                runs[t].append(row)
            finally:
                stop_pgdata(data)
                shutil.rmtree(base, ignore_errors=True)
        for t, rows in runs.items():  # the median run by wall; every run's wall beside it
            if rows:
                med = sorted(rows, key=lambda r: r["wall"])[(len(rows) - 1) // 2]
                self.res["pitr"][t] = {**med, "walls": [r["wall"] for r in rows]}

    @staticmethod
    def pitr_phases(tool: str, stdout: str) -> dict:
        """Where a PITR's time went: pgBackRest's from the wrapper's time stamps, ours from
        restore pitr --json (restore_seconds, seconds_to_promotion)."""
        try:
            if tool == "pgbackrest":
                t0, t1, t2, t3 = (float(v) for v in stdout.split()[-4:])
                return {"restore": t1 - t0, "start": t2 - t1, "promotion": t3 - t2}
            j = json.loads(stdout)
            return {"restore": j.get("restore_seconds"),
                    "promotion": j.get("seconds_to_promotion")}
        except (ValueError, AttributeError):
            return {}

    # ------------------------------------------------------------ report

    def as_json(self) -> dict:
        return {"started": self.started.isoformat(), "args": {k: str(v) for k, v in
                                                             vars(self.args).items()},
                "machine": self.info, "generated": getattr(self, "gen", None),
                "day2": getattr(self, "day2", None), "replay": getattr(self, "replay", None),
                "target": getattr(self, "target", None), "results": self.res,
                "checks": self.checks, "problems": self.problems, "notes": self.notes,
                "other_load": self.runner.loads}

    def render(self) -> str:
        a, res = self.args, self.res
        L: list[str] = []
        L.append(f"\n## {self.started:%Y-%m-%d %H:%M} UTC: physical backups, WAL archiving and "
                 f"PITR vs pgBackRest (pgbench -s {a.scale})\n")
        cmdline = ("`bench/pitr.py"
                   + (f" --scale {a.scale}" if a.scale != 66 else "")
                   + (f" --pgbench-seconds {a.pgbench_seconds}" if a.pgbench_seconds != 30
                      else "")
                   + (f" --replay-seconds {a.replay_seconds}" if a.replay_seconds != 10
                      else "")
                   + (f" --segments {a.segments}" if a.segments != 20 else "")
                   + (f" --quiet-wait {a.quiet_wait:g}" if a.quiet_wait != 60 else "")
                   + (f" --code {a.code}" if a.code != "HEAD" else "")
                   + (" --no-ours" if a.no_ours else "") + "`")
        L.append(f"{cmdline}, {self.total_min:.0f} minutes in all.\n")
        L.append("Machine:\n")
        for k, v in self.info.items():
            L.append(f"- {k}: {v}")
        L.append(f"- page cache: {self.cache.label} (not for the wal-push loop: there the "
                 "segment and both tools' files are warm, as for an archive_command)")
        L.append("")
        g, d2 = self.gen, self.day2
        L.append(
            f"Cluster: `pgbench -i -s {a.scale}`: database {g['db_size'] / MiB:,.0f} MiB, data "
            f"directory {g['cluster_size'] / MiB:,.0f} MiB (with pg_wal), generated in "
            f"{g['seconds']} s. Between the backups `pgbench -T {d2['seconds']}` ran "
            f"{d2.get('transactions', 0):,} transactions ({d2.get('tps', 0)} tps); before the "
            f"PITR target another {self.replay.get('transactions', 0):,} "
            f"(`-T {self.replay['seconds']}`). No VACUUM in between (autovacuum off).")
        L.append("")
        L.append(
            "pgBackRest: local repository, `compress-type=zst` (level 3), `process-max=2`, "
            "`start-fast=y`, `archive-push` from archive_command (synchronous). Ours: "
            "`backup-tui backup cluster`, zstd:3, AES-GCM, `wal-push` from archive_command. "
            "Both run as the postgres user. While one tool's base backup is timed, the other "
            "tool's archive_command step only copies the segment to a spool (pushed after, "
            "untimed), so nobody waits for the other's archiving. A `CHECKPOINT` precedes each "
            "timed command. Stored bytes: `du -sb` of pgBackRest's `backup/` folder and of our "
            "repository without `wal/` (growth for the second backup); pgBackRest's own "
            "figure (`info`: repository delta) beside it.")
        L.append("")
        L.extend(bl.other_load_lines(self.runner))
        L.extend(f"- note: {n}" for n in self.notes)

        def x(r):
            return "-" if r is None else f"{r:.2f}x"

        def rat(o, p):
            return None if o is None or not p else o / p

        def ours(phase, key):
            return res[phase].get("ours", {}).get(key)

        ref = res["reference"]["pg_basebackup"]
        L.append("\n### Base backups\n")
        L.append("| command | wall s | CPU s | server CPU s | peak RSS MiB | stored bytes | "
                 "ours / pgBackRest |")
        L.append("|---|---:|---:|---:|---:|---:|---|")
        L.append(f"| pg_basebackup -Ft -X fetch -c fast -D - > /dev/null (scale) | "
                 f"{ref['wall']:.2f} | {ref['cpu']:.2f} | {ref['server_cpu']:.2f} | "
                 f"{ref['rss']:.0f} | - | |")
        for phase, title in (("full", "full"), ("second", "second, after pgbench")):
            p = res[phase]["pgbackrest"]
            L.append(f"| {title}: pgbackrest backup --type={p['type']} | {p['wall']:.2f} | "
                     f"{p['cpu']:.2f} | {p['server_cpu']:.2f} | {p['rss']:.0f} | "
                     f"{p['new']:,} (info: {p['repo_delta']:,}) | |")
            o = res[phase].get("ours")
            if o:
                L.append(f"| {title}: backup-tui backup cluster | {o['wall']:.2f} | "
                         f"{o['cpu']:.2f} | {o['server_cpu']:.2f} | {o['rss']:.0f} | "
                         f"{o['new']:,} (added: {o['added']:,}) | "
                         f"{x(rat(o['wall'], p['wall']))} time, "
                         f"{x(rat(o['new'], p['new']))} bytes |")
        if "ours" in res["full"]:
            L.append(f"\nOur snapshots' source size (tar stream): "
                     f"{res['full']['ours']['size']:,} and {res['second']['ours']['size']:,} "
                     "bytes.")
        wp = res["walpush"]
        L.append(f"\n### WAL push, {wp['pgbackrest']['n']} segments of "
                 f"{wp['pgbackrest']['segment_bytes'] / MiB:.0f} MiB, a process each\n")
        L.append("Segments " + wp["segments"][0] + " .. " + wp["segments"][-1]
                 + " copied out of pg_wal after `pgbench -i` (archived, real WAL), pushed into "
                 "a scratch archive of each tool (a second pgBackRest repository with its own "
                 "stanza-create; a second repository of ours), the tools alternating who "
                 "goes first, after one untimed warm-up push each. Wall includes process "
                 "start (`/usr/bin/time` + `setpriv` to postgres + the tool).\n")
        L.append("| command | median ms | p90 ms | max ms | median CPU ms | peak RSS MiB | "
                 "stored bytes | ours / pgBackRest (median) |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---|")
        for t, name in (("pgbackrest", "pgbackrest archive-push"),
                        ("ours", "backup-tui wal-push")):
            v = wp.get(t)
            if not v:
                continue
            rel = "" if t == "pgbackrest" else x(rat(v["median_ms"],
                                                     wp["pgbackrest"]["median_ms"]))
            L.append(f"| {name} | {v['median_ms']:.0f} | {v['p90_ms']:.0f} | {v['max_ms']:.0f} | "
                     f"{v['median_cpu_ms']:.0f} | {v['rss']:.0f} | {wp['stored'][t]:,} | {rel} |")
        L.append("\n### PITR to a target time, empty directory to a promoted server\n")
        tg = self.target
        L.append(f"Target {tg['iso']}, after {self.replay.get('transactions', 0):,} pgbench "
                 "transactions past the second base backup; a commit one second after the "
                 "target ends recovery. Each tool restores its newest base backup (pgBackRest "
                 "the incremental, with its full), recovery fetches WAL through "
                 "`pgbackrest archive-get` / `backup-tui wal-fetch`, "
                 "`recovery_target_action=promote`, archiving off in the copy. The wall ends "
                 "when `SELECT pg_is_in_recovery()` answers false on the new port (polled every "
                 "50 ms).\n")
        L.append(f"Each tool ran {max(1, self.args.pitr_runs)} times, alternating which went "
                 "first; the row is the median run by wall (every run's wall in brackets), "
                 "its phases below.\n")
        L.append("| command | wall s (runs) | CPU s | peak RSS MiB | ours / pgBackRest |")
        L.append("|---|---:|---:|---:|---|")
        for t, name in (("pgbackrest", "pgbackrest restore --type=time + pg_ctl start + "
                         "promotion"), ("ours", "backup-tui restore pitr --start")):
            v = res["pitr"].get(t)
            if not v:
                continue
            rel = "" if t == "pgbackrest" else x(rat(v["wall"], res["pitr"]["pgbackrest"]["wall"]))
            walls = ", ".join(f"{w:.2f}" for w in v.get("walls", []))
            L.append(f"| {name} | {v['wall']:.2f} ({walls}) | {v['cpu']:.2f} | {v['rss']:.0f} "
                     f"| {rel} |")
        ph = {t: res["pitr"][t].get("phases") or {} for t in res["pitr"]}
        if ph.get("pgbackrest"):
            p = ph["pgbackrest"]
            L.append(f"\nWhere the time went: pgBackRest: restore {p['restore']:.2f} s, "
                     f"`pg_ctl start -w` (to a consistent, read-only server) {p['start']:.2f} s, "
                     f"then promotion {p['promotion']:.2f} s"
                     + (f"; ours (restore pitr --json): base backup written and recovery "
                        f"settings {ph['ours']['restore']:.2f} s, server start to promotion "
                        f"{ph['ours']['promotion']:.2f} s" if ph.get("ours", {}).get("restore")
                        is not None and ph["ours"].get("promotion") is not None else "")
                     + ".")
        L.append("\nCPU s of a PITR is the commands' own (the restored server's recovery runs "
                 "in the server, counted as other load).")
        wa = res.get("wal_archive", {})
        L.append("\nWAL archive at the end of the run: "
                 + ", ".join(f"{t} {n:,} bytes" for t, n in wa.items()) + ".")

        L.append("\n### Targets\n")
        L.append("| target | measured | result |")
        L.append("|---|---:|---|")
        if self.ours_on:
            r = rat(ours("full", "wall"), res["full"]["pgbackrest"]["wall"])
            L.append(f"| base backup wall <= {FULL_WALL_TARGET}x pgBackRest full | {x(r)} | "
                     f"{bl.verdict(r, FULL_WALL_TARGET)} |")
            r = rat(ours("second", "new"), res["second"]["pgbackrest"]["new"])
            L.append(f"| second base backup added bytes <= {ADDED_TARGET}x pgBackRest incr | "
                     f"{x(r)} | {bl.verdict(r, ADDED_TARGET)} |")
            m = wp["ours"]["median_ms"]
            L.append(f"| wal-push <= {WALPUSH_TARGET_MS:.0f} ms per segment (pgbackrest "
                     f"archive-push: {wp['pgbackrest']['median_ms']:.0f} ms) | {m:.0f} ms "
                     f"(p90 {wp['ours']['p90_ms']:.0f}) | {bl.verdict(m, WALPUSH_TARGET_MS)} |")
            r = rat(res["pitr"].get("ours", {}).get("wall"), res["pitr"]["pgbackrest"]["wall"])
            L.append(f"| PITR to a promoted server <= {PITR_TARGET}x pgBackRest | {x(r)} | "
                     f"{bl.verdict(r, PITR_TARGET)} |")
            peaks = [(res[ph]["ours"]["rss"], f"{ph} backup") for ph in ("full", "second")]
            peaks.append((wp["ours"]["rss"], "wal-push"))
            if "ours" in res["pitr"]:
                peaks.append((res["pitr"]["ours"]["rss"], "restore pitr"))
            peak = max(peaks)
            L.append(f"| peak RSS <= {RSS_TARGET_MIB} MiB | {peak[0]:.0f} MiB ({peak[1]}) | "
                     f"{bl.verdict(peak[0], RSS_TARGET_MIB)} |")
        else:
            L.append("| (our side not measured: --no-ours) | - | n/a |")
        L.append("\nChecks:\n")
        for ch in self.checks:
            L.append(f"- {ch}")
        L.append("")
        return "\n".join(L)


def _free_port() -> int:
    from engine.sandbox import free_port
    return free_port()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (bl.BenchError, subprocess.CalledProcessError, RuntimeError) as e:
        sys.stderr.write(f"bench: {e}\n")
        sys.exit(1)
