"""The scan for secrets in one test's logs: its daemon log files and daemon console output,
checked against that test's own secrets at its teardown (the ``secret_scan`` fixture in
conftest.py)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from ganglion.config import SECRET_KEYS

SYNAPSE_TOKEN = re.compile(r"syt_[A-Za-z0-9]+_[A-Za-z0-9]{10,}_[A-Za-z0-9]{4,}")
"""Any access token the test Synapse issues, also one no test registered (``ganglion login``
makes its own device and token)."""
CONSOLE_FILES = ("daemon-output.txt",)
"""The daemon's console (stdout and stderr), as tests/daemon.py keeps it."""
LOGIN_LINE = re.compile(r"\s*Open the chat: http://\S+/#token=\S+\s*")
"""The one console line that carries the web token, by design (ganglion/cli.py)."""
MIN_SECRET = 8
"""Shorter values in a config (``none``, a placeholder) would match ordinary words."""


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def generated_tokens(root: Path) -> list[str]:
    """Every web token a daemon generated under ``root`` (its ``data/web_token``)."""
    tokens = (_read(path).strip() for path in root.rglob("web_token"))
    return [token for token in tokens if len(token) >= 16]


def _secret_values(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in SECRET_KEYS and isinstance(value, str):
                yield value
            else:
                yield from _secret_values(value)
    elif isinstance(node, list):
        for value in node:
            yield from _secret_values(value)


def config_secrets(root: Path) -> list[str]:
    """The secrets written in every ``config.yaml`` under ``root`` (a daemon's config, one
    ``ganglion login`` wrote); ``${ENV}`` references and short placeholders left out."""
    found = []
    for path in root.rglob("config.yaml"):
        with contextlib.suppress(yaml.YAMLError):
            found += [value for value in _secret_values(yaml.safe_load(_read(path)))
                      if len(value) >= MIN_SECRET and not value.startswith("${")]
    return found


def log_files(root: Path) -> list[Path]:
    """The daemon's log files (``ganglion.log*``) and console files under ``root``."""
    consoles = (path for name in CONSOLE_FILES for path in root.rglob(name))
    return sorted({*root.rglob("ganglion.log*"), *consoles})


def leaked_secrets(roots: Iterable[Path], secrets: Iterable[str]) -> list[str]:
    """``file: secret…`` (a prefix only) for each of ``secrets``, and each Synapse access token,
    found in a log or console file under ``roots``; the console's login line is allowed."""
    wanted = sorted({s for s in secrets if s})
    found = []
    for path in sorted({p for root in roots for p in log_files(root)}):
        text = _read(path)
        if path.name in CONSOLE_FILES:
            text = "\n".join(line for line in text.splitlines() if not LOGIN_LINE.fullmatch(line))
        hits = [s for s in wanted if s in text] + SYNAPSE_TOKEN.findall(text)
        found += [f"{path}: {hit[:12]}…" for hit in dict.fromkeys(hits)]
    return found


class SecretScan:
    """One test's secrets and the folders its logs are written in."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = set(secrets)
        self.roots: list[Path] = []

    def add(self, *secrets: str) -> None:
        """Secrets this test made or was given (an App's config, a generated token, a user's)."""
        self.secrets.update(secrets)

    def watch(self, root: Path) -> None:
        """A folder holding this test's logs (its ``tmp_path``, an App's ``log_dir``)."""
        if root not in self.roots:
            self.roots.append(root)

    def leaks(self) -> list[str]:
        """What ``leaked_secrets`` finds now, with the tokens generated and the config secrets
        written under the watched folders counted as this test's own."""
        secrets = set(self.secrets)
        for root in self.roots:
            secrets.update(generated_tokens(root), config_secrets(root))
        return leaked_secrets(self.roots, secrets)
