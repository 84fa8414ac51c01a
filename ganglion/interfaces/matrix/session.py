"""The Matrix session behind the interface: the nio client, its store, and the start-up checks.

Every check here once broke a bot when it was skipped (see shared/notes/matrix-e2ee.md): the
store folder must exist (or nio silently turns encryption off), the device id must be the
token's (or key upload fails), and a device that already published keys must never start
on an empty store (other devices would reject its new keys and every message would stay
unreadable, for good).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from nio import AsyncClient, AsyncClientConfig, ShareGroupSessionError, WhoamiError
from nio.crypto import ENCRYPTION_ENABLED
from nio.store import DefaultStore

from ganglion.config_matrix import MatrixConfig
from ganglion.errors import StartupError

log = logging.getLogger(__name__)

LOGIN_HINT = ("run `ganglion login` to log the bot in as a new device (it writes "
              "matrix.access_token and matrix.device_id into the config), then start again")


class HomeserverUnavailable(Exception):
    """The homeserver answered with a 5xx or 429 (or not like a homeserver at all, mid-run):
    try again later. Connection errors and time-outs arrive as aiohttp's and TimeoutError."""


class KeyShareIncomplete(Exception):
    """A new room key did not reach every device of the room (a to-device send failed): the
    key is discarded, so the reply is sent later with a fresh one that does."""


class TimedClient(AsyncClient):  # type: ignore[misc]  # nio is untyped
    """nio's client, noting when each sync response arrived (the start of the daemon's share
    of a round trip, before the body is read, validated and decrypted) and how long the
    encryption of a reply took (the end of that share)."""

    sync_arrived: float = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.encrypt_seconds: dict[str, float] = {}
        """Per room, the Megolm encryption time of its send in flight (the router sends one
        reply at a time per room); taken by the sender once the send is done."""

    async def receive_response(self, response: Any) -> None:
        if isinstance(response, ShareGroupSessionError):
            # nio builds this error with its users in the soft_logout field, so a single
            # failed to-device send of a room key would log the client out ("Not logged in")
            # for good: a failed share is no logout.
            response.soft_logout = False
        await super().receive_response(response)

    async def share_group_session(self, room_id: str, *args: Any, **kwargs: Any) -> Any:
        """nio's key share, which swallows a failed to-device send and marks the key shared
        anyway: every reply in that session would stay unreadable for the devices it missed.
        Here a key that missed a device it could have reached is thrown away instead."""
        resp = await super().share_group_session(room_id, *args, **kwargs)
        missed = self._reachable_devices(room_id) - set(resp.users_shared_with)
        if missed:
            self.olm.outbound_group_sessions.pop(room_id, None)
            raise KeyShareIncomplete(f"the room key did not reach {len(missed)} device(s) of "
                                     f"{room_id}; it is made anew for the next attempt")
        return resp

    def _reachable_devices(self, room_id: str) -> set[tuple[str, str]]:
        """(user, device) pairs a new room key must reach: every active device of the room's
        members but our own, blacklisted ones and those with no Olm session (nio skips them,
        and logs it)."""
        olm = self.olm
        return {(user_id, device.id) for user_id in self.rooms[room_id].users
                for device in olm.device_store.active_user_devices(user_id)
                if device.id != self.device_id and not olm.is_device_blacklisted(device)
                and olm.session_store.get(device.curve25519)}

    def encrypt(self, room_id: str, message_type: str,
                content: dict[Any, Any]) -> tuple[str, dict[str, Any]]:
        started = time.perf_counter()
        try:
            result: tuple[str, dict[str, Any]] = super().encrypt(room_id, message_type, content)
        finally:
            self.encrypt_seconds[room_id] = time.perf_counter() - started
        # The spec keeps a relation (thread, reply, edit) in the clear, beside the ciphertext:
        # homeservers group threads by it, and Element reads it there; nio leaves it out.
        if "m.relates_to" in content and result[0] == "m.room.encrypted":
            result[1]["m.relates_to"] = content["m.relates_to"]
        return result

    async def create_matrix_response(self, response_class: type, transport_response: Any,
                                     *args: Any, **kwargs: Any) -> Any:
        if response_class.__name__ == "SyncResponse":
            self.sync_arrived = time.monotonic()
        return await super().create_matrix_response(response_class, transport_response,
                                                    *args, **kwargs)


class WalStore(DefaultStore):  # type: ignore[misc]  # nio is untyped
    """nio's key store with the pragmas of our own database: WAL, synchronous=NORMAL.

    nio writes this store from the event loop (keys, sessions, sync tokens); with its default
    rollback journal each write costs several fsyncs, 10-40 ms of a blocked loop here. WAL
    keeps it consistent after a crash; only a power cut can lose the last writes, as for
    conversation.db.
    """

    def __post_init__(self) -> None:
        super().__post_init__()  # nio opens its database (peewee's) and creates its tables
        # Through peewee's public pragma(): set now, and on every connection opened later.
        for key, value in (("journal_mode", "wal"), ("synchronous", 1)):
            self.database.pragma(key, value, permanent=True)

    def save_encrypted_rooms(self, rooms: Any) -> None:
        # nio calls this after every sync, nearly always with nothing new, and each call
        # costs several milliseconds of the event loop (an account lookup and a write).
        if rooms:
            super().save_encrypted_rooms(rooms)


