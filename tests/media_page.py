"""Files for the page's tests: a PNG made with Pillow and an upload over real HTTP with the
token, as the page does it (test modules do not import each other)."""

from __future__ import annotations

import io
import os
from typing import Any

import aiohttp
from conftest import WEB_TOKEN
from PIL import Image

from ganglion.app import App

VISION = {"llm": {"vision_models": ["fake-model"]}}
"""The fake model sees images."""


def photo(width: int, height: int) -> bytes:
    """A PNG of noise (it does not compress: its size is known)."""
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(out, "PNG")
    return out.getvalue()


async def upload(app: App, data: bytes, *, name: str = "photo.png",
                 raw: bool = False) -> tuple[int, dict[str, Any]]:
    """POST /upload with the web token: a multipart form as the page sends it, or ``raw``
    the body with the name in ``?name=`` (exact, where a form's filename gets escaped)."""
    assert app.web is not None
    body: Any = data
    params = {"name": name} if raw else {}
    if not raw:
        body = aiohttp.FormData()
        body.add_field("file", data, filename=name, content_type="application/octet-stream")
    async with aiohttp.ClientSession() as session, session.post(
            f"{app.web.url}/upload", data=body, params=params,
            headers={"Authorization": f"Bearer {WEB_TOKEN}"}) as resp:
        return resp.status, await resp.json()
