"""Files of Matrix media events fetched from the homeserver: authenticated, streamed, bounded.

Place in the flow: ``attachments`` asks ``open`` for the bytes behind an ``mxc://`` URL and
streams them into the media store. Why not nio's ``AsyncClient.download``: it reads the
whole body (into memory or a file) with no limit, and an event's ``info.size`` may lie;
here the body is read in chunks and the store stops it at ``media.max_bytes``. The request
goes to the authenticated media API (``/_matrix/client/v1/media/download``, MSC3916, the
one nio 0.26 uses too) with the access token in a header, through nio's own HTTP session
(its TLS and proxy settings); only a homeserver that does not know that API (404 with
``M_UNRECOGNIZED``, or a 404/405 with no Matrix error at all: older than Matrix 1.11) is
asked on the legacy unauthenticated ``/_matrix/media/v3/download``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
from nio import AsyncClient

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
AUTHENTICATED = "/_matrix/client/v1/media/download"
LEGACY = "/_matrix/media/v3/download"
_MXC = re.compile(r"\Amxc://([A-Za-z0-9.\-:\[\]]+)/([A-Za-z0-9_\-]+)\Z")
TIMEOUT = aiohttp.ClientTimeout(total=600, connect=15, sock_read=30)
"""A stalled homeserver fails the attempt (and is asked again) instead of holding it."""


class DownloadFailed(Exception):
    """The file could not be fetched; ``transient`` when asking again may work (5xx, 429,
    a lost connection, a time-out)."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True, slots=True)
class Body:
    """A download in progress: its declared length (if any) and its chunks."""

    length: int | None
    chunks: AsyncIterator[bytes]


def parse_mxc(url: str) -> tuple[str, str] | None:
    """(server name, media id) of an ``mxc://`` URL; None for anything else."""
    found = _MXC.match(url)
    return (found.group(1), found.group(2)) if found else None


@asynccontextmanager
async def open_media(client: AsyncClient, mxc: str) -> AsyncIterator[Body]:
    """The body behind ``mxc``, open while the block runs. DownloadFailed when the
    homeserver refuses it (a transient failure of the stream itself arrives as aiohttp's
    ClientError or TimeoutError from the chunks)."""
    parts = parse_mxc(mxc)
    if parts is None:
        raise DownloadFailed(f"the event's file URL is not an mxc:// URL: {mxc[:80]!r}",
                             transient=False)
    session = client.client_session
    if session is None:  # nio opens it at the first sync, which brought this event
        raise DownloadFailed("the Matrix client has no HTTP session", transient=True)
    server, media_id = (quote(p, safe="") for p in parts)
    headers = {"Authorization": f"Bearer {client.access_token}"}
    base = client.homeserver.rstrip("/")
    try:
        async with session.get(f"{base}{AUTHENTICATED}/{server}/{media_id}", headers=headers,
                               ssl=client.ssl, proxy=client.proxy, timeout=TIMEOUT) as resp:
            if not await _unsupported(resp):
                _check(resp)
                yield Body(resp.content_length, resp.content.iter_chunked(CHUNK))
                return
        log.info("matrix: %s does not serve the authenticated media API; using the legacy "
                 "one for %s", base, mxc)
        async with session.get(f"{base}{LEGACY}/{server}/{media_id}",
                               params={"allow_remote": "true"}, ssl=client.ssl,
                               proxy=client.proxy, timeout=TIMEOUT) as resp:
            _check(resp)
            yield Body(resp.content_length, resp.content.iter_chunked(CHUNK))
    except (aiohttp.ClientError, TimeoutError) as err:
        raise DownloadFailed(f"the homeserver did not answer ({type(err).__name__}: {err})",
                             transient=True) from err


async def _unsupported(resp: aiohttp.ClientResponse) -> bool:
    """Whether an answer of the authenticated API means "no such API here"."""
    if resp.status not in (404, 405):
        return False
    try:
        body = await resp.json(content_type=None)
    except ValueError:
        return True  # not a Matrix error: the path itself is unknown
    code = body.get("errcode") if isinstance(body, dict) else None
    # A missing file is M_NOT_FOUND: that is an answer, not an unknown API.
    return code in (None, "M_UNRECOGNIZED")


def _check(resp: aiohttp.ClientResponse) -> None:
    if resp.status == 200:
        return
    transient = resp.status >= 500 or resp.status in (408, 429)
    what = {404: "the file is not on the homeserver (deleted, or never uploaded)",
            403: "the homeserver refused access to the file"}.get(
        resp.status, f"the homeserver answered {resp.status} {resp.reason or ''}".rstrip())
    raise DownloadFailed(what, transient=transient)
