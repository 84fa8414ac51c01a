"""Config: defaults, ${ENV} expansion, and every bad key named with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import AppFactory

from ganglion.config import ConfigError, find_config_path, load_config, parse_config
from ganglion.tools.names import TOOL_NAMES


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
        ({"web": {"host": "0.0.0.0"}}, "set web.token"),
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
        parse_config(raw, env={})
    assert named in str(err.value)


def test_non_loopback_bind_is_allowed_with_a_token() -> None:
    cfg = parse_config({"web": {"host": "0.0.0.0", "token": "a-long-token"}}, env={})
    assert not cfg.web.is_loopback


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


async def test_the_tool_names_the_config_checks_are_the_tools_the_app_has(
    app_factory: AppFactory,
) -> None:
    app = await app_factory()
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
    result = run_cli("--config", str(tmp_path / "missing.yaml"), "check-config", cwd=tmp_path)
    assert result.returncode == 2 and "cannot read" in result.stderr


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


def test_example_config_is_valid_and_documents_every_key() -> None:
    example = Path(__file__).parent.parent / "config.yaml.example"
    loaded = load_config(str(example), env={"GANGLION_MATRIX_TOKEN": "x"})
    text = example.read_text()
    dumped = loaded.config.model_dump()

    def keys(node: object, prefix: str = "") -> list[str]:
        if isinstance(node, dict):
            out = []
            for k, v in node.items():
                out.append(k)
                out += keys(v, f"{prefix}{k}.")
            return out
        if isinstance(node, list) and node and isinstance(node[0], dict):
            return keys(node[0], prefix)
        return []

    missing = sorted({k for k in keys(dumped) if f"{k}:" not in text})
    assert not missing, f"config.yaml.example does not mention: {missing}"


def test_shipped_base_prompt_matches_the_packaged_default() -> None:
    root = Path(__file__).parent.parent
    assert (root / "data" / "BASE_PROMPT.txt").read_text() == (
        root / "ganglion" / "defaults" / "BASE_PROMPT.txt").read_text()
