"""Talking to the model: endpoints in order, retries with backoff, failover, streamed replies.

Place in the flow: worker -> ``LLMClient.chat()`` -> an OpenAI-compatible endpoint ->
``ChatResult`` back to the worker. Nothing here knows about threads, tools or interfaces; it
turns messages into one answer, or into an ``LLMUnavailable`` that tells the user what to do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ganglion.config import LLMConfig
from ganglion.errors import LLMBadResponse, LLMUnavailable
from ganglion.llm.endpoints import Endpoint, EndpointPool
from ganglion.llm.failures import Failure, classify, retry_wait
from ganglion.llm.received import Received
from ganglion.llm.repetition import RepetitionGuard
from ganglion.llm.results import ChatResult, ToolCall, Usage
from ganglion.llm.text_tools import new_call_id, text_tool_calls, tool_names
from ganglion.tokens import estimate_tokens

log = logging.getLogger(__name__)
traffic_log = logging.getLogger("ganglion.llm.traffic")

LOOPING = "[stopped: the answer was repeating itself]"


def _stream_class() -> type[Any]:
    from openai import AsyncStream  # noqa: PLC0415  (see _attempt_errors)

    return AsyncStream[object]


def _attempt_errors() -> tuple[type[Exception], ...]:
    """What one attempt may raise that means "this endpoint failed", as opposed to a bug or a
    failing callback: SDK errors, undecodable SSE data (ValueError), malformed chunks.

    The openai package is imported here, not at module level: it is most of a cold start,
    and the App imports it in a thread once the daemon is ready (see Endpoint.client).
    """
    import openai  # noqa: PLC0415

    return (openai.APIError, LLMBadResponse, ValueError)


def _is_json(stream: Any) -> bool:
    """The reply is a JSON document, not an event stream."""
    content_type: str = stream.response.headers.get("content-type", "")
    return content_type.split(";", maxsplit=1)[0].strip().lower() == "application/json"


async def _whole_body(stream: Any) -> object:
    """Read and decode a reply that is not a stream; transport errors are mapped as the SDK
    maps them while streaming, so a timeout or a cut connection reads as one."""
    import anyio  # noqa: PLC0415  (see _attempt_errors)
    import httpx2  # noqa: PLC0415
    import openai  # noqa: PLC0415

    response = stream.response  # the SDK's public handle on the reply: an httpx2.Response
    try:
        raw = await response.aread()
    except httpx2.TimeoutException as err:
        raise openai.APITimeoutError(request=response.request) from err
    except (httpx2.RequestError, ssl.SSLError, anyio.EndOfStream) as err:
        # The same transport errors the SDK maps to APIConnectionError while it streams:
        # httpx2's public RequestError, and TLS failures httpx2 does not wrap yet
        # (https://github.com/pydantic/httpx2/issues/854).
        raise openai.APIConnectionError(message="the connection broke off",
                                        request=response.request) from err
    return json.loads(raw)


DeltaCallback = Callable[[str], Awaitable[None]]
ResetCallback = Callable[[], Awaitable[None]]
UsageSink = Callable[[ChatResult], Awaitable[None]]


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
    where: str
    """The log lines' prefix: the thread asking, if any."""

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


