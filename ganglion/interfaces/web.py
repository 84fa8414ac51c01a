"""The web interface: browser tabs over one WebSocket each, to Inbound on the bus and Outbound back.

Security at this edge: the token travels only in the first WebSocket frame (never in a URL
the server sees); the Host and Origin checks, the response headers and the throttle on
wrong tokens are in ``web_guard.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from ganglion.bus import Bus
from ganglion.config_web import WebConfig
from ganglion.errors import StartupError
from ganglion.interfaces.web_conversations import (
    KINDS,
    ConversationFrames,
    Deleted,
    message_frame,
    transcript,
)
from ganglion.interfaces.web_guard import (
    BearerCheck,
    Guard,
    Throttle,
    add_security_headers,
    bearer_check,
)
from ganglion.interfaces.web_login import hello
from ganglion.interfaces.web_media import attachment_json, with_attachments
from ganglion.interfaces.web_redo import KINDS as REDO_KINDS
from ganglion.interfaces.web_redo import RedoFrames
from ganglion.interfaces.web_send import Refused, checked_send
from ganglion.interfaces.web_settings import SETTINGS_KINDS, Settings, SettingsFrames
from ganglion.interfaces.web_static import StaticFiles
from ganglion.interfaces.web_tab import Tab
from ganglion.interfaces.web_upload import Uploads
from ganglion.messages import (
    Inbound,
    Outbound,
    OutKind,
    Role,
    Source,
    ThreadId,
    is_web_thread,
)
from ganglion.render import MarkdownRenderer
from ganglion.router import Router
from ganglion.storage.backend import why_refused
from ganglion.storage.conversations import Conversations
from ganglion.storage.history import History
from ganglion.storage.inbox import Inbox
from ganglion.storage.media import MediaRefused, MediaStore
from ganglion.storage.redo import Redo

log = logging.getLogger(__name__)

FRAME_TYPES = ", ".join(["send", "stop", "cancel", *sorted(KINDS | REDO_KINDS),
                        *sorted(SETTINGS_KINDS)])
PENDING_SHOWN = 100
"""Queued messages a joining tab is shown (the newest); it is told how many more wait."""


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class WebInterface:
    """Serves the chat page and carries each tab's thread over a WebSocket."""

    name = "web"

    def __init__(  # noqa: PLR0917  (the composition root's contract)
        self,
        config: WebConfig,
        token: str,
        bus: Bus,
        router: Router,
        history: History,
        inbox: Inbox,
        renderer: MarkdownRenderer,
        *,
        shown: Callable[[str], str] = lambda text: text,
        conversations: Conversations | None = None,
        deleted: Deleted | None = None,
        routes: Callable[[web.Application, BearerCheck], None] | None = None,
        media: MediaStore | None = None,
        settings: Settings | None = None,
    ) -> None:
        if not token:
            raise ValueError("the web interface needs a non-empty token")
        self.config = config
        self._shown = shown
        """A question as the thread's other tabs may see it (a command's secret masked, as
        it is stored once read); the composition root passes the commands' rule."""
        self._routes = routes
        """Adds the routes of other modules (/status, /metrics: web_status.py)."""
        self._token = token.encode()
        self._bus = bus
        self._router = router
        self._history = history
        self._inbox = inbox
        self._renderer = renderer
        self._guard = Guard(config)
        self._throttle = Throttle()
        """Failed logins per address, over the WebSocket and the HTTP endpoints alike."""
        self._check = bearer_check(self._guard, self._token, self._throttle)
        self._uploads = Uploads(media, self._check) if media is not None else None
        self._settings = SettingsFrames(settings) if settings is not None else None
        self._tabs: dict[ThreadId, set[Tab]] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._streaming: dict[ThreadId, list[str]] = {}
        """The answer in progress per thread, for a tab that (re)connects mid-answer."""
        self._state: dict[ThreadId, str] = {}
        self._static: StaticFiles | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        bus.on_cancelled(self._cancelled)
        self.conversations = ConversationFrames(
            conversations or Conversations(history.db), history, bus, renderer, self._to_all,
            deleted, self._uploads.files.of_rows if self._uploads is not None else None)
        self._redo = RedoFrames(Redo(history.db, history), bus, config.max_message_bytes,
                                self._to_thread, self.conversations.changed)

    # -- the Interface protocol ------------------------------------------------------------

    def owns(self, thread_id: ThreadId) -> bool:
        return is_web_thread(thread_id)

    async def start(self) -> None:
        self._static = StaticFiles()
        app = web.Application(middlewares=[self._guard.middleware()])
        app[WEB_KEY] = self
        app.on_response_prepare.append(add_security_headers)
        app.router.add_get("/", _index)
        app.router.add_get("/static/{file}", _static_file)
        app.router.add_get("/healthz", _healthz)
        app.router.add_get("/ws", _websocket)
        if self._routes is not None:
            self._routes(app, self._check)
        if self._uploads is not None:
            self._uploads.add_routes(app)  # POST /upload, GET /media/<id>
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.config.host, self.config.port).start()
        except OSError as err:
            await runner.cleanup()
            raise StartupError(
                f"web: cannot listen on {self.config.host}:{self.config.port}: {err.strerror}; "
                "set web.port to a free port (or 0 for any)"
            ) from None
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("web interface listening on %s", self.url)

    async def stop(self) -> None:
        """Close every socket (1001, so tabs reconnect to the next run), then the server."""
        closes = [
            ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
            for ws in list(self._sockets)
        ]
        if closes:
            await asyncio.wait([asyncio.ensure_future(c) for c in closes], timeout=0.5)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def send(self, out: Outbound) -> bool:
        """One event to every tab of the thread. MESSAGE/TOOL: True if any tab took it."""
        tid = out.thread_id
        frame: dict[str, Any]
        if out.kind is OutKind.DELTA:
            self._streaming.setdefault(tid, []).append(out.text)
            frame = {"type": "delta", "text": out.text}
        elif out.kind is OutKind.RESET:
            self._streaming.pop(tid, None)
            frame = {"type": "reset"}
        elif out.kind is OutKind.TITLE:  # every sidebar shows it
            await self.conversations.changed(tid)
            return True
        elif out.kind is OutKind.STATE:
            # "error": the turn failed (its notice came first) and "idle" follows; tabs show
            # it, a tab that joins later reads the notice instead.
            if out.text in ("idle", "error"):
                self._streaming.pop(tid, None)
                self._state.pop(tid, None)
            else:
                self._state[tid] = out.text
            frame = {"type": "state", "state": out.text}
        else:
            if out.role is Role.ASSISTANT:
                self._streaming.pop(tid, None)
            role = Role.TOOL if out.kind is OutKind.TOOL else out.role
            frame = self._message_frame(out.message_id, role, out.text, out.reply_to)
        # Queued, not yet written: a tab that closes before writing it reads it in its
        # transcript when it reconnects, so the outbox may count it as delivered.
        results = [tab.put(frame) for tab in list(self._tabs.get(tid, ()))]
        return any(results)

    # -- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.config.local_url(self.port)

    @property
    def login_url(self) -> str:
        """Opening this stores the token in the browser; the fragment never reaches a server."""
        return f"{self.url}/#token={self._token.decode()}"

    # -- HTTP ------------------------------------------------------------------------------

    def static_response(self, name: str) -> web.Response:
        if self._static is None:  # not started
            raise web.HTTPNotFound()
        return self._static.response(name)

    # -- WebSocket -------------------------------------------------------------------------

    async def serve_socket(self, request: web.Request) -> web.WebSocketResponse:
        reason = self._guard.origin_refused(request)
        if reason is not None:
            log.warning("web: refused a WebSocket from %s: %s", request.remote, reason)
            raise web.HTTPForbidden(text=reason)
        # Large enough for any message within the limit however JSON escapes it (up to 6x).
        ws = web.WebSocketResponse(
            max_msg_size=self.config.max_message_bytes * 6 + 4096, heartbeat=20.0, timeout=0.5
        )
        await ws.prepare(request)
        self._sockets.add(ws)
        tab: Tab | None = None
        try:
            thread_id = await hello(ws, request.remote or "unknown", self._token,
                                    self._throttle)
            if thread_id is None:
                return ws
            tab = Tab(ws, thread_id, request.transport)
            await self._join(tab)
            await self._router.deliver(tab.thread_id)
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_text(tab, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    self._bad_frame(tab, "binary frames are not accepted; send JSON text")
                else:  # ERROR: aiohttp has already closed the socket
                    break
        finally:
            self._sockets.discard(ws)
            if tab is not None:
                self._leave(tab)
                await tab.stop()
        return ws

    async def _join(self, tab: Tab) -> None:
        """Register the tab and start it with ``ready``; events arriving meanwhile follow it."""
        tid = tab.thread_id
        self._tabs.setdefault(tid, set()).add(tab)
        # Taken with the registration, before any await: a delta published from here on is
        # appended to the live list and also put to this tab, to follow ``ready``; joined
        # later, the list would hold it too and the tab would show it twice.
        streaming = self._streaming.get(tid)
        partial = "".join(streaming) if streaming is not None else None
        state = self._state.get(tid) or ("thinking" if self._bus.queued(tid) else "idle")
        rows = await self._history.transcript(tid)
        # A question whose turn has begun is in the transcript already.
        started = {m.inbox_id for m in rows if m.role == "user"}
        waiting = [p for p in await self._inbox.pending_for(tid) if p[0] not in started]
        media = self._uploads.files if self._uploads is not None else None
        entries = transcript(self._renderer, rows, self._shown,
                             await media.of_rows(rows) if media else None)
        files = await media.of_inboxes([p[0] for p in waiting]) if media else {}
        # A long backlog is shown as its newest few and a count: the page stays quick.
        pending = [  # the text may not be masked in the inbox yet
            with_attachments({"id": cid, "text": self._shown(text)}, files.get(iid, []))
            for iid, cid, text in waiting[-PENDING_SHOWN:]
        ]
        tab.start({
            "type": "ready",
            "thread_id": tid,
            "transcript": entries,
            "pending": pending,
            "pending_hidden": len(waiting) - len(pending),
            "streaming": partial,
            "state": state,
            "max_message_bytes": self.config.max_message_bytes,
        })

    def _leave(self, tab: Tab) -> None:
        tabs = self._tabs.get(tab.thread_id)
        if tabs is not None:
            tabs.discard(tab)
            if not tabs:
                del self._tabs[tab.thread_id]

    async def _on_text(self, tab: Tab, data: str) -> None:
        try:
            frame = json.loads(data)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            self._bad_frame(tab, "the frame is not valid JSON")
            return
        if not isinstance(frame, dict):
            self._bad_frame(tab, "a frame must be a JSON object")
            return
        kind = frame.get("type")
        if kind == "send":
            await self._on_send(tab, frame)
        elif kind == "stop":
            self._bus.cancel_turn(tab.thread_id)
        elif kind == "cancel" or (isinstance(kind, str) and kind in KINDS | SETTINGS_KINDS):
            try:
                if kind == "cancel":  # the queued messages; each tab marks them (_cancelled)
                    await self._bus.cancel_queued(tab.thread_id)
                elif kind in SETTINGS_KINDS and self._settings is not None:
                    await self._settings.handle(tab.put, tab.thread_id, frame)
                else:
                    await self.conversations.handle(tab.put, frame)
            except sqlite3.Error as err:  # the disk refused: say so, keep the socket
                log.error("[%s] web: %s failed: %s", tab.thread_id, kind, err)
                tab.put({"type": "error", "code": "not_stored",
                         "message": f"{kind}: the database refused it ({err}); try again"})
        elif isinstance(kind, str) and kind in REDO_KINDS:  # regenerate, edit
            await self._redo.handle(tab.thread_id, tab.put, frame)
        elif kind == "hello":
            self._bad_frame(tab, "already logged in: hello is only the first frame")
        else:
            self._bad_frame(tab, f"unknown frame type {_short(kind)} ({FRAME_TYPES})")

    async def _on_send(self, tab: Tab, frame: dict[str, Any]) -> None:
        checked = checked_send(frame, self.config.max_message_bytes)
        if isinstance(checked, Refused):
            if checked.code == "bad_frame":
                self._bad_frame(tab, checked.message, checked.cid)
            else:
                tab.put({"type": "error", "id": checked.cid, "code": checked.code,
                         "message": checked.message})
            return
        cid, text = checked
        try:  # uploads of this server only; refused: nothing is stored
            attached = (await self._uploads.attachments(frame.get("attachments"))
                        if self._uploads is not None else [])
        except MediaRefused as err:
            tab.put({"type": "error", "id": cid, "code": "bad_attachment", "message": str(err)})
            return
        inbound = Inbound(tab.thread_id, text, sender="web", source=Source.WEB, client_id=cid,
                          attachments=tuple(m.id for m in attached))
        try:
            _, is_new = await self._bus.submit(inbound)  # stored durably: now it may be acked
        except sqlite3.Error as err:  # the disk refused the write (read-only, full, broken)
            log.error("[%s] could not store a message: %s", tab.thread_id, err)
            tab.put({
                "type": "error", "id": cid, "code": "not_stored",
                "message": f"Could not store your message ({err}), so it was not sent. "
                f"{why_refused(err)}; the page keeps it and will send it again by itself "
                "until it is stored.",
            })
            return
        tab.put({"type": "ack", "id": cid, "duplicate": not is_new})
        if is_new:
            await self.conversations.added(tab.thread_id, self._shown(text))
            # The thread's other tabs show the question too.
            others = [t for t in self._tabs.get(tab.thread_id, ()) if t is not tab]
            pending = with_attachments({"type": "pending", "id": cid, "text": self._shown(text)},
                                       [attachment_json(m) for m in attached])
            for other in others:
                other.put(pending)

    def _to_all(self, frame: dict[str, Any]) -> None:
        if frame["type"] == "conversation_deleted":  # what it streamed is gone with it
            self._streaming.pop(frame["thread_id"], None)
            self._state.pop(frame["thread_id"], None)
        for tabs in list(self._tabs.values()):
            for tab in list(tabs):
                tab.put(frame)

    def _to_thread(self, thread_id: ThreadId, frame: dict[str, Any]) -> None:
        for tab in list(self._tabs.get(thread_id, ())):
            tab.put(frame)

    def _cancelled(self, thread_id: ThreadId, msgs: list[Inbound]) -> None:
        self._to_thread(thread_id, {"type": "cancelled", "ids": [m.client_id for m in msgs]})

    def _bad_frame(self, tab: Tab, reason: str, cid: str | None = None) -> None:
        frame: dict[str, Any] = {"type": "error", "code": "bad_frame", "message": reason}
        if cid is not None:
            frame["id"] = cid
        tab.put(frame)

    def _message_frame(self, mid: int, role: Role, text: str, reply_to: int) -> dict[str, Any]:
        return message_frame(self._renderer, mid, role, text, reply_to)


WEB_KEY = web.AppKey("ganglion_web", WebInterface)


async def _index(request: web.Request) -> web.Response:
    return request.app[WEB_KEY].static_response("index.html")


async def _static_file(request: web.Request) -> web.Response:
    return request.app[WEB_KEY].static_response(request.match_info["file"])


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    return await request.app[WEB_KEY].serve_socket(request)
