"""Configuration: every bad config file gets exit 2 and ONE stderr line naming the file
(and the key, where there is one), through the real CLI; good ones load.

Unreadable files: the tests run as root, where ``chmod 000`` does not stop a read.
The CLI is therefore started under ``setpriv --bounding-set -dac_override,
-dac_read_search``, which takes away root's permission-bypass capabilities for that
process only, so ``chmod 000`` bites as it would for any user. A directory given as
the config path is tested as well (unreadable for everyone).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from engine.config import load_config, parse_config
from engine.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """Assert exit 2 with exactly one stderr line and nothing on stdout; return the line."""
    err = proc.stderr.decode()
    assert proc.returncode == 2, (proc.returncode, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert proc.stdout == b""
    return lines[0]


def cli_without_dac(sandbox, *args: str) -> subprocess.CompletedProcess:
    """The real CLI, as root but without the capabilities that bypass file permissions."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is needed to drop root's DAC override")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    env = dict(os.environ)
    env.pop("BACKUP_TUI_PASSWORD", None)
    cmd = [*prefix, sys.executable, "-m", "backup_tui.cli",
           "--config", str(sandbox.config_path), *args]
    return subprocess.run(cmd, capture_output=True, env=env, timeout=60)


def write(sandbox, text: str) -> None:
    sandbox.config_path.write_text(text)


def base(sandbox) -> str:
    return (
        f'[repository]\npath = "{sandbox.repo}"\npassword_file = "{sandbox.pwfile}"\n'
        f'[state]\ndir = "{sandbox.state}"\n'
    )


# --------------------------------------------------------------------- file level


def test_missing_config_file(sandbox, tmp_path):
    missing = tmp_path / "nope" / "config.toml"
    proc = sandbox.cli("--config", str(missing), "list")
    line = one_line_error(proc)
    assert str(missing) in line and "not found" in line


