#!/usr/bin/env python3
"""Seeded test databases for bench/run_db.py: pgbench and an application-like one.

Both are generated inside PostgreSQL (``generate_series``, ``random()`` after
``setseed``, ``md5()``), so a 1 GB database takes about a minute, not the time a
client would need to send it. The text is never periodic (periodic text gives
a content-defined chunker no cut points and would flatter or wreck dedup).

The application-like database ("app"), for ``--mib`` M (default 1024 = about
1 GB as ``pg_database_size`` counts it, indexes included):

- ``users``: ~200k rows per GiB (id, email, name, plan, created_at, last_login,
  a JSON settings text with a random token); ~5% of the database.
- ``documents``: ~75k rows per GiB, mostly static; ``body`` is ~2-8 KB of
  "words" drawn with a skewed (Zipf-like) distribution from a 3000-word
  vocabulary of md5-derived hex strings, with sentence breaks; ~33%.
- ``events``: ~2.85M rows per GiB, append-only: id, user_id, kind, created_at
  (monotonic), a JSON payload (ip, session md5, path, ms); ~60%, with its primary
  key and a (user_id, created_at) index.

Day 2 (``app_day2``): 1% new events appended (ids and times after the last
ones), 0.1% of users updated (last_login, settings token).

pgbench: ``pgbench -i -s S`` (``gen_pgbench``), day 2 ``pgbench -T 30``
(``pgbench_day2``).

As a script (against any server, e.g. to try the SQL)::

    .venv/bin/python bench/gen_db.py app --mib 64 --dsn postgresql://postgres@127.0.0.1:PORT/app
    .venv/bin/python bench/gen_db.py app-day2 --mib 64 --dsn ...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

# rows per 1024 MiB
USERS_PER_GIB = 200_000
DOCS_PER_GIB = 75_000
EVENTS_PER_GIB = 2_850_000


def counts(mib: int) -> dict[str, int]:
    f = mib / 1024
    return {
        "users": max(1000, int(USERS_PER_GIB * f)),
        "documents": max(500, int(DOCS_PER_GIB * f)),
        "events": max(10_000, int(EVENTS_PER_GIB * f)),
    }


def app_sql(mib: int, seed: float = 0.42) -> list[str]:
    """Statements (each run in its own psql session) creating the app database's tables."""
    c = counts(mib)
    users, docs, events = c["users"], c["documents"], c["events"]
    return [
        f"""
SELECT setseed({seed});
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, name text NOT NULL,
  plan text NOT NULL, created_at timestamptz NOT NULL, last_login timestamptz,
  settings text NOT NULL);
INSERT INTO users SELECT g,
  'user' || g || '@' || substr(md5(random()::text), 1, 6 + (random()*6)::int) || '.example',
  initcap(substr(md5(random()::text), 1, 4 + (random()*6)::int)) || ' '
    || initcap(substr(md5(random()::text), 1, 5 + (random()*8)::int)),
  (ARRAY['free','free','free','pro','team','enterprise'])[1 + floor(random()*6)::int],
  timestamptz '2019-01-01' + random() * interval '1800 days',
  timestamptz '2024-01-01' + random() * interval '300 days',
  '{{"theme":"' || (ARRAY['dark','light','auto'])[1 + floor(random()*3)::int]
    || '","lang":"' || (ARRAY['en','de','fr','es','pt','ja'])[1 + floor(random()*6)::int]
    || '","tz":' || (floor(random()*24) - 12)::int || ',"notify":' || (random() < 0.5)
    || ',"token":"' || md5(random()::text) || '","bio":"'
    || substr(md5(random()::text) || md5(random()::text), 1, (random()*64)::int) || '"}}'
FROM generate_series(1, {users}) g;
""",
        f"""
SELECT setseed({seed} / 2);
CREATE TABLE documents (id int PRIMARY KEY, owner_id int NOT NULL, title text NOT NULL,
  body text NOT NULL, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
INSERT INTO documents SELECT d, 1 + floor(random()*{users})::int,
  'Document ' || d || ' ' || substr(md5(random()::text), 1, 12),
  b.body,
  timestamptz '2020-01-01' + random() * interval '1400 days',
  timestamptz '2024-01-01' + random() * interval '300 days'
FROM generate_series(1, {docs}) d,
LATERAL (
  SELECT string_agg(substr(md5(n::text), 1, 2 + n % 9),
                    CASE WHEN random() < 0.08 THEN E'.\\n' ELSE ' ' END) AS body
  FROM (SELECT floor(3000 * random()^2)::int + k*0 AS n
        FROM generate_series(1, 200 + floor(random()*700)::int + d*0) k) kk
) b;
CREATE INDEX documents_owner ON documents (owner_id);
""",
        f"""
SELECT setseed({seed} / 3);
CREATE TABLE events (id bigint PRIMARY KEY, user_id int NOT NULL, kind text NOT NULL,
  created_at timestamptz NOT NULL, payload text NOT NULL);
{_events_insert(1, events, users)}
CREATE INDEX events_user_time ON events (user_id, created_at);
""",
        "VACUUM ANALYZE;",
    ]


