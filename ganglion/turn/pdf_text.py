"""The text of a PDF, read in a child process: ``python -m ganglion.turn.pdf_text FILE PAGES
CHARS`` prints {"pages", "read", "text", "cut"} or {"error"} as JSON.

Why a child and not a thread: a hostile PDF (a million pages, a broken cross-reference
table, a decompression bomb in a content stream) can keep pypdf busy or growing for long,
and a thread cannot be stopped; a child is killed at its deadline (``turn/inbox_files.py``)
and has a memory ceiling of its own. pypdf: pure Python, nothing to build, well kept.
"""

from __future__ import annotations

import json
import resource
import sys

MEMORY_BYTES = 1 << 30
"""The child's address-space ceiling: a bomb ends in MemoryError, not in the OOM killer."""


def extract(path: str, max_pages: int, max_chars: int) -> dict[str, object]:
    from pypdf import PdfReader  # noqa: PLC0415  (only this child pays for it)

    reader = PdfReader(path)
    if reader.is_encrypted and not reader.decrypt(""):
        return {"error": "it is encrypted with a password"}
    pages, parts, size, cut = len(reader.pages), [], 0, False
    for number, page in enumerate(reader.pages[:max_pages], start=1):
        text = page.extract_text() or ""
        parts.append(f"--- page {number} ---\n{text.strip()}\n")
        size += len(parts[-1])
        if size >= max_chars:
            cut = True
            break
    text = "".join(parts)[:max_chars]
    return {"pages": pages, "read": len(parts), "text": text,
            "cut": cut or pages > len(parts)}


def main() -> None:
    path, max_pages, max_chars = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    try:
        result = extract(path, max_pages, max_chars)
    except MemoryError:
        result = {"error": "reading it needs more memory than allowed"}
    except Exception as err:
        result = {"error": f"{type(err).__name__}: {str(err)[:200]}"}
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    main()
