"""A private mount namespace with a small tmpfs at a folder (a disk that fills up or turns
read-only for real), for the daemon or a command run inside it with ``nsenter``."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TMPFS_SIZE = "4m"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs in a private mount namespace"
    tools = [t for t in ("unshare", "nsenter", "mount") if shutil.which(t) is None]
    if tools:
        return f"needs util-linux's {', '.join(tools)}"
    return None


class Namespace:
    """A private mount namespace held open by a sleeping process, with a tmpfs at ``data``."""

    def __init__(self, data: Path) -> None:
        self.data = data
        data.mkdir(parents=True, exist_ok=True)
        self.holder = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sleep", "3600"])
        own = os.readlink("/proc/self/ns/mnt")
        for _ in range(200):  # until unshare has entered the new namespace and exec'ed sleep
            if os.readlink(f"/proc/{self.holder.pid}/ns/mnt") != own:
                break
            self.holder.poll()
            assert self.holder.returncode is None, "unshare -m failed"
            time.sleep(0.01)
        else:
            raise AssertionError("unshare -m did not enter a new mount namespace")
        self.run("mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs",
                 str(data))

    def prefix(self, workdir: Path) -> list[str]:
        """Run a command in the namespace, in ``workdir`` (nsenter execs it: same pid)."""
        return ["nsenter", "-t", str(self.holder.pid), "-m", f"--wd={workdir}"]

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", *cmd],
                              capture_output=True, text=True, check=check, timeout=30)

    def fill(self) -> None:
        """Write zeros until the tmpfs is full (dd then fails with "No space left")."""
        done = self.run("dd", "if=/dev/zero", f"of={self.data / 'filler'}", "bs=64k",
                        check=False)
        assert "No space left" in done.stderr, done.stderr

    def free(self) -> None:
        self.run("rm", "-f", str(self.data / "filler"))

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait(5)



@contextlib.contextmanager
def mounted_namespace(data: Path) -> Iterator[Namespace]:
    """A Namespace with its tmpfs at ``data``; skipped without root or util-linux outside CI,
    failed in CI (the real disk faults must run there)."""
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the real disk-fault tests, but: {reason}")
        pytest.skip(reason)
    ns = Namespace(data)
    try:
        yield ns
    finally:
        ns.close()
