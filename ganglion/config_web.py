"""The ``web`` section of the config: where the chat page listens, its token, and who may reach
it (a loopback bind by default; a token of some length before anything else)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from ganglion.config_base import Section as _Section


def _origin(value: str) -> str:
    # A browser's Origin is exactly scheme://host[:port]; anything else would never match.
    if not re.fullmatch(r"https?://[^/\s?#]+/?", value):
        raise PydanticCustomError(
            "web_origin", "not an origin: write scheme and host (and port), e.g. "
            "https://chat.example.org or http://127.0.0.1:3000, with no path")
    return value


def split_bind(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6) as its parts; ValueError when it is not one."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(value)
    return host.removeprefix("[").removesuffix("]"), int(port)


def _metrics_bind(value: str) -> str:
    # No token on this listener: only this machine may reach it, as web.host's rules demand
    # a token beyond loopback.
    if not value:
        return value
    try:
        host, _ = split_bind(value)
    except ValueError:
        raise PydanticCustomError(
            "metrics_bind", 'not host:port: write e.g. "127.0.0.1:9464" ("" = /metrics only '
            "on the web port, with the token)") from None
    if not is_loopback_bind(host):
        raise PydanticCustomError(
            "metrics_bind_exposed", "{host} is reachable from other machines and this listener "
            "has no token: bind it to 127.0.0.1 or ::1 (a scraper elsewhere uses /metrics on "
            "the web port with the token)", {"host": repr(host)})
    return value


MIN_EXPOSED_TOKEN = 16
"""Characters a web token needs when the server is reachable from other machines."""


def is_loopback_bind(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    token: Annotated[str, Field(validate_default=True)] = ""
    """Empty: generate one at first start and keep it in data/web_token."""
    max_message_bytes: Annotated[int, Field(ge=16, le=10_000_000)] = 64_000
    allowed_origins: list[Annotated[str, AfterValidator(_origin)]] = []
    """Extra Origins allowed to open the WebSocket (the page's own origin always is)."""
    titles: Literal["model", "words"] = "model"
    """How conversations are titled in the page's list: a short title the compaction model
    gives after the first exchange, or the first words only (no extra model call)."""
    metrics_bind: Annotated[str, AfterValidator(_metrics_bind)] = ""
    """host:port of a loopback listener serving /metrics without the token; "" for none."""

    @field_validator("token")
    @classmethod
    def _token_for_an_exposed_bind(cls, token: str, info: ValidationInfo) -> str:
        # A generated token is fine on loopback; elsewhere the user must set one knowingly,
        # and one long enough that guessing it over the network is hopeless.
        host = info.data.get("host")
        if not info.data.get("enabled", True) or host is None or is_loopback_bind(host):
            return token
        exposed = {"host": repr(host)}
        if not token:
            raise PydanticCustomError(
                "web_token_missing", "web.host is {host}, which is reachable from other "
                "machines: set web.token (or GANGLION_WEB_TOKEN) before binding beyond "
                "127.0.0.1", exposed)
        if len(token) < MIN_EXPOSED_TOKEN:
            raise PydanticCustomError(
                "web_token_short", "too short for web.host {host}, which is reachable from "
                "other machines: use at least {n} random characters, e.g. the output of "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
                {**exposed, "n": MIN_EXPOSED_TOKEN})
        return token

    @property
    def is_loopback(self) -> bool:
        return is_loopback_bind(self.host)

    def local_url(self, port: int) -> str:
        """Where this machine reaches the server (a wildcard bind on 127.0.0.1)."""
        host = self.host
        if host in ("", "0.0.0.0", "::", "localhost"):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"
