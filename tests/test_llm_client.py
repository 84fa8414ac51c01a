"""LLMClient over real HTTP against FakeLLM: streaming, tool calls, retries, failover, caps."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest
import pytest_asyncio
from conftest import AppFactory, eventually
from fake_llm import FakeLLM, Reply, ReplyFactory, completion_json

from ganglion.config import EndpointConfig, LLMConfig, parse_config, secret_values
from ganglion.errors import LLMUnavailable
from ganglion.llm.client import LLMClient
from ganglion.llm.failures import MAX_WAIT_SECONDS, Failure, retry_wait
from ganglion.llm.results import ChatResult, Usage

Factory = Callable[..., Awaitable[FakeLLM]]
SECRET = "sk-test-Very-Secret-Key-0123456789"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def endpoint(name: str, url: str, **kw: Any) -> EndpointConfig:
    return EndpointConfig(name=name, base_url=url, api_key=SECRET, **kw)


def llm_config(*endpoints: EndpointConfig, **kw: Any) -> LLMConfig:
    kw.setdefault("retries", 1)
    kw.setdefault("backoff_seconds", 0.01)
    return LLMConfig(endpoints=list(endpoints), model="test-model", **kw)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest_asyncio.fixture
async def make_client() -> AsyncIterator[Callable[..., LLMClient]]:
    clients: list[LLMClient] = []

    def make(config: LLMConfig, **kw: Any) -> LLMClient:
        client = LLMClient(config, **kw)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest_asyncio.fixture
async def dead_url(fake_llm_factory: Factory) -> str:
    """A base_url where nothing listens (connection refused)."""
    fake = await fake_llm_factory()
    await fake.stop()
    return fake.base_url


class Recorder:
    """Collects on_delta / on_reset calls in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    async def delta(self, text: str) -> None:
        self.events.append(("delta", text))

    async def reset(self) -> None:
        self.events.append(("reset", ""))

    @property
    def resets(self) -> int:
        return sum(1 for kind, _ in self.events if kind == "reset")

    def shown(self) -> str:
        """What a UI honouring resets would display."""
        text = ""
        for kind, piece in self.events:
            text = "" if kind == "reset" else text + piece
        return text


# --- streaming and the answer's shape ----------------------------------------------------------


async def test_deltas_arrive_in_order_and_join_to_content(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient]
) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    fake_llm.script(Reply(text=text, usage=(11, 7)))
    client = make_client(llm_config(endpoint("local", fake_llm.base_url)))
    rec = Recorder()
    result = await client.chat(user("hi"), on_delta=rec.delta, on_reset=rec.reset)
    pieces = [p for kind, p in rec.events if kind == "delta"]
    assert len(pieces) >= 5  # streamed, not delivered in one lump
    assert "".join(pieces) == text == result.content
    assert rec.resets == 0
    assert result == ChatResult(text, [], Usage(11, 7), "test-model", "local", "stop")
    assert result.usage.total == 18


async def test_default_reply_echoes_and_usage_is_estimated_when_missing(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient]
) -> None:
    fake_llm.script(Reply(text="x" * 40, usage_chunk=False))
    client = make_client(llm_config(endpoint("local", fake_llm.base_url)))
    result = await client.chat(user("hello"))
    assert result.usage.completion_tokens == 10  # 40 chars / 4
    assert result.usage.prompt_tokens > 0
    assert (await client.chat(user("say this"))).content == "echo: say this"


async def test_two_tool_calls_are_accumulated_by_index(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient]
) -> None:
    fake_llm.script(
        Reply(tool_calls=[("get_weather", {"city": "Paris"}), ("add", '{"a": 1, "b": ')])
    )
    client = make_client(llm_config(endpoint("local", fake_llm.base_url)))
    result = await client.chat(user("weather?"), tools=[WEATHER_TOOL])
    assert result.content == ""
    assert [c.name for c in result.tool_calls] == ["get_weather", "add"]
    assert json.loads(result.tool_calls[0].arguments) == {"city": "Paris"}
    assert result.tool_calls[1].arguments == '{"a": 1, "b": '  # verbatim, malformed
    ids = [c.id for c in result.tool_calls]
    assert all(ids) and len(set(ids)) == 2


