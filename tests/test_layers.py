"""Layering rules (docs/ARCHITECTURE.md, section 1) and the compiled chunker.

The engine never imports textual, rich or backup_tui, nor anything of tests/.
Checked twice over every module of the ``engine`` package, found by walking it
(so a new module is covered without touching this file):

- at run time: all of them imported in one fresh interpreter (this test process
  has imported everything already), with an import hook that names the engine
  module whose code asked for a forbidden package;
- statically: every ``import``/``from`` statement and every
  ``importlib.import_module``/``__import__`` call with a literal name, at any
  depth, so a lazy import inside a function is caught before it ever runs.

Both checkers are first shown to catch a planted offender in a throwaway package.
pyfastcdc silently falls back to pure Python (with only a warning) when its
compiled extension is missing: check that the compiled one is what we load.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
UI = frozenset({"textual", "rich", "backup_tui"})


def names_under_tests() -> frozenset[str]:
    """Top-level names under which tests/ code is importable (tests/ is on sys.path)."""
    names = {p.stem for p in TESTS.glob("*.py")}
    names |= {p.parent.name for p in TESTS.glob("*/__init__.py")}
    return frozenset(names | {"tests"})


FORBIDDEN = UI | names_under_tests()


def run_python(code: str, *args: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          timeout=180, cwd=cwd)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


# ------------------------------------------------------------------ run time
# argv: package, comma-separated forbidden top-level names. Prints JSON.
RUNTIME_PROBE = r"""
import importlib, json, pkgutil, sys

package, forbidden = sys.argv[1], set(sys.argv[2].split(","))
preloaded = sorted(m for m in sys.modules if m.partition(".")[0] in forbidden)
culprits = {}  # forbidden top-level name -> [module asked for, package module asking]


class Spy:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in forbidden and top not in culprits:
            frame, who = sys._getframe(1), "?"
            while frame is not None:  # innermost frame of our package's code
                mod = frame.f_globals.get("__name__", "")
                if mod == package or mod.startswith(package + "."):
                    who = mod
                    break
                frame = frame.f_back
            culprits[top] = [name, who]
        return None  # only watching: the normal finders do the import


sys.meta_path.insert(0, Spy())
errors = {}


def failed(name):
    errors[name] = repr(sys.exc_info()[1])


modules = [package]
try:
    root = importlib.import_module(package)
except BaseException:
    failed(package)
else:
    for info in pkgutil.walk_packages(root.__path__, package + ".", onerror=failed):
        if not info.name.endswith(".__main__"):
            modules.append(info.name)
pulled_by = {}  # walked module -> forbidden modules that came with importing it
for name in modules:
    before = set(sys.modules)
    try:
        importlib.import_module(name)
    except BaseException:
        failed(name)
    new = sorted({m.partition(".")[0] for m in set(sys.modules) - before} & forbidden)
    if new:
        pulled_by[name] = new
print(json.dumps({"preloaded": preloaded, "modules": modules, "errors": errors,
                  "culprits": culprits, "pulled_by": pulled_by,
                  "loaded": sorted(sys.modules)}))
"""


def import_everything(package: str, forbidden=FORBIDDEN, cwd: Path = ROOT) -> dict:
    return json.loads(run_python(RUNTIME_PROBE, package, ",".join(sorted(forbidden)), cwd=cwd))


def runtime_violations(report: dict) -> list[str]:
    out = [f"{who} imports {name}" for name, who in sorted(report["culprits"].values())]
    for walked, new in sorted(report["pulled_by"].items()):
        out.append(f"importing {walked} pulls in {', '.join(new)}")
    return out


@cache
def engine_report() -> dict:
    return import_everything("engine")


def modules_on_disk(package_dir: Path) -> set[str]:
    names = set()
    for path in package_dir.rglob("*.py"):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if "__pycache__" in parts or parts[-1] == "__main__":
            continue
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_engine_module_is_walked_and_imports():
    report = engine_report()
    assert report["errors"] == {}, "engine modules that fail to import"
    # the walk reached every module file (a folder without __init__.py would be missed)
    assert set(report["modules"]) == modules_on_disk(ROOT / "engine")
    assert {"engine.facade", "engine.storage.s3", "engine.repo.repository"} <= set(
        report["modules"])
    assert "pyfastcdc" in report["loaded"]


def test_engine_imports_no_ui_and_no_tests_at_run_time():
    report = engine_report()
    assert report["preloaded"] == [], "a forbidden package is loaded before the check starts"
    assert runtime_violations(report) == []
    assert [m for m in report["loaded"] if m.partition(".")[0] in FORBIDDEN] == []


# ------------------------------------------------------------------ static
IMPORT_FUNCS = {"import_module", "__import__"}


def imported_names(tree: ast.AST):
    """(line, absolute module name) of every import in a module, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:  # relative imports stay inside the package
                yield node.lineno, node.module
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            fname = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            arg = node.args[0]
            if fname in IMPORT_FUNCS and isinstance(arg, ast.Constant) and isinstance(
                    arg.value, str):
                yield node.lineno, arg.value


