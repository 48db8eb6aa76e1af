"""Pure conversions from Roboflow's shapes to the platform's rows. No I/O, no Beam.

Roboflow boxes are centre-pixel (``x``, ``y`` = centre, ``width``/``height`` in pixels, relative to
``annotation.width/height``); the platform stores normalised top-left boxes with CHECKs
(``bbox_x/y`` in [0, 1], ``bbox_width/height`` in (0, 1]) and normalised ``polygon`` points.

    >>> box_to_bbox(Box("cat", x=100, y=150, width=50, height=80), 640, 480)
    (0.1171875, 0.22916666666666666, 0.078125, 0.16666666666666666)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import re
import uuid
from typing import Any

from transforms.core.records import Box, ImageDetails, ImportContext, StoredImage

SOURCE = "import"
SPLITS = {"train": "train", "valid": "val", "val": "val", "test": "test"}
_NAMESPACE = uuid.UUID("5b0c52ae-52c1-4a9e-9f61-3f0f5b3f7a10")
MIN_BOX_SIZE = 1e-6  # of the image side; smaller rounds to 0 in a ``real`` column and fails its CHECK
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ImageDataError(ValueError):
    """The downloaded bytes are not a usable image. ``kind`` names the dead-letter reason."""

    def __init__(self, kind: str, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable


class DetailsError(ValueError):
    """Roboflow's details for an image cannot be imported as they are (e.g. an unmapped class)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


# ---- identities and paths -------------------------------------------------------------------

def safe_image_id(image_id: str) -> str:
    """The id as a path segment: Roboflow ids are 20 alphanumerics; anything else is hashed."""
    if _SAFE_ID.fullmatch(image_id):
        return image_id
    return "h" + hashlib.sha256(image_id.encode("utf-8")).hexdigest()[:40]


def source_ref(dataset_id: str, image_id: str) -> str:
    """The unique key of an imported image in ``od_images`` (one row per dataset and image)."""
    return f"roboflow:{image_id}@{dataset_id}"


def project_folder(workspace: str, project: str) -> str:
    """``od_images.folder`` of an imported image: which Roboflow project it came from (used by --prune)."""
    return f"roboflow/{workspace}/{project}"


def image_uuid(ref: str) -> str:
    """Deterministic ``od_images.id`` so re-runs and retries address the same row."""
    return str(uuid.uuid5(_NAMESPACE, ref))


def storage_path(dataset_id: str, image_id: str, extension: str) -> str:
    """Deterministic object path from dataset and Roboflow image id, never from the file name."""
    return f"{dataset_id}/roboflow/{safe_image_id(image_id)}.{extension}"


def repair_original_url(url: str, owner: str | None, image_id: str) -> str:
    """Rebuild ``…/<owner>/undefined/original.jpg`` URLs (roboflow-python #256) from owner + id."""
    if "/undefined/" not in url:
        return url
    head, _, tail = url.partition("/undefined/")
    if owner and not head.rstrip("/").endswith("/" + owner):
        scheme_host = head.split("/", 3)
        head = "/".join(scheme_host[:3]) + "/" + owner
    return f"{head}/{image_id}/{tail}"


def platform_split(split: str | None) -> str | None:
    """Roboflow says ``valid``; the platform's CHECK says ``val``."""
    if split is None:
        return None
    return SPLITS.get(split.lower())


# ---- image bytes ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ImageInfo:
    mime_type: str
    extension: str
    width: int
    height: int


_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "image/png", "png"),
    (b"GIF87a", "image/gif", "gif"),
    (b"GIF89a", "image/gif", "gif"),
    (b"BM", "image/bmp", "bmp"),
)


