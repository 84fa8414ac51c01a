"""Ganglion, a personal AI assistant daemon: interfaces -> bus -> worker -> router -> interfaces."""

__version__ = "0.1.0"
