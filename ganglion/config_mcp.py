"""The ``mcp`` section of the config: the MCP tool servers the assistant may use.

Place in the flow: ``ganglion.config`` includes it (and checks ``tools.policy``'s
``<server>__...`` names against it); ``ganglion.tools.mcp`` connects to what it lists.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from ganglion.tool_names import is_server_name

EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


from ganglion.config_base import Section as _Section  # noqa: E402


class McpServerConfig(_Section):
    """One server: a command run as a child (stdio) or a URL (streamable HTTP), not both."""

    command: Annotated[str, Field(min_length=1)] | None = None
    args: list[str] = []
    env: list[EnvName] | dict[EnvName, str] = []
    """A list: these variables of the daemon's environment; a mapping: these values (secrets,
    usually ``${VAR}`` references). Either way on top of PATH, HOME, LANG and the like."""
    cwd: str = ""
    """The child's folder; empty = the data folder."""
    url: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None
    headers: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+$")], str] = {}
    """Sent with every request (``Authorization: Bearer ${TOKEN}``): secrets."""
    enabled: bool = True

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if self.command is not None and self.url is not None:
            raise PydanticCustomError(
                "mcp_transport", "give either command (a stdio server the daemon runs) or url "
                "(a streamable HTTP server), not both")
        if self.command is None and self.url is None:
            raise PydanticCustomError(
                "mcp_transport", "give command (with args, env) for a stdio server or url "
                "(with headers) for a streamable HTTP one")
        stdio_keys = {"args", "env", "cwd"} & self.model_fields_set
        if self.url is not None and stdio_keys:
            raise PydanticCustomError(
                "mcp_transport", "{keys} belong to a stdio server (command); an HTTP server "
                "(url) takes headers", {"keys": ", ".join(sorted(stdio_keys))})
        if self.command is not None and self.headers:
            raise PydanticCustomError(
                "mcp_transport", "headers belong to an HTTP server (url); a stdio server "
                "(command) takes env")
        return self

    @property
    def secrets(self) -> list[str]:
        values = list(self.headers.values())
        if isinstance(self.env, dict):
            values += self.env.values()
        return values


def _server_name(name: str) -> str:
    if not is_server_name(name):
        raise PydanticCustomError(
            "mcp_server_name", "a server name is lowercase letters, digits, - and _ (at most "
            "32, no __, starting with a letter or digit): its tools are offered as "
            "<server>__<tool>")
    return name


class McpConfig(_Section):
    """MCP tool servers. See README, "MCP tool servers"."""

    servers: dict[Annotated[str, AfterValidator(_server_name)], McpServerConfig] = {}
