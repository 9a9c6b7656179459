"""The command line: ``backup-tui [--config PATH] COMMAND ...`` (README.md, "Use it").

Exit codes: 0 success, 1 the operation failed or found problems, 2 bad usage
or config (one line on stderr). ``--json`` prints data and nothing else on
stdout. Textual is imported only when the console starts, so scripted
commands stay quick.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

# First: wal-push and wal-fetch (PostgreSQL's archive/restore commands) run and exit
# inside this import when they are the command, before the heavy imports below.
from backup_tui import cli_wal
from backup_tui.format import human_bytes
from engine.config import find_config, load_config
from engine.errors import EngineError, UsageError
from engine.events import Event
from engine.facade import BackupAllError, Engine
from engine.sources import registry


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs: running text is wrapped to the terminal, paragraph by
    paragraph (blank lines kept); lines that start with a space (the examples) are kept
    as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        out: list[str] = []
        para: list[str] = []

        def flush() -> None:
            if para:
                out.append(textwrap.fill(" ".join(para), width, initial_indent=indent,
                                         subsequent_indent=indent))
                para.clear()

        for line in text.strip("\n").splitlines():
            if not line.strip():
                flush()
                out.append("")
            elif line[0].isspace():
                flush()
                out.append(indent + line.rstrip())
            else:
                para.append(line.strip())
        flush()
        return "\n".join(out)

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        # "--no-owner" stays whole instead of breaking after "--no-"
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class ArgParser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # exit 2 with one line
        sys.stderr.write(f"backup-tui: {message}\n")
        sys.exit(2)


class _Version(argparse.Action):
    """--version: the installed package's version, looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        sys.stdout.write(f"backup-tui {package_version()}\n")
        parser.exit(0)


