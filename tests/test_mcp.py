"""MCP tool servers for real: the test server (tests/mcp_server.py, the SDK's own server API)
run over stdio as a child and over streamable HTTP, through full turns on the fake LLM."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import AppFactory, connect, eventually
from daemon import free_port
from fake_llm import FakeLLM, Reply, offered, system_of, tool_results
from mcp_helpers import SERVER, START_SECONDS, calls, mcp_config, stdio_server
from wsclient import message, until

from ganglion.app import App
from ganglion.config import parse_config
from ganglion.errors import ConfigError

ON = {"t__*": "on"}


@pytest.fixture
def call_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("MCP_CALL_LOG", str(log))
    return log


async def connected(app: App, tool: str = "t__add") -> None:
    await eventually(lambda: tool in app.tools.names(), timeout=START_SECONDS)


async def turn(app: App, fake_llm: FakeLLM, tool: str, args: dict[str, object]) -> str:
    """A turn in which the model calls ``tool``; the result it was given."""
    fake_llm.script(Reply(tool_calls=[(tool, args)]), Reply(text="done"))
    chat = await connect(app)
    assert (await chat.ask("go", timeout=30))["text"] == "done"
    await chat.close()
    return tool_results(fake_llm.requests[-1])[-1]


async def test_a_stdio_servers_tools_are_offered_and_called_through_a_turn(
    app_factory: AppFactory, fake_llm: FakeLLM, call_log: Path
) -> None:
    app = await app_factory(mcp_config({"t": stdio_server()}, ON))
    await connected(app)
    result = await turn(app, fake_llm, "t__add", {"a": 2, "b": 40})
    assert "2 + 40 = 42" in result
    body = fake_llm.requests[0]
    assert {"t__add", "t__fail", "shell"} <= set(offered(body))
    [add] = [t["function"] for t in body["tools"] if t["function"]["name"] == "t__add"]
    assert add["description"] == "[t] Add two whole numbers."
    assert add["parameters"]["required"] == ["a", "b"]  # the server's own schema
    assert add["parameters"]["properties"]["a"]["type"] == "integer"
    assert [c["args"] for c in calls(call_log) if c["tool"] == "add"] == [{"a": 2, "b": 40}]
    # Arguments the schema refuses never reach the server; the model is told what to fix.
    result = await turn(app, fake_llm, "t__add", {"a": "two"})
    assert "is a required property" in result or "is not of type" in result
    assert len([c for c in calls(call_log) if c["tool"] == "add"]) == 1


async def test_the_childs_environment_is_what_the_config_names(
    app_factory: AppFactory, fake_llm: FakeLLM, call_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAMED_VAR", "named-value")
    monkeypatch.setenv("OTHER_VAR", "other-value")
    app = await app_factory(mcp_config({
        "t": stdio_server(env=["MCP_CALL_LOG", "NAMED_VAR"]),
        "v": stdio_server(env={"GIVEN_VAR": "given-value-xyz"})},
        {"t__*": "on", "v__*": "on"}))
    await connected(app)
    await connected(app, "v__env_value")
    assert "named-value" in await turn(app, fake_llm, "t__env_value", {"name": "NAMED_VAR"})
    assert "(unset)" in await turn(app, fake_llm, "t__env_value", {"name": "OTHER_VAR"})
    assert "(unset)" in await turn(app, fake_llm, "v__env_value", {"name": "NAMED_VAR"})
    assert "given-value-xyz" in await turn(app, fake_llm, "v__env_value", {"name": "GIVEN_VAR"})


async def test_an_mcp_tool_asks_by_default_and_runs_once_approved(
    app_factory: AppFactory, fake_llm: FakeLLM, call_log: Path
) -> None:
    app = await app_factory(mcp_config({"t": stdio_server()}, {"t__fail": "off"}))
    await connected(app)
    assert app.tool_runner.policy.mode("t__add") == "ask"
    chat = await connect(app)
    tools = (await chat.ask("/tools"))["text"]
    assert "`t__add`: ask, MCP server `t`, connected" in tools and "`shell`: ask" in tools
    assert "t__fail" not in tools and "`read_file`: on" in tools
    fake_llm.script(Reply(tool_calls=[("t__add", {"a": 1, "b": 2})]), Reply(text="three"))
    await chat.send("add them")
    ask = await until(chat, message("system", "Approval needed"))
    assert "`t__add`" in ask["text"] and '"a": 1' in ask["text"]
    assert calls(call_log) == []  # nothing ran before the yes
    await chat.send("/approve")
    assert (await until(chat, message("assistant")))["text"] == "three"
    assert [c["tool"] for c in calls(call_log)] == ["add"]
    assert "1 + 2 = 3" in tool_results(fake_llm.requests[-1])[-1]
    assert "t__fail" not in offered(fake_llm.requests[0])
    await chat.close()


async def test_error_results_and_content_that_is_not_text(
    app_factory: AppFactory, fake_llm: FakeLLM, call_log: Path
) -> None:
    app = await app_factory(mcp_config({"t": stdio_server()}, ON))
    await connected(app)
    result = await turn(app, fake_llm, "t__fail", {"reason": "disk on fire"})
    assert result.startswith("error:") and "disk on fire" in result
    result = await turn(app, fake_llm, "t__picture", {})
    assert "a red dot" in result
    assert "[image (image/png, 64 bytes) left out" in result
    assert "[resource file:///dot.bin (application/octet-stream, binary) left out" in result
    assert "[link to resource dot at file:///dot.png]" in result


async def test_a_huge_result_is_capped_and_an_injection_stays_data(
    app_factory: AppFactory, fake_llm: FakeLLM, call_log: Path
) -> None:
    app = await app_factory(mcp_config({"t": stdio_server()}, ON, mcp_max_output_bytes=2000))
    await connected(app)
    result = await turn(app, fake_llm, "t__huge", {"size": 1_000_000})
    assert "HEAD" in result and "TAIL" in result and "left out: over the cap" in result
    assert len(result) < 3000
    result = await turn(app, fake_llm, "t__inject", {})
    assert "<|im_start|>" not in result and "‹|im_start|›system" in result
    assert "Ignore all previous instructions" in result
    # Fenced as data: the marker before the text and after it is the same random one.
    head, _, rest = result.partition("Ignore all previous instructions")
    assert "data" in head.lower() and rest.strip()


async def test_a_hanging_call_times_out_and_the_server_stays(
    app_factory: AppFactory, fake_llm: FakeLLM, call_log: Path
) -> None:
    app = await app_factory(mcp_config({"t": stdio_server()}, ON, mcp_timeout_seconds=1))
    await connected(app)
    result = await turn(app, fake_llm, "t__hang", {})
    assert "no answer from the MCP server t within 1 s" in result
    assert "1 + 1 = 2" in await turn(app, fake_llm, "t__add", {"a": 1, "b": 1})


async def test_a_crash_mid_call_ends_the_call_and_the_server_comes_back(
    app_factory: AppFactory, fake_llm: FakeLLM, call_log: Path,
    caplog: pytest.LogCaptureFixture
) -> None:
    app = await app_factory(mcp_config({"t": stdio_server()}, ON))
    await connected(app)
    result = await turn(app, fake_llm, "t__crash", {})
    assert "stopped during the call" in result
    assert app.mcp is not None
    # Withdrawn (the supervisor says so, after the call's result), then started again with
    # its tools: a call works and is a new process.
    await eventually(lambda: any("MCP server t is down" in r.getMessage()
                                 for r in caplog.records), timeout=START_SECONDS)
    await connected(app)
    assert app.mcp.states()[0].state == "connected"
    assert "3 + 4 = 7" in await turn(app, fake_llm, "t__add", {"a": 3, "b": 4})
    logs = [r.getMessage() for r in caplog.records]
    crashed, added = calls(call_log)
    assert crashed["tool"] == "crash" and added["tool"] == "add"
    assert crashed["pid"] != added["pid"]  # a new process
    assert any("MCP server t is down (the server exited" in line for line in logs)


async def test_a_server_that_never_starts_leaves_the_daemon_up_and_says_why(
    app_factory: AppFactory, fake_llm: FakeLLM, call_log: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = tmp_path / "refuse"
    flag.touch()
    monkeypatch.setenv("MCP_START_FLAG", str(flag))
    app = await app_factory(mcp_config({
        "t": stdio_server(),
        "gone": {"command": "no-such-mcp-server-here"},
        "flaky": stdio_server(env=["MCP_START_FLAG"])}, ON))
    assert app.mcp is not None
    await connected(app)
    await eventually(lambda: all(s.state == "down" for s in app.mcp.states()  # type: ignore[union-attr]
                                 if s.name != "t"), timeout=START_SECONDS)
    chat = await connect(app)
    tools = (await chat.ask("/tools"))["text"]
    assert "`gone__*`: ask, MCP server `gone`, down: command not found: " \
           "'no-such-mcp-server-here'" in tools
    assert "`flaky__*`: ask, MCP server `flaky`, down: " in tools
    assert "the flag file says so" in tools and "next try in" in tools
    fake_llm.script(Reply(text="fine"))
    assert (await chat.ask("hello"))["text"] == "fine"
    head = system_of(fake_llm.requests[-1])
    assert "tool servers are not available now" in head and "flaky, gone" in head
    # Once it can start, the backoff's next try brings its tools.
    flag.unlink()
    await connected(app, "flaky__add")
    fake_llm.script(Reply(text="fine"))
    assert (await chat.ask("hello"))["text"] == "fine"
    assert "gone." in system_of(fake_llm.requests[-1])
    assert "flaky__add" in offered(fake_llm.requests[-1])
    await chat.close()


async def test_a_tool_list_change_is_offered_at_the_next_turn(
    app_factory: AppFactory, fake_llm: FakeLLM, call_log: Path
) -> None:
    app = await app_factory(mcp_config({"t": stdio_server()}, ON))
    await connected(app)
    assert "t__extra" not in app.tools.names()
    assert "grown" in await turn(app, fake_llm, "t__grow", {})
    await connected(app, "t__extra")
    assert "extra: hi" in await turn(app, fake_llm, "t__extra", {"word": "hi"})
    assert "t__extra" in offered(fake_llm.requests[-2])


class HttpServer:
    """The test server over streamable HTTP, in a child process on a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, SERVER, "http", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def http_server(call_log: Path) -> Iterator[HttpServer]:
    server = HttpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_streamable_http_server_with_a_secret_header_gone_and_back(
    app_factory: AppFactory, fake_llm: FakeLLM, call_log: Path, http_server: HttpServer
) -> None:
    # It may take the server a moment to listen: the supervisor's backoff tries again.
    app = await app_factory(mcp_config(
        {"h": {"url": http_server.url,
               "headers": {"Authorization": "Bearer sekrit-header-123"}}},
        {"h__*": "on"}))
    await connected(app, "h__add")
    assert "5 + 6 = 11" in await turn(app, fake_llm, "h__add", {"a": 5, "b": 6})
    chat = await connect(app)
    tools = (await chat.ask("/tools"))["text"]
    assert "`h__add`: on, MCP server `h`, connected" in tools
    assert "sekrit" not in tools
    # The server goes away: a call fails, the tools are withdrawn, and once it is back
    # (the same port) the supervisor's next try brings them back.
    http_server.stop()
    assert (await turn(app, fake_llm, "h__add", {"a": 1, "b": 1})).startswith("error:")
    assert app.mcp is not None
    await eventually(lambda: app.mcp.states()[0].state == "down",  # type: ignore[union-attr]
                     timeout=START_SECONDS)
    assert "h__add" not in app.tools.names()
    http_server.start()
    await connected(app, "h__add")
    assert "2 + 2 = 4" in await turn(app, fake_llm, "h__add", {"a": 2, "b": 2})
    await chat.close()


# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "error"), [
    ({"mcp": {"servers": {"t": {"command": "x", "colour": "red"}}}},
     "mcp.servers.t.colour: unknown key"),
    ({"mcp": {"servers": {"t": {"command": "x", "url": "http://127.0.0.1:1/mcp"}}}},
     "mcp.servers.t: give either command"),
    ({"mcp": {"servers": {"t": {"url": "http://127.0.0.1:1/mcp", "args": ["-v"]}}}},
     "args belong to a stdio server"),
    ({"mcp": {"servers": {"a__b": {"command": "x"}}}}, "mcp.servers.a__b: a server name"),
    ({"mcp": {"servers": {"t": {"command": "x"}}}, "tools": {"policy": {"u__*": "on"}}},
     "tools: policy.u__*: no such MCP server in mcp.servers (t)"),
    ({"tools": {"policy": {"t__add": "on"}}},
     "tools: policy.t__add: no such MCP server in mcp.servers (none configured)"),
    ({"tools": {"policy": {"t__a.b": "on"}}}, "tools.policy.'t__a.b': no such tool"),
])
def test_config_errors(raw: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env={})
    assert error in str(err.value)


def test_a_tool_entry_beats_its_servers_star_and_secrets_are_masked() -> None:
    from ganglion.config import masked_dump, secret_values
    from ganglion.tools.policy import ToolPolicy

    cfg = parse_config(mcp_config(
        {"t": {"command": "x", "env": {"KEY": "env-secret-1"}},
         "h": {"url": "http://me:url-secret-3@127.0.0.1:1/mcp",
               "headers": {"X-Key": "header-secret-2"}}},
        {"t__*": "on", "t__rm": "off"}), env={})
    policy = ToolPolicy(cfg.tools.policy)
    assert [policy.mode(n) for n in ("t__add", "t__rm", "h__add", "shell", "read_file")] == [
        "on", "off", "ask", "ask", "on"]
    assert {"env-secret-1", "header-secret-2", "url-secret-3"} <= set(secret_values(cfg))
    dumped = str(masked_dump(cfg))  # what check-config prints
    assert "env-secret-1" not in dumped and "header-secret-2" not in dumped
    assert "url-secret-3" not in dumped and "http://***@127.0.0.1:1/mcp" in dumped


