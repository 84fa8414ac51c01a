"""Commands about models and endpoints: /models, /model, /ask, /aliases, /add_endpoint ...

Place in the flow: the worker runs these through the command table, before and without the
model (but for ``/ask``). The thread's chosen model is kept here and looked up by the worker
for every turn (``model_for``).

``/add_endpoint`` carries an API key, so: the key is masked in the logs before anything else
happens, never repeated in a reply, wiped from the stored inbox text, and in Matrix the
command is accepted only in an end-to-end encrypted room (``Inbound.meta["encrypted"] ==
"1"``) and its event is redacted through ``redact`` (set by the composition root when the
Matrix interface offers it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable

from ganglion.access import Access
from ganglion.ask_params import ASK_USAGE, parse_ask
from ganglion.commands import CommandTable, Handler, Rank, parse_command
from ganglion.durations import duration_text
from ganglion.errors import InputRejected
from ganglion.llm.client import LLMClient
from ganglion.llm.endpoints import DISCOVERY_TIMEOUT_SECONDS, Endpoint, EndpointPool
from ganglion.messages import Inbound, Source, ThreadId
from ganglion.storage.catalog import Catalog
from ganglion.storage.inbox import Inbox

log = logging.getLogger(__name__)

Redactor = Callable[[ThreadId, str, str], Awaitable[str]]
"""(room thread id, event id, reason) -> "" once the homeserver accepted the redaction, else
why not, in words for the sender ("I lack the power to remove other people's messages ...")."""
TellOwner = Callable[[str], Awaitable[None]]
"""Tell matrix.owner something (in the conversation where they wrote last)."""

ENCRYPTED_META = "encrypted"
EVENT_ID_META = "event_id"
_ALIAS = re.compile(r"\A[A-Za-z][A-Za-z0-9_.:-]{0,63}\Z")


def _friendly(handler: Handler) -> Handler:
    """A refused input becomes the reply instead of "something went wrong"."""

    async def run(msg: Inbound, args: str) -> str:
        try:
            return await handler(msg, args)
        except InputRejected as err:
            return str(err)

    return run


class ModelCommands:
    def __init__(
        self, pool: EndpointPool, catalog: Catalog, llm: LLMClient, access: Access, inbox: Inbox
    ) -> None:
        self.pool = pool
        self.catalog = catalog
        self.llm = llm
        self.access = access
        self.inbox = inbox
        self.redact: Redactor | None = None
        self.tell_owner: TellOwner | None = None
        self._owner_told: set[ThreadId] = set()
        """Rooms the owner heard about (once each): the bot may not redact there."""
        self._thread_models: dict[ThreadId, str] = {}

    async def load(self) -> None:
        self._thread_models = await self.catalog.thread_models()

    def model_for(self, thread_id: ThreadId) -> str:
        """The model this thread's turns use: its /model choice, else llm.model."""
        return self._thread_models.get(thread_id, self.pool.default_model)

    def register(self, commands: CommandTable) -> None:
        add = commands.add
        add("models", "/models", "list models with their numbers, endpoints, aliases, health",
            _friendly(self._models))
        add("model", "/model [number|name|alias|default]",
            "show or set this thread's model", _friendly(self._model))
        add("ask", ASK_USAGE, "one question to a given model, with those parameters",
            _friendly(self._ask))
        add("aliases", "/aliases", "list model aliases", _friendly(self._aliases))
        add("alias", "/alias <alias> <model>", "name a model (number or name) with an alias",
            _friendly(self._alias), rank=Rank.TRUSTED)
        add("rm_alias", "/rm_alias <alias>", "remove an alias", _friendly(self._rm_alias),
            rank=Rank.TRUSTED)
        add("add_endpoint", "/add_endpoint <name> <url> <api_key>",
            "add an OpenAI-compatible endpoint (Matrix: encrypted rooms only; the message "
            "is redacted)", _friendly(self._add_endpoint), rank=Rank.TRUSTED,
            prepare=self._forget_key)
        add("remove_endpoint", "/remove_endpoint <name>", "remove an endpoint added at run time",
            _friendly(self._remove_endpoint), rank=Rank.TRUSTED)
        add("reload_models", "/reload_models", "ask every endpoint for its models again",
            _friendly(self._reload_models), rank=Rank.OWNER)

    # -- models ------------------------------------------------------------------------------

    async def _discovered(self) -> None:
        """Right after start the first discovery may still be running: wait for it, briefly
        (model numbers, and resolving one, come from it)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.pool.discovered.wait(), DISCOVERY_TIMEOUT_SECONDS + 1)

    async def _models(self, msg: Inbound, args: str) -> str:
        await self._discovered()
        infos = self.pool.models()
        lines = ["Models (use the number, the name or an alias with `/model` or `/ask`):"]
        for info in infos:
            alias = f"; aliases: {', '.join(info.aliases)}" if info.aliases else ""
            lines.append(f"- {info.id} `{info.name}` on {', '.join(info.endpoints)}{alias}")
        if not infos:
            lines.append("- none listed yet: no endpoint has answered GET /models.")
        lines += ["", "Endpoints (a request goes to the first healthy one offering the model):"]
        lines += [f"- {self._describe(ep)}" for ep in self.pool.endpoints()]
        lines += ["", self._thread_line(msg.thread_id)]
        return "\n".join(lines)

    def _describe(self, ep: Endpoint) -> str:
        origin = "config.yaml" if ep.added_by is None else f"added by {ep.added_by}"
        if not self.pool.is_healthy(ep):
            left = duration_text(self.pool.cooling_left(ep), round_up=True)
            health = f"unhealthy, skipped for {left} more ({ep.problem})"
        elif ep.problem:
            health = f"not answering ({ep.problem})"
        else:
            health = "healthy"
        count = "models unknown" if ep.models is None else f"{len(ep.models)} models"
        return f"{ep.name} ({origin}) {ep.config.shown_url}: {health}, {count}"

    def _thread_line(self, thread_id: ThreadId) -> str:
        name = self.model_for(thread_id)
        number = self.pool.model_id(name)
        shown = f"`{name}`" + (f" (model {number})" if number is not None else "")
        how = "chosen with /model" if thread_id in self._thread_models else "the default"
        line = f"This thread uses {shown}, {how}."
        if not self.pool.offered(name) and self.pool.models():
            line += " No endpoint lists it right now."
        return line

    async def _model(self, msg: Inbound, args: str) -> str:
        await self._discovered()
        tid = msg.thread_id
        if not args:
            return (self._thread_line(tid) + " Change it with `/model <number|name|alias>`; "
                    "`/model default` goes back to llm.model.")
        return await self.set_model(tid, args, msg.sender)

    async def set_model(self, tid: ThreadId, ref: str, by: str) -> str:
        """``/model <ref>``'s effect (the settings page's picker calls it too): the thread's
        model from a number, name or alias, or "default"; the reply's line. UnknownModel
        (an InputRejected) says what to do when nothing matches."""
        if ref.lower() in ("default", "reset"):
            await self.catalog.set_thread_model(tid, None)
            self._thread_models.pop(tid, None)
            return self._thread_line(tid)
        name = self.pool.resolve(ref)
        await self.catalog.set_thread_model(tid, name)
        self._thread_models[tid] = name
        log.info("[%s] model set to %s by %s", tid, name, by)
        return self._thread_line(tid)

    def chosen(self, thread_id: ThreadId) -> str | None:
        """The thread's /model choice; None when it uses llm.model."""
        return self._thread_models.get(thread_id)

    async def _ask(self, msg: Inbound, args: str) -> str:
        request = parse_ask(args)
        name = self.pool.resolve(request.model_ref)
        refusal = await self.access.check(msg)
        if refusal is not None:
            return refusal
        result = await self.llm.chat([{"role": "user", "content": request.prompt}],
                                     model=name, params=request.params, thread_id=msg.thread_id)
        return f"{result.answer.strip()}\n\n— `{name}` via {result.endpoint}"

    async def _reload_models(self, msg: Inbound, args: str) -> str:
        problems = await self.pool.discover()
        lines = [f"{len(self.pool.models())} models on {len(problems)} endpoints."]
        lines += [f"- {name}: {problem}" for name, problem in problems.items() if problem]
        return "\n".join(lines) + "\n\nSend `/models` for the list."

    # -- aliases -----------------------------------------------------------------------------

    async def _aliases(self, msg: Inbound, args: str) -> str:
        aliases = self.pool.aliases()
        if not aliases:
            return "No aliases yet; trusted users add them with `/alias <alias> <model>`."
        return "Aliases:\n" + "\n".join(f"- `{a.alias}` → `{a.model}`" for a in aliases)

    async def _alias(self, msg: Inbound, args: str) -> str:
        parts = args.split()
        if len(parts) != 2:
            raise InputRejected("Usage: `/alias <alias> <model number or name>`.")
        alias, ref = parts
        if not _ALIAS.match(alias):
            raise InputRejected("An alias starts with a letter and has up to 64 letters, "
                                "digits, `.`, `_`, `:` or `-`.")
        if self.pool.model_id(alias) is not None:
            raise InputRejected(f"`{alias}` is already a model's name; pick another alias.")
        name = self.pool.resolve(ref)
        await self.pool.set_alias(alias, name, msg.sender)
        return f"Alias `{alias}` → `{name}`."

    async def _rm_alias(self, msg: Inbound, args: str) -> str:
        if not args or len(args.split()) != 1:
            raise InputRejected("Usage: `/rm_alias <alias>`.")
        removed = await self.pool.remove_alias(args)
        if removed is None:
            raise InputRejected(f"There is no alias `{args}`; `/aliases` lists them.")
        return f"Removed alias `{removed.alias}` (it named `{removed.model}`)."

    # -- endpoints ---------------------------------------------------------------------------

    async def _add_endpoint(self, msg: Inbound, args: str) -> str:
        parts = args.split()
        if len(parts) != 3:
            raise InputRejected("Usage: `/add_endpoint <name> <url> <api_key>` (the key "
                                "`none` for servers without one).")
        name, url, key = parts
        if msg.source is Source.MATRIX and msg.meta.get(ENCRYPTED_META) != "1":
            raise InputRejected(
                "Refused: send `/add_endpoint` only in an end-to-end encrypted room; here the "
                "key would sit readable on the homeserver. Consider that key exposed and "
                "rotate it.")
        ep = await self.pool.add(name, url, key, msg.sender)
        if ep.models is None:
            return (f"Added endpoint '{ep.name}' at {ep.config.shown_url}, but it did not list "
                    f"its models: {ep.problem or 'no answer'}. `/reload_models` asks again; "
                    f"`/remove_endpoint {ep.name}` removes it.")
        listed = ", ".join(f"`{m}`" for m in ep.models[:20]) or "none"
        more = f" and {len(ep.models) - 20} more" if len(ep.models) > 20 else ""
        return (f"Added endpoint '{ep.name}' at {ep.config.shown_url} with {len(ep.models)} "
                f"models: {listed}{more}. The key is stored and will not be shown.")

    async def _forget_key(self, msg: Inbound, args: str) -> str:
        """Before anything else, whoever sent it: mask the key in the log, wipe it from the
        stored inbox text and from the Matrix room (redaction).

        Returns a note for the reply when the room still shows the key.
        """
        parts = args.split()
        for word in parts[2:]:  # the key, or what may be one
            if len(word) >= 8:
                self.pool.remember_secret(word)
        await self.inbox.redact(msg.id, _without_key(args))
        if msg.source is not Source.MATRIX:
            return ""
        event_id = msg.meta.get(EVENT_ID_META) or msg.client_id
        why = "I cannot remove messages here"
        if self.redact is not None:
            try:
                why = await self.redact(msg.thread_id, event_id, "contains an API key")
            except Exception:  # the user must hear about it; the command goes on
                log.exception("[%s] could not redact the /add_endpoint message", msg.thread_id)
        if not why:
            return ""
        log.warning("[%s] the /add_endpoint message %s was NOT redacted (%s); its sender should "
                    "delete it", msg.thread_id, event_id, why)
        await self._tell_owner_once(msg, why)
        return (f"\n\nI could not remove your message: {why}. Your key is still visible in "
                "this room: delete the message yourself.")

    async def _tell_owner_once(self, msg: Inbound, why: str) -> None:
        """The owner hears once per room that secrets posted there stay visible (the sender
        is told in the reply; an owner who is the sender needs no second message)."""
        owner = self.access.owner
        if (self.tell_owner is None or owner is None or msg.sender == owner
                or msg.thread_id in self._owner_told):
            return
        self._owner_told.add(msg.thread_id)
        try:
            await self.tell_owner(
                f"{msg.sender} posted an API key in the Matrix room {msg.thread_id} and I could "
                f"not remove the message: {why}. The key stays visible there until someone "
                "deletes it; consider it exposed.")
        except Exception:  # the sender was told; the command goes on
            log.exception("[%s] could not tell the owner", msg.thread_id)

    async def _remove_endpoint(self, msg: Inbound, args: str) -> str:
        if not args or len(args.split()) != 1:
            raise InputRejected("Usage: `/remove_endpoint <name>`.")
        ep = await self.pool.remove(args)
        return f"Removed endpoint '{ep.name}' ({ep.config.shown_url})."


def without_secrets(text: str) -> str:
    """``text`` as it may be shown again (to the thread's other tabs): an ``/add_endpoint``
    as its stored inbox text, the key ``***``; anything else as it is."""
    call = parse_command(text)
    return _without_key(call.args) if call is not None and call.name == "add_endpoint" else text


def _without_key(args: str) -> str:
    """The stored text of ``/add_endpoint <args>``: the name and URL, the key as ``***``."""
    return " ".join(["/add_endpoint", *args.split()[:2], "***"])
