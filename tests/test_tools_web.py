"""web_fetch over real sockets against a local site (tests/web_pages.py): HTML to text,
redirects, refused addresses and ports, size and time caps, binary types, paging."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from ipaddress import ip_address
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from web_pages import ALLOWED_HOST, REFUSED_HOST, Site
from yarl import URL

from ganglion.config_tools import WebToolsConfig
from ganglion.errors import BadArguments, ToolError
from ganglion.tools.web import WebFetch
from ganglion.tools.web_guard import special_range


@pytest_asyncio.fixture
async def site() -> AsyncIterator[Site]:
    server = Site()
    await server.start()
    yield server
    await server.stop()


def fetcher(**settings: Any) -> WebFetch:
    """web_fetch allowed onto the test site's 127.0.0.2 (and nothing else private)."""
    settings.setdefault("allow_private", [f"{ALLOWED_HOST}/32"])
    return WebFetch(WebToolsConfig(**settings))


async def test_html_becomes_markdown_like_text(site: Site) -> None:
    text = await fetcher().web_fetch(site.url("/article"))
    base = site.url("")
    assert text.startswith(f"URL: {base}/article\nTitle: The Article\nType: text/html")
    for kept in ("# Main heading", "## Lists", f"[a relative link]({base}/docs/page?x=1)",
                 "**bold**", "- apple\n- pear", "1. first\n2. second",
                 "```\ndef hello():\n    return 42\n```", "inline picture"):
        assert kept in text, kept
    for dropped in ("SCRIPT-TEXT", "color: red", "HIDDEN-DIV", "HIDDEN-STYLE", "NOSCRIPT-TEXT",
                    "INPUT-VALUE", "BUTTON-TEXT", "base64", "\x07", "x.css"):
        assert dropped not in text, dropped


async def test_json_is_pretty_printed(site: Site) -> None:
    site.pages["/data.json"] = ("application/json", b'{"a":[1,2],"b":{"c":"d\\u00e9"}}')
    text = await fetcher().web_fetch(site.url("/data.json"))
    assert 'Type: application/json' in text
    assert '{\n  "a": [\n    1,\n    2\n  ],\n  "b": {\n    "c": "dé"\n  }\n}' in text


async def test_an_error_page_is_shown_with_its_status(site: Site) -> None:
    text = await fetcher().web_fetch(site.url("/missing"))
    assert text.startswith(f"URL: {site.url('/missing')}\nStatus: 404 Not Found\n")
    assert text.endswith("\n\nno such page")


async def test_redirects_are_followed_hop_by_hop(site: Site) -> None:
    text = await fetcher().web_fetch(site.url("/hop/3"))
    assert text.startswith(f"URL: {site.url('/article')}\nTitle: The Article\n"
                           f"Redirected from: {site.url('/hop/3')} (4 redirects)")
    assert site.served(ALLOWED_HOST) == ["/hop/3", "/hop/2", "/hop/1", "/hop/0", "/article"]


async def test_no_more_redirects_than_the_limit(site: Site) -> None:
    with pytest.raises(ToolError, match=r"more than 2 redirects \(tools.web.max_redirects\); "
                                        r"the last one led to /hop/2"):
        await fetcher(max_redirects=2).web_fetch(site.url("/hop/5"))
    assert site.served(ALLOWED_HOST) == ["/hop/5", "/hop/4", "/hop/3"]


async def test_loopback_is_refused_however_it_is_reached(site: Site) -> None:
    # The refused address serves the same site: a fetch that got through would succeed.
    async with aiohttp.ClientSession() as session, session.get(
            site.url("/article", REFUSED_HOST)) as response:
        assert response.status == 200
    port = site.ports[REFUSED_HOST]
    fetch = fetcher()
    cases = {
        site.url("/article", REFUSED_HOST): "127.0.0.1 is loopback (this machine)",
        site.url(f"/to?url=http://127.0.0.1:{port}/article"): "127.0.0.1 is loopback",
        f"http://[::ffff:127.0.0.1]:{port}/article": "loopback (this machine), written as IPv6",
        f"http://localhost:{port}/article": "localhost resolves to: 127.0.0.1 is loopback",
        site.url(f"/to?url=http://localhost:{port}/"): "localhost resolves to",
        f"http://0.0.0.0:{port}/article": "0.0.0.0 is unspecified",
    }
    for url, why in cases.items():
        with pytest.raises(ToolError) as refused:
            await fetch.web_fetch(url)
        assert why in str(refused.value), url
        assert "tools.web.allow_private" in str(refused.value)
    for url in (f"http://127.1:{port}/article", f"http://2130706433:{port}/article"):
        with pytest.raises(ToolError, match="not a canonical IPv4 address"):  # aiohttp's own
            await fetch.web_fetch(url)
    assert site.served(REFUSED_HOST) == ["/article"]  # the probe above, and nothing else


