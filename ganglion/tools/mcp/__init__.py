"""MCP tool servers: their tools offered as ``<server>__<tool>`` (see ``manager``).

Nothing here imports the ``mcp`` SDK at import time: ``manager`` loads ``server`` (which
does) in a thread once the daemon runs, and only when servers are configured.
"""
