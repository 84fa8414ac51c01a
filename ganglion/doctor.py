"""``ganglion doctor``: what goes wrong in practice, checked, each problem with what to do.

An entry point like ``cli.py`` (it may reach into the interfaces, to ask the homeserver the
questions the Matrix start-up asks). It changes nothing: it opens the database read-only, the
Matrix key store only when it exists, and binds the web port only to learn whether it is
free. Every line it prints passes the secret mask.
"""

from __future__ import annotations

import errno
import shutil
import socket
import sqlite3
import tempfile
import time
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp

from ganglion.config import LoadedConfig, secret_values
from ganglion.config_database import shown_database
from ganglion.errors import StartupError
from ganglion.llm.endpoints import EndpointPool
from ganglion.storage.backend import StorageError
from ganglion.storage.connect import probe_database, sqlite_path
from ganglion.storage.lock import DataFolderInUse, DataLock
from ganglion.storage.snapshot import check as check_database
from ganglion.triggers import local_zone
from ganglion.untrusted import mask_secrets

LOW_SPACE = 100 * 1024 * 1024
"""Free bytes below which a folder fails: SQLite cannot commit, a log line is lost."""
CLOCK_SKEW_SECONDS = 60.0
"""A clock further off than this from the servers' fires reminders at the wrong time."""
TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


async def diagnose(loaded: LoadedConfig) -> list[Check]:
    """Every check, in the order a person would fix them."""
    cfg = loaded.config
    checks = [Check("config", True, f"{loaded.source or 'built-in defaults (no file)'} is valid")]
    checks += _folders(loaded)
    checks.append(await _postgres(loaded) if cfg.database.is_postgres else
                  _database(sqlite_path(cfg.database.url, loaded.data_dir) or Path()))
    checks.append(await _web_port(loaded))
    checks += await _endpoints(loaded)
    if cfg.matrix.enabled:
        checks.append(await _matrix(loaded))
    checks.append(await _clock(loaded))
    return [_masked(c, secret_values(cfg)) for c in checks]


def _folders(loaded: LoadedConfig) -> list[Check]:
    out = []
    for name, folder in (("data folder", loaded.data_dir), ("log folder", loaded.log_dir)):
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent  # a folder made at first start: its parent must take it
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as err:
            out.append(Check(name, False, f"{existing} is not writable: {err.strerror}",
                             f"make {existing} writable for this user, or point "
                             f"paths.{'data_dir' if name == 'data folder' else 'log_dir'} "
                             "elsewhere"))
            continue
        free = shutil.disk_usage(existing).free
        where = str(folder) + ("" if existing == folder else " (made at first start)")
        if free < LOW_SPACE:
            out.append(Check(name, False, f"{where}: only {free / 2**20:.0f} MiB free",
                             "free some space on that disk"))
        else:
            out.append(Check(name, True, f"{where}: writable, {free / 2**30:.1f} GiB free"))
    return out


async def _postgres(loaded: LoadedConfig) -> Check:
    where = shown_database(loaded.config.database.url)
    try:
        return Check("database", True, await probe_database(loaded.config.database.url, where))
    except StorageError as err:
        return Check("database", False, str(err),
                     "start the server, or fix database.url (host, port, user, password)")


def _database(path: Path) -> Check:
    if not path.is_file():
        return Check("database", True, f"{path} does not exist yet (made at first start)")
    try:
        verdict, counts = check_database(path)
    except sqlite3.Error as err:
        return Check("database", False, f"{path}: {err}",
                     "restore it from a backup (`ganglion restore`)")
    if verdict != "ok":
        return Check("database", False, f"{path}: integrity check says {verdict[:300]}",
                     "stop the daemon, keep a copy of the file, restore from a backup")
    return Check("database", True, f"{path}: integrity ok, {counts.get('messages', 0):,} "
                                   "messages")


async def _web_port(loaded: LoadedConfig) -> Check:
    web = loaded.config.web
    if not web.enabled:
        return Check("web port", True, "the web UI is off (web.enabled: false)")
    where = f"{web.host}:{web.port}"
    try:
        with socket.create_server((web.host, web.port)):
            return Check("web port", True, f"{where} is free")
    except OSError as err:
        if err.errno != errno.EADDRINUSE:
            return Check("web port", False, f"cannot listen on {where}: {err.strerror}",
                         "set web.host to an address of this machine")
    holder = _daemon_on(loaded.data_dir)
    if holder is not None and await _answers_healthz(web.host, web.port):
        return Check("web port", True, f"{where} is held by this daemon ({holder})")
    return Check("web port", False, f"{where} is taken by another program",
                 "stop it, or set web.port to a free port")


