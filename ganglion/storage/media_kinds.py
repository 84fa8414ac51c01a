"""What a stored file is, judged by its bytes (never its name or the client's word), and the
name it keeps.

Place in the flow: ``MediaStore.receive`` (``storage/media.py``) calls ``identify`` on a
whole upload before keeping it, and ``clean_name`` on the name the upload or the Matrix
event gave. Images are Pillow's to judge (it verifies the whole file); audio and PDF by their
magic numbers, with the few bytes after them that tell a container apart (a small table:
eight formats, each one or two fixed fields, where a sniffing library would bring libmagic
or a table of hundreds of types we refuse anyway); text by decoding all of it as UTF-8.
"""

from __future__ import annotations

import codecs
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif",
               "WEBP": "image/webp"}
"""What Pillow names a format -> the type stored."""
AUDIO_TYPES = frozenset({"audio/ogg", "audio/webm", "audio/mpeg", "audio/wav", "audio/mp4",
                         "audio/flac"})
FILE_TYPES = frozenset({"application/pdf", "text/plain", "text/csv", "text/markdown",
                        "application/json"})
"""Files saved into the workspace for the file tools (``turn/inbox_files.py``)."""
TEXT_SUBTYPES = {".csv": "text/csv", ".tsv": "text/csv", ".md": "text/markdown",
                 ".markdown": "text/markdown"}
"""A text file's subtype, from its name: a label only (the content was checked as UTF-8
text, which is what makes it safe to hand the model)."""
ACCEPTED = ("images (PNG, JPEG, GIF, WebP), audio (Ogg/Opus, WebM, MP3, WAV, M4A, FLAC), "
            "PDF and UTF-8 text (plain, CSV, Markdown, JSON)")
NAMED_KINDS = {
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".gif", ".webp"), "image"),
    **dict.fromkeys((".ogg", ".oga", ".opus", ".webm", ".mp3", ".wav", ".m4a", ".mp4",
                     ".flac", ".aac"), "audio"),
    ".pdf": "application/pdf",
}
"""A name that says what the file is: content of another kind is a file lying about its
type, refused even when its content alone would be taken (a script named cat.png)."""
MAX_NAME = 120
"""Characters of a file's name kept (its extension kept within them)."""
HEAD = 64


class UnknownType(ValueError):
    """Not a kind of file Ganglion accepts; the text says what it accepts."""


@dataclass(frozen=True, slots=True)
class Kind:
    """What ``identify`` found: the type, and an image's size."""

    type: str
    width: int | None = None
    height: int | None = None


def kind_of(media_type: str) -> str:
    """"image", "audio" or "file": how a turn treats a stored file of this type."""
    if media_type.startswith("image/"):
        return "image"
    return "audio" if media_type in AUDIO_TYPES else "file"


def identify(path: Path, name: str | None = None) -> Kind:
    """The kind of the file at ``path`` by its content; UnknownType for anything else.
    ``name`` never makes a file taken: it labels a text file (CSV, Markdown), and a name
    that says another kind than the content is refused."""
    kind = _by_content(path, name)
    said = NAMED_KINDS.get(Path(name).suffix.lower()) if name else None
    if said is not None and said not in (kind.type, kind_of(kind.type)):
        raise UnknownType(f"this file's name says {said.split('/')[-1].upper()} but its "
                          f"content is {kind.type}: a file that lies about its type is "
                          "refused")
    return kind


def _by_content(path: Path, name: str | None) -> Kind:
    with path.open("rb") as f:
        head = f.read(HEAD)
    audio = _audio(head)
    if audio is not None:
        return Kind(audio)
    if head.startswith(b"%PDF-"):
        return Kind("application/pdf")
    image = _image(path)
    if image is not None:
        return image
    if _is_text(path):
        return Kind(_text_type(path, name))
    raise UnknownType(f"this file is not a kind Ganglion accepts (judged by its content, not "
                      f"its name): it takes {ACCEPTED}")


def _audio(head: bytes) -> str | None:
    if head.startswith(b"OggS"):  # Opus, Vorbis or FLAC in Ogg: all "audio/ogg"
        return "audio/ogg"
    if head.startswith(b"\x1a\x45\xdf\xa3") and b"webm" in head:  # EBML, DocType "webm"
        return "audio/webm"  # what Chromium's MediaRecorder makes
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "audio/wav"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head[4:8] == b"ftyp":  # ISO media (M4A; an MP4's sound is transcribed the same)
        return "audio/mp4"
    if head.startswith(b"ID3") or _mpeg_frame(head):
        return "audio/mpeg"
    return None


def _mpeg_frame(head: bytes) -> bool:
    """An MP3 frame header: 11 sync bits, layer III, then no reserved version, bitrate or
    sample rate (a UTF-16 BOM, 0xFFFE, fails the layer)."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 3
    return version != 1 and layer == 1 and bitrate not in (0, 15) and rate != 3


def _image(path: Path) -> Kind | None:
    """The image's kind if Pillow reads the whole file as one we take; UnknownType for an
    image of another format; None for what is no image."""
    # Imported at the first upload: Pillow costs memory a daemon that never sees one keeps.
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    try:
        with Image.open(path) as img:
            fmt, (width, height) = img.format or "", img.size
            img.verify()  # the whole file, not only its header (a truncated PNG fails)
    except UnidentifiedImageError:
        return None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UnknownType(f"this image cannot be read: {type(err).__name__}") from None
    kind = IMAGE_TYPES.get(fmt)
    if kind is None:
        raise UnknownType(f"{fmt or 'this'} images are not accepted: send PNG, JPEG, GIF "
                          "or WebP")
    return Kind(kind, width, height)


def _is_text(path: Path) -> bool:
    """All of it is UTF-8 with no NUL (a zip, an executable, UTF-16: not text)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 16):
                if b"\0" in chunk:
                    return False
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _text_type(path: Path, name: str | None) -> str:
    suffix = Path(name).suffix.lower() if name else ""
    if suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return "text/plain"
        return "application/json"
    return TEXT_SUBTYPES.get(suffix, "text/plain")


def clean_name(name: str | None) -> str | None:
    """A file's name as it may be kept and shown: its last path part, without control or
    format characters (no newline, no right-to-left override), no leading dots, at most
    MAX_NAME characters with its extension kept; None when nothing is left."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in unicodedata.normalize("NFC", base)
                   if not unicodedata.category(c).startswith(("C", "Z")) or c == " ")
    base = " ".join(base.split()).lstrip(". ").rstrip(". ")
    if not base:
        return None
    if len(base) > MAX_NAME:
        stem, dot, ext = base.rpartition(".")
        ext = ext[:16] if dot and stem else ""
        keep = MAX_NAME - len(ext) - (1 if ext else 0)
        base = f"{(stem if ext else base)[:keep].rstrip()}{'.' + ext if ext else ''}"
    return base
