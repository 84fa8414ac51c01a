"""Config: defaults, ${ENV} expansion, and every bad key named with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import AppFactory
from pydantic import BaseModel

from ganglion.config import Config, ConfigError, find_config_path, load_config, parse_config
from ganglion.tool_names import TOOL_NAMES


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GANGLION_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "ganglion", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=60)


def test_defaults_match_the_documented_keys() -> None:
    cfg = parse_config({}, env={})
    assert cfg.web.host == "127.0.0.1" and cfg.web.port == 8080 and cfg.web.enabled
    assert cfg.llm.endpoints[0].base_url == "http://127.0.0.1:11434/v1"
    assert cfg.llm.model == "llama3.1" and cfg.llm.compaction_model is None
    assert cfg.llm.context_tokens == 32768 and cfg.matrix.enabled is False
    assert cfg.paths.data_dir == "data" and cfg.paths.log_dir == "logs"


def test_env_expansion_with_and_without_default() -> None:
    raw = {"llm": {"endpoints": [{"name": "a", "base_url": "${URL}", "api_key": "${KEY:-none}"}]},
           "web": {"port": "${PORT:-9001}"}}
    cfg = parse_config(raw, env={"URL": "http://h:1/v1"})
    assert cfg.llm.endpoints[0].base_url == "http://h:1/v1"
    assert cfg.llm.endpoints[0].api_key == "none"
    assert cfg.web.port == 9001
    cfg = parse_config(raw, env={"URL": "http://h:1/v1", "KEY": "sk-x", "PORT": "7000"})
    assert cfg.llm.endpoints[0].api_key == "sk-x" and cfg.web.port == 7000


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"web": {"prot": 8080}}, "web.prot: unknown key"),
        ({"wbe": {}}, "wbe: unknown key"),
        ({"web": {"port": "eighty"}}, "web.port"),
        ({"web": {"port": 70000}}, "web.port"),
        ({"web": {"enabled": "maybe"}}, "web.enabled"),
        ({"llm": {"endpoints": []}}, "llm.endpoints"),
        ({"llm": {"endpoints": [{"name": "x", "base_url": "ftp://h"}]}},
         "llm.endpoints.0.base_url"),
        ({"llm": {"endpoints": [{"name": "x", "base_url": "http://h", "max_concurrency": 0}]}},
         "llm.endpoints.0.max_concurrency"),
        ({"llm": {"context_tokens": "lots"}}, "llm.context_tokens"),
        ({"llm": {"model": "${NOPE}"}}, "llm.model: environment variable NOPE is not set"),
        ({"web": {"host": "0.0.0.0"}}, "web.token: web.host is '0.0.0.0', which is reachable "
         "from other machines: set web.token"),
        ({"web": {"host": "0.0.0.0", "token": "ab"}}, "web.token: too short for web.host"),
        ({"web": {"host": "192.168.1.2", "token": "x" * 15}}, "at least 16 random characters"),
        # Typos in a reference: left as they were, they would pass as literal values.
        ({"web": {"token": "${GANGLION_WEB_TOKEN-}"}}, "web.token: not a valid environment "
         "reference; write ${VAR} or ${VAR:-default}"),
        ({"llm": {"model": "${MODEL:llama3}"}}, "llm.model: not a valid environment reference"),
        ({"llm": {"endpoints": [{"name": "a", "base_url": "http://h/v1", "api_key": "${ KEY}"}]}},
         "llm.endpoints.0.api_key: not a valid environment reference"),
        ({"paths": {"data_dir": "/srv/${HOME/data"}}, "paths.data_dir: not a valid"),
        # Wrong types are errors, not coerced (YAML's yes/no are booleans).
        ({"llm": {"retries": True}}, "llm.retries: Input should be a valid integer (got True)"),
        ({"web": {"enabled": 1}}, "web.enabled: Input should be a valid boolean (got 1)"),
        ({"web": {"port": 80.0}}, "web.port: Input should be a valid integer (got 80.0)"),
        ({"web": {"port": "8080"}}, "web.port: Input should be a valid integer (got '8080')"),
        ({"llm": {"model": 3}}, "llm.model: Input should be a valid string (got 3)"),
        ({"llm": {"temperature": False}}, "llm.temperature"),
        ({"web": {"port": "${PORT}"}}, "web.port"),  # set below to a float: not a port
        ({"paths": ["data"]}, "paths"),
        ({"tools": {"policy": {"wirte_file": "off"}}},
         "tools.policy.wirte_file: no such tool; the tools are"),
        ({"tools": {"policy": {"shell": "maybe"}}}, "tools.policy.shell"),
        ({"web": {"allowed_origins": ["chat.example.org"]}},
         "web.allowed_origins.0: not an origin"),
        ({"web": {"allowed_origins": ["https://chat.example.org/app"]}},
         "web.allowed_origins.0: not an origin"),
        ([1, 2], "<top>"),
    ],
)
def test_bad_config_names_the_key(raw: object, named: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env={"PORT": "80.5"})
    assert named in str(err.value)


def test_non_loopback_bind_is_allowed_with_a_long_enough_token() -> None:
    cfg = parse_config({"web": {"host": "0.0.0.0", "token": "x" * 16}}, env={})
    assert not cfg.web.is_loopback
    # On loopback any token will do, and none at all is generated.
    assert parse_config({"web": {"token": "ab"}}, env={}).web.token == "ab"
    assert parse_config({"web": {"host": "0.0.0.0", "enabled": False}}, env={}).web.token == ""


def test_a_whole_reference_takes_the_type_of_its_key() -> None:
    """``port: ${PORT:-8080}`` is a number and ``enabled: ${X:-true}`` a bool, while a string
    key keeps the text as it is, even when it looks like a number or is empty."""
    raw = {
        "llm": {"endpoints": [{"name": "a", "base_url": "http://h/v1", "api_key": "${KEY}",
                               "timeout_seconds": "${TIMEOUT:-30}"}],
                "compaction_model": "${COMPACT:-}", "temperature": "${TEMP:-0.5}",
                "retries": "${RETRIES:-2}"},
        "web": {"port": "${PORT:-8080}", "enabled": "${WEB:-true}", "token": "${TOKEN:-}"},
        "heartbeat": {"daily_token_budget": "${BUDGET:-null}"},
        "tools": {"policy": {"shell": "${SHELL_MODE:-off}"}, "shell_env": ["${VAR_NAME}"]},
        "paths": {"data_dir": "${DATA:-~/ganglion}/data"},
    }
    cfg = parse_config(raw, env={"KEY": "12345", "WEB": "false", "VAR_NAME": "LANG"})
    assert cfg.web.port == 8080 and cfg.web.enabled is False and cfg.web.token == ""
    assert cfg.llm.endpoints[0].api_key == "12345"  # digits, but an api_key is text
    assert cfg.llm.endpoints[0].timeout_seconds == 30.0
    assert cfg.llm.compaction_model is None and cfg.llm.temperature == 0.5
    assert cfg.llm.retries == 2 and cfg.heartbeat.daily_token_budget is None
    assert cfg.tools.policy == {"shell": "off"} and cfg.tools.shell_env == ["LANG"]
    assert cfg.paths.data_dir == "~/ganglion/data"
    # A variable's value is never taken for a reference itself.
    cfg = parse_config({"llm": {"model": "${M}"}}, env={"M": "odd${name"})
    assert cfg.llm.model == "odd${name"
    with pytest.raises(ConfigError, match=r"web\.enabled: Input should be a valid boolean"):
        parse_config(raw, env={"KEY": "k", "WEB": "maybe", "VAR_NAME": "LANG"})


def test_yaml_types_are_checked_strictly(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("llm:\n  retries: yes\n")
    with pytest.raises(ConfigError, match=r"llm\.retries: Input should be a valid integer"):
        load_config(str(cfg), env={})
    # An int is a fine float, and paths are text resolved later.
    cfg.write_text("llm:\n  backoff_seconds: 1\npaths:\n  data_dir: ~/g\n")
    loaded = load_config(str(cfg), env={})
    assert loaded.config.llm.backoff_seconds == 1.0
    assert loaded.data_dir == Path("~/g").expanduser()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("web:\n  port: 9001\nllm:\n  model: a\nweb:\n  port: 9002\n",
         "line 5: web is given twice (first on line 1)"),
        ("llm:\n  model: a\n  retries: 1\n  model: b\n",
         "line 4: llm.model is given twice (first on line 2)"),
        ("llm:\n  endpoints:\n    - name: a\n      base_url: http://a/v1\n"
         "      base_url: http://b/v1\n", "line 5: llm.endpoints.0.base_url is given twice"),
        ("web: {port: 1, 'port': 2}\n", "line 1: web.port is given twice"),
    ],
)
def test_a_key_given_twice_is_an_error_naming_it_and_its_line(
    tmp_path: Path, text: str, named: str
) -> None:
    cfg = tmp_path / "twice.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(str(cfg), env={})
    assert str(err.value).startswith(f"config error: {cfg}: {named}"), str(err.value)
    assert "keep one" in str(err.value)
    result = run_cli("--config", str(cfg), "check-config", cwd=tmp_path)
    assert result.returncode == 2 and named in result.stderr, result.stderr


def test_yaml_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    cfg = tmp_path / "merge.yaml"
    cfg.write_text("llm:\n  endpoints:\n"
                   "    - &a {name: a, base_url: 'http://a/v1', max_concurrency: 2}\n"
                   "    - <<: *a\n      name: b\n")
    loaded = load_config(str(cfg), env={})
    assert [(e.name, e.max_concurrency) for e in loaded.config.llm.endpoints] == [
        ("a", 2), ("b", 2)]


def test_config_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_config_path(None, env={}) is None
    (tmp_path / "config.yaml").write_text("web: {port: 9100}\n")
    assert find_config_path(None, env={}) == Path("config.yaml")
    assert find_config_path(None, env={"GANGLION_CONFIG": "/x.yaml"}) == Path("/x.yaml")
    assert find_config_path("/y.yaml", env={"GANGLION_CONFIG": "/x.yaml"}) == Path("/y.yaml")
    loaded = load_config(None, env={})
    assert loaded.config.web.port == 9100 and loaded.base_dir == tmp_path


def test_cli_exits_2_naming_the_bad_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("llm:\n  modle: llama3\n")
    result = run_cli("--config", str(cfg), "check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert "llm.modle: unknown key" in result.stderr
    result = run_cli("--config", str(cfg), cwd=tmp_path)  # the daemon itself refuses too
    assert result.returncode == 2 and "llm.modle" in result.stderr


def test_a_tool_name_typo_is_a_config_error_for_check_config_and_the_daemon(
    tmp_path: Path,
) -> None:
    """A misspelt tool would stay in its default mode (on): refused before anything starts."""
    cfg = tmp_path / "typo.yaml"
    cfg.write_text('tools:\n  policy:\n    wirte_file: "off"\n')
    for args in (("check-config",), ()):
        result = run_cli("--config", str(cfg), *args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "config error: tools.policy.wirte_file: no such tool" in result.stderr
        assert "write_file" in result.stderr  # the names it could have meant
        assert "config OK" not in result.stdout
    assert not (tmp_path / "data").exists()  # refused before anything was created


@pytest.mark.parametrize("url", [
    "http://bob:hunter2-secret@llm.example.org/v1 x",  # shown_url finds the password
    "ftp://bob:hunter2-secret@llm.example.org/v1",     # a URL it does not recognise
    "http://bob:hunter2 secret@llm.example.org/v1",
])
def test_a_bad_base_url_never_shows_its_credentials(tmp_path: Path, url: str) -> None:
    """The error goes to stderr (a service manager's journal): the password is not in it."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"llm": {"endpoints": [{"name": "a", "base_url": url}]}}))
    result = run_cli("--config", str(path), "check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert "llm.endpoints.0.base_url" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    if url.endswith(" x"):  # the rest of it is still shown, to find the mistake by
        assert "'http://***@llm.example.org/v1 x'" in result.stderr


def test_tool_modes_may_be_written_unquoted(tmp_path: Path) -> None:
    """YAML reads ``shell: on`` / ``write_file: off`` as true / false: they are the modes as
    written, quoted or not (the booleans mean nothing else in tools.policy)."""
    for unquoted in (True, False):
        q = "" if unquoted else '"'
        path = tmp_path / f"policy-{unquoted}.yaml"
        path.write_text(f"tools:\n  policy:\n    shell: {q}on{q}\n    write_file: {q}off{q}\n"
                        f"    edit_file: {q}ask{q}\n")
        cfg = load_config(str(path), env={}).config
        assert cfg.tools.policy == {"shell": "on", "write_file": "off", "edit_file": "ask"}
    cfg = parse_config({"tools": {"policy": {"shell": True, "read_file": False}}}, env={})
    assert cfg.tools.policy == {"shell": "on", "read_file": "off"}
    with pytest.raises(ConfigError, match=r"tools\.policy\.shell: Input should be 'on'"):
        parse_config({"tools": {"policy": {"shell": 1}}}, env={})  # a number stays wrong
    with pytest.raises(ConfigError, match=r"web\.enabled"):  # strict typing elsewhere stays
        parse_config({"web": {"enabled": "on"}}, env={})


async def test_the_tool_names_the_config_checks_are_the_tools_the_app_has(
    app_factory: AppFactory,
) -> None:
    # web_search is registered only with a search service (none listens there: not needed).
    app = await app_factory({"tools": {"web": {"search_url": "http://127.0.0.1:9/"}}})
    assert set(app.tools.names()) == TOOL_NAMES


def test_the_installed_ganglion_command_works(tmp_path: Path) -> None:
    """The console script (pyproject's [project.scripts]), not only ``python -m ganglion``."""
    script = Path(sys.executable).parent / "ganglion"  # next to the venv's python
    assert script.is_file() and os.access(script, os.X_OK), f"no console script at {script}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANGLION_")}
    cfg = tmp_path / "c.yaml"
    cfg.write_text("web:\n  port: 9123\n")
    result = subprocess.run([str(script), "--config", str(cfg), "check-config"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"# config OK: {cfg.resolve()}" in result.stdout and "port: 9123" in result.stdout
    cfg.write_text("web:\n  prot: 9123\n")
    result = subprocess.run([str(script), "--config", str(cfg), "check-config"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "web.prot: unknown key" in result.stderr


def test_cli_exits_2_on_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("web: [port: 1\n")
    result = run_cli("--config", str(cfg), "check-config", cwd=tmp_path)
    assert result.returncode == 2 and "not valid YAML" in result.stderr
    assert f"config error: {cfg}: line 2, column 1: not valid YAML" in result.stderr
    result = run_cli("--config", str(tmp_path / "missing.yaml"), "check-config", cwd=tmp_path)
    assert result.returncode == 2 and "cannot read" in result.stderr


@pytest.mark.parametrize(
    "broken",
    ['      api_key: "sk-secret-1234567\n',  # an unclosed quote
     "      api_key: sk-secret-1234567: [\n",  # a mapping where none may start
     "      api_key: sk-secret-1234567\n     bad: indent\n"],
)
def test_a_yaml_error_names_the_line_and_never_quotes_the_file(
    tmp_path: Path, broken: str
) -> None:
    """PyYAML's message shows the offending line, which may be the api_key's."""
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("llm:\n  endpoints:\n    - name: a\n      base_url: http://h/v1\n" + broken
                   + "web:\n  port: 1\n")
    result = run_cli("--config", str(cfg), "check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert "sk-secret" not in result.stderr and "api_key" not in result.stderr, result.stderr
    assert f"config error: {cfg}: line " in result.stderr and ", column " in result.stderr
    assert "not valid YAML" in result.stderr and "<unicode string>" not in result.stderr


def test_check_config_prints_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "llm:\n  endpoints:\n    - name: main\n      base_url: http://127.0.0.1:1/v1\n"
        "      api_key: ${MY_KEY}\nweb:\n  token: ${GANGLION_WEB_TOKEN:-}\n"
    )
    result = run_cli("check-config", cwd=tmp_path,
                     env={"GANGLION_CONFIG": str(cfg), "MY_KEY": "sk-very-secret-123",
                          "GANGLION_WEB_TOKEN": "web-secret-456"})
    assert result.returncode == 0, result.stderr
    assert "sk-very-secret-123" not in result.stdout and "web-secret-456" not in result.stdout
    assert "api_key: '***'" in result.stdout and "token: '***'" in result.stdout
    assert "base_url: http://127.0.0.1:1/v1" in result.stdout
    assert "context_tokens: 32768" in result.stdout  # defaults are shown too


def model_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every key of the model by its full path; the items of a list of sections as ``[]``."""
    out = set()
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        out.add(path)
        annotation = field.annotation
        item = getattr(annotation, "__args__", (None,))[0]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out |= model_paths(annotation, f"{path}.")
        elif isinstance(item, type) and issubclass(item, BaseModel):
            out |= model_paths(item, f"{path}[].")
    return out


def document_paths(node: object, prefix: str = "") -> set[str]:
    out = set()
    if isinstance(node, dict):
        for key, value in node.items():
            out |= {f"{prefix}{key}"} | document_paths(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for item in node:
            out |= document_paths(item, f"{prefix.removesuffix('.')}[].")
    return out


def test_example_config_is_valid_and_documents_every_key() -> None:
    example = Path(__file__).parent.parent / "config.yaml.example"
    load_config(str(example), env={})  # valid as it is
    written = document_paths(yaml.safe_load(example.read_text()))
    expected = model_paths(Config)
    assert "llm.endpoints[].api_key" in expected and "web.token" in expected
    missing = sorted(expected - written)
    assert not missing, f"config.yaml.example does not show these keys at their place: {missing}"


def test_a_model_of_its_own_overrides_the_budget_and_the_answer_cap() -> None:
    cfg = parse_config({"llm": {"context_tokens": 32768, "max_tokens": 2048, "models": {
        "q05.gguf": {"context_tokens": 8192},
        "big": {"max_tokens": 8000}}}})
    assert (cfg.llm.context_tokens_for("q05.gguf"), cfg.llm.max_tokens_for("q05.gguf")) \
        == (8192, 2048)
    assert (cfg.llm.context_tokens_for("big"), cfg.llm.max_tokens_for("big")) == (32768, 8000)
    assert (cfg.llm.context_tokens_for("other"), cfg.llm.max_tokens_for("other")) \
        == (32768, 2048)
    with pytest.raises(ConfigError, match=r"llm\.models\.'q05\.gguf'\.context_tokens"):
        parse_config({"llm": {"models": {"q05.gguf": {"context_tokens": 100}}}})
    with pytest.raises(ConfigError, match=r"llm\.models\.x\.max_token"):
        parse_config({"llm": {"models": {"x": {"max_token": 100}}}})