class LLMClient:
    """Sends chats to the pool's endpoints that offer the model: retries, then failover.

    Without a pool it makes its own from ``config.endpoints`` (and closes it). With
    ``usage_sink``, every answer's ChatResult is reported to it (tokens for quotas and stats).
    """

    def __init__(
        self,
        config: LLMConfig,
        *,
        debug: bool = False,
        pool: EndpointPool | None = None,
        usage_sink: UsageSink | None = None,
        on_call: Callable[[str, float], None] | None = None,
    ) -> None:
        self._config = config
        self._debug = debug
        self._owns_pool = pool is None
        self._pool = pool if pool is not None else EndpointPool(config)
        self._usage_sink = usage_sink
        self._on_call = on_call
        """Told each answered request's endpoint and seconds (the /metrics histogram)."""

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        on_delta: DeltaCallback | None = None,
        on_reset: ResetCallback | None = None,
        params: dict[str, Any] | None = None,
        thread_id: str | None = None,
    ) -> ChatResult:
        """Stream one completion. ``on_reset`` means: forget the deltas sent so far.
        ``thread_id`` (the conversation asking, when there is one) prefixes its log lines.

        Raises LLMUnavailable (plain words for the user) when every endpoint failed.
        """
        where = f"[{thread_id}] " if thread_id else ""
        model = model or self._config.model
        # Every request is capped: a looping model otherwise runs to the server's own limit.
        extra: dict[str, Any] = {"max_tokens": self._config.max_tokens_for(model)}
        if self._config.temperature is not None:
            extra["temperature"] = self._config.temperature
        extra.update(params or {})
        request = _Request(model, messages, tools, extra, on_delta, on_reset, where)
        failures: list[tuple[Endpoint, Failure, int]] = []
        candidates = self._pool.candidates(request.model)
        for index, ep in enumerate(candidates):
            attempt = 0
            while True:
                attempt += 1
                got = Received()
                began = time.monotonic()
                failure = await self._attempt(ep, request, got)
                if failure is None:
                    if self._on_call is not None:
                        self._on_call(ep.name, time.monotonic() - began)
                    self._pool.mark_ok(ep)
                    result = await self._result(ep, request, got)
                    if self._usage_sink is not None:
                        await self._usage_sink(result)
                    return result
                retry = failure.retryable and attempt <= self._config.retries
                wait = retry_wait(failure, attempt, self._config.backoff_seconds) if retry else 0.0
                if retry:
                    then = f"retrying in {wait:.2f} s"
                elif index + 1 < len(candidates):
                    then = f"failing over to '{candidates[index + 1].config.name}'"
                else:
                    then = "giving up"
                log.warning(
                    "%sLLM endpoint %s: attempt %d failed: %s; %s",
                    where,
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
            self._pool.mark_failed(ep, failure)
            failures.append((ep, failure, attempt))
        raise LLMUnavailable(self._unavailable_message(failures))

    def describe(self) -> str:
        first, *others = (e.config for e in self._pool.endpoints())
        text = f"endpoint '{first.name}' at {first.shown_url}"
        if others:
            text += " (then " + ", ".join(f"'{e.name}' at {e.shown_url}" for e in others) + ")"
        return f"{text}, model {self._config.model}"

    async def close(self) -> None:
        if self._owns_pool:
            await self._pool.close()

    # --- one attempt ----------------------------------------------------------------------

    async def _attempt(self, ep: Endpoint, request: _Request, got: Received) -> Failure | None:
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
                    stream_cls=_stream_class(),
                )
            except _attempt_errors() as err:
                return self._failed(ep, err, got)
            try:
                failure = await self._receive(ep, request, stream, got)
            finally:
                # Closes the HTTP response too when cancelled mid-stream (the Stop button).
                await stream.close()
        finally:
            ep.limiter.release()
        if failure is not None:
            return failure
        try:
            got.check_complete()  # valid JSON that said nothing is no answer either
        except LLMBadResponse as err:
            return self._failed(ep, err, got)
        return None

    async def _receive(
        self, ep: Endpoint, request: _Request, stream: Any, got: Received
    ) -> Failure | None:
        """Fold the reply into ``got`` (a stream, or one whole completion from a server that
        ignores ``stream``), passing its text on as it comes: the start of what may be a tool
        call written as text is held back, and a stream that loops is left (the caller closes
        it, so the server stops generating)."""
        whole = _is_json(stream)
        guard = RepetitionGuard()
        while True:
            try:
                data = await _whole_body(stream) if whole else await anext(stream)
                self._log_received(ep, data)
                text = got.take_completion(data) if whole else got.take(data)
            except StopAsyncIteration:
                return None
            except _attempt_errors() as err:
                return self._failed(ep, err, got)
            # Outside the try: a failing callback is the caller's error, not the model's.
            if text and request.on_delta is not None:
                shown = got.hold.take(text) if request.tools else text
                if shown:
                    got.sent_delta = True
                    await request.on_delta(shown)
            if whole:
                return None
            if text and guard.looping(text):
                got.looping = True
                log.warning("%s%s: the answer of %s kept repeating itself (a cycle of %d "
                            "characters) after %d characters; stopped it", request.where,
                            ep.config.name, request.model, guard.cycle,
                            sum(map(len, got.content)))
                return None

    def _log_received(self, ep: Endpoint, data: object) -> None:
        if self._debug:
            traffic_log.debug("<- %s %s", ep.config.name, self._scrub(json.dumps(data)))

    def _failed(self, ep: Endpoint, err: BaseException, got: Received) -> Failure:
        if self._debug:
            body = getattr(err, "body", None)
            traffic_log.debug(
                "<- %s failed: %s %s",
                ep.config.name,
                self._scrub(repr(err)),
                self._scrub(repr(body)),
            )
        return classify(err, bool(got.chunks), ep.config.timeout_seconds)

    async def _result(self, ep: Endpoint, request: _Request, got: Received) -> ChatResult:
        content = "".join(got.content)
        calls = [
            ToolCall(id=c.id or new_call_id(), name=c.name, arguments="".join(c.arguments) or "{}")
            for _, c in sorted(got.calls.items())
        ]
        held = got.hold.release()
        if request.tools and not calls:
            rest, calls = text_tool_calls(content, tool_names(request.tools))
            if calls:
                # The UI may have seen part of the call as text (past the hold's limit);
                # show only what remains of the answer.
                if got.sent_delta and request.on_reset is not None:
                    await request.on_reset()
                if rest and request.on_delta is not None:
                    await request.on_delta(rest)
                content, held = rest, ""
        if held and request.on_delta is not None:
            await request.on_delta(held)
        usage = got.usage or Usage(
            prompt_tokens=estimate_tokens(json.dumps(request.messages, ensure_ascii=False)),
            completion_tokens=estimate_tokens(content + "".join(c.arguments for c in calls)),
            estimated=True,
        )
        model = got.model or request.model
        return ChatResult(content, calls, usage, model, ep.config.name,
                          got.finish_reason, cut=self._cut(request, got, model))

    def _cut(self, request: _Request, got: Received, model: str) -> str:
        """Why the answer ended early, for the user (logged), or "" if it ended by itself."""
        if got.looping:
            return LOOPING
        if got.finish_reason != "length":
            return ""
        cap = request.extra.get("max_tokens")
        calls = f" ({len(got.calls)} tool call(s) cut off)" if got.calls else ""
        log.warning("%sthe answer of %s reached its cap of %s tokens (finish_reason "
                    "length)%s", request.where, model, cap, calls)
        at = f"{cap:,} tokens" if isinstance(cap, int) else "the server's limit"
        return f"[cut off at {at}; ask me to go on]"

    def _unavailable_message(self, failures: list[tuple[Endpoint, Failure, int]]) -> str:
        parts = ["I could not get an answer from the language model."]
        hints: list[str] = []
        for ep, failure, attempts in failures:
            plural = "s" if attempts != 1 else ""
            parts.append(
                f"Endpoint '{ep.config.name}' ({ep.config.shown_url}): {failure.what} "
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
        for secret in self._pool.secrets():
            text = text.replace(secret, "***")
        return text

