"""The small shared helpers: the token estimate, the atomic write, the turn-step journal."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from ganglion.storage.atomic import atomic_write
from ganglion.storage.history import NewMessage
from ganglion.tokens import MESSAGE_OVERHEAD, estimate_tokens, message_tokens
from ganglion.turn.journal import CUT_OFF, with_cut_off_results


def test_the_token_estimate_rounds_up_and_a_message_costs_its_overhead() -> None:
    assert [estimate_tokens(t) for t in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]
    assert estimate_tokens("x" * 40) == 10
    assert message_tokens("") == MESSAGE_OVERHEAD
    assert message_tokens("abcde") == 2 + MESSAGE_OVERHEAD


@pytest.mark.parametrize(("umask", "mode"), [(0o000, 0o600), (0o077, 0o644), (0o022, 0o700)])
def test_an_atomic_write_gives_exactly_the_mode_asked_whatever_the_umask(
    tmp_path: Path, umask: int, mode: int
) -> None:
    path = tmp_path / "new" / "web_token"  # the folder is created too
    old = os.umask(umask)
    try:
        atomic_write(path, "secret\n", mode)
    finally:
        os.umask(old)
    assert path.read_text() == "secret\n"
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert os.listdir(path.parent) == ["web_token"]  # no temp file left behind


def test_an_atomic_write_replaces_with_a_new_file_that_is_newer_than_the_old(
    tmp_path: Path
) -> None:
    path = tmp_path / "MEMORIES.txt"
    path.write_text("old\n")
    future = time.time_ns() + 3600 * 10**9  # a clock set back since, or an mtime from cp -p
    os.utime(path, ns=(future, future))
    before = path.stat()
    atomic_write(path, "new\n")
    after = path.stat()
    assert path.read_text() == "new\n"
    assert after.st_ino != before.st_ino  # readers holding the old file keep reading it whole
    assert after.st_mtime_ns > before.st_mtime_ns  # stat-keyed caches see the change


def test_an_atomic_write_replaces_a_link_instead_of_following_it(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    (tmp_path / "config.yaml").symlink_to(target)
    atomic_write(tmp_path / "config.yaml", "written\n")
    assert target.read_text() == "keep\n"
    assert not (tmp_path / "config.yaml").is_symlink()
    assert (tmp_path / "config.yaml").read_text() == "written\n"


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()  # a folder where the file should go: the rename fails
    (tmp_path / "taken" / "inside").write_text("x")
    with pytest.raises(OSError):
        atomic_write(tmp_path / "taken", "text")
    assert sorted(os.listdir(tmp_path)) == ["taken"]
    assert (tmp_path / "taken" / "inside").read_text() == "x"


def _call(*ids: str) -> NewMessage:
    return NewMessage("assistant", "", tool_calls=[
        {"id": i, "type": "function", "function": {"name": f"tool_{i}", "arguments": "{}"}}
        for i in ids], visible=False)


def _result(call_id: str) -> NewMessage:
    return NewMessage("tool", f"result {call_id}", tool_call_id=call_id, name=f"tool_{call_id}",
                      visible=False)


def test_the_journal_gives_each_call_cut_off_its_result_right_after_its_round() -> None:
    """The model's API refuses a call without a result, and a result out of its round."""
    steps = [_call("a", "b"), _result("a"), _call("c")]
    out = with_cut_off_results(steps)
    assert [(m.role, m.tool_call_id, m.content) for m in out] == [
        ("assistant", None, ""),
        ("tool", "a", "result a"),
        ("tool", "b", CUT_OFF),  # cut off in the first round: before the second call
        ("assistant", None, ""),
        ("tool", "c", CUT_OFF),
    ]
    assert with_cut_off_results([_call("a"), _result("a")]) == [_call("a"), _result("a")]
