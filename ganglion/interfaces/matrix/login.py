"""``ganglion login``: log the bot in as a NEW Matrix device and write it into the config.

A fresh device with a fresh, empty store is the only safe start for an encrypted bot (a used
device on an empty store breaks encryption for good; see shared/notes/matrix-e2ee.md). Each
login makes a device, so none is made while the config's session still works (asked with
whoami) unless ``--new-device`` says so. The homeserver address is kept as the user gave it;
what its ``.well-known`` names instead is shown, and used with ``--use-well-known``. The
config file is edited line by line so that comments and layout stay as they were; a value
kept in an environment variable (``${VAR}``) is printed with where to put it, never written.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ganglion.config import expand_value, find_config_path
from ganglion.errors import ConfigError
from ganglion.storage.atomic import atomic_write

DEFAULT_STORE = "data/matrix-store"
_SECTION = re.compile(r"^matrix:[ \t]*(#.*)?$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--homeserver", help="e.g. https://matrix.example.org (asked if missing)")
    parser.add_argument("--user", help='the bot account: "@bot:example.org" or "bot"')
    parser.add_argument("--password", help="the account's password (asked if missing; "
                        "prefer --password-file: command lines are visible to other users)")
    parser.add_argument("--password-file", metavar="PATH",
                        help="read the password from the first line of this file")
    parser.add_argument("--device-name", default="Ganglion",
                        help="the name other clients show for the new device")
    parser.add_argument("--new-device", action="store_true",
                        help="log in as a new device even when the config's session works")
    parser.add_argument("--use-well-known", action="store_true",
                        help="use the client API address the homeserver's .well-known names "
                        "instead of the one given")


@dataclass(frozen=True)
class Session:
    homeserver: str
    user_id: str
    device_id: str
    access_token: str


class LoginFailed(Exception):
    """The homeserver refused or could not be reached; the message says what to check."""


def run_login(args: argparse.Namespace) -> int:
    logging.getLogger("nio").setLevel(logging.CRITICAL)  # its schema warnings are noise here
    path = find_config_path(args.config) or Path("config.yaml")
    existing = _matrix_section(path)
    current = None if args.new_device else _configured_session(existing)
    if current is not None:
        done = asyncio.run(_check_session(current, path))
        if done is not None:
            return done
    homeserver = args.homeserver or _ask(
        "Homeserver", _plain(existing.get("homeserver")) or "https://matrix.example.org")
    user = args.user or _ask("Bot account", _plain(existing.get("user_id")) or "@bot:example.org")
    if args.password_file:
        lines = Path(args.password_file).read_text(encoding="utf-8").splitlines()
        password = lines[0] if lines else ""
    else:
        password = args.password or _ask_password(f"Password for {user}: ")
    if not (homeserver and user and password):
        print("ganglion login: homeserver, user and password are all needed", file=sys.stderr)
        return 2
    if not re.match(r"^https?://", homeserver):
        homeserver = "https://" + homeserver
    try:
        session = asyncio.run(_login(homeserver.rstrip("/"), user, password, args.device_name,
                                     use_well_known=args.use_well_known))
    except LoginFailed as err:
        print(f"ganglion login: {err}", file=sys.stderr)
        return 1
    print(f"Logged in as {session.user_id} on {session.homeserver}: new device "
          f"{session.device_id} ({args.device_name!r}).")
    _write_config(path, session)
    print(_prepare_store(path, existing, session))
    old = _plain(existing.get("device_id"))
    if old and old != session.device_id:
        print(f"The previous device {old} still exists: remove it in your client "
              "(Element: Settings, Sessions) once nothing uses it.")
    section = _matrix_section(path)
    if section.get("enabled") is not True or not section.get("allowed_users"):
        print('Next: set matrix.enabled: true and matrix.allowed_users: ["@you:example.org"] '
              f"in {path}, then start ganglion.")
    return 0


def _configured_session(existing: dict[str, Any]) -> Session | None:
    """The session the config holds (``${VAR}`` values read from the environment), if whole."""
    values = []
    for key in ("homeserver", "user_id", "device_id", "access_token"):
        value = existing.get(key)
        try:
            value = expand_value(value, f"matrix.{key}") if isinstance(value, str) else ""
        except ConfigError:
            value = ""
        if not value:
            return None
        values.append(value)
    return Session(*values)


async def _check_session(current: Session, path: Path) -> int | None:
    """Whether the config's session still works: an exit code to stop with (it works, or
    that could not be found out), or None to log in (the homeserver rejected its token)."""
    from nio import AsyncClient, AsyncClientConfig, WhoamiError  # noqa: PLC0415  (see _login)

    client = AsyncClient(current.homeserver, current.user_id, config=AsyncClientConfig(
        encryption_enabled=False, max_timeouts=0, request_timeout=30))
    client.restore_login(current.user_id, current.device_id, current.access_token)
    try:
        resp = await client.whoami()
    except Exception as err:
        resp = WhoamiError(f"{type(err).__name__}: {err}")
    finally:
        await client.close()
    if isinstance(resp, WhoamiError):
        if resp.status_code in ("M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"):
            print(f"The access token in {path} no longer works ({resp.status_code}): "
                  "logging in as a new device.")
            return None
        print(f"ganglion login: could not check the session in {path} with "
              f"{current.homeserver} ({resp}); nothing was changed. Run it again once the "
              "homeserver answers, or with --new-device to log in as a new device anyway.",
              file=sys.stderr)
        return 1
    if resp.device_id and resp.device_id != current.device_id:
        print(f"The access token in {path} works, but it belongs to device {resp.device_id}, "
              f"not matrix.device_id {current.device_id}: set matrix.device_id: "
              f"{resp.device_id} if the key store holds that device's keys, or run "
              "`ganglion login --new-device`.")
        return 1
    print(f"The config {path} already holds a working session: {resp.user_id} on "
          f"{current.homeserver}, device {current.device_id}. Nothing to do. Logging in again "
          "would make a new device with an empty key store; to do that anyway (the store was "
          "lost, say), run `ganglion login --new-device`.")
    return 0


async def _login(homeserver: str, user: str, password: str, device_name: str, *,
                 use_well_known: bool = False) -> Session:
    # nio takes a second to import: only here, so that `ganglion --help` stays quick.
    from nio import (  # noqa: PLC0415
        AsyncClient,
        AsyncClientConfig,
        DiscoveryInfoResponse,
        LoginResponse,
    )

    client = AsyncClient(homeserver, user, config=AsyncClientConfig(
        encryption_enabled=False, max_timeouts=0, request_timeout=30))
    try:
        try:
            # example.org may delegate to matrix.example.org through .well-known: said, and
            # followed only when asked (the address given is the one the user knows works).
            info = await client.discovery_info()
            named = (str(info.homeserver_url).rstrip("/")
                     if isinstance(info, DiscoveryInfoResponse) and info.homeserver_url else "")
            if named and named != homeserver:
                if use_well_known:
                    print(f"Using {named}, the client API address {homeserver}/.well-known/"
                          "matrix/client names.")
                    client.homeserver = named
                else:
                    print(f"Note: {homeserver}/.well-known/matrix/client names {named} as the "
                          f"client API address; keeping {homeserver} as given "
                          "(--use-well-known uses the other).")
            resp = await client.login(password=password, device_name=device_name)
        except Exception as err:
            raise LoginFailed(f"cannot reach {homeserver} ({type(err).__name__}: {err}); "
                              "check the homeserver address") from None
        if not isinstance(resp, LoginResponse):
            hint = ("wrong user or password" if resp.status_code == "M_FORBIDDEN"
                    else "check the homeserver address and the account")
            raise LoginFailed(f"the homeserver refused the login ({resp}): {hint}")
        return Session(client.homeserver, resp.user_id, resp.device_id, resp.access_token)
    finally:
        await client.close()  # never log out: that would delete the new device


def _write_config(path: Path, session: Session) -> None:
    values = {"homeserver": session.homeserver, "user_id": session.user_id,
              "access_token": session.access_token, "device_id": session.device_id}
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        new_text, from_env = update_config_text(text, values)
        atomic_write(path, new_text, mode=0o600)  # it holds the access token now
    except (ValueError, OSError) as err:  # the device exists now: say what to write
        why = err.strerror if isinstance(err, OSError) else err
        print(f"Could not edit {path} ({why}). Put these lines in its matrix section:")
        for key, value in values.items():
            print(f"  {key}: {json.dumps(value)}")
        return
    written = [k for k in values if k not in from_env]
    print(f"Wrote matrix.{', matrix.'.join(written)} to {path} (mode 0600).")
    for key, var in from_env.items():
        print(f"matrix.{key} comes from the environment variable {var}; set it to:\n"
              f"  {var}={values[key]}")


def update_config_text(text: str, values: dict[str, str]) -> tuple[str, dict[str, str]]:
    """``text`` with ``values`` set in its ``matrix:`` section, layout and comments kept.

    Returns the new text and, for keys whose current value is a ``${VAR}`` reference, the
    variable to set instead (those keys are left as they are). Raises ValueError when the
    file cannot be edited safely (then the caller prints the values).
    """
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    start = next((i for i, line in enumerate(lines) if _SECTION.match(line.rstrip("\r\n"))),
                 None)
    from_env: dict[str, str] = {}
    if start is None:
        if any(line.startswith("matrix:") for line in lines):
            raise ValueError("its matrix section is written in flow style")
        block = ["\n" if lines else "", "matrix:\n"]
        block += [f"  {key}: {json.dumps(value)}\n" for key, value in values.items()]
        new_text = "".join(lines + block)
    else:
        end = start + 1
        while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t#"):
            end += 1
        keyed = [i for i in range(start + 1, end) if re.match(r"^[ \t]+[A-Za-z_]+:", lines[i])]
        indent = re.match(r"^[ \t]+", lines[keyed[0]]).group(0) if keyed else "  "  # type: ignore[union-attr]
        last = max(keyed) if keyed else start
        for key, value in values.items():
            pattern = re.compile(rf"^{re.escape(indent)}{key}:[ \t]*(.*?)([ \t]+#.*)?$")
            found = None
            for i in range(start + 1, end):
                m = pattern.match(lines[i].rstrip("\r\n"))
                if m:
                    found = (i, m)
                    break
            if found is None:
                last += 1
                end += 1
                lines.insert(last, f"{indent}{key}: {json.dumps(value)}\n")
                continue
            i, m = found
            var = _ENV_REF.search(m.group(1))
            if var:
                from_env[key] = var.group(1)
                continue
            lines[i] = f"{indent}{key}: {json.dumps(value)}{m.group(2) or ''}\n"
        new_text = "".join(lines)
    _check_edit(text, new_text, {k: v for k, v in values.items() if k not in from_env})
    return new_text, from_env


def _check_edit(old_text: str, new_text: str, written: dict[str, str]) -> None:
    try:
        old = yaml.safe_load(old_text) or {}
        new = yaml.safe_load(new_text) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"not valid YAML: {err}") from None
    if not isinstance(old, dict) or not isinstance(new, dict):
        raise ValueError("the file is not a mapping of sections")
    section = new.get("matrix")
    if not isinstance(section, dict) or any(section.get(k) != v for k, v in written.items()):
        raise ValueError("the edited matrix section does not read back as written")
    if {k: v for k, v in old.items() if k != "matrix"} != \
            {k: v for k, v in new.items() if k != "matrix"}:
        raise ValueError("the edit would change other sections")


def _matrix_section(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    section = data.get("matrix") if isinstance(data, dict) else None
    return section if isinstance(section, dict) else {}


def _plain(value: Any) -> str:
    """A configured string that is not a ${VAR} reference, else ''."""
    return value if isinstance(value, str) and "${" not in value else ""


def _prepare_store(config_path: Path, existing: dict[str, Any], session: Session) -> str:
    """Make the store folder; what to say about it (a leftover store is not an empty one)."""
    store = Path(_plain(existing.get("store_path")) or DEFAULT_STORE).expanduser()
    if not store.is_absolute():
        store = config_path.resolve().parent / store
    store.mkdir(parents=True, exist_ok=True, mode=0o700)
    # nio keeps each device's keys in a database of its own there: "<user>_<device>.db".
    others = sorted(p.name.removesuffix(".db").rpartition("_")[2] for p in store.glob("*.db"))
    if not others:
        return (f"Key store for this device: {store} (empty: the new device makes its keys "
                "there at its first start; keep the folder with the device).")
    return (f"Key store for this device: {store}. It is not empty: it holds the keys of "
            f"earlier device(s) {', '.join(others)}, left as they are; device "
            f"{session.device_id} keeps its own keys there, in a database of its own. Delete "
            "an old device's files once that device is removed.")


def _ask(what: str, default: str) -> str:
    """Ask on the terminal; Enter (or no terminal at all) keeps ``default``."""
    try:
        answer = input(f"{what} [{default}]: ").strip()
    except EOFError:
        answer = ""
    return answer or default


def _ask_password(prompt: str) -> str:
    """Without echo on a terminal; the first line of standard input otherwise."""
    try:
        if sys.stdin.isatty():
            return getpass.getpass(prompt)
        return sys.stdin.readline().rstrip("\r\n")
    except EOFError:
        return ""
