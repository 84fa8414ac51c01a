"""Run the real daemon as a child process (for crash, signal and start-up tests)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from wsclient import ChatClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Daemon:
    """``python -m ganglion --config <file>`` with its own data dir; stdout+stderr to a file.

    ``prefix`` goes before the command (``nsenter -t PID -m --wd=DIR``: the daemon in another
    mount namespace); it must exec the command, so that ``proc`` is the daemon itself.
    """

    def __init__(
        self, workdir: Path, config: dict[str, Any], prefix: Sequence[str] = ()
    ) -> None:
        self.workdir = workdir
        self.config = config
        self.prefix = list(prefix)
        self.port: int = config.get("web", {}).get("port") or free_port()
        config.setdefault("web", {})["port"] = self.port
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.output = workdir / "daemon-output.txt"
        self.proc: subprocess.Popen[bytes] | None = None
        self.notices: NotifySocket | None = None

    async def __aenter__(self) -> Daemon:
        """``async with Daemon(...) as d``: started and ready; killed on leaving."""
        self.start()
        try:
            await self.wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.kill()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *args: str, command: Sequence[str] = (), **popen: Any) -> None:
        """Start ``python -m ganglion`` (or ``command`` before ``--config``), with a notify
        socket of its own: what a previous run said is not read as this one's. ``popen``
        goes to Popen (``stderr``: else it joins stdout in ``output``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GANGLION_")}
        if self.notices is not None:
            self.notices.close()
        self.notices = NotifySocket()
        env["NOTIFY_SOCKET"] = self.notices.address
        out = self.output.open("ab")
        self.proc = subprocess.Popen(
            [*self.prefix, *(command or [sys.executable, "-m", "ganglion"]),
             "--config", str(self.config_path), *args],
            cwd=self.workdir, env=env, stdout=out, **{"stderr": subprocess.STDOUT, **popen},
        )
        out.close()

    async def wait_ready(self, timeout: float = 20) -> float:
        """Until the daemon notifies READY=1, which it does once App.start has finished
        (the scheduler and reminders too, not just the web port); the seconds it took."""
        started = time.monotonic()
        await self.notified("READY=1", timeout)
        return time.monotonic() - started

    async def notified(self, state: str, timeout: float = 20) -> None:
        """Until the daemon notifies ``state`` (a line such as READY=1, see ganglion/notify.py);
        RuntimeError with its output if it exits first."""
        assert self.proc is not None and self.notices is not None
        try:
            async with asyncio.timeout(timeout):
                await self.notices.wait_for(state, self.proc.pid)
        except TimeoutError:
            raise TimeoutError(f"no {state} from the daemon after {timeout} s:\n"
                               f"{self.text()}") from None
        except ProcessLookupError:
            self.proc.wait()
            raise RuntimeError(f"daemon exited {self.proc.returncode} before {state}:\n"
                               f"{self.text()}") from None

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        """The exit status, once the daemon has exited (TimeoutError after ``timeout`` s)."""
        assert self.proc is not None
        if self.proc.poll() is None:  # not reaped: its pidfd can be had
            try:
                with exit_of(self.proc.pid) as exited:
                    await asyncio.wait_for(exited, timeout)
            except TimeoutError:
                raise TimeoutError(f"daemon still running after {timeout} s") from None
        return self.proc.wait()

    async def stop(self, timeout: float = 5) -> int:
        """SIGTERM, then the exit status once the daemon has exited (within ``timeout`` s)."""
        self.signal(signal.SIGTERM)
        return await self.wait_exit(timeout)

    async def connect(self, thread_id: str | None = None) -> ChatClient:
        """A tab connected with the config's web token (to ``thread_id``'s conversation)."""
        chat = ChatClient(self.url, self.config["web"]["token"], thread_id)
        await chat.connect()
        return chat

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.notices is not None:
            self.notices.close()
            self.notices = None

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""


@contextlib.contextmanager
def exit_of(pid: int) -> Iterator[asyncio.Future[None]]:
    """A future done once ``pid`` has exited: a pidfd, so the kernel says when, nothing is
    polled. ProcessLookupError if the process was reaped already."""
    loop = asyncio.get_running_loop()
    pidfd = os.pidfd_open(pid)
    exited: asyncio.Future[None] = loop.create_future()
    loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
    try:
        yield exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


class NotifySocket:
    """The receiving end of systemd's notify protocol, in the abstract namespace (no path,
    so no length limit from a deep tmp_path and nothing left behind)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(f"\0ganglion-test-{os.getpid()}-{secrets.token_hex(8)}")
        self.sock.setblocking(False)
        name = self.sock.getsockname()
        self.address = "@" + (name.decode() if isinstance(name, bytes) else name)[1:]
        self.seen: list[str] = []
        """Every state notified so far, in order."""

    async def wait_for(self, state: str, pid: int) -> None:
        """Until a datagram holds the line ``state``; ProcessLookupError once ``pid`` has
        exited without it (a pidfd: the kernel says so, nothing is polled)."""
        if state in self.seen:
            return
        loop = asyncio.get_running_loop()
        received: asyncio.Future[bytes] | None = None
        try:
            with exit_of(pid) as exited:
                while True:
                    received = asyncio.ensure_future(loop.sock_recv(self.sock, 4096))
                    await asyncio.wait({received, exited}, return_when=asyncio.FIRST_COMPLETED)
                    if not received.done():
                        received.cancel()
                        # Whatever it sent before exiting is in the socket already.
                        while (left := self._read_now()) is not None:
                            self.seen.extend(left.splitlines())
                        if state in self.seen:
                            return
                        raise ProcessLookupError(pid)
                    self.seen.extend(received.result().decode().splitlines())
                    if state in self.seen:
                        return
        finally:
            if received is not None:
                received.cancel()

    def _read_now(self) -> str | None:
        try:
            return self.sock.recv(4096).decode()
        except BlockingIOError:
            return None

    def close(self) -> None:
        self.sock.close()