def package_version() -> str:
    """The version of the installed backup-tui distribution (pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("backup-tui")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


# shtab's completion hints, as plain data so that building the parser never imports
# shtab (same values as shtab.FILE and shtab.DIRECTORY)
_FILE = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}
_DIR = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/", "tcsh": "d"}

SNAPSHOT_HELP = ("a snapshot id, a unique prefix of 8+ hex characters, or 'latest' (the "
                 "newest; add --source when several sources have snapshots)")
SOURCE_HELP = ("the source 'latest' refers to: a [[fileset]], [[database]] or [[cluster]] "
               "name")


def _examples(*lines: str) -> str:
    """An epilog: the examples, one command line each, shown as written (a long one
    goes on over lines ending in a backslash)."""
    return "examples:\n" + "\n".join(f"  {part}" for line in lines
                                       for part in line.split("\n"))


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="machine-readable output on stdout")


def build_parser() -> ArgParser:
    from engine.config import schedule_kinds

    kinds = registry.kinds()
    p = ArgParser(
        prog="backup-tui",
        description="Backups of PostgreSQL and files, with a console. Without a command it "
        "starts the console (on a terminal). Exit status: 0 success, 1 the operation failed "
        "or found problems, 2 bad usage or config.",
        epilog=_examples("backup-tui init",
                         "backup-tui backup all",
                         "backup-tui list --source uploads",
                         "backup-tui restore files latest --source uploads --target /srv/restore",
                         "backup-tui completion bash > "
                         "/etc/bash_completion.d/backup-tui",
                         "backup-tui restore db --help          # the options of one command"))
    p.add_argument("--version", action=_Version, help="print the version and exit")
    p.add_argument("--config", metavar="PATH",
                   help="config file (else $BACKUP_TUI_CONFIG, ./config.toml, "
                   "/etc/backup-tui/config.toml)").complete = _FILE
    p.add_argument("--json", action="store_true", default=False,
                   help="machine-readable output on stdout (also accepted after the command)")
    p.add_argument("--demo", action="store_true", help="the console on a throwaway sandbox")
    p.add_argument("--run-scheduler", action="store_true", help="run the schedule headless")
    sub = p.add_subparsers(dest="command", parser_class=ArgParser, metavar="COMMAND",
                           help="one of these; 'backup-tui COMMAND --help' for its options")

    sub.add_parser("init", help="create the repository",
                   description="Create the repository named in the config file. Without a "
                   "password ([repository] password_file or $BACKUP_TUI_PASSWORD) it is "
                   "unencrypted, and init says so loudly.",
                   epilog=_examples("backup-tui init",
                                    "backup-tui --config /etc/backup-tui/config.toml init"))

    b = sub.add_parser(
        "backup", help="back up a source now (backup KIND NAME, or backup all)",
        description="Back up one source now, or every configured source with 'all'. Each "
        "run writes one snapshot, storing only data the repository does not hold yet, and "
        "copies it to the replicas when the config says so. The newest snapshot of a source "
        "is 'latest' for show, verify, dump and restore (with --source NAME when several "
        "sources have snapshots).",
        epilog=_examples(*[f"backup-tui backup {cls.kind} {cls.example_name}"
                           for cls in kinds][:2],
                         "backup-tui backup all --json",
                         "backup-tui show latest --source "
                         f"{kinds[0].example_name}"))
    bsub = b.add_subparsers(dest="what", required=True, parser_class=ArgParser,
                            help="the kind of source, or 'all'")
    for cls in kinds:
        name = cls.example_name
        bp = bsub.add_parser(
            cls.kind, help=f"back up one {cls.label}",
            description=f"Back up one [[{cls.section()}]] of the config file now; the "
            "snapshot it writes is then its source's 'latest'.",
            epilog=_examples(f"backup-tui backup {cls.kind} {name}",
                             f"backup-tui show latest --source {name}"))
        bp.add_argument("name", help=f"a [[{cls.section()}]] name")
        _json_flag(bp)
    _json_flag(bsub.add_parser(
        "all", help="back up every configured source, one after the other",
        description="Back up every configured source, one after the other; a failure of one "
        "is reported and the others still run (exit status 1).",
        epilog=_examples("backup-tui backup all", "backup-tui backup all --json")))

    ls = sub.add_parser("list", help="list snapshots",
                        description="List the snapshots, oldest first: id, time, kind, "
                        "source, size and added bytes; incomplete ones are marked.",
                        epilog=_examples("backup-tui list --source uploads",
                                         "backup-tui list --kind db --json",
                                         "backup-tui list --replica euw1"))
    ls.add_argument("--source", help="only the snapshots of this source")
    ls.add_argument("--kind", choices=[cls.kind for cls in kinds],
                    help="only the snapshots of this kind")
    ls.add_argument("--replica", help="list a [[replica]] (read directly) instead of the "
                    "local repository")
    _json_flag(ls)

    sh = sub.add_parser("show", help="show one snapshot",
                        description="Show one snapshot: time, kind, source, host, parent, "
                        "paths and statistics, and the errors of an incomplete one.",
                        epilog=_examples("backup-tui show latest --source uploads",
                                         "backup-tui show 1a2b3c4d --json"))
    sh.add_argument("snapshot", help=SNAPSHOT_HELP)
    sh.add_argument("--source", help=SOURCE_HELP)
    _json_flag(sh)

    v = sub.add_parser("verify", help="check snapshots",
                       description="Check that snapshots can be restored. Quick (the "
                       "default): every index file, snapshot and tree decodes and checks, "
                       "every blob is in the index and every pack exists with its size. "
                       "--read-data also reads every pack the snapshots need and "
                       "authenticates each blob.",
                       epilog=_examples("backup-tui verify",
                                        "backup-tui verify --read-data 1a2b3c4d",
                                        "backup-tui verify --replica euw1"))
    v.add_argument("snapshots", nargs="*", metavar="SNAPSHOT",
                   help="the snapshots to check: ids, prefixes or 'latest' (default: all)")
    v.add_argument("--read-data", action="store_true",
                   help="read and authenticate every blob (slow: reads the packs in full)")
    v.add_argument("--replica", help="verify a [[replica]] instead of the local repository")
    _json_flag(v)

    _json_flag(sub.add_parser(
        "status", help="sources, newest backups, running jobs",
        description="Per source the newest backup, its recovery point and replicas, the "
        "last drill; the running jobs.",
        epilog=_examples("backup-tui status", "backup-tui status --json")))
    _json_flag(sub.add_parser(
        "health", help="exit 0 when healthy, 1 with the reasons",
        description="Exit status 0 when every source has a recent good backup (and "
        "replicas, WAL archive and drills are within their limits); 1 with the reasons, "
        "one a line. For monitoring.",
        epilog=_examples("backup-tui health",
                         "backup-tui health || echo 'backups need attention'")))
    au = sub.add_parser("audit", help="the audit log",
                        description="Who did what: backups, restores, forgets, lock breaks "
                        "and the other actions, with their outcome, newest last.",
                        epilog=_examples("backup-tui audit", "backup-tui audit --limit 20"))
    au.add_argument("--limit", type=int, default=200, metavar="N",
                    help="the newest N entries (default 200)")
    _json_flag(au)
    sched_kinds = list(schedule_kinds())
    sc = sub.add_parser("schedule", help="schedules: list, pause, resume, run now",
                        description="The schedules with their next and last runs; pause, "
                        "resume, or ask the scheduler to run one now. Schedules: "
                        f"{', '.join(sched_kinds)}.",
                        epilog=_examples("backup-tui schedule",
                                         f"backup-tui schedule pause {sched_kinds[0]}",
                                         "backup-tui schedule run verify"))
    ssub = sc.add_subparsers(dest="what", parser_class=ArgParser,
                             help="without one: list the schedules")
    _json_flag(sc)
    for verb, what in (("pause", "pause a schedule (its runs are skipped until resumed)"),
                       ("resume", "resume a paused schedule"),
                       ("run", "ask the scheduler to run it now")):
        sp = ssub.add_parser(verb, help=what, description=what[0].upper() + what[1:] + ".",
                             epilog=_examples(f"backup-tui schedule {verb} {sched_kinds[0]}",
                                              f"backup-tui schedule {verb} cleanup"))
        sp.add_argument("kind", help=f"a schedule: {', '.join(sched_kinds)}")

    cl = sub.add_parser("cleanup", help="apply the retention policy and prune",
                        description="Apply the [retention] policy (pinned snapshots are "
                        "kept), forget what it does not keep, then prune: delete or repack "
                        "the packs no snapshot needs; also in the replicas, and expire old "
                        "WAL.",
                        epilog=_examples("backup-tui cleanup --dry-run", "backup-tui cleanup"))
    cl.add_argument("--dry-run", action="store_true", help="show what would go, change nothing")
    _json_flag(cl)
    for verb in ("pin", "unpin"):
        pn = sub.add_parser(
            verb, help=f"{verb} a snapshot (pinned ones are never forgotten)",
            description=f"{verb.capitalize()} a snapshot: retention never forgets a pinned "
            "one, and forget needs --force for it.",
            epilog=_examples(f"backup-tui {verb} 1a2b3c4d" + (' --note "before the '
                                                                'migration"' if verb == "pin"
                                                                else ""),
                             f"backup-tui {verb} latest --source app"))
        pn.add_argument("snapshot", help=SNAPSHOT_HELP)
        pn.add_argument("--source", help=SOURCE_HELP)
        if verb == "pin":
            pn.add_argument("--note", default="", help="why it is pinned (kept with the pin)")

    fg = sub.add_parser("forget", help="delete snapshots (their data goes with the next "
                        "cleanup; admin; audited)",
                        description="Delete snapshots by hand. Without --yes it only shows "
                        "them. Their data is freed by the next cleanup.",
                        epilog=_examples("backup-tui forget 1a2b3c4d",
                                         "backup-tui forget 1a2b3c4d 5e6f7a8b --yes"))
    fg.add_argument("snapshots", nargs="+", metavar="SNAPSHOT", help=SNAPSHOT_HELP)
    fg.add_argument("--source", help=SOURCE_HELP)
    fg.add_argument("--yes", action="store_true", help="confirm: without it, only shows them")
    fg.add_argument("--force", action="store_true", help="forget pinned snapshots too")
    _json_flag(fg)
    rr = sub.add_parser("repair", help="rebuild the index from the packs, fetch damaged or "
                        "missing objects from a replica, prune, report what is lost (admin)",
                        description="Rebuild the index from the packs, fetch damaged or "
                        "missing objects from a replica, prune, and name what is lost.",
                        epilog=_examples("backup-tui repair --dry-run",
                                         "backup-tui repair --from euw1"))
    rr.add_argument("--dry-run", action="store_true", help="report only; write nothing")
    rr.add_argument("--from", dest="from_replica", metavar="REPLICA",
                    help="a [[replica]] to fetch damaged or missing objects from")
    _json_flag(rr)

    dr = sub.add_parser("doctor", help="find what interrupted runs left (temporary databases "
                        "of killed restores); --fix cleans it up (admin)",
                        description="Find what interrupted runs left behind (the temporary "
                        "databases of killed restores); --fix cleans it up.",
                        epilog=_examples("backup-tui doctor", "backup-tui doctor --fix"))
    dr.add_argument("--fix", action="store_true",
                    help="drop what this tool recorded as its own leftovers")
    _json_flag(dr)

    drilled = [cls for cls in kinds if callable(getattr(cls, "drill", None))]
    dl = sub.add_parser(
        "drill", help="restore drill: restore the newest backup into a "
        "throwaway server, validate it, time it (RTO), tear down (admin)",
        description="Prove the newest backup restores: restore it into a throwaway "
        "PostgreSQL server, validate it, time it (the RTO), tear it down; recorded in the "
        "catalog.",
        epilog=_examples(*[f"backup-tui drill {cls.kind} {cls.example_name}"
                           for cls in drilled][:1], "backup-tui drill all --json"))
    dlsub = dl.add_subparsers(dest="what", required=True, parser_class=ArgParser,
                              help="the kind of source, or 'all'")
    for cls in drilled:
        name = cls.example_name
        dp = dlsub.add_parser(cls.kind, help=f"drill one {cls.label}",
                              description=f"Restore drill of one [[{cls.section()}]].",
                              epilog=_examples(f"backup-tui drill {cls.kind} {name}",
                                               f"backup-tui drill {cls.kind} {name} --json"))
        dp.add_argument("name", help=f"a [[{cls.section()}]] name")
        _json_flag(dp)
    _json_flag(dlsub.add_parser("all", help="drill every source that has drills",
                                description="Drill every source that has drills, one after "
                                "the other.",
                                epilog=_examples("backup-tui drill all")))

    rp = sub.add_parser("replicate", help="copy what each S3 replica lacks",
                        description="Copy to each [[replica]] what it lacks (packs, index, "
                        "snapshots, WAL).",
                        epilog=_examples("backup-tui replicate",
                                         "backup-tui replicate --replica euw1 --repair"))
    rp.add_argument("--replica", help="only this [[replica]] (default: every one)")
    rp.add_argument("--repair", action="store_true",
                    help="read-verify the replica first and upload damaged objects again")
    _json_flag(rp)

    cat = sub.add_parser("catalog", help="the local state",
                         description="The catalog: the local state (inventory, jobs, audit, "
                         "schedules) kept beside the repository.",
                         epilog=_examples("backup-tui catalog rebuild",
                                          "backup-tui catalog rebuild --from euw1"))
    csub = cat.add_subparsers(dest="what", required=True, parser_class=ArgParser,
                              help="what to do with it")
    cr = csub.add_parser("rebuild", help="recreate the catalog from a repository",
                         description="Recreate the catalog from the local repository or a "
                         "replica: on a new host, only config, password and S3 access are "
                         "needed.",
                         epilog=_examples("backup-tui catalog rebuild",
                                          "backup-tui catalog rebuild --from euw1"))
    cr.add_argument("--from", dest="from_replica", metavar="REPLICA",
                    help="read this [[replica]] (default: the local repository)")
    _json_flag(cr)

    rep = sub.add_parser("repository", help="the local repository",
                         description="The local repository.",
                         epilog=_examples("backup-tui repository adopt --from euw1"))
    repsub = rep.add_subparsers(dest="what", required=True, parser_class=ArgParser,
                                help="what to do with it")
    ad = repsub.add_parser("adopt", help="make the local repository from a replica (same id "
                           "and keys; resumes when interrupted)",
                           description="Make the local repository from a replica: same id "
                           "and keys; resumes when interrupted.",
                           epilog=_examples("backup-tui repository adopt --from euw1"))
    ad.add_argument("--from", dest="from_replica", metavar="REPLICA", required=True,
                    help="the [[replica]] to copy")
    _json_flag(ad)

    lk = sub.add_parser("lock", help="repository locks: list, break",
                        description="The repository's locks: who holds them, alive or stale "
                        "and why; break one whose owner is gone.",
                        epilog=_examples("backup-tui lock list", "backup-tui lock break --stale"))
    lsub = lk.add_subparsers(dest="what", required=True, parser_class=ArgParser,
                             help="what to do")
    ll = lsub.add_parser("list", help="every lock: owner, host, pid, age, stale or not and why",
                         description="Every lock: owner, host, pid, age, stale or not and why.",
                         epilog=_examples("backup-tui lock list",
                                          "backup-tui lock list --replica euw1"))
    ll.add_argument("--replica", help="the locks of this [[replica]]")
    _json_flag(ll)
    lb = lsub.add_parser("break", help="remove a lock whose owner is gone (admin; audited)",
                         description="Remove a lock whose owner is gone. A lock that looks "
                         "live is removed only with --yes.",
                         epilog=_examples("backup-tui lock break --stale",
                                          "backup-tui lock break 3f2a9c"))
    lb.add_argument("lock_id", nargs="?", help="a lock id (or a unique prefix of it)")
    lb.add_argument("--stale", action="store_true", help="every stale lock")
    lb.add_argument("--yes", action="store_true", help="remove it even if it looks live")
    lb.add_argument("--replica", help="a lock of this [[replica]]")
    _json_flag(lb)

    roles_help = ("viewer (every read: list, status, health, jobs), operator (also backup, "
                  "verify, restore into a new target), admin (also what replaces data, "
                  "cleanup, cancel)")
    ak = sub.add_parser("api-key", help="keys of the daemon's HTTP API: create, list, revoke",
                        description="Keys for the daemon's HTTP API ([api] listen). A key is "
                        "shown once, when it is created; the state directory keeps only a "
                        "salted hash of it (api-keys.json, mode 0600). Clients send it as "
                        "'Authorization: Bearer KEY'. Creating and revoking need an admin and "
                        "are audited; a running daemon sees the change at its next request.",
                        epilog=_examples("backup-tui api-key create grafana --role viewer",
                                         "backup-tui api-key list",
                                         "backup-tui api-key revoke grafana"))
    aksub = ak.add_subparsers(dest="what", required=True, parser_class=ArgParser,
                              help="what to do")
    akc = aksub.add_parser("create", help="make a key and print it, this once (admin; audited)",
                           description="Make a key and print it on stdout, this once: store "
                           "it where the client keeps secrets. Roles: " + roles_help + ".",
                           epilog=_examples("backup-tui api-key create grafana --role viewer",
                                            "backup-tui api-key create ci-restore --role "
                                            "operator --json"))
    akc.add_argument("name", help="a name for the key: 1 to 64 of A-Z a-z 0-9 _ . - (one "
                     "active key per name)")
    akc.add_argument("--role", required=True, metavar="ROLE",
                     help="viewer, operator or admin (each includes the ones before it)")
    _json_flag(akc)
    akl = aksub.add_parser("list", help="every key: name, role, created, revoked",
                           description="Every key, revoked ones too: name, role, when it was "
                           "created and revoked. Never a key or its hash.",
                           epilog=_examples("backup-tui api-key list",
                                            "backup-tui api-key list --json"))
    _json_flag(akl)
    akr = aksub.add_parser("revoke", help="revoke a key at once (admin; audited)",
                           description="Revoke the active key of this name: the API refuses "
                           "it from the next request on. The name may then be used again.",
                           epilog=_examples("backup-tui api-key revoke grafana"))
    akr.add_argument("name", help="the name of an active key (see api-key list)")

    d = sub.add_parser(
        "dump", help="write a snapshot's native stream (pax tar, pg_dump) to stdout",
        description="Write a snapshot to stdout in its native form: files (and a "
        "directory-format database dump) as a POSIX pax tar for GNU tar ('tar -xpf -'; "
        "add --xattrs --xattrs-include='*' --acls for xattrs and ACLs), a custom-format "
        "database dump as its pg_dump archive. Sockets are skipped with a warning on "
        "stderr. A reader that stops early ('| head', '| pg_restore -l') is a normal end: "
        "exit status 0, no message.",
        epilog=_examples("backup-tui dump latest --source uploads | tar -xp -C /tmp/out",
                         "backup-tui dump latest --source app | pg_restore -l"))
    d.add_argument("snapshot", help=SNAPSHOT_HELP)
    d.add_argument("--path", help="only this entry of a files snapshot (and what is below it)")
    d.add_argument("--source", help=SOURCE_HELP)
    d.add_argument("--replica", help="read the snapshot from this [[replica]]")

    r = sub.add_parser(
        "restore", help="restore a snapshot (an id or 'latest') or a cluster to a point "
        "in time",
        description="Restore a snapshot: files into a directory, a database dump into a "
        "database, or a [[cluster]] to a point in time into a data directory. SNAPSHOT is a "
        "full id, a unique prefix of 8+ hex characters, or 'latest': the newest snapshot "
        "(add --source NAME when several sources have snapshots; 'backup-tui list' shows "
        "them). Nothing is overwritten unless asked: a non-empty directory needs --force, "
        "an existing database --replace --yes.",
        epilog=_examples("backup-tui restore files latest --source uploads --target /srv/restore",
                         "backup-tui restore db latest --source app --target-db app_copy",
                         "backup-tui restore pitr --cluster main --target-time "
                         "2026-11-26T13:59:30 \\\n    --pgdata /srv/pg-copy --start"))
    rsub = r.add_subparsers(dest="what", required=True, parser_class=ArgParser,
                            help="what to restore")
    rf = rsub.add_parser(
        "files", help="restore a files snapshot into a directory",
        description="Restore a files snapshot (or some paths of it) into a directory, with "
        "owners, modes, times, ACLs and xattrs; every blob is authenticated as it is read. "
        "SNAPSHOT 'latest' is the newest snapshot of --source.",
        epilog=_examples("backup-tui restore files latest --source uploads --target /srv/restore",
                         "backup-tui restore files 1a2b3c4d --target /tmp/one --path "
                         "/srv/uploads/2026"))
    rf.set_defaults(restore=_restore_files)
    rf.add_argument("snapshot", help=SNAPSHOT_HELP)
    rf.add_argument("--target", required=True, metavar="DIR",
                    help="the directory to restore into (created when absent; must be empty "
                    "unless --force)").complete = _DIR
    rf.add_argument("--path", action="append", default=[],
                    help="restore only this path of the snapshot (and what is below it); "
                    "repeat for more")
    rf.add_argument("--force", action="store_true", help="restore into a non-empty directory")
    rf.add_argument("--resume", action="store_true",
                    help="finish a restore that stopped part way: files already in the "
                    "directory with the snapshot's content are kept (checked blob by blob, "
                    "not fetched again), anything else is written as with --force")
    rf.add_argument("--allow-devices", action="store_true",
                    help="as root from an unencrypted repository: restore device nodes too")
    rf.add_argument("--allow-setid", action="store_true",
                    help="as root from an unencrypted repository: restore setuid/setgid bits "
                    "and file capabilities too")
    rf.add_argument("--source", help=SOURCE_HELP)
    rf.add_argument("--replica", help="read the snapshot from this [[replica]]")
    _json_flag(rf)
    rd = rsub.add_parser(
        "db", help="restore a database snapshot into a database",
        description="Restore a database snapshot into a database: a new one, or an existing "
        "one with --replace (restored aside, then swapped; the old one is kept unless "
        "--drop-old). Name the snapshot (an id, a prefix, or 'latest' with --source), or "
        "give --source NAME --at TIME for the newest backup taken at or before TIME.",
        epilog=_examples("backup-tui restore db latest --source app --target-db app_copy",
                         "backup-tui restore db --source app --at 2026-11-26T14:00 \\\n"
                         "    --target-db app --replace --yes"))
    rd.set_defaults(restore=_restore_db)
    rd.add_argument("snapshot", nargs="?", help=SNAPSHOT_HELP + " (or --source NAME --at TIME)")
    rd.add_argument("--source", help="the [[database]] whose snapshots 'latest' and --at "
                    "choose from")
    rd.add_argument("--at", metavar="TIME",
                    help="ISO 8601 time: the newest backup taken at or before it")
    rd.add_argument("--target-db", required=True, metavar="NAME",
                    help="the database to restore into (created; an existing one only with "
                    "--replace)")
    rd.add_argument("--replace", action="store_true",
                    help="replace an existing database (restored aside, then swapped)")
    rd.add_argument("--yes", action="store_true", help="confirm --replace or --with-globals")
    rd.add_argument("--drop-old", action="store_true",
                    help="with --replace: drop the old database instead of keeping it")
    rd.add_argument("--no-owner", action="store_true",
                    help="objects belong to the restoring user (pg_restore --no-owner)")
    rd.add_argument("--no-acl", action="store_true",
                    help="leave out grants on objects (pg_restore --no-acl)")
    rd.add_argument("--create-missing-roles", action="store_true",
                    help="create the roles the dump needs that this server lacks, from the "
                    "roles saved with it; existing roles are not changed")
    rd.add_argument("--with-globals", action="store_true",
                    help="apply the roles and tablespaces saved with the dump, changing "
                    "existing roles (shows what would change; needs --yes)")
    rd.add_argument("--replica", help="read the snapshot from this [[replica]]")
    _json_flag(rd)
    rp = rsub.add_parser(
        "pitr", help="recover a [[cluster]] to a point in time into a data "
        "directory (base backup + archived WAL)",
        description="Recover a [[cluster]] to a point in time: restore the newest base "
        "backup before the target into a data directory and set it up to replay the "
        "archived WAL (through wal-fetch) up to the target; with --start, run it and wait "
        "for promotion. 'backup-tui pitr-plan' shows first what it would use.",
        epilog=_examples("backup-tui restore pitr --cluster main --target-time "
                         "2026-11-26T13:59:30 \\\n    --pgdata /srv/pg-copy --port 5440 --start",
                         "backup-tui restore pitr --cluster main --target immediate \\\n"
                         "    --pgdata /srv/pg-copy"))
    rp.set_defaults(restore=_restore_pitr)
    _pitr_args(rp)
    rp.add_argument("--pgdata", required=True, help="the data directory to create (absent "
                    "or empty; the cluster's own only with --replace, server stopped)"
                    ).complete = _DIR
    rp.add_argument("--port", type=int, help="the restored server's port (written into its "
                    "settings; with --start a free one when not given)")
    rp.add_argument("--start", action="store_true", help="start it, wait for the target "
                    "and promotion, report")
    rp.add_argument("--replace", action="store_true", help="restore over the cluster's own "
                    "data directory (server stopped): the old one is moved aside, not deleted")
    rp.add_argument("--wait", type=float, default=3600.0, metavar="SECONDS",
                    help="with --start: how long recovery may take (default 3600)")
    pp = sub.add_parser(
        "pitr-plan", help="which base backup and WAL reach a point in time, "
        "and whether all of it is there",
        description="Which base backup and which archived WAL reach a point in time, where "
        "each copy has them, the gaps, the newest reachable point and an estimate. Exit "
        "status 1 when the target cannot be reached. Writes nothing.",
        epilog=_examples("backup-tui pitr-plan --cluster main --target-time 2026-11-26T13:59:30",
                         "backup-tui pitr-plan --cluster main --target-lsn 0/3000028 --json"))
    _pitr_args(pp)
    wp = sub.add_parser("wal-push", help="archive one WAL file (archive_command: "
                        "'backup-tui wal-push %%p')",
                        description="Archive one WAL file into the repository; PostgreSQL "
                        "runs it as its archive_command.",
                        epilog=_examples("archive_command = 'backup-tui wal-push %p'",
                                         "backup-tui wal-push pg_wal/000000010000000000000003 "
                                         "--cluster main"))
    wp.add_argument("path", help="the WAL file (%%p)").complete = _FILE
    wp.add_argument("--cluster", help="a [[cluster]] name (needed when more than one)")
    wf = sub.add_parser("wal-fetch", help="fetch one archived WAL file from the local "
                        "repository or a replica (restore_command: "
                        "'backup-tui wal-fetch %%f %%p')",
                        description="Fetch one archived WAL file from the local repository, "
                        "else a replica; PostgreSQL runs it as its restore_command. Exit "
                        "status 1 when it is not archived, 126 when it cannot look.",
                        epilog=_examples("restore_command = 'backup-tui wal-fetch %f %p'",
                                         "backup-tui wal-fetch 000000010000000000000003 "
                                         "/tmp/seg --replica euw1"))
    wf.add_argument("name", help="the WAL file name (%%f)")
    wf.add_argument("dest", help="where to write it (%%p)").complete = _FILE
    wf.add_argument("--cluster", help="a [[cluster]] name (needed when more than one)")
    wf.add_argument("--replica", help="read this [[replica]] alone")
    wf.add_argument("--spool", help="fetch the next segments ahead into this folder "
                    "(restore pitr sets it; docs/WAL.md)")
    wf.add_argument("--prefetch", type=int, metavar="N",
                    help="segments fetched ahead with --spool, 0 to 256 (default 16; 0: none)")

    cp = sub.add_parser(
        "completion", help="print a shell completion script (bash or zsh)",
        description="Print a completion script for bash or zsh (generated by shtab from "
        "these very options). Install it where the shell looks for completions.",
        epilog=_examples("backup-tui completion bash > "
                         "/etc/bash_completion.d/backup-tui",
                         "backup-tui completion zsh > ~/.zfunc/_backup-tui",
                         "# zsh: fpath+=(~/.zfunc) in ~/.zshrc, before compinit"))
    cp.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete for")
    return p


def _pitr_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", required=True, help="a [[cluster]] name")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--target-time", metavar="TIME", help="ISO 8601; without an offset in "
                   "the [schedule] time zone")
    g.add_argument("--target-lsn", metavar="LSN", help="a WAL position, e.g. 0/3000028")
    g.add_argument("--target-xid", metavar="XID", help="a transaction id")
    g.add_argument("--target-name", metavar="NAME", help="a restore point "
                   "(pg_create_restore_point)")
    g.add_argument("--target", choices=["immediate"], help="immediate: the end of the base "
                   "backup")
    p.add_argument("--exclusive", action="store_true", help="stop just before the target "
                   "(recovery_target_inclusive = off)")
    p.add_argument("--replica", help="read the base backup and WAL from this replica alone")
    _json_flag(p)


class TermProgress:
    """One redrawn line on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.start = time.monotonic()
        self.last = 0.0
        self.drawn = False

    def __call__(self, ev: Event) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not ev.final and now - self.last < 0.2:
            return
        self.last = now
        rate = ev.bytes_done / max(0.001, now - self.start)
        parts = [f"{ev.phase:8}"]
        if ev.bytes_total:
            parts.append(f"{human_bytes(ev.bytes_done)}/{human_bytes(ev.bytes_total)}")
        if ev.items_total:
            parts.append(f"{ev.items_done}/{ev.items_total} files")
        if ev.bytes_done:
            parts.append(f"{human_bytes(rate)}/s")
        msg = ev.message[-50:]
        line = "  ".join(parts) + "  " + msg
        sys.stderr.write("\r\x1b[2K" + line[:150])
        if ev.final:
            sys.stderr.write("\n")
        sys.stderr.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()


