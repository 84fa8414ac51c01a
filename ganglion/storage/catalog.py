"""The model catalog in SQLite: endpoints added at run time, model ids, aliases, thread models.

Place in the flow: the endpoint pool (``llm/endpoints.py``) and the model commands read and
write it; nothing here talks to a model server. Model ids are assigned once per model name
(AUTOINCREMENT: never reused, also after a model disappears), so a number a user learnt
keeps meaning the same model across restarts and re-discovery.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from ganglion.messages import ThreadId
from ganglion.storage.backend import Backend

THREAD_MODEL_KEY = "model"
"""The thread_settings key holding a thread's chosen model name."""


@dataclass(frozen=True, slots=True)
class StoredEndpoint:
    """An endpoint added with ``/add_endpoint`` (the configured ones live in config.yaml)."""

    name: str
    base_url: str
    api_key: str
    added_by: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Alias:
    alias: str
    model: str
    created_by: str


class Catalog:
    """Verb methods over the endpoints, models, endpoint_models, aliases tables."""

    def __init__(self, db: Backend) -> None:
        self.db = db

    # -- endpoints added at run time ---------------------------------------------------------

    async def endpoints(self) -> list[StoredEndpoint]:
        rows = await self.db.fetchall(
            "SELECT name, base_url, api_key, added_by, created_at FROM endpoints"
            " ORDER BY created_at, name"
        )
        return [StoredEndpoint(r["name"], r["base_url"], r["api_key"], r["added_by"],
                               r["created_at"]) for r in rows]

    async def add_endpoint(self, name: str, base_url: str, api_key: str, added_by: str) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO endpoints (name, base_url, api_key, added_by, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (name, base_url, api_key, added_by, time.time()),
            )

    async def remove_endpoint(self, name: str) -> bool:
        async with self.db.transaction() as conn:
            cur = await conn.execute("DELETE FROM endpoints WHERE name = ?", (name,))
            await conn.execute("DELETE FROM endpoint_models WHERE endpoint = ?", (name,))
            return cur.rowcount > 0

    # -- models and their ids ------------------------------------------------------------------

    async def set_endpoint_models(self, endpoint: str, names: Sequence[str]) -> dict[str, int]:
        """Record what ``endpoint`` lists now; new names get the next ids, in listing order.

        Returns the id of every listed name.
        """
        now = time.time()
        ids: dict[str, int] = {}
        async with self.db.transaction() as conn:
            for name in names:
                # Look first: an INSERT that conflicts still uses up an AUTOINCREMENT number.
                async with conn.execute("SELECT id FROM models WHERE name = ?", (name,)) as cur:
                    row = await cur.fetchone()
                if row is not None:
                    ids[name] = int(row["id"])
                    continue
                cur = await conn.execute(
                    "INSERT INTO models (name, first_seen) VALUES (?, ?)", (name, now))
                assert cur.lastrowid is not None
                ids[name] = cur.lastrowid
            await conn.execute("DELETE FROM endpoint_models WHERE endpoint = ?", (endpoint,))
            await conn.executemany(
                "INSERT INTO endpoint_models (endpoint, model_id, position) VALUES (?, ?, ?)",
                [(endpoint, ids[name], position) for position, name in enumerate(names)],
            )
        return ids

    async def endpoint_models(self) -> dict[str, list[tuple[int, str]]]:
        """Each endpoint's last discovered models as (id, name), in listing order."""
        rows = await self.db.fetchall(
            "SELECT em.endpoint, m.id, m.name FROM endpoint_models em"
            " JOIN models m ON m.id = em.model_id ORDER BY em.endpoint, em.position"
        )
        out: dict[str, list[tuple[int, str]]] = {}
        for r in rows:
            out.setdefault(r["endpoint"], []).append((int(r["id"]), r["name"]))
        return out

    async def model_ids(self) -> dict[str, int]:
        """Every model name ever seen, with its id."""
        rows = await self.db.fetchall("SELECT id, name FROM models")
        return {r["name"]: int(r["id"]) for r in rows}

    # -- aliases ---------------------------------------------------------------------------------

    async def aliases(self) -> list[Alias]:
        rows = await self.db.fetchall(
            "SELECT alias, model, created_by FROM aliases ORDER BY alias"
        )
        return [Alias(r["alias"], r["model"], r["created_by"]) for r in rows]

    async def set_alias(self, alias: str, model: str, created_by: str) -> None:
        """Aliases ignore case (``Fast`` and ``fast`` are one): the new spelling replaces."""
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM aliases WHERE lower(alias) = lower(?)", (alias,))
            await conn.execute(
                "INSERT INTO aliases (alias, model, created_by, created_at) VALUES (?, ?, ?, ?)",
                (alias, model, created_by, time.time()),
            )

    async def remove_alias(self, alias: str) -> bool:
        async with self.db.transaction() as conn:
            cur = await conn.execute("DELETE FROM aliases WHERE lower(alias) = lower(?)",
                                     (alias,))
            return cur.rowcount > 0

    # -- the model each thread uses ----------------------------------------------------------

    async def thread_models(self) -> dict[ThreadId, str]:
        rows = await self.db.fetchall(
            "SELECT thread_id, value FROM thread_settings WHERE key = ?", (THREAD_MODEL_KEY,)
        )
        return {ThreadId(r["thread_id"]): r["value"] for r in rows}

    async def set_thread_model(self, thread_id: ThreadId, model: str | None) -> None:
        """``None`` goes back to the configured default."""
        async with self.db.transaction() as conn:
            if model is None:
                await conn.execute(
                    "DELETE FROM thread_settings WHERE thread_id = ? AND key = ?",
                    (thread_id, THREAD_MODEL_KEY),
                )
            else:
                await conn.execute(
                    "INSERT INTO thread_settings (thread_id, key, value) VALUES (?, ?, ?)"
                    " ON CONFLICT (thread_id, key) DO UPDATE SET value = excluded.value",
                    (thread_id, THREAD_MODEL_KEY, model),
                )
