"""Repository format version 1 (docs/FORMAT.md): keys, packs, index, trees, snapshots, locks."""
