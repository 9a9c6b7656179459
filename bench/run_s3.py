#!/usr/bin/env python3
"""Benchmark ``backup-tui replicate`` to a loopback S3 server against a bare boto3 loop.

Run from the repository root with the project's venv (moto[server] installed in it)::

    .venv/bin/python bench/run_s3.py                     # 1 GiB tree: ~3 minutes
    .venv/bin/python bench/run_s3.py --size-mib 128 --no-results   # smoke run

Steps, all against one ``moto_server`` (``engine.sandbox.S3Server``) on a free
127.0.0.1 port for the run (in-memory S3; it is stopped at the end):

1. bench/gen_tree.py writes the 1 GiB tree, ``backup-tui backup files`` stores
   it in a local repository (not timed: bench/run.py measures that).
2. ``backup-tui replicate --json`` into an empty bucket (timed: wall, peak RSS;
   objects/s and MB/s), with a ``[[replica]]`` (replicate_after_backup = false).
3. The same command again with nothing to do: it must make no upload and finish in
   seconds. Requests are counted on the server (moto's request log, one line per
   HTTP request) for steps 2-5, and in-process for step 4.
4. A small driver calling ``engine.ops.replicate.replicate_one(LocalBackend,
   S3Backend, ...)`` on the same, complete, replica: prints the S3Backend's own
   ``requests`` counters (put/get/list/head/delete).
5. Day 2: ``gen_tree.py --mutate``, a second backup, and an incremental replicate.
6. The baseline: the same repository files (config, keys/, data/, index/,
   snapshots/: the objects step 2 uploaded) sent with ``boto3`` ``upload_file``,
   a plain sequential loop, then a ThreadPoolExecutor of 8, each into a fresh
   bucket, with boto3's defaults (upload_file's TransferConfig: multipart above 8 MiB
   in 8 MiB parts, up to 10 threads per file).
7. ``replicate`` into a fresh bucket once more (a second sample of step 2).

Every bucket is emptied once measured (moto keeps objects in memory). Dummy
credentials (``AWS_ACCESS_KEY_ID=bench`` ...) are set only in the environment of
the measured commands. Timing is bench/run.py's Runner (``/usr/bin/time``, page
cache dropped, quiet-machine wait); the server's own CPU time is read from /proc
per command and reported apart. A dated section is appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

HERE = Path(__file__).resolve().parent
CLASSES = ("keys/", "data/", "index/", "snapshots/", "pins/", "wal/")
AWS_KEY = "bench"  # the dummy access key and secret of the measured commands
REGION = "us-east-1"
THROUGHPUT_TARGET = 0.8
MB = 1_000_000
MiB = 1024 * 1024


# ------------------------------------------------------- measured sub-commands


def repo_objects(root: Path) -> list[tuple[str, Path]]:
    """(key, path): config and every object under the classes replicate copies."""
    out = []
    if (root / "config").is_file():
        out.append(("config", root / "config"))
    for cls in CLASSES:
        d = root / cls.rstrip("/")
        if not d.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames[:] = sorted(x for x in dirnames if not x.startswith("."))
            for f in sorted(filenames):
                if f.startswith("."):
                    continue
                p = Path(dirpath) / f
                out.append((str(p.relative_to(root)), p))
    return out


def cmd_upload(a) -> int:
    """The baseline: boto3 upload_file of every repository object, defaults throughout."""
    import boto3

    client = boto3.client("s3", endpoint_url=a.endpoint, region_name=REGION)
    objs = repo_objects(Path(a.repo))
    total = sum(p.stat().st_size for _, p in objs)
    t0 = time.perf_counter()
    if a.threads <= 1:
        for key, p in objs:
            client.upload_file(str(p), a.bucket, key)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=a.threads) as pool:
            list(pool.map(lambda kp: client.upload_file(str(kp[1]), a.bucket, kp[0]), objs))
    secs = time.perf_counter() - t0
    json.dump({"objects": len(objs), "bytes": total, "seconds": round(secs, 3)}, sys.stdout)
    return 0


def cmd_driver(a) -> int:
    """replicate_one in-process, to read the S3Backend's request counters."""
    from engine.ops.replicate import replicate_one
    from engine.storage.local import LocalBackend
    from engine.storage.s3 import S3Backend

    local = LocalBackend(a.repo)
    remote = S3Backend(bucket=a.bucket, region=REGION, endpoint_url=a.endpoint, name="bench")
    t0 = time.perf_counter()
    res = replicate_one(local, remote, "bench", "bench", lambda e: None)
    secs = time.perf_counter() - t0
    json.dump({"result": res.as_json(), "requests": remote.requests,
               "seconds": round(secs, 3)}, sys.stdout)
    return 0


