"""``ganglion service``: a systemd unit for this checkout and user, printed or installed.

The choices, each for a reason (README, "Running as a service"):

- ``ExecStart`` is the virtual environment's own ``ganglion`` script, not ``uv run``: one
  process, the daemon, gets the stop signal and reports its state.
- ``Type=notify``: the daemon says READY=1 once it is up (``ganglion.notify``), so
  ``systemctl start`` returns when it is, and a start that fails is seen as failed.
- ``Restart=on-failure``: a crash (or a failed start: an unreachable database) restarts it;
  a clean stop (exit status 0) does not.
- ``TimeoutStopSec`` above the daemon's own stop budget (``app.STOP_SECONDS``): systemd
  never kills a stop that is still going to finish. ``KillMode=mixed``: the stop signal
  goes to the daemon alone, which ends its own children (a shell command, MCP servers) in
  order; whatever is left when it has exited is killed.
- Hardening that leaves the shell tool working: no new privileges (``sudo`` in a command
  fails, documented), files private to the user (UMask); a system service also gets a
  private /tmp, a read-only /usr, /boot and /etc, and no access to kernel tunables. The
  file tools work on the data folder and the workspace, which stay writable.
"""

from __future__ import annotations

import argparse
import getpass
import math
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from ganglion.config import LoadedConfig

UNIT_NAME = "ganglion.service"
STOP_MARGIN_SECONDS = 10
"""systemd's wait for a stop is the daemon's own budget and this much (a loaded machine)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--system", action="store_true",
                        help="a system service (runs as this user; installing needs root) "
                             "instead of a user service")
    parser.add_argument("--install", action="store_true",
                        help=f"write the unit ({UNIT_NAME}) where systemd reads it and say "
                             "what to run next")
    parser.add_argument("--force", action="store_true",
                        help="with --install: replace a different unit already there")


@dataclass(frozen=True, slots=True)
class Unit:
    executable: Path
    config: Path | None
    workdir: Path
    user: str
    system: bool
    stop_seconds: float
    """The daemon's own stop budget (``app.STOP_SECONDS``)."""

    def text(self) -> str:
        command = [str(self.executable)]
        if self.config is not None:
            command += ["--config", str(self.config)]
        service = [
            "Type=notify",
            "NotifyAccess=main",
            f"ExecStart={_quoted(command)}",
            f"WorkingDirectory={_escaped(str(self.workdir))}",
            "Environment=PYTHONUNBUFFERED=1",
            "Restart=on-failure",
            "RestartSec=5",
            f"TimeoutStopSec={math.ceil(self.stop_seconds) + STOP_MARGIN_SECONDS}",
            "KillMode=mixed",
            "NoNewPrivileges=yes",
            "UMask=0077",
        ]
        if self.system:
            service[:0] = [f"User={self.user}"]
            service += ["PrivateTmp=yes", "ProtectSystem=full", "ProtectKernelTunables=yes",
                        "ProtectKernelModules=yes", "ProtectControlGroups=yes",
                        "RestrictSUIDSGID=yes", "LockPersonality=yes", "RestrictRealtime=yes"]
        wanted_by = "multi-user.target" if self.system else "default.target"
        return "\n".join([
            "# Written by `ganglion service`; the choices are explained in README.md,",
            '# "Running as a service".',
            "[Unit]",
            "Description=Ganglion personal assistant",
            "After=network-online.target",
            "Wants=network-online.target",
            "",
            "[Service]",
            *service,
            "",
            "[Install]",
            f"WantedBy={wanted_by}",
            "",
        ])

    def path(self) -> Path:
        if self.system:
            return Path("/etc/systemd/system") / UNIT_NAME
        config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(config_home) / "systemd" / "user" / UNIT_NAME

    def next_steps(self) -> str:
        if self.system:
            return (f"sudo systemctl daemon-reload && sudo systemctl enable --now {UNIT_NAME}\n"
                    f"logs: journalctl -u {UNIT_NAME} -f")
        return (f"systemctl --user daemon-reload && systemctl --user enable --now {UNIT_NAME}\n"
                f"to start at boot without a login: sudo loginctl enable-linger {self.user}\n"
                f"logs: journalctl --user -u {UNIT_NAME} -f")


def unit_for(loaded: LoadedConfig, *, system: bool, stop_seconds: float) -> Unit:
    """The unit for this interpreter's environment, this config and this user."""
    return Unit(executable=own_script(), config=loaded.source.resolve() if loaded.source
                else None, workdir=loaded.base_dir.resolve(), user=getpass.getuser(),
                system=system, stop_seconds=stop_seconds)


def own_script() -> Path:
    """The ``ganglion`` script beside this interpreter (the environment's bin folder; not
    resolved: a venv's python is a link to the base interpreter)."""
    return Path(sys.executable).parent / "ganglion"


def run_service(loaded: LoadedConfig, args: argparse.Namespace, stop_seconds: float) -> int:
    unit = unit_for(loaded, system=args.system, stop_seconds=stop_seconds)
    if any(c in str(p) for p in (unit.executable, unit.workdir, unit.config or "")
           for c in "\n\r"):
        print("ganglion service: a path holds a line break; a unit file cannot name it",
              file=sys.stderr)
        return 1
    if not unit.executable.is_file():
        print(f"ganglion service: {unit.executable} does not exist: install the project into "
              "its environment first (`uv sync`)", file=sys.stderr)
        return 1
    text = unit.text()
    if not args.install:
        print(text, end="")
        return 0
    path = unit.path()
    if path.is_file() and path.read_text(encoding="utf-8") != text and not args.force:
        print(f"ganglion service: {path} exists and differs; compare it with "
              "`ganglion service`, then add --force to replace it", file=sys.stderr)
        return 1
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        print(f"ganglion service: cannot write {path}: {err.strerror}"
              + (" (a system service is installed as root)" if unit.system else ""),
              file=sys.stderr)
        return 1
    print(f"wrote {path}\nnext: {unit.next_steps()}")
    return 0


def _quoted(words: list[str]) -> str:
    """A command line for ``ExecStart``: words quoted where they hold spaces or quotes,
    ``$`` and ``%`` doubled (systemd expands variables and specifiers there)."""
    return _escaped(" ".join(shlex.quote(w) for w in words)).replace("$", "$$")


def _escaped(text: str) -> str:
    """``%`` doubled: systemd expands ``%x`` specifiers in most settings."""
    return text.replace("%", "%%")
