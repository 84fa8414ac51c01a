"""``ganglion login`` and the global options, as a person runs them: real child processes,
the real Synapse (its devices counted through the client API), a config file on disk."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml
from hs_proxy import HomeserverProxy, hs_proxy  # noqa: F401  (fixture)
from synapse import MatrixUser, Synapse


async def ganglion(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``python -m ganglion *args``; its exit code and its output (stdout and stderr)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GANGLION_")}
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ganglion", *args, cwd=cwd, env=full_env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def devices(synapse: Synapse, user: MatrixUser) -> set[str]:
    """The user's devices, as the homeserver lists them."""
    async with aiohttp.ClientSession() as session, session.get(
            f"{synapse.url}/_matrix/client/v3/devices",
            headers={"Authorization": f"Bearer {user.access_token}"}) as resp:
        assert resp.status == 200, await resp.text()
        return {d["device_id"] for d in (await resp.json())["devices"]}


def login_args(config: Path, homeserver: str, bot: MatrixUser, *more: str) -> list[str]:
    """``login`` with the global option after the command, the password from a file."""
    (config.parent / "pw").write_text(bot.password + "\n")
    return ["login", "--config", str(config), "--homeserver", homeserver, "--user",
            bot.localpart, "--password-file", str(config.parent / "pw"), *more]


def matrix_of(config: Path) -> dict[str, str]:
    section: dict[str, str] = yaml.safe_load(config.read_text())["matrix"]
    return section


def test_check_config_takes_the_global_options_after_the_command(tmp_path: Path) -> None:
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("web:\n  port: 9123\n")
    for args in (["check-config", "--config", str(cfg)], ["--config", str(cfg), "check-config"],
                 ["--config", "/nonexistent.yaml", "check-config", "--config", str(cfg)]):
        result = subprocess.run([sys.executable, "-m", "ganglion", *args], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60, env={
                                    k: v for k, v in os.environ.items()
                                    if not k.startswith("GANGLION_")})
        assert result.returncode == 0, (args, result.stderr)
        assert f"# config OK: {cfg}" in result.stdout and "port: 9123" in result.stdout


@pytest.mark.matrix
async def test_login_reruns_make_no_new_device_unless_asked(
    synapse: Synapse, tmp_path: Path,
) -> None:
    bot = await synapse.register("bot")
    config = tmp_path / "bot.yaml"
    config.write_text("matrix:\n  enabled: false\n")
    code, out = await ganglion(*login_args(config, synapse.url, bot), cwd=tmp_path)
    assert code == 0, out
    first = matrix_of(config)
    assert first["device_id"] in await devices(synapse, bot)
    assert "empty" in out and "not empty" not in out  # a new store folder
    before = await devices(synapse, bot)

    # Again, with the session in the config working: said, and nothing done.
    code, out = await ganglion(*login_args(config, synapse.url, bot), cwd=tmp_path)
    assert code == 0, out
    assert "already holds a working session" in out and "--new-device" in out
    assert await devices(synapse, bot) == before
    assert matrix_of(config) == first

    # The token kept in an environment variable is checked just the same.
    text = config.read_text().replace(f'"{first["access_token"]}"', "${BOT_TOKEN}")
    config.write_text(text)
    code, out = await ganglion(*login_args(config, synapse.url, bot), cwd=tmp_path,
                               env={"BOT_TOKEN": first["access_token"]})
    assert code == 0 and "already holds a working session" in out, out
    assert await devices(synapse, bot) == before

    # Asked for: a new device, its token printed for the variable, not written; the store
    # folder's keys of the earlier device are told apart from an empty folder.
    store = tmp_path / "data" / "matrix-store"
    (store / f"{bot.user_id}_{first['device_id']}.db").write_bytes(b"")
    code, out = await ganglion(*login_args(config, synapse.url, bot, "--new-device"),
                               cwd=tmp_path, env={"BOT_TOKEN": first["access_token"]})
    assert code == 0, out
    after = await devices(synapse, bot)
    assert len(after - before) == 1
    second = matrix_of(config)
    assert second["device_id"] in after - before
    assert second["access_token"] == "${BOT_TOKEN}"
    assert "BOT_TOKEN=" in out  # what to set the variable to
    assert "not empty" in out and first["device_id"] in out
    assert f"The previous device {first['device_id']} still exists" in out


@pytest.mark.matrix
async def test_login_after_a_token_was_logged_out_makes_a_new_device(
    synapse: Synapse, tmp_path: Path,
) -> None:
    bot = await synapse.register("bot")
    config = tmp_path / "bot.yaml"
    config.write_text(f"matrix:\n  homeserver: {synapse.url}\n  user_id: \"{bot.user_id}\"\n"
                      f"  access_token: {bot.access_token}\n  device_id: {bot.device_id}\n")
    async with aiohttp.ClientSession() as session, session.post(
            f"{synapse.url}/_matrix/client/v3/logout",
            headers={"Authorization": f"Bearer {bot.access_token}"}) as resp:
        assert resp.status == 200
    code, out = await ganglion(*login_args(config, synapse.url, bot), cwd=tmp_path)
    assert code == 0, out
    assert "no longer works (M_UNKNOWN_TOKEN)" in out
    written = matrix_of(config)
    assert written["device_id"] != bot.device_id
    assert written["access_token"] != bot.access_token


@pytest.mark.matrix
async def test_login_keeps_the_address_given_unless_well_known_is_asked_for(
    synapse: Synapse, hs_proxy: HomeserverProxy, tmp_path: Path,  # noqa: F811
) -> None:
    """The proxy stands for the address the user knows; its .well-known names Synapse."""
    hs_proxy.well_known = {"m.homeserver": {"base_url": synapse.url}}
    bot = await synapse.register("bot")
    config = tmp_path / "bot.yaml"
    code, out = await ganglion(*login_args(config, hs_proxy.url, bot), cwd=tmp_path)
    assert code == 0, out
    assert f"names {synapse.url}" in out and "--use-well-known" in out
    assert matrix_of(config)["homeserver"] == hs_proxy.url

    code, out = await ganglion(*login_args(config, hs_proxy.url, bot, "--new-device",
                                           "--use-well-known"), cwd=tmp_path)
    assert code == 0, out
    assert matrix_of(config)["homeserver"] == synapse.url
