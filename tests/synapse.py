"""A throw-away Synapse homeserver for the Matrix tests and benchmark (no Docker).

Place in the flow: it stands where the user's homeserver stands, on the far side of
``ganglion.interfaces.matrix``. Synapse is installed from PyPI into its own virtual environment
under ``~/.cache/ganglion-tests/synapse-<version>`` (never into the project's: it pins Twisted
and many libraries), reused when present, and reinstalled from uv's cache without network
when possible. One server runs per test session (SQLite, 127.0.0.1, client API only, no
federation); tests register fresh users through the shared-secret admin API.

Run it by hand: ``uv run python tests/synapse.py`` prints its URL and shared secret.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    MegolmEvent,
    ReceiptEvent,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomMemberEvent,
    RoomMessageNotice,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
    TypingNoticeEvent,
)

from ganglion.interfaces.matrix.session import maintain_keys

SYNAPSE_VERSION = "1.163.2"
CACHE_DIR = Path(os.environ.get("GANGLION_TEST_CACHE", Path.home() / ".cache" / "ganglion-tests"))
START_TIMEOUT = 60.0
SERVER_NAME = "localhost"


class SynapseUnavailable(RuntimeError):
    """Synapse could not be installed or started here; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def install(version: str = SYNAPSE_VERSION) -> Path:
    """The Python of a virtual environment holding matrix-synapse ``version``; installs it once.

    Tries uv's cache first (``--offline``), then the package index. A lock file keeps a test
    run and a benchmark started at the same time from installing twice.
    """
    venv = CACHE_DIR / f"synapse-{version}"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    spec = f"matrix-synapse=={version}"
    done = f"{spec} --compile-bytecode\n"
    if python.exists() and marker.is_file() and marker.read_text() == done:
        return python
    uv = shutil.which("uv")
    if uv is None:
        raise SynapseUnavailable("`uv` is not on PATH (pip install uv)")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / f".synapse-{version}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and marker.is_file() and marker.read_text() == done:
            return python
        shutil.rmtree(venv, ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        made = subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)],
                              env=env, capture_output=True, text=True, check=False)
        if made.returncode != 0:
            raise SynapseUnavailable(f"uv venv failed: {made.stderr.strip()[-500:]}")
        env["VIRTUAL_ENV"] = str(venv)
        result = None
        for extra in (["--offline"], []):
            # Compiled now: the environment forbids writing .pyc files at run time
            # (PYTHONDONTWRITEBYTECODE), and compiling Synapse at every start costs seconds.
            result = subprocess.run([uv, "pip", "install", "-q", "--compile-bytecode", *extra,
                                     spec], env=env,
                                    capture_output=True, text=True, check=False, timeout=600)
            if result.returncode == 0:
                break
        assert result is not None
        if result.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise SynapseUnavailable(f"uv pip install {spec} failed: "
                                     f"{result.stderr.strip()[-800:]}")
        marker.write_text(done)
    return python


@dataclass(frozen=True)
class MatrixUser:
    """A registered account and the device its registration logged in."""

    user_id: str
    password: str
    access_token: str
    device_id: str

    @property
    def localpart(self) -> str:
        return self.user_id[1:].split(":", 1)[0]


