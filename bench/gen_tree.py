#!/usr/bin/env python3
"""Generate a seeded tree that looks like a web application's data directory.

Day 1 (``gen_tree.py DEST --size-mib 1024``) writes about SIZE MiB:

* ~40% compressible text: ``exports/*.csv``, ``logs/*.log``, ``data/**/*.json``
* ~40% incompressible binary: ``uploads/YYYY/MM/*.{jpg,png,pdf,mp4,zip}`` and a few
  large ``media/`` and ``archive/`` files
* ~20% as many small files (about 20,000 per GiB, ~10 KiB each): user profile
  JSON, thumbnails, templates and snippets, spread over sharded folders

Day 2 (``gen_tree.py DEST --mutate``) changes about 1% of the bytes in place:
overwrites inside existing files, inserts in the middle of text files, appends
to logs, new files in a new month folder and new small files, and deletes some
files. It prints a JSON summary of what it did.

Everything is derived from ``random.Random(seed)``: the same seed and size give
the same bytes (file mtimes are whatever the clock says). Binary data comes from
``Random.randbytes`` (incompressible, ~300 MB/s); text is built from a seeded
word list and formatted records, so it compresses roughly like real logs and CSV.

Standard library only, so it runs with any Python 3.11+.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

MiB = 1024 * 1024
KiB = 1024

# --------------------------------------------------------------------- words

_COMMON = (
    "the of and to in is for on that with as by at from this be are was it an or "
    "user order invoice payment account session request response error warning info "
    "debug cache queue worker job retry timeout upload download image file report "
    "export import customer product price total amount status pending shipped paid "
    "refunded cancelled active inactive admin api v1 v2 GET POST PUT DELETE ok failed "
    "database query latency ms bytes token login logout signup profile settings email "
    "address city country street note comment review rating cart checkout discount "
    "coupon tax currency EUR USD GBP warehouse stock sku item quantity delivery"
).split()


def make_words(rng: random.Random, n: int = 3000) -> list[str]:
    """A seeded vocabulary: common words plus pronounceable made-up ones."""
    cons = "bcdfghjklmnprstvwz"
    vow = "aeiou"
    words = list(_COMMON)
    seen = set(words)
    while len(words) < n:
        k = rng.choice((1, 2, 2, 3, 3, 4))
        w = "".join(rng.choice(cons) + rng.choice(vow) for _ in range(k))
        if rng.random() < 0.3:
            w += rng.choice(cons)
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


class TextGen:
    """Seeded text, CSV, log and JSON content of (about) a requested size."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.words = make_words(rng)
        # Zipf-like weights: a few words are very common, most are rare.
        self.weights = [1.0 / (i + 1) for i in range(len(self.words))]
        self.cum = []
        acc = 0.0
        for w in self.weights:
            acc += w
            self.cum.append(acc)
        self.paths = ["/api/v1/" + "/".join(self.pick(rng.randint(1, 3))) for _ in range(300)]
        self.countries = ["DE", "FR", "US", "GB", "NL", "SE", "PL", "ES", "IT", "JP", "BR"]
        self.statuses = ["pending", "paid", "shipped", "refunded", "cancelled"]
        self.levels = ["INFO"] * 12 + ["DEBUG"] * 5 + ["WARN"] * 2 + ["ERROR"]
        self.codes = [200] * 30 + [201] * 3 + [204] * 2 + [301, 304, 400, 401, 403, 404, 500]
        self.clock = 1_700_000_000.0

    def pick(self, k: int) -> list[str]:
        return self.rng.choices(self.words, cum_weights=self.cum, k=k)

    def sentence_block(self, size: int) -> bytes:
        """Prose-like text: words with punctuation and line breaks."""
        out: list[str] = []
        total = 0
        rng = self.rng
        while total < size:
            words = self.pick(rng.randint(6, 18))
            line = " ".join(words).capitalize() + rng.choice((".", ".", ".", "?", "!", ",")) + "\n"
            out.append(line)
            total += len(line)
        return "".join(out).encode()[:size]

    def _ts(self) -> str:
        self.clock += self.rng.expovariate(5.0)
        t = time.gmtime(self.clock)
        ms = int((self.clock % 1) * 1000)
        return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{ms:03d}Z"

    def log_lines(self, size: int) -> bytes:
        rng = self.rng
        out: list[str] = []
        total = 0
        while total < size:
            lvl = rng.choice(self.levels)
            if rng.random() < 0.6:
                msg = (
                    f"{rng.choice(('GET', 'GET', 'GET', 'POST', 'PUT', 'DELETE'))} "
                    f"{rng.choice(self.paths)}/{rng.randint(1, 99999)} {rng.choice(self.codes)} "
                    f"{rng.randint(1, 900)}ms bytes={rng.randint(80, 90000)}"
                )
            else:
                msg = " ".join(self.pick(rng.randint(4, 12)))
            line = (
                f"{self._ts()} {lvl:5} [worker-{rng.randint(1, 16)}] "
                f"req={rng.getrandbits(48):012x} user={rng.randint(1, 200000)} {msg}\n"
            )
            out.append(line)
            total += len(line)
        return "".join(out).encode()[:size]

    def csv_rows(self, size: int, header: bool = True) -> bytes:
        rng = self.rng
        out: list[str] = []
        total = 0
        if header:
            h = "id,created_at,customer,email,country,sku,quantity,amount,currency,status,note\n"
            out.append(h)
            total += len(h)
        while total < size:
            w = self.pick(3)
            row = (
                f"{rng.randint(1, 10**9)},{self._ts()},{w[0]} {w[1]},{w[0]}.{w[1]}@example.com,"
                f"{rng.choice(self.countries)},SKU-{rng.randint(1000, 99999)},"
                f"{rng.randint(1, 12)},{rng.randint(100, 99999) / 100:.2f},EUR,"
                f"{rng.choice(self.statuses)},{w[2]}\n"
            )
            out.append(row)
            total += len(row)
        return "".join(out).encode()[:size]

    def json_doc(self, size: int) -> bytes:
        """A JSON array of records, about ``size`` bytes (always valid JSON)."""
        rng = self.rng
        parts: list[str] = []
        total = 2
        while True:
            w = self.pick(8)
            rec = {
                "id": rng.getrandbits(40),
                "type": rng.choice(("order", "user", "event", "product")),
                "name": f"{w[0]} {w[1]}",
                "tags": w[2 : 2 + rng.randint(0, 4)],
                "created": self._ts(),
                "score": round(rng.random() * 100, 3),
                "active": rng.random() < 0.8,
                "attrs": {w[6]: rng.randint(0, 1000), w[7]: " ".join(self.pick(5))},
            }
            s = json.dumps(rec, separators=(",", ":"))
            if parts and total + len(s) + 1 > size:
                break
            parts.append(s)
            total += len(s) + 1
        return ("[" + ",\n".join(parts) + "]\n").encode()

    def small_doc(self, size: int) -> bytes:
        """A pretty-printed JSON object (profile, settings) of about ``size`` bytes."""
        rng = self.rng
        w = self.pick(6)
        obj: dict = {
            "id": rng.getrandbits(32),
            "username": f"{w[0]}{rng.randint(1, 999)}",
            "email": f"{w[0]}.{w[1]}@example.com",
            "country": rng.choice(self.countries),
            "created": self._ts(),
            "preferences": {"theme": rng.choice(("dark", "light")), "lang": w[2][:2]},
            "history": [],
        }
        body = json.dumps(obj, indent=2)
        while len(body) < size:
            obj["history"].append(
                {"at": self._ts(), "action": rng.choice(self.words), "ref": rng.getrandbits(32)}
            )
            if len(obj["history"]) % 8 == 0 or len(body) + 120 >= size:
                body = json.dumps(obj, indent=2)
        return body.encode()


