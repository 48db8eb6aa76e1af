"""Image bytes made on request: a few cached base images, made unique per image by metadata.

Encoding a JPEG per request would cap a benchmark at a few dozen images per second, so each
(width, height, format) is encoded once and every image gets its own copy with a JPEG COM segment
(PNG tEXt chunk, GIF comment extension, WEBP unknown chunk; bytes after the image data for BMP and
TIFF, whose offsets are absolute) holding its id plus seeded padding up to its target size.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
import threading
import zlib

from PIL import Image, ImageDraw

from .dataset import ImageRecord

THUMB_MAX_SIDE = 256
_PRINTABLE = bytes(0x21 + b % 94 for b in range(256))
_JPEG_SEGMENT_MAX = 65533


def sniff_content_type(data: bytes) -> str:
    """What the bytes are, whatever the URL says (PNGs are served under original.jpg)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:2] == b"BM":
        return "image/bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return "application/octet-stream"


class ImageFactory:
    """Produces originals, thumbnails, export copies and corrupt bytes for image records."""

    def __init__(self, seed: int):
        self.seed = seed
        self._lock = threading.Lock()
        self._bases: dict[tuple[int, int, str], bytes] = {}
        self._thumbs: dict[tuple[int, int], bytes] = {}

    def original(self, record: ImageRecord) -> bytes:
        base = self._base(record.width, record.height, record.image_format)
        tag = f"roboflow-emulator id={record.id}".encode()
        if record.image_format == "png":
            return _png_with_text(base, tag, self._padding(record, len(base) + len(tag) + 24))
        if record.image_format == "jpeg":
            return _jpeg_with_comment(base, tag, self._padding(record, len(base) + len(tag) + 4))
        filler = self._padding(record, len(base) + len(tag) + 16)
        if record.image_format == "gif":
            return _gif_with_comment(base, tag + b" " + filler)
        if record.image_format == "webp":
            return _webp_with_chunk(base, tag + b" " + filler)
        data = base + tag + b" " + filler
        if record.image_format == "bmp":  # the header's file size covers the trailer
            data = data[:2] + struct.pack("<I", len(data)) + data[6:]
        return data

    def thumbnail(self, record: ImageRecord) -> bytes:
        key = (record.width, record.height)
        with self._lock:
            thumb = self._thumbs.get(key)
        if thumb is None:
            image = Image.open(io.BytesIO(self._base(record.width, record.height, "jpeg")))
            image.thumbnail((THUMB_MAX_SIDE, THUMB_MAX_SIDE))
            thumb = _encode(image, "jpeg")
            with self._lock:
                self._thumbs[key] = thumb
        return _jpeg_with_comment(thumb, f"roboflow-emulator thumb id={record.id}".encode(), b"")

    def export_copy(self, record: ImageRecord, size_ratio: float = 1.0) -> bytes:
        """Exports are recompressed JPEGs: other bytes than the original, ``size_ratio`` of its volume.

        The original's padding stands for its picture content, so a recompressed copy keeps that share
        of it; dropping it all would make the ZIP path move a twentieth of the importer's bytes.
        """
        base = self._base(record.width, record.height, "jpeg")
        tag = f"roboflow-emulator export id={record.id}".encode()
        target = int(record.byte_size * size_ratio)
        padding = self._padding(record, len(base) + len(tag) + 4, target)
        return _jpeg_with_comment(base, tag, padding[::-1])  # reversed: the same seeded noise starts both

    def undecodable(self, record: ImageRecord) -> bytes:
        """Starts like a JPEG, then garbage: what a corrupt upload looks like on the CDN."""
        size = max(1024, record.byte_size)
        return b"\xff\xd8\xff\xe0" + hashlib.shake_128(f"{self.seed}:corrupt:{record.id}".encode()).digest(size - 4)

    def _padding(self, record: ImageRecord, used: int, size: int | None = None) -> bytes:
        missing = (record.byte_size if size is None else size) - used
        if missing <= 0:
            return b""
        noise = hashlib.shake_128(f"{self.seed}:pad:{record.id}".encode()).digest(missing)
        return noise.translate(_PRINTABLE)

    def _base(self, width: int, height: int, image_format: str) -> bytes:
        key = (width, height, image_format)
        with self._lock:
            base = self._bases.get(key)
        if base is None:
            base = _encode(_draw_base(self.seed, width, height), image_format)
            with self._lock:
                self._bases[key] = base
        return base


def _draw_base(seed: int, width: int, height: int) -> Image.Image:
    rng = random.Random(f"{seed}:{width}x{height}")
    image = Image.new("RGB", (width, height), tuple(rng.randrange(60, 200) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        left, top = rng.randrange(width), rng.randrange(height)
        right = min(width, left + rng.randrange(8, max(9, width // 3)))
        bottom = min(height, top + rng.randrange(8, max(9, height // 3)))
        draw.rectangle((left, top, right, bottom), fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


def _encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, "PNG", optimize=True)
    elif image_format == "webp":
        image.save(buffer, "WEBP", quality=60)
    elif image_format == "bmp":
        image.save(buffer, "BMP")
    elif image_format == "tiff":
        image.save(buffer, "TIFF", compression="tiff_lzw")
    elif image_format == "gif":
        image.convert("P").save(buffer, "GIF")
    else:
        image.save(buffer, "JPEG", quality=60)
    return buffer.getvalue()


def _gif_with_comment(gif: bytes, text: bytes) -> bytes:
    """A comment extension (sub-blocks of up to 255 bytes) just before the trailer byte."""
    blocks = b"".join(bytes([len(text[i:i + 255])]) + text[i:i + 255] for i in range(0, len(text), 255))
    return gif[:-1] + b"\x21\xfe" + blocks + b"\x00" + gif[-1:]


def _webp_with_chunk(webp: bytes, data: bytes) -> bytes:
    """An unknown RIFF chunk after the image's (decoders skip it); the RIFF size covers it."""
    chunk = b"XPAD" + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")
    body = webp[8:] + chunk
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _jpeg_with_comment(jpeg: bytes, tag: bytes, padding: bytes) -> bytes:
    """Insert COM segments after SOI/APP0 (JFIF wants APP0 first); padding spans several segments."""
    insert_at = 2
    if jpeg[2:4] == b"\xff\xe0":
        insert_at = 4 + struct.unpack(">H", jpeg[4:6])[0]
    segments = [tag] + [padding[i : i + _JPEG_SEGMENT_MAX] for i in range(0, len(padding), _JPEG_SEGMENT_MAX)]
    comments = b"".join(b"\xff\xfe" + struct.pack(">H", len(s) + 2) + s for s in segments)
    return jpeg[:insert_at] + comments + jpeg[insert_at:]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_with_text(png: bytes, tag: bytes, padding: bytes) -> bytes:
    """Insert tEXt chunks right after IHDR (signature 8 bytes + IHDR chunk 25 bytes)."""
    chunks = _png_chunk(b"tEXt", b"Comment\x00" + tag)
    if padding:
        chunks += _png_chunk(b"tEXt", b"Padding\x00" + padding)
    return png[:33] + chunks + png[33:]
