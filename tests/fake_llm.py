"""A fake OpenAI-compatible HTTP server with scripted replies (and transcriptions), for the
tests and benchmarks.

Place in the flow: it stands where a real model server stands, on the far side of
``ganglion.llm.client``. Replies are queued with ``script()``; with nothing queued it echoes the
last user message. Run it standalone for benchmarks: ``python tests/fake_llm.py --port 8089``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest_asyncio
from aiohttp import BodyPartReader, web

ToolCallSpec = tuple[str, "dict[str, Any] | str"]


@dataclass
class Reply:
    """One scripted answer. Defaults give a quick 200 with ``text`` streamed word by word."""

    text: str = ""
    tool_calls: list[ToolCallSpec] = field(default_factory=list)
    """(name, arguments); a str is sent verbatim, so malformed JSON can be tested."""
    status: int = 200
    """Anything but 200 answers with an OpenAI-style error body."""
    retry_after: float | None = None
    """Sent as a Retry-After header (seconds) with an error status."""
    delay: float = 0.0
    """Seconds before the first byte."""
    held: asyncio.Event | None = None
    """Answer only once the test sets this event (after ``delay``): for a fault that must be
    in place before the answer comes, with no race against the clock."""
    chunk_delay: float = 0.0
    """Seconds between streamed chunks."""
    cut_after_chunks: int | None = None
    """Stream this many chunks, then drop the connection mid-stream."""
    stall_after_chunks: int | None = None
    """Stream this many chunks, then send nothing more until the client leaves (a server
    still generating): a client that returns has closed the stream before its end."""
    held_before_chunks: dict[int, asyncio.Event] = field(default_factory=dict)
    """Streaming: before chunk ``i`` (the role chunk is 0, word ``n`` is chunk ``n + 1``),
    wait for its event: a slow model whose pace the test sets, with no race against the
    clock."""
    finish: str | None = None
    """The finish_reason sent ("length"...); by default "tool_calls" or "stop"."""
    garbage: bool = False
    """200 with a non-JSON body (or broken SSE data when streaming)."""
    raw_chunks: list[str] | None = None
    """Streamed as the data events, verbatim, instead of the completion's chunks, then
    ``[DONE]``: valid JSON of the wrong shape (``'{"choices": [{"foo": 1}]}'``)."""
    raw_body: str | None = None
    """200 with this text as an ``application/json`` body, whether a stream was asked for or
    not (a server that ignores ``stream``): ``'[1, 2]'``, or ``completion_json("hi")``."""
    hang: bool = False
    """Never answer; the request ends only when the client leaves or the server stops."""
    usage: tuple[int, int] | None = None
    """(prompt_tokens, completion_tokens) to report; estimated when None."""
    usage_chunk: bool = True
    """False: leave out the usage chunk even when asked (as servers that ignore it do)."""


ReplyFactory = Callable[[dict[str, Any]], Reply]


def _words(text: str) -> list[str]:
    """Split so that the pieces join back to exactly ``text``."""
    pieces = re.findall(r"\s*\S+\s*", text)
    return pieces if pieces else ([text] if text else [])


def _halves(text: str) -> list[str]:
    mid = len(text) // 2
    return [p for p in (text[:mid], text[mid:]) if p]


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


@dataclass(frozen=True)
class Transcribed:
    """One audio upload the fake received."""

    model: str
    filename: str
    content_type: str
    data: bytes
    language: str | None


class FakeLLM:
    """An aiohttp server speaking enough of the OpenAI API for Ganglion: chat and models."""

    def __init__(self, models: list[str] | None = None) -> None:
        self.models: list[str] = list(models) if models is not None else ["fake-model"]
        self.requests: list[dict[str, Any]] = []
        """Chat request bodies, in arrival order."""
        self.request_headers: list[dict[str, str]] = []
        """Headers of each chat request (names lowercased), parallel to ``requests``."""
        self.in_flight = 0
        self.max_in_flight = 0
        self.disconnects = 0
        """Chat requests whose client went away before the answer was complete."""
        self.model_lists = 0
        """Model lists served (GET /models): the daemon's start-up probe, for one."""
        self.models_held: asyncio.Event | None = None
        """When set to an event, model lists are answered only once the test sets it."""
        self.transcriptions: list[Transcribed] = []
        """Audio uploads to /audio/transcriptions, in arrival order."""
        self.transcript = "hello from a voice note"
        """What every transcription answers."""
        self.transcription_error: int | None = None
        """When set, transcriptions are answered with this HTTP status instead."""
        self._script: deque[Reply | ReplyFactory] = deque()
        self.default: ReplyFactory | None = None
        """What answers when nothing is scripted (None: an echo of the last user message)."""
        self._handlers: set[asyncio.Task[Any]] = set()
        self._cutting: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self._ids = 0
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: Reply | ReplyFactory) -> None:
        """Queue replies; each chat request takes the next one (FIFO)."""
        self._script.extend(replies)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds, re-checked whenever a chat request starts or ends
        and whenever the model list is served.

        Bound it with ``asyncio.timeout()``.
        """
        while True:
            changed = self._changed
            if condition():
                return
            await changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def reset(self) -> None:
        """Forget the script, the recorded requests and the counters."""
        self._script.clear()
        self.requests.clear()
        self.request_headers.clear()
        self.max_in_flight = self.in_flight
        self.disconnects = 0
        self.model_lists = 0
        self.transcriptions.clear()

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        # handler_cancellation: a client hanging up cancels its handler, as with a real server.
        runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        self._runner = runner
        self._stopping = False
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening and end every request at once, hanging ones included."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping = True
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=1.0)
        await runner.cleanup()

    # --- handlers -------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        if self.models_held is not None:
            await self.models_held.wait()
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        self.model_lists += 1
        self._notify()
        return web.json_response({"object": "list", "data": data})

    async def _transcribe(self, request: web.Request) -> web.Response:
        """OpenAI's transcription upload: a multipart form with "model" and "file" (its
        filename's extension names the format), "language" optional."""
        if not request.content_type.startswith("multipart/form-data"):
            return _error(400, "expected multipart/form-data", "invalid_request_error")
        fields: dict[str, str] = {}
        file: tuple[str, str, bytes] | None = None
        async for part in await request.multipart():
            assert isinstance(part, BodyPartReader)
            if part.name == "file":
                file = (part.filename or "", part.headers.get("Content-Type", ""),
                        await part.read())
            elif part.name:
                fields[part.name] = await part.text()
        if file is None or not file[2] or not fields.get("model"):
            return _error(400, "model and file are required", "invalid_request_error")
        self.transcriptions.append(Transcribed(fields["model"], *file, fields.get("language")))
        self._notify()
        if self.transcription_error is not None:
            return _error(self.transcription_error, "transcription failed", "server_error")
        return web.json_response({"text": self.transcript})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "request body must be an object", "invalid_request_error")
        self.requests.append(body)
        self.request_headers.append({k.lower(): v for k, v in request.headers.items()})
        item = self._script.popleft() if self._script else self.default
        if item is None:
            reply = Reply(text=f"echo: {_last_user_text(body)}")
        else:
            reply = item if isinstance(item, Reply) else item(body)

        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._notify()
        complete = False
        try:
            response = await self._answer(request, body, reply)
            complete = True
            return response
        finally:
            self.in_flight -= 1
            self._handlers.discard(task)
            if not complete and not self._stopping and task not in self._cutting:
                self.disconnects += 1
            self._notify()
            self._cutting.discard(task)

    async def _answer(
        self, request: web.Request, body: dict[str, Any], reply: Reply
    ) -> web.StreamResponse:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.held is not None:
            await reply.held.wait()
        if reply.hang:
            await asyncio.Event().wait()
        if reply.raw_body is not None:
            return web.Response(text=reply.raw_body, content_type="application/json")
        if reply.status != 200:
            headers = {}
            if reply.retry_after is not None:
                headers["Retry-After"] = f"{reply.retry_after:g}"
            kind = (
                "rate_limit_exceeded"
                if reply.status == 429
                else ("server_error" if reply.status >= 500 else "invalid_request_error")
            )
            return _error(reply.status, f"fake error {reply.status}", kind, headers)

        self._ids += 1
        meta = {
            "id": f"chatcmpl-fake{self._ids}",
            "created": int(time.time()),
            "model": str(body.get("model") or (self.models[0] if self.models else "fake-model")),
            "system_fingerprint": "fp_fake",
        }
        usage = self._usage(body, reply)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream(request, meta, reply, usage, include_usage)

        if reply.cut_after_chunks is not None:
            await self._cut(request)
        if reply.garbage:
            return web.Response(text="<html>this is not JSON</html>", content_type="text/html")
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.text or None,
            "refusal": None,
        }
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": f"call_{meta['id']}_{i}",
                    "type": "function",
                    "function": {"name": name, "arguments": _arguments(args)},
                }
                for i, (name, args) in enumerate(reply.tool_calls)
            ]
        return web.json_response(
            {
                "object": "chat.completion",
                **meta,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": _finish(reply),
                    }
                ],
                "usage": usage,
            }
        )

    async def _stream(
        self,
        request: web.Request,
        meta: dict[str, Any],
        reply: Reply,
        usage: dict[str, int],
        include_usage: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        if reply.garbage:
            await response.write(b"data: {this is not json\n\n")
            await response.write_eof()
            return response
        if reply.raw_chunks is not None:
            for data in reply.raw_chunks:
                await response.write(b"data: " + data.encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            out = {
                "object": "chat.completion.chunk",
                **meta,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                out["usage"] = None
            return out

        chunks = [chunk({"role": "assistant", "content": ""})]
        chunks += [chunk({"content": piece}) for piece in _words(reply.text)]
        for i, (name, args) in enumerate(reply.tool_calls):
            chunks.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": i,
                                "id": f"call_{meta['id']}_{i}",
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ]
                    }
                )
            )
            chunks += [
                chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
                for piece in _halves(_arguments(args))
            ]
        chunks.append(chunk({}, _finish(reply)))
        if include_usage and reply.usage_chunk:
            chunks.append(
                {"object": "chat.completion.chunk", **meta, "choices": [], "usage": usage}
            )

        for sent, data in enumerate(chunks):
            if reply.cut_after_chunks is not None and sent >= reply.cut_after_chunks:
                await self._cut(request)
            if reply.stall_after_chunks is not None and sent >= reply.stall_after_chunks:
                await asyncio.Event().wait()  # aiohttp cancels this once the client is gone
            if sent in reply.held_before_chunks:
                await reply.held_before_chunks[sent].wait()
            if sent and reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
            await response.write(b"data: " + json.dumps(data).encode() + b"\n\n")
        if reply.cut_after_chunks is not None:
            await self._cut(request)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _cut(self, request: web.Request) -> None:
        """Close the connection without finishing the response (chunked body left incomplete)."""
        task = asyncio.current_task()
        assert task is not None
        self._cutting.add(task)
        if request.transport is not None:
            request.transport.close()
        # The lost connection makes aiohttp cancel this handler (or stop() does).
        await asyncio.Event().wait()

    @staticmethod
    def _usage(body: dict[str, Any], reply: Reply) -> dict[str, int]:
        if reply.usage is not None:
            prompt, completion = reply.usage
        else:
            prompt = max(1, len(json.dumps(body.get("messages") or [])) // 4)
            completion = len(_words(reply.text)) + sum(
                len(_arguments(a)) // 4 + 1 for _, a in reply.tool_calls
            )
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }


