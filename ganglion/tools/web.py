"""The web_fetch tool: a page's title, final address and readable text, in parts.

Place in the flow: the model's call -> ToolRunner (policy; ``ask`` by default, so a person
sees the URL first) -> ``WebFetch.web_fetch`` -> one HTTP session of its own (no proxy from
the environment, no cookies, names resolved through ``web_guard.GuardedResolver``) ->
redirects followed one hop at a time, each checked -> a body read up to ``max_bytes`` within
``timeout_seconds`` -> ``web_text`` -> the result, fenced as data by the ToolRunner.

Paging: the first part of a page is always fetched anew; the next parts come from a copy of
the page's text kept for a few minutes (a handful of pages at most), so a long page is read
consistently and downloaded once. A copy that has gone is fetched again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from ganglion.config_tools import WebToolsConfig
from ganglion.durations import duration_text
from ganglion.errors import BadArguments, ToolError
from ganglion.tools.policy import Describe
from ganglion.tools.registry import ToolFunc
from ganglion.tools.web_guard import AddressGuard, AddressRefused, GuardedResolver
from ganglion.tools.web_search import WebSearch, backend_for
from ganglion.tools.web_text import kind_of, looks_binary, one_line, readable, sniff
from ganglion.untrusted import fenced

log = logging.getLogger(__name__)

REDIRECTS = (301, 302, 303, 307, 308)
ACCEPT = ("text/html,application/xhtml+xml,application/json;q=0.9,text/*;q=0.8,"
          "application/xml;q=0.8,*/*;q=0.5")
MAX_URL_SHOWN = 500
KEPT_PAGES = 4
KEEP_SECONDS = 300.0
CHUNK = 65536


@dataclass(frozen=True, slots=True)
class Page:
    """What one fetch found: the header lines for the model and the text to page through."""

    head: str
    text: str


class WebFetch:
    """``web_fetch`` for one config; keeps the last few pages' text for reading on."""

    def __init__(self, cfg: WebToolsConfig) -> None:
        self.cfg = cfg
        self.guard = AddressGuard(cfg.allow_private)
        self._pages: OrderedDict[str, tuple[float, Page]] = OrderedDict()

    def tools(self) -> list[ToolFunc]:
        return [self.web_fetch]

    def describe(self, args: Mapping[str, Any]) -> str:
        """How a call is shown for approval: the address, and where reading starts."""
        url = str(args.get("url", ""))
        offset = args.get("offset") or 0
        host = _host(url)
        shown = fenced(url, "text") + (f"\n\nhost: {host}" if host else "")
        return shown + (f", from character {offset:,}" if offset else "")

    async def web_fetch(self, url: str, offset: int = 0) -> str:
        """Fetch a web page (http or https) and return its final address, title and text:
        HTML as Markdown-like text, JSON pretty-printed; images, PDFs and other files are
        only described. A long page comes in parts: the answer says which offset reads on.

        Args:
            url: the full address, starting with https:// or http://
            offset: the character of the page's text to start from (0 = the beginning)
        """
        if offset < 0:
            raise BadArguments("offset counts from 0")
        target = _parse(url)
        self.guard.check_url(target)
        key = str(target)
        page = self._kept(key) if offset else None
        if page is None:
            page = await self._load(target)
            self._keep(key, page)
        return _part(page, offset, self.cfg.page_chars)

    def _kept(self, url: str) -> Page | None:
        entry = self._pages.get(url)
        if entry is None or time.monotonic() - entry[0] > KEEP_SECONDS:
            return None
        return entry[1]

    def _keep(self, url: str, page: Page) -> None:
        self._pages[url] = (time.monotonic(), page)
        self._pages.move_to_end(url)
        while len(self._pages) > KEPT_PAGES:
            self._pages.popitem(last=False)

    def _session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.guard),
                                         use_dns_cache=False, limit=4)
        return aiohttp.ClientSession(
            connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": self.cfg.user_agent, "Accept": ACCEPT},
            timeout=aiohttp.ClientTimeout(total=None))

    async def _load(self, url: URL) -> Page:
        deadline = asyncio.get_running_loop().time() + self.cfg.timeout_seconds
        hops: list[URL] = []
        async with self._session() as session:
            while True:
                self.guard.check_url(url)
                response = await self._request(session, url, deadline)
                log.debug("web_fetch %s: %s %s", url, response.status,
                          response.headers.get("Content-Type", "(no type)"))
                try:
                    location = response.headers.get("Location")
                    if response.status not in REDIRECTS or not location:
                        return await self._page(response, url, hops, deadline)
                finally:
                    response.close()  # never drain what was not read: the connection goes
                if len(hops) >= self.cfg.max_redirects:
                    raise ToolError(f"more than {self.cfg.max_redirects} redirects (tools.web."
                                    f"max_redirects); the last one led to {_shown(location)}")
                hops.append(url)
                try:
                    url = url.join(URL(location))
                except ValueError:
                    raise ToolError(f"{_shown(url)} redirected to an address that is not "
                                    f"valid: {_shown(location)}") from None

    async def _request(self, session: aiohttp.ClientSession, url: URL,
                       deadline: float) -> aiohttp.ClientResponse:
        host = url.raw_host or ""
        try:
            async with asyncio.timeout_at(deadline):
                return await session.get(url, allow_redirects=False)
        except TimeoutError:
            raise ToolError(f"{host} did not answer within {self._limit()}") from None
        except aiohttp.ClientConnectorDNSError as err:
            if isinstance(err.os_error, AddressRefused):
                raise ToolError(str(err.os_error)) from None
            raise ToolError(f"cannot find {host}: the name does not resolve") from None
        except aiohttp.ClientConnectorError as err:
            raise ToolError(f"cannot connect to {host}: {err.strerror or err}") from None
        except aiohttp.ClientError as err:
            raise ToolError(f"fetching {_shown(url)} failed: {type(err).__name__}: "
                            f"{one_line(str(err), 300)}") from None

    def _limit(self) -> str:
        return f"{duration_text(self.cfg.timeout_seconds)} (tools.web.timeout_seconds)"

    async def _page(self, response: aiohttp.ClientResponse, url: URL, hops: list[URL],
                    deadline: float) -> Page:
        declared = response.headers.get("Content-Type")
        media = response.content_type.lower() if declared else ""
        kind = kind_of(media) if declared else ""
        length = response.content_length
        lines = [f"URL: {_shown(url)}"]
        if hops:
            lines.append(f"Redirected from: {_shown(hops[0])} ({len(hops)} redirect"
                         f"{'s' if len(hops) > 1 else ''})")
        if response.status != 200:
            lines.append(f"Status: {response.status} {one_line(response.reason or '', 80)}")
        if kind == "other" and length is not None:  # described, nothing downloaded
            lines.append(f"Type: {one_line(media, 100)}, {length:,} bytes")
            return Page("\n".join([*lines, _not_shown(media)]), "")
        body, cut = await self._read(response, deadline)
        if not kind:
            kind = sniff(body)
            media = {"html": "text/html", "json": "application/json",
                     "text": "text/plain"}.get(kind, "application/octet-stream")
            media += " (not declared)"
        if kind != "other" and looks_binary(body):
            kind = "other"
        size = f"{len(body):,} bytes" + (f" ({cut})" if cut else "")
        lines.append(f"Type: {one_line(media, 100)}, {size}")
        if kind == "other":
            return Page("\n".join([*lines, _not_shown(media)]), "")
        text = await asyncio.to_thread(readable, body, kind, response.charset, url)
        if text.title:
            lines.insert(1, f"Title: {text.title}")
        return Page("\n".join(lines), text.text)

    async def _read(self, response: aiohttp.ClientResponse, deadline: float,
                    ) -> tuple[bytes, str]:
        """Up to ``max_bytes`` of the body, and what cut it short ("" if nothing did)."""
        cap = self.cfg.max_bytes
        body = bytearray()
        cut = ""
        try:
            async with asyncio.timeout_at(deadline):
                while len(body) <= cap:
                    chunk = await response.content.read(min(CHUNK, cap + 1 - len(body)))
                    if not chunk:
                        break
                    body += chunk
        except TimeoutError:
            cut = f"cut: the rest did not arrive within {self._limit()}"
        except aiohttp.ClientError as err:
            if not body:
                raise ToolError(f"reading {_shown(response.url)} failed: "
                                f"{type(err).__name__}") from None
            cut = f"cut: the connection failed ({type(err).__name__})"
        if len(body) > cap:
            del body[cap:]
            cut = f"cut at {cap:,} bytes, tools.web.max_bytes; the rest was not downloaded"
        return bytes(body), cut


