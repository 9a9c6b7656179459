"""Walking a snapshot's trees, with every name checked (the repository is untrusted).

``walk`` yields ``(path, node)`` depth first, parents before children, where
path is the entry's relative path as bytes (``srv/app/x``). It raises
`UnsafeEntry` for a name that is empty, ``.``, ``..``, holds ``/`` or NUL, for
two entries of one name in a directory, for a malformed whole-number field (mode,
uid, gid, size, times, inode, dev, rdev, links), content list or ``delta`` list (blocks
stored as deltas, engine/repo/blockdelta.py), for a tree that
refers to itself, and for nesting deeper than `MAX_DEPTH` (the limit the backup
keeps to). The walk is iterative: depth costs memory, never Python stack.

Budget: trees are content addressed, so two directories may share one subtree, and a
hostile repository can make a DAG of a few trees whose walk never ends (each of 40
levels listing the next twice: 2^40 entries). Before yielding anything, a walk
measures what it would reach, counting a shared subtree at every place it is reached
(each distinct tree is read once, and the total of a large one remembered), and
refuses with an IntegrityError naming the tree when that passes `MAX_WALK_NODES`
entries or `MAX_WALK_TREE_BYTES` bytes of tree blobs (docs/FORMAT.md, reader limits).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from engine.errors import EngineError, IntegrityError, NotFound, UnsafeEntry
from engine.repo.blockdelta import KEY as DELTA_KEY
from engine.repo.blockdelta import node_deltas
from engine.repo.repository import Repository
from engine.repo.tree import MAX_DEPTH, NODE_TYPES, node_name

__all__ = ["MAX_DEPTH", "MAX_WALK_NODES", "MAX_WALK_TREE_BYTES", "children", "find",
           "measure", "walk"]

MAX_WALK_NODES = 50_000_000  # entries one walk may reach, shared subtrees counted each time
MAX_WALK_TREE_BYTES = 32 * 1024**3  # decoded tree bytes one walk may read, the same way
_REMEMBER = 32  # totals of subtrees reaching at least this many entries are remembered


_I64 = (-(2**63), 2**63 - 1)
_U32 = (0, 2**32 - 1)
_U64 = (0, 2**64 - 1)
# whole-number node fields, each optional, and the range a reader accepts
_INT_FIELDS = {"mode": (0, 0o7777), "uid": _U32, "gid": _U32, "size": (0, 2**63 - 1),
               "mtime_ns": _I64, "ctime_ns": _I64, "inode": _U64, "dev": _U64,
               "rdev": _U64, "links": _U32}


def check_node(node: dict, path: str) -> None:
    """The fields every reader of a node takes as given: whole numbers in range where
    present, a list of blob ids as content, well-formed ``delta`` entries (format 1.2,
    docs/FORMAT.md 5.2). UnsafeEntry naming the path and the key."""
    for key, (lo, hi) in _INT_FIELDS.items():
        if key in node:
            v = node[key]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise UnsafeEntry(f"{path}: malformed {key} {v!r} in the snapshot"[:300])
    content = node.get("content")
    if content is not None and not (isinstance(content, list)
                                    and all(isinstance(b, str) for b in content)):
        raise UnsafeEntry(f"{path}: malformed content list in the snapshot")
    if DELTA_KEY in node:
        node_deltas(node, path)


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
        check_node(node, os.path.join(where, os.fsdecode(name)) if where else os.fsdecode(name))
        out.append((name, node))
    return out


def _over(tree_id: str, nodes: int, size: int) -> IntegrityError | None:
    if nodes > MAX_WALK_NODES:
        return IntegrityError(
            f"tree {tree_id}: a walk would reach more than {MAX_WALK_NODES} entries "
            "(directories that share subtrees?); refused", tree_id)
    if size > MAX_WALK_TREE_BYTES:
        return IntegrityError(
            f"tree {tree_id}: a walk would read more than {MAX_WALK_TREE_BYTES} bytes of "
            "trees (directories that share subtrees?); refused", tree_id)
    return None


def _tree_id(tree_id: object) -> str:
    if not isinstance(tree_id, str):  # from a crafted snapshot
        raise IntegrityError(f"malformed tree id {tree_id!r}"[:200], "")
    return tree_id


def measure(repo: Repository, tree_id: str) -> tuple[int, int]:
    """(entries, tree bytes) a walk from tree_id reaches, a shared subtree counted at
    every reach; IntegrityError as soon as either passes its limit. Each distinct tree
    is loaded once (totals of big subtrees are remembered, small ones counted again),
    so a DAG bomb is refused after reading its few trees. Cycles and nesting past
    MAX_DEPTH are not followed here, nor trees that cannot be read: the walk refuses
    them where it meets them, with the path."""
    _tree_id(tree_id)

    def size_of(tid: str) -> int:
        entry = repo.index.get(tid)
        return entry.raw_length if entry is not None else 0

    def subtrees(tid: str) -> tuple[int, list[str]]:
        try:
            nodes = repo.load_tree(tid)["nodes"]
        except EngineError:  # missing or damaged: the walk reports it where it is
            return 0, []
        subs = [n["subtree"] for n in nodes if isinstance(n, dict) and n.get("type") == "dir"
                and isinstance(n.get("subtree"), str)]
        return len(nodes), subs

    known: dict[str, tuple[int, int]] = {}
    n0, subs0 = subtrees(tree_id)
    # frames: [tree id, its subtrees left, its entries so far, its bytes so far]
    stack: list[list] = [[tree_id, iter(subs0), n0, size_of(tree_id)]]
    on_path = {tree_id}
    nodes, size = n0, stack[0][3]  # everything reached so far
    while stack:
        frame = stack[-1]
        sub = next(frame[1], None)
        if sub is None:
            stack.pop()
            on_path.discard(frame[0])
            if frame[2] >= _REMEMBER:
                known[frame[0]] = (frame[2], frame[3])
            if stack:
                stack[-1][2] += frame[2]
                stack[-1][3] += frame[3]
            continue
        if sub in known:
            add_n, add_b = known[sub]
            frame[2] += add_n
            frame[3] += add_b
        elif sub not in on_path and len(stack) <= MAX_DEPTH:
            add_n, subs = subtrees(sub)
            add_b = size_of(sub)
            stack.append([sub, iter(subs), add_n, add_b])
            on_path.add(sub)
        else:
            continue
        nodes += add_n
        size += add_b
        err = _over(tree_id, nodes, size)
        if err is not None:
            raise err
    return nodes, size


def walk(repo: Repository, tree_id: str, prefix: bytes = b"",
         measured: bool = False) -> Iterator[tuple[bytes, dict]]:
    """Every entry below tree_id, parents first; tree_id itself is at depth 0. Refused
    up front when it would pass the walk budget (see `measure`; ``measured``: a walk of
    the same tree already passed it)."""
    if not measured:
        measure(repo, tree_id)
    reached = 0
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
        entries = children(repo, sub, os.fsdecode(path))
        reached += len(entries)
        if reached > MAX_WALK_NODES:  # measured before; kept as the walk's own bound
            raise _over(tree_id, reached, 0) or IntegrityError("walk budget", tree_id)
        stack.append((sub, path, iter(entries)))
        on_path.add(sub)


def find(repo: Repository, root: str, path: str) -> tuple[bytes, dict]:
    """Locate an entry by its path in the snapshot (``/srv/app/x`` or ``srv/app/x``)."""
    parts = [p for p in os.fsencode(path).split(b"/") if p and p != b"."]
    tree_id: str | None = _tree_id(root)
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