def static_violations(package_dir: Path, forbidden=FORBIDDEN) -> list[str]:
    out = []
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir.parent)
        try:
            tree = ast.parse(path.read_bytes(), str(rel))
        except SyntaxError as e:
            out.append(f"{rel}:{e.lineno}: cannot parse: {e.msg}")
            continue
        for line, name in imported_names(tree):
            if name.partition(".")[0] in forbidden:
                out.append(f"{rel}:{line}: imports {name}")
    return out


def test_engine_source_has_no_import_of_ui_or_tests():
    assert list((ROOT / "engine").rglob("*.py")), "no engine source found"
    assert static_violations(ROOT / "engine") == []


# ------------------------------------------------------------------ the checkers catch
@pytest.fixture
def planted(tmp_path) -> Path:
    """A throwaway package with one clean module and three offenders."""
    pkg = tmp_path / "planted"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "clean.py").write_text("import json\nfrom . import sub\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "eager.py").write_text("from rich.text import Text\n")
    (pkg / "sub" / "lazy.py").write_text(
        "def show():\n    import textual.app\n    return textual.app\n")
    (pkg / "sub" / "dynamic.py").write_text(
        "import importlib\n\ndef load():\n    return importlib.import_module('tests.conftest')\n")
    return pkg


def test_static_check_catches_eager_lazy_and_dynamic_imports(planted):
    assert static_violations(planted) == [
        "planted/sub/dynamic.py:4: imports tests.conftest",
        "planted/sub/eager.py:1: imports rich.text",
        "planted/sub/lazy.py:2: imports textual.app",
    ]


def test_runtime_check_walks_subpackages_and_names_the_importer(planted):
    report = import_everything("planted", cwd=planted.parent)
    assert report["errors"] == {}
    assert set(report["modules"]) == modules_on_disk(planted) == {
        "planted", "planted.clean", "planted.sub", "planted.sub.dynamic",
        "planted.sub.eager", "planted.sub.lazy"}
    found = runtime_violations(report)
    # the lazy import never runs: only the static check sees it
    assert found == ["planted.sub.eager imports rich",
                     "importing planted.sub.eager pulls in rich"]


def test_runtime_check_reports_modules_that_fail_to_import(planted):
    (planted / "broken.py").write_text("raise RuntimeError('half written')\n")
    report = import_everything("planted", cwd=planted.parent)
    assert list(report["errors"]) == ["planted.broken"]
    assert "half written" in report["errors"]["planted.broken"]


# ------------------------------------------------------------------ compiled chunker
def test_pyfastcdc_compiled_extension_in_use():
    code = (
        "import json, warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import pyfastcdc\n"
        "print(json.dumps({'module': pyfastcdc.FastCDC.__module__,\n"
        "                  'warnings': [str(w.message) for w in caught]}))\n"
    )
    info = json.loads(run_python(code))
    assert info["module"].startswith("pyfastcdc.cy"), info
    assert not [w for w in info["warnings"] if "fallback" in w or "cython" in w], info


def test_engine_chunker_is_the_compiled_one():
    from engine.sources import files

    assert files.pyfastcdc.FastCDC.__module__.startswith("pyfastcdc.cy")
