"""The web_search tool: numbered results (title, address, snippet) from the user's own
search service, SearXNG's JSON API today; another service fits behind ``SearchBackend``.

Place in the flow: the model's call -> ToolRunner (policy; ``ask`` by default) ->
``WebSearch.web_search`` -> the configured backend -> the results, fenced as data by the
ToolRunner. The service is the one in ``tools.web.search_url``, which the user chose and the
model cannot change, so it may be on a private address: it is not checked against
``allow_private`` (the pages it lists are, when web_fetch reads them). No proxy from the
environment, no redirects followed, the answer capped like a page.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from yarl import URL

from ganglion.config import shown_url
from ganglion.config_tools import WebToolsConfig
from ganglion.durations import duration_text
from ganglion.errors import BadArguments, ToolError
from ganglion.tools.registry import ToolFunc
from ganglion.tools.web_text import one_line
from ganglion.untrusted import fenced

MAX_QUERY = 400
MAX_TITLE = 200
MAX_SNIPPET = 400
MAX_URL = 500
MAX_ANSWER_BYTES = 2_000_000


@dataclass(frozen=True, slots=True)
class SearchResult:
    title: str
    url: str
    snippet: str


class SearchBackend(Protocol):
    """A search service: results for a query, or a ToolError saying what is wrong."""

    label: str
    """How the service is named to the model and the approver ("SearXNG at http://...")."""

    async def search(self, session: aiohttp.ClientSession, query: str,
                     count: int) -> list[SearchResult]: ...


class Searxng:
    """SearXNG's JSON API: ``GET <search_url>/search?q=...&format=json``.

    SearXNG answers JSON only when its settings.yml lists ``json`` under
    ``search.formats``; otherwise it says 403, and the error says so.
    """

    def __init__(self, base_url: str) -> None:
        url = URL(base_url)
        self.url = url if url.path.rstrip("/").endswith("/search") else (
            url.with_path(url.path.rstrip("/") + "/search"))
        self.label = f"SearXNG at {shown_url(base_url)}"

    async def search(self, session: aiohttp.ClientSession, query: str,
                     count: int) -> list[SearchResult]:
        params = {"q": query, "format": "json"}
        async with session.get(self.url, params=params, allow_redirects=False) as response:
            if response.status == 403:
                raise ToolError(f"{self.label} refused to answer in JSON (403): in SearXNG's "
                                "settings.yml, search.formats must include json")
            if response.status != 200:
                raise ToolError(f"{self.label} answered {response.status} "
                                f"{one_line(response.reason or '', 80)}")
            body = await response.content.read(MAX_ANSWER_BYTES + 1)
        if len(body) > MAX_ANSWER_BYTES:
            raise ToolError(f"{self.label} sent more than {MAX_ANSWER_BYTES:,} bytes")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise ToolError(f"{self.label} did not answer JSON; is search_url its "
                            "address?") from None
        items = data.get("results") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise ToolError(f"{self.label} answered JSON without a list of results")
        results = []
        for item in items:
            result = _result(item)
            if result is not None:
                results.append(result)
            if len(results) == count:
                break
        return results


def _result(item: Any) -> SearchResult | None:
    """One result as the model may read it, or None for one without a web address."""
    if not isinstance(item, dict):
        return None
    url, title, snippet = (item.get(k) for k in ("url", "title", "content"))
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        return None
    return SearchResult(one_line(title if isinstance(title, str) else "", MAX_TITLE) or url,
                        one_line(url, MAX_URL),
                        one_line(snippet if isinstance(snippet, str) else "", MAX_SNIPPET))


def backend_for(cfg: WebToolsConfig) -> SearchBackend | None:
    """The configured search service, or None (then web_search is not offered)."""
    return Searxng(cfg.search_url) if cfg.search_url else None


class WebSearch:
    """``web_search`` through one backend."""

    def __init__(self, backend: SearchBackend, cfg: WebToolsConfig) -> None:
        self.backend = backend
        self.cfg = cfg

    def tools(self) -> list[ToolFunc]:
        return [self.web_search]

    def describe(self, args: Mapping[str, Any]) -> str:
        """How a call is shown for approval: the query and where it goes."""
        return fenced(str(args.get("query", "")), "text") + f"\n\nsent to {self.backend.label}"

    async def web_search(self, query: str, count: int = 5) -> str:
        """Search the web. Returns numbered results, each with its title, address and a
        snippet; read a result in full with web_fetch.

        Args:
            query: what to search for, as typed in a search engine
            count: how many results to return (at most the configured limit)
        """
        query = " ".join(query.split())
        if not query:
            raise BadArguments("the query is empty")
        if len(query) > MAX_QUERY:
            raise BadArguments(f"the query is {len(query)} characters; the limit is {MAX_QUERY}")
        if count < 1:
            raise BadArguments("count must be at least 1")
        count = min(count, self.cfg.max_results)
        limit = f"{duration_text(self.cfg.timeout_seconds)} (tools.web.timeout_seconds)"
        try:
            async with aiohttp.ClientSession(
                trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": self.cfg.user_agent, "Accept": "application/json"},
            ) as session, asyncio.timeout(self.cfg.timeout_seconds):
                results = await self.backend.search(session, query, count)
        except TimeoutError:
            raise ToolError(f"{self.backend.label} did not answer within {limit}; web search "
                            "is unavailable for now") from None
        except aiohttp.ClientError as err:
            why = err.strerror if isinstance(err, aiohttp.ClientConnectorError) else None
            raise ToolError(f"{self.backend.label} cannot be reached ({why or type(err).__name__})"
                            "; web search is unavailable for now") from None
        if not results:
            return f"No results for {query!r} ({self.backend.label})."
        lines = [f"Results for {query!r} ({self.backend.label}):"]
        for n, result in enumerate(results, 1):
            lines.append(f"\n{n}. {result.title}\n   {result.url}")
            if result.snippet:
                lines.append(f"   {result.snippet}")
        return "\n".join(lines)
