"""The fast path of ``backup-tui wal-push PATH`` and ``backup-tui wal-fetch NAME DEST``.

PostgreSQL runs these once per WAL segment (archive_command, restore_command), so they
must not pay for the rest of the CLI: backup_tui/cli.py imports this module first, and
when the process is the CLI itself (the ``backup-tui`` script or ``python -m
backup_tui.cli``) and its command is wal-push or wal-fetch, the command runs here and
the process exits before cli.py imports anything else (the engine facade, the source
registry, psycopg2, apscheduler). ``cli.main(argv)`` calls `run` first too, for callers
in the same process. Only the standard library is imported until the command runs
engine.wal (which adds zstandard, cryptography and, for a replica, boto3).
"""

from __future__ import annotations

import os
import sys

COMMANDS = ("wal-push", "wal-fetch")
USAGE = {
    "wal-push": "backup-tui [--config PATH] wal-push PATH [--cluster NAME]",
    "wal-fetch": "backup-tui [--config PATH] wal-fetch NAME DEST [--cluster NAME] "
                 "[--replica NAME] [--spool DIR [--prefetch N]]",
}


def _parse(argv: list[str]) -> tuple[str | None, str, list[str], dict[str, str]] | None:
    """(config, command, positional arguments, options: cluster, replica, spool, prefetch)
    when argv is a
    wal command this fast parser understands; None to leave it to the full parser (help,
    other flags)."""
    config = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--config" and i + 1 < len(argv):
            config, i = argv[i + 1], i + 2
        elif a.startswith("--config="):
            config, i = a.partition("=")[2], i + 1
        elif a == "--json":
            i += 1
        else:
            break
    if i >= len(argv) or argv[i] not in COMMANDS:
        return None
    command, rest = argv[i], argv[i + 1:]
    names = ("--cluster", "--replica", "--spool", "--prefetch") if command == "wal-fetch" \
        else ("--cluster",)
    opts: dict[str, str] = {}
    pos: list[str] = []
    j = 0
    while j < len(rest):
        a = rest[j]
        if a in names and j + 1 < len(rest):
            opts[a[2:]], j = rest[j + 1], j + 2
        elif a.partition("=")[0] in names and "=" in a:
            key, _, value = a.partition("=")
            opts[key[2:]], j = value, j + 1
        elif a == "--":
            pos += rest[j + 1:]
            break
        elif a.startswith("-") and a != "-":
            return None  # --help and anything unknown: the full parser says it
        else:
            pos.append(a)
            j += 1
    return config, command, pos, opts


def run(argv: list[str]) -> int | None:
    """Run a wal-push / wal-fetch command line; None when argv is not one."""
    parsed = _parse(argv)
    if parsed is None:
        return None
    config, command, pos, opts = parsed
    want = 1 if command == "wal-push" else 2
    if len(pos) != want:
        sys.stderr.write(f"backup-tui: usage: {USAGE[command]}\n")
        return 2
    prefetch = opts.get("prefetch")
    if prefetch is not None and not (prefetch.isdigit() and int(prefetch) <= 256):
        sys.stderr.write("backup-tui: wal-fetch: --prefetch takes 0 to 256 (segments)\n")
        return 2
    return execute(config, command, pos, opts.get("cluster"), opts.get("replica"),
                   opts.get("spool"), None if prefetch is None else int(prefetch))


def execute(config: str | None, command: str, pos: list[str], cluster: str | None,
            replica: str | None = None, spool: str | None = None,
            prefetch: int | None = None) -> int:
    prepared = None
    config_path = _find_config(config)
    if command == "wal-fetch" and spool:
        # a segment fetched ahead into the spool: checked and renamed, nothing imported
        # (engine/walspool.py); else a prefetcher starts and the segment is fetched below
        from engine import walspool

        def prefetcher(sp, after: str, ahead: int, seg_size: int | None) -> None:
            walspool.run_prefetcher(config_path, cluster, replica, sp, after, ahead, seg_size)

        try:
            if walspool.serve(spool, pos[0], pos[1], _ahead(prefetch), prefetcher):
                return 0
        except Exception as e:  # noqa: BLE001 - the spool only speeds up: fetch it
            sys.stderr.write(f"backup-tui: wal-fetch: spool {spool}: {type(e).__name__}: "
                             f"{e} (fetching it)\n")
    if command == "wal-push":  # read and compress the file while the rest is imported
        from engine.walfile import Prepared

        prepared = Prepared(pos[0])
    import logging

    from engine import wal
    from engine.errors import EngineError

    # the outcome is the one line below (PostgreSQL logs it); no "waiting for a lock" note
    logging.getLogger("backup_tui").addHandler(logging.NullHandler())

    try:
        settings = wal.WalSettings.load(config_path)
        if command == "wal-push":
            wal.push(settings, pos[0], cluster, prepared)
        else:
            wal.fetch(settings, pos[0], pos[1], cluster, replica)
            if spool:
                from engine import walspool

                try:  # the segments after it, fetched ahead (engine/walspool.py)
                    walspool.fetched(spool, pos[0], pos[1], _ahead(prefetch), prefetcher)
                except Exception as e:  # noqa: BLE001 - the spool only speeds up
                    sys.stderr.write(f"backup-tui: wal-fetch: spool {spool}: "
                                     f"{type(e).__name__}: {e}\n")
        return 0
    except EngineError as e:
        line = " ".join(str(e).split())
        sys.stderr.write(f"backup-tui: {line}\n")
        if command == "wal-fetch" and not isinstance(e, wal.WalNotFound):
            # could not look (config, password, repository): exit 126, so PostgreSQL stops
            # recovery instead of taking it for the end of the archive (docs/WAL.md)
            return wal.WalUnavailable.exit_code
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"backup-tui: {command}: interrupted\n")
        return 130
    except Exception as e:  # noqa: BLE001 - one line for PostgreSQL's log, exit 1: it retries
        sys.stderr.write(f"backup-tui: {command}: unexpected {type(e).__name__}: {e}\n")
        return wal.WalUnavailable.exit_code if command == "wal-fetch" else 1


def _ahead(prefetch: int | None) -> int:
    from engine import walspool

    return walspool.DEFAULT_AHEAD if prefetch is None else prefetch


def _find_config(explicit: str | None) -> str:
    """As engine.config.find_config (without importing it)."""
    if explicit:
        return explicit
    env = os.environ.get("BACKUP_TUI_CONFIG")
    if env:
        return env
    if os.path.exists("config.toml"):
        return "config.toml"
    return "/etc/backup-tui/config.toml"


def _is_cli_process() -> bool:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and getattr(spec, "name", None) == "backup_tui.cli":
        return True  # python -m backup_tui.cli
    return os.path.basename(getattr(main, "__file__", None) or "") == "backup-tui"


if _is_cli_process() and len(sys.argv) > 1 and any(a in COMMANDS for a in sys.argv[1:4]):
    _rc = run(sys.argv[1:])
    if _rc is not None:
        sys.stdout.flush()
        sys.exit(_rc)
