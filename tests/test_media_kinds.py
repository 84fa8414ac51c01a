"""What a file is, by its bytes: audio, PDF, text and images taken, liars and the rest
refused; the names files keep. Real files written to disk and read back."""

from __future__ import annotations

import io
import os
import wave
from pathlib import Path

import pytest
from PIL import Image

from ganglion.storage.media_kinds import UnknownType, clean_name, identify


def wav(seconds: float = 0.2, rate: int = 16_000) -> bytes:
    """A real WAV: mono 16-bit silence with a little noise."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(os.urandom(int(seconds * rate) * 2))
    return out.getvalue()


# The first bytes of real files of each format (their headers as the specs lay them out);
# the rest is noise: type detection reads only the head of an audio file.
OGG_OPUS = b"OggS\x00\x02" + bytes(20) + b"\x01\x13OpusHead\x01\x01"
WEBM = (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04\x42\xf3\x81"
        b"\x08\x42\x82\x84webm\x42\x87\x81\x04\x42\x85\x81\x02")  # Chromium's MediaRecorder
FLAC = b"fLaC\x00\x00\x00\x22"
M4A = b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00M4A isommp42"
MP3_ID3 = b"ID3\x04\x00\x00\x00\x00\x00\x00"
MP3_FRAME = b"\xff\xfb\x90\x64"  # MPEG-1 layer III, 128 kbit/s, 44.1 kHz


def write(tmp_path: Path, data: bytes, name: str = "f") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("data", "expected"), [
    (wav(), "audio/wav"),
    (OGG_OPUS + os.urandom(300), "audio/ogg"),
    (WEBM + os.urandom(300), "audio/webm"),
    (FLAC + os.urandom(300), "audio/flac"),
    (M4A + os.urandom(300), "audio/mp4"),
    (MP3_ID3 + os.urandom(300), "audio/mpeg"),
    (MP3_FRAME + os.urandom(300), "audio/mpeg"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + os.urandom(100), "application/pdf"),
    ("naïve text, ünïcode ✓\n".encode(), "text/plain"),
])
def test_each_accepted_format_is_known_by_its_bytes_whatever_its_name(
        tmp_path: Path, data: bytes, expected: str) -> None:
    for name in (None, "upload.bin", "no-extension"):
        assert identify(write(tmp_path, data), name).type == expected


def test_text_is_labelled_by_its_name_and_json_only_when_it_parses(tmp_path: Path) -> None:
    path = write(tmp_path, b"a,b\n1,2\n")
    assert identify(path, "table.csv").type == "text/csv"
    assert identify(path, "notes.md").type == "text/markdown"
    assert identify(write(tmp_path, b'{"a": [1, 2]}'), "x.json").type == "application/json"
    assert identify(write(tmp_path, b'{"a": [1, '), "x.json").type == "text/plain"


def test_an_image_keeps_its_size(tmp_path: Path) -> None:
    out = io.BytesIO()
    Image.new("RGB", (30, 20)).save(out, "PNG")
    kind = identify(write(tmp_path, out.getvalue()), "a.png")
    assert (kind.type, kind.width, kind.height) == ("image/png", 30, 20)


@pytest.mark.parametrize(("data", "name"), [
    (b"PK\x03\x04\x14\x00\x08\x00" + os.urandom(200), None),  # a zip
    (b"MZ\x90\x00\x03\x00\x00\x00" + bytes(200), "setup.txt"),  # an .exe
    (b"\x7fELF\x02\x01\x01" + bytes(200), None),
    ("utf-16 text".encode("utf-16"), "a.txt"),
    (b"\xff\xfe\xfd latin-1 \xe9", None),  # not UTF-8
    (b"text\x00with a NUL", None),
    (b"#!/bin/sh\nrm -rf ~\n", "cat.png"),  # text: taken, but not as what its name says
    (wav(), "song.pdf"),
    (b"%PDF-1.4\n" + os.urandom(50), "voice.ogg"),
])
def test_what_is_none_of_them_or_lies_about_its_type_is_refused(
        tmp_path: Path, data: bytes, name: str | None) -> None:
    with pytest.raises(UnknownType):
        identify(write(tmp_path, data), name)


def test_a_names_path_parts_control_characters_and_length_go() -> None:
    assert clean_name("../../etc/passwd") == "passwd"
    assert clean_name("C:\\Users\\me\\report.pdf") == "report.pdf"
    assert clean_name("evil\u202egpj.exe") == "evilgpj.exe"  # no right-to-left override
    assert clean_name("two\nlines\t.txt") == "twolines.txt"
    assert clean_name("  ..hidden  ") == "hidden"
    assert clean_name("my   notes.md") == "my notes.md"
    assert clean_name("") is None and clean_name("/") is None and clean_name("..") is None
    long = clean_name("x" * 500 + ".pdf")
    assert long is not None and len(long) == 120 and long.endswith("x.pdf")
