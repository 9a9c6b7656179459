"""One place per source kind: the registry and engine/sources/ (docs/ARCHITECTURE.md).

Two checks. A static one: outside ``engine/sources/`` no module of the engine or
the console compares anything with a source kind's word, keys a table by one, or
reads a kind's config section directly. A dynamic one: a new kind, defined here
in a few lines and registered, is configured, listed, scheduled, backed up,
reported on, dumped and verified by the unchanged engine.
"""

from __future__ import annotations

import ast
import dataclasses
import io
from pathlib import Path

import pytest

from engine.events import Event
from engine.sources import registry
from engine.sources.base import BackupContext, BackupOutput, Source, SourceConfig

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {ROOT / "engine" / "sources"}  # the kinds themselves and the registry


def kind_words() -> set[str]:
    """Every kind's snapshot word, config section and schedule key (e.g. db, database)."""
    words: set[str] = set()
    for cls in registry.kinds():
        words |= {cls.kind, cls.section(), cls.schedule}
    return words | {"cluster"}  # the next kind, before it exists


def sections() -> set[str]:
    return {f"{cls.section()}s" for cls in registry.kinds()} | {"clusters"}


def modules() -> list[Path]:
    out = []
    for top in ("engine", "backup_tui"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if not any(path.is_relative_to(a) for a in ALLOWED):
                out.append(path)
    return out


def branches_on_kind(tree: ast.AST, words: set[str], attrs: set[str]) -> list[str]:
    found = []

    def literal(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value in words:
            return node.value
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            for elt in node.elts:
                if (w := literal(elt)) is not None:
                    return w
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                if (w := literal(side)) is not None:
                    found.append(f"line {node.lineno}: compares with {w!r}")
        elif isinstance(node, ast.MatchValue) and (w := literal(node.value)) is not None:
            found.append(f"line {node.lineno}: matches {w!r}")
        elif isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant)
                    and isinstance(k.value, str) and k.value in words]
            # a table keyed by two kinds is a switch ("files" alone is also a stats key)
            if len(keys) >= 2 or any(k != "files" for k in keys):
                found.append(f"line {node.lineno}: a table keyed by kind {keys}")
        elif isinstance(node, ast.Attribute) and node.attr in attrs \
                and isinstance(node.ctx, ast.Load):
            found.append(f"line {node.lineno}: reads config .{node.attr}")
    return found


def test_no_code_outside_the_registry_branches_on_a_source_kind():
    words, attrs = kind_words(), sections()
    problems = []
    for path in modules():
        if path == ROOT / "engine" / "config.py":
            continue  # defines the section accessors, branches on nothing
        tree = ast.parse(path.read_text(), str(path))
        problems += [f"{path.relative_to(ROOT)}: {p}" for p in branches_on_kind(tree, words,
                                                                               attrs)]
    assert problems == []


def test_the_check_finds_a_branch():
    """The static check is not vacuous: each form of a branch on a kind is reported."""
    code = (
        "if snap['kind'] == 'db': pass\n"
        "x = 'files' if kind in ('files', 'db') else 0\n"
        "T = {'files': 1, 'db': 2}\n"
        "for d in config.databases: pass\n"
        "match kind:\n    case 'db': pass\n"
        "stats = {'files': 3, 'size': 4}\n"  # a stats key: not a branch
    )
    found = branches_on_kind(ast.parse(code), kind_words(), sections())
    assert len(found) == 5, found


# ---------------------------------------------------------------- a new kind
@dataclasses.dataclass(frozen=True, kw_only=True)
class NoteConfig(SourceConfig):
    """``[[note]]``: a name and a text."""

    section = "note"

    text: str = ""


class NoteSource(Source):
    """A toy kind: the configured text, stored as a stream."""

    kind = "note"
    config_type = NoteConfig
    label = "note"
    schedule = "notes"
    default_cron = "off"
    schedule_text = "back up every note"

    def description(self) -> str:
        return f"{len(self.config.text)} characters"

    def backup(self, ctx: BackupContext) -> BackupOutput:
        from engine.repo.repository import DATA

        data = self.config.text.encode()
        ctx.on_event(Event(ctx.job_id, "note", bytes_done=len(data), bytes_total=len(data)))
        return BackupOutput(fields={"stream": [ctx.writer.save(DATA, data)]}, size=len(data))


@pytest.fixture
def with_notes(monkeypatch):
    kinds = registry.kinds()
    monkeypatch.setattr(registry, "kinds", lambda: (*kinds, NoteSource))


def test_a_new_kind_flows_through_the_unchanged_engine(with_notes, sandbox):
    sandbox.extra = '[[note]]\nname = "motd"\ntext = "hello, restore drill"\n' \
                    '[schedule]\nnotes = "0 1 * * *"\n'
    sandbox.write_config()
    eng = sandbox.engine(init=True)
    assert [(s.kind, s.name, s.label) for s in eng.sources()] == [
        ("files", "src", "fileset"), ("note", "motd", "note")]
    assert {s["kind"] for s in eng.schedules()} >= {"notes", "files", "database"}
    (sandbox.src / "a").write_text("a")
    results = eng.backup_all()
    assert [(r.kind, r.source) for r in results] == [("files", "src"), ("note", "motd")]
    [info] = eng.snapshots(kind="note")
    assert info.source == "motd" and info.size == len("hello, restore drill")
    out = io.BytesIO()
    eng.dump(info.id, out)
    assert out.getvalue() == b"hello, restore drill"
    assert eng.verify(read_data=True).ok
    status = {s["name"]: s for s in eng.status()["sources"]}
    assert status["motd"]["label"] == "note" and status["motd"]["snapshots"] == 1
    assert eng.health()["ok"] or all("motd" not in r for r in eng.health()["reasons"])
    from engine.daemon import Scheduler

    assert [t for t, _ in Scheduler(eng)._targets("notes")] == ["note:motd"]


def test_an_unknown_option_of_another_kind_is_refused(sandbox):
    eng = sandbox.engine(init=True)
    (sandbox.src / "a").write_text("a")
    sid = eng.backup("files", "src").id
    from engine.errors import UsageError

    with pytest.raises(UsageError, match="target_db: not an option"):
        eng.plan_restore(sid, target_db="x")