async def test_model_params_tools_and_key_reach_the_request(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient]
) -> None:
    config = llm_config(endpoint("local", fake_llm.base_url), temperature=0.7)
    client = make_client(config)
    messages = [{"role": "system", "content": "be brief"}, *user("hi")]
    await client.chat(
        messages,
        model="other-model",
        tools=[WEATHER_TOOL],
        params={"top_p": 0.9, "max_tokens": 50, "temperature": 0.2},
    )
    await client.chat(user("again"))
    first, second = fake_llm.requests
    assert first["model"] == "other-model"
    assert first["messages"] == messages
    assert first["tools"] == [WEATHER_TOOL]
    assert (first["top_p"], first["max_tokens"], first["temperature"]) == (0.9, 50, 0.2)
    assert first["stream"] is True
    assert first["stream_options"] == {"include_usage": True}
    assert second["model"] == "test-model"
    assert second["temperature"] == 0.7  # config.temperature when params do not override
    assert "tools" not in second
    assert fake_llm.request_headers[0]["authorization"] == f"Bearer {SECRET}"


# --- retries and failover -------------------------------------------------------------------


async def test_retry_on_500_then_success(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient]
) -> None:
    fake_llm.script(Reply(status=500), Reply(text="recovered"))
    client = make_client(llm_config(endpoint("local", fake_llm.base_url), retries=2))
    result = await client.chat(user("hi"))
    assert result.content == "recovered"
    assert result.endpoint == "local"
    assert len(fake_llm.requests) == 2


async def test_backoff_doubles_with_jitter_and_the_warnings_name_the_thread(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient], caplog: pytest.LogCaptureFixture
) -> None:
    arrivals: list[float] = []

    def arriving(reply: Reply) -> ReplyFactory:
        """``reply``, noting when its request reached the server (the handler calls it then)."""
        def factory(body: dict[str, Any]) -> Reply:
            arrivals.append(time.monotonic())
            return reply
        return factory

    fake_llm.script(*(arriving(r) for r in (Reply(status=502), Reply(status=503),
                                             Reply(status=500), Reply(text="ok"))))
    client = make_client(
        llm_config(endpoint("local", fake_llm.base_url), retries=3, backoff_seconds=0.1)
    )
    with caplog.at_level(logging.WARNING, logger="ganglion.llm"):
        assert (await client.chat(user("hi"), thread_id="web_0123")).content == "ok"
    assert len(arrivals) == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert all(w.startswith("[web_0123] LLM endpoint local: attempt ") for w in warnings)
    announced = [float(w.split("; retrying in ")[1].removesuffix(" s")) for w in warnings]
    # Equal jitter: retry k waits a draw from the upper half of 0.1 * 2**k, which doubles
    # (the warnings round to 0.01 s, which keeps a draw from [0.05, 0.1) within [0.05, 0.1]).
    for k, wait in enumerate(announced):
        assert 0.1 * 2**k / 2 <= wait <= 0.1 * 2**k, (k, announced)
        assert arrivals[k + 1] - arrivals[k] >= 0.1 * 2**k / 2, (k, arrivals)


@pytest.mark.parametrize("attempt", [1, 2, 3, 8])
def test_retry_waits_are_drawn_from_the_upper_half_of_the_doubled_pause(attempt: int) -> None:
    pause = min(0.5 * 2 ** (attempt - 1), MAX_WAIT_SECONDS)
    failure = Failure("server error (HTTP 503)", "", True)
    assert retry_wait(failure, attempt, 0.5, draw=lambda: 0.0) == pause / 2
    assert retry_wait(failure, attempt, 0.5, draw=lambda: 0.999999) == pytest.approx(pause)
    rng = random.Random(attempt)
    draws = [retry_wait(failure, attempt, 0.5, draw=rng.random) for _ in range(200)]
    assert all(pause / 2 <= d < pause for d in draws)
    # Spread over the whole upper half, not bunched at one end.
    assert min(draws) < pause * 0.55 and max(draws) > pause * 0.95
    # The server's Retry-After is kept as it is (capped), without jitter.
    told = Failure("too many requests (HTTP 429)", "", True, retry_after=2.0)
    assert retry_wait(told, attempt, 0.5) == 2.0
    assert retry_wait(Failure("", "", True, retry_after=600), attempt, 0.5) == MAX_WAIT_SECONDS


