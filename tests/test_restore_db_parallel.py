"""restore db of a custom-format snapshot runs in sections, the post-data one in parallel
(engine/ops/restore_db_parallel.py), against the real server of the pg_cluster fixture.

Two index builds that each wait (inside the server) until the other is running prove
the post-data section ran with two jobs: run one after the other, the first waits for
the second in vain and the restore fails. A unique index the restored data violates
fails the post-data step: the restore fails and the target keeps its data.
"""

from __future__ import annotations

import os
import uuid

import pytest

from engine.errors import EngineError
from engine.ops import restore_db_parallel as rdp

# Evaluated for each row an index build reads. In a database being restored (ours are
# named <target>__restoring_<time>) it takes the session advisory lock ``me`` (held
# until pg_restore's connection ends) and waits until another session holds ``other``;
# it fails after 20 s without. Anywhere else it returns at once.
SEEN = """
CREATE FUNCTION seen(me int, other int, x int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF pg_catalog.current_database() NOT LIKE '%\\_\\_restoring\\_%' THEN RETURN x; END IF;
  PERFORM pg_catalog.pg_advisory_lock(me);
  FOR i IN 1..400 LOOP
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory'
               AND objid = other AND granted AND pid <> pg_catalog.pg_backend_pid()) THEN
      RETURN x;
    END IF;
    PERFORM pg_catalog.pg_sleep(0.05);
  END LOOP;
  RAISE EXCEPTION 'index build % waited in vain for build %: not run at the same time',
    me, other;
END $$;
"""

SCHEMA = SEEN + """
CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE NOT NULL, born date);
CREATE TABLE orders (id bigint PRIMARY KEY, user_id int NOT NULL REFERENCES users(id),
  total numeric(10,2) CHECK (total >= 0), note text);
CREATE INDEX orders_user ON orders (user_id);
CREATE INDEX orders_note ON orders (note) WHERE total > 50;
CREATE SEQUENCE ticket START 1000;
SELECT setval('ticket', 1234);
INSERT INTO users SELECT g, 'u' || g || '@example.com', date '2000-01-01' + g
  FROM generate_series(1, 3000) g;
INSERT INTO orders SELECT g, 1 + g % 3000, (g * 7 % 1000) / 10.0, md5(g::text)
  FROM generate_series(1, 20000) g;
CREATE TABLE ta (x int);
CREATE TABLE tb (x int);
INSERT INTO ta VALUES (1);
INSERT INTO tb VALUES (2);
CREATE INDEX ia ON ta ((seen(4201, 4202, x)));
CREATE INDEX ib ON tb ((seen(4202, 4201, x)));
COMMENT ON TABLE orders IS 'every order';
"""

# a unique index on a value that is x in the source and 0 in a database being restored
GUARD = """
CREATE FUNCTION guard(x int) RETURNS int LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN pg_catalog.current_database() LIKE '%\\_\\_restoring\\_%' THEN 0
         ELSE x END $$;
CREATE TABLE u (x int);
INSERT INTO u SELECT g FROM generate_series(1, 50) g;
CREATE UNIQUE INDEX u_guard ON u ((guard(x)));
"""


def state(cluster, db: str) -> dict:
    """Rows (count and md5 per table), index and constraint definitions, ACLs, comments,
    the sequence's value."""
    tables = cluster.psql("SELECT relname FROM pg_class WHERE relkind = 'r' AND "
                          "relnamespace = 'public'::regnamespace ORDER BY 1", db).split()
    out: dict = {"tables": tables}
    for t in tables:
        out[t] = cluster.psql(f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' "
                              f"ORDER BY t::text)), '') FROM {t} t", db).strip()
    out["indexes"] = cluster.psql("SELECT indexname || ' ' || regexp_replace(indexdef, "
                                  "'^.* USING ', '') FROM pg_indexes WHERE schemaname = "
                                  "'public' ORDER BY 1", db).strip().splitlines()
    out["constraints"] = cluster.psql(
        "SELECT conname || ' ' || pg_get_constraintdef(oid) || ' ' || convalidated "
        "FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1",
        db).strip().splitlines()
    out["acl"] = cluster.psql("SELECT relname || ' ' || coalesce(relacl::text, '-') FROM "
                              "pg_class WHERE relnamespace = 'public'::regnamespace "
                              "ORDER BY 1", db).strip()
    out["comment"] = cluster.psql("SELECT obj_description('orders'::regclass)", db).strip()
    out["ticket"] = cluster.psql("SELECT last_value FROM ticket", db).strip()
    return out


@pytest.fixture
def shop(sandbox, pg_cluster):
    name = f"par_{uuid.uuid4().hex[:8]}"
    pg_cluster.createdb(name)
    pg_cluster.psql(SCHEMA + f"GRANT SELECT ON orders TO {pg_cluster.app_user};\n"
                    f"GRANT SELECT, INSERT ON users TO {pg_cluster.app_user};\n"
                    f"REVOKE INSERT ON users FROM PUBLIC;\n", name)
    sandbox.extra = f'[[database]]\nname = "shop"\ndsn = "{pg_cluster.dsn(name)}"\n'
    sandbox.write_config()
    sandbox.db = name
    return sandbox


