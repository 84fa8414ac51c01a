"""Talking to the model: endpoints in order, retries with backoff, failover, streamed replies.

Place in the flow: worker -> ``LLMClient.chat()`` -> an OpenAI-compatible endpoint ->
``ChatResult`` back to the worker. Nothing here knows about threads, tools or interfaces; it
turns messages into one answer, or into an ``LLMUnavailable`` that tells the user what to do.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import re
import socket
import ssl
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import openai
from openai import AsyncOpenAI, AsyncStream

from ganglion.config import EndpointConfig, LLMConfig
from ganglion.errors import LLMBadResponse, LLMUnavailable

log = logging.getLogger(__name__)
traffic_log = logging.getLogger("ganglion.llm.traffic")

_MAX_WAIT_SECONDS = 30.0
_CHECK_TIMEOUT_SECONDS = 2.0
_CONNECT_TIMEOUT_SECONDS = 10.0
_CHARS_PER_TOKEN = 4
# What one attempt may raise that means "this endpoint failed", as opposed to a bug or a
# failing callback: SDK errors, undecodable SSE data (ValueError), malformed chunks.
_ATTEMPT_ERRORS = (openai.APIError, LLMBadResponse, ValueError)


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str
    """Raw JSON text exactly as the model sent it (may be malformed)."""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class ChatResult:
    content: str
    tool_calls: list[ToolCall]
    usage: Usage
    model: str
    endpoint: str
    """Name of the endpoint that answered."""


DeltaCallback = Callable[[str], Awaitable[None]]
ResetCallback = Callable[[], Awaitable[None]]


class _FifoLimiter:
    """At most ``limit`` holders at once, admitted strictly in arrival order.

    A released slot is handed straight to the oldest waiter, so a newcomer can never
    overtake a request that is already queued.
    """

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            else:
                self.release()  # the slot reached us just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


@dataclass(slots=True)
class _Endpoint:
    config: EndpointConfig
    client: AsyncOpenAI
    limiter: _FifoLimiter


@dataclass(frozen=True, slots=True)
class _Failure:
    """Why one attempt failed, in words for the end user."""

    what: str
    hint: str
    retryable: bool
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class _Request:
    """One chat() call, as every attempt sends it."""

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    extra: dict[str, Any]
    """Body fields beyond model/messages/tools (temperature, max_tokens...)."""
    on_delta: DeltaCallback | None
    on_reset: ResetCallback | None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.tools:
            body["tools"] = self.tools
        body.update(self.extra)
        return body


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Received:
    """Everything one attempt has streamed in so far."""

    content: list[str] = field(default_factory=list)
    calls: dict[int, _PartialCall] = field(default_factory=dict)
    usage: Usage | None = None
    model: str = ""
    chunks: int = 0
    sent_delta: bool = False

    def take(self, chunk: object) -> str:
        """Fold one decoded chunk in; return its new content text.

        Parsed by hand rather than by the SDK's models: it is several times faster, and
        local servers bend the shape (arguments as objects, names repeated, no index).
        """
        if not isinstance(chunk, dict):
            raise LLMBadResponse("a chunk is not a JSON object")
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self.model = chunk["model"]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = Usage(
                _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
            )
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            if usage is None:
                raise LLMBadResponse("a chunk has no choices")
            return ""
        self.chunks += 1
        text = ""
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict) or choice.get("index", 0) != 0:
                continue
            if isinstance(delta.get("content"), str):
                text += delta["content"]
            for position, part in enumerate(delta.get("tool_calls") or ()):
                if isinstance(part, dict):
                    self._take_call(position, part)
        if text:
            self.content.append(text)
        return text

    def _take_call(self, position: int, part: dict[str, Any]) -> None:
        index = part.get("index")
        call = self.calls.setdefault(index if isinstance(index, int) else position, _PartialCall())
        if isinstance(part.get("id"), str) and part["id"]:
            call.id = part["id"]
        function = part.get("function")
        if not isinstance(function, dict):
            return
        name = function.get("name")
        # Most servers send the name once; some repeat it on every chunk.
        if isinstance(name, str) and name != call.name:
            call.name += name
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            call.arguments.append(arguments)
        elif isinstance(arguments, dict):
            call.arguments.append(json.dumps(arguments, ensure_ascii=False))


def _count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


class LLMClient:
    """Sends chats to the configured endpoints: retries, then fails over in config order."""

    def __init__(self, config: LLMConfig, *, debug: bool = False) -> None:
        self._config = config
        self._debug = debug
        self._secrets = [
            e.api_key for e in config.endpoints if len(e.api_key) >= 4 and e.api_key != "none"
        ]
        self._endpoints = [
            _Endpoint(
                config=e,
                client=AsyncOpenAI(
                    base_url=e.base_url,
                    api_key=e.api_key or "none",
                    # timeout_seconds bounds each wait (first byte, next chunk), not the
                    # whole answer; a dead host should not hold a turn for that long, though.
                    timeout=openai.Timeout(
                        e.timeout_seconds, connect=min(e.timeout_seconds, _CONNECT_TIMEOUT_SECONDS)
                    ),
                    max_retries=0,  # retries and failover are ours
                ),
                limiter=_FifoLimiter(e.max_concurrency),
            )
            for e in config.endpoints
        ]

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        on_delta: DeltaCallback | None = None,
        on_reset: ResetCallback | None = None,
        params: dict[str, Any] | None = None,
    ) -> ChatResult:
        """Stream one completion. ``on_reset`` means: forget the deltas sent so far.

        Raises LLMUnavailable (plain words for the user) when every endpoint failed.
        """
        extra: dict[str, Any] = {}
        if self._config.temperature is not None:
            extra["temperature"] = self._config.temperature
        extra.update(params or {})
        request = _Request(model or self._config.model, messages, tools, extra, on_delta, on_reset)
        failures: list[tuple[_Endpoint, _Failure, int]] = []
        for index, ep in enumerate(self._endpoints):
            attempt = 0
            while True:
                attempt += 1
                got = _Received()
                failure = await self._attempt(ep, request, got)
                if failure is None:
                    return await self._result(ep, request, got)
                retry = failure.retryable and attempt <= self._config.retries
                wait = self._wait(failure, attempt) if retry else 0.0
                if retry:
                    then = f"retrying in {wait:.2f} s"
                elif index + 1 < len(self._endpoints):
                    then = f"failing over to '{self._endpoints[index + 1].config.name}'"
                else:
                    then = "giving up"
                log.warning(
                    "LLM endpoint %s: attempt %d failed: %s; %s",
                    ep.config.name,
                    attempt,
                    self._scrub(failure.what),
                    then,
                )
                if got.sent_delta and on_reset is not None:
                    await on_reset()  # the partial answer is void, whatever comes next
                if not retry:
                    break
                await asyncio.sleep(wait)
            failures.append((ep, failure, attempt))
        raise LLMUnavailable(self._unavailable_message(failures))

    async def check(self) -> str | None:
        """Probe the first endpoint (GET /models): None if it answers, else the problem in words."""
        ep = self._endpoints[0]
        try:
            await ep.client.models.list(timeout=_CHECK_TIMEOUT_SECONDS)
        except _ATTEMPT_ERRORS as err:
            failure = _classify(err, _Received(), _CHECK_TIMEOUT_SECONDS)
            return self._scrub(
                f"Endpoint '{ep.config.name}' ({ep.config.base_url}): {failure.what}. "
                f"{failure.hint}"
            )
        return None

    def describe(self) -> str:
        first, *others = (e.config for e in self._endpoints)
        text = f"endpoint '{first.name}' at {first.base_url}"
        if others:
            text += " (then " + ", ".join(f"'{e.name}' at {e.base_url}" for e in others) + ")"
        return f"{text}, model {self._config.model}"

    async def close(self) -> None:
        for ep in self._endpoints:
            await ep.client.close()

    # --- one attempt ----------------------------------------------------------------------

    async def _attempt(self, ep: _Endpoint, request: _Request, got: _Received) -> _Failure | None:
        """One request to one endpoint, holding its concurrency slot only meanwhile."""
        if self._debug:
            body = json.dumps(request.body(), ensure_ascii=False)
            traffic_log.debug("-> %s %s", ep.config.name, self._scrub(body))
        await ep.limiter.acquire()
        try:
            try:
                # The SDK's typed create() costs ~1 ms per message walking its TypedDicts;
                # post() sends our body as is and hands back each chunk as plain JSON.
                stream = await ep.client.post(
                    "/chat/completions",
                    body=request.body(),
                    cast_to=object,
                    stream=True,
                    stream_cls=AsyncStream[object],
                )
            except _ATTEMPT_ERRORS as err:
                return self._failed(ep, err, got)
            try:
                while True:
                    try:
                        chunk = await anext(stream)
                        if self._debug:
                            traffic_log.debug(
                                "<- %s %s", ep.config.name, self._scrub(json.dumps(chunk))
                            )
                        text = got.take(chunk)
                    except StopAsyncIteration:
                        break
                    except _ATTEMPT_ERRORS as err:
                        return self._failed(ep, err, got)
                    # Outside the try: a failing callback is the caller's error, not the model's.
                    if text and request.on_delta is not None:
                        got.sent_delta = True
                        await request.on_delta(text)
            finally:
                # Closes the HTTP response too when cancelled mid-stream (the Stop button).
                await stream.close()
        finally:
            ep.limiter.release()
        if got.chunks == 0:
            return self._failed(ep, LLMBadResponse("empty stream"), got)
        return None

    def _failed(self, ep: _Endpoint, err: BaseException, got: _Received) -> _Failure:
        if self._debug:
            body = err.body if isinstance(err, openai.APIError) else None
            traffic_log.debug(
                "<- %s failed: %s %s",
                ep.config.name,
                self._scrub(repr(err)),
                self._scrub(repr(body)),
            )
        return _classify(err, got, ep.config.timeout_seconds)

    async def _result(self, ep: _Endpoint, request: _Request, got: _Received) -> ChatResult:
        content = "".join(got.content)
        calls = [
            ToolCall(id=c.id or _new_call_id(), name=c.name, arguments="".join(c.arguments) or "{}")
            for _, c in sorted(got.calls.items())
        ]
        if request.tools and not calls:
            rest, calls = _text_tool_calls(content, _tool_names(request.tools))
            if calls:
                # The UI saw the call as text; show only what remains of the answer.
                if got.sent_delta and request.on_reset is not None:
                    await request.on_reset()
                    if rest and request.on_delta is not None:
                        await request.on_delta(rest)
                content = rest
        usage = got.usage or Usage(
            prompt_tokens=_estimate_tokens(json.dumps(request.messages, ensure_ascii=False)),
            completion_tokens=_estimate_tokens(content + "".join(c.arguments for c in calls)),
        )
        return ChatResult(content, calls, usage, got.model or request.model, ep.config.name)

    def _wait(self, failure: _Failure, attempt: int) -> float:
        if failure.retry_after is not None:
            return min(failure.retry_after, _MAX_WAIT_SECONDS)
        return min(self._config.backoff_seconds * 2.0 ** (attempt - 1), _MAX_WAIT_SECONDS)

    def _unavailable_message(self, failures: list[tuple[_Endpoint, _Failure, int]]) -> str:
        parts = ["I could not get an answer from the language model."]
        hints: list[str] = []
        for ep, failure, attempts in failures:
            plural = "s" if attempts != 1 else ""
            parts.append(
                f"Endpoint '{ep.config.name}' ({ep.config.base_url}): {failure.what} "
                f"({attempts} attempt{plural})."
            )
            if failure.hint not in hints:
                hints.append(failure.hint)
        parts += hints
        if len(failures) == 1:
            parts.append("Change llm.endpoints in config.yaml to use another one.")
        else:
            parts.append("Check llm.endpoints in config.yaml.")
        return self._scrub(" ".join(parts))

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


# --- classifying failures -------------------------------------------------------------------

_HINT_DOWN = "Is the model server running, and is base_url right?"
_HINT_SLOW = (
    "The model server may be overloaded or the model slow to load; "
    "raising the endpoint's timeout_seconds may help."
)
_HINT_SERVER = "The model server reported an error; its own log should say why."
_HINT_BUSY = "The endpoint is limiting requests; wait a little and try again."
_HINT_KEY = "Check the endpoint's api_key in config.yaml."
_HINT_NOT_FOUND = "Check llm.model and that the endpoint's base_url ends in /v1."
_HINT_REJECTED = "Check llm.model and the request settings."
_HINT_GARBAGE = "Check that base_url points to an OpenAI-compatible API (usually ending in /v1)."


def _classify(err: BaseException, got: _Received, timeout: float) -> _Failure:
    if isinstance(err, openai.APIStatusError):
        return _status_failure(err.status_code, _server_message(err), err.response.headers)
    if isinstance(err, openai.APITimeoutError):
        if any(type(exc).__name__ == "ConnectTimeout" for exc in _causes(err)):
            return _Failure("could not connect (timed out)", _HINT_DOWN, True)
        return _Failure(f"timed out (nothing received for {timeout:g} s)", _HINT_SLOW, True)
    if isinstance(err, openai.APIConnectionError):
        if got.chunks:
            return _Failure(
                "the connection broke off in the middle of the answer", _HINT_SERVER, True
            )
        return _Failure(_connection_words(err), _HINT_DOWN, True)
    if isinstance(err, openai.APIError):  # an error event inside an otherwise good stream
        return _Failure(
            f"the server reported an error mid-answer ({err.message[:200]})", _HINT_SERVER, True
        )
    return _Failure(
        "it answered with something that is not a chat completion", _HINT_GARBAGE, False
    )


def _status_failure(status: int, message: str, headers: Mapping[str, str]) -> _Failure:
    detail = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    if status == 429:
        return _Failure(f"too many requests ({detail})", _HINT_BUSY, True, _retry_after(headers))
    if status >= 500 or status == 408:
        return _Failure(f"server error ({detail})", _HINT_SERVER, True, _retry_after(headers))
    if status in (401, 403):
        return _Failure(f"the API key was refused ({detail})", _HINT_KEY, False)
    if status == 404:
        return _Failure(f"not found ({detail})", _HINT_NOT_FOUND, False)
    return _Failure(f"the request was rejected ({detail})", _HINT_REJECTED, False)


def _server_message(err: openai.APIStatusError) -> str:
    body = err.body
    message = body.get("message") if isinstance(body, dict) else None
    return " ".join(message.split())[:200] if isinstance(message, str) else ""


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (ValueError, TypeError, OverflowError):
        return None


def _causes(err: BaseException) -> Iterator[BaseException]:
    """The error and everything behind it (the SDK only says "Connection error")."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [err]
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        pending += [exc.__cause__, exc.__context__]
        if isinstance(exc, BaseExceptionGroup):
            pending += list(exc.exceptions)


