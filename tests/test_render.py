"""The Markdown the page and Matrix show: bare http(s) URLs linked, nothing else made a link,
raw HTML shown as text (issue 14, item 4)."""

from __future__ import annotations

from ganglion.render import MarkdownRenderer


def test_a_bare_url_becomes_a_link_and_file_names_do_not() -> None:
    html = MarkdownRenderer().html("see https://example.com/a?b=1, then edit app.py and notes.md")
    assert html == ('<p>see <a href="https://example.com/a?b=1">https://example.com/a?b=1</a>, '
                    "then edit app.py and notes.md</p>")


def test_a_url_in_code_stays_code() -> None:
    html = MarkdownRenderer().html("`https://in.code/x`\n\n```\nhttp://in.block/y\n```")
    assert "<a" not in html


def test_only_http_and_https_links_are_made() -> None:
    renderer = MarkdownRenderer()
    hostile = ("[a](javascript:alert(1)) [b](JAVASCRIPT:alert(1)) [c](file:///etc/passwd) "
               "[d](data:text/html;base64,PHNjcmlwdD4=) [e](/static/app.js) "
               "<javascript:alert(2)> javascript:alert(3) [ok](https://ok.example/)")
    html = renderer.html(hostile)
    assert html.count("<a ") == 1
    assert '<a href="https://ok.example/">ok</a>' in html
    assert "javascript:alert(1)" in html  # shown as text


def test_html_in_an_answer_is_text() -> None:
    html = MarkdownRenderer().html('<script>alert(1)</script> <a href="javascript:x">x</a> '
                                   'http://x.example/"onmouseover=alert(1)')
    assert "<script" not in html and "<a href=\"javascript" not in html
    assert "&lt;script&gt;" in html
    assert '<a href="http://x.example/">http://x.example/</a>&quot;onmouseover' in html
