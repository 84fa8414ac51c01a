"""Parsing ``/ask <model> <prompt> [max_tokens=N] [temp=X] [top_p=X]``, refusing bad values.

Place in the flow: the ``/ask`` command parses here before any LLM call, so a bad value gets
a plain-words error and costs nothing. The parsed parameters become request body fields.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ganglion.errors import InputRejected

ASK_USAGE = "/ask <number|name|alias> <prompt> [max_tokens=N] [temp=X] [top_p=X]"
MAX_TOKENS_LIMIT = 1_000_000

_NAMES = {"max_tokens": "max_tokens", "temp": "temperature", "temperature": "temperature",
          "top_p": "top_p"}
_TRAILING = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z_-]*)=(\S*)\s*$")
_LEADING = re.compile(r"^([A-Za-z][A-Za-z_-]*)=(\S*)(?:\s+|$)")


@dataclass(frozen=True, slots=True)
class AskRequest:
    model_ref: str
    prompt: str
    params: dict[str, Any] = field(default_factory=dict)
    """Request body fields: max_tokens, temperature, top_p."""


def parse_ask(args: str) -> AskRequest:
    """Split and validate; InputRejected says what is wrong and how to write it."""
    parts = args.split(maxsplit=1)
    if not parts:
        raise InputRejected(f"Usage: `{ASK_USAGE}`.")
    ref, rest = parts[0], (parts[1] if len(parts) > 1 else "")
    raw: dict[str, str] = {}
    # Parameters come after the prompt (as documented) or right after the model.
    for pattern, take in ((_TRAILING, _take_end), (_LEADING, _take_start)):
        while (m := pattern.search(rest)) is not None and _param_key(m.group(1)) is not None:
            key = _param_key(m.group(1))
            assert key is not None
            if key in raw:
                raise InputRejected(f"`{_shown(key)}` is given twice; give it once.")
            raw[key] = m.group(2)
            rest = take(rest, m)
    prompt = rest.strip()
    if not prompt:
        raise InputRejected(f"What should I ask? Usage: `{ASK_USAGE}`.")
    return AskRequest(ref, prompt, {key: _value(key, text) for key, text in raw.items()})


def _param_key(word: str) -> str | None:
    key = _NAMES.get(word.lower())
    if key is not None:
        return key
    close = difflib.get_close_matches(word.lower(), ["max_tokens", "temp", "top_p"], n=1,
                                      cutoff=0.75)
    if close:
        raise InputRejected(f"Unknown parameter `{word}`: did you mean `{close[0]}`? "
                            f"Usage: `{ASK_USAGE}`.")
    return None  # an ordinary word of the prompt that happens to contain "="


def _take_end(rest: str, m: re.Match[str]) -> str:
    return rest[: m.start()].rstrip()


def _take_start(rest: str, m: re.Match[str]) -> str:
    return rest[m.end():]


def _shown(key: str) -> str:
    return "temp" if key == "temperature" else key


def _value(key: str, text: str) -> int | float:
    if key == "max_tokens":
        if not re.fullmatch(r"\d{1,9}", text) or not 1 <= int(text) <= MAX_TOKENS_LIMIT:
            raise InputRejected(f"max_tokens must be a whole number from 1 to "
                                f"{MAX_TOKENS_LIMIT:,} (got `{text[:40]}`).")
        return int(text)
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if key == "temperature" and not (math.isfinite(number) and 0 <= number <= 2):
        raise InputRejected(f"temp must be a number from 0 to 2 (got `{text[:40]}`).")
    if key == "top_p" and not (math.isfinite(number) and 0 < number <= 1):
        raise InputRejected(f"top_p must be a number above 0 and at most 1 (got `{text[:40]}`).")
    return number
