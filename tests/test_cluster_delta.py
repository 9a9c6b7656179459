"""Base backups that store changed blocks as deltas against the parent's (format 1.2).

A real cluster of its own: a first base backup, scattered updates, a second base backup
whose changed blocks are deltas. Judged by the bytes added (against the same backup with
`delta = false`), and by the restored server's rows, also after the first backup is
forgotten and its data pruned: the bases the deltas need must stay.
"""

from __future__ import annotations

import subprocess

from test_cluster import configure, pgc  # noqa: F401 - the module's cluster fixture

from engine.events import CancelToken
from engine.ops.prune import prune
from engine.repo.blockdelta import node_deltas
from engine.repo.walk import walk
from engine.sandbox import PgCluster, free_port, reachable_tempdir
from engine.sources.cluster import restore_base

TABLE = """
CREATE TABLE IF NOT EXISTS acct (id int PRIMARY KEY, n int, v text);
INSERT INTO acct SELECT g, 0, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text)
  FROM generate_series(1, 300000) g ON CONFLICT DO NOTHING;
VACUUM (FREEZE, ANALYZE) acct;
"""


def fingerprint(cluster) -> str:
    return cluster.psql("SELECT count(*) || ':' || sum(n) || ':' || "
                        "md5(string_agg(t::text, ',' ORDER BY id)) FROM acct t", "shop").strip()


def restored_fingerprint(eng, snap, relpath: str = "") -> tuple[str, bytes]:
    """The restored server's rows, and the bytes of one file as restored."""
    base = reachable_tempdir("delta-")
    restored = PgCluster(base, port=free_port())
    try:
        restore_base(eng.repo(), snap, base / "data", "job", lambda e: None, CancelToken())
        content = (base / "data" / relpath).read_bytes() if relpath else b""
        (base / "sock").mkdir(mode=0o755)
        (base / "postgres.log").touch()
        restored.chown_to_owner(base / "sock")
        restored.chown_to_owner(base / "postgres.log")
        restored.start()
        return fingerprint(restored), content
    finally:
        restored.destroy()


def delta_nodes(eng, snap) -> dict[str, int]:
    return {path.decode(): len(node_deltas(node)) for path, node in walk(eng.repo(), snap["tree"])
            if node.get("delta")}


def test_changed_blocks_are_deltas_that_restore_and_survive_prune(sandbox_factory, pgc):  # noqa: F811
    pgc.psql(TABLE, "shop")
    plain = sandbox_factory()
    configure(plain, pgc, delta=False)
    plain_eng = plain.engine(init=True)
    sandbox = sandbox_factory()
    configure(sandbox, pgc)
    eng = sandbox.engine(init=True)
    pgc.psql("CHECKPOINT")
    first = eng.backup("cluster", "main")
    plain_eng.backup("cluster", "main")
    # one row in every 40th: each 16 KiB block of the table changes a little
    pgc.psql("UPDATE acct SET n = n + 1 WHERE id % 40 = 0", "shop")
    pgc.psql("CHECKPOINT")
    want = fingerprint(pgc)
    second = eng.backup("cluster", "main")
    plain_second = plain_eng.backup("cluster", "main")
    snap = eng.snapshot(second.id)
    assert snap["parent"] == first.id
    assert snap["stats"]["delta_blocks"] > 500, snap["stats"]
    deltas = delta_nodes(eng, snap)
    assert deltas and sum(deltas.values()) >= snap["stats"]["delta_blocks"]
    print(f"\nsecond backup added {second.added} bytes with deltas, {plain_second.added} "
          f"without; {snap['stats']['delta_blocks']} blocks as deltas")
    assert second.added * 3 < plain_second.added
    assert not delta_nodes(plain_eng, plain_eng.snapshot(plain_second.id))

    # a third backup with nothing changed keeps the deltas and adds almost nothing
    third = eng.backup("cluster", "main")
    snap3 = eng.snapshot(third.id)
    assert snap3["stats"]["delta_blocks"] == 0
    assert delta_nodes(eng, snap3) == deltas
    assert third.added < second.added / 2

    relpath = pgc.psql("SELECT pg_relation_filepath('acct')", "shop").strip()
    got, table = restored_fingerprint(eng, snap, relpath)
    assert got == want

    # the first backup forgotten and its data pruned: the bases stay, the deltas restore
    eng.forget([first.id])
    report = prune(eng.repo(), unreferenced_grace=0)
    assert report is not None
    assert eng.verify(read_data=True).ok
    assert restored_fingerprint(eng, eng.snapshot(second.id))[0] == want

    # changed again: deltas against the same bases (a delta is never a base), and the
    # table grown and a new one made meanwhile
    pgc.psql("UPDATE acct SET n = n + 1 WHERE id % 30 = 0; "
             "INSERT INTO acct SELECT g, 1, 'new ' || g FROM generate_series(300001, 310000) g; "
             "CREATE TABLE fresh AS SELECT g FROM generate_series(1, 1000) g", "shop")
    pgc.psql("CHECKPOINT")
    want4 = fingerprint(pgc)
    fourth = eng.backup("cluster", "main")
    snap4 = eng.snapshot(fourth.id)
    assert snap4["stats"]["delta_blocks"] > 500, snap4["stats"]
    bases3 = {e[2] for path, node in walk(eng.repo(), snap["tree"]) for e in node.get("delta", [])}
    bases4 = {e[2] for path, node in walk(eng.repo(), snap4["tree"]) for e in node.get("delta", [])}
    assert bases3 & bases4
    # every base is a block stored whole: no delta in any snapshot names a delta as base
    deltas_all = {e[1] for s_ in (snap, snap4) for _p, node in walk(eng.repo(), s_["tree"])
                  for e in node.get("delta", [])}
    assert not bases4 & deltas_all
    assert restored_fingerprint(eng, snap4)[0] == want4

    # the tar of the snapshot holds the rebuilt bytes (GNU tar extracts them)
    dump = sandbox.cli("dump", second.id[:12])
    assert dump.returncode == 0, dump.stderr
    out = sandbox.root / "untarred"
    out.mkdir()
    subprocess.run(["tar", "-x", "-C", str(out)], input=dump.stdout, check=True)
    assert (out / relpath).read_bytes() == table


def test_a_new_cluster_is_not_a_parent(sandbox_factory, pgc):  # noqa: F811
    """Another system identifier (the cluster made anew): every block stored whole."""
    sandbox = sandbox_factory()
    configure(sandbox, pgc)
    eng = sandbox.engine(init=True)
    first = eng.backup("cluster", "main")
    other = PgCluster.create()
    try:
        configure(sandbox, other)
        eng = sandbox.engine()
        second = eng.backup("cluster", "main")
        snap = eng.snapshot(second.id)
        assert snap["parent"] == first.id
        assert snap["stats"]["delta_blocks"] == 0 and not delta_nodes(eng, snap)
    finally:
        other.destroy()
