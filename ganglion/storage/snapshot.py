"""A consistent copy of a SQLite file while its daemon writes on: SQLite's online backup API.

In WAL mode the copy reads one snapshot (all pages in one step, inside one read
transaction) while the daemon's writes go on to the log: a turn never waits for it, and
the copy holds exactly what was committed when it began.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def snapshot(source: Path, target: Path) -> dict[str, int]:
    """Copy ``source`` into a new ``target`` (owner-only); its tables' row counts."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never over a file
    os.close(fd)
    src = sqlite3.connect(source)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # pages=-1: every page in one step, one consistent snapshot
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            return row_counts(dst)
        finally:
            dst.close()
    finally:
        src.close()


def row_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Rows in each table (SQLite's own left out)."""
    names = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name")]
    return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}


def check(path: Path) -> tuple[str, dict[str, int]]:
    """SQLite's integrity check of a file (``ok`` when sound) and its row counts."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        verdict = "; ".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
        return verdict, row_counts(conn)
    finally:
        conn.close()