def out_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _engine(args: argparse.Namespace) -> Engine:
    return Engine(load_config(find_config(args.config)))


def cmd_init(args, engine: Engine) -> int:
    info = engine.init()
    if args.json:
        out_json(info)
    else:
        print(f"created repository {info['id']} at {info['location']}")
    if not info["encrypted"]:  # said loudly, also under --json (stderr is not the data)
        sys.stderr.write(
            "WARNING: the repository is NOT ENCRYPTED: no password_file and no "
            "$BACKUP_TUI_PASSWORD were set. Anyone who can read it can read your data.\n"
        )
    return 0


def _print_backup(res, as_json: bool) -> None:
    if as_json:
        return
    status = "complete" if res.complete else f"INCOMPLETE ({len(res.errors)} error(s))"
    print(f"snapshot {res.id[:8]} {res.kind}:{res.source} {human_bytes(res.size)}, "
          f"added {human_bytes(res.added)}, {res.files} files, {status}")
    for w in res.warnings:
        sys.stderr.write(f"  warning: {w}\n")
    for e in res.errors[:50]:
        sys.stderr.write(f"  error: {e['path']}: {e['error']}\n")
    if len(res.errors) > 50:
        sys.stderr.write(f"  ... and {len(res.errors) - 50} more\n")


def cmd_backup(args, engine: Engine) -> int:
    prog = TermProgress(sys.stderr.isatty() and not args.json)
    try:
        if args.what != "all":
            results = [engine.backup(args.what, args.name, prog)]
        else:
            try:
                results = engine.backup_all(prog)
            except BackupAllError as e:
                prog.close()
                for r in e.results:
                    _print_backup(r, args.json)
                if args.json:
                    out_json([r.as_json() for r in e.results])
                for f in e.failures:
                    sys.stderr.write(f"backup-tui: {f}\n")
                return 1
    finally:
        prog.close()
    replicated = True
    for r in results:
        _print_backup(r, args.json)
        replicated &= _print_replication(r.replication, args.json)
    if args.json:
        data = [r.as_json() for r in results]
        out_json(data if args.what == "all" else data[0])
    return 0 if all(r.complete for r in results) and replicated else 1


