"""Screens: they coordinate widgets and engine calls (in thread workers); widgets display."""
