"""Why an LLM request failed, in words for the end user, and whether to try it again."""

from __future__ import annotations

import email.utils
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ganglion.errors import LLMBadResponse

if TYPE_CHECKING:
    import openai


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one attempt failed, in words for the end user."""

    what: str
    hint: str
    retryable: bool
    retry_after: float | None = None


MAX_WAIT_SECONDS = 30.0
"""No pause before a retry is longer, whatever the backoff or the server's Retry-After."""


def retry_wait(failure: Failure, attempt: int, base: float,
               draw: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = the first retry).

    The server's Retry-After wins. Otherwise "equal jitter": the pause doubles with each
    attempt (``base``, ``2 * base``, ...) and the wait is drawn uniformly from its upper half,
    so clients that failed together do not come back together, and each still gives the
    server at least half the doubled pause. ``draw`` returns a float in [0, 1).
    """
    if failure.retry_after is not None:
        return min(failure.retry_after, MAX_WAIT_SECONDS)
    pause = min(base * 2.0 ** (attempt - 1), MAX_WAIT_SECONDS)
    return pause / 2 + draw() * pause / 2


HINT_DOWN = "Is the model server running, and is base_url right?"
HINT_SLOW = (
    "The model server may be overloaded or the model slow to load; "
    "raising the endpoint's timeout_seconds may help."
)
HINT_SERVER = "The model server reported an error; its own log should say why."
HINT_BUSY = "The endpoint is limiting requests; wait a little and try again."
HINT_KEY = "Check the endpoint's api_key in config.yaml."
HINT_NOT_FOUND = "Check llm.model and that the endpoint's base_url ends in /v1."
HINT_REJECTED = "Check llm.model and the request settings."
HINT_GARBAGE = "Check that base_url points to an OpenAI-compatible API (usually ending in /v1)."


def classify(err: BaseException, mid_stream: bool, timeout: float) -> Failure:
    import openai  # noqa: PLC0415  (imported off the start-up path; see Endpoint.client)

    if isinstance(err, openai.APIStatusError):
        return _status_failure(err.status_code, _server_message(err), err.response.headers)
    if isinstance(err, openai.APITimeoutError):
        if any(type(exc).__name__ == "ConnectTimeout" for exc in _causes(err)):
            return Failure("could not connect (timed out)", HINT_DOWN, True)
        return Failure(f"timed out (nothing received for {timeout:g} s)", HINT_SLOW, True)
    if isinstance(err, openai.APIConnectionError):
        if mid_stream:
            return Failure(
                "the connection broke off in the middle of the answer", HINT_SERVER, True
            )
        return Failure(_connection_words(err), HINT_DOWN, True)
    if isinstance(err, openai.APIError):  # an error event inside an otherwise good stream
        return Failure(
            f"the server reported an error mid-answer ({err.message[:200]})", HINT_SERVER, True
        )
    # Valid JSON of the wrong shape says what was wrong; undecodable data (ValueError) is
    # simply not a completion. Not retried: the same server would answer the same.
    detail = f" ({err})" if isinstance(err, LLMBadResponse) and str(err) else ""
    return Failure(
        f"it answered with something that is not a chat completion{detail}", HINT_GARBAGE,
        False,
    )


def _status_failure(status: int, message: str, headers: Mapping[str, str]) -> Failure:
    detail = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    if status == 429:
        return Failure(f"too many requests ({detail})", HINT_BUSY, True, _retry_after(headers))
    if status >= 500 or status == 408:
        return Failure(f"server error ({detail})", HINT_SERVER, True, _retry_after(headers))
    if status in (401, 403):
        return Failure(f"the API key was refused ({detail})", HINT_KEY, False)
    if status == 404:
        return Failure(f"not found ({detail})", HINT_NOT_FOUND, False)
    return Failure(f"the request was rejected ({detail})", HINT_REJECTED, False)


def _server_message(err: openai.APIStatusError) -> str:
    body = err.body
    message = body.get("message") if isinstance(body, dict) else None
    return " ".join(message.split())[:200] if isinstance(message, str) else ""


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (ValueError, TypeError, OverflowError):
        return None


def _causes(err: BaseException) -> Iterator[BaseException]:
    """The error and everything behind it (the SDK only says "Connection error")."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [err]
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        pending += [exc.__cause__, exc.__context__]
        if isinstance(exc, BaseExceptionGroup):
            pending += list(exc.exceptions)


def _connection_words(err: BaseException) -> str:
    names: set[str] = set()
    for exc in _causes(err):
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
        if isinstance(exc, socket.gaierror):
            return "host name not found"
        if isinstance(exc, ssl.SSLError):
            return "TLS/SSL error"
        names.add(type(exc).__name__)
    if names & {"RemoteProtocolError", "ReadError"}:
        return "the server closed the connection without answering"
    return "could not connect"