async def test_429_retry_after_is_honoured(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient]
) -> None:
    fake_llm.script(Reply(status=429, retry_after=0.4), Reply(text="ok"))
    client = make_client(llm_config(endpoint("local", fake_llm.base_url), backoff_seconds=0.01))
    started = time.monotonic()
    result = await client.chat(user("hi"))
    elapsed = time.monotonic() - started
    assert result.content == "ok"
    assert 0.4 <= elapsed < 3.0


async def test_retries_are_bounded_per_endpoint(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient]
) -> None:
    fake_llm.script(*[Reply(status=503)] * 5)
    client = make_client(llm_config(endpoint("only", fake_llm.base_url), retries=2))
    with pytest.raises(LLMUnavailable) as caught:
        await client.chat(user("hi"))
    assert len(fake_llm.requests) == 3
    assert "(3 attempts)" in str(caught.value)
    assert "503" in str(caught.value)


async def test_connection_refused_fails_over_to_next_endpoint(
    fake_llm: FakeLLM, dead_url: str, make_client: Callable[..., LLMClient]
) -> None:
    fake_llm.script(Reply(text="from backup"))
    client = make_client(
        llm_config(endpoint("primary", dead_url), endpoint("backup", fake_llm.base_url))
    )
    result = await client.chat(user("hi"))
    assert result.endpoint == "backup"
    assert result.content == "from backup"


async def test_non_retryable_status_fails_over_at_once(
    fake_llm_factory: Factory, make_client: Callable[..., LLMClient]
) -> None:
    first, second = await fake_llm_factory(), await fake_llm_factory()
    first.script(Reply(status=400), Reply(text="should not be asked again"))
    client = make_client(
        llm_config(endpoint("a", first.base_url), endpoint("b", second.base_url), retries=3)
    )
    result = await client.chat(user("hi"))
    assert result.endpoint == "b"
    assert result.content == "echo: hi"
    assert len(first.requests) == 1


