"""Streaming answers in a Matrix room: posted early, edited in place, finished by the outbox.

The worker's deltas for a room gather here. Once an answer has streamed for
``matrix.edit_interval_seconds`` it is posted, marked as in progress (" …"), and edited at
most once per interval, and only when ``MIN_NEW_CHARS`` more arrived: a quick answer costs no
early post at all. These edits are best effort (a failed one is skipped). The final message
stays the outbox's (exactly once): ``RoomSender`` sends it as the last edit of the early post
(see ``outbound.final_edit``), whose fallback ``body`` holds the whole text for clients that
show edits as messages of their own.

The early post's transaction id comes from the inbox id of the message it answers, so a run
of the same turn after a crash gets the same event back from the homeserver instead of a
second post. Its event id is also written to ``EARLY_FILE`` in the store folder until the
final is delivered: a final that waits out a restart (homeserver away, crash before
delivery) still edits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ganglion.messages import Outbound, OutKind, ThreadId
from ganglion.storage.atomic import atomic_write

log = logging.getLogger(__name__)

MIN_NEW_CHARS = 16
"""An edit is worth a request only once this much more text has arrived."""
PREVIEW_CHARS = 6_000
"""Of an answer in progress, at most this much is shown (an edit holds its text four times:
new and fallback, Markdown and HTML); the final splits a longer one into several events."""
IN_PROGRESS = " …"
EARLY_FILE = "early-posts.json"
EARLY_KEPT = 100

Post = Callable[[ThreadId, int, str, str | None, int], Awaitable[str | None]]
"""(room, inbox id answered, text, event id of the early post or None for a new one,
edit number) -> the event id the homeserver gave, or None when it did not take it."""


@dataclass
class _Stream:
    answering: int
    """The inbox id of the message this answer answers (0: unknown)."""
    pieces: list[str] = field(default_factory=list)
    """The deltas so far (joined only when shown: a long answer has thousands)."""
    length: int = 0
    event_id: str | None = None
    shown: int = 0
    """Characters shown by the last post or edit."""
    edits: int = 0
    last: float = 0.0
    grown: asyncio.Event = field(default_factory=asyncio.Event)
    flusher: asyncio.Task[None] | None = None
    request: asyncio.Task[None] | None = None
    """The post or edit in flight (shielded: a final waits for it instead of cutting it)."""


class Streams:
    """Per room, the answer streaming now; at most one (turns in a room are serial)."""

    def __init__(self, post: Post, interval: float, store_path: Path, tx_prefix: str) -> None:
        self.post = post
        self.interval = interval
        self.tx_prefix = tx_prefix
        """Inbox ids start again with a new conversation.db; with its instance id in the
        prefix an old early post is never taken for a new answer's."""
        self._path = store_path / EARLY_FILE
        self._streams: dict[ThreadId, _Stream] = {}
        self._saving = asyncio.Lock()
        """One write of EARLY_FILE at a time: two rooms' writes must not land out of order."""
        self._early: dict[str, tuple[str, str]] = _load(self._path)
        """``key`` -> (room, event id) of early posts whose final is not delivered yet."""

    def key(self, answering: int) -> str:
        """The early post's transaction id, and its key in ``EARLY_FILE``."""
        return f"{self.tx_prefix}-{answering}-early"

    def update(self, out: Outbound) -> None:
        """A STATE, DELTA or RESET of the worker, in the order it published them."""
        tid = out.thread_id
        stream = self._streams.get(tid)
        if out.kind is OutKind.STATE:
            if out.text in ("idle", "error"):
                if stream is not None:  # the final (if any) is the outbox's now
                    self._stop_flusher(stream)
                return
            if stream is None or stream.answering != out.reply_to:
                if stream is not None:
                    self._drop(tid, stream)  # an earlier turn's, never finished
                early = self._early.get(self.key(out.reply_to))
                self._streams[tid] = _Stream(
                    out.reply_to, event_id=early[1] if early and early[0] == tid else None)
            elif out.text == "tool":
                # The model called a tool: what it said so far is replaced by its next call's
                # answer (in the same early post).
                self._stop_flusher(stream)
                _clear(stream)
            return
        if stream is None:
            stream = self._streams[tid] = _Stream(0)
        if out.kind is OutKind.RESET:
            _clear(stream)
            return
        if out.kind is OutKind.DELTA:
            stream.pieces.append(out.text)
            stream.length += len(out.text)
            stream.grown.set()
            if stream.flusher is None:
                stream.last = time.monotonic()  # the early post waits an interval too
                stream.flusher = asyncio.create_task(self._flush(tid, stream),
                                                     name=f"matrix-stream-{tid}")

    async def early_post(self, out: Outbound) -> str | None:
        """The event id of the early post a final answer must edit, or None: no edits left
        in flight once this returns."""
        if not out.reply_to:
            return None
        stream = self._streams.get(out.thread_id)
        if stream is not None and stream.answering == out.reply_to:
            self._stop_flusher(stream)
            if stream.request is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(stream.request)
            if stream.event_id is not None:
                return stream.event_id
        early = self._early.get(self.key(out.reply_to))
        return early[1] if early and early[0] == out.thread_id else None

    async def delivered(self, out: Outbound) -> None:
        """A final message answering ``out.reply_to`` is in the room: its stream is over."""
        if not out.reply_to:
            return
        stream = self._streams.get(out.thread_id)
        if stream is not None and stream.answering == out.reply_to:
            self._drop(out.thread_id, stream)
        if self._early.pop(self.key(out.reply_to), None) is not None:
            await self._save()

    def edits(self, thread_id: ThreadId) -> int:
        stream = self._streams.get(thread_id)
        return stream.edits if stream is not None else 0

    async def stop(self) -> None:
        tasks = [t for s in self._streams.values() for t in (s.flusher, s.request) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._streams.clear()

    # -- inside ----------------------------------------------------------------------------

    async def _flush(self, tid: ThreadId, stream: _Stream) -> None:
        """Show the answer in progress: at most once per interval, when enough is new."""
        while True:
            await stream.grown.wait()
            stream.grown.clear()
            wait = stream.last + self.interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if stream.event_id is not None and stream.length - stream.shown < MIN_NEW_CHARS:
                continue
            if stream.event_id is not None and stream.shown >= PREVIEW_CHARS:
                return  # the preview is full; the rest comes with the final
            stream.request = asyncio.create_task(self._show(tid, stream))
            await asyncio.shield(stream.request)
            stream.request = None
            stream.last = time.monotonic()

    async def _show(self, tid: ThreadId, stream: _Stream) -> None:
        text = "".join(stream.pieces)[:PREVIEW_CHARS]
        shown = stream.length
        if not text.strip():
            return
        first = stream.event_id is None
        event_id = await self.post(tid, stream.answering, text + IN_PROGRESS, stream.event_id,
                                   stream.edits)
        if event_id is None:
            return
        stream.shown = shown
        if first:
            stream.event_id = event_id
            if stream.answering:
                self._early[self.key(stream.answering)] = (tid, event_id)
                while len(self._early) > EARLY_KEPT:
                    del self._early[next(iter(self._early))]
                await self._save()
        else:
            stream.edits += 1

    def _stop_flusher(self, stream: _Stream) -> None:
        if stream.flusher is not None:
            stream.flusher.cancel()  # a request in flight is shielded: it finishes
            stream.flusher = None

    def _drop(self, tid: ThreadId, stream: _Stream) -> None:
        self._stop_flusher(stream)
        del self._streams[tid]

    async def _save(self) -> None:
        try:
            async with self._saving:
                data = json.dumps({k: list(v) for k, v in self._early.items()})
                # In a thread: the fsyncs of an atomic write would hold the event loop.
                await asyncio.to_thread(atomic_write, self._path, data)
        except OSError as err:
            log.warning("matrix: could not save %s (%s); a restart before the answer is "
                        "delivered would post it anew", self._path, err)


def _clear(stream: _Stream) -> None:
    stream.pieces.clear()
    stream.length = stream.shown = 0


def _load(path: Path) -> dict[str, tuple[str, str]]:
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("matrix: ignoring %s (%s)", path, err)
        return {}
    if not isinstance(raw, dict):
        return {}
    return {k: (v[0], v[1]) for k, v in raw.items()
            if isinstance(v, list) and len(v) == 2
            and all(isinstance(x, str) for x in v)}
