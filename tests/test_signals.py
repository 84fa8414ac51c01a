"""The daemon as a person and a service manager run it: `uv run ganglion`, signals to its group."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import daemon_config
from daemon import Daemon
from fake_llm import FakeLLM

ROOT = Path(__file__).resolve().parent.parent
RUNS = 20


def uv() -> str:
    """The `uv` binary; the test is skipped without it (required in CI)."""
    found = shutil.which("uv")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("uv is not on PATH")
        pytest.skip("uv is not on PATH")
    return found


def test_uv_run_does_not_byte_compile_on_every_start() -> None:
    """`uv run` twice: the second says nothing but the version (no "Bytecode compiled ...")."""
    for _ in range(2):
        done = subprocess.run([uv(), "run", "--locked", "ganglion", "--version"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("ganglion ")
    assert "Bytecode compiled" not in done.stderr, done.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_to_the_process_group_is_one_clean_stop(
    tmp_path: Path, fake_llm: FakeLLM, sig: signal.Signals
) -> None:
    """`uv run ganglion` in a session of its own, as under systemd or a terminal; ``sig`` to
    the whole group reaches uv and the daemon, and uv forwards its copy: the daemon gets it
    twice within milliseconds. 20 starts, each a clean stop: status 0 and "stopped"."""
    d = Daemon(tmp_path, daemon_config(fake_llm))
    command = [uv(), "run", "--project", str(ROOT), "--locked", "ganglion"]
    try:
        for run in range(1, RUNS + 1):
            d.start(command=command, start_new_session=True)
            await d.wait_ready()
            assert d.proc is not None
            os.killpg(d.proc.pid, sig)
            code = await d.wait_exit(10)
            text = d.text()
            assert code == 0, f"run {run}: status {code}\n{text}"
            assert text.count(f"{sig.name} received: stopping") == run, f"run {run}\n{text}"
            assert text.count(" ganglion: stopped\n") == run, f"run {run}\n{text}"
            assert "exiting at once" not in text, f"run {run}\n{text}"
        # The group's copies did arrive twice, and were taken as one.
        assert "the same stop" in d.text()
    finally:
        d.kill()