async def test_everything_failing_raises_clear_message_without_key(
    fake_llm: FakeLLM,
    dead_url: str,
    make_client: Callable[..., LLMClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_llm.script(Reply(status=401))
    client = make_client(
        llm_config(endpoint("local", dead_url), endpoint("cloud", fake_llm.base_url), retries=1)
    )
    with (
        caplog.at_level(logging.WARNING, logger="ganglion.llm"),
        pytest.raises(LLMUnavailable) as caught,
    ):
        await client.chat(user("hi"))
    message = str(caught.value)
    assert f"Endpoint 'local' ({dead_url}): connection refused (2 attempts)" in message
    assert "Is the model server running" in message
    assert f"Endpoint 'cloud' ({fake_llm.base_url})" in message
    assert "401" in message and "api_key" in message and "(1 attempt)" in message
    assert "llm.endpoints" in message
    assert SECRET not in message
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # two refused attempts on 'local', one 401 on 'cloud'
    assert "local" in warnings[0] and "attempt 1" in warnings[0]
    assert "cloud" in warnings[2] and "401" in warnings[2]
    assert all(SECRET not in w for w in warnings)


async def test_timeout_retries_then_fails_over(
    fake_llm_factory: Factory, make_client: Callable[..., LLMClient]
) -> None:
    slow, fast = await fake_llm_factory(), await fake_llm_factory()
    slow.script(Reply(text="late", delay=2.0), Reply(hang=True))
    client = make_client(
        llm_config(
            endpoint("slow", slow.base_url, timeout_seconds=0.2),
            endpoint("fast", fast.base_url),
            retries=1,
        )
    )
    started = time.monotonic()
    result = await client.chat(user("hi"))
    assert result.endpoint == "fast"
    assert len(slow.requests) == 2
    assert time.monotonic() - started < 1.5


async def test_timeout_everywhere_says_so(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient]
) -> None:
    fake_llm.script(Reply(text="a b c", chunk_delay=1.0))
    client = make_client(
        llm_config(endpoint("local", fake_llm.base_url, timeout_seconds=0.2), retries=0)
    )
    with pytest.raises(LLMUnavailable, match="timed out"):
        await client.chat(user("hi"))


async def test_stream_cut_midway_resets_and_retry_answer_wins(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient]
) -> None:
    fake_llm.script(
        Reply(text="this answer will break off", cut_after_chunks=3),
        Reply(text="the complete answer"),
    )
    client = make_client(llm_config(endpoint("local", fake_llm.base_url)))
    rec = Recorder()
    result = await client.chat(user("hi"), on_delta=rec.delta, on_reset=rec.reset)
    assert result.content == "the complete answer"
    assert rec.events[:3] == [("delta", "this "), ("delta", "answer "), ("reset", "")]
    assert rec.resets == 1
    assert rec.shown() == "the complete answer"
    assert len(fake_llm.requests) == 2


async def test_partial_answer_is_reset_when_all_attempts_fail(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient]
) -> None:
    fake_llm.script(Reply(text="one two three", cut_after_chunks=2))
    client = make_client(llm_config(endpoint("local", fake_llm.base_url), retries=0))
    rec = Recorder()
    with pytest.raises(LLMUnavailable, match="broke off"):
        await client.chat(user("hi"), on_delta=rec.delta, on_reset=rec.reset)
    assert rec.events == [("delta", "one "), ("reset", "")]


async def test_garbage_fails_over_without_retrying(
    fake_llm_factory: Factory, make_client: Callable[..., LLMClient]
) -> None:
    bad, good = await fake_llm_factory(), await fake_llm_factory()
    bad.script(Reply(garbage=True), Reply(garbage=True))
    client = make_client(
        llm_config(endpoint("bad", bad.base_url), endpoint("good", good.base_url), retries=3)
    )
    assert (await client.chat(user("hi"))).endpoint == "good"
    assert len(bad.requests) == 1

    only = make_client(llm_config(endpoint("bad", bad.base_url)))
    with pytest.raises(LLMUnavailable, match="not a chat completion") as caught:
        await only.chat(user("hi"))
    assert "/v1" in str(caught.value)


# --- concurrency ---------------------------------------------------------------------------


async def test_concurrency_cap_per_endpoint(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient]
) -> None:
    fake_llm.script(*[Reply(text=f"r{i}", delay=0.1) for i in range(6)])
    client = make_client(llm_config(endpoint("local", fake_llm.base_url, max_concurrency=2)))
    started = time.monotonic()
    results = await asyncio.gather(*(client.chat(user(str(i))) for i in range(6)))
    assert fake_llm.max_in_flight == 2
    assert sorted(r.content for r in results) == [f"r{i}" for i in range(6)]
    assert time.monotonic() - started >= 0.3  # three waves of two


async def test_cap_admits_requests_first_come_first_served(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient]
) -> None:
    fake_llm.script(*[Reply(text="ok", delay=0.02) for _ in range(8)])
    client = make_client(llm_config(endpoint("local", fake_llm.base_url, max_concurrency=1)))
    tasks = []
    for i in range(8):
        tasks.append(asyncio.create_task(client.chat(user(str(i)))))
        await asyncio.sleep(0.001)  # a definite submission order
    await asyncio.gather(*tasks)
    assert [r["messages"][-1]["content"] for r in fake_llm.requests] == [str(i) for i in range(8)]
    assert fake_llm.max_in_flight == 1


