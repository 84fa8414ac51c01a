"""A fetched body as text for the model: HTML as Markdown-like text, JSON pretty-printed,
other text as it is, anything else described; every part bounded and stripped of controls.

Place in the flow: ``web_fetch`` reads a capped body and hands it here (in a worker thread:
parsing a large page takes a while); HTML goes on to ``web_html``.
"""

from __future__ import annotations

import json
import re
from contextlib import suppress
from dataclasses import dataclass

from yarl import URL

MAX_TITLE = 200
"""Characters of a page's title shown."""

_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_BLANK_LINES = re.compile(r"\n{3,}")

HTML_TYPES = ("text/html", "application/xhtml+xml")
TEXT_TYPES = ("application/xml", "application/javascript", "application/x-javascript",
              "application/ecmascript", "application/yaml", "application/x-yaml",
              "application/toml", "application/x-sh", "application/sql")


def clean(text: str) -> str:
    """``text`` without control characters (newlines and tabs kept, CR LF made LF)."""
    return _CONTROLS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def one_line(text: str, limit: int) -> str:
    """``text`` cleaned, on one line, at most ``limit`` characters."""
    line = " ".join(clean(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def kind_of(content_type: str) -> str:
    """"html", "json", "text" or "other" for a media type (lower case, no parameters)."""
    if content_type in HTML_TYPES:
        return "html"
    if content_type == "application/json" or content_type.endswith("+json"):
        return "json"
    if (content_type.startswith("text/") or content_type in TEXT_TYPES
            or content_type.endswith("+xml")):
        return "text"
    return "other"


def sniff(body: bytes) -> str:
    """The kind of a body that came without a Content-Type."""
    head = body[:1024].lstrip().lower()
    if b"\x00" in body[:8192]:
        return "other"
    if head.startswith((b"<!doctype html", b"<html")):
        return "html"
    if head.startswith((b"{", b"[")):
        return "json"
    try:
        body[:8192].decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < 8192 - 4:  # not just a character cut at the end of the sample
            return "other"
    return "text"


def looks_binary(body: bytes) -> bool:
    return b"\x00" in body[:8192]


@dataclass(frozen=True, slots=True)
class Readable:
    text: str
    title: str


def readable(body: bytes, kind: str, charset: str | None, base: URL) -> Readable:
    """The text of a body of kind "html", "json" or "text"."""
    if kind == "html":
        # Imported at the first page: Beautiful Soup takes about 0.1 s to import, which
        # every start of the daemon would pay otherwise.
        from ganglion.tools.web_html import html_text  # noqa: PLC0415

        return html_text(body, charset if known(charset) else None, base)
    text = body.decode(charset if charset and known(charset) else "utf-8", errors="replace")
    if kind == "json":
        # Not JSON after all (or absurdly nested): shown as it came.
        with suppress(ValueError, RecursionError):
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    return Readable(tidy(text), "")


def known(charset: str | None) -> bool:
    """Whether Python has a codec for ``charset``."""
    if not charset:
        return False
    try:
        b"".decode(charset)
    except LookupError:
        return False
    return True


def tidy(text: str) -> str:
    """Controls removed, runs of blank lines made one, trailing spaces dropped."""
    lines = [line.rstrip() for line in clean(text).split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n")