def _events_insert(first: int, last: int, users: int) -> str:
    return f"""
INSERT INTO events SELECT g, 1 + floor(random()*{users})::int,
  (ARRAY['login','view','view','view','click','click','search','purchase','share',
         'logout'])[1 + floor(random()*10)::int],
  timestamptz '2024-01-01' + g * interval '100 ms' + random() * interval '100 ms',
  '{{"ip":"10.' || floor(random()*256)::int || '.' || floor(random()*256)::int || '.'
    || floor(random()*256)::int || '","session":"' || md5(random()::text)
    || '","path":"/' || (ARRAY['home','docs','api','search','settings','billing'])
       [1 + floor(random()*6)::int] || '/' || floor(random()*5000)::int
    || '","ms":' || floor(random()*900)::int || '}}'
FROM generate_series({first}, {last}) g;
"""


def app_day2_sql(mib: int, seed: float = 0.42) -> tuple[str, dict]:
    """Day 2: append 1% new events, update 0.1% of the users."""
    c = counts(mib)
    new_events = c["events"] // 100
    upd_users = max(1, c["users"] // 1000)
    sql = f"""
SELECT setseed({seed} / 5);
{_events_insert(c['events'] + 1, c['events'] + new_events, c['users'])}
UPDATE users SET last_login = timestamptz '2024-11-01' + random() * interval '20 days',
  settings = regexp_replace(settings, '"token":"[0-9a-f]+"',
                            '"token":"' || md5(random()::text) || '"')
WHERE id IN (SELECT 1 + floor(random()*{c['users']})::int FROM generate_series(1, {upd_users}));
"""
    return sql, {"new_events": new_events, "updated_users_max": upd_users}


def gen_app(psql: Callable[[str, str], str], db: str, mib: int) -> dict:
    t0 = time.monotonic()
    for stmt in app_sql(mib):
        psql(stmt, db)
    return {**counts(mib), "seconds": round(time.monotonic() - t0, 1)}


def app_day2(psql: Callable[[str, str], str], db: str, mib: int) -> dict:
    sql, info = app_day2_sql(mib)
    t0 = time.monotonic()
    psql(sql, db)
    n = psql(
        "SELECT count(*) FROM users WHERE last_login >= '2024-11-01'", db
    ).strip()
    info["updated_users"] = int(n)
    info["seconds"] = round(time.monotonic() - t0, 1)
    return info


def gen_pgbench(pgbench: str, env: dict, db: str, scale: int) -> dict:
    t0 = time.monotonic()
    r = subprocess.run([pgbench, "-i", "-q", "-s", str(scale), db], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"pgbench -i failed: {r.stderr[-2000:]}")
    return {"scale": scale, "seconds": round(time.monotonic() - t0, 1)}


def pgbench_day2(pgbench: str, env: dict, db: str, seconds: int) -> dict:
    r = subprocess.run([pgbench, "-T", str(seconds), db], env=env, capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError(f"pgbench -T failed: {r.stderr[-2000:]}")
    out = {"seconds": seconds}
    for line in r.stdout.splitlines():
        if line.startswith("number of transactions actually processed"):
            out["transactions"] = int(line.split(":")[1].split("/")[0].strip())
        elif line.startswith("tps ="):
            out["tps"] = round(float(line.split("=")[1].split()[0]), 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["app", "app-day2", "sql"])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--dsn", help="libpq connection string (app, app-day2)")
    args = ap.parse_args()
    if args.what == "sql":
        print("\n".join(app_sql(args.mib)))
        print(app_day2_sql(args.mib)[0])
        return 0
    if not args.dsn:
        ap.error("--dsn is required")

    def psql(sql: str, _db: str) -> str:
        r = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", args.dsn],
                           input=sql, capture_output=True, text=True, env=dict(os.environ))
        if r.returncode != 0:
            raise SystemExit(f"psql failed: {r.stderr[-2000:]}")
        return r.stdout

    info = gen_app(psql, "", args.mib) if args.what == "app" else app_day2(psql, "", args.mib)
    json.dump(info, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
