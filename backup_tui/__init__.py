"""backup-tui: the console, the daemon entry and the CLI over the engine."""
