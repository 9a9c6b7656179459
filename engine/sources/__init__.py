"""Sources: what gets backed up (file sets now; PostgreSQL logical and physical later).

Every source turns something outside into a root (a tree or a stream of blobs)
written through a `BlobWriter`, plus facts recorded in the snapshot.
"""
