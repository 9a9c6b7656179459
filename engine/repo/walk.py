"""Walking a snapshot's trees, with every name checked (the repository is untrusted).

``walk`` yields ``(path, node)`` depth first, parents before children, where
path is the entry's relative path as bytes (``srv/app/x``). It raises
`UnsafeEntry` for a name that is empty, ``.``, ``..``, holds ``/`` or NUL, for
two entries of one name in a directory, for a tree that refers to itself, and
for nesting deeper than `MAX_DEPTH` (the limit the backup keeps to). The walk is
iterative: depth costs memory, never Python stack.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from engine.errors import IntegrityError, NotFound, UnsafeEntry
from engine.repo.repository import Repository
from engine.repo.tree import MAX_DEPTH, NODE_TYPES, node_name

__all__ = ["MAX_DEPTH", "children", "find", "walk"]


def children(repo: Repository, tree_id: str, where: str) -> list[tuple[bytes, dict]]:
    tree = repo.load_tree(tree_id)
    seen: set[bytes] = set()
    out = []
    for node in tree["nodes"]:
        if not isinstance(node, dict):
            raise IntegrityError(f"tree {tree_id}: malformed node", tree_id)
        name = node_name(node, where or "/")
        if name in seen:
            raise UnsafeEntry(f"{where or '/'}: entry {name!r} appears twice (refused)")
        seen.add(name)
        if node.get("type") not in NODE_TYPES:
            raise UnsafeEntry(
                f"{where or '/'}: entry {name!r} has unknown type {node.get('type')!r}"
            )
        out.append((name, node))
    return out


def walk(repo: Repository, tree_id: str, prefix: bytes = b"") -> Iterator[tuple[bytes, dict]]:
    """Every entry below tree_id, parents first; tree_id itself is at depth 0."""
    # one frame per directory on the current path: (tree id, its path, its entries left)
    stack = [(tree_id, prefix, iter(children(repo, tree_id, os.fsdecode(prefix))))]
    on_path = {tree_id}  # a tree met again on its own path is a cycle
    while stack:
        tid, where, entries = stack[-1]
        item = next(entries, None)
        if item is None:
            stack.pop()
            on_path.discard(tid)
            continue
        name, node = item
        path = where + b"/" + name if where else name
        yield path, node
        if node["type"] != "dir":
            continue
        sub = node.get("subtree")
        if not isinstance(sub, str):
            raise IntegrityError(f"{os.fsdecode(path)}: directory without a subtree", tid)
        if len(stack) > MAX_DEPTH or sub in on_path:
            raise UnsafeEntry(f"{os.fsdecode(path)}: tree nesting too deep or cyclic (refused)")
        stack.append((sub, path, iter(children(repo, sub, os.fsdecode(path)))))
        on_path.add(sub)


def find(repo: Repository, root: str, path: str) -> tuple[bytes, dict]:
    """Locate an entry by its path in the snapshot (``/srv/app/x`` or ``srv/app/x``)."""
    parts = [p for p in os.fsencode(path).split(b"/") if p and p != b"."]
    tree_id: str | None = root
    node: dict = {"type": "dir", "subtree": root}
    where = b""
    for part in parts:
        if node["type"] != "dir" or tree_id is None:
            raise NotFound(f"path {path} not found in snapshot")
        match = dict(children(repo, tree_id, os.fsdecode(where))).get(part)
        if match is None:
            raise NotFound(f"path {path} not found in snapshot")
        node = match
        where = where + b"/" + part if where else part
        tree_id = node.get("subtree")
    return where, node
