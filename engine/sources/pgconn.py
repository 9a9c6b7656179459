"""Connections to PostgreSQL for the logical source: where, as whom, with which tools.

A ``[[database]]`` gets its connection from ``dsn``, else ``$DATABASE_URL`` (what
the application itself uses), else libpq's own defaults (``PG*`` variables,
``~/.pgpass``). Client programs (pg_dump, pg_restore, psql) receive it only as
``PG*`` environment variables, never as command-line arguments that ``ps``
would show. The client binary is chosen to match the server's major version.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from engine.errors import ConfigError, EngineError

_ENV_KEYS = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "dbname": "PGDATABASE",
    "passfile": "PGPASSFILE",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "application_name": "PGAPPNAME",
    "options": "PGOPTIONS",
}


@dataclass(frozen=True)
class PgTarget:
    """Where one configured database lives. ``params`` may hold a password: never log it."""

    name: str  # the [[database]] name
    params: dict[str, str]
    origin: str  # "config", "DATABASE_URL" or "libpq defaults"

    @property
    def dbname(self) -> str:
        return self.params.get("dbname") or os.environ.get("PGDATABASE") or self.user

    @property
    def user(self) -> str:
        return self.params.get("user") or os.environ.get("PGUSER") or _os_user()

    @property
    def where(self) -> str:
        """host:port/db for messages, without credentials."""
        host = self.params.get("host") or os.environ.get("PGHOST") or "local socket"
        port = self.params.get("port") or os.environ.get("PGPORT") or "5432"
        return f"{host}:{port}/{self.dbname}"

    def with_db(self, dbname: str) -> PgTarget:
        return PgTarget(self.name, {**self.params, "dbname": dbname}, self.origin)

    def env(self) -> dict[str, str]:
        """The environment for a client program: ours (PG* included, as libpq reads them
        for whatever the dsn leaves out), with the target's settings over it."""
        env = dict(os.environ)
        for key, value in self.params.items():
            var = _ENV_KEYS.get(key)
            if var and value:
                env[var] = str(value)
        env.setdefault("PGCONNECT_TIMEOUT", "10")
        return env

    def connect(self, dbname: str | None = None):
        params = dict(self.params)
        if dbname:
            params["dbname"] = dbname
        params.setdefault("connect_timeout", "10")
        import psycopg2  # here, not at the top: a files backup imports this module

        try:
            conn = psycopg2.connect(**params)
        except psycopg2.OperationalError as e:
            raise EngineError(explain_connect_error(self, str(e), dbname)) from None
        conn.autocommit = True
        return conn


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "postgres"


def resolve(db) -> PgTarget:
    """The connection of a [[database]] entry (a DatabaseConfig), and where it came from."""
    dsn, origin = db.dsn or "", "config"
    if not dsn:
        dsn = os.environ.get("DATABASE_URL", "")
        origin = "DATABASE_URL" if dsn else "libpq defaults"
    import psycopg2.extensions

    try:
        params = psycopg2.extensions.parse_dsn(dsn) if dsn else {}
    except psycopg2.ProgrammingError as e:
        raise ConfigError(f"database {db.name!r}: cannot parse dsn from {origin}: {e}") from None
    if origin == "config" and params.get("password"):
        raise ConfigError(
            f"database {db.name!r}: the dsn in the config file holds a password; put it in "
            "~/.pgpass or a passfile (dsn ...?passfile=/etc/backup-tui/pgpass) instead"
        )
    return PgTarget(db.name, params, origin)


def explain_connect_error(t: PgTarget, text: str, dbname: str | None = None) -> str:
    first = text.strip().splitlines()[0] if text.strip() else "unknown error"
    where = t.with_db(dbname).where if dbname else t.where
    low = text.lower()
    if "password authentication failed" in low or "no password supplied" in low:
        why = f"authentication failed for user {t.user!r}"
    elif "does not exist" in low and "database" in low:
        why = f"database {dbname or t.dbname!r} does not exist"
    elif "connection refused" in low or "could not connect" in low or "timeout" in low:
        why = "server unreachable (is it running, and are host and port right?)"
    else:
        why = first
    return f"database {t.name!r}: cannot connect to {where}: {why} [{first}]"


def server_facts(t: PgTarget) -> dict:
    conn = t.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT current_setting('server_version_num')::int, version(), "
                "pg_database_size(current_database()), current_database()"
            )
            num, full, size, dbname = cur.fetchone()
            props = database_properties(cur, num)
    finally:
        conn.close()
    return {
        "server_version_num": num,
        "server_major": num // 10000,
        "server_version": full.split(" on ")[0],
        "database_size": size,
        "dbname": dbname,
        "database": props,
    }