RANGES = {
    "10.1.2.3": "private (RFC 1918)", "172.16.5.4": "private (RFC 1918)",
    "192.168.1.1": "private (RFC 1918)", "100.64.1.1": "shared (carrier-grade NAT, RFC 6598)",
    "169.254.169.254": "link-local: the cloud metadata service", "169.254.1.1": "link-local",
    "fd12:3456::1": "private (unique local, fc00::/7)", "fe80::1": "link-local",
    "fd00:ec2::254": "private: the cloud metadata service", "::1": "loopback (this machine)",
    "::": "unspecified (::)", "::ffff:192.168.1.1": "private (RFC 1918), written as IPv6",
    "::ffff:169.254.169.254": "link-local: the cloud metadata service, written as IPv6",
    "64:ff9b::a00:1": "private (RFC 1918), written as IPv6",
    "2002:c0a8:101::1": "private (RFC 1918), written as IPv6",
    "224.0.0.1": "multicast", "ff02::1": "multicast", "240.0.0.1": "reserved",
    "255.255.255.255": "reserved", "192.0.2.10": "reserved (documentation)",
    "8.8.8.8": None, "2606:4700:4700::1111": None, "::ffff:8.8.8.8": None,
}


@pytest.mark.parametrize("address", RANGES)
def test_each_range_is_named(address: str) -> None:
    assert special_range(ip_address(address)) == RANGES[address]


async def test_a_redirect_to_a_private_or_metadata_address_is_refused(site: Site) -> None:
    # Refused before any connection: the guard sends nothing to these addresses (checked
    # first, so that a broken guard fails here and never sends a packet there).
    fetch = fetcher()
    for address in ("192.168.1.1", "169.254.169.254"):
        with pytest.raises(ToolError, match=r"tools\.web\.allow_private"):
            fetch.guard.check_url(URL(f"http://{address}/"))
    with pytest.raises(ToolError, match=r"192.168.1.1 is private \(RFC 1918\)"):
        await fetch.web_fetch(site.url("/to?url=http://192.168.1.1/admin"))
    with pytest.raises(ToolError, match=r"169\.254\.169\.254 is link-local: the cloud"):
        await fetch.web_fetch(site.url("/to?url=http://169.254.169.254/latest/meta-data/"))


async def test_allow_private_lets_through_what_it_lists(site: Site) -> None:
    # 127.0.0.2/32 is allowed in every test here; a host name can be allowed as well.
    port = site.ports[REFUSED_HOST]
    text = await fetcher(allow_private=["localhost"]).web_fetch(
        f"http://localhost:{port}/article")
    assert "# Main heading" in text
    assert site.served(REFUSED_HOST) == ["/article"]
    with pytest.raises(ToolError, match=re.escape("127.0.0.2 is loopback")):  # allowed by name only
        await fetcher(allow_private=["localhost"]).web_fetch(site.url("/article"))


async def test_ports_of_other_protocols_are_refused() -> None:
    for port in (25, 22, 143):
        with pytest.raises(ToolError, match=f"port {port} of 127.0.0.2 is kept for other"):
            await fetcher().web_fetch(f"http://{ALLOWED_HOST}:{port}/")


async def test_only_http_and_https_urls(site: Site) -> None:
    fetch = fetcher()
    for url in ("file:///etc/passwd", "ftp://example.org/x", "javascript:alert(1)",
                "gopher://example.org/", "data:text/html,hi"):
        with pytest.raises(BadArguments, match=r"only http:// and https:// URLs"):
            await fetch.web_fetch(url)
    with pytest.raises(BadArguments, match=re.escape("with its scheme: https://example.org/page")):
        await fetch.web_fetch("example.org/page")
    with pytest.raises(BadArguments, match="give the address"):
        await fetch.web_fetch("  ")
    with pytest.raises(BadArguments, match=r"only http:// and https:// URLs.*file:"):
        await fetch.web_fetch(site.url("/to?url=file:///etc/passwd"))