def _daemon_on(data_dir: Path) -> str | None:
    """Which daemon holds the data folder's lock ("pid 123"), or None when none runs."""
    if not data_dir.is_dir():
        return None
    lock = DataLock(data_dir)
    try:
        lock.acquire()
    except DataFolderInUse as err:
        return f"pid {err.pid}" if err.pid else "running"
    except OSError:
        return None
    lock.release()
    return None


async def _answers_healthz(host: str, port: int) -> bool:
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/healthz"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session, \
                session.get(url) as resp:
            return resp.status == 200 and (await resp.text()).strip() == "ok"
    except (aiohttp.ClientError, TimeoutError):
        return False


async def _endpoints(loaded: LoadedConfig) -> list[Check]:
    llm = loaded.config.llm
    pool = EndpointPool(llm)
    try:
        problems = await pool.discover()
    finally:
        await pool.close()
    out = []
    listed: set[str] = set()
    for ep in pool.endpoints():
        problem = problems.get(ep.name)
        if problem is None:
            models = ep.models or []
            listed.update(models)
            out.append(Check(f"llm endpoint {ep.name}", True,
                             f"{ep.config.base_url} answers, {len(models)} model(s)"))
        else:
            out.append(Check(f"llm endpoint {ep.name}", False,
                             f"{ep.config.base_url}: {problem}",
                             f"start the server, or fix llm.endpoints ({ep.name}) base_url "
                             "and api_key"))
    if listed:
        aliases = _aliases(loaded.data_dir / "conversation.db")
        for key, model in (("llm.model", llm.model), ("llm.compaction_model",
                                                      llm.compaction_model)):
            if not model:
                continue
            target = aliases.get(model, model)
            if target in listed:
                shown = model if target == model else f"{model} (alias of {target})"
                out.append(Check(key, True, f"{shown} is offered"))
            else:
                out.append(Check(key, False, f"{model} is not offered by any endpoint that "
                                             f"answered (they offer: "
                                             f"{', '.join(sorted(listed)[:12])})",
                                 f"set {key} to one of those"))
    return out