def database_properties(cur, version_num: int, dbname: str | None = None) -> dict:
    """The database's own properties, which pg_dump without --create leaves out: owner,
    encoding and locale, tablespace, comment, ACL, ``ALTER DATABASE .. SET`` and
    ``ALTER ROLE .. IN DATABASE .. SET`` (docs/FORMAT.md, section 6.2)."""
    provider = locale = rules = collversion = "NULL"
    if version_num >= 150000:
        provider, collversion = "d.datlocprovider::text", "d.datcollversion"
        locale = "d.datlocale" if version_num >= 170000 else "d.daticulocale"
    if version_num >= 160000:
        rules = "d.daticurules"
    cur.execute(
        "SELECT d.oid, d.datname, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), "
        f"d.datcollate, d.datctype, {provider}, {locale}, {rules}, {collversion}, "
        "d.datconnlimit, d.datallowconn, d.datistemplate, t.spcname, "
        "shobj_description(d.oid, 'pg_database') "
        "FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace "
        "WHERE d.datname = COALESCE(%s, current_database())", (dbname,))
    (oid, name, owner, encoding, collate, ctype, prov, loc, icu_rules, coll_version, connlimit,
     allow, template, tablespace, comment) = cur.fetchone()
    provider_name = {"c": "libc", "i": "icu", "b": "builtin"}.get(prov or "c", prov)
    cur.execute(
        "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, "
        "pg_get_userbyid(a.grantor), a.privilege_type, a.is_grantable "
        "FROM pg_database d, aclexplode(d.datacl) WITH ORDINALITY a "
        "WHERE d.oid = %s AND d.datacl IS NOT NULL ORDER BY a.ordinality", (oid,))
    acl_rows = cur.fetchall()
    cur.execute("SELECT datacl IS NULL FROM pg_database WHERE oid = %s", (oid,))
    default_acl = cur.fetchone()[0]
    cur.execute(
        "SELECT r.rolname, s.setconfig FROM pg_db_role_setting s "
        "LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = %s "
        "ORDER BY r.rolname NULLS FIRST", (oid,))
    settings: list[str] = []
    role_settings: dict[str, list[str]] = {}
    for role, config in cur.fetchall():
        if role is None:
            settings = list(config or [])
        else:
            role_settings[role] = list(config or [])
    return {
        "name": name,
        "owner": owner,
        "encoding": encoding,
        "locale_provider": provider_name,
        "collate": collate,
        "ctype": ctype,
        "icu_locale": loc if provider_name == "icu" else None,
        "builtin_locale": loc if provider_name == "builtin" else None,
        "icu_rules": icu_rules,
        "collation_version": coll_version,
        "tablespace": tablespace,
        "connection_limit": connlimit,
        "allow_connections": allow,
        "is_template": template,
        "comment": comment,
        "acl": None if default_acl else [
            {"grantee": grantee, "grantor": grantor, "privilege": priv, "grantable": grantable}
            for grantee, grantor, priv, grantable in acl_rows],
        "settings": settings,
        "role_settings": role_settings,
    }


def existing_roles(cur) -> set[str]:
    cur.execute("SELECT rolname FROM pg_roles")
    return {r for (r,) in cur.fetchall()}


def _tool_version(path: str) -> tuple[int, str]:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as e:
        raise EngineError(f"cannot run {path}: {e.strerror}") from None
    m = re.search(r"(\d+)(?:\.(\d+))?", out.stdout)
    if not m:
        raise EngineError(f"cannot tell the version of {path}: {out.stdout.strip()!r}")
    return int(m.group(1)), out.stdout.strip()


def find_tool(tool: str, server_major: int) -> tuple[str, str]:
    """The client program for a server: the same major if installed, else the newest.

    Refuses a tool older than the server (pg_dump cannot dump a newer server).
    """
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    exact = f"/usr/lib/postgresql/{server_major}/bin/{tool}"
    override = os.environ.get(f"BACKUP_TUI_{tool.upper()}")
    if override:
        choice = override
    elif os.path.exists(exact):
        choice = exact
    elif candidates:
        choice = candidates[-1]
    else:
        choice = shutil.which(tool) or ""
    if not choice:
        raise EngineError(
            f"{tool} not found: install the PostgreSQL client for server version "
            f"{server_major} (Debian: apt-get install postgresql-client-{server_major})"
        )
    major, text = _tool_version(choice)
    if major < server_major:
        raise EngineError(
            f"{tool} at {choice} is version {major} but the server is version {server_major}: "
            f"{tool} must be at least the server's version (install postgresql-client-"
            f"{server_major})"
        )
    return choice, text
