"""Which rooms the bot is in: invites joined or refused, rooms left once no allowed user remains.

What a sync brings is noted (``on_invite``, ``on_members``) and acted on after it
(``settle``): a request that could not be made is tried again after the next sync. A bot
left alone with people it does not answer (or with nobody) has no reason to stay: it leaves,
and says so in the log.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nio import AsyncClient, JoinError, RoomLeaveError, RoomMemberEvent

from ganglion.config_matrix import MatrixConfig
from ganglion.interfaces.matrix import inbound

log = logging.getLogger(__name__)


class Membership:
    def __init__(self, config: MatrixConfig) -> None:
        self.config = config
        self._pending: dict[str, bool] = {}
        """Rooms to join (True) or to refuse or leave (False) after this sync."""

    def on_invite(self, room_id: str, invite_state: list[Any]) -> None:
        inviter = inbound.inviter(invite_state, self.config.user_id)
        if inviter is None or room_id in self._pending:
            return
        why = inbound.invite_refusal(self.config, room_id, inviter)
        log.info("[%s] invited by %s: %s", room_id, inviter,
                 "joining" if why is None else f"refusing ({why})")
        self._pending[room_id] = why is None

    def on_members(self, client: AsyncClient, room_id: str, events: list[Any]) -> None:
        """After someone left (or was removed), the bot leaves a room where no allowed user
        remains (joined or invited)."""
        own = self.config.user_id
        gone = [e.state_key for e in events if isinstance(e, RoomMemberEvent)
                and e.state_key != own and e.membership in ("leave", "ban")]
        room = client.rooms.get(room_id)
        if not gone or room is None or room_id in self._pending:
            return
        if any(u != own and self.config.allows(u) for u in room.users):
            return
        log.info("[%s] no allowed user remains (%s left): leaving the room", room_id,
                 ", ".join(gone))
        self._pending[room_id] = False

    async def settle(self, client: AsyncClient) -> None:
        """Join, refuse or leave; what could not be asked now is tried after the next sync."""
        for room_id, accept in list(self._pending.items()):
            try:
                resp = await (client.join(room_id) if accept else client.room_leave(room_id))
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("[%s] could not %s the room yet (%s)", room_id,
                            "join" if accept else "leave", err)
                continue
            if isinstance(resp, JoinError | RoomLeaveError):
                log.warning("[%s] %s the room failed: %s", room_id,
                            "joining" if accept else "leaving", resp)
            del self._pending[room_id]
