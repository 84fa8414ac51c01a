"""Run the real daemon as a child process (for crash, signal and start-up tests)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
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

    def start(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GANGLION_")}
        out = self.output.open("ab")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "ganglion", "--config", str(self.config_path),
             *args],
            cwd=self.workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
        out.close()

    async def wait_ready(self, timeout: float = 20) -> float:
        """Until /healthz answers; returns the seconds it took."""
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            while time.monotonic() - started < timeout:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.text()}")
                try:
                    async with session.get(f"{self.url}/healthz") as resp:
                        if resp.status == 200:
                            return time.monotonic() - started
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(f"daemon not ready after {timeout} s:\n{self.text()}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        started = time.monotonic()
        assert self.proc is not None
        while self.proc.poll() is None:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"daemon still running after {timeout} s")
            await asyncio.sleep(0.02)
        return self.proc.returncode

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

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""