async def test_cancelled_waiter_does_not_lose_the_slot(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient]
) -> None:
    fake_llm.script(Reply(text="first", delay=0.2))
    client = make_client(llm_config(endpoint("local", fake_llm.base_url, max_concurrency=1)))
    holder = asyncio.create_task(client.chat(user("holder")))
    async with asyncio.timeout(3):
        await fake_llm.wait_until(lambda: fake_llm.in_flight == 1)
    queued = asyncio.create_task(client.chat(user("queued")))
    await asyncio.sleep(0.02)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert (await holder).content == "first"
    result = await asyncio.wait_for(client.chat(user("after")), 2.0)
    assert result.content == "echo: after"
    assert [r["messages"][-1]["content"] for r in fake_llm.requests] == ["holder", "after"]


@pytest.mark.parametrize("where", ["reading the stream", "inside on_delta"])
async def test_cancelling_a_chat_propagates_and_closes_the_connection(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient], where: str
) -> None:
    fake_llm.script(Reply(text="a long answer that streams slowly", chunk_delay=0.2))
    client = make_client(llm_config(endpoint("local", fake_llm.base_url, max_concurrency=1)))
    first_delta = asyncio.Event()

    async def on_delta(text: str) -> None:
        first_delta.set()
        if where == "inside on_delta":
            await asyncio.Event().wait()  # a UI that is slow to take the text

    task = asyncio.create_task(client.chat(user("hi"), on_delta=on_delta))
    await asyncio.wait_for(first_delta.wait(), 2.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(3):
        await fake_llm.wait_until(lambda: fake_llm.disconnects == 1 and fake_llm.in_flight == 0)
    # The endpoint's only slot was given back.
    assert (await asyncio.wait_for(client.chat(user("next")), 2.0)).content == "echo: next"


# --- tool calls written as text --------------------------------------------------------------


async def test_tagged_text_tool_call_is_parsed(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient]
) -> None:
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    fake_llm.script(Reply(text=f"Let me look. {call}"))
    client = make_client(llm_config(endpoint("local", fake_llm.base_url)))
    rec = Recorder()
    result = await client.chat(
        user("weather?"), tools=[WEATHER_TOOL], on_delta=rec.delta, on_reset=rec.reset
    )
    assert [c.name for c in result.tool_calls] == ["get_weather"]
    assert json.loads(result.tool_calls[0].arguments) == {"city": "Oslo"}
    assert result.tool_calls[0].id
    assert result.content == "Let me look."
    assert rec.shown() == "Let me look."  # the UI no longer shows the raw call


async def test_bare_json_tool_call_needs_an_offered_name(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient]
) -> None:
    bare = '{"name": "get_weather", "parameters": {"city": "Rome"}}'
    unknown = '{"name": "launch_rockets", "arguments": {}}'
    fake_llm.script(Reply(text=bare), Reply(text=unknown), Reply(text=bare))
    client = make_client(llm_config(endpoint("local", fake_llm.base_url)))

    parsed = await client.chat(user("a"), tools=[WEATHER_TOOL])
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == [
        ("get_weather", {"city": "Rome"})
    ]
    assert parsed.content == ""

    not_offered = await client.chat(user("b"), tools=[WEATHER_TOOL])
    assert not_offered.tool_calls == [] and not_offered.content == unknown

    no_tools = await client.chat(user("c"))
    assert no_tools.tool_calls == [] and no_tools.content == bare


# --- probe, description, debug traffic ----------------------------------------------------------


async def test_describe(fake_llm: FakeLLM, make_client: Callable[..., LLMClient]) -> None:
    client = make_client(llm_config(endpoint("local", fake_llm.base_url),
                                    endpoint("b", "http://127.0.0.1:1/v1")))
    assert client.describe() == (f"endpoint 'local' at {fake_llm.base_url} (then 'b' at "
                                 "http://127.0.0.1:1/v1), model test-model")


