"""restore db brings back the database itself, and leaves the server's roles alone.

A real cluster (the pg_cluster fixture) and real clients: the restored database is
compared with the original by ``pg_dump --schema-only --create`` (which also prints
the database's owner, locale, comment, ACL and settings) with the names normalised,
by row hashes per table, by its pg_database row and pg_db_role_setting rows, by
has_database_privilege, and the application's role runs its query unchanged with
psql (``SELECT count(*) FROM orders``, which finds ``app.orders`` only through the
database's search_path). Roles are shared by the whole cluster, so every test makes
its own, with a random suffix.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass

import pytest

from engine.errors import EngineError

ORDERS = 240  # rows in app.orders
NAMES = ["a", "B", "ä", "z", "Å", "o", "Ö", "b"]  # their order differs between C and ICU sv-SE


@dataclass
class Shop:
    db: str
    owner: str  # owns the database and its objects
    app: str  # the application's login role
    gone: str  # named by a policy; dropped after the backup in some tests
    icu: bool  # the database uses the ICU provider (the server supports it)


def icu_supported(cluster) -> bool:
    return cluster.psql("SELECT count(*) FROM pg_collation WHERE collprovider = 'i'").strip() \
        != "0"


def make_shop(cluster) -> Shop:
    sfx = uuid.uuid4().hex[:6]
    shop = Shop(f"fid_{sfx}", f"fid_owner_{sfx}", f"fid_app_{sfx}",
                f"fid_gone_{sfx}", icu_supported(cluster))
    cluster.psql(f"CREATE ROLE {shop.owner} NOLOGIN; "
                 f"CREATE ROLE {shop.app} LOGIN PASSWORD 'app-pass-1'; "
                 f"CREATE ROLE {shop.gone} NOLOGIN")
    create = f"CREATE DATABASE {shop.db} OWNER {shop.owner} TEMPLATE template0"
    if shop.icu:
        create += " LOCALE_PROVIDER icu ICU_LOCALE 'sv-SE'"
    cluster.psql(create)
    cluster.psql(f"""
        COMMENT ON DATABASE {shop.db} IS 'orders of the shop';
        REVOKE CONNECT ON DATABASE {shop.db} FROM PUBLIC;
        GRANT CONNECT ON DATABASE {shop.db} TO {shop.app};
        ALTER DATABASE {shop.db} SET search_path = app, public;
        ALTER ROLE {shop.app} IN DATABASE {shop.db} SET statement_timeout = '7s';
    """)
    names = ", ".join(f"'{n}'" for n in NAMES)
    cluster.psql(f"""
        CREATE SCHEMA app AUTHORIZATION {shop.owner};
        SET ROLE {shop.owner};
        CREATE TABLE app.customers (id serial PRIMARY KEY, name text NOT NULL);
        CREATE INDEX customers_name ON app.customers (name);
        INSERT INTO app.customers (name) SELECT n FROM unnest(ARRAY[{names}]) n;
        CREATE TABLE app.orders (id serial PRIMARY KEY, customer int REFERENCES app.customers,
                                 total numeric(10, 2), note text);
        INSERT INTO app.orders (customer, total, note)
          SELECT 1 + g % {len(NAMES)}, (g * 7 % 1000) / 10.0, md5(g::text)
          FROM generate_series(1, {ORDERS}) g;
        ALTER TABLE app.orders ENABLE ROW LEVEL SECURITY;
        CREATE POLICY app_all ON app.orders TO {shop.app} USING (true);
        CREATE POLICY gone_reads ON app.orders FOR SELECT TO {shop.gone} USING (total > 0);
        GRANT USAGE ON SCHEMA app TO {shop.app};
        GRANT SELECT ON ALL TABLES IN SCHEMA app TO {shop.app};
        RESET ROLE;
    """, shop.db)
    return shop


def drop_role(cluster, db: str, role: str) -> None:
    """Drop a role the way an operator would: its policies and grants go first."""
    cluster.psql(f"DROP OWNED BY {role}", db)
    cluster.psql(f"DROP ROLE {role}")


def configure(sandbox, cluster, db: str, fmt: str = "custom") -> None:
    sandbox.extra = (f'[[database]]\nname = "shop"\ndsn = "{cluster.dsn(db)}"\n'
                     + ('format = "directory"\njobs = 2\n' if fmt == "directory" else ""))
    sandbox.write_config()


# --------------------------------------------------------------- comparisons
def schema_dump(cluster, db: str) -> str:
    """pg_dump --schema-only --create, database name and psql's random keys normalised."""
    out = subprocess.run([str(cluster.bin_dir / "pg_dump"), "--schema-only", "--create",
                          "-d", db], capture_output=True, text=True, check=True,
                         env=cluster.client_environ(db)).stdout
    lines = [ln for ln in out.splitlines() if not ln.startswith(("\\restrict", "\\unrestrict"))]
    return "\n".join(lines).replace(db, "DBNAME")


