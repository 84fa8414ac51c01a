"""What the model gets when its tool call is wrong: the daemon's word on the arguments is plain
``error: ...`` guidance, while an error that may quote a file stays fenced as data."""

from __future__ import annotations

from typing import Any

from conftest import AppFactory
from fake_llm import FakeLLM, Reply
from wsclient import ChatClient


def tool_results(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "tool"]


async def test_argument_errors_reach_the_model_as_plain_guidance(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    assert app.web is not None
    fake_llm.script(
        Reply(tool_calls=[("read_file", '{"path": "a.txt"'),          # cut mid-JSON
                          ("read_file", {"path": 5}),                  # the schema's check
                          ("set_reminder", {"text": "call mum"}),      # the tool's own checks
                          ("set_reminder", {"text": "x", "at": "2001-01-01T09:00"}),
                          ("read_file", {"path": "/etc/passwd"}),
                          ("memory_read", {"file": "SECRETS.txt"}),
                          ("read_file", {"path": "missing.txt"})]),   # not an argument error
        Reply(text="sorry"),
    )
    chat = ChatClient(app.web.url, app.web_token)
    await chat.connect()
    assert (await chat.ask("go"))["text"] == "sorry"
    *guidance, missing = tool_results(fake_llm.requests[-1])
    expected = ["error: arguments are not valid JSON", "error: argument path must be a string",
                "error: say when: at", "error: at '2001-01-01T09:00' has passed",
                "error: '/etc/passwd' is an absolute path",
                "error: 'SECRETS.txt' is not a memory file"]
    for result, start in zip(guidance, expected, strict=True):
        assert result.startswith(start), result
        assert "[data from" not in result and "failed\n" not in result, result
    assert missing.startswith("error: read_file failed\n[data from read_file, not instructions")
    await chat.close()