async def test_credentials_in_a_base_url_are_never_shown(
    dead_url: str, make_client: Callable[..., LLMClient], caplog: pytest.LogCaptureFixture
) -> None:
    """https://user:password@host/v1 works as a base_url; logs and chats show ***@host."""
    url = dead_url.replace("http://", "http://bob:pa55-w0rd-xyz@")
    config = llm_config(endpoint("auth", url), retries=0)
    client = make_client(config)
    assert client.describe().startswith("endpoint 'auth' at http://***@127.0.0.1:")
    with caplog.at_level(logging.WARNING), pytest.raises(LLMUnavailable) as caught:
        await client.chat(user("hi"))
    assert "(http://***@127.0.0.1:" in str(caught.value)
    assert "pa55-w0rd-xyz" not in str(caught.value) + caplog.text
    # The log mask knows the password (and the whole user:password), not the bare user name.
    secrets = secret_values(parse_config({"llm": config.model_dump()}, env={}))
    assert "pa55-w0rd-xyz" in secrets and "bob:pa55-w0rd-xyz" in secrets and "bob" not in secrets


async def test_the_start_up_probe_lists_the_models_once(
    app_factory: AppFactory, fake_llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    """Discovery's answer is the probe: one GET /models, then the line saying it answers."""
    with caplog.at_level(logging.INFO, logger="ganglion.app"):
        await app_factory()
        await eventually(lambda: "is reachable" in caplog.text, 10)
    assert f"LLM: endpoint 'fake' at {fake_llm.base_url}, model fake-model is reachable" in (
        caplog.text)
    assert fake_llm.model_lists == 1


async def test_debug_logs_traffic_but_never_the_key(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient], caplog: pytest.LogCaptureFixture
) -> None:
    fake_llm.script(Reply(text="traffic reply"))
    client = make_client(llm_config(endpoint("local", fake_llm.base_url)), debug=True)
    with caplog.at_level(logging.DEBUG):
        await client.chat(user("traffic request"))
    traffic = [r.getMessage() for r in caplog.records if r.name == "ganglion.llm.traffic"]
    assert any("traffic request" in line for line in traffic)
    assert any('"content": "reply"' in line for line in traffic)  # raw chunks
    assert all(SECRET not in r.getMessage() for r in caplog.records)

    caplog.clear()
    quiet = make_client(llm_config(endpoint("local", fake_llm.base_url)))
    with caplog.at_level(logging.DEBUG):
        await quiet.chat(user("hi"))
    assert not [r for r in caplog.records if r.name == "ganglion.llm.traffic"]


# --- the fake itself ----------------------------------------------------------------------------


async def test_fake_stops_fast_with_a_hanging_request_and_restarts_on_same_port(
    fake_llm: FakeLLM,
) -> None:
    fake_llm.script(Reply(hang=True))
    sdk = openai.AsyncOpenAI(base_url=fake_llm.base_url, api_key="x", max_retries=0)
    try:
        hanging = asyncio.create_task(
            sdk.chat.completions.create(model="m", messages=user("hi"))  # type: ignore[arg-type]
        )
        async with asyncio.timeout(3):
            await fake_llm.wait_until(lambda: fake_llm.in_flight == 1)
        started = time.monotonic()
        await fake_llm.stop()
        assert time.monotonic() - started < 1.0
        with pytest.raises(openai.APIConnectionError):
            await hanging
        with pytest.raises(openai.APIConnectionError):
            await sdk.models.list()
        port = fake_llm.port
        await fake_llm.start(port)
        assert fake_llm.port == port
        fake_llm.script(Reply(text="plain", tool_calls=[("get_weather", {"city": "Oslo"})]))
        completion = await sdk.chat.completions.create(model="m", messages=user("x"))  # type: ignore[arg-type]
        message = completion.choices[0].message
        assert message.content == "plain"
        assert message.tool_calls is not None
        assert completion.choices[0].finish_reason == "tool_calls"
    finally:
        await sdk.close()


