"""A snapshot's file tree, browsed one directory at a time.

The tree starts at ``/`` of the snapshot (its root mirrors absolute paths). A
directory's entries are read when it is first expanded, by the engine
(``Engine.snapshot_dir``) in a thread worker, never on the UI thread; until
they arrive the directory shows "loading…". A directory with a single
subdirectory opens that one too, so the configured paths (``/srv/app``) are a
few keys away. Space or → expands, Enter chooses the entry under the cursor
(``SnapshotTree.Chosen``, its path in the snapshot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from backup_tui.engine_calls import EngineCaller
from backup_tui.format import human_bytes
from backup_tui.messages import SnapshotDirFailed, SnapshotDirLoaded

if TYPE_CHECKING:
    from engine.facade import Engine

LOADING = "loading…"


@dataclass
class Entry:
    """What a node of the tree stands for: a path in the snapshot, and its type."""

    path: str
    type: str
    loaded: bool = False


class SnapshotTree(EngineCaller, Tree[Entry]):
    """The snapshot's entries; directories load on first expansion."""

    BINDINGS = [Binding("right", "expand", "Open", show=False, id="tree-expand")]

    @dataclass
    class Chosen(Message):
        """Enter on an entry: restore this path of the snapshot."""

        path: str

    def __init__(self, engine: Engine, snap: dict, *, id: str | None = None) -> None:
        super().__init__("/", Entry("/", "dir"), id=id)
        self.engine = engine
        self.snap = snap
        self.auto_expand = False  # Enter chooses; Space and → open
        self.show_root = True

    def on_mount(self) -> None:
        self.root.expand()

    def on_tree_node_expanded(self, event: Tree.NodeExpanded[Entry]) -> None:
        event.stop()
        entry = event.node.data
        if entry is None or entry.loaded:
            return
        entry.loaded = True
        event.node.add_leaf(Text(LOADING, style="dim"))
        self._load(event.node)

    def _load(self, node: TreeNode[Entry]) -> None:
        snap, path, node_id = self.snap, node.data.path if node.data else "/", node.id
        self.call_engine(
            lambda: SnapshotDirLoaded(node_id, self.engine.snapshot_dir(snap, path)),
            group=f"tree-{node_id}", exclusive=False,
            failed=lambda text: SnapshotDirFailed(node_id, text))

    def on_snapshot_dir_loaded(self, message: SnapshotDirLoaded) -> None:
        node = self.get_node_by_id(message.node_id)
        node.remove_children()
        entries: list[Any] = message.entries
        for e in entries:
            label = Text(e.name + ("/" if e.type == "dir" else ""))
            if e.type == "file":
                label.append(f"  {human_bytes(e.size)}", style="dim")
            elif e.type != "dir":
                label.append(f"  {e.type}", style="dim")
            data = Entry(e.path, e.type)
            if e.type == "dir":
                node.add(label, data)
            else:
                node.add_leaf(label, data)
        if not entries:
            node.add_leaf(Text("(empty)", style="dim"))
        only = [c for c in node.children if c.data is not None]
        if len(only) == 1 and only[0].data.type == "dir":  # walk down a lone directory
            only[0].expand()
            self.call_after_refresh(self.move_cursor, only[0])  # once it has a line

    def on_snapshot_dir_failed(self, message: SnapshotDirFailed) -> None:
        node = self.get_node_by_id(message.node_id)
        node.remove_children()
        node.add_leaf(Text(f"cannot read: {message.error}", style="red"))
        if node.data is not None:
            node.data.loaded = False  # collapse and open again to retry

    def action_expand(self) -> None:
        node = self.cursor_node
        if node is not None and node.allow_expand:
            node.expand()

    def action_select_cursor(self) -> None:
        node = self.cursor_node
        if node is not None and node.data is not None:
            self.post_message(self.Chosen(node.data.path))