# ----------------------------------------------------------------- day one


def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    import math

    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _write_binary(path: Path, rng: random.Random, size: int, magic: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        head = magic[:size]
        f.write(head)
        left = size - len(head)
        while left > 0:
            n = min(left, 8 * MiB)
            f.write(rng.randbytes(n))
            left -= n


def _write_text(path: Path, size: int, gen) -> None:
    """gen(n) -> bytes; written in pieces so big files never sit in memory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 4 * MiB)
            f.write(gen(n))
            left -= n


MAGIC = {
    "jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "png": b"\x89PNG\r\n\x1a\n",
    "pdf": b"%PDF-1.7\n",
    "zip": b"PK\x03\x04",
    "mp4": b"\x00\x00\x00\x18ftypmp42",
    "webp": b"RIFF\x00\x00\x00\x00WEBP",
}


def _uid(rng: random.Random) -> str:
    return f"{rng.getrandbits(64):016x}"


def generate(dest: Path, size_mib: int, seed: int) -> dict:
    total = size_mib * MiB
    rng = random.Random(seed)
    tg = TextGen(random.Random(seed + 1))
    brng = random.Random(seed + 2)  # binary bytes
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise SystemExit(f"gen_tree: {dest} is not empty")
    stats = {
        "files": 0,
        "bytes": 0,
        "text_bytes": 0,
        "binary_bytes": 0,
        "small_files": 0,
        "small_bytes": 0,
    }

    def count(kind: str, n: int) -> None:
        stats["files"] += 1
        stats["bytes"] += n
        stats[kind] += n

    # 1) compressible: CSV exports, logs, JSON data (40%)
    text_budget = int(total * 0.40)
    plan = [("csv", 0.375), ("log", 0.375), ("json", 0.25)]
    for kind, share in plan:
        budget = int(text_budget * share)
        i = 0
        while budget > 0:
            if kind == "csv":
                n = min(budget, _log_uniform(rng, 512 * KiB, 40 * MiB))
                name = f"exports/{2023 + i % 2}/{tg.pick(1)[0]}-{i:04d}.csv"
                _write_text(dest / name, n, tg.csv_rows)
            elif kind == "log":
                n = min(budget, _log_uniform(rng, 256 * KiB, 24 * MiB))
                day = time.strftime("%Y-%m-%d", time.gmtime(1_700_000_000 + i * 86400))
                svc = rng.choice(("web", "worker", "api", "cron", "nginx-access"))
                name = f"logs/{svc}/{svc}-{day}.log"
                while (dest / name).exists():
                    name = name[:-4] + "-1.log"
                _write_text(dest / name, n, tg.log_lines)
            else:
                n = min(budget, _log_uniform(rng, 32 * KiB, 6 * MiB))
                name = (
                    f"data/{rng.choice(('catalog', 'reports', 'cache', 'search'))}/doc-{i:05d}.json"
                )
                # one JSON document, generated whole (at most a few MiB)
                _write(dest / name, tg.json_doc(n))
                n = (dest / name).stat().st_size
            count("text_bytes", n)
            budget -= n
            i += 1

    # 2) incompressible: uploads by month, media, archives (40%)
    bin_budget = int(total * 0.40)
    big_budget = int(bin_budget * 0.25)
    budget = bin_budget - big_budget
    i = 0
    while budget > 0:
        ext = rng.choice(("jpg", "jpg", "jpg", "png", "pdf", "webp", "zip"))
        n = min(budget, _log_uniform(rng, 48 * KiB, 12 * MiB))
        y, m = 2022 + rng.randint(0, 2), rng.randint(1, 12)
        name = f"uploads/{y}/{m:02d}/{_uid(rng)}.{ext}"
        _write_binary(dest / name, brng, n, MAGIC[ext])
        count("binary_bytes", n)
        budget -= n
        i += 1
    budget = big_budget
    while budget > 0:
        ext = rng.choice(("mp4", "zip"))
        n = min(budget, _log_uniform(rng, 16 * MiB, 64 * MiB))
        folder = "media/videos" if ext == "mp4" else "archive"
        _write_binary(dest / f"{folder}/{_uid(rng)}.{ext}", brng, n, MAGIC[ext])
        count("binary_bytes", n)
        budget -= n

    # 3) small files (20%): ~20k per GiB, about 10 KiB each
    small_budget = total - stats["bytes"]
    n_small = max(100, round(20000 * size_mib / 1024))
    avg = small_budget / n_small
    for _ in range(n_small):
        kind = rng.random()
        # sizes spread around the average: 0.1x .. 2.6x (mean ~1x)
        n = max(64, int(avg * rng.choice((0.1, 0.25, 0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 1.65))))
        shard = f"{rng.getrandbits(8):02x}"
        if kind < 0.45:
            path = dest / f"users/{shard}/{_uid(rng)}/profile.json"
            data = tg.small_doc(n)
        elif kind < 0.80:
            path = dest / f"thumbs/{shard}/{_uid(rng)}.webp"
            data = MAGIC["webp"] + brng.randbytes(max(0, n - len(MAGIC["webp"])))
        elif kind < 0.92:
            path = (
                dest
                / f"templates/{rng.choice(('mail', 'pages', 'partials'))}/{shard}/{_uid(rng)}.html"
            )
            body = tg.sentence_block(n)
            data = (
                b"<html><body>\n<p>" + body.replace(b"\n", b"</p>\n<p>") + b"</p>\n</body></html>\n"
            )
        else:
            path = dest / f"config/{shard}/{_uid(rng)}.ini"
            data = "\n".join(
                f"{w} = {rng.randint(0, 10**6)}" for w in tg.pick(max(2, n // 14))
            ).encode()
        _write(path, data)
        stats["small_files"] += 1
        count("small_bytes", len(data))
    return stats


# ----------------------------------------------------------------- day two


def _listing(dest: Path) -> list[tuple[str, int]]:
    out = []
    for root, dirs, files in os.walk(dest):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            out.append((os.path.relpath(p, dest), os.path.getsize(p)))
    return out


def mutate(dest: Path, seed: int) -> dict:
    """Change ~1% of the tree's bytes, deterministically for a given tree and seed."""
    rng = random.Random(seed * 7919 + 2)
    tg = TextGen(random.Random(seed * 7919 + 3))
    brng = random.Random(seed * 7919 + 4)
    files = _listing(dest)
    total = sum(s for _, s in files)
    budget = total // 100
    s = {
        "tree_bytes_before": total,
        "edited_files": 0,
        "edited_bytes": 0,
        "inserted_files": 0,
        "inserted_bytes": 0,
        "appended_files": 0,
        "appended_bytes": 0,
        "new_files": 0,
        "new_bytes": 0,
        "deleted_files": 0,
        "deleted_bytes": 0,
    }
    text_ext = (".csv", ".log", ".json")
    big = [(p, n) for p, n in files if n >= 1 * MiB]
    text_big = [(p, n) for p, n in big if p.endswith(text_ext)]
    logs = [(p, n) for p, n in files if p.endswith(".log")]
    small = [(p, n) for p, n in files if n < 64 * KiB]

    # in-place edits (30%): overwrite 1-4 regions of 4-64 KiB inside big files
    b = int(budget * 0.30)
    while b > 0:
        p, n = rng.choice(big)
        is_text = p.endswith(text_ext)
        with open(dest / p, "r+b") as f:
            for _ in range(rng.randint(1, 4)):
                ln = min(rng.randint(4 * KiB, 64 * KiB), n)
                off = rng.randrange(0, n - ln + 1)
                data = tg.csv_rows(ln, header=False) if is_text else brng.randbytes(ln)
                f.seek(off)
                f.write(data)
                s["edited_bytes"] += ln
                b -= ln
        s["edited_files"] += 1

    # mid-file inserts (15%): text files grow in the middle, at a line boundary
    b = int(budget * 0.15)
    while b > 0:
        p, n = rng.choice(text_big)
        ln = rng.randint(2 * KiB, 128 * KiB)
        with open(dest / p, "r+b") as f:
            off = rng.randrange(0, n)
            f.seek(off)
            rest = f.read()
            nl = rest.find(b"\n")
            cut = nl + 1 if nl >= 0 else len(rest)
            ins = tg.log_lines(ln) if p.endswith(".log") else tg.csv_rows(ln, header=False)
            if p.endswith(".json"):
                note = tg.sentence_block(ln).replace(b"\n", b" ").replace(b'"', b"'")
                ins = b'{"note":"' + note + b'"},\n'
            f.seek(off + cut)
            f.write(ins + rest[cut:])
        s["inserted_files"] += 1
        s["inserted_bytes"] += len(ins)
        b -= len(ins)

    # appends (20%): logs get new lines at the end
    b = int(budget * 0.20)
    while b > 0 and logs:
        p, _n = rng.choice(logs)
        ln = rng.randint(16 * KiB, 256 * KiB)
        data = tg.log_lines(ln)
        with open(dest / p, "ab") as f:
            f.write(data)
        s["appended_files"] += 1
        s["appended_bytes"] += len(data)
        b -= len(data)

    # new files (35%): a new month of uploads, a new export, new small files
    b = int(budget * 0.35)
    new_small = max(10, len(small) // 200)
    for _ in range(new_small):
        shard = f"{rng.getrandbits(8):02x}"
        data = tg.small_doc(rng.randint(1 * KiB, 16 * KiB))
        _write(dest / f"users/{shard}/{_uid(rng)}/profile.json", data)
        s["new_files"] += 1
        s["new_bytes"] += len(data)
        b -= len(data)
    export = tg.csv_rows(max(64 * KiB, b // 5))
    _write(dest / "exports/2024/daily-new.csv", export)
    s["new_files"] += 1
    s["new_bytes"] += len(export)
    b -= len(export)
    while b > 0:
        ext = rng.choice(("jpg", "png", "pdf"))
        n = min(b, _log_uniform(rng, 48 * KiB, 2 * MiB))
        _write_binary(dest / f"uploads/2025/01/{_uid(rng)}.{ext}", brng, n, MAGIC[ext])
        s["new_files"] += 1
        s["new_bytes"] += n
        b -= n

    # deletions: 0.5% of the small files and a few uploads
    victims = rng.sample(small, max(1, len(small) // 200))
    uploads = [(p, n) for p, n in files if p.startswith("uploads/") and n >= 64 * KiB]
    victims += rng.sample(uploads, min(len(uploads), max(1, len(uploads) // 100)))
    for p, n in victims:
        try:
            os.unlink(dest / p)
        except FileNotFoundError:
            continue  # already gone
        s["deleted_files"] += 1
        s["deleted_bytes"] += n

    s["changed_bytes"] = (
        s["edited_bytes"] + s["inserted_bytes"] + s["appended_bytes"] + s["new_bytes"]
    )
    s["changed_pct"] = round(100.0 * s["changed_bytes"] / max(1, total), 3)
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", type=Path, help="directory to create (day 1) or mutate (day 2)")
    ap.add_argument("--size-mib", type=int, default=1024, help="day-1 size in MiB (1024)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--mutate", action="store_true", help="apply the day-2 change (~1%%)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    if args.mutate:
        if not args.dest.is_dir():
            ap.error(f"{args.dest} does not exist (generate day 1 first)")
        out = mutate(args.dest, args.seed)
    else:
        out = generate(args.dest, args.size_mib, args.seed)
    out["seconds"] = round(time.monotonic() - t0, 2)
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