def row_hashes(cluster, db: str) -> dict[str, str]:
    tables = cluster.psql("SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                          "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') "
                          "ORDER BY 1", db).splitlines()
    return {t: cluster.psql(f"SELECT count(*) || ':' || md5(coalesce(string_agg(x::text, ',' "
                            f"ORDER BY x::text), '')) FROM {t} x", db).strip()
            for t in tables}


def database_row(cluster, db: str) -> str:
    return cluster.psql(
        "SELECT pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datlocprovider, "
        "d.datcollate, d.datctype, d.daticulocale, d.datconnlimit, d.datacl::text, t.spcname, "
        "shobj_description(d.oid, 'pg_database') FROM pg_database d "
        f"JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.datname = '{db}'").strip()


def role_settings(cluster, db: str) -> str:
    return cluster.psql(
        "SELECT coalesce(r.rolname, '-') || ' ' || s.setconfig::text FROM pg_db_role_setting s "
        "JOIN pg_database d ON d.oid = s.setdatabase LEFT JOIN pg_roles r ON r.oid = s.setrole "
        f"WHERE d.datname = '{db}' ORDER BY 1").strip()


def privileges(cluster, db: str, app: str) -> tuple[str, ...]:
    return tuple(cluster.psql(
        f"SELECT has_database_privilege('public', '{db}', '{p}'), "
        f"has_database_privilege('{app}', '{db}', '{p}')").strip()
        for p in ("CONNECT", "TEMPORARY", "CREATE"))


def ordered_names(cluster, db: str) -> str:
    """The order of an ORDER BY and of an index scan (collation-dependent)."""
    return cluster.psql("SET enable_seqscan = off; SELECT string_agg(name, ',' ORDER BY name) "
                        "FROM app.customers", db).strip()


def state(cluster, db: str, app: str) -> dict:
    return {"schema": schema_dump(cluster, db), "rows": row_hashes(cluster, db),
            "pg_database": database_row(cluster, db), "settings": role_settings(cluster, db),
            "privileges": privileges(cluster, db, app), "order": ordered_names(cluster, db)}


def as_app(cluster, db: str, role: str, query: str,
           password: str = "") -> subprocess.CompletedProcess:
    """psql as the application's role, over TCP, the query unchanged."""
    env = {**cluster.client_environ(db), "PGUSER": role, "PGPASSWORD": password}
    return subprocess.run([str(cluster.bin_dir / "psql"), "-X", "-A", "-t", "-v",
                           "ON_ERROR_STOP=1", "-c", query], capture_output=True, text=True,
                          env=env, timeout=60)


def password_hash(cluster, role: str) -> str:
    return cluster.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'").strip()


def assert_same(before: dict, after: dict) -> None:
    assert after["rows"] == before["rows"]
    assert after["pg_database"] == before["pg_database"]
    assert after["settings"] == before["settings"]
    assert after["privileges"] == before["privileges"]
    assert after["order"] == before["order"]
    assert after["schema"] == before["schema"]


def assert_app_works(cluster, db: str, shop: Shop) -> None:
    q = as_app(cluster, db, shop.app, "SELECT count(*) FROM orders")
    assert q.returncode == 0, q.stderr
    assert q.stdout.strip() == str(ORDERS)
    assert as_app(cluster, db, shop.app, "SHOW statement_timeout").stdout.strip() == "7s"
    # and PUBLIC may not connect: a role without the grant is refused
    other = as_app(cluster, db, cluster.app_user, "SELECT 1", cluster.app_password)
    assert other.returncode != 0 and "permission denied for database" in other.stderr


def new_name(shop: Shop) -> str:
    return f"{shop.db}_copy"


