"""The settings view's frames over a real WebSocket (the page is tests/test_browser_settings.py):
memory files saved through the memory tools' own path with a version, a conflicting save
refused with the new text, skills made and deleted, malformed frames refused with nothing
changed, and no secret in the view."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from conftest import LLM_KEY, WEB_TOKEN, AppFactory, connect, eventually
from fake_llm import FakeLLM, Reply, system_of
from wsclient import ChatClient

from ganglion.tools.memory import version_of


async def answer(chat: ChatClient, frame: dict[str, Any]) -> dict[str, Any]:
    """The frame the server answers ``frame`` with (what came before it is kept in order)."""
    await chat.send_raw(frame)
    kept = []
    while True:
        event = await chat.next_event()
        if event.get("type", "").startswith("settings") or event.get("type") == "error":
            for other in kept:
                chat.events.put_nowait(other)
            return event
        kept.append(event)


def files_of(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in view["files"]}


async def test_a_save_reaches_the_next_prompt_and_a_stale_one_is_refused(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    chat = await connect(app)
    (app.data_dir / "MEMORIES.txt").write_text("- likes tea\n")
    view = await answer(chat, {"type": "settings"})
    memories = files_of(view)["MEMORIES.txt"]
    assert memories["text"] == "- likes tea\n"

    saved = await answer(chat, {"type": "settings_save", "name": "MEMORIES.txt",
                                "text": "- likes green tea\n", "version": memories["version"]})
    assert saved == {"type": "settings_saved", "name": "MEMORIES.txt",
                     "version": version_of("- likes green tea\n"), "text": "- likes green tea\n"}
    await chat.ask("what do I like?")
    assert "likes green tea" in system_of(fake_llm.requests[-1])

    # The assistant appends a fact through its tool; the page still holds the older version.
    fake_llm.script(Reply(tool_calls=[("memory_append", {"file": "MEMORIES.txt",
                                                         "text": "- has a cat"})]),
                    Reply(text="Noted."))
    await chat.ask("I have a cat")
    stale = await answer(chat, {"type": "settings_save", "name": "MEMORIES.txt",
                                "text": "- likes coffee\n", "version": saved["version"]})
    assert stale["type"] == "settings_conflict"
    assert stale["text"] == "- likes green tea\n- has a cat\n"
    assert stale["version"] == version_of(stale["text"])
    assert "changed meanwhile" in stale["message"]
    assert (app.data_dir / "MEMORIES.txt").read_text() == "- likes green tea\n- has a cat\n"
    await chat.close()


async def test_skills_are_made_listed_and_deleted_and_oversized_text_is_refused(
    app_factory: AppFactory,
) -> None:
    app = await app_factory({"tools": {"memory_max_bytes": 2048}})
    chat = await connect(app)
    made = await answer(chat, {"type": "settings_save", "name": "skills/brew.md",
                               "text": "# Brewing\nsteep 3 min\n", "version": version_of("")})
    assert made["type"] == "settings_saved"
    # A second "new" skill of that name would overwrite it: refused as a conflict.
    again = await answer(chat, {"type": "settings_save", "name": "skills/brew.md",
                                "text": "other", "version": version_of("")})
    assert again["type"] == "settings_conflict"
    view = await answer(chat, {"type": "settings"})
    assert list(files_of(view)) == ["MEMORIES.txt", "HEARTBEATS.txt", "skills/brew.md"]
    assert view["max_bytes"] == 2048

    big = await answer(chat, {"type": "settings_save", "name": "MEMORIES.txt",
                              "text": "x" * 3000, "version": version_of("")})
    assert big["type"] == "settings_refused"
    assert "tools.memory_max_bytes" in big["message"]
    assert (app.data_dir / "MEMORIES.txt").read_text() == ""

    refused = await answer(chat, {"type": "settings_delete", "name": "MEMORIES.txt",
                                  "version": version_of("")})
    assert refused["type"] == "settings_refused"
    assert (app.data_dir / "MEMORIES.txt").exists()
    gone = await answer(chat, {"type": "settings_delete", "name": "skills/brew.md",
                               "version": made["version"]})
    assert gone == {"type": "settings_deleted", "name": "skills/brew.md"}
    assert not (app.data_dir / "skills" / "brew.md").exists()
    await chat.close()


async def test_malformed_settings_frames_get_an_error_and_change_nothing(
    app_factory: AppFactory,
) -> None:
    app = await app_factory()
    chat = await connect(app)
    (app.data_dir / "MEMORIES.txt").write_text("kept\n")
    version = version_of("kept\n")
    bad = [
        {"type": "settings_save", "name": "../config.yaml", "text": "x", "version": version},
        {"type": "settings_save", "name": "scripts/run.sh", "text": "x", "version": version},
        {"type": "settings_save", "name": "skills/a b.md", "text": "x", "version": version},
        {"type": "settings_save", "name": "MEMORIES.txt", "text": "x"},
        {"type": "settings_save", "name": "MEMORIES.txt", "text": 5, "version": version},
        {"type": "settings_save", "name": "MEMORIES.txt", "text": "x", "version": "abc"},
        {"type": "settings_save", "name": "MEMORIES.txt", "text": "x", "version": version,
         "force": True},
        {"type": "settings_delete", "name": "skills/../MEMORIES.txt", "version": version},
        {"type": "settings_cancel_reminder", "id": "1"},
        {"type": "settings_cancel_reminder", "id": 0},
        {"type": "settings_model", "model": "  "},
        {"type": "settings_model"},
        {"type": "settings", "extra": 1},
    ]
    for frame in bad:
        got = await answer(chat, frame)
        assert got["type"] == "error" and got["code"] == "bad_frame", (frame, got)
        assert frame["type"] in got["message"] and "nothing was changed" in got["message"]
    assert (app.data_dir / "MEMORIES.txt").read_text() == "kept\n"
    assert app.model_commands.chosen(chat.thread_id) is None  # type: ignore[arg-type]
    unknown = await answer(chat, {"type": "settings_model", "model": "no-such-model"})
    assert unknown["type"] == "settings_refused" and "no-such-model" in unknown["message"]
    assert app.model_commands.chosen(chat.thread_id) is None  # type: ignore[arg-type]
    # The socket is still usable.
    assert (await answer(chat, {"type": "settings"}))["type"] == "settings"
    await chat.close()


MCP_SECRET = "mcp-secret-value-4e1d9b"
# A server that says its secret as its last words, then dies: its state shows why it is down.
BLABBER = "import os, sys; sys.stderr.write(os.environ['NOTES_TOKEN']); sys.exit(3)"


async def test_the_view_holds_no_secret(app_factory: AppFactory, fake_llm: FakeLLM) -> None:
    app = await app_factory({"mcp": {"servers": {"notes": {
        "command": sys.executable, "args": ["-c", BLABBER],
        "env": {"NOTES_TOKEN": MCP_SECRET}}}}})
    assert app.mcp is not None
    mcp = app.mcp
    await eventually(lambda: any("last words" in s.shown() for s in mcp.states()), 20)
    chat = await connect(app)
    await chat.ask("hello")  # a call: usage rows, and the models are known
    view = await answer(chat, {"type": "settings"})
    text = json.dumps(view)
    assert LLM_KEY not in text and WEB_TOKEN not in text and MCP_SECRET not in text
    [notes] = [t for t in view["tools"] if t["server"] == "notes"]
    assert notes["name"] == "notes__*" and "last words: ***" in notes["state"]
    assert "api_key" not in text
    assert [e["name"] for e in view["endpoints"]] == ["fake"]
    assert view["endpoints"][0]["url"] == fake_llm.base_url
    assert view["model"] == {"current": "fake-model", "chosen": False, "default": "fake-model"}
    assert {t["name"]: t["mode"] for t in view["tools"]}["memory_append"] == "on"
    await chat.close()


async def test_a_linked_skill_is_neither_written_nor_deleted_through(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    # The memory tools never follow a link out of data/; the page's saves are theirs.
    app = await app_factory()
    outside = tmp_path / "outside.md"
    outside.write_text("# Not ours\n")
    (app.data_dir / "skills" / "linked.md").symlink_to(outside)
    chat = await connect(app)
    view = await answer(chat, {"type": "settings"})
    assert "symbolic link" in files_of(view)["skills/linked.md"]["error"]
    version = version_of("# Not ours\n")
    for frame in ({"type": "settings_save", "name": "skills/linked.md", "text": "x",
                   "version": version},
                  {"type": "settings_delete", "name": "skills/linked.md", "version": version}):
        got = await answer(chat, frame)
        assert got["type"] == "settings_refused" and "symbolic link" in got["message"], got
    assert outside.read_text() == "# Not ours\n"
    assert (app.data_dir / "skills" / "linked.md").is_symlink()
    await chat.close()
