"""File tools end to end: a scripted model calls them over real HTTP, on real files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import AppFactory, base_config, connect
from fake_llm import FakeLLM, Reply, tool_results

from ganglion.app import App
from ganglion.config import LoadedConfig, parse_config
from ganglion.errors import ToolError
from ganglion.tools.files import Workspace


async def run_calls(app: App, fake_llm: FakeLLM, *calls: tuple[str, Any]) -> list[str]:
    """One turn in which the model makes ``calls`` (one step each); the results it saw."""
    fake_llm.script(*[Reply(tool_calls=[c]) for c in calls], Reply(text="done"))
    chat = await connect(app)
    assert (await chat.ask("go"))["text"] == "done"
    await chat.close()
    return tool_results(fake_llm.requests[-1])


async def test_write_read_edit_and_list(app_factory: AppFactory, fake_llm: FakeLLM) -> None:
    app = await app_factory()
    results = await run_calls(
        app, fake_llm,
        ("write_file", {"path": "notes/todo.txt", "content": "buy milk\ncall Ada\n"}),
        ("read_file", {"path": "notes/todo.txt"}),
        ("edit_file", {"path": "notes/todo.txt", "old": "call Ada", "new": "call Bob"}),
        ("list_dir", {"path": "notes"}),
        ("list_dir", {}),
    )
    assert "Created notes/todo.txt (18 bytes)" in results[0]
    assert "buy milk\ncall Ada" in results[1] and "not instructions" in results[1]
    assert "Edited notes/todo.txt" in results[2]
    assert "todo.txt  (18 bytes)" in results[3]
    top = results[4]
    assert "notes/" in top and "MEMORIES.txt" in top and "skills/" in top
    # The daemon's own files are not listed.
    assert "web_token" not in top and "conversation.db" not in top
    assert (app.data_dir / "notes" / "todo.txt").read_text() == "buy milk\ncall Bob\n"


async def test_paths_leaving_the_workspace_are_refused(
    app_factory: AppFactory, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    app = await app_factory()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")
    (app.data_dir / "escape").symlink_to(outside)
    (app.data_dir / "escape.txt").symlink_to(outside / "secret.txt")
    (app.data_dir / "alias.txt").symlink_to(app.data_dir / "MEMORIES.txt")
    results = await run_calls(
        app, fake_llm,
        ("read_file", {"path": "../outside/secret.txt"}),
        ("read_file", {"path": str(outside / "secret.txt")}),
        ("read_file", {"path": "escape/secret.txt"}),
        ("read_file", {"path": "escape.txt"}),
        ("write_file", {"path": "escape/new.txt", "content": "x"}),
        ("write_file", {"path": "escape.txt", "content": "x"}),
        ("list_dir", {"path": "escape"}),
        ("edit_file", {"path": "notes/../../x", "old": "a", "new": "b"}),
        ("read_file", {"path": "alias.txt"}),
        ("read_file", {"path": "web_token"}),
        ("read_file", {"path": "~/.ssh/id_rsa"}),
    )
    assert "uses '..'" in results[0]
    assert "absolute path" in results[1]
    for r in results[2:7]:
        assert r.startswith("error:") and "symbolic link leading outside the workspace" in r, r
    assert "uses '..'" in results[7]
    assert "symbolic link" in results[8] and "MEMORIES.txt" in results[8]
    assert "private to the daemon" in results[9]
    assert "home folder" in results[10]
    assert all("top secret" not in r for r in results)
    assert (outside / "secret.txt").read_text() == "top secret"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_a_link_swapped_in_after_a_check_is_not_followed(tmp_path: Path) -> None:
    """The workspace opens each component with O_NOFOLLOW, so there is no check-then-use gap:
    a folder replaced by a link just before the write still cannot lead outside."""
    root, outside = tmp_path / "ws", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    ws = Workspace(root)
    ws.write_text("dir/a.txt", "first")
    os.rename(root / "dir", root / "old")
    (root / "dir").symlink_to(outside)
    with pytest.raises(ToolError, match="outside the workspace"):
        ws.write_text("dir/a.txt", "second")
    with pytest.raises(ToolError, match="outside the workspace"):
        ws.read_text("dir/a.txt", 1000)
    assert list(outside.iterdir()) == []


async def test_size_caps_and_paging(app_factory: AppFactory, fake_llm: FakeLLM) -> None:
    app = await app_factory({"tools": {"max_read_bytes": 2048, "max_write_bytes": 4096}})
    lines = "".join(f"line {i:04d} {'x' * 40}\n" for i in range(1, 201))  # 10 kB
    (app.data_dir / "big.txt").write_text(lines)
    (app.data_dir / "blob.bin").write_bytes(b"\x00\x01" * 100)
    results = await run_calls(
        app, fake_llm,
        ("read_file", {"path": "big.txt"}),
        ("read_file", {"path": "big.txt", "start_line": 190}),
        ("write_file", {"path": "huge.txt", "content": "y" * 5000}),
        ("edit_file", {"path": "big.txt", "old": "line 0001", "new": "LINE"}),
        ("read_file", {"path": "blob.bin"}),
        ("read_file", {"path": "nothing.txt"}),
        ("edit_file", {"path": "notes.txt", "old": "a", "new": "b"}),
    )
    first = results[0]
    assert "line 0001" in first and "line 0100" not in first
    assert "start_line=" in first and len(first) < 2048 + 400
    assert "line 0190" in results[1] and "line 0200" in results[1]
    assert "goes on" not in results[1]
    assert "5,000 bytes; the limit is 4,096" in results[2]
    assert not (app.data_dir / "huge.txt").exists()
    assert "limit is 4,096" in results[3]  # the file itself is over the write cap
    assert "looks binary" in results[4]
    assert "nothing.txt does not exist" in results[5]
    assert "notes.txt does not exist" in results[6]


async def test_edit_file_needs_one_exact_match(app_factory: AppFactory, fake_llm: FakeLLM) -> None:
    app = await app_factory()
    (app.data_dir / "a.txt").write_text("one two one\n")
    results = await run_calls(
        app, fake_llm,
        ("edit_file", {"path": "a.txt", "old": "one", "new": "1"}),
        ("edit_file", {"path": "a.txt", "old": "three", "new": "3"}),
        ("edit_file", {"path": "a.txt", "old": "two", "new": "2"}),
    )
    assert "occurs 2 times" in results[0]
    assert "not found" in results[1]
    assert "Edited" in results[2]
    assert (app.data_dir / "a.txt").read_text() == "one 2 one\n"


async def test_a_workspace_outside_the_data_folder(
    app_factory: AppFactory, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    app = await app_factory({"tools": {"workspace": str(tmp_path / "work")}})
    results = await run_calls(
        app, fake_llm,
        ("write_file", {"path": "a.txt", "content": "hello"}),
        ("read_file", {"path": "../data/MEMORIES.txt"}),
    )
    assert "Created a.txt" in results[0]
    assert (tmp_path / "work" / "a.txt").read_text() == "hello"
    assert "uses '..'" in results[1]


async def test_the_config_file_is_private_under_any_name_and_through_a_hard_link(
    fake_llm: FakeLLM, tmp_path: Path
) -> None:
    """The config file inside the workspace, under an innocent name, and a hard link to it:
    never read, listed, replaced or edited, while the file beside it is."""
    raw = base_config(tmp_path, fake_llm)
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    config_file = data / "shopping.txt"
    config_file.write_text(yaml.safe_dump(raw))
    os.link(config_file, data / "copy.txt")
    (data / "notes.txt").write_text("a note\n")
    app = App(LoadedConfig(parse_config(raw, env={}), config_file, tmp_path))
    await app.start()
    try:
        assert app.data_dir == data
        results = await run_calls(
            app, fake_llm,
            ("read_file", {"path": "notes.txt"}),
            ("read_file", {"path": "shopping.txt"}),
            ("read_file", {"path": "./copy.txt"}),
            ("list_dir", {}),
            ("write_file", {"path": "shopping.txt", "content": "llm: {}\n"}),
            ("edit_file", {"path": "copy.txt", "old": "llm", "new": "x"}),
            ("write_file", {"path": "notes.txt", "content": "replaced\n"}),
        )
    finally:
        await app.stop()
    assert "a note" in results[0]
    for refused in results[1:3] + results[4:6]:
        assert "is private to the daemon" in refused, refused
        assert "base_url" not in refused and fake_llm.base_url not in refused
    assert "notes.txt" in results[3]
    assert "shopping.txt" not in results[3] and "copy.txt" not in results[3]
    assert "Replaced notes.txt" in results[6]
    assert yaml.safe_load(config_file.read_text()) == raw
    assert (data / "copy.txt").stat().st_ino == config_file.stat().st_ino  # still linked


async def test_the_files_people_sent_are_private_to_the_daemon(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    """data/media/ holds every upload (any sender's): the model sees them as images in the
    conversation they were sent to, never through the file tools."""
    app = await app_factory()
    (app.data_dir / "media").mkdir()
    (app.data_dir / "media" / ("ab" * 32)).write_bytes(b"someone's photo")
    results = await run_calls(app, fake_llm, ("read_file", {"path": "media/" + "ab" * 32}),
                              ("list_dir", {"path": "media"}), ("list_dir", {"path": "."}))
    for r in results[:2]:
        assert "private to the daemon" in r, r
    assert "media" not in results[2]