async def test_a_50_mb_body_is_capped_and_the_rest_never_read(site: Site) -> None:
    text = await fetcher(max_bytes=100_000).web_fetch(site.url("/endless"))
    assert "Type: text/plain, 100,000 bytes (cut at 100,000 bytes, tools.web.max_bytes" in text
    assert "all work and no play" in text
    async with asyncio.timeout(10):
        await site.endless.done.wait()  # the server's writes failed: the reader went away
    assert site.endless.reader_left
    assert site.endless.sent < 20_000_000  # what the sockets' buffers took, not 50 MB


async def test_a_compressed_bomb_is_capped(site: Site) -> None:
    text = await fetcher(max_bytes=100_000).web_fetch(site.url("/bomb"))
    assert "100,000 bytes (cut at 100,000 bytes" in text


async def test_a_slow_body_is_cut_at_the_time_limit(site: Site) -> None:
    text = await fetcher(timeout_seconds=0.5).web_fetch(site.url("/slow-body"))
    assert "the first part arrived" in text
    assert "(cut: the rest did not arrive within 0.5 s (tools.web.timeout_seconds))" in text
    with pytest.raises(ToolError, match=r"127.0.0.2 did not answer within 0.5 s"):
        await fetcher(timeout_seconds=0.5).web_fetch(site.url("/slow-headers"))


async def test_binary_types_are_described_not_dumped(site: Site) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 1000
    site.pages["/pic.png"] = ("image/png", png)
    site.pages["/doc.pdf"] = ("application/pdf", b"%PDF-1.7\n" + b"\x00\xff" * 5000)
    site.pages["/fake.html"] = ("text/html", b"<html>\x00\x01\x02" + b"\xff" * 5000)
    fetch = fetcher()
    text = await fetch.web_fetch(site.url("/pic.png"))
    assert text == (f"URL: {site.url('/pic.png')}\nType: image/png, {len(png):,} bytes\n\n"
                    "Not shown: this is a image/png file, and web_fetch returns text, HTML "
                    "and JSON only.")
    assert "application/pdf, 10,009 bytes" in await fetch.web_fetch(site.url("/doc.pdf"))
    faked = await fetch.web_fetch(site.url("/fake.html"))
    assert "Not shown: this is a text/html file" in faked and "\x00" not in faked


async def test_a_long_page_is_read_in_parts(site: Site) -> None:
    lines = [f"line {n:04d} of the long page" for n in range(1, 401)]
    whole = "\n".join(lines)
    site.pages["/long.txt"] = ("text/plain", whole.encode())
    fetch = fetcher(page_chars=1000)
    first = await fetch.web_fetch(site.url("/long.txt"))
    cut = 37 * 27  # whole lines: 37 of 27 characters fit in 1,000
    assert f"Text: characters 0 to {cut} of {len(whole):,}" in first
    assert first.endswith(f"line 0037 of the long page\n\n\n[… the page goes on "
                          f"({len(whole):,} characters in all): call web_fetch with the same "
                          f"url and offset={cut} to read on]")
    parts, offset = [first], cut
    while offset:
        part = await fetch.web_fetch(site.url("/long.txt"), offset=offset)
        parts.append(part)
        offset = int(part.rsplit("offset=", 1)[1].split()[0]) if "offset=" in part else 0
    read = "".join(p.split("\n\n", 1)[1].split("\n\n[…", 1)[0] for p in parts)
    assert read == whole  # every line once, in order, none cut
    assert site.served(ALLOWED_HOST) == ["/long.txt"]  # one download for every part
    with pytest.raises(BadArguments, match=f"past the end: the page's text has {len(whole):,}"):
        await fetch.web_fetch(site.url("/long.txt"), offset=len(whole))
    await fetch.web_fetch(site.url("/long.txt"))  # the beginning: fetched anew
    assert site.served(ALLOWED_HOST) == ["/long.txt", "/long.txt"]


async def test_a_hostile_page_gets_a_clear_capped_result(site: Site) -> None:
    title = "T" * 100_000
    body = (f"<html><head><title>{title}</title></head><body><h1>Hi\x1b[31m</h1>"
            + "<div>" * 50_000 + "deep" + "</div>" * 50_000 + "</body></html>")
    site.pages["/hostile"] = ("text/html; charset=utf-8", body.encode())
    text = await fetcher().web_fetch(site.url("/hostile"))
    title_line = text.split("\n")[1]
    assert title_line.startswith("Title: TTT") and len(title_line) <= len("Title: ") + 200
    assert "\x1b" not in text and "Hi[31m" in text and "deep" in text