# ------------------------------------------------------------- the server


class Moto:
    """The sandbox's moto_server (``engine.sandbox.S3Server``), and what this benchmark
    reads of it: its CPU time, peak RSS and the requests in its log."""

    def __init__(self, log: Path):
        sys.path.insert(0, str(HERE.parent))  # engine.sandbox (not measured)
        from engine.sandbox import S3Server

        self.server = S3Server(log_path=log, access_key=AWS_KEY, secret_key=AWS_KEY).start(30)
        self.proc = self.server.proc
        self.url = self.server.endpoint_url
        self.log = log
        self.mark = 0

    def cpu(self) -> float:
        import benchlib

        return benchlib.proc_cpu(self.proc.pid, children=False)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def bucket(self, name: str) -> str:
        return self.server.make_bucket(name)

    def empty(self, name: str) -> None:
        self.server.remove_bucket(name)

    def requests_since_mark(self) -> dict:
        """Requests logged since the last call, by kind (and LIST by prefix)."""
        time.sleep(0.3)  # the log line follows the response
        data = self.log.read_bytes()
        new, self.mark = data[self.mark:], len(data)
        text = re.sub(r"\x1b\[[0-9;]*m", "", new.decode("utf-8", "replace"))
        kinds: Counter[str] = Counter()
        lists: Counter[str] = Counter()
        for m in re.finditer(r'"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/[\d.]+" (\d+)', text):
            method, target, _status = m.groups()
            u = urlsplit(target)
            q = parse_qs(u.query, keep_blank_values=True)
            path = unquote(u.path).lstrip("/")
            if method == "GET" and ("list-type" in q or path.count("/") == 0):
                if "location" in q:
                    kinds["GET location"] += 1
                    continue
                kinds["LIST"] += 1
                lists[q.get("prefix", [""])[0] or "(all)"] += 1
            elif method == "PUT" and "partNumber" in q:
                kinds["PUT part"] += 1
            elif method == "POST" and "uploads" in q:
                kinds["POST create-multipart"] += 1
            elif method == "POST" and "uploadId" in q:
                kinds["POST complete-multipart"] += 1
            elif method == "HEAD" and path.count("/") == 0:
                kinds["HEAD bucket"] += 1
            else:
                kinds[f"{method} object"] += 1
        return {"kinds": dict(kinds), "lists": dict(lists), "total": sum(kinds.values())}

    def stop(self) -> None:
        self.server.stop()


# ------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in ("_upload", "_driver"):
        sp = argparse.ArgumentParser()
        sp.add_argument("mode")
        sp.add_argument("--endpoint", required=True)
        sp.add_argument("--bucket", required=True)
        sp.add_argument("--repo", required=True)
        sp.add_argument("--threads", type=int, default=1)
        a = sp.parse_args(argv)
        return cmd_upload(a) if a.mode == "_upload" else cmd_driver(a)

    sys.path.insert(0, str(HERE))
    import benchlib as bl

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--work", type=Path, default=HERE / "work" / "s3")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--no-results", action="store_true")
    ap.add_argument("--no-drop-caches", action="store_true")
    ap.add_argument("--quiet-wait", type=float, default=120)
    ap.add_argument("--code", default="HEAD", help="git revision to measure, or 'worktree'")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="finally, replicate once more under py-spy into a fresh bucket and "
                    "print where the time goes (WORK/replicate.profile.txt)")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args(argv)

    work: Path = args.work.resolve()
    if shutil.disk_usage(HERE).free < args.size_mib * MiB * 4:
        raise SystemExit("bench: not enough free disk (about 4x --size-mib)")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    time_bin = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
    cache = bl.Cache(not args.no_drop_caches)
    runner = bl.Runner(work, cache, time_bin, args.quiet_wait)
    ours_env, ours_cmd, code_label = bl.export_code(args.code, work)
    info = bl.machine(work, code_label)
    import boto3
    import moto

    info["s3 server"] = (f"moto_server {moto.__version__} (in-memory, one process, threaded "
                         "werkzeug), 127.0.0.1, same machine")
    info["boto3"] = boto3.__version__
    started = dt.datetime.now(dt.UTC)
    t_start = time.monotonic()
    try:
        return run(args, bl, work, runner, cache, ours_env, ours_cmd, info, started, t_start)
    finally:
        if not args.keep:
            for sub in ("src", "ours", "code"):
                shutil.rmtree(work / sub, ignore_errors=True)


