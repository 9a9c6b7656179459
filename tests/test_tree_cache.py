"""The repository's cache of decoded tree blobs is bounded in bytes as well as in count:
a walk over directories of thousands of files (trees of hundreds of KB) must not keep
hundreds of them (a no-change backup of 300k files held 48 MiB of them, and growing with
the number of directories)."""

from __future__ import annotations

from engine.repo import repository


def test_tree_cache_is_bounded_in_bytes(sandbox, monkeypatch):
    monkeypatch.setenv("BACKUP_TUI_READERS", "0")
    for d in range(30):  # 30 directories of 200 files: trees of some 40 KB each
        sub = sandbox.src / f"d{d:02}"
        sub.mkdir()
        for i in range(200):
            (sub / f"file-with-a-longish-name-{i:04}.txt").write_bytes(b"%d %d" % (d, i))
    eng = sandbox.engine(init=True)
    res = eng.backup("files", "src")
    monkeypatch.setattr(repository, "TREE_CACHE_BYTES", 200 * 1024)
    repo = sandbox.engine().repo()
    repo.load_index()
    snap = repo.load_snapshot(res.id)
    sizes = []

    def walk(tree_id: str) -> None:
        raw = repo.load_blob(tree_id, "tree")
        sizes.append(len(raw))
        assert repo._tree_cache_bytes == sum(len(v) for v in repo._tree_cache.values())
        assert repo._tree_cache_bytes <= 200 * 1024 or len(repo._tree_cache) == 1
        for node in repo.load_tree(tree_id)["nodes"]:
            if node.get("type") == "dir":
                walk(node["subtree"])

    walk(snap["tree"])
    assert len(sizes) > 30 and sum(sizes) > 4 * 200 * 1024  # the bound was reached
    assert 1 <= len(repo._tree_cache) < len(sizes)
    repo.drop_caches()
    assert repo._tree_cache_bytes == 0 and not repo._tree_cache