def cmd_list(args, engine: Engine) -> int:
    if args.replica:
        engine = engine.for_replica(args.replica)
    infos = engine.snapshots(source=args.source, kind=args.kind)
    for sid, err in engine.repo().snapshot_errors.items():  # never silently left out
        sys.stderr.write(f"backup-tui: warning: snapshot {sid[:12]} cannot be read and is not "
                         f"listed ({err}); run 'backup-tui verify'\n")
    if args.json:
        out_json([i.as_json() for i in infos])
        return 0
    if not infos:
        print("no snapshots")
        return 0
    print(f"{'ID':8}  {'TIME':19}  {'KIND':5}  {'SOURCE':16}  {'SIZE':>10}  {'ADDED':>10}")
    for i in infos:
        t = i.time.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        flag = "" if i.complete else "  incomplete"
        print(f"{i.short_id:8}  {t:19}  {i.kind:5}  {i.source[:16]:16}  "
              f"{human_bytes(i.size):>10}  {human_bytes(i.added):>10}{flag}")
    return 0


def cmd_show(args, engine: Engine) -> int:
    snap = engine.snapshot(args.snapshot, args.source)
    if args.json:
        out_json(snap)
        return 0
    stats = snap.get("stats", {})
    print(f"snapshot {snap['id']}")
    for key in ("time", "kind", "source", "host", "parent"):
        print(f"  {key:9} {snap.get(key)}")
    if snap.get("paths"):
        print(f"  paths     {', '.join(snap['paths'])}")
    for key, val in stats.items():
        shown = human_bytes(val) if key in ("size", "added", "added_raw", "bytes_read") else val
        print(f"  {key:16} {shown}")
    if snap.get("incomplete"):
        print(f"  INCOMPLETE: {snap.get('errors_total', 0)} error(s)")
        for e in snap.get("errors", [])[:20]:
            print(f"    {e['path']}: {e['error']}")
    return 0


