"""The first frame of a tab's WebSocket: the hello with the token (never in a URL the
server sees), checked in constant time, with the throttle on wrong ones; the tab's thread."""

from __future__ import annotations

import hmac
import json
import logging
import math
from contextlib import suppress
from typing import Any

from aiohttp import WSMsgType, web

from ganglion.interfaces.web_guard import Throttle
from ganglion.messages import ThreadId, is_web_thread, web_thread_id

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0
CLOSE_UNAUTHORIZED = 4401
CLOSE_BAD_THREAD = 4400
CLOSE_THROTTLED = 4429


async def hello(ws: web.WebSocketResponse, remote: str, token: bytes,
                throttle: Throttle) -> ThreadId | None:
    """The first frame must carry the token; returns the tab's thread, or None."""
    try:
        msg = await ws.receive(timeout=HELLO_TIMEOUT)
    except TimeoutError:
        await _refuse(ws, remote, throttle, "no hello frame within 10 s")
        return None
    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
        return None
    hello: Any = None
    if msg.type is WSMsgType.TEXT:
        with suppress(ValueError, RecursionError):
            hello = json.loads(msg.data)
    is_hello = isinstance(hello, dict) and hello.get("type") == "hello"
    presented = hello.get("token") if is_hello else None
    # The right token first, whatever the address's failures: it never waits.
    if isinstance(presented, str) and hmac.compare_digest(
        presented.encode("utf-8", "replace"), token
    ):
        throttle.succeeded(remote)
    elif (wait := throttle.retry_after(remote)) > 0:
        await _refuse_throttled(ws, remote, wait)
        return None
    else:
        reason = "wrong or missing token" if is_hello else "the first frame was not a hello"
        await _refuse(ws, remote, throttle, reason)
        return None
    raw_tid = hello.get("thread_id")
    if raw_tid is None:
        thread_id = web_thread_id()
    elif isinstance(raw_tid, str) and is_web_thread(raw_tid):
        thread_id = ThreadId(raw_tid)
    else:
        await ws.send_json({
            "type": "error", "code": "bad_thread_id",
            "message": "thread_id must be null or web_ followed by 16 to 64 hex digits",
        })
        await ws.close(code=CLOSE_BAD_THREAD, message=b"bad thread id")
        return None
    return thread_id


async def _refuse(ws: web.WebSocketResponse, remote: str, throttle: Throttle,
                  reason: str) -> None:
    n = throttle.failed(remote)
    log.warning("web: refused a WebSocket from %s: %s (failure %d in a row)", remote, reason, n)
    with suppress(ConnectionError, RuntimeError):
        await ws.send_json({
            "type": "error", "code": "unauthorized",
            "message": "Wrong or missing access token: open the login link ganglion printed.",
        })
    await ws.close(code=CLOSE_UNAUTHORIZED, message=b"unauthorized")


async def _refuse_throttled(ws: web.WebSocketResponse, remote: str, wait: float) -> None:
    """A failed login while its address is throttled: at once, not counted, with the
    seconds to wait (not logged one by one: a storm would flood the log)."""
    seconds = max(1, math.ceil(wait))
    log.debug("web: refused a WebSocket from %s: throttled for %d s", remote, seconds)
    with suppress(ConnectionError, RuntimeError):
        await ws.send_json({
            "type": "error", "code": "throttled", "retry_after": seconds,
            "message": f"Too many failed logins; retry in {seconds} s.",
        })
    await ws.close(code=CLOSE_THROTTLED, message=b"too many failed logins")
