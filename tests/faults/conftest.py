"""The fault campaign's options and report (tests/faults/, marker ``faults``).

Options:

* ``--fault-budget=bounded|long`` (default bounded: what CI runs, a few minutes);
  tests read ``fault_budget.pick(bounded, long)`` to size their loops;
* ``--fault-seed=N`` (default 10): every random choice comes from
  ``fault_budget.rng(...)``, seeded with N and the test's id, so a run repeats;
* ``--fault-report=PATH``: where the JSON report goes (default below).

Report: a test records each injected fault with ``fault_report.record(cls, outcome,
detail)`` where outcome is ``survived`` (every check held), ``failed`` (a check other
than data integrity failed: a traceback, a stuck lock, a retry that did not
complete) or ``lost`` (a complete snapshot no longer verifies or restores
identical). At the end of the session a table per class is printed and written, with
the figures per test and every problem, to ``fault-report.json`` in pytest's base
temporary directory (its path is printed).
"""

from __future__ import annotations

import json
import random
import time
import zlib
from collections import defaultdict
from pathlib import Path

import pytest

OUTCOMES = ("survived", "failed", "lost")
_KEY = pytest.StashKey[dict]()


def pytest_addoption(parser):
    g = parser.getgroup("faults", "fault campaign (tests/faults)")
    g.addoption("--fault-budget", choices=("bounded", "long"), default="bounded",
                help="bounded (CI, default) or long (the long campaign)")
    g.addoption("--fault-seed", type=int, default=10, help="seed of every random choice")
    g.addoption("--fault-report", default="", metavar="PATH",
                help="write the JSON report here (default: pytest's base temporary directory)")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.faults)


class Budget:
    def __init__(self, config, nodeid: str):
        self.name = config.getoption("--fault-budget")
        self.seed = config.getoption("--fault-seed")
        self.long = self.name == "long"
        self._nodeid = nodeid

    def pick(self, bounded, long):
        return long if self.long else bounded

    def rng(self, *salt) -> random.Random:
        key = "|".join([str(self.seed), self._nodeid, *map(str, salt)])
        return random.Random(zlib.crc32(key.encode()))


@pytest.fixture
def fault_budget(request) -> Budget:
    return Budget(request.config, request.node.nodeid)


class Report:
    def __init__(self, store: dict, nodeid: str):
        self._store = store
        self._nodeid = nodeid

    def record(self, cls: str, outcome: str, detail: str = "") -> None:
        assert outcome in OUTCOMES, outcome
        per_test = self._store["tests"].setdefault(self._nodeid, {})
        for row in (self._store["classes"].setdefault(cls, dict.fromkeys(("injected",
                                                                          *OUTCOMES), 0)),
                    per_test.setdefault(cls, dict.fromkeys(("injected", *OUTCOMES), 0))):
            row["injected"] += 1
            row[outcome] += 1
        if outcome != "survived":
            self._store["problems"].append(
                {"class": cls, "outcome": outcome, "test": self._nodeid, "detail": detail[:2000]})


@pytest.fixture
def fault_report(request) -> Report:
    return Report(request.config.stash[_KEY], request.node.nodeid)


def pytest_configure(config):
    config.stash[_KEY] = {"classes": {}, "tests": {}, "problems": [], "started": time.time(),
                          "budget": config.getoption("--fault-budget"),
                          "seed": config.getoption("--fault-seed")}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    store = config.stash.get(_KEY, None)
    if not store or not store["classes"]:
        return
    store["seconds"] = round(time.time() - store["started"], 1)
    totals = defaultdict(int)
    tr = terminalreporter
    tr.section(f"fault campaign ({store['budget']}, seed {store['seed']}, "
               f"{store['seconds']} s)")
    tr.write_line(f"{'class':<16}{'injected':>10}{'survived':>10}{'failed':>8}{'lost':>6}")
    for cls, row in sorted(store["classes"].items()):
        tr.write_line(f"{cls:<16}{row['injected']:>10}{row['survived']:>10}"
                      f"{row['failed']:>8}{row['lost']:>6}")
        for k, v in row.items():
            totals[k] += v
    tr.write_line(f"{'total':<16}{totals['injected']:>10}{totals['survived']:>10}"
                  f"{totals['failed']:>8}{totals['lost']:>6}")
    for p in store["problems"][:30]:
        tr.write_line(f"  {p['outcome']}: {p['class']} {p['test']}: "
                      f"{p['detail'].splitlines()[0] if p['detail'] else ''}"[:200])
    path = config.getoption("--fault-report")
    if not path:
        try:
            path = Path(config._tmp_path_factory.getbasetemp()) / "fault-report.json"
        except Exception:  # no tmp dir in this session: print only
            return
    path = Path(path)
    path.write_text(json.dumps(store, indent=2))
    tr.write_line(f"report: {path}")
