"""A bot and its people in Matrix rooms, for the tests on the real Synapse: the bot's config
section, a started bot, a room it joined (the ``synapse`` and ``humans`` fixtures are in
conftest.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from conftest import AppFactory
from synapse import Human, HumanFactory, MatrixUser, Synapse

from ganglion.app import App


def matrix_section(server: Synapse, bot: MatrixUser, allowed: list[str], store: Path,
                   **extra: Any) -> dict[str, Any]:
    return {"matrix": {"enabled": True, "homeserver": server.url, "user_id": bot.user_id,
                       "access_token": bot.access_token, "device_id": bot.device_id,
                       "allowed_users": allowed, "store_path": str(store), **extra}}


async def start_bot(app_factory: AppFactory, synapse: Synapse, bot: MatrixUser,
                    allowed: list[str], store: Path, **extra: Any) -> App:
    app = await app_factory(matrix_section(synapse, bot, allowed, store, **extra))
    assert app.matrix is not None
    await asyncio.wait_for(app.matrix.ready.wait(), 20)
    return app


async def joined_room(human: Human, bot: MatrixUser, encrypted: bool = True) -> str:
    """A new room of ``human``'s that the bot was invited to and joined."""
    room = await human.create_room(invite=[bot.user_id], encrypted=encrypted)
    await human.wait_joined(room, bot.user_id)
    return room


async def talking_bot(synapse: Synapse, app_factory: AppFactory,
                      humans: HumanFactory, tmp_path: Path,
                      **extra: Any) -> tuple[App, Human, str, MatrixUser]:
    """A running bot (its interface's back-offs short) and a person in an encrypted room with it."""
    bot, person = await synapse.register("bot"), await synapse.register("human")
    app = await start_bot(app_factory, synapse, bot, [person.user_id], tmp_path / "store",
                          **extra)
    assert app.matrix is not None
    app.matrix.backoff_max = app.matrix.sender.retry_max = 0.5
    human = await humans(person)
    return app, human, await joined_room(human, bot), bot
