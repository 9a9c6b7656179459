"""Layering rules (DESIGN.md section 2) and the compiled chunker (section 12).

The engine never imports textual, rich or backup_tui: checked in a fresh
interpreter, since this test process has imported everything already.
pyfastcdc silently falls back to pure Python (with only a warning) when its
compiled extension is missing: check that the compiled one is what we load.
"""

from __future__ import annotations

import json
import subprocess
import sys

ENGINE_MODULES = [
    "engine",
    "engine.facade",
    "engine.ops.backup",
    "engine.ops.restore",
    "engine.ops.verify",
    "engine.ops.dump",
]

FORBIDDEN = ("textual", "rich", "backup_tui")


def run_python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def test_engine_imports_no_ui():
    code = (
        "import importlib, json, sys\n"
        f"for m in {ENGINE_MODULES!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = json.loads(run_python(code))
    bad = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert bad == []
    assert "engine.facade" in loaded and "pyfastcdc" in loaded


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