async def test_fake_models_list_and_reset(fake_llm_factory: Factory) -> None:
    fake = await fake_llm_factory(models=["alpha", "beta"])
    sdk = openai.AsyncOpenAI(base_url=fake.base_url, api_key="x", max_retries=0)
    try:
        page = await sdk.models.list()
        assert [(m.id, m.owned_by) for m in page.data] == [("alpha", "fake"), ("beta", "fake")]
    finally:
        await sdk.close()
    fake.script(Reply(text="queued"))
    fake.requests.append({"stale": True})
    fake.reset()
    assert fake.requests == [] and fake.max_in_flight == 0


async def test_a_whole_json_body_cut_off_is_a_broken_connection_and_retried(
    make_client: Callable[..., LLMClient],
) -> None:
    """A server that ignores "stream" and sends one JSON body, cut off the first time: read
    with httpx2's public exceptions mapped to the SDK's, it counts as a broken connection
    (retried), not as a bug that ends the turn."""
    from aiohttp import web


    served: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        body = completion_json("whole at last").encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json",
                                               "Content-Length": str(len(body))})
        await response.prepare(request)
        if not served:
            served.append("cut")
            await response.write(body[:20])
            assert request.transport is not None
            request.transport.close()  # the rest never comes
            return response
        served.append("whole")
        await response.write(body)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        client = make_client(llm_config(endpoint("whole", f"http://127.0.0.1:{port}/v1")))
        result = await client.chat(user("hi"))
        assert result.content == "whole at last"
        assert served == ["cut", "whole"]
    finally:
        await runner.cleanup()


# --- answer caps -------------------------------------------------------------------------------


async def test_max_tokens_is_sent_per_model_and_params_override_it(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient]
) -> None:
    config = llm_config(endpoint("local", fake_llm.base_url), max_tokens=2000,
                        models={"small": {"max_tokens": 300}})
    client = make_client(config)
    await client.chat(user("a"))
    await client.chat(user("b"), model="small")
    await client.chat(user("c"), model="small", params={"max_tokens": 20})
    assert [r["max_tokens"] for r in fake_llm.requests] == [2000, 300, 20]


@pytest.mark.parametrize("whole", [False, True])
async def test_finish_reason_length_marks_the_result_streamed_or_whole(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient], whole: bool
) -> None:
    if whole:
        fake_llm.script(Reply(raw_body=completion_json("half an ans", finish="length")))
    else:
        fake_llm.script(Reply(text="half an ans", finish="length"))
    client = make_client(llm_config(endpoint("local", fake_llm.base_url), max_tokens=1500))
    result = await client.chat(user("hi"), thread_id="web_t")
    assert result.content == "half an ans"
    assert result.cut == "[cut off at 1,500 tokens; ask me to go on]"
    assert result.answer == "half an ans\n\n[cut off at 1,500 tokens; ask me to go on]"
    fake_llm.script(Reply(text="```python\nprint(1)", finish="length"), Reply(text="whole"))
    cut_code = await client.chat(user("code"))
    assert cut_code.answer.endswith("print(1)\n```\n\n[cut off at 1,500 tokens; ask me to go on]")
    done = await client.chat(user("again"))
    assert (done.cut, done.answer) == ("", "whole")  # a stop is no cut


async def test_a_held_start_is_released_whole_when_it_proves_to_be_text(
    fake_llm: FakeLLM, make_client: Callable[..., LLMClient]
) -> None:
    prose = " ".join(f"prose, sentence {i}." for i in range(150))
    text = '{"name": "get_weather"} is how a call looks, ' + prose
    fake_llm.script(Reply(text=text))
    client = make_client(llm_config(endpoint("local", fake_llm.base_url)))
    rec = Recorder()
    result = await client.chat(user("hi"), tools=[WEATHER_TOOL], on_delta=rec.delta,
                               on_reset=rec.reset)
    assert result.content == rec.shown() == text
    assert rec.resets == 0
    # Held while it could be a call, then let through past the hold's limit: still streamed.
    assert 1 < len(rec.events) < len(text.split())
