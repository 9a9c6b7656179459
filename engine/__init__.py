"""The backup engine: repository, sources, operations and the Engine facade.

This package never imports textual, rich or backup_tui (docs/ARCHITECTURE.md, section 1);
`tests/test_layers.py` enforces it. Callers use `engine.facade.Engine`.
"""

__version__ = "0.1.0"
