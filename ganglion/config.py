"""The one typed configuration: YAML + ${ENV} expansion, validated at start with key paths."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from ganglion.config_base import Section as _Section
from ganglion.config_database import DatabaseConfig, shown_database, url_password
from ganglion.config_matrix import MatrixConfig
from ganglion.config_mcp import McpConfig
from ganglion.config_media import MediaConfig
from ganglion.config_source import expand_env, expand_tree, loc_text, read_yaml
from ganglion.config_stt import SttConfig
from ganglion.config_tools import ToolsConfig
from ganglion.config_web import WebConfig
from ganglion.errors import ConfigError
from ganglion.tool_names import TOOL_NAMES, mcp_server_of

_USERINFO = re.compile(r"^(https?://)([^/\s]*)@")


def url_credentials(url: str) -> str:
    """The ``user:password`` of ``https://user:password@host/v1``, or ""."""
    m = _USERINFO.match(url)
    return m.group(2) if m else ""


def url_secrets(url: str) -> list[str]:
    """What of ``url`` must never be shown: its ``user:password``, and the password alone."""
    credentials = url_credentials(url)
    return [credentials, *credentials.split(":", 1)[1:]] if credentials else []


def shown_url(url: str) -> str:
    """``url`` fit for logs and chats: credentials in it replaced by ``***``."""
    return _USERINFO.sub(r"\1***@", url)


class EndpointConfig(_Section):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    base_url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    api_key: str = "none"
    max_concurrency: Annotated[int, Field(ge=1, le=1024)] = 4
    timeout_seconds: Annotated[float, Field(gt=0, le=86400)] = 300.0

    @property
    def shown_url(self) -> str:
        return shown_url(self.base_url)


class ModelSettings(_Section):
    """Settings for one model id (as the endpoint lists it, or an alias), over llm's own."""

    context_tokens: Annotated[int, Field(ge=1024)] | None = None
    max_tokens: Annotated[int, Field(ge=16)] | None = None
    vision: bool | None = None
    """The model accepts images (over ``llm.vision_models``)."""


class LLMConfig(_Section):
    endpoints: Annotated[list[EndpointConfig], Field(min_length=1)] = [
        EndpointConfig(name="local", base_url="http://127.0.0.1:11434/v1", api_key="none")
    ]
    model: Annotated[str, Field(min_length=1)] = "llama3.1"
    compaction_model: str | None = None
    context_tokens: Annotated[int, Field(ge=1024)] = 32768
    max_tool_steps: Annotated[int, Field(ge=1, le=100)] = 12
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    """Attempts per endpoint after the first, on connection errors, 429 and 5xx."""
    backoff_seconds: Annotated[float, Field(ge=0, le=60)] = 0.5
    """The first retry's pause; each next one twice as long; waits drawn from its upper half."""
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    health_cooling_seconds: Annotated[float, Field(ge=0, le=86400)] = 60.0
    """A failing endpoint is skipped this long while another endpoint offers the model."""
    max_tokens: Annotated[int, Field(ge=16)] = 4096
    """The most tokens one answer may take (sent as max_tokens with every request)."""
    models: dict[str, ModelSettings] = {}
    """Per-model settings over the ones above, by model id (or alias)."""
    vision_models: list[str] = []
    """Model ids that accept images (OpenAI ``image_url`` content parts)."""

    def sees_images(self, model: str) -> bool:
        own = self.models.get(model)
        if own is not None and own.vision is not None:
            return own.vision
        return model in self.vision_models

    def context_tokens_for(self, model: str) -> int:
        own = self.models.get(model)
        return own.context_tokens if own and own.context_tokens else self.context_tokens

    def max_tokens_for(self, model: str) -> int:
        own = self.models.get(model)
        return own.max_tokens if own and own.max_tokens else self.max_tokens

    @field_validator("endpoints")
    @classmethod
    def _unique_names(cls, endpoints: list[EndpointConfig]) -> list[EndpointConfig]:
        names = [e.name for e in endpoints]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"endpoint names must be unique, repeated: {', '.join(dupes)}")
        return endpoints


class PathsConfig(_Section):
    data_dir: str = "data"
    log_dir: str = "logs"