# --------------------------------------------------------------------- tests
def test_backup_records_the_database_properties(sandbox, pg_cluster):
    shop = make_shop(pg_cluster)
    configure(sandbox, pg_cluster, shop.db)
    eng = sandbox.engine(init=True)
    props = eng.snapshot(eng.backup("db", "shop").id)["postgres"]["database"]
    assert props["name"] == shop.db and props["owner"] == shop.owner
    assert props["encoding"] == "UTF8" and props["comment"] == "orders of the shop"
    assert props["settings"] == ["search_path=app, public"]
    assert props["role_settings"] == {shop.app: ["statement_timeout=7s"]}
    assert props["tablespace"] == "pg_default" and props["connection_limit"] == -1
    grants = {(e["grantee"], e["privilege"]) for e in props["acl"]}
    assert (None, "TEMPORARY") in grants and (None, "CONNECT") not in grants
    assert (shop.app, "CONNECT") in grants
    if shop.icu:
        assert props["locale_provider"] == "icu" and props["icu_locale"] == "sv-SE"


def test_icu_locale_is_restored_with_its_collation_order(sandbox, pg_cluster):
    if not icu_supported(pg_cluster):
        pytest.skip("this PostgreSQL build has no ICU (pg_collation has no provider 'i'): "
                    "the ICU locale property cannot be tested here")
    shop = make_shop(pg_cluster)
    configure(sandbox, pg_cluster, shop.db)
    eng = sandbox.engine(init=True)
    res = eng.backup("db", "shop")
    target = new_name(shop)
    eng.restore(eng.plan_restore(res.id, target_db=target))
    row = pg_cluster.psql("SELECT datlocprovider::text || ' ' || daticulocale FROM pg_database "
                          f"WHERE datname = '{target}'").strip()
    assert row == "i sv-SE"
    order = ordered_names(pg_cluster, target)
    assert order == ordered_names(pg_cluster, shop.db)
    assert order != ",".join(sorted(NAMES))  # not the C (byte) order: the locale matters
    check = pg_cluster.psql("SELECT count(*) FROM app.customers WHERE name = 'ä'", target)
    assert check.strip() == "1"  # the index answers


