"""Image benchmark: what a 12 MP photo adds to a turn (issue 15, "Speed").

A 4000x3000 JPEG made here with Pillow (a smooth picture with grain, about the size a phone
camera writes), stored through the media store as an upload would be, then:

- **store**: streaming it into data/media/ (hash, fsync, identify by content), median;
- **downscale**: ``turn/vision.py``'s ``downscale`` to ``media.max_image_pixels`` (default
  1568x1568 area), median of repeated runs: the one step an image turn adds;
- **request size**: the data URL the model request carries, against the photo's own size;
- **second turn**: the same image in the next turn's prompt (``Vision.apply``, kept ready).

Usage:

    uv run python bench/bench_media.py [--runs 9] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from common import report
from PIL import Image, ImageFilter

from ganglion.config_media import MediaConfig
from ganglion.messages import Inbound, Source, ThreadId, web_thread_id
from ganglion.storage.db import Database
from ganglion.storage.history import StoredMessage
from ganglion.storage.inbox import Inbox
from ganglion.storage.media import MediaStore
from ganglion.turn.vision import Vision, downscale


def twelve_megapixels() -> bytes:
    """4000x3000: a gradient with noise, blurred a little (a camera's grain), JPEG q90."""
    small = Image.effect_noise((500, 375), 60).convert("RGB")
    base = Image.linear_gradient("L").resize((4000, 3000)).convert("RGB")
    grain = small.resize((4000, 3000), Image.Resampling.BICUBIC)
    img = Image.blend(base, grain, 0.5).filter(ImageFilter.GaussianBlur(1))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 64 * 1024):
        yield data[start:start + 64 * 1024]


async def run(runs: int) -> dict[str, Any]:
    photo = twelve_megapixels()
    pixels = MediaConfig().max_image_pixels
    with tempfile.TemporaryDirectory() as tmp:
        db = await Database.open(Path(tmp) / "conversation.db")
        store = MediaStore(db, Path(tmp) / "media", 50 * 1024 * 1024)
        stores = []
        for _ in range(runs):
            started = time.perf_counter()
            media = await store.receive(chunks(photo), "web")
            stores.append(time.perf_counter() - started)
        downscales, size = [], 0
        for _ in range(runs):
            started = time.perf_counter()
            data, _kind = downscale(store.path(media.id), pixels)
            downscales.append(time.perf_counter() - started)
            size = len(data)
        msg, _ = await Inbox(db).add(Inbound(web_thread_id(), "what is this?", "web",
                                             Source.WEB, "c1", attachments=(media.id,)))
        vision = Vision(store, lambda _m: True, pixels, history_images=2)
        row = StoredMessage(1, ThreadId(msg.thread_id), "user", "what is this?",
                            inbox_id=msg.id)
        prompt = [{"role": "user", "content": row.content}]
        turns = []
        for _ in range(runs + 1):
            started = time.perf_counter()
            looks = await vision.look([row], "m")
            sent = await vision.apply(prompt, [row], looks)
            turns.append(time.perf_counter() - started)
        url = sent[0]["content"][1]["image_url"]["url"]
        with Image.open(io.BytesIO(data)) as small:
            sent_size = small.size
        await db.close()
    return {
        "photo": {"pixels": "4000x3000", "bytes": len(photo)},
        "store_ms_median": round(statistics.median(stores) * 1000, 1),
        "downscale_ms_median": round(statistics.median(downscales) * 1000, 1),
        "sent_pixels": f"{sent_size[0]}x{sent_size[1]}",
        "sent_jpeg_bytes": size,
        "request_data_url_bytes": len(url),
        "budget_tokens": looks.tokens,
        "first_turn_ms": round(turns[0] * 1000, 1),
        "later_turn_ms_median": round(statistics.median(turns[1:]) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report(asyncio.run(run(args.runs)), args.json)


if __name__ == "__main__":
    main()