def run(args, bl, work, runner, cache, ours_env, ours_cmd, info, started, t_start) -> int:
    src = work / "src" / "app-data"
    bl.log(f"generating {args.size_mib} MiB tree in {src}")
    gen = json.loads(bl.sh([sys.executable, str(HERE / "gen_tree.py"), str(src), "--size-mib",
                            str(args.size_mib), "--seed", str(args.seed)]))
    d = work / "ours"
    (d / "state").mkdir(parents=True)
    pw = d / "password"
    pw.write_text("bench-password\n")
    pw.chmod(0o600)
    repo = d / "repo"
    cfg = d / "config.toml"
    moto = Moto(work / "moto.log")
    bl.log(f"moto_server pid {moto.proc.pid} on {moto.url}")
    try:
        base_cfg = (
            "[repository]\n"
            f"path = {json.dumps(str(repo))}\n"
            f"password_file = {json.dumps(str(pw))}\n"
            'compression = "zstd:3"\n\n'
            f"[state]\ndir = {json.dumps(str(d / 'state'))}\n\n"
            f'[[fileset]]\nname = "app"\npaths = [{json.dumps(str(src))}]\n'
        )

        def set_bucket(bucket: str) -> None:
            cfg.write_text(
                base_cfg + "\n[[replica]]\n"
                'name = "loopback"\n'
                f"bucket = {json.dumps(bucket)}\n"
                f'region = "{REGION}"\n'
                f"endpoint_url = {json.dumps(moto.url)}\n"
                "replicate_after_backup = false\n"
            )

        set_bucket("bench-replica-1")
        ours = [*ours_cmd, "--config", str(cfg)]
        from engine.sandbox import loopback_aws_env  # on sys.path since Moto()

        env = loopback_aws_env(dict(ours_env), AWS_KEY, AWS_KEY)
        bl.sh([*ours, "init"], env=ours_env)
        bl.log("backup files (not timed)")
        b1 = json.loads(bl.sh([*ours, "backup", "files", "app", "--json"], env=ours_env))
        repo_bytes = bl.du_bytes(repo)
        objs = repo_objects(repo)
        obj_bytes = sum(p.stat().st_size for _, p in objs)
        by_class = Counter(k.split("/")[0] if "/" in k else k for k, _ in objs)
        sizes = sorted(p.stat().st_size for _, p in objs)
        res: dict = {}

        def timed(label: str, cmd: list[str], e: dict) -> dict:
            moto.requests_since_mark()
            # the server is part of the benchmark: its CPU is reported, not "other load"
            r = bl.run_beside(runner, moto.cpu, label, cmd, e)
            r["requests"] = moto.requests_since_mark()
            return r

        # ----------------------------------------------------- ours: full
        moto.bucket("bench-replica-1")
        r = timed("replicate (full) #1", [*ours, "replicate", "--json"], env)
        j = json.loads(r["stdout"])[0]
        if not j.get("ok"):
            raise bl.BenchError(f"replicate failed: {j.get('error')}")
        res["full1"] = {**r, "json": j}
        # ----------------------------------------------------- ours: nothing to do
        r = timed("replicate (no change)", [*ours, "replicate", "--json"], env)
        res["nochange"] = {**r, "json": json.loads(r["stdout"])[0]}
        drv = [bl.PYTHON, "-P", str(Path(__file__).resolve()), "_driver", "--endpoint", moto.url,
               "--bucket", "bench-replica-1", "--repo", str(repo)]
        r = timed("replicate_one driver (no change)", drv, env)
        res["driver"] = {**r, "json": json.loads(r["stdout"])}
        # ----------------------------------------------------- day 2
        bl.log("day 2: mutate, back up (not timed)")
        mut = json.loads(bl.sh([sys.executable, str(HERE / "gen_tree.py"), str(src), "--mutate",
                                "--seed", str(args.seed)]))
        b2 = json.loads(bl.sh([*ours, "backup", "files", "app", "--json"], env=ours_env))
        r = timed("replicate (after day-2 backup)", [*ours, "replicate", "--json"], env)
        res["day2"] = {**r, "json": json.loads(r["stdout"])[0]}
        moto.empty("bench-replica-1")
        # the baseline sends the day-1 objects: the same set replicate #1 sent. Objects
        # added since are excluded by name.
        day1_names = {k for k, _ in objs}
        base_repo = work / "base-repo"
        for k, p in objs:
            q = base_repo / k
            q.parent.mkdir(parents=True, exist_ok=True)
            os.link(p, q)
        assert {k for k, _ in repo_objects(base_repo)} == day1_names
        # ----------------------------------------------------- boto3 baselines
        for threads, key in ((1, "boto_seq"), (8, "boto_8")):
            bucket = moto.bucket(f"bench-{key.replace('_', '-')}")
            r = timed(f"boto3 upload_file x{threads}",
                      [bl.PYTHON, "-P", str(Path(__file__).resolve()), "_upload", "--endpoint",
                       moto.url, "--bucket", bucket, "--repo", str(base_repo),
                       "--threads", str(threads)], env)
            res[key] = {**r, "json": json.loads(r["stdout"])}
            moto.empty(bucket)
        # ----------------------------------------------------- ours: full again
        # a fresh local repository holding only the day-1 objects, so the bytes match
        set_bucket("bench-replica-2")
        cfg2 = d / "config-base.toml"
        cfg2.write_text(cfg.read_text().replace(json.dumps(str(repo)), json.dumps(str(base_repo))))
        moto.bucket("bench-replica-2")
        r = timed("replicate (full) #2", [*ours_cmd, "--config", str(cfg2), "replicate",
                                          "--json"], env)
        res["full2"] = {**r, "json": json.loads(r["stdout"])[0]}
        moto.empty("bench-replica-2")
        profile_text = ""
        if args.profile:
            profile_text = profile(bl, work, moto, ours_cmd, cfg2, env)
        server_rss = moto.rss_mib()
    finally:
        moto.stop()
        bl.log("moto_server stopped")
    total_min = (time.monotonic() - t_start) / 60
    report = render(args, bl, info, cache, runner, gen, mut, b1, b2, repo_bytes, objs,
                    obj_bytes, by_class, sizes, res, server_rss, total_min)
    sys.stdout.write(report)
    if profile_text:
        sys.stdout.write("\n<!-- profile\n" + profile_text + "\n-->\n")
    (work.parent / "last-s3-run.json").write_text(json.dumps(
        {"results": {k: {kk: vv for kk, vv in v.items() if kk != "stdout"}
                     for k, v in res.items()}, "machine": info}, indent=2, default=str))
    if not args.no_results:
        with open(args.results, "a") as f:
            f.write(report)
        bl.log(f"appended to {args.results}")
    return 0