def _aliases(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return dict(conn.execute("SELECT alias, model FROM aliases").fetchall())
        finally:
            conn.close()
    except sqlite3.Error:
        return {}


async def _matrix(loaded: LoadedConfig) -> Check:
    """The token (whoami), then whether the key store and the homeserver agree on the
    device's identity key: a store lost or swapped breaks encryption for good."""
    cfg = loaded.config.matrix
    store = loaded.path(cfg.store_path)
    base = cfg.homeserver.rstrip("/") + "/_matrix/client/v3"
    headers = {"Authorization": f"Bearer {cfg.access_token}"}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    try:
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            async with session.get(f"{base}/account/whoami") as resp:
                who = await resp.json(content_type=None) if resp.status < 500 else {}
                status = resp.status
            if status in (401, 403):
                return Check("matrix", False, f"the homeserver rejected matrix.access_token "
                                              f"({who.get('errcode', status)})",
                             "run `ganglion login` (the token expired or its device was "
                             "logged out)")
            if status != 200 or not isinstance(who, dict):
                return Check("matrix", False, f"{cfg.homeserver} answered whoami with HTTP "
                                              f"{status}",
                             "check matrix.homeserver: the client API address")
            body = {"device_keys": {cfg.user_id: [cfg.device_id]}}
            async with session.post(f"{base}/keys/query", json=body) as resp:
                keys = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as err:
        return Check("matrix", False, f"{cfg.homeserver} does not answer: "
                                      f"{err or type(err).__name__}",
                     "check matrix.homeserver (the client API address) and the network")
    if who.get("user_id") != cfg.user_id or who.get("device_id") not in (None, cfg.device_id):
        return Check("matrix", False, f"the token belongs to {who.get('user_id')} device "
                                      f"{who.get('device_id')}, the config says "
                                      f"{cfg.user_id} device {cfg.device_id}",
                     "run `ganglion login`, or fix matrix.user_id / matrix.device_id")
    device = ((keys.get("device_keys") or {}).get(cfg.user_id) or {}).get(cfg.device_id) \
        if isinstance(keys, dict) else None
    published = ((device or {}).get("keys") or {}).get(f"ed25519:{cfg.device_id}")
    held = await _store_identity(loaded)
    if held is None and published is None:
        return Check("matrix", True, f"{cfg.user_id} device {cfg.device_id}: token valid; the "
                                     "key store is made at first start")
    if held is None or published not in (None, held):
        return Check("matrix", False, f"the key store {store} does not hold the keys the "
                                      f"homeserver has for device {cfg.device_id} (the store "
                                      "was deleted, moved or belongs to another device)",
                     "put the right store back at matrix.store_path, or run `ganglion login` "
                     "for a new device; never start with this one: encryption would break")
    if published is None:
        return Check("matrix", True, f"{cfg.user_id} device {cfg.device_id}: token valid; the "
                                     "key store's keys are published at the next start")
    return Check("matrix", True, f"{cfg.user_id} on {cfg.homeserver}: token valid, device "
                                 f"{cfg.device_id}, key store matches")


async def _store_identity(loaded: LoadedConfig) -> str | None:
    """The ed25519 identity key of the device's account in the key store, or None when the
    store holds no account for it (opened only when its file exists: nothing is made)."""
    # Here, not at the top: nio takes a second to import, paid only when Matrix is on.
    from ganglion.interfaces.matrix.session import make_client  # noqa: PLC0415

    cfg = loaded.config.matrix
    store = loaded.path(cfg.store_path)
    if not (store / f"{cfg.user_id}_{cfg.device_id}.db").is_file():
        return None
    try:
        client = make_client(cfg, store)
    except StartupError:
        return None
    try:
        key: str | None = client.olm.account.identity_keys["ed25519"] if client.olm else None
        return key
    finally:
        await client.close()


async def _clock(loaded: LoadedConfig) -> Check:
    zone_name = loaded.config.scheduler.timezone or "the machine's zone"
    try:
        zone = local_zone(loaded.config.scheduler.timezone)
    except (LookupError, ValueError) as err:
        return Check("clock", False, f"time zone {zone_name}: {err}",
                     "set scheduler.timezone to a zone such as Europe/Berlin")
    now = time.strftime("%Y-%m-%d %H:%M")
    skew = await _skew([e.base_url for e in loaded.config.llm.endpoints]
                       + ([loaded.config.matrix.homeserver] if loaded.config.matrix.enabled
                          else []))
    detail = f"{now} local, zone {zone} ({zone_name})"
    if skew is None:
        return Check("clock", True, detail + "; no server told its time to compare with")
    if abs(skew) > CLOCK_SKEW_SECONDS:
        return Check("clock", False, f"{detail}; {abs(skew):.0f} s "
                                     f"{'ahead of' if skew > 0 else 'behind'} the servers",
                     "synchronise the clock (timedatectl set-ntp true); reminders fire "
                     "by it")
    return Check("clock", True, f"{detail}; within {abs(skew):.0f} s of the servers")


async def _skew(urls: list[str]) -> float | None:
    """Our clock minus the first server's (its HTTP Date header), in seconds."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for url in urls:
            try:
                async with session.get(url) as resp:
                    date = resp.headers.get("Date")
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
            if date:
                try:
                    return time.time() - parsedate_to_datetime(date).timestamp()
                except (TypeError, ValueError):
                    continue
    return None


def _masked(check: Check, secrets: list[str]) -> Check:
    def mask(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return mask_secrets(text)
    return Check(check.name, check.ok, mask(check.detail), mask(check.fix))


def report(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.detail}"
             + ("" if c.ok or not c.fix else f"\n      {'':<{width}}  -> {c.fix}")
             for c in checks]
    bad = sum(not c.ok for c in checks)
    lines.append(f"{len(checks)} checks, " + (f"{bad} problem{'s' if bad > 1 else ''}" if bad
                                              else "all well"))
    return "\n".join(lines)


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}


def config_failure(error: str) -> list[Check]:
    return [Check("config", False, error.strip(), "fix the config (see config.yaml.example)")]

