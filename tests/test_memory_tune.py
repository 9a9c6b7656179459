"""engine/memory.py: glibc's mmap and trim thresholds fixed for a files backup's own
process (its memory no longer creeps up over a long walk); each case in a fresh
interpreter, since the setting is the process's."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = ("from engine.memory import tune_malloc; a = tune_malloc(); b = tune_malloc(); "
         "print(a, b)")


def run(env_extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_thresholds_are_set_once_on_glibc():
    assert run({}) == "True True"


def test_the_environment_wins():
    # an operator's own MALLOC_MMAP_THRESHOLD_ is left as it is
    assert run({"MALLOC_MMAP_THRESHOLD_": "65536"}) == "False False"
