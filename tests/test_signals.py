"""The daemon as a person and a service manager run it: `uv run ganglion`, signals to its group."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def uv() -> str:
    """The `uv` binary; the test is skipped without it (required in CI)."""
    found = shutil.which("uv")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("uv is not on PATH")
        pytest.skip("uv is not on PATH")
    return found


def test_uv_run_does_not_byte_compile_on_every_start() -> None:
    """`uv run` twice: the second says nothing but the version (no "Bytecode compiled ...")."""
    for _ in range(2):
        done = subprocess.run([uv(), "run", "--locked", "ganglion", "--version"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("ganglion ")
    assert "Bytecode compiled" not in done.stderr, done.stderr
