"""Markdown to safe HTML for the web UI and Matrix ``formatted_body`` (raw HTML never passes)."""

from __future__ import annotations

from markdown_it import MarkdownIt

SAFE_SCHEMES = ("http://", "https://")
"""The only links an answer may hold: a model's (or an injected page's) link elsewhere,
such as javascript:, file: or a relative one into this page, stays text."""


def _safe_link(url: str) -> bool:
    return url.strip().lower().startswith(SAFE_SCHEMES)


class MarkdownRenderer:
    """CommonMark with tables, strikethrough and bare http(s) URLs linked; raw HTML is escaped,
    links other than http(s) stay text."""

    def __init__(self) -> None:
        # html=False: "<script>" in model output is shown as text, never parsed as a tag.
        md = MarkdownIt("commonmark", {"html": False, "linkify": True, "typographer": False})
        md.enable(["table", "strikethrough", "linkify"])
        # Only URLs written with their scheme: fuzzy matching would link "app.py" or
        # "notes.md" (Paraguay's and Moldova's domains) in every answer about code.
        assert md.linkify is not None  # made by MarkdownIt when "linkify" is on
        md.linkify.set({"fuzzy_link": False, "fuzzy_email": False, "fuzzy_ip": False})
        # Without fuzzy matching, the inline rule (at each "://") finds every link the core
        # rule would (its others: mailto: and //host, refused below); the core rule also ran
        # linkify-it over every text of every answer, a fifth of the rendering time.
        md.core.ruler.disable("linkify")
        md.validateLink = _safe_link  # type: ignore[method-assign]
        self._md = md

    def html(self, text: str) -> str:
        return str(self._md.render(text)).strip()
