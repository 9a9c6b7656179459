#!/usr/bin/env python3
"""Restore and verify --read-data from an S3 replica against the local repository and restic.

Issue 14's targets: a files restore from a replica on the loopback S3 server at
most 2x the local restore, and ``verify --read-data`` at most 0.8x ``restic
check --read-data``. Run from the repository root::

    .venv/bin/python bench/s3_restore.py                       # 1 GiB tree
    .venv/bin/python bench/s3_restore.py --size-mib 256 --no-results --quiet-wait 0

One moto_server (``engine.sandbox.S3Server``, in memory, a free 127.0.0.1 port)
for the run. Untimed: gen_tree.py's tree, ``backup files``, ``replicate`` into
the bucket, a restic repository of the same tree. Timed, each under bench/run.py's
``Runner`` (page cache dropped, peak RSS, quiet-machine wait): ``restore files
latest`` from the local repository and ``--replica loopback``, each restored tree
compared with the source (content sha256, size, type, mode); ``verify --read-data``
of the local repository and of the replica; ``restic check --read-data``. Requests
are counted on the server from moto's log (GET object = ranged or whole reads). The
server's CPU is reported apart. A dated section goes to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import benchlib as bl  # noqa: E402
from run_s3 import AWS_KEY, REGION, Moto  # noqa: E402

MiB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--work", type=Path, default=HERE / "work" / "s3restore")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--no-results", action="store_true")
    ap.add_argument("--no-drop-caches", action="store_true")
    ap.add_argument("--no-restic", action="store_true")
    ap.add_argument("--quiet-wait", type=float, default=120)
    ap.add_argument("--code", default="HEAD", help="git revision to measure, or 'worktree'")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args(argv)

    work: Path = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    time_bin = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
    cache = bl.Cache(not args.no_drop_caches)
    runner = bl.Runner(work, cache, time_bin, args.quiet_wait)
    ours_env, ours_cmd, code_label = bl.export_code(args.code, work)
    info = bl.machine(work, code_label)
    restic = None if args.no_restic else shutil.which("restic")
    if restic:
        info["restic"] = bl.sh([restic, "version"]).strip()
    started = dt.datetime.now(dt.UTC)
    try:
        return run(args, work, runner, cache, ours_env, ours_cmd, info, restic, started)
    finally:
        if not args.keep:
            for sub in ("src", "ours", "restic", "restore", "code"):
                shutil.rmtree(work / sub, ignore_errors=True)


def run(args, work, runner, cache, ours_env, ours_cmd, info, restic, started) -> int:
    src = work / "src" / "app-data"
    bl.log(f"generating {args.size_mib} MiB tree in {src}")
    gen = json.loads(bl.sh([sys.executable, str(HERE / "gen_tree.py"), str(src), "--size-mib",
                            str(args.size_mib), "--seed", str(args.seed)]))
    expected = bl.filesbench.listing(src)
    d = work / "ours"
    (d / "state").mkdir(parents=True)
    pw = d / "password"
    pw.write_text("bench-password\n")
    pw.chmod(0o600)
    repo = d / "repo"
    cfg = d / "config.toml"
    moto = Moto(work / "moto.log")
    res: dict[str, dict] = {}
    checks: list[str] = []
    bad: list[str] = []
    try:
        cfg.write_text(
            "[repository]\n"
            f"path = {json.dumps(str(repo))}\n"
            f"password_file = {json.dumps(str(pw))}\n"
            'compression = "zstd:3"\n\n'
            f"[state]\ndir = {json.dumps(str(d / 'state'))}\n\n"
            f'[[fileset]]\nname = "app"\npaths = [{json.dumps(str(src))}]\n'
            "\n[[replica]]\n"
            'name = "loopback"\n'
            'bucket = "bench-restore"\n'
            f'region = "{REGION}"\n'
            f"endpoint_url = {json.dumps(moto.url)}\n"
            "replicate_after_backup = false\n"
        )
        ours = [*ours_cmd, "--config", str(cfg)]
        from engine.sandbox import loopback_aws_env

        env = loopback_aws_env(dict(ours_env), AWS_KEY, AWS_KEY)
        bl.sh([*ours, "init"], env=ours_env)
        bl.log("backup files, replicate (not timed)")
        bl.sh([*ours, "backup", "files", "app", "--json"], env=ours_env)
        moto.bucket("bench-restore")
        rep = json.loads(bl.sh([*ours, "replicate", "--json"], env=env))[0]
        if not rep.get("ok"):
            raise bl.BenchError(f"replicate failed: {rep}")
        repo_bytes = bl.du_bytes(repo)
        renv = dict(os.environ, RESTIC_REPOSITORY=str(work / "restic" / "repo"),
                    RESTIC_PASSWORD="bench-password",
                    RESTIC_CACHE_DIR=str(work / "restic" / "cache"))
        if restic:
            bl.log("restic backup (not timed)")
            bl.sh([restic, "init"], env=renv)
            bl.sh([restic, "backup", "--quiet", str(src)], env=renv)

        def timed(key: str, label: str, cmd: list[str], e: dict, check: bool = True) -> dict:
            moto.requests_since_mark()
            c0 = moto.cpu()
            r = runner.run(label, cmd, env=e, check=check)
            # the server is part of the benchmark: its CPU is reported, not "other load"
            spent = max(0.0, moto.cpu() - c0)
            lbl, other = runner.loads[-1]
            runner.loads[-1] = (lbl, max(0.0, other - spent / max(r["wall"], 1e-6)))
            r["server_cpu"] = spent
            r["requests"] = moto.requests_since_mark()
            res[key] = r
            return r

        for key, extra in (("restore_local", []), ("restore_s3", ["--replica", "loopback"])):
            target = work / "restore" / key
            timed(key, f"restore files ({'local' if not extra else 'S3 replica'})",
                  [*ours, "restore", "files", "latest", "--target", str(target), "--json",
                   *extra], env)
            got = bl.filesbench.listing(target / str(src).lstrip("/"))
            problems, _warn = bl.filesbench.compare(expected, got)
            if problems:
                bad.append(f"{key}: {len(problems)} problem(s): " + "; ".join(problems[:5]))
            else:
                checks.append(f"{key}: restored tree matches the source ({len(expected)} "
                              "entries; content sha256, size, type, mode)")
            shutil.rmtree(target)
        for key, extra in (("verify_local", []), ("verify_s3", ["--replica", "loopback"])):
            r = timed(key, f"verify --read-data ({'local' if not extra else 'S3 replica'})",
                      [*ours, "verify", "--read-data", "--json", *extra], env, check=False)
            try:
                ok = json.loads(r["stdout"]).get("ok")
            except ValueError:
                ok = False
            if r["rc"] != 0 or not ok:
                bad.append(f"{key}: verify reported problems (exit {r['rc']}), see {r['log']}")
            else:
                checks.append(f"{key}: ok")
        if restic:
            timed("restic_check", "restic check --read-data", [restic, "check", "--read-data"],
                  renv)
        server_rss = moto.rss_mib()
    finally:
        moto.stop()
    report = render(args, info, cache, runner, gen, repo_bytes, res, checks, bad, server_rss,
                    started)
    sys.stdout.write(report)
    if not args.no_results:
        with open(args.results, "a") as f:
            f.write(report)
        bl.log(f"appended to {args.results}")
    return 1 if bad else 0


def render(args, info, cache, runner, gen, repo_bytes, res, checks, bad, server_rss,
           started) -> str:
    def gets(r: dict) -> str:
        k = r.get("requests", {}).get("kinds", {})
        return f"{k.get('GET object', 0):,}"

    lines = [f"\n## {started:%Y-%m-%d %H:%M} UTC: restore and verify from an S3 replica "
             f"({args.size_mib} MiB tree, `bench/s3_restore.py`)\n"]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += [f"- cache: {cache.label}",
              f"- tree: {gen.get('files', '?')} files, repository {repo_bytes:,} bytes on disk"]
    lines += [f"- note: {n}" for n in args.note]
    lines += ["", "| command | wall s | CPU s | peak RSS MiB | server CPU s | GET object "
              "| requests |", "|---|---:|---:|---:|---:|---:|---:|"]
    names = {"restore_local": "restore files (local)", "restore_s3": "restore files --replica (S3)",
             "verify_local": "verify --read-data (local)",
             "verify_s3": "verify --read-data --replica (S3)",
             "restic_check": "restic check --read-data"}
    for key, label in names.items():
        r = res.get(key)
        if r:
            lines.append(f"| {label} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['rss_mib']:.0f} | "
                         f"{r.get('server_cpu', 0):.2f} | {gets(r)} | "
                         f"{r.get('requests', {}).get('total', 0):,} |")
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    if "restore_s3" in res and "restore_local" in res:
        q = res["restore_s3"]["wall"] / res["restore_local"]["wall"]
        lines.append(f"| restore from the S3 replica <= 2x the local restore | {q:.2f}x | "
                     f"{bl.verdict(q, 2.0)} |")
    if "restic_check" in res and "verify_local" in res:
        q = res["verify_local"]["wall"] / res["restic_check"]["wall"]
        lines.append(f"| verify --read-data <= 0.8x restic check --read-data | {q:.2f}x | "
                     f"{bl.verdict(q, 0.8)} |")
    lines += ["", f"moto_server peak RSS {server_rss:.0f} MiB. Other load (CPU of other "
              "processes, in cores, while each command ran): "
              + ", ".join(f"{lbl} {o:.2f}" for lbl, o in runner.loads), ""]
    lines += [f"- {c}" for c in checks] + [f"- **{b}**" for b in bad]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