def make_client(config: MatrixConfig, store_path: Path) -> TimedClient:
    """A logged-in client whose Olm account is loaded from (or created in) ``store_path``."""
    if not ENCRYPTION_ENABLED:
        raise StartupError("matrix: matrix-nio was installed without encryption support; "
                           "reinstall it as matrix-nio[e2e] (uv sync does)")
    try:
        store_path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as err:
        raise StartupError(f"matrix: cannot create matrix.store_path {store_path}: "
                           f"{err.strerror}; set matrix.store_path to a writable folder") from None
    client_config = AsyncClientConfig(
        encryption_enabled=True,
        store=WalStore,
        # The interface saves the sync token itself, after the events of a sync are on the
        # bus: a crash in between then means a re-delivery (deduplicated), never a loss.
        store_sync_tokens=False,
        # Fail fast instead of nio's endless retries: a reply that cannot be sent stays in the
        # outbox, and the sync loop owns the backoff.
        max_timeouts=0,
        max_limit_exceeded=3,
        request_timeout=30,
    )
    client = TimedClient(config.homeserver, config.user_id, device_id=config.device_id,
                         store_path=str(store_path), config=client_config)
    try:
        client.restore_login(config.user_id, config.device_id, config.access_token)
    except Exception as err:
        raise StartupError(f"matrix: cannot open the key store in {store_path}: {err}") from err
    make_private(store_path)
    if client.olm is None:
        raise StartupError(f"matrix: encryption could not be enabled with the store in "
                           f"{store_path}; check that the folder is writable")
    return client


def make_private(store_path: Path) -> None:
    """The store holds this device's secret keys: owner-only, whatever the umask made of it.

    nio creates its database with the default mode; SQLite gives the -wal and -shm files the
    mode of the database, so they follow.
    """
    store_path.chmod(0o700)
    for path in store_path.iterdir():
        if path.is_file():
            path.chmod(0o600)


async def check_session(client: TimedClient, config: MatrixConfig, store_path: Path) -> None:
    """The token is valid and belongs to this user and device, and the store fits the device.

    Raises StartupError (with what to do) for a wrong configuration, and
    HomeserverUnavailable when the question could not be asked.
    """
    resp = await client.whoami()
    if isinstance(resp, WhoamiError):
        status = http_status(resp)
        if retryable(status):
            raise HomeserverUnavailable(f"whoami: HTTP {status}")
        if resp.status_code in ("M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"):
            raise StartupError(
                f"matrix: the homeserver rejected matrix.access_token ({resp.status_code}: the "
                f"token expired or its device was logged out); {LOGIN_HINT}")
        raise StartupError(
            f"matrix: {config.homeserver} did not answer like a Matrix homeserver "
            f"(whoami: {resp}); check matrix.homeserver: it is the client API address, "
            "e.g. https://matrix.example.org")
    if resp.user_id != config.user_id:
        raise StartupError(
            f"matrix: matrix.user_id is {config.user_id} but the access token belongs to "
            f"{resp.user_id}; fix matrix.user_id, or {LOGIN_HINT}")
    if resp.device_id and resp.device_id != config.device_id:
        raise StartupError(
            f"matrix.device_id is {config.device_id} but the access token belongs to device "
            f"{resp.device_id}; set matrix.device_id: {resp.device_id} if its store is "
            f"{store_path}, or {LOGIN_HINT}")
    if not client.olm_account_shared and await _server_has_device_keys(client, config):
        raise StartupError(
            f"matrix: the store {store_path} holds no keys for device {config.device_id}, but "
            "the homeserver already has encryption keys for that device (it was used with "
            "another store, or its store was deleted). Starting would break encryption for "
            "good: other devices would reject the new keys and no message could be read. "
            f"Never reuse a device with an empty store: {LOGIN_HINT}")
    log.info("matrix: logged in as %s, device %s (store %s)", config.user_id, config.device_id,
             store_path)


async def _server_has_device_keys(client: TimedClient, config: MatrixConfig) -> bool:
    """True when the homeserver already lists identity keys for our device."""
    body = {"device_keys": {config.user_id: [config.device_id]}, "timeout": 10000}
    headers = {"Content-Type": "application/json",
               "Authorization": f"Bearer {config.access_token}"}
    resp = await client.send("POST", "/_matrix/client/v3/keys/query", json.dumps(body), headers)
    async with resp:
        if retryable(resp.status):
            raise HomeserverUnavailable(f"keys/query: HTTP {resp.status}")
        if resp.status != 200:
            raise StartupError(f"matrix: keys/query answered HTTP {resp.status}: "
                               f"{(await resp.text())[:200]}")
        data = await resp.json()
    devices = (data.get("device_keys") or {}).get(config.user_id) or {}
    return config.device_id in devices


def http_status(resp: Any) -> int | None:
    transport = getattr(resp, "transport_response", None)
    status = getattr(transport, "status", None)
    return status if isinstance(status, int) else None


def retryable(status: int | None) -> bool:
    """Whether a failed request is worth trying again after a pause: the homeserver is
    struggling (5xx), limiting us (429), or gave no HTTP answer we could read."""
    return status is None or status >= 500 or status == 429


async def maintain_keys(client: AsyncClient) -> None:
    """What nio's sync_forever does between syncs: to-device messages out, then key upload,
    query and claim, as the last sync said they are due."""
    if client.outgoing_to_device_messages:
        await client.send_to_device_messages()
    if client.should_upload_keys:
        await client.keys_upload()
    if client.should_query_keys:
        await client.keys_query()
    if client.should_claim_keys:
        await client.keys_claim(client.get_users_for_key_claiming())