class LoggingConfig(_Section):
    level: Annotated[str, Field(pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")] = "INFO"
    debug_llm: bool = False
    """Log raw LLM requests and responses (at DEBUG, secrets still masked)."""
    format: Literal["text", "json"] = "text"
    """``json``: one JSON object a line (time, level, logger, message, thread_id,
    exception), on the console and in the log file, for log shippers."""


class BusConfig(_Section):
    max_turns_in_flight: Annotated[int, Field(ge=1, le=10_000)] = 12
    """Turns running at once across threads; the next wait in arrival order. A few times the
    endpoints' max_concurrency: enough to overlap tools and storage with model calls, few
    enough that a burst's first replies are not held back by the work of the last ones."""


class StorageConfig(_Section):
    """conversation.db's retention. See README, "Data"."""

    keep_days: Annotated[int, Field(ge=1, le=36_500)] | None = 30
    """Answered messages' inbox rows (their ids kept, so a resend is still known), delivered
    outbox rows and tool steps left by answered turns, older than this, are pruned (at start,
    then daily); null keeps them. The history and the usage /stats counts are never pruned."""


def _zone_name(value: str | None) -> str | None:
    if not value:
        return None
    try:
        ZoneInfo(value)
    except (ValueError, KeyError, OSError):
        raise PydanticCustomError(
            "timezone", "unknown time zone: use an IANA name such as Europe/Berlin or "
            "Asia/Kathmandu, or null for the machine's zone") from None
    return value


class SchedulerConfig(_Section):
    """Reminders. See README, "Reminders and heartbeats"."""

    timezone: Annotated[str | None, AfterValidator(_zone_name)] = None
    """IANA zone of reminder times and of the time the model is told; null = the machine's."""
    min_repeat_minutes: Annotated[float, Field(gt=0, le=10080)] = 1.0
    """The shortest interval the model may give a recurring reminder."""


class HeartbeatConfig(_Section):
    """Periodic reviews of HEARTBEATS.txt. See README, "Reminders and heartbeats"."""

    enabled: bool = True
    review_interval_minutes: Annotated[float, Field(gt=0, le=10080)] = 30.0
    """Fractions are fine: 0.5 reviews every 30 s."""
    active_hours: Annotated[float, Field(ge=0, le=8760)] = 24.0
    """A conversation gets its own review while a person wrote in it within this many
    hours; 0 = only the global review."""
    context_messages: Annotated[int, Field(ge=0, le=100)] = 6
    """How many of the conversation's last messages a review sees (not the full history)."""
    daily_token_budget: Annotated[int, Field(ge=0)] | None = 100_000
    """Tokens all automatic reviews may use per local day; null = no limit."""
    sentinel: Annotated[str, Field(min_length=4, max_length=64, pattern=r"^\S+$")] = (
        "HEARTBEAT_OK")
    """What a review answers when it has nothing to say; that answer is sent to nobody."""


class LimitsConfig(_Section):
    """Per-user limits on turns that reach the model (plain messages and /ask)."""

    messages_per_minute: Annotated[int, Field(ge=1, le=100_000)] | None = 10
    """Per user, over a sliding 60-second window; null = no limit."""
    daily_tokens: Annotated[int, Field(ge=1)] | None = None
    """Per user and local calendar day (prompt + completion); null = no limit."""
    autonomous_daily_tokens: Annotated[int, Field(ge=1)] | None = None
    """Reminders and heartbeats share this daily budget instead of a user's; null = none."""
    exempt_owner: bool = True
    """The owner (and the web UI, which acts as owner) is not limited."""


class Config(_Section):
    llm: LLMConfig = LLMConfig()
    web: WebConfig = WebConfig()
    matrix: MatrixConfig = MatrixConfig()
    paths: PathsConfig = PathsConfig()
    logging: LoggingConfig = LoggingConfig()
    bus: BusConfig = BusConfig()
    storage: StorageConfig = StorageConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    limits: LimitsConfig = LimitsConfig()
    mcp: McpConfig = McpConfig()
    tools: ToolsConfig = ToolsConfig()
    media: MediaConfig = MediaConfig()
    stt: SttConfig = SttConfig()
    database: DatabaseConfig = DatabaseConfig()

    @field_validator("tools")
    @classmethod
    def _policy_names_configured_servers(cls, tools: ToolsConfig,
                                         info: ValidationInfo) -> ToolsConfig:
        # After mcp (fields validate in order): a policy for a server that is not configured
        # is a typo that would leave the intended server's tools at their default.
        mcp = info.data.get("mcp")
        servers = mcp.servers if isinstance(mcp, McpConfig) else {}
        unknown = sorted(n for n in tools.policy
                         if (server := mcp_server_of(n)) is not None and n not in TOOL_NAMES
                         and server not in servers)
        if unknown:
            raise PydanticCustomError(
                "mcp_policy", "policy.{names}: no such MCP server in mcp.servers ({servers})",
                {"names": ", policy.".join(unknown),
                 "servers": ", ".join(sorted(servers)) or "none configured"})
        return tools


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config plus where it came from (paths resolve against ``base_dir``)."""

    config: Config
    source: Path | None
    base_dir: Path

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def data_dir(self) -> Path:
        return self.path(self.config.paths.data_dir)

    @property
    def log_dir(self) -> Path:
        return self.path(self.config.paths.log_dir)


def _shown_input(value: Any) -> str | None:
    """A bad value as its error shows it (stderr, which a journal keeps): credentials in a
    URL as ``***``; None for a mapping or list, or a URL too odd to find its credentials in."""
    if isinstance(value, dict | list):
        return None
    if isinstance(value, str) and "//" in value and "@" in value:
        if url_password(value):
            return repr(shown_database(value))
        if not url_credentials(value):  # a URL too odd to find the credentials in
            return None
        value = shown_url(value)
    return repr(value)


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        # A bad mapping key (tools.policy.<name>) is reported at the key itself.
        is_key = e["loc"][-1:] == ("[key]",)
        loc = e["loc"][:-1] if is_key else e["loc"]
        path = loc_text(loc)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see config.yaml.example)"
        elif ("input" in e and e["type"] not in ("missing",) and not is_key
              and not any(path.endswith(key) for key in SECRET_KEYS)):
            shown = _shown_input(e["input"])
            if shown is not None and len(shown) <= 60:
                msg = f"{msg} (got {shown})"
        lines.append(f"config error: {path}: {msg}")
    return "\n".join(lines)


def expand_value(value: str, where: str, env: dict[str, str] | None = None) -> str:
    """One configured text with its ``${VAR}`` references read from ``env`` (this process's
    environment by default); ConfigError when one is unset or malformed."""
    return expand_env(value, dict(os.environ) if env is None else env, where)


def parse_config(raw: Any, env: dict[str, str] | None = None) -> Config:
    """Validate an already-parsed YAML document. Raises ConfigError naming the bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("config error: <top>: the file must be a mapping of sections")
    env = dict(os.environ) if env is None else env
    database = raw.get("database")
    if env.get("DATABASE_URL") and (database is None or (
            isinstance(database, dict) and "url" not in database)):
        # The environment's URL when the config names none (the convention of hosts that
        # provision a database); a database.url in the file wins.
        raw = {**raw, "database": {**(database or {}), "url": env["DATABASE_URL"]}}
    try:
        expanded = expand_tree(raw, env, (), Config)
        return Config.model_validate(expanded)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None
    except RecursionError:  # a YAML alias inside itself (a: &x [*x]), or absurd nesting
        raise ConfigError("config error: <top>: nested too deeply, or a YAML alias refers "
                          "to itself; write the values out") from None


def find_config_path(cli_path: str | None, env: dict[str, str] | None = None) -> Path | None:
    """``--config PATH``, else ``$GANGLION_CONFIG``, else ``./config.yaml`` if present."""
    env = dict(os.environ) if env is None else env
    if cli_path:
        return Path(cli_path)
    if env.get("GANGLION_CONFIG"):
        return Path(env["GANGLION_CONFIG"])
    default = Path("config.yaml")
    return default if default.is_file() else None


def load_config(cli_path: str | None = None, env: dict[str, str] | None = None) -> LoadedConfig:
    """Find, read, expand and validate the config; built-in defaults when there is none."""
    path = find_config_path(cli_path, env)
    if path is None:
        return LoadedConfig(parse_config({}, env), None, Path.cwd())
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"config error: cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config error: {path} is not UTF-8 text (byte {err.start}); "
                          "save it as UTF-8") from None
    config = parse_config(read_yaml(text, path), env)
    return LoadedConfig(config, path.resolve(), path.resolve().parent)


def secret_values(config: Config) -> list[str]:
    """Every secret in the config, for log masking (short or placeholder values excluded)."""
    values = [e.api_key for e in config.llm.endpoints] + [config.web.token,
                                                           config.matrix.access_token]
    for e in config.llm.endpoints:  # https://user:password@host: all of it, and the password
        values += url_secrets(e.base_url)
    values += url_secrets(config.tools.web.search_url)
    values += [config.stt.api_key, *url_secrets(config.stt.base_url or "")]
    values.append(url_password(config.database.url))
    for server in config.mcp.servers.values():  # env values and headers given literally
        values += server.secrets
        values += url_secrets(server.url or "")
    return [v for v in values if v and v.lower() not in ("none", "null", "") and len(v) >= 4]


SECRET_KEYS = ("api_key", "token", "access_token", "password")
SECRET_MAPPINGS = ("headers", "env")
"""Mappings whose every value is a secret (an MCP server's headers, its env given as values)."""


def masked_dump(config: Config) -> dict[str, Any]:
    """The effective config as plain data with secrets replaced by ``***``."""

    def mask(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: ("***" if k in SECRET_KEYS and v not in (None, "", "none")
                    else dict.fromkeys(v, "***") if k in SECRET_MAPPINGS and isinstance(v, dict)
                    else mask(v))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [mask(v) for v in node]
        if isinstance(node, str) and url_credentials(node):  # an endpoint's or MCP server's
            return shown_url(node)
        if isinstance(node, str) and url_password(node):  # database.url
            return shown_database(node)
        return node

    result: dict[str, Any] = mask(config.model_dump(mode="json"))
    return result
