"""Image tokens: OpenAI's tile formula, Anthropic's pixel formula, image sizes from headers.

OpenAI bills an image as ``base + tile * n_tiles`` after scaling it to fit 2048 x 2048 and
then its short side to 768 px (``base`` alone at ``detail: low``). Anthropic bills about
``width * height / 750`` after scaling to at most 1568 px on the long edge and about
1.15 megapixels. Both need the image's size, read here from the first bytes of a base64
payload (PNG, GIF, WebP or JPEG); without a size the largest image is assumed, so an
estimate that reserves budget does not undercount.
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "GPT4O_MINI_TILES",
    "GPT4O_TILES",
    "Tiles",
    "anthropic_image_tokens",
    "base64_image_size",
    "data_url_size",
    "image_size",
    "openai_image_tokens",
    "tile_count",
]


@dataclass(frozen=True, slots=True)
class Tiles:
    """OpenAI's tile formula: ``base + tile * n_tiles`` (``base`` alone at detail low)."""

    base: int
    tile: int


GPT4O_TILES: Final = Tiles(85, 170)
GPT4O_MINI_TILES: Final = Tiles(2833, 5667)


# Without a size, assume the largest image the tile formula can produce (768 x 2048
# after scaling = 8 tiles): an estimate that reserves budget should not undercount.
_UNSIZED_TILES: Final = 8
# Anthropic: tokens ~= width * height / 750 after scaling to <= 1568 px on the long edge
# and about 1.15 megapixels, i.e. at most ~1600 tokens per image.
_ANTHROPIC_MAX_EDGE: Final = 1568
_ANTHROPIC_MAX_PIXELS: Final = 1_150_000
_ANTHROPIC_PIXELS_PER_TOKEN: Final = 750
_ANTHROPIC_UNSIZED_IMAGE: Final = 1600
# Enough base64 to reach a JPEG's frame header past typical EXIF/ICC segments.
_SNIFF_CHARS: Final = 1 << 16


def _be16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "big")


def _le(data: bytes, at: int, size: int) -> int:
    return int.from_bytes(data[at : at + size], "little")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            return _be16(data, at + 7), _be16(data, at + 5)
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            at += 2
            continue
        at += 2 + _be16(data, at + 2)
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF, WebP or JPEG header, or ``None``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return _le(data, 6, 2), _le(data, 8, 2)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8 ":
            return _le(data, 26, 2) & 0x3FFF, _le(data, 28, 2) & 0x3FFF
        if chunk == b"VP8L":
            b0, b1, b2, b3 = data[21:25]
            return 1 + (((b1 & 0x3F) << 8) | b0), 1 + (((b3 & 0x0F) << 10) | (b2 << 2) | (b1 >> 6))
        if chunk == b"VP8X":
            return 1 + _le(data, 24, 3), 1 + _le(data, 27, 3)
        return None
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    return None


def base64_image_size(payload: str) -> tuple[int, int] | None:
    """(width, height) of a base64-encoded image, or ``None`` if its header is unreadable."""
    head = payload[:_SNIFF_CHARS]
    head = head[: len(head) - len(head) % 4]
    try:
        return image_size(binascii.a2b_base64(head))
    except (binascii.Error, ValueError):
        return None


def data_url_size(url: str) -> tuple[int, int] | None:
    """(width, height) of a ``data:...;base64,`` image URL, or ``None`` (remote URLs too)."""
    if not url.startswith("data:"):
        return None
    meta, sep, payload = url.partition(",")
    if not sep or not meta.endswith(";base64"):
        return None
    return base64_image_size(payload)


def tile_count(width: int, height: int) -> int:
    """512 px tiles of an image after OpenAI's scaling (fit 2048 x 2048, short side 768)."""
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    return math.ceil(int(w) / 512) * math.ceil(int(h) / 512)


def _anthropic_pixels_tokens(size: tuple[int, int] | None) -> int:
    if size is None or min(size) <= 0:
        return _ANTHROPIC_UNSIZED_IMAGE
    w, h = size
    scale = min(1.0, _ANTHROPIC_MAX_EDGE / max(w, h), math.sqrt(_ANTHROPIC_MAX_PIXELS / (w * h)))
    return math.ceil(int(w * scale) * int(h * scale) / _ANTHROPIC_PIXELS_PER_TOKEN)


def openai_image_tokens(tiles: Tiles, url: object, detail: object) -> tuple[int, bool]:
    """Tokens of an OpenAI image part and whether the count is exact.

    Args:
        tiles: the model's tile formula.
        url: the part's image URL (only ``data:`` URLs carry a readable size).
        detail: the part's ``detail`` (``low``, ``high``, ``auto`` or missing).

    Returns:
        The tokens, and ``False`` when the size or the detail the API picks is unknown.
    """
    if detail == "low":
        return tiles.base, True
    size = data_url_size(url) if isinstance(url, str) else None
    # unknown size, or "auto" (the API picks the detail): assume high
    exact = size is not None and detail == "high"
    n_tiles = _UNSIZED_TILES if size is None else tile_count(*size)
    return tiles.base + tiles.tile * n_tiles, exact


def anthropic_image_tokens(source: object) -> int:
    """Estimated tokens of an Anthropic image block's ``source`` (sized when base64)."""
    size = None
    if isinstance(source, Mapping) and source.get("type") == "base64":
        data = source.get("data")
        size = base64_image_size(data) if isinstance(data, str) else None
    return _anthropic_pixels_tokens(size)