def test_missing_config_file_engine_level(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.toml")


def test_unreadable_config_file_chmod_000(sandbox):
    sandbox.cli("init", check=True)
    os.chmod(sandbox.config_path, 0)
    proc = cli_without_dac(sandbox, "list")
    line = one_line_error(proc)
    assert str(sandbox.config_path) in line
    assert "cannot read config file" in line and "Permission denied" in line


def test_config_path_is_a_directory(sandbox, tmp_path):
    folder = tmp_path / "conf.d"
    folder.mkdir()
    proc = sandbox.cli("--config", str(folder), "list")
    line = one_line_error(proc)
    assert str(folder) in line and "cannot read config file" in line


def test_config_from_environment_variable(sandbox):
    """$BACKUP_TUI_CONFIG is used when --config is not given."""
    sandbox.cli("init", check=True)
    env = dict(os.environ, BACKUP_TUI_CONFIG=str(sandbox.config_path))
    env.pop("BACKUP_TUI_PASSWORD", None)
    proc = subprocess.run([sys.executable, "-m", "backup_tui.cli", "list", "--json"],
                          capture_output=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == b"[]"


# ---------------------------------------------------------------------- content


def test_bad_toml(sandbox):
    write(sandbox, base(sandbox) + "[retention]\nkeep_last = = 3\n[notify]\n")
    line = one_line_error(sandbox.cli("list"))
    assert str(sandbox.config_path) in line and "not valid TOML" in line
    assert "line 7" in line  # where in the file


def test_bad_toml_unclosed_array(sandbox):
    write(sandbox, base(sandbox) + '[[fileset]]\nname = "src"\npaths = ["/x"\n')
    line = one_line_error(sandbox.cli("list"))
    assert str(sandbox.config_path) in line and "not valid TOML" in line


def test_config_not_utf8(sandbox):
    sandbox.config_path.write_bytes(base(sandbox).encode() + b'[notify]\ncommand = "\xff"\n')
    line = one_line_error(sandbox.cli("list"))
    assert str(sandbox.config_path) in line and "not valid TOML" in line


def test_unknown_top_level_key(sandbox):
    write(sandbox, 'colour = "blue"\n' + base(sandbox))
    line = one_line_error(sandbox.cli("list"))
    assert str(sandbox.config_path) in line and "unknown key colour" in line


def test_unknown_section(sandbox):
    write(sandbox, base(sandbox) + "[retension]\nkeep_last = 3\n")
    line = one_line_error(sandbox.cli("list"))
    assert str(sandbox.config_path) in line and "unknown key retension" in line


def test_unknown_key_in_table(sandbox):
    write(sandbox, base(sandbox) + "[retention]\nkeep_lats = 3\n")
    line = one_line_error(sandbox.cli("list"))
    assert str(sandbox.config_path) in line and "retention.keep_lats" in line


def test_unknown_key_in_fileset(sandbox):
    sandbox.extra = 'excludes = ["*.tmp"]\n'  # lands inside the last [[fileset]]
    sandbox.write_config()
    line = one_line_error(sandbox.cli("list"))
    assert str(sandbox.config_path) in line and "fileset[0].excludes" in line


def test_wrong_type(sandbox):
    write(sandbox, base(sandbox) + '[retention]\nkeep_last = "seven"\n')
    line = one_line_error(sandbox.cli("list"))
    assert str(sandbox.config_path) in line
    assert "retention.keep_last must be an integer" in line


def test_wrong_type_bool_is_not_an_integer(sandbox):
    write(sandbox, base(sandbox) + "[retention]\nkeep_daily = true\n")
    line = one_line_error(sandbox.cli("list"))
    assert "retention.keep_daily must be an integer" in line


def test_wrong_type_in_fileset(sandbox):
    write(sandbox, base(sandbox) + '[[fileset]]\nname = "src"\npaths = "/srv"\n')
    line = one_line_error(sandbox.cli("list"))
    assert str(sandbox.config_path) in line and "fileset[0].paths must be a list" in line


def test_wrong_type_list_items(sandbox):
    write(sandbox, base(sandbox) + '[[fileset]]\nname = "src"\npaths = ["/srv", 3]\n')
    line = one_line_error(sandbox.cli("list"))
    assert "fileset[0].paths" in line


def test_section_that_is_not_a_table(sandbox):
    write(sandbox, 'state = "x"\n' + f'[repository]\npath = "{sandbox.repo}"\n')
    line = one_line_error(sandbox.cli("list"))
    assert str(sandbox.config_path) in line and "[state] must be a table" in line


def test_missing_repository_section(sandbox):
    write(sandbox, f'[state]\ndir = "{sandbox.state}"\n')
    line = one_line_error(sandbox.cli("list"))
    assert str(sandbox.config_path) in line and "missing required key repository.path" in line


def test_missing_required_key_in_table(sandbox):
    write(sandbox, '[repository]\ncompression = "none"\n')
    line = one_line_error(sandbox.cli("list"))
    assert "missing required key repository.path" in line


def test_missing_required_key_in_fileset(sandbox):
    write(sandbox, base(sandbox) + '[[fileset]]\nname = "src"\n')
    line = one_line_error(sandbox.cli("list"))
    assert str(sandbox.config_path) in line and "missing required key fileset[0].paths" in line


def test_relative_fileset_path(sandbox):
    write(sandbox, base(sandbox) + '[[fileset]]\nname = "src"\npaths = ["srv/app"]\n')
    line = one_line_error(sandbox.cli("list"))
    assert "fileset[0].paths" in line and "not an absolute path" in line


def test_duplicate_fileset_name(sandbox):
    fs = f'[[fileset]]\nname = "src"\npaths = ["{sandbox.src}"]\n'
    write(sandbox, base(sandbox) + fs + fs)
    line = one_line_error(sandbox.cli("list"))
    assert "fileset[1].name 'src' is used twice" in line


def test_bad_compression(sandbox):
    write(sandbox, f'[repository]\npath = "{sandbox.repo}"\ncompression = "gzip"\n')
    line = one_line_error(sandbox.cli("list"))
    assert "repository.compression" in line and "'gzip'" in line


def test_unreadable_password_file(sandbox):
    """A password_file that cannot be read is a config error naming the key and the file."""
    sandbox.cli("init", check=True)
    sandbox.pwfile.unlink()
    line = one_line_error(sandbox.cli("list"))
    assert "password_file" in line and str(sandbox.pwfile) in line


def test_empty_password_file_is_refused(sandbox):
    """An empty password_file must not silently give an unencrypted repository."""
    sandbox.pwfile.write_text("\n")
    line = one_line_error(sandbox.cli("init"))
    assert "password_file" in line and str(sandbox.pwfile) in line and "empty" in line
    assert not sandbox.repo.exists()


def test_unknown_fileset_name_is_usage_error(sandbox):
    sandbox.cli("init", check=True)
    line = one_line_error(sandbox.cli("backup", "files", "nosuch"))
    assert "no [[fileset]] named 'nosuch'" in line and "src" in line


def test_valid_config_defaults(sandbox):
    cfg = load_config(sandbox.config_path)
    assert cfg.repository.compression == "zstd:3"
    assert cfg.retention.keep_last == 7
    assert cfg.schedule.timezone == "UTC"
    assert [f.name for f in cfg.filesets] == ["src"]
    assert cfg.filesets[0].paths == (str(sandbox.src),)
    assert cfg.path == sandbox.config_path


def test_config_example_loads():
    """config.example.toml at the repository root documents every key and must load."""
    example = REPO_ROOT / "config.example.toml"
    with example.open("rb") as f:
        cfg = parse_config(tomllib.load(f), str(example))
    assert cfg.repository.path
    assert cfg.filesets and cfg.filesets[0].paths
    assert load_config(example).filesets == cfg.filesets


# ----------------------------------------------------------------- state dir


def test_state_dir_is_a_file(sandbox):
    def check(proc):
        assert proc.returncode == 1, proc.stderr
        err = proc.stderr.decode()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert str(sandbox.state) in err and "not a directory" in err

    sandbox.state.write_text("not a directory\n")
    check(sandbox.cli("init"))
    # init failed before it made a repository, so a retry after the fix just works
    assert not sandbox.repo.exists()
    sandbox.state.unlink()
    assert sandbox.cli("init").returncode == 0
    shutil.rmtree(sandbox.state)
    sandbox.state.write_text("not a directory\n")
    (sandbox.src / "f").write_text("f")
    check(sandbox.cli("backup", "files", "src"))
    assert not (sandbox.repo / "snapshots").exists() or not any(
        (sandbox.repo / "snapshots").iterdir())


def test_damaged_catalog(sandbox):
    """The catalog is a cache: a damaged one gets a clear error, the repository is fine."""
    (sandbox.src / "f").write_text("f")
    sandbox.cli("init", check=True)
    sandbox.cli("backup", "files", "src", check=True)
    cat = sandbox.state / "catalog.sqlite"
    for extra in sandbox.state.glob("catalog.sqlite-*"):
        extra.unlink()
    cat.write_bytes(b"garbage" * 100)
    proc = sandbox.cli("backup", "files", "src")
    err = proc.stderr.decode()
    assert proc.returncode == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(cat) in err and "move it aside" in err
    cat.rename(sandbox.state / "catalog.sqlite.bad")
    proc = sandbox.cli("list", "--json")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)) == 1


