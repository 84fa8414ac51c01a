"""Markdown to safe HTML for the web UI and Matrix ``formatted_body`` (raw HTML never passes)."""

from __future__ import annotations

from markdown_it import MarkdownIt


class MarkdownRenderer:
    """CommonMark with tables and strikethrough; raw HTML is escaped, unsafe links dropped."""

    def __init__(self) -> None:
        # html=False: "<script>" in model output is shown as text, never parsed as a tag.
        # markdown-it's validateLink refuses javascript:, vbscript:, file: and most data: URLs.
        self._md = (
            MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
            .enable("table")
            .enable("strikethrough")
        )

    def html(self, text: str) -> str:
        return str(self._md.render(text)).strip()
