"""What every benchmark here shares: reading a process from /proc, waiting for a port,
printing (and optionally writing) the figures."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fd_census(pid: int, peer_port: int) -> dict[str, int]:
    """Open file descriptors of ``pid``: all of them, and how many are TCP connections to
    ``peer_port`` (the model client's keep-alive pool, which grows and shrinks by itself)."""
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed meanwhile
            continue
    peers = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == peer_port:
                peers.add(f"socket:[{fields[9]}]")
    return {"total": len(links), "to_peer": sum(link in peers for link in links)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


async def wait_port(port: int, timeout: float = 20) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.02)
    raise TimeoutError(f"nothing listens on {port}")


def report(results: dict[str, Any], json_path: Path | None) -> None:
    """The figures as JSON on stdout, and in ``json_path`` when given."""
    text = json.dumps(results, indent=2)
    print(text)
    if json_path:
        json_path.write_text(text)