def test_console_keys(sandbox):
    """[console] keys: binding id -> key(s), loaded as typed; a wrong key in [console], a
    key string that is no key, or keys that are not a table get the one-line error."""
    write(sandbox, base(sandbox) + '[console]\nkeys = { backup = "B", "show-replicas" = '
                                   '"ctrl+r", quit = "ctrl+q, f10" }\n')
    cfg = load_config(sandbox.config_path)
    assert dict(cfg.console.keys) == {"backup": "B", "show-replicas": "ctrl+r",
                                      "quit": "ctrl+q,f10"}
    assert dict(parse_config({"repository": {"path": "/r"}}).console.keys) == {}
    for text, expected in [
        ('[console]\nkeymap = { backup = "B" }\n',
         "unknown key console.keymap (known: keys, job_nice)"),
        ('[console]\nkeys = { backup = "" }\n', "console.keys.backup must be a key"),
        ('[console]\nkeys = { backup = "ctrl r" }\n', "console.keys.backup must be a key"),
        ('[console]\nkeys = { backup = 2 }\n', "console.keys.backup must be a key"),
        ('[console]\nkeys = "B"\n', "console.keys must be a table"),
    ]:
        write(sandbox, base(sandbox) + text)
        line = one_line_error(sandbox.cli("list"))
        assert str(sandbox.config_path) in line and expected in line, (text, line)


def test_every_default_cron_expression_parses():
    """Config loading skips parsing the default expressions (it would import APScheduler
    for every command): they are checked here instead."""
    from zoneinfo import ZoneInfo

    from engine.config import schedule_kinds
    from engine.schedule import make_trigger

    for kind, (cron, _what) in schedule_kinds().items():
        assert cron in ("", "off") or make_trigger(cron, ZoneInfo("UTC")) is not None, kind


def test_a_bad_cron_expression_is_still_refused(tmp_path):
    import tomllib

    from engine.config import parse_config

    text = (f"[repository]\npath = \"{tmp_path / 'repo'}\"\n[state]\ndir = \"{tmp_path}\"\n"
            "[schedule]\nfiles = \"61 * * * *\"\n")
    with pytest.raises(ConfigError, match="schedule.files: cannot parse cron"):
        parse_config(tomllib.loads(text))
