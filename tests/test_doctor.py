"""`ganglion doctor`: all well on a healthy set-up (and beside its running daemon), and each
fault found with what to do: endpoint down, wrong model, port taken, read-only data folder,
wrong Matrix token, a key store that does not match the device."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import LLM_KEY, WEB_TOKEN, daemon_config, eventually_async
from daemon import Daemon, free_port
from fake_llm import FakeLLM
from matrix_rooms import matrix_section
from mount_namespace import mounted_namespace
from synapse import MatrixUser, Synapse


async def doctor(workdir: Path, config: dict[str, Any], *prefix: str
                 ) -> tuple[int, dict[str, Any]]:
    """Exit status and the checks by name, from `ganglion doctor --json` run in ``workdir``
    (in a thread: the fake LLM answers it from this loop)."""
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [*prefix, sys.executable, "-m", "ganglion", "--config", str(path), "doctor",
               "--json"]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True,
                                   timeout=120, cwd=workdir)
    assert LLM_KEY not in done.stdout + done.stderr and WEB_TOKEN not in done.stdout
    report = json.loads(done.stdout)
    assert report["ok"] == (done.returncode == 0)
    return done.returncode, {c["name"]: c for c in report["checks"]}


async def published(synapse: Synapse, bot: MatrixUser) -> bool:
    """Whether the homeserver lists identity keys for the bot's device."""
    async with aiohttp.ClientSession() as session, session.post(
            f"{synapse.url}/_matrix/client/v3/keys/query",
            headers={"Authorization": f"Bearer {bot.access_token}"},
            json={"device_keys": {bot.user_id: [bot.device_id]}}) as resp:
        keys = await resp.json()
    return bot.device_id in keys["device_keys"].get(bot.user_id, {})


def failed(checks: dict[str, Any]) -> list[str]:
    return [name for name, c in checks.items() if not c["ok"]]


async def test_a_healthy_set_up_is_all_well_and_so_is_its_running_daemon(
        tmp_path: Path, fake_llm: FakeLLM) -> None:
    config = daemon_config(fake_llm, web={"token": WEB_TOKEN, "port": free_port()})
    status, checks = await doctor(tmp_path, config)
    assert status == 0, [checks[n] for n in failed(checks)]
    assert set(checks) == {"config", "data folder", "log folder", "database", "web port",
                           "llm endpoint fake", "llm.model", "clock"}
    assert "is free" in checks["web port"]["detail"]
    assert "within" in checks["clock"]["detail"]  # compared with the fake LLM's Date header
    async with Daemon(tmp_path, config) as daemon:
        await (await daemon.connect()).ask("hi")
        status, checks = await doctor(tmp_path, config)
        assert status == 0, [checks[n] for n in failed(checks)]
        assert f"held by this daemon (pid {daemon.proc.pid})" in checks["web port"]["detail"]
        assert "integrity ok, 2 messages" in checks["database"]["detail"]


async def test_each_fault_is_named_with_what_to_do(tmp_path: Path, fake_llm: FakeLLM) -> None:
    down = daemon_config(fake_llm)
    down["llm"]["endpoints"][0]["base_url"] = f"http://127.0.0.1:{free_port()}/v1"
    status, checks = await doctor(tmp_path, down)
    assert status == 1 and failed(checks) == ["llm endpoint fake"]
    assert "connection refused" in checks["llm endpoint fake"]["detail"]
    assert "start the server" in checks["llm endpoint fake"]["fix"]

    wrong_model = daemon_config(fake_llm)
    wrong_model["llm"]["model"] = "no-such-model"
    status, checks = await doctor(tmp_path, wrong_model)
    assert status == 1 and failed(checks) == ["llm.model"]
    assert "they offer: fake-model" in checks["llm.model"]["detail"]

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        status, checks = await doctor(tmp_path, daemon_config(fake_llm, web={"token": WEB_TOKEN,
                                                                       "port": port}))
    assert status == 1 and failed(checks) == ["web port"]
    assert "taken by another program" in checks["web port"]["detail"]

    status, checks = await doctor(tmp_path, {"llm": {"model": 5}})
    assert status == 1 and failed(checks) == ["config"] and "llm.model" in \
        checks["config"]["detail"]


async def test_a_read_only_data_folder(tmp_path: Path, fake_llm: FakeLLM) -> None:
    with mounted_namespace(tmp_path / "data") as ns:
        ns.run("mount", "-o", "remount,ro", str(tmp_path / "data"))
        status, checks = await doctor(tmp_path, daemon_config(fake_llm),
                                *ns.prefix(tmp_path))
    assert status == 1 and failed(checks) == ["data folder"]
    assert "is not writable: Read-only file system" in checks["data folder"]["detail"]


@pytest.mark.matrix
async def test_matrix_token_and_key_store(tmp_path: Path, fake_llm: FakeLLM,
                                          synapse: Synapse) -> None:
    bot = await synapse.register("bot")
    store = tmp_path / "store"
    config = daemon_config(fake_llm, **matrix_section(synapse, bot, [bot.user_id], store))
    status, checks = await doctor(tmp_path, config)  # never started: no keys anywhere yet
    assert status == 0 and "made at first start" in checks["matrix"]["detail"], checks
    assert not store.exists()  # the doctor made nothing

    async with Daemon(tmp_path, config):  # the bot's first start makes and uploads its keys
        await eventually_async(lambda: published(synapse, bot), timeout=30)
    status, checks = await doctor(tmp_path, config)
    assert status == 0 and "key store matches" in checks["matrix"]["detail"], checks

    shutil.move(store, tmp_path / "elsewhere")  # the store lost, the device's keys published
    status, checks = await doctor(tmp_path, config)
    assert status == 1 and failed(checks) == ["matrix"]
    assert "does not hold the keys the homeserver has" in checks["matrix"]["detail"]

    config["matrix"]["access_token"] = "syt_not_a_token"
    status, checks = await doctor(tmp_path, config)
    assert status == 1 and "rejected matrix.access_token (M_UNKNOWN_TOKEN)" in \
        checks["matrix"]["detail"]
    assert "ganglion login" in checks["matrix"]["fix"]