def completion_json(text: str, tool_calls: list[ToolCallSpec] | None = None,
                    finish: str | None = None) -> str:
    """A whole (not streamed) chat completion, for ``Reply(raw_body=...)``."""
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if tool_calls:
        message["tool_calls"] = [
            {"id": f"call_raw_{i}", "type": "function",
             "function": {"name": name, "arguments": _arguments(args)}}
            for i, (name, args) in enumerate(tool_calls)
        ]
    return json.dumps({
        "id": "chatcmpl-raw", "object": "chat.completion", "created": 0, "model": "fake-model",
        "choices": [{"index": 0, "message": message,
                     "finish_reason": finish or ("tool_calls" if tool_calls else "stop")}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    })


def _finish(reply: Reply) -> str:
    return reply.finish or ("tool_calls" if reply.tool_calls else "stop")


def _arguments(args: dict[str, Any] | str) -> str:
    return args if isinstance(args, str) else json.dumps(args)


def _error(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.json_response(body, status=status, headers=headers)


# --- pytest fixtures ----------------------------------------------------------------------


@pytest_asyncio.fixture
async def fake_llm() -> AsyncIterator[FakeLLM]:
    """A started FakeLLM on a free port, stopped after the test."""
    fake = FakeLLM()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest_asyncio.fixture
async def fake_llm_factory() -> AsyncIterator[Callable[..., Awaitable[FakeLLM]]]:
    """``await factory(models=[...])`` gives more started FakeLLMs; all stopped after the test."""
    started: list[FakeLLM] = []

    async def factory(models: list[str] | None = None) -> FakeLLM:
        fake = FakeLLM(models=models)
        await fake.start()
        started.append(fake)
        return fake

    try:
        yield factory
    finally:
        for fake in started:
            await fake.stop()


# --- standalone ---------------------------------------------------------------------------


def slow_replies(words: int, delay: float) -> ReplyFactory:
    """Echo, except that a message starting with "slow" gets ``words`` words streamed
    ``delay`` seconds apart (a model writing a long answer, for the streaming benchmark)."""
    def reply(body: dict[str, Any]) -> Reply:
        text = _last_user_text(body)
        if not text.startswith("slow"):
            return Reply(text=f"echo: {text}")
        return Reply(text=" ".join(f"word{i}" for i in range(words)), chunk_delay=delay)
    return reply


async def _serve_forever(port: int, models: list[str], slow: ReplyFactory | None) -> None:
    fake = FakeLLM(models=models)
    fake.default = slow
    await fake.start(port)
    print(f"fake LLM serving echo replies at {fake.base_url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible server (echo replies).")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        default=None,
        help="a model id to list (repeatable)",
    )
    parser.add_argument("--slow-words", type=int, default=60,
                        help='words of the answer to a message starting with "slow"')
    parser.add_argument("--slow-delay", type=float, default=0.0,
                        help='seconds between the streamed words of that answer (0: no '
                        'slow answers)')
    args = parser.parse_args()
    slow = slow_replies(args.slow_words, args.slow_delay) if args.slow_delay else None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args.port, args.models or ["fake-model"], slow))


