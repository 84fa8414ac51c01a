"""The endpoint pool: configured and added endpoints, model discovery, ids, aliases, health.

Place in the flow: the LLM client asks the pool which endpoints to try for a model
(``candidates``) and reports back how each attempt went (``mark_ok`` / ``mark_failed``); the
model commands list, add and remove endpoints and aliases through it. Model ids, added
endpoints, the last model lists and aliases persist in SQLite (``storage/catalog.py``), so
routing knows every endpoint's models at start, before discovery has answered.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError

from ganglion.config import EndpointConfig, LLMConfig, url_secrets
from ganglion.errors import InputRejected
from ganglion.llm.failures import HINT_NOT_FOUND, HINT_REJECTED, Failure, classify
from ganglion.storage.catalog import Alias, Catalog

if TYPE_CHECKING:
    from openai import AsyncOpenAI

log = logging.getLogger(__name__)

DISCOVERY_TIMEOUT_SECONDS = 5.0
_CONNECT_TIMEOUT_SECONDS = 10.0
MAX_ADDED_ENDPOINTS = 32


class FifoLimiter:
    """At most ``limit`` holders at once, admitted strictly in arrival order.

    A released slot is handed straight to the oldest waiter, so a newcomer can never
    overtake a request that is already queued.
    """

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            else:
                self.release()  # the slot reached us just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


@dataclass(slots=True)
class Endpoint:
    """One OpenAI-compatible server: its HTTP client, its concurrency cap, what it offers."""

    config: EndpointConfig
    limiter: FifoLimiter
    added_by: str | None = None
    """Who added it at run time; None for the endpoints of config.yaml."""
    models: list[str] | None = None
    """Model names it listed at the last discovery; None until one succeeded."""
    unhealthy_until: float = 0.0
    problem: str = ""
    """Why it was last marked unhealthy, in words for the user."""

    _client: AsyncOpenAI | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def client(self) -> AsyncOpenAI:
        """The HTTP client, made at first use: the openai package is imported off the start-up
        path (it is most of a cold start; the App warms it up in a thread once ready)."""
        if self._client is None:
            import openai  # noqa: PLC0415

            config = self.config
            self._client = openai.AsyncOpenAI(
                base_url=config.base_url,
                api_key=config.api_key or "none",
                # timeout_seconds bounds each wait (first byte, next chunk), not the whole
                # answer; a dead host should not hold a turn for that long, though.
                timeout=openai.Timeout(
                    config.timeout_seconds,
                    connect=min(config.timeout_seconds, _CONNECT_TIMEOUT_SECONDS),
                ),
                max_retries=0,  # retries and failover are the LLM client's
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


def make_endpoint(config: EndpointConfig, added_by: str | None = None) -> Endpoint:
    return Endpoint(config, FifoLimiter(config.max_concurrency), added_by)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: int
    name: str
    endpoints: list[str]
    aliases: list[str]


class UnknownModel(InputRejected):
    """A model reference (number, name or alias) that matches nothing; says what to do."""


class EndpointPool:
    """Every endpoint in failover order: those of config.yaml first, then those added."""

    def __init__(
        self,
        config: LLMConfig,
        catalog: Catalog | None = None,
        *,
        on_secret: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_failed: Callable[[str], None] | None = None,
    ) -> None:
        self.on_failed = on_failed
        """Told the name of each endpoint a request failed at, after its retries."""
        self.default_model = config.model
        self.cooling_seconds = config.health_cooling_seconds
        self._catalog = catalog
        self._on_secret = on_secret
        self._clock = clock
        self._endpoints = [make_endpoint(e) for e in config.endpoints]
        self._configured = {e.name for e in config.endpoints}
        self._retired: list[Endpoint] = []
        self._ids: dict[str, int] = {}
        self._aliases: dict[str, Alias] = {}
        self.discovered = asyncio.Event()
        """Set once the first discovery round has finished (answered or failed)."""

    async def load(self) -> None:
        """Added endpoints, last known model lists, ids and aliases from the catalog."""
        if self._catalog is None:
            return
        for stored in await self._catalog.endpoints():
            if stored.name in self._configured:
                log.warning("endpoint %s was added at run time and is now in config.yaml too; "
                            "the configured one wins", stored.name)
                continue
            self.remember_secret(stored.api_key)
            self.remember_url(stored.base_url)
            config = EndpointConfig(name=stored.name, base_url=stored.base_url,
                                    api_key=stored.api_key)
            self._endpoints.append(make_endpoint(config, stored.added_by))
        listed = await self._catalog.endpoint_models()
        for ep in self._endpoints:
            if ep.name in listed:
                ep.models = [name for _id, name in listed[ep.name]]
        self._ids = await self._catalog.model_ids()
        self._aliases = {a.alias.lower(): a for a in await self._catalog.aliases()}

    async def close(self) -> None:
        for ep in [*self._endpoints, *self._retired]:
            await ep.close()
        self._retired.clear()

    # -- endpoints ---------------------------------------------------------------------------

    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints)

    def get(self, name: str) -> Endpoint | None:
        return next((ep for ep in self._endpoints if ep.name == name), None)

    def secrets(self) -> list[str]:
        """Every endpoint key worth masking (configured and added), and the credentials of
        a base_url that carries them, whole and their password alone."""
        keys = set()
        for ep in [*self._endpoints, *self._retired]:
            keys |= {ep.config.api_key, *url_secrets(ep.config.base_url)}
        return [k for k in keys if len(k) >= 4 and k.lower() not in ("none", "null")]

    async def add(self, name: str, base_url: str, api_key: str, added_by: str) -> Endpoint:
        """Add and persist an endpoint (its key is masked from here on); discover its models."""
        self.remember_secret(api_key)
        self.remember_url(base_url)
        try:
            config = EndpointConfig(name=name, base_url=base_url.rstrip("/"), api_key=api_key)
        except ValidationError as err:
            bad = {str(e["loc"][0]) for e in err.errors() if e["loc"]}
            fields = [shown for key, shown in (("name", "name"), ("base_url", "URL"),
                                               ("api_key", "key")) if key in bad]
            raise InputRejected(
                f"Invalid {' and '.join(fields) or 'endpoint'}: a name is 1-64 letters, "
                "digits, `.`, `_` or `-`; the URL starts with http:// or https:// (usually "
                "ending in /v1)."
            ) from None
        if self.get(config.name) is not None:
            raise InputRejected(f"There is already an endpoint named '{config.name}'; "
                                "pick another name or remove that one first.")
        if sum(ep.added_by is not None for ep in self._endpoints) >= MAX_ADDED_ENDPOINTS:
            raise InputRejected(f"At most {MAX_ADDED_ENDPOINTS} endpoints can be added; "
                                "remove one first.")
        if self._catalog is not None:
            await self._catalog.add_endpoint(config.name, config.base_url, api_key, added_by)
        ep = make_endpoint(config, added_by)
        self._endpoints.append(ep)
        log.info("endpoint %s added at %s by %s", config.name, config.shown_url, added_by)
        await self.discover([config.name])
        return ep

    async def remove(self, name: str) -> Endpoint:
        ep = self.get(name)
        if ep is None:
            raise InputRejected(f"There is no endpoint named '{name}'; /models lists them.")
        if ep.added_by is None:
            raise InputRejected(f"Endpoint '{name}' comes from config.yaml (llm.endpoints); "
                                "remove it there and restart.")
        if self._catalog is not None:
            await self._catalog.remove_endpoint(name)
        self._endpoints.remove(ep)
        # A turn may still be streaming from it: its client is closed at shutdown.
        self._retired.append(ep)
        log.info("endpoint %s removed", name)
        return ep

    def remember_secret(self, key: str) -> None:
        if self._on_secret is not None and len(key) >= 4:
            self._on_secret(key)

    def remember_url(self, base_url: str) -> None:
        """The credentials of ``https://user:password@host`` join the mask, as keys do."""
        for part in url_secrets(base_url):
            self.remember_secret(part)

    # -- routing and health --------------------------------------------------------------------

    def candidates(self, model: str) -> list[Endpoint]:
        """Endpoints to try for ``model``, in order: healthy before cooling, config order.

        Endpoints known not to list the model are left out, unless none lists it (names may
        differ, as "llama3.1" and "llama3.1:latest" do): then every endpoint is tried. A
        cooling endpoint is skipped while another can answer and tried last otherwise, so a
        server that is back is used again without waiting for the cooling period to end.
        """
        offering = [ep for ep in self._endpoints if ep.models is None or model in ep.models]
        if not any(ep.models is not None for ep in offering):
            offering = list(self._endpoints)
        now = self._clock()
        return sorted(offering, key=lambda ep: ep.unhealthy_until > now)

    def is_healthy(self, ep: Endpoint) -> bool:
        return ep.unhealthy_until <= self._clock()

    def cooling_left(self, ep: Endpoint) -> float:
        return max(0.0, ep.unhealthy_until - self._clock())

    def mark_ok(self, ep: Endpoint) -> None:
        if ep.unhealthy_until:
            log.info("endpoint %s is healthy again", ep.name)
        ep.unhealthy_until = 0.0
        ep.problem = ""

    def mark_failed(self, ep: Endpoint, failure: Failure) -> None:
        """After its retries: skip ``ep`` for the cooling period (unless the request was bad)."""
        if self.on_failed is not None:
            self.on_failed(ep.name)
        if failure.hint in (HINT_NOT_FOUND, HINT_REJECTED):
            return  # a bad model name or parameter is the request's fault, not the server's
        ep.unhealthy_until = self._clock() + self.cooling_seconds
        ep.problem = failure.what
        # INFO, not WARNING: the client already warned about each failed attempt.
        log.info("endpoint %s marked unhealthy for %.0f s: %s", ep.name,
                 self.cooling_seconds, failure.what)

    # -- discovery -------------------------------------------------------------------------------

    async def discover(self, names: list[str] | None = None) -> dict[str, str | None]:
        """GET {base_url}/models on the endpoints (all by default), at once.

        Returns each endpoint's problem in words, or None when it answered. New model names
        get ids in endpoint order, then listing order, so numbering does not depend on which
        server answered first.
        """
        targets = [ep for ep in self._endpoints if names is None or ep.name in names]
        results = await asyncio.gather(*(self._list_models(ep) for ep in targets))
        problems: dict[str, str | None] = {}
        for ep, (listed, problem) in zip(targets, results, strict=True):
            problems[ep.name] = problem
            if listed is None or self.get(ep.name) is not ep:
                continue  # failed, or removed meanwhile
            ep.models = listed
            if self._catalog is not None:
                self._ids.update(await self._catalog.set_endpoint_models(ep.name, listed))
            else:
                for model in listed:
                    self._ids.setdefault(model, len(self._ids) + 1)
        if names is None:
            self.discovered.set()
        return problems

    async def _list_models(self, ep: Endpoint) -> tuple[list[str] | None, str | None]:
        import openai  # noqa: PLC0415  (see Endpoint.client)

        timeout = min(ep.config.timeout_seconds, DISCOVERY_TIMEOUT_SECONDS)
        try:
            body = await ep.client.get("/models", cast_to=object, options={"timeout": timeout})
        except (openai.APIError, ValueError) as err:
            failure = classify(err, False, timeout)
            self.mark_failed(ep, failure)
            log.warning("endpoint %s: model discovery failed: %s", ep.name, failure.what)
            return None, f"{failure.what}. {failure.hint}"
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            failure = Failure("its /models answer has no model list",
                              "Check that base_url ends in /v1.", False)
            self.mark_failed(ep, failure)
            return None, f"{failure.what}. {failure.hint}"
        listed: list[str] = []
        for item in data:
            model = item.get("id") if isinstance(item, dict) else None
            if isinstance(model, str) and model and model not in listed:
                listed.append(model)
        self.mark_ok(ep)
        log.info("endpoint %s offers %d model(s)", ep.name, len(listed))
        return listed, None

    # -- models and aliases ------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """The models some endpoint offers now, by id."""
        where: dict[str, list[str]] = {}
        for ep in self._endpoints:
            for model in ep.models or ():
                where.setdefault(model, []).append(ep.name)
        aliases: dict[str, list[str]] = {}
        for alias in self._aliases.values():
            aliases.setdefault(alias.model, []).append(alias.alias)
        infos = [ModelInfo(self._ids.get(m, 0), m, eps, sorted(aliases.get(m, [])))
                 for m, eps in where.items()]
        return sorted(infos, key=lambda i: (i.id, i.name))

    def model_id(self, name: str) -> int | None:
        return self._ids.get(name)

    def offered(self, name: str) -> bool:
        return any(name in (ep.models or ()) for ep in self._endpoints)

    def resolve(self, ref: str) -> str:
        """The model name for a number, a name or an alias; UnknownModel says what to do."""
        ref = ref.strip()
        if ref.isdigit():
            for name, model_id in self._ids.items():
                if model_id == int(ref):
                    return name
            raise UnknownModel(f"There is no model number {ref}; /models lists them.")
        if ref in self._ids or ref == self.default_model or self.offered(ref):
            return ref
        alias = self._aliases.get(ref.lower())
        if alias is not None:
            return alias.model
        folded = [name for name in self._ids if name.lower() == ref.lower()]
        if len(folded) == 1:
            return folded[0]
        known = [*self._ids, *(a.alias for a in self._aliases.values())]
        close = difflib.get_close_matches(ref, known, n=3)
        hint = f" Did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
        raise UnknownModel(f"No model or alias `{ref}`.{hint} /models lists them.")

    def aliases(self) -> list[Alias]:
        return sorted(self._aliases.values(), key=lambda a: a.alias.lower())

    async def set_alias(self, alias: str, model: str, created_by: str) -> None:
        if self._catalog is not None:
            await self._catalog.set_alias(alias, model, created_by)
        self._aliases[alias.lower()] = Alias(alias, model, created_by)

    async def remove_alias(self, alias: str) -> Alias | None:
        found = self._aliases.pop(alias.lower(), None)
        if found is not None and self._catalog is not None:
            await self._catalog.remove_alias(found.alias)
        return found
