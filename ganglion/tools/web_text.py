"""A fetched body as text for the model: HTML as Markdown-like text, JSON pretty-printed,
other text as it is, anything else described; every part bounded and stripped of controls.

Place in the flow: ``web_fetch`` reads a capped body and hands it here (in a worker thread:
parsing a large page takes a while). HTML goes through Beautiful Soup (Python's own HTML
parser: no C library to install) and markdownify, both MIT-licensed and maintained; the
page's scripts, styles, forms and hidden elements are dropped first, since what a reader of
the page never sees is where injected instructions hide.
"""

from __future__ import annotations

import json
import re
import warnings
from contextlib import suppress
from dataclasses import dataclass

from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning, Tag, XMLParsedAsHTMLWarning
from markdownify import ATX, MarkdownConverter
from yarl import URL

MAX_TITLE = 200
"""Characters of a page's title shown."""

_DROPPED = ("script", "style", "noscript", "template", "iframe", "frame", "frameset",
            "object", "embed", "applet", "svg", "math", "canvas", "audio", "video", "map",
            "head", "input", "select", "textarea", "button", "option", "datalist", "dialog",
            "link", "meta", "base")
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
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
        return html_text(body, charset, base)
    text = body.decode(charset or "utf-8", errors="replace") if _known(charset) else (
        body.decode("utf-8", errors="replace"))
    if kind == "json":
        # Not JSON after all (or absurdly nested): shown as it came.
        with suppress(ValueError, RecursionError):
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    return Readable(_tidy(text), "")


def _known(charset: str | None) -> bool:
    if not charset:
        return False
    try:
        b"".decode(charset)
    except LookupError:
        return False
    return True


class _Converter(MarkdownConverter):
    """markdownify with ATX headings and fenced code blocks."""

    def __init__(self) -> None:
        super().__init__(heading_style=ATX, bullets="-", escape_underscores=False,
                         escape_asterisks=False)


def html_text(body: bytes, charset: str | None, base: URL) -> Readable:
    """An HTML page as Markdown-like text, and its title."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        soup = BeautifulSoup(body, "html.parser",
                             from_encoding=charset if _known(charset) else None)
    title = ""
    if soup.title is not None:
        title = one_line(soup.title.get_text(), MAX_TITLE)
    for tag in soup.find_all(_DROPPED):
        tag.decompose()
    for tag in soup.find_all(_hidden):
        tag.decompose()
    _absolute_links(soup, base, budget=len(body))
    try:
        text = _Converter().convert_soup(soup)
    except RecursionError:  # nested deeper than markdownify's recursion goes: plain text
        text = soup.get_text("\n")
    if not title:
        heading = soup.find(["h1", "h2"])
        title = one_line(heading.get_text(), MAX_TITLE) if heading is not None else ""
    return Readable(_tidy(text), title)


def _hidden(tag: Tag) -> bool:
    if tag.has_attr("hidden") or str(tag.get("aria-hidden", "")).lower() == "true":
        return True
    return bool(_HIDDEN_STYLE.search(str(tag.get("style", ""))))


def _absolute_links(soup: BeautifulSoup, base: URL, budget: int) -> None:
    """Links and images made absolute (the model can fetch them), adding at most ``budget``
    characters in all; images inlined as data: URLs lose their source (it is the file)."""
    added = 0
    for tag in soup.find_all(["a", "img"]):
        attr = "href" if tag.name == "a" else "src"
        value = tag.get(attr)
        if not isinstance(value, str):
            continue
        value = value.strip()
        if value.lower().startswith(("data:", "javascript:", "vbscript:")):
            if tag.name == "img":  # its alt text alone
                tag.replace_with(str(tag.get("alt") or ""))
            else:
                del tag[attr]
            continue
        if added > budget or value.startswith("#"):
            continue
        try:
            joined = str(base.join(URL(value)))
        except ValueError:
            continue
        added += max(len(joined) - len(value), 0)
        tag[attr] = joined


def _tidy(text: str) -> str:
    """Controls removed, runs of blank lines made one, trailing spaces dropped."""
    lines = [line.rstrip() for line in clean(text).split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n")