if __name__ == "__main__":
    main()


def system_of(body: dict[str, Any]) -> str:
    """The system messages of a recorded request, joined: the prompt's head, the memory
    files and the time are separate messages (ganglion/llm/prompt.py)."""
    return "\n\n".join(str(m["content"]) for m in body.get("messages") or []
                       if m.get("role") == "system")


def tool_results(body: dict[str, Any]) -> list[str]:
    """The tool results a recorded request carried, in order."""
    return [m["content"] for m in body["messages"] if m["role"] == "tool"]


def offered(body: dict[str, Any]) -> list[str]:
    """The names of the tools a recorded request offered, sorted."""
    return sorted(t["function"]["name"] for t in body.get("tools") or [])


def image_parts(message: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The images of one recorded message's content parts: (type, bytes) of each
    ``image_url`` part, which must be a base64 data URL."""
    content = message.get("content")
    if not isinstance(content, list):
        return []
    out = []
    for part in content:
        if part.get("type") != "image_url":
            continue
        url = part["image_url"]["url"]
        head, _, data = url.partition(",")
        assert head.startswith("data:") and head.endswith(";base64"), head[:40]
        out.append((head[5:-7], base64.b64decode(data, validate=True)))
    return out


def user_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body.get("messages") or [] if m.get("role") == "user"]