def cmd_verify(args, engine: Engine) -> int:
    if args.replica:
        engine = engine.for_replica(args.replica)
    prog = TermProgress(sys.stderr.isatty() and not args.json)
    try:
        report = engine.verify(args.snapshots or None, args.read_data, prog)
    finally:
        prog.close()
    if args.json:
        out_json(report.as_json())
    else:
        mode = "read-data" if args.read_data else "quick"
        print(f"verify ({mode}): {len(report.snapshots)} snapshot(s), "
              f"{report.packs_checked} pack(s) read, {human_bytes(report.bytes_read)}")
        for n in report.notes:
            print(f"  note: {n}")
        for p in report.problems:
            affected = ", ".join(s[:8] for s in p.snapshots) or "none known"
            print(f"  PROBLEM: {p.message} (affects snapshots: {affected})")
        print("ok" if report.ok else f"{len(report.problems)} problem(s) found")
    return 0 if report.ok else 1


def cmd_dump(args, engine: Engine) -> int:
    if args.replica:
        engine = engine.for_replica(args.replica)
    if sys.stdout.isatty():
        raise UsageError("dump writes binary data: redirect stdout to a file or a pipe")
    ref = engine.snapshot(args.snapshot, args.source)["id"]  # errors before any output
    stdout = sys.stdout.buffer
    gone = []  # set when stdout's reader went away (not a broken pipe anywhere else)

    class Out:
        def write(self, data) -> int:
            return self._do(stdout.write, data)

        def flush(self) -> None:
            self._do(stdout.flush)

        def _do(self, call, *args):
            try:
                return call(*args)
            except BrokenPipeError:
                gone.append(True)
                raise
            except OSError as e:  # a full disk, a quota: one line, no traceback
                _silence(stdout)
                raise EngineError(f"dump: cannot write the output: {e.strerror or e}; the "
                                  "output is incomplete") from None

    out = Out()
    try:
        engine.dump(ref, out, args.path,  # type: ignore[arg-type]
                    warn=lambda w: sys.stderr.write(f"  warning: {w}\n"))
        out.flush()
    except BrokenPipeError:
        if not gone:
            raise
        # The reader stopped early (head, pg_restore -l): a normal end, exit 0 with no
        # message.
        _silence(stdout)
    return 0


