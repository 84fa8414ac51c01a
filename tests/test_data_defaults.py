"""The data folder is the user's: created with its defaults at first start, kept as found at
every later one, and never tracked by git (a user's memories must not show in git status)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import AppFactory
from fake_llm import FakeLLM, system_of
from wsclient import ChatClient

ROOT = Path(__file__).resolve().parent.parent
PACKAGED_PROMPT = ROOT / "ganglion" / "defaults" / "BASE_PROMPT.txt"
USER_FILES = ("BASE_PROMPT.txt", "MEMORIES.txt", "HEARTBEATS.txt")


async def system_prompt(url: str, token: str, fake_llm: FakeLLM) -> str:
    chat = ChatClient(url, token)
    await chat.connect()
    try:
        await chat.ask("hello")
    finally:
        await chat.close()
    return system_of(fake_llm.requests[-1])


async def test_a_first_start_creates_the_data_files_with_their_defaults(
    app_factory: AppFactory, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    assert not data.exists()
    app = await app_factory()
    assert app.data_dir == data
    assert (data / "BASE_PROMPT.txt").read_text() == PACKAGED_PROMPT.read_text()
    assert "You are Ganglion" in PACKAGED_PROMPT.read_text()
    assert (data / "MEMORIES.txt").read_text() == ""
    assert (data / "HEARTBEATS.txt").read_text() == ""
    assert (data / "skills").is_dir() and (data / "scripts").is_dir()
    assert app.web is not None
    assert "You are Ganglion" in await system_prompt(app.web.url, app.web_token, fake_llm)


async def test_a_start_keeps_the_data_files_it_finds(
    app_factory: AppFactory, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    mine = {"BASE_PROMPT.txt": "You are Marvin, and rather gloomy.\n",
            "MEMORIES.txt": "- The user's cat is called Pixel.\n",
            "HEARTBEATS.txt": "- Ask how the move went.\n"}
    for name, text in mine.items():
        (data / name).write_text(text)
    app = await app_factory()
    assert {name: (data / name).read_text() for name in mine} == mine
    assert app.web is not None
    prompt = await system_prompt(app.web.url, app.web_token, fake_llm)
    assert all(text.strip() in prompt for text in mine.values()), prompt
    assert "You are Ganglion" not in prompt


def test_the_users_data_is_not_tracked_by_git() -> None:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run([git, "ls-files", "--", "data"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert tracked == []
    names = [f"data/{name}" for name in (*USER_FILES, "skills/note.md", "scripts/run.sh")]
    ignored = subprocess.run([git, "check-ignore", "--no-index", *names], cwd=ROOT,
                             capture_output=True, text=True, check=False).stdout.split()
    assert ignored == names
