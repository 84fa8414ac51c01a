"""The ``matrix`` section of the config: the bot's account, who it answers, how it answers."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from ganglion.config_base import Section as _Section

_MATRIX_USER = re.compile(r"\A@[^:\s]+:\S+\Z")
_MATRIX_ROOM = re.compile(r"\A![^:\s]+(:\S+)?\Z")  # no server part from room version 12


def _matrix_user(value: str) -> str:
    if not _MATRIX_USER.match(value):
        raise PydanticCustomError(
            "matrix_user_id", 'not a Matrix user id: write the full id in quotes, e.g. '
            '"@you:example.org"')
    return value


def _optional_matrix_user(value: str) -> str:
    return value and _matrix_user(value)


def _allowed_user(value: str) -> str:
    return value if value == "*" else _matrix_user(value)


def _matrix_room(value: str) -> str:
    if not _MATRIX_ROOM.match(value):
        raise PydanticCustomError(
            "matrix_room_id", 'not a room id: write the internal id in quotes, e.g. '
            '"!abcdef:example.org" (Element: room settings, Advanced); #aliases are not accepted')
    return value


def _homeserver(value: str) -> str:
    if value and not re.match(r"\Ahttps?://[^\s/]+\S*\Z", value):
        raise PydanticCustomError(
            "matrix_homeserver", "not an http(s) URL: write the homeserver's client API "
            "address, e.g. https://matrix.example.org")
    return value.rstrip("/")


MatrixUserId = Annotated[str, AfterValidator(_matrix_user)]


class MatrixConfig(_Section):
    """The Matrix interface. ``ganglion login`` writes homeserver, user_id, token and device."""

    enabled: bool = False
    homeserver: Annotated[str, AfterValidator(_homeserver)] = ""
    user_id: Annotated[str, AfterValidator(_optional_matrix_user)] = ""
    access_token: str = ""
    device_id: str = ""
    allowed_users: list[Annotated[str, AfterValidator(_allowed_user)]] = []
    """Who the bot answers and whose invites it accepts; ["*"] is everyone, on purpose."""
    allowed_rooms: list[Annotated[str, AfterValidator(_matrix_room)]] = []
    """Empty: any room an allowed user invites the bot to."""
    store_path: Annotated[str, Field(min_length=1)] = "data/matrix-store"
    """Olm/Megolm keys and the sync token of this device (resolved like other paths)."""
    owner: MatrixUserId | None = None
    trusted_users: list[MatrixUserId] = []
    """May approve tool runs and run trusted commands (with the owner)."""
    show_tool_calls: bool = False
    reply_mode: Literal["auto", "always", "never"] = "auto"
    """Answers as replies (``m.in_reply_to``) to the message they answer: ``auto`` in rooms
    with more than one person besides the bot, ``always``, or ``never``."""
    streaming: bool = True
    """Post a long answer early and edit it in place as it grows; the final edit holds it all."""
    edit_interval_seconds: Annotated[float, Field(ge=0.2, le=60)] = 1.5
    """At most one edit of a streaming answer per this many seconds."""
    ack_reaction: str = ""
    """A reaction (e.g. "👀") put on an accepted message not answered within 0.5 s (with its
    read receipt), removed once it is answered; empty: none."""

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> MatrixConfig:
        if not self.enabled:
            return self
        login = ("run `ganglion login`: it logs the bot in as a new device and writes "
                 "matrix.access_token and matrix.device_id into the config file")
        if not self.homeserver:
            problem = ("matrix.homeserver is required when matrix.enabled is true: the address "
                       "of your homeserver's client API, e.g. https://matrix.example.org")
        elif not self.user_id:
            problem = ("matrix.user_id is required when matrix.enabled is true: the bot's full "
                       'Matrix id in quotes, e.g. "@bot:example.org"')
        elif not self.access_token:
            problem = f"matrix.access_token is required when matrix.enabled is true: {login}"
        elif not self.device_id:
            problem = (f"matrix.device_id is required when matrix.enabled is true: {login}. "
                       "The device id must be the one the access token was issued for, and "
                       "matrix.store_path keeps that device's encryption keys")
        elif not self.allowed_users:
            problem = (
                "matrix.allowed_users is empty: list the Matrix ids the bot may answer, e.g. "
                '["@you:example.org"]. The assistant can run shell commands and read your '
                "files, so it never answers everyone by accident; to let every Matrix user "
                'talk to it on purpose, write ["*"]'
            )
        else:
            problem = ""
            if "*" not in self.allowed_users:
                for key, users in (("owner", [self.owner] if self.owner else []),
                                   ("trusted_users", self.trusted_users)):
                    missing = [u for u in users if u not in self.allowed_users]
                    if missing:
                        problem = (f"matrix.{key}: {', '.join(missing)} is not in "
                                   "matrix.allowed_users; add it there too")
                        break
        if problem:
            raise PydanticCustomError("matrix_incomplete", problem)
        return self

    def allows(self, user_id: str) -> bool:
        return "*" in self.allowed_users or user_id in self.allowed_users

    def allows_room(self, room_id: str) -> bool:
        return not self.allowed_rooms or room_id in self.allowed_rooms
