"""S3 faults through engine/sandbox's FaultProxy (latency, 5xx bursts, connection
resets, truncated bodies, slow reads) during replicate, verify --replica and
restore --replica (tests/faults/).

Each episode runs the real CLI while the proxy misbehaves (seeded): it must end in
success (and then its result is right: the replica verifies, the restore is
identical) or in a clear error (exit 1, a message, no traceback). Then the faults
end and the same command is run again: it must complete, and the replica must
verify clean with --read-data.
"""

from __future__ import annotations

import os
import time

import pytest
from campaign import (
    clean_error,
    describe,
    diff_manifests,
    fill,
    manifest,
    mutate,
    run_cli,
)

from engine.sandbox import FaultProxy

CLS = "s3"
KIB = 1024
FAULTS = ("latency", "error", "reset", "truncate", "slow")


@pytest.fixture
def proxied(sandbox, s3_server, s3_buckets, fault_budget):
    """A sandbox whose replica use1 is reached through a FaultProxy."""
    from test_s3 import replica_toml

    proxy = FaultProxy(s3_server.port)
    proxy.slow_bps = 2 << 20
    proxy.latency_s = 0.2
    proxy.burst = 2
    sandbox.extra = replica_toml("use1", s3_buckets.use1, "us-east-1", proxy.endpoint_url,
                                 replicate_after_backup=False)
    sandbox.write_config()
    fill(sandbox.src, fault_budget.rng("fill"), 8, 256 * KIB)
    sandbox.engine(init=True)
    sandbox.proxy = proxy
    try:
        yield sandbox
    finally:
        proxy.close()


def rates_for(rng, main: str) -> dict[str, float]:
    """One fault often, the others now and then."""
    rates = {f: 0.02 for f in FAULTS}
    rates[main] = rng.uniform(0.1, 0.2) if main != "error" else rng.uniform(0.05, 0.1)
    return rates


def replica_clean(sb) -> str:
    proc = run_cli(sb, "verify", "--replica", "use1", "--read-data")
    return "" if proc.returncode == 0 else f"verify --replica --read-data: {describe(proc)}"


def check_restore(sb, sid: str, target, want: dict) -> str:
    got = manifest(target / str(sb.src).lstrip("/"))
    bad = diff_manifests(want, got)
    return f"restore --replica differs: {bad}" if bad else ""


def test_s3_faults(proxied, tmp_path, fault_budget, fault_report):
    sb, proxy = proxied, proxied.proxy
    rng = fault_budget.rng()
    expected: dict[str, dict] = {}
    eng = sb.engine()
    expected[eng.backup("files", "src", replicate=False).id] = manifest(sb.src)
    assert run_cli(sb, "replicate").returncode == 0
    problems: list[str] = []
    # bounded: 10 episodes, each fault twice and each phase 3-4 times; long: every pairing 5x
    phases = ("replicate", "verify", "restore")
    episodes = [(phases[i % 3], FAULTS[i % 5]) for i in range(fault_budget.pick(10, 75))]
    for n, (phase, main) in enumerate(episodes):
        sid = rng.choice(sorted(expected))
        if phase == "replicate":
            mutate(sb.src, rng, n, files=4, size=512 * KIB)
            m = manifest(sb.src)
            sid = sb.engine().backup("files", "src", replicate=False).id
            expected[sid] = m
            args = ("replicate",)
        elif phase == "verify":
            args = ("verify", "--replica", "use1", "--read-data")
        else:
            args = ("restore", "files", sid, "--replica", "use1", "--target",
                    str(tmp_path / f"r{n}"))
        before = sum(proxy.injected.values())
        proxy.chaos(fault_budget.rng(n), rates_for(rng, main))
        t0 = time.monotonic()
        try:
            proc = run_cli(sb, *args, timeout=240)
        finally:
            proxy.calm()
        print(f"{phase} under {main}: exit {proc.returncode} in {time.monotonic() - t0:.1f} s "
              f"({dict(proxy.injected)})")
        hit = sum(proxy.injected.values()) > before
        failed = ""
        if proc.returncode == 0:  # success under faults: the result must be right
            if phase == "restore":
                failed = check_restore(sb, sid, tmp_path / f"r{n}", expected[sid])
            elif phase == "replicate":
                failed = replica_clean(sb)
        else:
            failed = clean_error(proc) or ""
        if not failed:  # the faults end: a retry completes and the replica is clean
            if phase == "restore":
                args = args[:-1] + (str(tmp_path / f"retry{n}"),)
            again = run_cli(sb, *args)
            if again.returncode != 0:
                failed = f"{' '.join(args[:2])} after the faults ended: {describe(again)}"
            elif phase == "restore":
                failed = check_restore(sb, sid, tmp_path / f"retry{n}", expected[sid])
            if not failed and phase == "replicate":
                failed = replica_clean(sb)
        if hit:
            what = f"{phase} under {main} ({dict(proxy.injected)})"
            if failed:
                problems.append(f"{what}: {failed}")
                fault_report.record(CLS, "failed", f"{what}: {failed}")
            else:
                fault_report.record(CLS, "survived", what)
    # the replica is clean, holds every snapshot, and they restore identical (in the
    # bounded run: the first and the newest)
    bad = replica_clean(sb)
    if bad:
        fault_report.record(CLS, "lost", bad)
        problems.append(bad)
    final = tmp_path / "final"
    ids = sorted(expected, key=list(expected).index)
    for sid in ids if fault_budget.long else [ids[0], ids[-1]]:
        proc = run_cli(sb, "restore", "files", sid, "--replica", "use1", "--target",
                       str(final / sid[:12]))
        assert proc.returncode == 0, describe(proc)
        bad = check_restore(sb, sid, final / sid[:12], expected[sid])
        if bad:
            fault_report.record(CLS, "lost", bad)
            problems.append(bad)
    assert not problems, "\n".join(problems)
    assert sum(proxy.injected.values()) >= len(episodes), dict(proxy.injected)
    assert os.path.isdir(sb.repo)
