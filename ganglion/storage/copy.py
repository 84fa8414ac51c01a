"""``ganglion db copy``: every row of one database into another, SQLite or PostgreSQL either
way, into an empty target, verified by each table's row count.

Both are opened (and so migrated) by the code that runs the daemon: the target gets the
schema of this version, then each table's rows in an order that keeps the foreign keys
true, in one transaction (a failed copy leaves the target empty). The source's instance id
comes along (Matrix transaction ids are made from it and the message ids, both copied).
PostgreSQL's identity counters are set past the copied ids.
"""

from __future__ import annotations

from pathlib import Path

from ganglion.storage.backend import Backend
from ganglion.storage.connect import open_database

FIRST = ("inbox", "messages", "outbox", "models", "media", "reminders")
"""Copied before the others: the tables that others' foreign keys point to, in order."""
NOT_COPIED = {"migrations"}
"""Each database keeps its own record of its migrations (the same numbers, by now)."""
BATCH = 1000


class CopyRefused(Exception):
    """The copy did not start (the target untouched), or its counts do not match."""


async def tables(db: Backend) -> list[str]:
    """The database's own tables (SQLite's and the search index's shadows left out)."""
    if db.dialect == "sqlite":
        rows = await db.fetchall(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " AND name NOT LIKE 'messages_fts%'")
    else:
        rows = await db.fetchall(
            "SELECT table_name AS name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'")
    names = {r["name"] for r in rows} - NOT_COPIED
    return [t for t in FIRST if t in names] + sorted(names - set(FIRST))


async def columns(db: Backend, table: str) -> list[str]:
    if db.dialect == "sqlite":
        return [r["name"] for r in await db.fetchall(f'PRAGMA table_info("{table}")')]
    rows = await db.fetchall(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?"
        " AND table_schema = current_schema() ORDER BY ordinal_position", (table,))
    return [r["column_name"] for r in rows]


async def counts(db: Backend, names: list[str]) -> dict[str, int]:
    out = {}
    for name in names:
        row = await db.fetchone(f'SELECT count(*) AS n FROM "{name}"')
        out[name] = int(row["n"]) if row else 0
    return out


async def copy_database(source: str, target: str, data_dir: Path,
                        where: tuple[str, str]) -> dict[str, int]:
    """Copy ``source`` into ``target`` (URLs; ``where``: both as shown); the rows per table.
    CopyRefused when the target holds data, or when the counts do not match after."""
    src = await open_database(source, data_dir, where[0])
    try:
        dst = await open_database(target, data_dir, where[1])
        try:
            return await _copy(src, dst, where[1])
        finally:
            await dst.close()
    finally:
        await src.close()


async def _copy(src: Backend, dst: Backend, target: str) -> dict[str, int]:
    names = await tables(src)
    theirs = set(await tables(dst))
    missing = [n for n in names if n not in theirs]
    if missing:
        raise CopyRefused(f"{target} has no table {', '.join(missing)}: is it another "
                          "version's database?")
    held = {n: c for n, c in (await counts(dst, sorted(theirs - {"instance"}))).items() if c}
    if held:
        listed = ", ".join(f"{n}: {c}" for n, c in sorted(held.items()))
        raise CopyRefused(f"{target} is not empty ({listed} rows); copy into a new, empty "
                          "database")
    expected = await counts(src, names)
    identities = {r["table_name"] for r in await dst.fetchall(
        "SELECT table_name FROM information_schema.columns WHERE column_name = 'id'"
        " AND is_identity = 'YES' AND table_schema = current_schema()")
    } if dst.dialect == "postgres" else set()
    shared = {}  # read before the transaction: SQLite's body must not read through dst
    for name in names:
        theirs_cols = set(await columns(dst, name))
        shared[name] = [c for c in await columns(src, name) if c in theirs_cols]
    async with dst.transaction() as conn:
        await conn.execute("DELETE FROM instance")  # the source's id comes instead
        for name in names:
            cols = shared[name]
            quoted = ", ".join(f'"{c}"' for c in cols)
            insert = (f'INSERT INTO "{name}" ({quoted}) VALUES'
                      f" ({', '.join('?' * len(cols))})")
            rows = await src.fetchall(f'SELECT {quoted} FROM "{name}"')
            for start in range(0, len(rows), BATCH):
                await conn.executemany(insert, [tuple(r[c] for c in cols)
                                                for r in rows[start:start + BATCH]])
            if name in identities:
                # Identity counters start past the copied ids (a new row must not take one).
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'),"
                    f' coalesce((SELECT max(id) FROM "{name}"), 0) + 1, false)')
    copied = await counts(dst, names)
    if copied != expected:
        raise CopyRefused(f"the copy's row counts {copied} differ from the source's "
                          f"{expected}")
    return copied
