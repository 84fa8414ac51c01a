"""The names of the built-in tools: a leaf module, so the config can check them.

Place in the flow: ``ganglion.config`` checks ``tools.policy`` against these names while the
file is read (so ``check-config`` and the daemon refuse a typo alike, with exit status 2),
and the composition root checks at start that the registry holds exactly these tools.

Why here, outside ``ganglion/tools/``: the tools import the config (its types), so the
config must not import the tools package; it imports this module, which imports nothing.
Passing the names into validation from the composition root instead would make every
caller of ``parse_config`` supply them, and one that forgot would accept a misspelt tool,
leaving it ``on``.
"""

from __future__ import annotations

TOOL_NAMES: frozenset[str] = frozenset({
    # ganglion/tools/memory.py
    "memory_read", "memory_append", "memory_replace", "memory_rewrite",
    # ganglion/tools/files.py
    "read_file", "write_file", "list_dir", "edit_file",
    # ganglion/tools/shell.py
    "shell",
    # ganglion/tools/reminders.py
    "set_reminder", "list_reminders", "cancel_reminder",
    # ganglion/tools/web.py, web_search.py (web_search only when tools.web.search_url is set)
    "web_fetch", "web_search",
})
"""Every tool ``App`` registers; adding a tool means adding its name here."""
