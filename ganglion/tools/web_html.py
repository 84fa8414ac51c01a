"""An HTML page as Markdown-like text: Beautiful Soup and markdownify, hidden parts dropped.

Place in the flow: ``web_text.readable`` -> ``html_text`` (imported at the first HTML page).
Beautiful Soup runs on Python's own HTML parser (no C library to install) and markdownify
turns its tree into Markdown; both are MIT-licensed and maintained. The page's scripts,
styles, forms and hidden elements are dropped first, since what a reader of the page never
sees is where injected instructions hide.
"""

from __future__ import annotations

import re
import warnings

from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning, Tag, XMLParsedAsHTMLWarning
from markdownify import ATX, MarkdownConverter
from yarl import URL

from ganglion.tools.web_text import MAX_TITLE, Readable, one_line, tidy

_DROPPED = ("script", "style", "noscript", "template", "iframe", "frame", "frameset",
            "object", "embed", "applet", "svg", "math", "canvas", "audio", "video", "map",
            "head", "input", "select", "textarea", "button", "option", "datalist", "dialog",
            "link", "meta", "base")
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)


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
        soup = BeautifulSoup(body, "html.parser", from_encoding=charset)
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
    return Readable(tidy(text), title)


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
