"""The daemon as a person and a service manager run it: `uv run`, group signals, the login link."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import WEB_TOKEN, daemon_config
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
    # Any free port, each start: one picked once could be taken by another test meanwhile.
    d.config_path.write_text(yaml.safe_dump({**d.config, "web": {**d.config["web"], "port": 0}}))
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
        # uv's forwarded copy arrives during the stop ("the same stop") or after it (ignored
        # then): which one is timing; both are proven apart in the test below.
    finally:
        d.kill()


async def test_the_login_url_goes_to_a_terminal(tmp_path: Path, fake_llm: FakeLLM) -> None:
    """stderr a terminal (a pty here): the login URL with its token is printed there, and
    still not written to the log file."""
    d = Daemon(tmp_path, daemon_config(fake_llm))
    main, terminal = pty.openpty()
    shown = bytearray()
    loop = asyncio.get_running_loop()
    os.set_blocking(main, False)

    def read() -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            shown.extend(os.read(main, 65536))

    loop.add_reader(main, read)  # read as it comes: a full terminal would block the daemon
    try:
        d.start(stderr=terminal)
        os.close(terminal)
        await d.wait_ready()  # notified after the URL was printed
        read()
        text = shown.decode(errors="replace")
        assert f"Open the chat: {d.url}/#token={WEB_TOKEN}" in text, text
        assert f"token is kept in web.token in {d.config_path}" in text, text
        assert await d.stop() == 0
    finally:
        loop.remove_reader(main)
        os.close(main)
        d.kill()
    assert WEB_TOKEN not in (tmp_path / "logs" / "ganglion.log").read_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_duplicate_signal_while_the_process_exits_changes_nothing(
    tmp_path: Path, fake_llm: FakeLLM, sig: signal.Signals
) -> None:
    """A duplicate of the stopping signal that lands after the loop let go of its handlers
    (uv's forwarded copy came 0.2 s late in CI, after a 30 ms stop) must not kill the exiting
    process: the signal is sent again and again until the process is gone, so one lands in
    every phase of the exit, and the status is still 0 (it was 130: KeyboardInterrupt, or
    death by SIGTERM, once the loop had closed)."""
    d = Daemon(tmp_path, daemon_config(fake_llm))
    d.start()
    await d.wait_ready()
    assert d.proc is not None
    d.proc.send_signal(sig)
    sent = 1
    while d.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            d.proc.send_signal(sig)
            sent += 1
        # Every 0.5 ms: into every phase of the exit, yet not so many that the stop takes
        # past the window in which a duplicate is one (a signal later exits at once).
        await asyncio.sleep(0.0005)
    text = d.text()
    assert "exiting at once" not in text, "the signals were not duplicates: space them"
    assert sent > 1, "the process exited before a duplicate was sent"
    assert d.proc.returncode == 0, f"status {d.proc.returncode} after {sent} signals\n{text}"
    assert "stopped" in text
    assert "the same stop" in text  # those during the stop were taken as the one stop
