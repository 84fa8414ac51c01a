"""A bot and its people in Matrix rooms, for the tests on the real Synapse: the bot's config
section, a started bot, a room it joined, messages in a thread and the relations of events
(the ``synapse`` and ``humans`` fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from conftest import AppFactory
from nio import RoomSendResponse
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


def relation(event: Any) -> dict[str, Any] | None:
    """The ``m.relates_to`` of a message as its reader sees it (decrypted)."""
    related: dict[str, Any] | None = event.source["content"].get("m.relates_to")
    return related


async def send_content(human: Human, room: str, content: dict[str, Any]) -> str:
    """As ``Human.send``, with a content of the test's own (a thread, a reply)."""
    if human.client.should_query_keys:
        await human.client.keys_query()
    resp = await human.client.room_send(room, "m.room.message", content,
                                        ignore_unverified_devices=True)
    assert isinstance(resp, RoomSendResponse), resp
    event_id: str = resp.event_id
    return event_id


def in_thread(root: str, text: str, latest: str | None = None) -> dict[str, Any]:
    """A message in the thread of ``root``, as Element sends it (not shown as a reply)."""
    return {"msgtype": "m.text", "body": text,
            "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": True,
                             "m.in_reply_to": {"event_id": latest or root}}}