def test_new_name_missing_policy_role_then_create_missing_roles(sandbox, pg_cluster):
    """A policy names a role that was dropped after the backup: the error says which role
    and which objects; --no-owner --no-acl is not offered as a fix (it would not work);
    --create-missing-roles restores everything, and no existing role changes."""
    shop = make_shop(pg_cluster)
    configure(sandbox, pg_cluster, shop.db)
    eng = sandbox.engine(init=True)
    before = state(pg_cluster, shop.db, shop.app)
    res = eng.backup("db", "shop")
    drop_role(pg_cluster, shop.db, shop.gone)
    pg_cluster.psql(f"ALTER ROLE {shop.app} PASSWORD 'app-pass-2'")  # rotated after the backup
    rotated = password_hash(pg_cluster, shop.app)
    target = new_name(shop)

    plan = eng.plan_restore(res.id, target_db=target)
    assert plan.missing_roles == [shop.gone]
    assert "POLICY gone_reads ON app.orders" in plan.summary()["missing_roles"][shop.gone]
    with pytest.raises(EngineError) as e:
        eng.restore(plan)
    msg = str(e.value)
    assert f"role {shop.gone}: POLICY gone_reads ON app.orders" in msg
    assert "--create-missing-roles" in msg and "cannot help" in msg
    assert pg_cluster.psql(f"SELECT count(*) FROM pg_database WHERE datname LIKE '{target}%'"
                           ).strip() == "0"

    # the CLI says the same, and --no-owner --no-acl indeed does not get it through
    proc = sandbox.cli("restore", "db", res.id, "--target-db", target, "--no-owner", "--no-acl")
    assert proc.returncode == 1
    assert shop.gone.encode() in proc.stderr and b"gone_reads" in proc.stderr

    proc = sandbox.cli("restore", "db", res.id, "--target-db", target, "--create-missing-roles",
                       "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    notes = "\n".join(out["notes"])
    assert f"created role {shop.gone}" in notes
    assert f"applied owner {shop.owner}" in notes and "applied comment" in notes
    assert "applied ACL" in notes and "SET search_path=app, public" in notes
    assert f"ALTER ROLE {shop.app} IN DATABASE {target} SET statement_timeout=7s" in notes
    assert_same(before, state(pg_cluster, target, shop.app))
    assert_app_works(pg_cluster, target, shop)
    assert password_hash(pg_cluster, shop.app) == rotated  # existing roles untouched
    login = pg_cluster.psql(f"SELECT rolcanlogin FROM pg_roles WHERE rolname = '{shop.gone}'")
    assert login.strip() == "f"  # created as it was saved (NOLOGIN)


def test_replace_keeps_the_application_working(sandbox, pg_cluster):
    """--replace on the production name: the restore-aside database gets every property
    before the swap, so the application's unqualified query still finds its table."""
    shop = make_shop(pg_cluster)
    configure(sandbox, pg_cluster, shop.db)
    eng = sandbox.engine(init=True)
    before = state(pg_cluster, shop.db, shop.app)
    res = eng.backup("db", "shop")
    pg_cluster.psql("DELETE FROM app.orders WHERE id > 10", shop.db)  # the accident
    pg_cluster.psql(f"ALTER ROLE {shop.app} PASSWORD 'app-pass-2'")
    rotated = password_hash(pg_cluster, shop.app)
    proc = sandbox.cli("restore", "db", res.id, "--target-db", shop.db, "--replace", "--yes")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.decode()
    assert "kept as" in text and f"applied owner {shop.owner}" in text
    assert f"ALTER DATABASE {shop.db} SET search_path=app, public" in text
    assert_same(before, state(pg_cluster, shop.db, shop.app))
    assert_app_works(pg_cluster, shop.db, shop)
    assert password_hash(pg_cluster, shop.app) == rotated
    old = pg_cluster.psql(f"SELECT datname FROM pg_database WHERE datname LIKE "
                          f"'{shop.db}__old_%'").strip()
    assert pg_cluster.psql("SELECT count(*) FROM app.orders", old).strip() == "10"


def test_with_globals_shows_the_changes_and_needs_yes(sandbox, pg_cluster):
    shop = make_shop(pg_cluster)
    configure(sandbox, pg_cluster, shop.db)
    eng = sandbox.engine(init=True)
    saved = password_hash(pg_cluster, shop.app)
    res = eng.backup("db", "shop")
    pg_cluster.psql(f"ALTER ROLE {shop.app} PASSWORD 'app-pass-2' CREATEDB")
    rotated = password_hash(pg_cluster, shop.app)
    target = new_name(shop)
    proc = sandbox.cli("restore", "db", res.id, "--target-db", target, "--with-globals")
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert f"role {shop.app}: password would be set back" in err
    assert f"role {shop.app}: CREATEDB -> NOCREATEDB" in err and "--yes" in err
    assert "SCRAM-SHA-256" not in err and saved not in err and rotated not in err
    assert password_hash(pg_cluster, shop.app) == rotated
    assert pg_cluster.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{target}'"
                           ).strip() == "0"
    # a restore without the flag leaves the rotated password alone
    proc = sandbox.cli("restore", "db", res.id, "--target-db", target)
    assert proc.returncode == 0, proc.stderr
    assert password_hash(pg_cluster, shop.app) == rotated
    # the explicit opt-in applies the saved roles
    proc = sandbox.cli("restore", "db", res.id, "--target-db", target + "_g", "--with-globals",
                       "--yes")
    assert proc.returncode == 0, proc.stderr
    assert "SCRAM-SHA-256" not in proc.stderr.decode()
    assert password_hash(pg_cluster, shop.app) == saved