def _silence(stdout) -> None:
    """stdout becomes /dev/null, so the flush at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stdout.fileno())
    os.close(devnull)


def cmd_restore(args, engine: Engine) -> int:
    if args.replica:
        engine = engine.for_replica(args.replica)
    return args.restore(args, engine)


def _restore_files(args, engine: Engine) -> int:
    ref = engine.snapshot(args.snapshot, args.source)["id"]
    plan = engine.plan_restore(ref, target=args.target, paths=args.path, force=args.force,
                               allow_devices=args.allow_devices, allow_setid=args.allow_setid,
                               resume=args.resume)
    prog = TermProgress(sys.stderr.isatty() and not args.json)
    try:
        result = engine.restore(plan, prog)
    finally:
        prog.close()
    if args.json:
        out_json(result.as_json())
    else:
        print(f"restored {result.files} files, {human_bytes(result.bytes)} from "
              f"{result.snapshot[:8]} into {result.target}")
        if args.resume:
            print(f"kept {result.skipped_files} files, {human_bytes(result.skipped_bytes)} "
                  "already there with the snapshot's content; wrote "
                  f"{result.files - result.skipped_files} files, "
                  f"{human_bytes(result.bytes - result.skipped_bytes)}")
        for w in result.warnings[:20]:
            sys.stderr.write(f"  warning: {w}\n")
    return 0


def _restore_db(args, engine: Engine) -> int:
    if args.replace and not args.yes:
        raise UsageError(f"--replace replaces database {args.target_db!r}: add --yes to confirm")
    if args.at:
        if args.snapshot or not args.source:
            raise UsageError("--at needs --source NAME and no SNAPSHOT")
        when = engine.parse_time(args.at)
        snap, before = engine.snapshot_at(args.source, when)
        sys.stderr.write(f"using snapshot {snap['id'][:8]} of {args.source!r} taken at "
                         f"{snap['time']}, {_span(before)} before {when.isoformat()}\n")
    elif args.snapshot:
        snap = engine.snapshot(args.snapshot, args.source)
    else:
        raise UsageError("give a SNAPSHOT, or --source NAME --at TIME")
    plan = engine.plan_restore(snap, target_db=args.target_db, replace=args.replace,
                               drop_old=args.drop_old, no_owner=args.no_owner,
                               no_acl=args.no_acl, with_globals=args.with_globals,
                               create_missing_roles=args.create_missing_roles)
    if args.with_globals:  # never a password or its hash: the engine words each change
        changes = plan.globals_changes
        sys.stderr.write("--with-globals: applying the roles saved with the snapshot "
                         + ("would change:\n" if changes else "changes no role\n")
                         + "".join(f"  {c}\n" for c in changes))
        if changes and not args.yes:
            raise UsageError("--with-globals would change the roles listed above: add --yes "
                             "to apply them, or use --create-missing-roles, which changes no "
                             "existing role")
    prog = TermProgress(sys.stderr.isatty() and not args.json)
    try:
        result = engine.restore(plan, prog)
    finally:
        prog.close()
    if args.json:
        out_json(result.as_json())
    else:
        print(f"restored snapshot {result.snapshot[:8]} into database {result.target_db!r}"
              + (f"; the previous database is kept as {result.old_db!r}" if result.old_db else ""))
        for n in result.notes:
            print(f"  {n}")
        for w in result.warnings:
            sys.stderr.write(f"  warning: {w}\n")
    return 0


def _pitr_target(args, engine: Engine):
    for kind in ("time", "lsn", "xid", "name"):
        value = getattr(args, f"target_{kind}")
        if value is not None:
            return engine.pitr_target(kind, value, not args.exclusive)
    return engine.pitr_target("immediate", None, not args.exclusive)


def _print_pitr_plan(plan, out=sys.stdout) -> None:
    j = plan.as_json()
    base, wal = j["base_backup"], j["wal"]
    w = out.write
    w(f"cluster {j['source']}: recover to {plan.target.describe()}"
      + (f" from replica {j['replica']}" if j["replica"] else "") + "\n")
    w(f"  base backup  {base['id'][:8]}  taken {base['time']}, consistent at "
      f"{base['stop_time']} (LSN {base['stop_lsn']}, timeline {base['timeline']})\n")
    w(f"  WAL needed   {wal['first']} .. {wal['last']} ({wal['segments']} segment(s))\n")
    for sw in j["timeline_switches"]:
        w(f"  timeline     {sw['parent']} -> {sw['timeline']} at LSN {sw['switch_lsn']}\n")
    for p in j["places"]:
        state = (f"ERROR {p['error']}" if p["error"] else
                 "all present" if p["complete"] else
                 f"{p['missing_count']} missing: {', '.join(p['missing'][:5])}")
        w(f"  {p['name']:12} {p['present']}/{wal['segments']}  {state}"
          + ("" if p["reads"] else "  (not read)") + "\n")
    if j["gaps"]:
        w(f"  gaps         {', '.join(j['gaps'][:10])}\n")
    r = j["newest_reachable"]
    w(f"  reachable    up to {r['time'] or 'nothing'}"
      + (f" (LSN {r['lsn']}, WAL {r['wal']})" if r["wal"] else "") + "\n")
    est = j["estimate_seconds"]
    w(f"  estimate     {_span(est) + ' (' + j['estimate_basis'] + ')' if est else 'unknown'}\n")
    for n in j["notes"]:
        w(f"  note: {n}\n")
    w("  feasible\n" if plan.feasible else f"  NOT feasible: {j['problems'][0]}\n")


def cmd_pitr_plan(args, engine: Engine) -> int:
    plan = engine.pitr_plan(args.cluster, _pitr_target(args, engine), args.replica)
    if args.json:
        out_json(plan.as_json())
    else:
        _print_pitr_plan(plan)
    if not plan.feasible:
        sys.stderr.write(f"backup-tui: {plan.problems[0]}\n")
        return 1
    return 0


def _restore_pitr(args, engine: Engine) -> int:
    target = _pitr_target(args, engine)
    prog = TermProgress(sys.stderr.isatty() and not args.json)
    try:
        res = engine.restore_pitr(args.cluster, target, args.pgdata, args.port, args.start,
                                  args.replace, args.replica, prog, wait_seconds=args.wait)
    finally:
        prog.close()
    if args.json:
        out_json(res)
        return 0
    print(f"restored base backup {res['snapshot'][:8]} of cluster {res['source']} into "
          f"{res['pgdata']} ({res['files']} files, {human_bytes(res['bytes'])}), recovery "
          f"target {target.describe()}")
    if res.get("moved_aside"):
        print(f"  the old data directory is kept as {res['moved_aside']}")
    if res["promoted"]:
        srv = res["server"]
        print(f"  promoted after {_span(res['seconds_to_promotion'])} of recovery: replayed to "
              f"LSN {res['replay_lsn']}, last transaction {res.get('replay_time') or 'none'}"
              + (f", new timeline {res['timeline']}" if res.get("timeline") else ""))
        if res.get("stopped"):
            print(f"  recovery stopped {res['stopped']}")
        print(f"  running on port {res['port']} (socket {srv['socket_dir']}, log {srv['log']}); "
              f"stop it with: pg_ctl -D {res['pgdata']} stop")
    else:
        print(f"  start it with: pg_ctl -D {res['pgdata']} start; it replays WAL through "
              "wal-fetch up to the target and promotes")
    return 0


def _span(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d"] if d else []
    parts += [f"{h}h"] if h or d else []
    parts += [f"{m}m", f"{s}s"]
    return " ".join(parts)


def cmd_status(args, engine: Engine) -> int:
    st = engine.status()
    if args.json:
        out_json(st)
        return 0
    print(f"repository {st['repository']}")
    for s in st["sources"]:
        age = f"{s['age_hours']:.1f} h ago" if s["age_hours"] is not None else "never"
        line = f"  {s['kind']:5} {s['name']:20} last good backup {age} ({s['snapshots']} kept)"
        if s["details"]:
            line += "; " + ", ".join(f"{k} {v}" for k, v in s["details"].items())
        print(line)
        last = (s.get("drill") or {}).get("last")
        if last:
            trend = ", ".join(f"{x:.0f}" for x in s["drill"]["rto_trend"])
            print(f"        last drill {last['finished'] or last['started']} "
                  + ("ok" if last["ok"] else f"FAILED: {last['error']}")
                  + (f"; RTO trend (s): {trend}" if trend else ""))
    for j in st["running"]:
        print(f"  running: {j['kind']} {j['target']} {j['phase']} {j['message'][:60]}")
    return 0


def _print_replication(results, as_json: bool) -> bool:
    ok = True
    for r in results:
        ok &= r.ok
        if as_json:
            continue
        if r.ok:
            print(f"replica {r.replica}: {r.uploaded} object(s) uploaded "
                  f"({human_bytes(r.uploaded_bytes)}), {r.present} already there"
                  + (f", {r.repaired} repaired" if r.repaired else "")
                  + f", {len(r.snapshots)} snapshot(s) complete")
        else:
            sys.stderr.write(f"replica {r.replica}: FAILED: {r.error}\n")
    return ok


def cmd_replicate(args, engine: Engine) -> int:
    prog = TermProgress(sys.stderr.isatty() and not args.json)
    try:
        results = engine.replicate(args.replica, args.repair, prog)
    finally:
        prog.close()
    if not results:
        raise UsageError("no [[replica]] is configured")
    ok = _print_replication(results, args.json)
    if args.json:
        out_json([r.as_json() for r in results])
    return 0 if ok else 1


def cmd_catalog(args, engine: Engine) -> int:
    info = engine.rebuild_catalog(args.from_replica)
    if args.json:
        out_json(info)
    else:
        print(f"catalog rebuilt from {info['from']}: {info['snapshots']} snapshot(s); "
              f"state in {info['state_dir']}")
        if info.get("next"):
            print(info["next"])
    return 0


def cmd_repository(args, engine: Engine) -> int:
    prog = TermProgress(sys.stderr.isatty() and not args.json)
    try:
        res = engine.adopt(args.from_replica, prog)
    finally:
        prog.close()
    if args.json:
        out_json(res.as_json())
        return 0 if res.ok else 1
    print(f"adopted repository {res.id} from {res.replica} into {res.location}: "
          f"{res.downloaded} object(s) downloaded ({human_bytes(res.downloaded_bytes)}), "
          f"{res.present} already here" + (f", {res.replaced} replaced" if res.replaced else "")
          + f", {len(res.snapshots)} snapshot(s)")
    for s in res.skipped:
        print(f"  skipped {s}")
    if not res.ok:
        sys.stderr.write(f"{len(res.missing_packs)} pack(s) named by the index are in neither "
                         f"the replica nor here: {', '.join(res.missing_packs[:5])}\n")
        return 1
    print("backup and replicate carry on as before; check it with: backup-tui verify "
          "--read-data")
    return 0


def cmd_health(args, engine: Engine) -> int:
    verdict = engine.health()
    if args.json:
        out_json(verdict)
    else:
        print("healthy" if verdict["ok"] else "NOT HEALTHY")
        for r in verdict["reasons"]:
            print(f"  {r}")
    return 0 if verdict["ok"] else 1


def cmd_audit(args, engine: Engine) -> int:
    rows = engine.audit_log(args.limit)
    if args.json:
        out_json(rows)
        return 0
    from datetime import datetime

    for r in reversed(rows):
        when = datetime.fromtimestamp(r["time"]).strftime("%Y-%m-%d %H:%M:%S")
        snaps = ",".join(s[:8] for s in r["snapshots"])
        print(f"{when}  {r['user']:10} {r['action']:16} {r['target'][:40]:40} {r['outcome']:10}"
              f" {snaps} {r['detail'][:60]}")
    return 0


def cmd_schedule(args, engine: Engine) -> int:
    if args.what == "pause":
        engine.pause(args.kind, True)
    elif args.what == "resume":
        engine.pause(args.kind, False)
    elif args.what == "run":
        from engine.daemon import SchedulerLock

        engine.request_run(args.kind)
        holder = SchedulerLock.holder(engine.config.state_dir)
        if holder is None:
            sys.stderr.write("note: no scheduler is running for this state directory; the "
                             "request waits until one starts\n")
    rows = engine.schedules()
    if args.json:
        out_json(rows)
        return 0
    for r in rows:
        state = "paused" if r["paused"] else f"next {r['next_run'] or 'never'}"
        last = f"last {r['last_run']} {r['last_result']}" if r["last_run"] else "never ran"
        print(f"{r['kind']:10} {r['cron']:16} {state:36} {last}")
    return 0


def cmd_cleanup(args, engine: Engine) -> int:
    prog = TermProgress(sys.stderr.isatty() and not args.json)
    try:
        out = engine.cleanup(dry_run=args.dry_run, on_event=prog)
    finally:
        prog.close()
    if args.json:
        out_json(out)
        return 0 if all("error" not in r for r in out["replicas"]) else 1
    ok = True
    for part in [out, *out["replicas"]]:
        if "error" in part:
            ok = False
            sys.stderr.write(f"cleanup of {part['where']}: FAILED: {part['error']}\n")
            continue
        if part.get("empty"):
            print(f"== {part['where']}: no repository there yet (nothing replicated to it): "
                  "nothing to clean")
            continue
        title = "would" if part["dry_run"] else "did"
        print(f"== {part['where']} ({'dry run' if part['dry_run'] else 'cleanup'})")
        for d in part["decisions"]:
            verb = "keep  " if d["keep"] else "forget"
            print(f"  {verb} {d['id'][:8]} {d['time'][:19]} {d['kind']:5} "
                  f"{d['source'][:16]:16} {', '.join(d['reasons'])}")
        pr = part["prune"]
        print(f"  prune {title}: delete {pr['packs_deleted']} pack(s), repack "
              f"{pr['packs_repacked']}, free {human_bytes(pr['bytes_freed'])}")
        for w in part.get("wal", []):
            gone = (f"{w['expired']} file(s), {human_bytes(w['bytes'])} "
                    f"(before {w['horizon']})" if w["expired"] else "nothing")
            print(f"  wal {w['source']}: {'would expire' if part['dry_run'] else 'expired'} "
                  f"{gone}; {w['kept']} kept" + (f"; {w['note']}" if w["note"] else ""))
        for sk in part["skipped"]:
            print(f"  skipped: {sk}")
    return 0 if ok else 1


def cmd_pin(args, engine: Engine) -> int:
    pinned = args.command == "pin"
    ref = engine.snapshot(args.snapshot, args.source)["id"]
    sid = engine.pin(ref, getattr(args, "note", ""), pinned)
    print(f"{'pinned' if pinned else 'unpinned'} {sid[:8]}")
    return 0


def _lock_line(r: dict) -> str:
    from backup_tui.format import duration

    if not r["readable"]:
        return f"{r['id']}  unreadable record                     {r['why']}"
    alive = {True: "alive", False: "gone", None: "?"}[r["alive"]]
    age = "?" if r["age"] is None else (
        duration(r["age"]) if r["age"] >= 0 else f"in {duration(-r['age'])} (future)")
    state = f"STALE: {r['why']}" if r["stale"] else r["why"]
    return (f"{r['id']}  {'excl' if r['exclusive'] else 'shrd'}  {str(r['purpose'])[:28]:28} "
            f"{str(r['host'])[:20]:20} pid {r['pid']} ({alive})  age {age}  {state}")


def cmd_lock(args, engine: Engine) -> int:
    if args.replica:
        engine = engine.for_replica(args.replica)
    if args.what == "list":
        rows = engine.locks()
        if args.json:
            out_json(rows)
        elif not rows:
            print("no locks")
        else:
            for r in rows:
                print(_lock_line(r))
        return 0
    if bool(args.lock_id) == bool(args.stale):
        raise UsageError("lock break: name one LOCK_ID, or --stale")
    if args.lock_id and not args.yes:
        want = args.lock_id.removeprefix("locks/").lower()
        live = [r for r in engine.locks() if r["id"].startswith(want) and not r["stale"]]
        if live:
            raise UsageError(f"lock {live[0]['id']} looks live ({live[0]['why']}); breaking it "
                             "lets a cleanup delete data its owner is using. Add --yes if you "
                             "know its owner is gone")
    removed = engine.break_lock(args.lock_id, args.stale)
    if args.json:
        out_json(removed)
    else:
        for r in removed:
            print(f"removed {_lock_line(r)}")
        if not removed:
            print("no stale locks")
    return 0


def cmd_api_key(args, engine: Engine) -> int:
    if args.what == "create":
        text = engine.api_key_create(args.name, args.role)
        if args.json:
            out_json({"name": args.name, "role": args.role, "key": text})
        else:
            print(text)
        sys.stdout.flush()
        sys.stderr.write(f"API key {args.name!r} ({args.role}) created. It is shown only this "
                         "once: keep it now. Clients send it as 'Authorization: Bearer "
                         "<key>'.\n")
        return 0
    if args.what == "revoke":
        engine.api_key_revoke(args.name)
        print(f"revoked API key {args.name!r}")
        return 0
    rows = engine.api_key_list()
    if args.json:
        out_json(rows)
    elif not rows:
        print("no API keys (backup-tui api-key create NAME --role ROLE makes one)")
    else:
        print(f"{'NAME':24} {'ROLE':9} {'CREATED':25} REVOKED")
        for r in rows:
            print(f"{r['name']:24} {r['role']:9} {r['created']:25} {r['revoked'] or '-'}")
    return 0


def cmd_forget(args, engine: Engine) -> int:
    if not args.yes:
        lines = []
        for ref in args.snapshots:
            try:
                snap = engine.snapshot(ref, args.source)
                lines.append(f"  {snap['id'][:12]} {snap.get('time', '')[:19]} "
                             f"{snap.get('kind', '')} {snap.get('source', '')}")
            except EngineError:
                lines.append(f"  {ref}")
        sys.stderr.write("would forget:\n" + "\n".join(lines) + "\n")
        raise UsageError("forget deletes these snapshots (their data goes with the next "
                         "cleanup): add --yes to confirm")
    refs = [engine.snapshot(r, args.source)["id"] if args.source else r for r in args.snapshots]
    out = engine.forget(refs, force=args.force)
    if args.json:
        out_json(out)
    else:
        for sid in out["forgotten"]:
            print(f"forgot {sid[:12]}" + (" (was pinned)" if sid in out["unpinned"] else ""))
        for sid in out["already_gone"]:
            print(f"forgot {sid[:12]} (it had already vanished; the loss is recorded)")
        for sk in out["skipped"]:
            sys.stderr.write(f"  skipped: {sk}\n")
        if out["forgotten"]:
            print("their data is freed by the next 'backup-tui cleanup'")
    return 1 if out["skipped"] else 0


def cmd_repair(args, engine: Engine) -> int:
    prog = TermProgress(sys.stderr.isatty() and not args.json)
    try:
        rep = engine.repair(dry_run=args.dry_run, from_replica=args.from_replica, on_event=prog)
    finally:
        prog.close()
    if args.json:
        out_json(rep.as_json())
        return 0 if rep.ok else 1
    title = "repair (dry run: nothing written)" if rep.dry_run else "repair"
    print(f"{title}: {rep.packs_read} pack(s) read ({human_bytes(rep.bytes_read)})")
    for line in rep.damaged_packs:
        print(f"  damaged: {line}")
    for line in rep.index_damaged:
        print(f"  damaged: {line}")
    would = "would " if rep.dry_run else ""
    for name in rep.fetched:
        print(f"  {would}fetch from {rep.replica}: {name}")
    for line in rep.fetch_failed:
        print(f"  not fetched: {line}")
    if rep.salvaged_blobs:
        print(f"  {'would copy' if rep.dry_run else 'copied'} {rep.salvaged_blobs} intact "
              "blob(s) of damaged packs into new packs")
    if rep.index_rewritten:
        print(f"  index {'would be ' if rep.dry_run else ''}rebuilt from the packs"
              + (f": {len(rep.index_written)} file(s) written, {len(rep.index_deleted)} "
                 "old one(s) removed" if not rep.dry_run else ""))
    else:
        print("  index: matches the packs")
    if rep.prune is not None:
        print(f"  cleanup: {rep.prune['packs_deleted']} pack(s) deleted, "
              f"{rep.prune['packs_repacked']} repacked, "
              f"{rep.prune['packs_unreferenced']} unreferenced removed, "
              f"{human_bytes(rep.prune['bytes_freed'])} freed")
    elif rep.prune_skipped:
        print(f"  cleanup: {rep.prune_skipped}")
    for sk in rep.skipped:
        print(f"  skipped: {sk}")
    for line in rep.unreadable_snapshots:
        print(f"  LOST: {line}")
    for sid in rep.vanished:
        print(f"  LOST: snapshot {sid} vanished and no replica given holds it")
    for x in rep.lost:
        print(f"  LOST: snapshot {x.snapshot[:12]} ({x.kind} {x.source}, {x.time[:19]}) "
              f"needs {x.missing} missing blob(s): {', '.join(x.paths)}")
    if rep.ok:
        print("ok: every snapshot has all its data")
    else:
        print("what is LOST above cannot be restored in full: repair --from a replica that "
              "holds it, or accept the loss with 'backup-tui forget SNAPSHOT --yes'")
    return 0 if rep.ok else 1


def cmd_doctor(args, engine: Engine) -> int:
    rep = engine.doctor(fix=args.fix)
    if args.json:
        out_json(rep.as_json())
        return 0 if rep.ok else 1
    for line in rep.fixed:
        print(f"fixed: {line}")
    for line in rep.to_fix:
        print(f"to fix: {line}")
    for line in rep.running:
        print(f"running: {line}")
    for line in rep.notes:
        print(f"note: {line}")
    for line in rep.problems:
        print(f"PROBLEM: {line}")
    if rep.to_fix:
        print("run 'backup-tui doctor --fix' to clean this up")
    elif rep.ok:
        print("ok: nothing left by interrupted runs")
    return 0 if rep.ok else 1


def _print_drill(r) -> None:
    rto = f"RTO {r.rto_seconds:.1f} s" if r.rto_seconds is not None else "no RTO"
    snap = r.snapshot[:8] if r.snapshot else "no snapshot"
    print(f"drill {r.kind}:{r.source} of {snap}: {'ok' if r.ok else 'FAILED'}, {rto}")
    for c in r.checks:
        flag = "skipped" if c.get("skipped") else ("ok" if c["ok"] else "FAILED")
        print(f"  {c['name']:9} {flag:7} {c['detail']}")
    for note in [r.details.get("scratch_note"), *r.details.get("warnings", [])[:5]]:
        if note:
            sys.stderr.write(f"  note: {note}\n")
    if not r.ok:
        sys.stderr.write(f"backup-tui: drill {r.kind}:{r.source} failed: {r.error}\n")


def cmd_drill(args, engine: Engine) -> int:
    prog = TermProgress(sys.stderr.isatty() and not args.json)
    try:
        if args.what == "all":
            results = engine.drill_all(prog)
        else:
            results = [engine.drill(args.what, args.name, prog)]
    finally:
        prog.close()
    if args.json:
        data = [r.as_json() for r in results]
        out_json(data if args.what == "all" else data[0])
    else:
        for r in results:
            _print_drill(r)
        if not results:
            print("no source has restore drills")
    return 0 if all(r.ok for r in results) else 1


def cmd_completion(args, parser: argparse.ArgumentParser) -> int:
    """The bash or zsh completion script for every command and option, made by shtab."""
    import shtab

    stack = [parser]
    while stack:  # zsh's menus show a description before the summary: keep them one line
        for a in stack.pop()._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sp in a.choices.values():
                    sp.description = None
                    stack.append(sp)
    sys.stdout.write(shtab.complete(parser, shell=args.shell))
    return 0


def cmd_wal(args, engine: Engine) -> int:
    pos = [args.path] if args.command == "wal-push" else [args.name, args.dest]
    if not 0 <= (getattr(args, "prefetch", None) or 0) <= 256:
        sys.stderr.write("backup-tui: wal-fetch: --prefetch takes 0 to 256 (segments)\n")
        return 2
    return cli_wal.execute(args.config, args.command, pos, args.cluster,
                           getattr(args, "replica", None), getattr(args, "spool", None),
                           getattr(args, "prefetch", None))


COMMANDS = {
    "wal-push": cmd_wal,
    "wal-fetch": cmd_wal,
    "drill": cmd_drill,
    "doctor": cmd_doctor,
    "forget": cmd_forget,
    "repair": cmd_repair,
    "lock": cmd_lock,
    "api-key": cmd_api_key,
    "cleanup": cmd_cleanup,
    "pin": cmd_pin,
    "unpin": cmd_pin,
    "health": cmd_health,
    "audit": cmd_audit,
    "schedule": cmd_schedule,
    "replicate": cmd_replicate,
    "catalog": cmd_catalog,
    "repository": cmd_repository,
    "status": cmd_status,
    "init": cmd_init,
    "backup": cmd_backup,
    "list": cmd_list,
    "show": cmd_show,
    "verify": cmd_verify,
    "dump": cmd_dump,
    "restore": cmd_restore,
    "pitr-plan": cmd_pitr_plan,
}


def _log_to_stderr() -> None:
    """Engine warnings (a failed notification, a world-readable password file) on stderr."""
    import logging

    logger = logging.getLogger("backup_tui")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("backup-tui: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)


def _tune_malloc() -> None:
    """Large buffers (chunks, packs) from mmap, so freed ones go back to the system at
    once, and few malloc arenas for our threads: peak memory stays flat with data size."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 8 * 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: defaults


