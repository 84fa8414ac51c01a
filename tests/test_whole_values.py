"""Ids checked as whole values: a trailing newline (which ``$`` lets through) is refused.

Thread ids over the web socket, client ids of sent messages, Matrix ids in the config.
Each refusal is set beside the same value without the newline, which passes.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import aiohttp
import pytest
from conftest import WEB_TOKEN, AppFactory

from ganglion.config import ConfigError, parse_config
from ganglion.messages import (
    is_matrix_thread,
    is_web_thread,
    matrix_room_of,
    matrix_thread_id,
    matrix_thread_root,
    web_thread_id,
)


def test_thread_ids_with_a_trailing_newline_are_refused() -> None:
    hex_part = secrets.token_hex(16)
    assert is_web_thread(web_thread_id(hex_part))
    assert not is_web_thread(f"web_{hex_part}\n")
    with pytest.raises(ValueError, match="not a web thread id"):
        web_thread_id(hex_part + "\n")
    assert is_matrix_thread(matrix_thread_id("!room:example.org"))
    assert not is_matrix_thread("!room:example.org\n")
    with pytest.raises(ValueError, match="not a Matrix room id"):
        matrix_thread_id("!room:example.org\n")
    with pytest.raises(ValueError, match="not a Matrix thread root"):
        matrix_thread_id("!room:example.org", "$root\n")


def test_a_matrix_thread_is_its_own_conversation_and_rooms_keep_their_ids() -> None:
    room = "!abcDEF:example.org"
    assert matrix_thread_id(room) == room  # every room's stored history stays reachable
    assert matrix_room_of(room) == room and matrix_thread_root(room) is None
    # Room version 3 event ids are standard base64: a "/" in the root is fine.
    for root in ("$Ab-c_D", "$a/b+c", "$old:example.org"):
        tid = matrix_thread_id(room, root)
        assert tid != room and is_matrix_thread(tid)
        assert matrix_room_of(tid) == room and matrix_thread_root(tid) == root
    v12 = "!" + "A" * 43  # room version 12: no server part
    assert matrix_room_of(matrix_thread_id(v12, "$x")) == v12
    for bad in ("!room:example.org/", "!room:example.org/x", "!room:exa/mple.org",
                "!room:example.org/$a b"):
        assert not is_matrix_thread(bad), bad


async def _hello(session: aiohttp.ClientSession, url: str,
                 thread_id: str) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    ws = await session.ws_connect(f"{url}/ws", origin=url)
    await ws.send_json({"type": "hello", "token": WEB_TOKEN, "thread_id": thread_id})
    return ws, await ws.receive_json(timeout=10)


async def test_the_web_refuses_a_thread_id_or_client_id_with_a_trailing_newline(
    app_factory: AppFactory,
) -> None:
    app = await app_factory()
    assert app.web is not None
    thread_id = f"web_{secrets.token_hex(16)}"
    async with aiohttp.ClientSession() as session:
        ws, refused = await _hello(session, app.web.url, thread_id + "\n")
        assert refused["type"] == "error" and refused["code"] == "bad_thread_id", refused
        closing = await ws.receive(timeout=10)
        assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 4400

        ws, ready = await _hello(session, app.web.url, thread_id)
        assert ready["type"] == "ready" and ready["thread_id"] == thread_id
        await ws.send_json({"type": "send", "id": "c-1\n", "text": "hello"})
        error = await ws.receive_json(timeout=10)
        assert error["type"] == "error" and error["code"] == "bad_frame", error
        assert "1 to 64 visible ASCII characters" in error["message"]
        await ws.send_json({"type": "send", "id": "c-1", "text": "hello"})
        ack = await ws.receive_json(timeout=10)
        assert ack["type"] == "ack" and ack["id"] == "c-1", ack
        await ws.close()
    rows = await app.db.fetchall("SELECT client_id FROM inbox WHERE thread_id = ?", (thread_id,))
    assert [r["client_id"] for r in rows] == ["c-1"]


MATRIX = {"owner": "@me:example.org", "allowed_users": ["@me:example.org"],
          "trusted_users": ["@me:example.org"], "allowed_rooms": ["!room:example.org"],
          "homeserver": "https://matrix.example.org"}


@pytest.mark.parametrize(("section", "key", "bad", "path"), [
    ("matrix", "owner", "@me:example.org\n", "matrix.owner"),
    ("matrix", "allowed_users", ["@me:example.org\n"], "matrix.allowed_users.0"),
    ("matrix", "trusted_users", ["@me:example.org\n"], "matrix.trusted_users.0"),
    ("matrix", "allowed_rooms", ["!room:example.org\n"], "matrix.allowed_rooms.0"),
    ("matrix", "homeserver", "https://matrix.example.org\n", "matrix.homeserver"),
    ("tools", "shell_env", ["PGHOST\n"], "tools.shell_env.0"),
])
def test_config_ids_with_a_trailing_newline_are_refused(
    section: str, key: str, bad: Any, path: str
) -> None:
    good: dict[str, Any] = {"matrix": dict(MATRIX), "tools": {"shell_env": ["PGHOST"]}}
    parse_config(good, env={})  # the same values without the newline pass
    good[section][key] = bad
    with pytest.raises(ConfigError, match=re.escape(f"config error: {path}: ")):
        parse_config(good, env={})


def test_an_endpoint_name_with_a_trailing_newline_is_refused() -> None:
    endpoint = {"name": "home", "base_url": "http://127.0.0.1:9/v1"}
    parse_config({"llm": {"endpoints": [endpoint]}}, env={})
    with pytest.raises(ConfigError, match=re.escape("config error: llm.endpoints.0.name: ")):
        parse_config({"llm": {"endpoints": [{**endpoint, "name": "home\n"}]}}, env={})