def profile(bl, work: Path, moto: Moto, ours_cmd, cfg2: Path, env: dict) -> str:
    """py-spy of a full replicate (client) and of the server meanwhile."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_profile", HERE / "profile.py")
    pyspy_report = importlib.util.module_from_spec(spec)  # bench/profile.py's report()
    spec.loader.exec_module(pyspy_report)

    pyspy = str(Path(bl.PYTHON).parent / "py-spy")
    moto.bucket("bench-replica-2")
    raw = work / "replicate.raw.txt"
    sraw = work / "server.raw.txt"
    server = subprocess.Popen([pyspy, "record", "--idle", "--threads", "-f", "raw", "-r", "100",
                               "-o", str(sraw), "--pid", str(moto.proc.pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    bl.Cache(True).before()
    t0 = time.perf_counter()
    subprocess.run([pyspy, "record", "--idle", "--threads", "-f", "raw", "-r", "100", "-o",
                    str(raw), "--", *ours_cmd, "--config", str(cfg2), "replicate", "--json"],
                   env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    server.send_signal(2)
    server.wait(30)
    moto.empty("bench-replica-2")
    text = ("== client: backup-tui replicate ==\n" + pyspy_report.report(raw, wall, 100, 15)
            + "\n== server: moto_server, same interval (+1 s) ==\n"
            + (pyspy_report.report(sraw, wall + 1, 100, 15) if sraw.exists() else "(none)"))
    (work / "replicate.profile.txt").write_text(text)
    return text


def render(args, bl, info, cache, runner, gen, mut, b1, b2, repo_bytes, objs, obj_bytes,
           by_class, sizes, res, server_rss, total_min) -> str:
    L: list[str] = []
    L.append(f"\n## {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC: S3 replication to a loopback "
             f"server ({args.size_mib} MiB tree)\n")
    L.append("`bench/run_s3.py" + (f" --size-mib {args.size_mib}" if args.size_mib != 1024 else "")
             + (" --profile" if args.profile else "")
             + (f" --quiet-wait {args.quiet_wait:g}" if args.quiet_wait != 120 else "")
             + f"`, {total_min:.0f} minutes in all.\n")
    L.append("Machine:\n")
    for k, v in info.items():
        L.append(f"- {k}: {v}")
    L.append(f"- page cache: {cache.label}")
    L.append("")
    L.append(
        f"Repository: `gen_tree.py --size-mib {args.size_mib}` ({gen['files']:,} files, "
        f"{gen['bytes'] / MiB:,.0f} MiB) backed up once with `backup-tui backup files`: "
        f"{repo_bytes:,} bytes on disk (`du -sb`); {len(objs)} objects to replicate, "
        f"{obj_bytes:,} bytes ("
        + ", ".join(f"{k} {n}" for k, n in sorted(by_class.items()))
        + f"; median object {sizes[len(sizes) // 2]:,} B, largest {sizes[-1]:,} B)."
    )
    L.append(
        "Timed: wall of the whole command (process start and imports included) under "
        "`/usr/bin/time`; MB = 10^6 bytes. Server CPU = moto_server's user+system time "
        "during the command (both share the machine's cores). Requests: counted on the "
        "server, from its request log (one line per HTTP request)."
    )
    L.append("")
    L.extend(bl.other_load_lines(runner))

    def reqs(r: dict) -> str:
        k = r["requests"]["kinds"]
        return ", ".join(f"{n} {kk}" for kk, n in sorted(k.items())) or "none"

    L.append("\n### Throughput (full replication into an empty bucket)\n")
    L.append("| command | objects | bytes | wall s | objects/s | MB/s (MiB/s) | CPU s | "
             "server CPU s | peak RSS MiB | requests at the server |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    rows = []
    for key, name in (("full1", "backup-tui replicate #1"), ("full2", "backup-tui replicate #2"),
                      ("boto_seq", "boto3 upload_file, sequential loop"),
                      ("boto_8", "boto3 upload_file, ThreadPoolExecutor(8)")):
        r = res[key]
        j = r["json"]
        n = j.get("uploaded", j.get("objects"))
        b = j.get("uploaded_bytes", j.get("bytes"))
        rows.append((key, b / r["wall"]))
        L.append(
            f"| {name} | {n} | {b:,} | {r['wall']:.2f} | {n / r['wall']:.1f} | "
            f"{b / r['wall'] / MB:.1f} ({b / r['wall'] / MiB:.1f}) | {r['cpu']:.2f} | "
            f"{r['server_cpu']:.2f} | {r['rss_mib']:.0f} | {reqs(r)} |"
        )
    L.append("")
    def inner(j: dict) -> str:
        b = j.get("uploaded_bytes", j.get("bytes"))
        return f"{j['seconds']:.2f} s ({b / j['seconds'] / MB:.1f} MB/s)"

    L.append(
        "Inside the commands (their own clocks, without process start): "
        + "; ".join(
            f"{name} {inner(res[k]['json'])}"
            for k, name in (("full1", "replicate #1"), ("full2", "replicate #2"),
                            ("boto_seq", "boto3 sequential"), ("boto_8", "boto3 x8"))
        )
        + f". moto_server peak RSS over the run: {server_rss:,.0f} MiB."
    )
    L.append(
        "\nReplicate #1 ran from the repository as backed up; #2 (after the baselines) from a "
        "copy (hard links) holding exactly the day-1 objects, the same set the baselines send."
    )

    L.append("\n### Nothing to do, and incremental\n")
    L.append("| command | uploaded | bytes | wall s | CPU s | server CPU s | peak RSS MiB | "
             "requests at the server | LIST by prefix |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for key, name in (("nochange", "backup-tui replicate, no change"),
                      ("driver", "replicate_one driver, no change"),
                      ("day2", "backup-tui replicate after the day-2 backup")):
        r = res[key]
        j = r["json"].get("result", r["json"])
        lists = ", ".join(f"{p} {n}" for p, n in sorted(r["requests"]["lists"].items()))
        L.append(f"| {name} | {j['uploaded']} | {j['uploaded_bytes']:,} | {r['wall']:.2f} | "
                 f"{r['cpu']:.2f} | {r['server_cpu']:.2f} | {r['rss_mib']:.0f} | {reqs(r)} | "
                 f"{lists} |")
    dr = res["driver"]["json"]
    L.append(
        "\nThe driver's S3Backend counted: "
        + ", ".join(f"{k} {v}" for k, v in dr["requests"].items())
        + f" (replicate_one took {dr['seconds']:.2f} s in-process)."
    )
    L.append(
        f"Day 2 (`gen_tree.py --mutate`, {mut['changed_pct']}% of the bytes): the second backup "
        f"added {b2.get('added', 0):,} bytes; the replicate after it uploaded "
        f"{res['day2']['json']['uploaded']} objects."
    )

    # targets
    L.append("\n### Targets\n")
    L.append("| target | measured | result |")
    L.append("|---|---:|---|")
    nc = res["nochange"]["requests"]["kinds"]
    puts = sum(v for k, v in nc.items() if k.startswith(("PUT", "POST")))
    dput = res["driver"]["json"]["requests"]["put"]
    L.append(f"| no-change replicate: zero PUTs | {puts} PUT/POST at the server (CLI), "
             f"{dput} counted by S3Backend (driver) | "
             f"{'met' if puts == 0 and dput == 0 else '**MISSED**'} |")
    lists = res["nochange"]["requests"]["lists"]
    worst = max(lists.values()) if lists else 0
    L.append(f"| no-change replicate: at most one LIST pass per object class | "
             f"{sum(lists.values())} LIST requests over {len(lists)} prefixes, at most {worst} per "
             f"prefix; driver counted {res['driver']['json']['requests']['list']} | "
             f"{'met' if worst <= 1 else '**MISSED**'} |")
    L.append(f"| no-change replicate finishes in seconds | {res['nochange']['wall']:.2f} s | "
             f"{'met' if res['nochange']['wall'] < 10 else '**MISSED**'} |")
    rate = dict(rows)
    ours_best = max(rate["full1"], rate["full2"])
    ours_mean = (rate["full1"] + rate["full2"]) / 2
    for key, name in (("boto_seq", "sequential upload_file loop"),
                      ("boto_8", "upload_file in 8 threads")):
        r = ours_mean / rate[key]
        L.append(f"| replicate throughput >= {THROUGHPUT_TARGET}x boto3 {name} | "
                 f"{ours_mean / MB:.1f} / {rate[key] / MB:.1f} MB/s = {r:.2f}x (mean of #1, #2; "
                 f"best {ours_best / rate[key]:.2f}x) | "
                 + ("met" if r >= THROUGHPUT_TARGET else
                    f"**MISSED**: {r / THROUGHPUT_TARGET:.0%} of the target "
                    f"(needs {THROUGHPUT_TARGET * rate[key] / MB:.1f} MB/s)") + " |")
    L.append("")
    for n in args.note:
        L.append(f"- note: {n}")
    L.append("")
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
