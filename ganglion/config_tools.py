"""The ``tools`` section of the config: the policy, the file, shell and web tools' limits, and
the MCP calls' (the servers themselves are in ``config_mcp.py``)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from ganglion.config_base import Section as _Section
from ganglion.tool_names import TOOL_NAMES, mcp_server_of


def _yaml_bool_mode(value: Any) -> Any:
    # YAML reads an unquoted `shell: on` / `write_file: off` as true / false: take the
    # booleans as the modes they were written as (only here: strict typing stays elsewhere).
    if value is True:
        return "on"
    if value is False:
        return "off"
    return value


ToolMode = Annotated[Literal["on", "ask", "off"], BeforeValidator(_yaml_bool_mode)]


def _tool_name(value: str) -> str:
    # Checked here, not at start: a misspelt name would leave that tool in its default mode
    # (on), and check-config must refuse the file the daemon would refuse. An MCP name
    # (<server>__<tool>, <server>__*) is checked against mcp.servers by Config.
    if value not in TOOL_NAMES and mcp_server_of(value) is None:
        raise PydanticCustomError(
            "tool_name", "no such tool; the tools are {tools}, and an MCP server's as "
            "<server>__<tool> or <server>__*", {"tools": ", ".join(sorted(TOOL_NAMES))})
    return value


ToolName = Annotated[str, AfterValidator(_tool_name)]


_HOST_NAME = re.compile(r"\A[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
                        r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?\Z")


def _private_entry(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        if not _HOST_NAME.match(value):
            raise PydanticCustomError(
                "allow_private", "not an address, a range or a host name: write e.g. "
                "192.168.1.20, 192.168.1.0/24, fd00::/8 or nas.lan") from None
    return value


class WebToolsConfig(_Section):
    """web_fetch and web_search. See README, "The web tools"."""

    allow_private: list[Annotated[str, AfterValidator(_private_entry)]] = []
    """Addresses, ranges (CIDR) and host names web_fetch may reach though they are not
    public (loopback, private, link-local, CGNAT ...); nothing else of those is fetched."""
    search_url: Annotated[str, Field(pattern=r"^(https?://\S+)?$")] = ""
    """Your SearXNG's address, e.g. http://searx.lan:8080; empty = no web_search."""
    max_bytes: Annotated[int, Field(ge=1024, le=100_000_000)] = 2_000_000
    """A body is read up to this many bytes (the rest is not downloaded)."""
    timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 20.0
    """One fetch or search in all: redirects, headers and body."""
    max_redirects: Annotated[int, Field(ge=0, le=20)] = 5
    page_chars: Annotated[int, Field(ge=1000, le=1_000_000)] = 20_000
    """Characters of a page's text per web_fetch answer; the next call reads on."""
    max_results: Annotated[int, Field(ge=1, le=50)] = 8
    """The most results one web_search returns."""
    user_agent: Annotated[str, Field(pattern=r"^[ -~]{1,300}$")] = (
        "Mozilla/5.0 (compatible; Ganglion/0.1; personal assistant)")


class ToolsConfig(_Section):
    """What the assistant may do. See README, "Tools and memory"."""

    policy: dict[ToolName, ToolMode] = {}
    """Per tool: on (used freely), ask (a person approves each call), off (never offered).
    Tools left out are on, except shell, web_fetch and web_search, which are ask."""
    approval_timeout_seconds: Annotated[float, Field(gt=0, le=86400)] = 300.0
    """An ``ask`` call nobody approves within this long is denied."""
    workspace: str = ""
    """The folder the file tools may use; empty = the data folder."""
    private_files: list[Annotated[str, Field(min_length=1)]] = [
        "web_token", "*.db", "*.db-*", "matrix-store", ".*"]
    """Names (or workspace-relative paths; * ? [] patterns) the file tools never show or
    touch: the daemon's own tokens, databases and keys."""
    max_read_bytes: Annotated[int, Field(ge=1024, le=100_000_000)] = 100_000
    max_write_bytes: Annotated[int, Field(ge=1024, le=100_000_000)] = 1_000_000
    memory_max_bytes: Annotated[int, Field(ge=1024, le=10_000_000)] = 64_000
    """Per memory file: MEMORIES.txt and HEARTBEATS.txt are in every prompt."""
    shell_timeout_seconds: Annotated[float, Field(gt=0, le=86400)] = 60.0
    shell_max_output_bytes: Annotated[int, Field(ge=256, le=10_000_000)] = 16_000
    shell_env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = []
    """Environment variables passed to the shell beyond PATH, HOME, LANG, TZ and the like."""
    web: WebToolsConfig = WebToolsConfig()
    mcp_timeout_seconds: Annotated[float, Field(gt=0, le=86400)] = 60.0
    """One call of an MCP server's tool; then it fails (the server keeps running)."""
    mcp_max_output_bytes: Annotated[int, Field(ge=256, le=10_000_000)] = 16_000
    """An MCP tool's result beyond this is cut (its middle left out)."""
