"""Tell a service manager how the daemon is doing: systemd's notify protocol (NOTIFY_SOCKET)."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*states: str) -> None:
    """Send ``READY=1``, ``STOPPING=1``, ``STATUS=...`` to $NOTIFY_SOCKET; nothing without it.

    systemd sets it for ``Type=notify`` (``NotifyAccess=all`` under ``uv run``, whose child
    the daemon is); the tests' harness sets it to learn, as an event, when the start is over.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):  # Linux's abstract namespace, as systemd writes it
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(states).encode(), socket.MSG_DONTWAIT, address)
    except OSError as err:
        # A manager that went away must not take the daemon with it.
        log.warning("could not notify the service manager at %s: %s", address, err)