def test_missing_owner_only_no_owner_no_acl_works(sandbox, pg_cluster):
    """A role that only owns objects and holds grants (directory format): the error offers
    --no-owner --no-acl, and that works; objects then belong to the restoring user."""
    shop = make_shop(pg_cluster)
    owner = shop.owner
    blob = pg_cluster.psql(f"SET ROLE {owner}; SELECT lo_from_bytea(0, 'kept')", shop.db).strip()
    configure(sandbox, pg_cluster, shop.db, fmt="directory")
    eng = sandbox.engine(init=True)
    before = row_hashes(pg_cluster, shop.db)
    res = eng.backup("db", "shop")
    pg_cluster.psql(f"DROP DATABASE {shop.db} WITH (FORCE)")  # the server lost both
    pg_cluster.psql(f"DROP ROLE {owner}")
    target = new_name(shop)
    with pytest.raises(EngineError) as e:
        eng.restore(eng.plan_restore(res.id, target_db=target))
    msg = str(e.value)
    assert f"role {owner}: owner of the database itself" in msg
    assert "owner of TABLE app.orders" in msg and "or --no-owner --no-acl" in msg
    assert f"owner of LARGE OBJECT {blob}" in msg  # large objects are in the pre-check too
    assert "cannot help" not in msg
    result = eng.restore(eng.plan_restore(res.id, target_db=target, no_owner=True, no_acl=True))
    assert row_hashes(pg_cluster, target) == before
    assert pg_cluster.psql(f"SELECT convert_from(lo_get({blob}), 'UTF8')", target).strip() \
        == "kept"
    assert pg_cluster.psql(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = "
                           f"'{target}'").strip() == pg_cluster.superuser
    assert any("owner not restored" in n for n in result.notes)
    assert any(owner in w and "left out" in w for w in result.warnings)
    # the database's own ACL still shuts PUBLIC out
    assert privileges(pg_cluster, target, shop.app)[0] == "f|t"


def test_snapshot_without_properties_still_restores(sandbox, pg_cluster):
    """Snapshots taken before the properties were saved restore as before, and say so."""
    shop = make_shop(pg_cluster)
    configure(sandbox, pg_cluster, shop.db)
    eng = sandbox.engine(init=True)
    snap = dict(eng.snapshot(eng.backup("db", "shop").id))
    snap["postgres"] = {k: v for k, v in snap["postgres"].items() if k != "database"}
    target = new_name(shop)
    result = eng.restore(eng.plan_restore(snap, target_db=target))
    assert row_hashes(pg_cluster, target) == row_hashes(pg_cluster, shop.db)
    assert any("before database properties were saved" in n for n in result.notes)


def test_odd_names_settings_and_grant_chains_round_trip(sandbox, pg_cluster):
    """Quoted role names, list settings with quoted elements, a custom setting, a comment
    with a quote, a connection limit, and an ACL entry granted by a role other than the
    owner (WITH GRANT OPTION): all come back the same."""
    sfx = uuid.uuid4().hex[:6]
    db, owner, odd, app = f"fid_odd_{sfx}", f"fid_o_{sfx}", f"Fid Odd {sfx}", f"fid_a_{sfx}"
    pg_cluster.psql(f'CREATE ROLE {owner}; CREATE ROLE "{odd}" LOGIN; CREATE ROLE {app} LOGIN')
    pg_cluster.psql(f"CREATE DATABASE {db} OWNER {owner}")
    pg_cluster.psql(f"""
        COMMENT ON DATABASE {db} IS 'it''s the "odd" one';
        ALTER DATABASE {db} CONNECTION LIMIT 17;
        REVOKE ALL ON DATABASE {db} FROM PUBLIC;
        GRANT CONNECT ON DATABASE {db} TO "{odd}" WITH GRANT OPTION;
        SET ROLE "{odd}";
        GRANT CONNECT ON DATABASE {db} TO {app};
        RESET ROLE;
        ALTER DATABASE {db} SET search_path = "Odd, Schema", "$user", public;
        ALTER DATABASE {db} SET DateStyle = 'ISO, DMY';
        ALTER DATABASE {db} SET myapp.tenant = 'a b';
        ALTER ROLE "{odd}" IN DATABASE {db} SET search_path = public;
    """)
    pg_cluster.psql('CREATE SCHEMA "Odd, Schema"; CREATE TABLE "Odd, Schema"."t TO x" (a int); '
                    f'GRANT SELECT ON "Odd, Schema"."t TO x" TO "{odd}"; '
                    'INSERT INTO "Odd, Schema"."t TO x" VALUES (1), (2)', db)
    configure(sandbox, pg_cluster, db)
    eng = sandbox.engine(init=True)
    res = eng.backup("db", "shop")
    target = f"{db}_copy"
    plan = eng.plan_restore(res.id, target_db=target)
    assert plan.missing_roles == []
    assert any(u.role == odd and "t TO x" in u.what for u in plan.uses)
    result = eng.restore(plan)
    assert database_row(pg_cluster, target) == database_row(pg_cluster, db)
    assert "Fid Odd" in database_row(pg_cluster, target)  # the grantor chain is there
    assert role_settings(pg_cluster, target) == role_settings(pg_cluster, db)
    assert schema_dump(pg_cluster, target) == schema_dump(pg_cluster, db)
    assert row_hashes(pg_cluster, target) == row_hashes(pg_cluster, db)
    assert any("connection limit 17" in n for n in result.notes)
    assert result.warnings == []