def web_tools(cfg: WebToolsConfig) -> tuple[list[ToolFunc], dict[str, Describe]]:
    """web_fetch, and web_search when a search service is configured; how each call is shown
    for approval."""
    fetch = WebFetch(cfg)
    funcs = fetch.tools()
    describe: dict[str, Describe] = {"web_fetch": fetch.describe}
    backend = backend_for(cfg)
    if backend is not None:
        search = WebSearch(backend, cfg)
        funcs += search.tools()
        describe["web_search"] = search.describe
    return funcs, describe


def _parse(url: str) -> URL:
    text = url.strip()
    if not text:
        raise BadArguments("give the address to fetch, such as https://example.org/")
    try:
        parsed = URL(text)
    except (ValueError, TypeError) as err:
        raise BadArguments(f"not a valid URL: {err}") from None
    if not parsed.scheme and "." in text.split("/", 1)[0]:
        raise BadArguments(f"write the whole address, with its scheme: https://{text}")
    return parsed.with_fragment(None)


def _host(url: str) -> str:
    try:
        return URL(url.strip()).raw_host or ""
    except (ValueError, TypeError):
        return ""


def _shown(url: URL | str) -> str:
    return one_line(str(url), MAX_URL_SHOWN)


def _not_shown(media: str) -> str:
    return (f"\nNot shown: this is a {one_line(media, 100)} file, and web_fetch returns text, "
            "HTML and JSON only.")


def _part(page: Page, offset: int, size: int) -> str:
    """The header and the text from ``offset``, about ``size`` characters, cut after a line
    where one ends in the part's second half; a note says where to read on."""
    total = len(page.text)
    if not page.text:
        return page.head if offset == 0 else f"{page.head}\n\n(the page has no text)"
    if offset >= total:
        raise BadArguments(f"offset {offset:,} is past the end: the page's text has "
                           f"{total:,} characters")
    end = min(offset + size, total)
    if end < total:
        newline = page.text.rfind("\n", offset + size // 2, end)
        end = newline + 1 if newline > 0 else end
    shown = page.head
    if offset or end < total:
        shown += f"\nText: characters {offset:,} to {end:,} of {total:,}"
    shown += "\n\n" + page.text[offset:end]
    if end < total:
        shown += (f"\n\n[… the page goes on ({total:,} characters in all): call web_fetch "
                  f"with the same url and offset={end} to read on]")
    return shown