def sniff_image(data: bytes) -> ImageInfo:
    """Content type from the bytes (Roboflow serves PNG as ``original.jpg``), size from the header.

    Raises :class:`ImageDataError` ``undecodable_image`` for bytes that are no image and
    ``truncated_image`` (retryable) when the body ends before the image does.
    """
    mime = ext = None
    for magic, m, e in _MAGIC:
        if data.startswith(magic):
            mime, ext = m, e
            break
    if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime, ext = "image/webp", "webp"
    if mime is None:
        raise ImageDataError("undecodable_image", f"not an image ({len(data)} bytes, starts {data[:8]!r})")
    if _is_truncated(data, ext):
        raise ImageDataError("truncated_image", f"{ext} body ends early ({len(data)} bytes)", retryable=True)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:  # a header claiming more pixels than anything can decode
        raise ImageDataError("undecodable_image", f"{ext} is a decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDataError("undecodable_image", f"{ext} header unreadable: {exc}") from exc
    if width <= 0 or height <= 0:
        raise ImageDataError("undecodable_image", f"{ext} has no pixels ({width}x{height})")
    return ImageInfo(mime, ext, width, height)


def _jpeg_scan_start(data: bytes) -> int:
    """Offset of the first SOS marker, found by walking the header segments (whose payloads may hold
    any bytes, markers included); -1 when the data ends inside the headers, -2 when they are no JPEG's."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return -2
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:
            return pos
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if (marker < 0xC0 and marker != 0x01) or marker in (0xD8, 0xD9) or 0xD0 <= marker <= 0xD7 or length < 2:
            return -2
        pos += 2 + length
    # Out of data inside the headers: cut short, unless the file ends like a whole JPEG does.
    return -2 if data.endswith(b"\xff\xd9") else -1


def _is_truncated(data: bytes, ext: str) -> bool:
    if ext == "jpg":
        # Entropy-coded data never holds FF D9 (an FF there is followed by 00 or a restart marker),
        # so an EOI after the first scan ends the image; trailers after it are fine.
        scan = _jpeg_scan_start(data)
        if scan == -2:
            raise ImageDataError("undecodable_image", "jpg headers are malformed")
        return scan < 0 or data.rfind(b"\xff\xd9") < scan
    if ext == "png":
        return not data.rstrip(b"\x00")[-12:].startswith(b"\x00\x00\x00\x00IEND")
    if ext == "webp":
        return len(data) < 8 + int.from_bytes(data[4:8], "little")
    return False


# ---- geometry -------------------------------------------------------------------------------

def _finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _clip(v: float) -> float:
    return min(1.0, max(0.0, v))


def box_to_bbox(box: Box, image_width: int, image_height: int) -> tuple[float, float, float, float] | None:
    """Centre-pixel box -> normalised top-left box clipped to the image; None if nothing is left."""
    if not _finite(box.x, box.y, box.width, box.height) or image_width <= 0 or image_height <= 0:
        return None
    if box.width <= 0 or box.height <= 0:
        return None
    x0 = _clip((box.x - box.width / 2) / image_width)
    x1 = _clip((box.x + box.width / 2) / image_width)
    y0 = _clip((box.y - box.height / 2) / image_height)
    y1 = _clip((box.y + box.height / 2) / image_height)
    if x1 - x0 < MIN_BOX_SIZE or y1 - y0 < MIN_BOX_SIZE:
        return None
    return x0, y0, x1 - x0, y1 - y0


def points_to_polygon(points, image_width: int, image_height: int) -> list[dict[str, float]] | None:
    """Pixel polygon -> normalised ``[{"x", "y"}]`` clamped to [0, 1]; None below three usable points."""
    if not points:
        return None
    polygon = [
        {"x": _clip(px / image_width), "y": _clip(py / image_height)}
        for px, py in points
        if _finite(px, py)
    ]
    return polygon if len(polygon) >= 3 else None


def parse_details(payload: dict[str, Any]) -> ImageDetails:
    """Roboflow's ``{"image": {...}}`` details body -> :class:`ImageDetails`."""
    image = payload.get("image")
    if not isinstance(image, dict) or not image.get("id"):
        raise DetailsError("bad_details", "details response has no image")
    annotation = image.get("annotation") or {}
    boxes = []
    for raw in annotation.get("boxes") or []:
        if not isinstance(raw, dict):
            continue
        points = raw.get("points")
        boxes.append(
            Box(
                label=str(raw.get("label", raw.get("class", ""))),
                x=_number(raw.get("x")),
                y=_number(raw.get("y")),
                width=_number(raw.get("width")),
                height=_number(raw.get("height")),
                points=tuple((_number(p.get("x")), _number(p.get("y"))) for p in points if isinstance(p, dict))
                if isinstance(points, list)
                else None,
            )
        )
    urls = image.get("urls") or {}
    owner = image.get("owner")
    image_id = str(image["id"])
    return ImageDetails(
        image_id=image_id,
        name=str(image.get("name") or ""),
        owner=owner,
        split=image.get("split"),
        tags=tuple(str(t) for t in image.get("tags") or ()),
        created=_finite_or_none(image.get("created")),
        width=_positive_int(annotation.get("width")),
        height=_positive_int(annotation.get("height")),
        boxes=tuple(boxes),
        original_url=repair_original_url(str(urls.get("original") or ""), owner, image_id),
        annotation_key=annotation.get("key"),
    )


def _number(value: Any) -> float:
    """A float, or NaN for anything that is none (null, "abc", an integer too big for a float)."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan


def _finite_or_none(value: Any) -> float | None:
    number = _number(value)
    return number if math.isfinite(number) else None


def _positive_int(value: Any) -> int | None:
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return n if n > 0 else None


def pg_text(value: Any) -> Any:
    """Strings as Postgres ``text``/``jsonb`` accept them, in lists and dicts too: NUL and lone
    surrogates (which JSON can carry and Postgres refuses) become U+FFFD; the rest is untouched."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)
        return value
    if isinstance(value, dict):
        return {pg_text(k): pg_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [pg_text(v) for v in value]
    return value


# ---- hashes and rows ------------------------------------------------------------------------

def check_classes(details: ImageDetails, ctx: ImportContext) -> None:
    """Every label must have a mapping entry (a class id or an explicit skip)."""
    missing = sorted({b.label for b in details.boxes if b.label not in ctx.class_ids})
    if missing:
        raise DetailsError("unmapped_class", f"labels with no class mapping entry: {missing}")


def import_hash(details: ImageDetails, ctx: ImportContext) -> str:
    """Fingerprint of everything the rows are made of, so unchanged images are skipped on re-runs."""
    canonical = {
        "v": 1,
        "image": dataclasses.asdict(details) | {"original_url": None},
        "version": ctx.version,
        "classes": {b.label: ctx.class_ids.get(b.label) for b in details.boxes},
        # The image_url kind is part of the rows: rows written with a public-object URL into a private bucket
        # (it answers "Bucket not found") are rewritten by the next run, without downloading anything again.
        "bucket": ctx.bucket if ctx.bucket_public else f"{ctx.bucket} (authenticated url)",
    }
    blob = json.dumps(canonical, sort_keys=True, default=str, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def annotation_source_key(box: Box, seen: dict[str, int]) -> str:
    """Content-derived key: an unchanged box keeps its row across re-imports; a moved box gets a new one."""
    blob = json.dumps([box.label, box.x, box.y, box.width, box.height, box.points], default=str)
    digest = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]
    n = seen.get(digest, 0)
    seen[digest] = n + 1
    return f"{digest}#{n}"


@dataclasses.dataclass(frozen=True)
class ImageRows:
    image: dict[str, Any]
    dataset_image: dict[str, Any]
    annotations: list[dict[str, Any]]
    dropped_annotations: dict[str, int]


def build_rows(stored: StoredImage, ctx: ImportContext, image_url: str) -> ImageRows:
    """The ``od_images``, ``od_dataset_images`` and ``od_annotations`` rows of one stored image."""
    d = stored.details
    ref = source_ref(ctx.dataset_id, d.image_id)
    image_id = image_uuid(ref)
    width, height = d.width or stored.width, d.height or stored.height
    annotations: list[dict[str, Any]] = []
    dropped: dict[str, int] = {}
    seen: dict[str, int] = {}
    for box in d.boxes:
        class_id = ctx.class_ids.get(box.label)
        if class_id is None:
            dropped["skipped_class"] = dropped.get("skipped_class", 0) + 1
            continue
        bbox = box_to_bbox(box, width, height)
        if bbox is None:
            dropped["invalid_geometry"] = dropped.get("invalid_geometry", 0) + 1
            continue
        annotations.append(
            {
                "dataset_id": ctx.dataset_id,
                "image_id": image_id,
                "class_id": class_id,
                "bbox_x": bbox[0],
                "bbox_y": bbox[1],
                "bbox_width": bbox[2],
                "bbox_height": bbox[3],
                "polygon": points_to_polygon(box.points, width, height),
                "source_key": annotation_source_key(box, seen),
                "is_ai_generated": False,
                "attributes": {"roboflow_label": pg_text(box.label)},
            }
        )
    status = "annotated" if annotations else "pending"
    roboflow = {
        "image_id": d.image_id,
        "workspace": ctx.workspace,
        "project": ctx.project,
        "version": ctx.version,
        "owner": d.owner,
        "name": d.name,
        "split": d.split,
        "tags": list(d.tags),
        "created": d.created,
        "annotation_key": d.annotation_key,
    }
    provenance = [f"roboflow:{ctx.workspace}/{ctx.project}"]
    if ctx.version is not None:
        provenance.append(f"roboflow-version:{ctx.version}")
    image_row = {
        "id": image_id,
        "filename": stored.storage_path.rsplit("/", 1)[-1],
        "original_filename": pg_text(d.name[:1024]) or None,
        "image_url": image_url,
        "width": stored.width,
        "height": stored.height,
        "file_size_bytes": stored.size_bytes,
        "mime_type": stored.mime_type,
        "source": SOURCE,
        "folder": project_folder(ctx.workspace, ctx.project),
        "tags": pg_text(list(dict.fromkeys([*d.tags, *provenance]))),
        "status": status,
        "metadata": {"roboflow": pg_text(roboflow)},
        "storage_bucket": ctx.bucket,
        "storage_path": stored.storage_path,
        "file_hash": stored.file_hash,
        "source_ref": ref,
    }
    dataset_image_row = {
        "dataset_id": ctx.dataset_id,
        "image_id": image_id,
        "status": status,
        "annotation_count": len(annotations),
        "split": platform_split(d.split),
        "import_hash": stored.import_hash,
    }
    return ImageRows(image_row, dataset_image_row, annotations, dropped)