def test_role_references_are_read_from_sql_not_guessed():
    """Names inside quotes, strings and function bodies are never taken for roles."""
    from engine.ops.restore_db import _guc_list
    from engine.sources.postgres import archive_role_uses

    text = '''
--
-- Name: f(); Type: FUNCTION; Schema: public; Owner: alice
--

CREATE FUNCTION public.f() RETURNS text LANGUAGE sql AS $_$ SELECT 'GRANT x TO mallory' $_$;


ALTER FUNCTION public.f() OWNER TO alice;

--
-- Name: TABLE "a TO b"; Type: ACL; Schema: public; Owner: alice
--

GRANT SELECT(c) ON TABLE public."a TO b" TO "Bob Smith", carol WITH GRANT OPTION;
SET SESSION AUTHORIZATION "Bob Smith";
GRANT SELECT ON TABLE public."a TO b" TO PUBLIC;
RESET SESSION AUTHORIZATION;

--
-- Name: t p; Type: POLICY; Schema: public; Owner: alice
--

CREATE POLICY p ON public.t AS RESTRICTIVE FOR SELECT TO dave, CURRENT_USER
  USING ((c = 'TO eve'::text));

--
-- Name: USER MAPPING frank SERVER s; Type: USER MAPPING; Schema: -; Owner: alice
--

CREATE USER MAPPING FOR frank SERVER s OPTIONS (password 'TO zed');
'''
    uses = {(u.role, u.what, u.skip_with) for u in archive_role_uses(text)}
    assert uses == {
        ("alice", "owner of FUNCTION public.f()", "owner"),
        ("Bob Smith", 'privileges on TABLE "a TO b" in schema public', "acl"),
        ("carol", 'privileges on TABLE "a TO b" in schema public', "acl"),
        ("dave", "POLICY p ON public.t", ""),
        ("frank", "USER MAPPING frank SERVER s", ""),
    }
    assert _guc_list('"Odd, Schema", "$user", public') == ["Odd, Schema", "$user", "public"]
    assert _guc_list('""') == [""]


def test_replace_failing_after_the_data_leaves_the_original_serving(sandbox, pg_cluster,
                                                                    tmp_path, monkeypatch):
    """pg_restore fails after loading everything (its last step, the parallel post-data
    one, the only call with --jobs): the restore-aside database is dropped, and the
    original keeps its data, its properties and its application."""
    shop = make_shop(pg_cluster)
    configure(sandbox, pg_cluster, shop.db)
    eng = sandbox.engine(init=True)
    res = eng.backup("db", "shop")
    pg_cluster.psql("DELETE FROM app.orders WHERE id > 100", shop.db)
    before = state(pg_cluster, shop.db, shop.app)
    plan = eng.plan_restore(res.id, target_db=shop.db, replace=True)
    real = pg_cluster.bin_dir / "pg_restore"
    fake = tmp_path / "pg_restore"
    fake.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then exec {real} --version; fi\n'
                    f'{real} "$@" || exit $?\n'
                    'case "$*" in *--jobs=*) ;; *) exit 0 ;; esac\n'
                    'echo "pg_restore: error: simulated" >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("BACKUP_TUI_PG_RESTORE", str(fake))
    with pytest.raises(EngineError, match="simulated") as e:
        eng.restore(plan)
    assert f"database {shop.db!r} was not changed" in str(e.value)
    assert state(pg_cluster, shop.db, shop.app) == before
    leftovers = pg_cluster.psql(f"SELECT datname FROM pg_database WHERE datname LIKE "
                                f"'{shop.db}\\_\\_%'")
    assert leftovers.strip() == ""
    q = as_app(pg_cluster, shop.db, shop.app, "SELECT count(*) FROM orders")
    assert q.returncode == 0 and q.stdout.strip() == "100"
