"""The one typed configuration: YAML + ${ENV} expansion, validated at start with key paths."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ganglion.errors import ConfigError


class _Section(BaseModel):
    """Every section refuses unknown keys: a typo must never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EndpointConfig(_Section):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    base_url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    api_key: str = "none"
    max_concurrency: Annotated[int, Field(ge=1, le=1024)] = 4
    timeout_seconds: Annotated[float, Field(gt=0, le=86400)] = 300.0


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
    """The first retry waits this long; each next one twice as long."""
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None

    @field_validator("endpoints")
    @classmethod
    def _unique_names(cls, endpoints: list[EndpointConfig]) -> list[EndpointConfig]:
        names = [e.name for e in endpoints]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"endpoint names must be unique, repeated: {', '.join(dupes)}")
        return endpoints


class WebConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    token: str = ""
    """Empty: generate one at first start and keep it in data/web_token."""
    max_message_bytes: Annotated[int, Field(ge=16, le=10_000_000)] = 64_000
    allowed_origins: list[str] = []
    """Extra Origins allowed to open the WebSocket (the page's own origin always is)."""

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class MatrixConfig(_Section):
    enabled: bool = False


class PathsConfig(_Section):
    data_dir: str = "data"
    log_dir: str = "logs"


class LoggingConfig(_Section):
    level: Annotated[str, Field(pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")] = "INFO"
    debug_llm: bool = False
    """Log raw LLM requests and responses (at DEBUG, secrets still masked)."""


class BusConfig(_Section):
    max_turns_in_flight: Annotated[int, Field(ge=1, le=10_000)] = 64
    """Turns running at once across threads. LLM calls are capped per endpoint as well."""


class Config(_Section):
    llm: LLMConfig = LLMConfig()
    web: WebConfig = WebConfig()
    matrix: MatrixConfig = MatrixConfig()
    paths: PathsConfig = PathsConfig()
    logging: LoggingConfig = LoggingConfig()
    bus: BusConfig = BusConfig()

    @model_validator(mode="after")
    def _web_bind_needs_token(self) -> Config:
        # A generated token is fine on loopback; elsewhere the user must set one knowingly.
        if self.web.enabled and not self.web.is_loopback and not self.web.token:
            raise ValueError(
                f"web.host is {self.web.host!r}, which is reachable from other machines: "
                "set web.token (or GANGLION_WEB_TOKEN) before binding beyond 127.0.0.1"
            )
        return self


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


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: str, env: dict[str, str], where: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; an unset ``${VAR}`` with no default fails."""

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env and (env[name] != "" or default is None):
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"config error: {where}: environment variable {name} is not set")

    return _VAR.sub(repl, value)


def _expand_tree(node: Any, env: dict[str, str], where: str) -> Any:
    if isinstance(node, dict):
        out: dict[Any, Any] = {}
        for key, val in node.items():
            if not isinstance(key, str):
                raise ConfigError(f"config error: {where or '<top>'}: key {key!r} is not a string")
            out[key] = _expand_tree(val, env, f"{where}.{key}" if where else key)
        return out
    if isinstance(node, list):
        return [_expand_tree(v, env, f"{where}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):
        return expand_env(node, env, where)
    return node


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<top>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see config.yaml.example)"
        elif "input" in e and e["type"] not in ("missing",) and not path.endswith("token"):
            shown = repr(e["input"])
            if len(shown) <= 60 and not isinstance(e["input"], dict | list):
                msg = f"{msg} (got {shown})"
        lines.append(f"config error: {path}: {msg}")
    return "\n".join(lines)


def parse_config(raw: Any, env: dict[str, str] | None = None) -> Config:
    """Validate an already-parsed YAML document. Raises ConfigError naming the bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("config error: <top>: the file must be a mapping of sections")
    expanded = _expand_tree(raw, dict(os.environ) if env is None else env, "")
    try:
        return Config.model_validate(expanded)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


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
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config error: {path} is not valid YAML: {err}") from None
    config = parse_config(raw, env)
    return LoadedConfig(config, path.resolve(), path.resolve().parent)


def secret_values(config: Config) -> list[str]:
    """Every secret in the config, for log masking (short or placeholder values excluded)."""
    values = [e.api_key for e in config.llm.endpoints] + [config.web.token]
    return [v for v in values if v and v.lower() not in ("none", "null", "") and len(v) >= 4]


SECRET_KEYS = ("api_key", "token", "access_token", "password")


def masked_dump(config: Config) -> dict[str, Any]:
    """The effective config as plain data with secrets replaced by ``***``."""

    def mask(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: ("***" if k in SECRET_KEYS and v not in (None, "", "none") else mask(v))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [mask(v) for v in node]
        return node

    result: dict[str, Any] = mask(config.model_dump(mode="json"))
    return result