def scratch_left(sb) -> list[str]:
    tmp = sb.state / "tmp"
    return [d for d in os.listdir(tmp) if d.startswith("restore-")] if tmp.exists() else []


def test_custom_format_restore_builds_post_data_in_parallel(shop, pg_cluster, monkeypatch):
    monkeypatch.setattr(rdp, "post_jobs", lambda: 2)
    eng = shop.engine(init=True)
    res = eng.backup("db", "shop")
    assert "tree" not in eng.snapshot(res.id)  # the default: a streamed custom archive
    target = f"r_{uuid.uuid4().hex[:8]}"
    result = eng.restore(eng.plan_restore(res.id, target_db=target))
    assert result.target_db == target
    got, want = state(pg_cluster, target), state(pg_cluster, shop.db)
    assert got == want
    assert len(want["indexes"]) == 7 and len(want["constraints"]) == 5
    assert pg_cluster.psql("SELECT count(*) FROM pg_database WHERE datname LIKE "
                           f"'{target}\\_\\_%'", "postgres").strip() == "0"
    assert scratch_left(shop) == []


def test_the_same_restore_with_one_job_fails_and_leaves_nothing(shop, pg_cluster, monkeypatch):
    """The proof above can fail: built one after the other, the index ia waits for ib in
    vain; the failed post-data step fails the restore."""
    monkeypatch.setattr(rdp, "post_jobs", lambda: 1)
    eng = shop.engine(init=True)
    res = eng.backup("db", "shop")
    target = f"r_{uuid.uuid4().hex[:8]}"
    with pytest.raises(EngineError, match="not run at the same time") as e:
        eng.restore(eng.plan_restore(res.id, target_db=target))
    assert "(post-data)" in str(e.value)
    assert pg_cluster.psql("SELECT count(*) FROM pg_database WHERE datname LIKE "
                           f"'{target}%'", "postgres").strip() == "0"
    assert scratch_left(shop) == []


def test_failing_post_data_fails_the_restore_and_leaves_the_target(sandbox, pg_cluster,
                                                                   monkeypatch):
    monkeypatch.setattr(rdp, "post_jobs", lambda: 2)
    name = f"grd_{uuid.uuid4().hex[:8]}"
    pg_cluster.createdb(name)
    pg_cluster.psql("CREATE TABLE keep (id int PRIMARY KEY, v text);"
                    "INSERT INTO keep SELECT g, md5(g::text) FROM generate_series(1, 500) g;"
                    + GUARD, name)
    sandbox.extra = f'[[database]]\nname = "g"\ndsn = "{pg_cluster.dsn(name)}"\n'
    sandbox.write_config()
    eng = sandbox.engine(init=True)
    res = eng.backup("db", "g")
    pg_cluster.psql("DELETE FROM keep WHERE id > 100", name)
    before = pg_cluster.psql("SELECT count(*) || md5(string_agg(k::text, ',' ORDER BY id)) "
                             "FROM keep k", name)
    plan = eng.plan_restore(res.id, target_db=name, replace=True)
    with pytest.raises(EngineError) as e:
        eng.restore(plan)
    text = str(e.value)
    assert "(post-data)" in text and "u_guard" in text and "was not changed" in text
    assert pg_cluster.psql("SELECT count(*) || md5(string_agg(k::text, ',' ORDER BY id)) "
                           "FROM keep k", name) == before
    assert pg_cluster.psql("SELECT count(*) FROM pg_database WHERE datname LIKE "
                           f"'{name}\\_\\_%'", "postgres").strip() == "0"
    assert scratch_left(sandbox) == []


LISTING = """;
; Archive created at 2026-11-30 19:42:39 UTC
;
216; 1259 16392 TABLE public a postgres
3380; 0 0 COMMENT public TABLE a postgres
3381; 0 0 ACL public TABLE a postgres
3382; 826 16444 DEFAULT ACL - DEFAULT PRIVILEGES FOR TABLES postgres
3371; 0 16392 TABLE DATA public a postgres
3372; 0 16395 TABLE DATA public b postgres
3390; 0 16399 SEQUENCE SET public s postgres
3373; 0 16434 TABLE DATA public c postgres
3216; 2606 16407 CONSTRAINT public a a_pkey postgres
3226; 2606 16413 FK CONSTRAINT public b b_fkey postgres
"""


def test_lists_put_every_entry_in_one_step_and_acls_last():
    lines = [ln for ln in LISTING.splitlines() if not ln.startswith(";")]
    pre_listing = "\n".join(lines[:4])
    data_listing = "\n".join(lines[4:8])
    pre, data, post = rdp.split_lists(LISTING, pre_listing, data_listing)
    assert [ln.split(";")[0] for ln in pre] == ["216", "3380"]
    assert [ln.split(";")[0] for ln in data] == ["3371", "3372", "3390", "3373"]
    assert [ln.split(";")[0] for ln in post] == ["3216", "3226", "3381", "3382"]
    assert sorted(pre + data + post) == sorted(lines)