def _need_terminal(what: str) -> None:
    """The console draws on a terminal and reads keys from one: from a script, a pipe or
    cron it would write escape codes into the pipe and wait forever."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError(f"{what} needs a terminal (stdin and stdout); "
                         "run 'backup-tui --help' for the commands")


def main(argv: list[str] | None = None) -> int:
    wal_rc = cli_wal.run(sys.argv[1:] if argv is None else list(argv))
    if wal_rc is not None:  # wal-push / wal-fetch: nothing else is needed
        return wal_rc
    _tune_malloc()
    parser = build_parser()
    args = parser.parse_args(argv)
    _log_to_stderr()
    try:
        if args.demo:
            _need_terminal("--demo starts the console, which")
            from backup_tui.demo import run_demo

            return run_demo()
        if args.run_scheduler:
            from engine.daemon import run_daemon

            return run_daemon(_engine(args))
        if args.command == "completion":  # needs no config file
            return cmd_completion(args, parser)
        if args.command is None:
            _need_terminal("no command given, and the console")
            from backup_tui.app import run_console

            return run_console(_engine(args))
        engine = _engine(args)
        return COMMANDS[args.command](args, engine)
    except EngineError as e:
        sys.stderr.write(f"backup-tui: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("backup-tui: interrupted\n")
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