class Synapse:
    """One homeserver process: ``start``/``stop`` may be repeated (same port, same data)."""

    def __init__(self, python: Path, workdir: Path, port: int | None = None) -> None:
        self.python = python
        self.workdir = workdir
        self.port = port or free_port()
        self.shared_secret = secrets.token_hex(16)
        self.config_path = workdir / "homeserver.yaml"
        self.log_path = workdir / "homeserver.log"
        self.output = workdir / "synapse-output.txt"
        self.proc: subprocess.Popen[bytes] | None = None
        self._users = 0
        self.users: list[MatrixUser] = []
        """Every user registered, in order (conftest's secret scan takes each test's own)."""
        self._write_config()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        # An ed25519 signing key is a 32-byte seed: written here, it saves a whole Synapse
        # start-up (--generate-keys) per session.
        seed = base64.b64encode(os.urandom(32)).decode().rstrip("=")
        (d / "signing.key").write_text(f"ed25519 a_test {seed}\n")
        (d / "log.yaml").write_text(yaml.safe_dump({
            "version": 1,
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler", "formatter": "plain",
                                  "filename": str(self.log_path)}},
            "root": {"level": "WARNING", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }))
        unlimited = {"per_second": 10000, "burst_count": 10000}
        config = {
            "server_name": SERVER_NAME,
            "pid_file": str(d / "homeserver.pid"),
            "public_baseurl": self.url + "/",
            "listeners": [{
                "port": self.port, "bind_addresses": ["127.0.0.1"], "type": "http",
                "tls": False, "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }],
            "database": {"name": "sqlite3", "args": {"database": str(d / "homeserver.db")}},
            "log_config": str(d / "log.yaml"),
            "media_store_path": str(d / "media"),
            "signing_key_path": str(d / "signing.key"),
            "registration_shared_secret": self.shared_secret,
            "macaroon_secret_key": secrets.token_hex(16),
            "form_secret": secrets.token_hex(16),
            "enable_registration": False,
            "report_stats": False,
            "bcrypt_rounds": 4,
            "presence": {"enabled": False},
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "federation_domain_whitelist": [],
            "url_preview_enabled": False,
            "enable_metrics": False,
            "rc_message": unlimited,
            "rc_registration": unlimited,
            "rc_registration_token_validity": unlimited,
            "rc_login": {"address": unlimited, "account": unlimited,
                         "failed_attempts": unlimited},
            "rc_admin_redaction": unlimited,
            "rc_joins": {"local": unlimited, "remote": unlimited},
            "rc_joins_per_room": unlimited,
            "rc_3pid_validation": unlimited,
            "rc_invites": {"per_room": unlimited, "per_user": unlimited,
                           "per_issuer": unlimited},
            "rc_third_party_invite": unlimited,
            "rc_key_requests": unlimited,
            "rc_room_creation": unlimited,
            "rc_reports": unlimited,
            "rc_delayed_event_mgmt": unlimited,
        }
        self.config_path.write_text(yaml.safe_dump(config))

    # -- lifecycle ------------------------------------------------------------------------

    def _spawn(self) -> None:
        out = self.output.open("ab")
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        self.proc = subprocess.Popen(
            [str(self.python), "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
            cwd=self.workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()

    def _health_or_exit(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise SynapseUnavailable(
                f"synapse exited with status {self.proc.returncode}:\n{self.text()[-3000:]}")
        return False

    def start_blocking(self) -> float:
        """Start and wait for /health; returns the seconds it took (for the session fixture)."""
        started = time.monotonic()
        self._spawn()
        while time.monotonic() - started < START_TIMEOUT:
            self._health_or_exit()
            with (contextlib.suppress(OSError, urllib.error.URLError),
                  urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp):
                if resp.status == 200:
                    return time.monotonic() - started
            time.sleep(0.1)
        self.stop_blocking()
        raise SynapseUnavailable(f"synapse not healthy after {START_TIMEOUT:.0f} s:\n"
                                 f"{self.text()[-3000:]}")

    async def start(self) -> float:
        """Start again (same port and data) and wait for /health without blocking the loop."""
        started = time.monotonic()
        self._spawn()
        async with aiohttp.ClientSession() as session:
            while time.monotonic() - started < START_TIMEOUT:
                self._health_or_exit()
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(f"{self.url}/health") as resp:
                        if resp.status == 200:
                            return time.monotonic() - started
                await asyncio.sleep(0.1)
        await self.stop()
        raise SynapseUnavailable(f"synapse not healthy after {START_TIMEOUT:.0f} s")

    def stop_blocking(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait until the process is gone (the port is free again)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait(5)
                break
            await asyncio.sleep(0.05)

    def text(self) -> str:
        parts = [p.read_text(errors="replace") for p in (self.output, self.log_path)
                 if p.exists()]
        return "\n".join(parts)

    # -- accounts -------------------------------------------------------------------------

    async def register(self, prefix: str = "user", password: str | None = None,
                       admin: bool = False) -> MatrixUser:
        """A fresh account (unique name) through the shared-secret admin API."""
        self._users += 1
        localpart = f"{prefix}{self._users}x{secrets.token_hex(3)}"
        password = password or secrets.token_urlsafe(12)
        url = f"{self.url}/_synapse/admin/v1/register"
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as resp:
                resp.raise_for_status()
                nonce = (await resp.json())["nonce"]
            mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
            mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(),
                                     b"admin" if admin else b"notadmin"]))
            body = {"nonce": nonce, "username": localpart, "password": password,
                    "admin": admin, "mac": mac.hexdigest()}
            async with session.post(url, json=body) as resp:
                data = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"register {localpart} failed: {resp.status} {data}")
        user = MatrixUser(data["user_id"], password, data["access_token"], data["device_id"])
        self.users.append(user)  # the test that registered it scans its logs for its token
        return user


HUMAN_FILTER = {"room": {"timeline": {"limit": 1000}}}


class Human:
    """A person's client: nio with encryption and its own store, synced on demand.

    ``until(predicate)`` syncs (1 s long-polls) until the predicate holds: no fixed sleeps.
    """

    def __init__(self, user: MatrixUser, homeserver: str, store: Path) -> None:
        store.mkdir(parents=True, exist_ok=True)
        self.user = user
        self.client = AsyncClient(
            homeserver, user.user_id, device_id=user.device_id, store_path=str(store),
            config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True,
                                     max_timeouts=0, request_timeout=20))
        self.client.restore_login(user.user_id, user.device_id, user.access_token)
        self.events: list[tuple[str, Any]] = []
        """(room id, event) of every timeline event seen, decrypted where possible."""
        self.membership: dict[tuple[str, str], str] = {}
        self.typing: list[tuple[str, list[str]]] = []
        """(room id, users typing) for every typing notice seen, in order."""
        self.receipts: list[tuple[str, str, str]] = []
        """(room id, event id, user) for every read receipt seen, in order."""
        self.synced = False
        self.to_device: list[Any] = []
        """Every to-device event received (key requests among them)."""

    async def sync(self, timeout_ms: int = 1000) -> None:
        client = self.client
        # A long timeline limit: with the default (10) a sync after a busy minute comes back
        # "limited" and the person would never see the older replies.
        resp = await client.sync(timeout=0 if not self.synced else timeout_ms,
                                 full_state=not self.synced, sync_filter=HUMAN_FILTER)
        if not isinstance(resp, SyncResponse):
            raise RuntimeError(f"sync failed: {resp}")
        self.synced = True
        self.to_device += resp.to_device_events
        for room_id, info in resp.rooms.join.items():
            for event in [*info.state, *info.timeline.events]:
                if isinstance(event, RoomMemberEvent):
                    self.membership[(room_id, event.state_key)] = event.membership
            self.events += [(room_id, e) for e in info.timeline.events]
            self.typing += [(room_id, list(e.users)) for e in info.ephemeral
                            if isinstance(e, TypingNoticeEvent)]
            self.receipts += [(room_id, r.event_id, r.user_id) for e in info.ephemeral
                              if isinstance(e, ReceiptEvent) for r in e.receipts]
        await maintain_keys(client)  # as the bot does between syncs

    async def until(self, predicate: Callable[[], Any], timeout: float = 30) -> Any:
        """Sync until ``predicate()`` returns something truthy; returns it."""
        async with asyncio.timeout(timeout):
            while True:
                result = predicate()
                if result:
                    return result
                await self.sync()

    async def create_room(self, invite: list[str], encrypted: bool = True) -> str:
        state = [{"type": "m.room.encryption", "state_key": "",
                  "content": {"algorithm": "m.megolm.v1.aes-sha2"}}] if encrypted else []
        resp = await self.client.room_create(invite=invite, initial_state=state)
        if not isinstance(resp, RoomCreateResponse):
            raise RuntimeError(f"room_create failed: {resp}")
        room_id: str = resp.room_id
        await self.until(lambda: room_id in self.client.rooms)
        return room_id

    async def invite(self, room_id: str, user_id: str) -> None:
        resp = await self.client.room_invite(room_id, user_id)
        if not isinstance(resp, RoomInviteResponse):
            raise RuntimeError(f"room_invite failed: {resp}")

    async def join(self, room_id: str) -> None:
        resp = await self.client.join(room_id)
        if not isinstance(resp, JoinResponse):
            raise RuntimeError(f"join failed: {resp}")
        await self.until(lambda: room_id in self.client.rooms)

    def member(self, room_id: str, user_id: str) -> str | None:
        return self.membership.get((room_id, user_id))

    async def wait_joined(self, room_id: str, user_id: str, timeout: float = 30) -> None:
        await self.until(lambda: self.member(room_id, user_id) == "join", timeout)

    async def send(self, room_id: str, text: str) -> str:
        """Send ``text`` (encrypted in an encrypted room); returns the event id."""
        if self.client.should_query_keys:
            await self.client.keys_query()
        resp = await self.client.room_send(room_id, "m.room.message",
                                           {"msgtype": "m.text", "body": text},
                                           ignore_unverified_devices=True)
        if not isinstance(resp, RoomSendResponse):
            raise RuntimeError(f"room_send failed: {resp}")
        event_id: str = resp.event_id
        return event_id

    def messages_from(self, room_id: str, sender: str) -> list[Any]:
        """Messages (text, notices, and undecryptable ones) from ``sender`` in the room."""
        kinds = (RoomMessageText, RoomMessageNotice, MegolmEvent)
        return [e for r, e in self.events
                if r == room_id and e.sender == sender and isinstance(e, kinds)]

    async def next_message(self, room_id: str, sender: str, after: int,
                           timeout: float = 30) -> Any:
        """The (after+1)-th message from ``sender`` in the room, once it arrived."""
        messages = await self.until(
            lambda: (found := self.messages_from(room_id, sender)) and len(found) > after
            and found, timeout)
        return messages[after]

    async def close(self) -> None:
        await self.client.close()


HumanFactory = Callable[[MatrixUser], Awaitable[Human]]
"""The ``humans`` fixture (conftest.py): ``await humans(user)`` is a synced Human."""


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="ganglion-synapse-"))
    server = Synapse(install(), workdir)
    took = server.start_blocking()
    print(f"synapse {SYNAPSE_VERSION} at {server.url} (ready in {took:.1f} s); "
          f"shared secret {server.shared_secret}; data {workdir}; Ctrl-C stops it", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.stop_blocking()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    main()
