"""The shell tool: ``/bin/sh -c`` in data/scripts/, in its own process group, time-limited,
output-capped, with an environment that holds none of the daemon's secrets.

Place in the flow: the model's call -> ToolRunner (policy; ``ask`` by default, so a person
reads the exact command first) -> ``Shell.shell``. There is no allowlist of commands: a
regex is not a sandbox. The limits are real ones instead: the whole process group is killed
at the time limit and when the command ends (nothing it started in the background lives
on), output beyond the cap is dropped from the middle, and tokens and API keys are not in
the environment. The command runs as the daemon's user, with that user's file access.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ganglion.durations import duration_text
from ganglion.errors import BadArguments
from ganglion.tools.registry import ToolFunc
from ganglion.untrusted import fenced

log = logging.getLogger(__name__)

ENV_ALLOWLIST = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_ALL",
                 "LC_CTYPE", "LC_MESSAGES", "LC_TIME", "LC_NUMERIC", "TZ", "TERM", "TMPDIR")
"""The only variables the shell inherits (plus ``tools.shell_env``); nothing else passes."""
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
KILL_GRACE_SECONDS = 2.0
"""Between SIGTERM and SIGKILL to the process group."""


def shell_environment(
    environ: Mapping[str, str], extra_names: Iterable[str], secrets: Iterable[str], cwd: Path
) -> dict[str, str]:
    """The allowlisted variables of ``environ``; a value holding a known secret never passes,
    even when its name is listed."""
    secret_values = [s for s in secrets if s]
    env: dict[str, str] = {}
    for name in (*ENV_ALLOWLIST, *extra_names):
        value = environ.get(name)
        if value is None or any(s in value for s in secret_values):
            continue
        env[name] = value
    env.setdefault("PATH", DEFAULT_PATH)
    env["PWD"] = str(cwd)
    return env


class _Capture:
    """Keeps the first and the last ``cap / 2`` bytes of a stream, and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.half = max(cap // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.total += len(chunk)
            room = self.half - len(self.head)
            if room > 0:
                self.head += chunk[:room]
                chunk = chunk[room:]
            if chunk:
                self.tail += chunk
                del self.tail[: max(len(self.tail) - self.half, 0)]

    def text(self) -> str:
        head = self.head.decode("utf-8", errors="replace")
        tail = self.tail.decode("utf-8", errors="replace")
        dropped = self.total - len(self.head) - len(self.tail)
        if dropped > 0:
            return (f"{head}\n[… {dropped:,} bytes of output left out (tools."
                    f"shell_max_output_bytes); the first and last parts are shown …]\n{tail}")
        return head + tail


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its user id; it is still there
        return True
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def kill_group(pgid: int, grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the process group, SIGKILL whatever is left after ``grace`` seconds."""
    if not _group_alive(pgid):
        return
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    # Nothing signals the end of processes one is not the parent of: look every 20 ms.
    while _group_alive(pgid) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    _signal_group(pgid, signal.SIGKILL)


def _kill_started(start: asyncio.Task[asyncio.subprocess.Process]) -> None:
    """A start whose call was stopped meanwhile: kill the process group it started."""
    if not start.cancelled() and start.exception() is None:
        _signal_group(start.result().pid, signal.SIGKILL)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class Shell:
    """Runs one command per call. ``cwd`` is data/scripts/."""

    def __init__(
        self, cwd: Path, env: dict[str, str], *, timeout_seconds: float, max_output_bytes: int
    ) -> None:
        self.cwd = cwd
        self.env = env
        self.timeout_seconds = timeout_seconds
        self.max_output_bytes = max_output_bytes

    def tools(self) -> list[ToolFunc]:
        return [self.shell]

    def describe(self, args: Mapping[str, Any]) -> str:
        """How a call is shown for approval: the exact command line."""
        command = str(args.get("command", ""))
        return (fenced(command, "sh") + f"\n\nin {self.cwd}, with a "
                f"{duration_text(self.timeout_seconds)} time limit")

    async def shell(self, command: str) -> str:
        """Run a command with /bin/sh in the scripts folder (data/scripts/) and return its exit
        status and output (stdout and stderr together). It has a time limit; anything it
        starts in the background is stopped when it ends; there is no input (stdin is empty).

        Args:
            command: the command line, as typed in a terminal, e.g. "ls -la" or "sh backup.sh"
        """
        if not command.strip():
            raise BadArguments("the command is empty")
        self.cwd.mkdir(parents=True, exist_ok=True)
        start = asyncio.create_task(asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, cwd=self.cwd, env=self.env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        ), name="shell-start")
        try:
            # Shielded: cancelled while it connects the pipes, asyncio kills the shell alone
            # and waits for the pipe to close, which a child of the shell holds open, so a
            # Stop waited for the command (CPython gh-103847). The start finishes unseen.
            proc = await asyncio.shield(start)
        except asyncio.CancelledError:
            start.add_done_callback(_kill_started)  # its owner from here: no grace either
            raise
        assert proc.stdout is not None
        pgid = proc.pid  # start_new_session: the shell leads a new session and group
        capture = _Capture(self.max_output_bytes)
        reader = asyncio.create_task(capture.drain(proc.stdout), name=f"shell-{pgid}")
        timed_out = False
        try:
            try:
                async with asyncio.timeout(self.timeout_seconds):
                    await proc.wait()
            except TimeoutError:
                timed_out = True
            # Done or out of time: nothing the command started outlives it.
            await kill_group(pgid)
            await proc.wait()
            try:
                async with asyncio.timeout(KILL_GRACE_SECONDS):
                    await reader  # ends once every holder of the pipe is gone
            except TimeoutError:
                reader.cancel()  # a process that left the group still holds the pipe
        except asyncio.CancelledError:  # the turn was stopped: no grace
            _signal_group(pgid, signal.SIGKILL)
            reader.cancel()
            raise
        if timed_out:
            status = (f"killed after the {duration_text(self.timeout_seconds)} time limit "
                      "(tools.shell_timeout_seconds), with everything it started")
        elif proc.returncode is not None and proc.returncode < 0:
            status = f"killed by signal {_signal_name(-proc.returncode)}"
        else:
            status = f"exit status {proc.returncode}"
        output = capture.text()
        return f"{status}\n{output}" if output else f"{status} (no output)"