def test_without_servers_nothing_of_mcp_is_imported() -> None:
    code = ("import sys, ganglion.app, ganglion.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'mcp_types') "
            "or m.startswith('ganglion.tools.mcp')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("healthy_seconds", "second_wait"), [(0.0, "1 s"), (3600.0, "2 s")])
async def test_the_backoff_starts_again_after_a_healthy_period(
    tmp_path: Path, call_log: Path, caplog: pytest.LogCaptureFixture,
    healthy_seconds: float, second_wait: str
) -> None:
    import os

    from ganglion.config_mcp import McpServerConfig
    from ganglion.tools.mcp.manager import Limits, McpTools
    from ganglion.tools.registry import ToolContext, ToolRegistry

    registry = ToolRegistry()
    mcp = McpTools({"t": McpServerConfig.model_validate(stdio_server())}, registry,
                   Limits(10, 10_000, healthy_seconds=healthy_seconds),
                   environ=os.environ, run_dir=tmp_path / ".mcp", cwd=tmp_path)
    mcp.start()
    ctx = ToolContext("web_test", "tester")  # type: ignore[arg-type]
    try:
        waits = []
        for _ in range(2):
            await eventually(lambda: "t__crash" in registry.names(), timeout=START_SECONDS)
            caplog.clear()
            assert not (await registry.call("t__crash", "{}", ctx)).ok
            await eventually(lambda: any("is down" in r.getMessage() for r in caplog.records),
                             timeout=START_SECONDS)
            [down] = [r.getMessage() for r in caplog.records if "is down" in r.getMessage()]
            waits.append(down.rsplit("next try in ", 1)[1])
        # Connected for long enough (0 s here) the first wait again; else it doubles.
        assert waits == ["1 s", second_wait]
    finally:
        await mcp.stop()


def test_tool_names_the_api_cannot_take_are_made_fit_and_stable() -> None:
    from ganglion.tool_names import mcp_server_of
    from ganglion.tools.mcp.translate import tool_name

    assert tool_name("notes", "search", set()) == "notes__search"
    assert tool_name("notes", "files/read.v2", set()) == "notes__files_read_v2"
    long = tool_name("notes", "x" * 100, set())
    assert len(long) == 64 and long == tool_name("notes", "x" * 100, set())  # the same each run
    # Two names that become one: the second gets a hash of its own name.
    first = tool_name("notes", "a.b", set())
    second = tool_name("notes", "a/b", {first})
    assert first == "notes__a_b" and second.startswith("notes__a_b_") and second != first
    assert all(mcp_server_of(n) == "notes" for n in (first, second, long))