def _connection_words(err: BaseException) -> str:
    names: set[str] = set()
    for exc in _causes(err):
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
        if isinstance(exc, socket.gaierror):
            return "host name not found"
        if isinstance(exc, ssl.SSLError):
            return "TLS/SSL error"
        names.add(type(exc).__name__)
    if names & {"RemoteProtocolError", "ReadError"}:
        return "the server closed the connection without answering"
    return "could not connect"


# --- tool calls written as text --------------------------------------------------------------

_TAGGED_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.DOTALL)
_FENCED = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)


def _text_tool_calls(content: str, offered: set[str]) -> tuple[str, list[ToolCall]]:
    """Local models sometimes write tool calls as text; recover them.

    Recognises ``<tool_call>{"name": .., "arguments": ..}</tool_call>`` blocks anywhere, or a
    whole answer that is one JSON object naming an offered tool. Returns (remaining text, calls).
    """
    calls: list[ToolCall] = []

    def take(match: re.Match[str]) -> str:
        call = _call_from_json(match.group(1), None)
        if call is None:
            return match.group(0)
        calls.append(call)
        return ""

    rest = _TAGGED_CALL.sub(take, content)
    if calls:
        return rest.strip(), calls
    text = content.strip().removeprefix("<|python_tag|>").strip()
    fenced = _FENCED.fullmatch(text)
    call = _call_from_json(fenced.group(1) if fenced else text, offered)
    return ("", [call]) if call is not None else (content, [])


def _call_from_json(text: str, offered: set[str] | None) -> ToolCall | None:
    if not text.startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    if offered is not None and obj["name"] not in offered:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    raw = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return ToolCall(id=_new_call_id(), name=obj["name"], arguments=raw)


def _tool_names(tools: list[dict[str, Any]]) -> set[str]:
    names = set()
    for tool in tools:
        function = tool.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _estimate_tokens(text: str) -> int:
    return (len(text) + _CHARS_PER_TOKEN - 1) // _CHARS_PER_TOKEN
