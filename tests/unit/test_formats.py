"""Originals in every format Roboflow keeps, and the bucket's own limits (issue 14)."""

import io
import struct

import pytest
from PIL import Image

from transforms.core.convert import ImageDataError, mime_allowed, size_limit_bytes, sniff_image


def encoded(fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (37, 21), (200, 30, 90))
    (image.convert("P") if fmt == "GIF" else image).save(buffer, fmt, **save_args)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt, args, mime, ext", [
    ("JPEG", {}, "image/jpeg", "jpg"),
    ("PNG", {}, "image/png", "png"),
    ("WEBP", {}, "image/webp", "webp"),
    ("BMP", {}, "image/bmp", "bmp"),
    ("TIFF", {}, "image/tiff", "tiff"),
    ("TIFF", {"compression": "tiff_lzw"}, "image/tiff", "tiff"),
    ("GIF", {}, "image/gif", "gif"),
])
def test_every_format_is_recognised_from_its_bytes(fmt, args, mime, ext):
    info = sniff_image(encoded(fmt, **args))
    assert (info.mime_type, info.extension, info.width, info.height) == (mime, ext, 37, 21)


def big_endian_tiff(width: int = 2, height: int = 1) -> bytes:
    """A minimal uncompressed 8-bit grey TIFF in Motorola byte order (Pillow writes Intel order)."""
    entries = [(256, 3, width), (257, 3, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 8 + 2 + 12 * 8 + 4), (278, 3, height), (279, 4, width * height)]
    ifd = struct.pack(">H", len(entries))
    for tag, kind, value in entries:
        payload = struct.pack(">HH", value, 0) if kind == 3 else struct.pack(">I", value)
        ifd += struct.pack(">HHI", tag, kind, 1) + payload
    return b"MM\x00*" + struct.pack(">I", 8) + ifd + struct.pack(">I", 0) + bytes(range(width * height))


def test_big_endian_tiff_is_recognised():
    info = sniff_image(big_endian_tiff())
    assert (info.mime_type, info.extension, info.width, info.height) == ("image/tiff", "tiff", 2, 1)
    with pytest.raises(ImageDataError) as caught:
        sniff_image(b"MM\x00*" + b"\x00" * 20)  # the magic with no readable directory
    assert caught.value.kind == "undecodable_image"


def test_a_bmp_cut_short_is_truncated():
    data = encoded("BMP")
    with pytest.raises(ImageDataError) as caught:
        sniff_image(data[:-40])
    assert caught.value.kind == "truncated_image" and caught.value.retryable


@pytest.mark.parametrize("value, expected", [
    (52428800, 52428800), ("50MB", 50_000_000), ("50 mb", 50_000_000), ("1.5GB", 1_500_000_000),
    ("100kb", 100_000), ("2048", 2048), (None, None), (0, None),
])
def test_size_limits_use_supabases_decimal_units(value, expected):
    assert size_limit_bytes(value) == expected


def test_an_unreadable_size_limit_is_an_error():
    with pytest.raises(ValueError):
        size_limit_bytes("fifty megabytes")


@pytest.mark.parametrize("mime, allowed, ok", [
    ("image/tiff", None, True),
    ("image/tiff", [], True),
    ("image/tiff", ["image/jpeg", "image/png", "image/webp", "image/gif"], False),
    ("image/gif", ["image/jpeg", "image/png", "image/webp", "image/gif"], True),
    ("image/bmp", ["image/*"], True),
    ("image/bmp", ["application/*"], False),
])
def test_mime_types_are_compared_like_supabase_does(mime, allowed, ok):
    assert mime_allowed(mime, allowed) is ok
