"""Regenerate the bad-image corpus in tests/data/bad/images/ (deterministic).

The files are committed; this script only documents how each was made and
rebuilds them if the corpus is extended (``python tests/data/bad/make_bad_images.py``).
Every file is listed with its expected message in ``image_cases.json``.
empty.png, not_an_image.jpg, truncated.jpg, ok.png and subdir/ predate it.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).parent / "images"


def _encoded(fmt: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width x height`` RGB pixels, almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + _png_chunk(b"IEND", b""))


def corpus() -> dict[str, bytes]:
    png, jpg = _encoded("PNG"), _encoded("JPEG")
    crc = bytearray(png)
    crc[60:80] = b"\x00" * 20  # inside IDAT: zlib stream and chunk CRC both broken
    half = {fmt: _encoded(fmt) for fmt in ("GIF", "BMP", "TIFF", "WEBP")}
    return {
        "html_page.jpg": b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
        "utf16_text.png": "not an image".encode("utf-16"),
        "png_signature_only.png": png[:8],
        "header_only.jpg": jpg[:20],
        "truncated.png": png[: len(png) // 2],
        "bad_crc.png": bytes(crc),
        "zero_width.png": _png_declaring(0, 10),
        "bomb.png": _png_declaring(40000, 40000),  # 1.6 G pixels declared in 80 bytes
        "truncated.gif": half["GIF"][: len(half["GIF"]) // 2],
        "truncated.bmp": half["BMP"][: len(half["BMP"]) // 2],
        "truncated.tiff": half["TIFF"][: len(half["TIFF"]) // 2],
        "truncated.webp": half["WEBP"][: len(half["WEBP"]) // 2],
    }


if __name__ == "__main__":
    for name, data in corpus().items():
        (HERE / name).write_bytes(data)
        print(f"wrote {HERE / name} ({len(data)} bytes)")
