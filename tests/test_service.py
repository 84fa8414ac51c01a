"""`ganglion service`: the systemd unit it prints passes systemd's own check, and its
ExecStart, run as written from its WorkingDirectory, is the daemon, ready and stopped cleanly."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import daemon_config, skip_or_fail
from daemon import NotifySocket, exit_of, free_port
from fake_llm import FakeLLM

GANGLION = [sys.executable, "-m", "ganglion"]


def service(config: Path, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GANGLION, "service", "--config", str(config), *args],
                          capture_output=True, text=True, env=env, timeout=60)


def settings(unit: str) -> dict[str, str]:
    """The unit's ``Key=value`` lines (each key once in ours)."""
    return dict(line.split("=", 1) for line in unit.splitlines()
                if "=" in line and not line.startswith("#"))


def verify(unit: Path, *user: str) -> str:
    """What ``systemd-analyze verify`` says of the unit (its complaints name the file)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        skip_or_fail("systemd-analyze not found: install Debian's systemd")
    runtime = unit.parent / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    done = subprocess.run([analyze, *user, "verify", str(unit)], capture_output=True,
                          text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return "\n".join(line for line in done.stderr.splitlines() if unit.name in line)


@pytest.fixture
def config(tmp_path: Path, fake_llm: FakeLLM) -> Path:
    # A folder with a space and a percent sign: both need escaping in a unit file.
    home = tmp_path / "my 100% home"
    home.mkdir()
    path = home / "config.yaml"
    path.write_text(yaml.safe_dump(daemon_config(fake_llm, web={"token": "t" * 32,
                                                                "port": free_port()})))
    return path


@pytest.mark.parametrize("kind", ["user", "system"])
def test_the_unit_passes_systemd_analyze_verify(config: Path, tmp_path: Path, kind: str) -> None:
    printed = service(config, *(["--system"] if kind == "system" else []))
    assert printed.returncode == 0, printed.stderr
    unit = tmp_path / "ganglion.service"
    unit.write_text(printed.stdout)
    assert verify(unit, *(["--user"] if kind == "user" else [])) == ""
    keys = settings(printed.stdout)
    assert keys["Type"] == "notify" and keys["Restart"] == "on-failure"
    assert int(keys["TimeoutStopSec"]) > 5  # above the daemon's stop budget
    assert keys["ExecStart"].split()[0] == str(Path(sys.executable).parent / "ganglion")
    assert "uv" not in shlex.split(keys["ExecStart"])  # one process gets the signal
    assert ("User" in keys) == (kind == "system")


async def test_exec_start_as_written_runs_the_daemon_and_stops_cleanly(config: Path) -> None:
    keys = settings(service(config).stdout)
    # What systemd does with the two lines: %% and $$ undone, words split as a shell would.
    argv = shlex.split(keys["ExecStart"].replace("%%", "%").replace("$$", "$"))
    workdir = keys["WorkingDirectory"].replace("%%", "%")
    assert argv[-2:] == ["--config", str(config)] and workdir == str(config.parent)
    notices = NotifySocket()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANGLION_")}
    proc = subprocess.Popen(argv, cwd=workdir, env={**env, "NOTIFY_SOCKET": notices.address},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await notices.wait_for("READY=1", proc.pid)
        assert (config.parent / "data").is_dir()  # the data folder beside the config
        proc.send_signal(signal.SIGTERM)
        with exit_of(proc.pid) as exited:
            await exited
        assert proc.wait() == 0  # a clean stop: Restart=on-failure leaves it stopped
    finally:
        proc.kill()
        proc.wait()
        notices.close()


def test_install_writes_the_user_unit_and_never_replaces_a_different_one(
        config: Path, tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    installed = service(config, "--install", env=env)
    assert installed.returncode == 0, installed.stderr
    unit = tmp_path / "xdg" / "systemd" / "user" / "ganglion.service"
    assert unit.read_text() == service(config).stdout
    assert "systemctl --user daemon-reload" in installed.stdout
    assert service(config, "--install", env=env).returncode == 0  # the same again: fine
    unit.write_text(unit.read_text() + "# my own edit\n")
    refused = service(config, "--install", env=env)
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert unit.read_text().endswith("# my own edit\n")
    assert service(config, "--install", "--force", env=env).returncode == 0
    assert unit.read_text() == service(config).stdout
