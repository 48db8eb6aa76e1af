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

from transforms.core.records import Box, ImageDetails, ImportContext, Keypoint, StoredImage

SOURCE = "import"
CLS_SOURCE = "dataset_import"  # cls_images.source has no 'import'; a Roboflow project is a dataset import
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
    (b"II*\x00", "image/tiff", "tiff"),  # little-endian TIFF
    (b"MM\x00*", "image/tiff", "tiff"),  # big-endian TIFF
)


def sniff_image(data: bytes) -> ImageInfo:
    """Content type from the bytes (Roboflow serves every original as ``original.jpg``: JPEG, PNG, WEBP,
    BMP, TIFF or GIF, since its SDK uploads original bytes unchanged), size from the header.

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


IMAGE_MIME_TYPES = tuple(dict.fromkeys(m for _, m, _ in _MAGIC)) + ("image/webp",)
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def size_limit_bytes(value: Any) -> int | None:
    """A bucket's ``file_size_limit`` in bytes: a number, or a string in Supabase's decimal units
    ("50MB" = 50,000,000 bytes). None (or 0) means no bucket limit."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value) or None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?b?)\s*", str(value).lower())
    if not match:
        raise ValueError(f"unreadable file_size_limit {value!r}")
    return int(float(match[1]) * _SIZE_UNITS[match[2] if match[2] in _SIZE_UNITS else match[2] + "b"]) or None


def mime_allowed(mime_type: str, allowed: tuple[str, ...] | list[str] | None) -> bool:
    """Supabase's check: type/subtype compared literally, ``type/*`` wildcards; no list allows all."""
    if not allowed:
        return True
    kind = mime_type.split("/", 1)[0]
    return any(a == mime_type or a == f"{kind}/*" or a == "*/*" for a in allowed)


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
    if ext == "bmp":  # the file header states the file's size
        return len(data) < int.from_bytes(data[2:6], "little")
    return False  # GIF and TIFF state no length; a cut transfer is caught by Content-Length


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


def keypoints_attribute(box: Box, image_width: int, image_height: int,
                        skeleton: dict | None) -> tuple[list[dict[str, Any]], int]:
    """Pixel keypoints -> normalised ``[{"name", "x", "y", "visible"?, "confidence"?}]`` and how many
    were dropped (coordinates that are no number). Keypoints named by position take the skeleton's
    vertex name."""
    names = (skeleton or {}).get("names") or []
    kept, dropped = [], 0
    for keypoint in box.keypoints or ():
        if not _finite(keypoint.x, keypoint.y):
            dropped += 1
            continue
        name = keypoint.name
        if name.isdigit() and int(name) < len(names):
            name = names[int(name)]
        item: dict[str, Any] = {"name": pg_text(name), "x": _clip(keypoint.x / image_width),
                                "y": _clip(keypoint.y / image_height)}
        if keypoint.visible is not None:
            item["visible"] = keypoint.visible
        if keypoint.confidence is not None:
            item["confidence"] = keypoint.confidence
        kept.append(item)
    return kept, dropped


def parse_details(payload: dict[str, Any]) -> ImageDetails:
    """Roboflow's ``{"image": {...}}`` details body -> :class:`ImageDetails`.

    Only boxes and the top-level ``labels`` are documented; keypoints, polygons of semantic segmentation
    and ``user_metadata`` are inferred shapes, so their plausible variants are all accepted.
    """
    image = payload.get("image")
    if not isinstance(image, dict) or not image.get("id"):
        raise DetailsError("bad_details", "details response has no image")
    raw_annotation = image.get("annotation")
    annotation = raw_annotation if isinstance(raw_annotation, dict) else {}
    boxes = tuple(_parse_box(raw) for raw in annotation.get("boxes") or [] if isinstance(raw, dict))
    urls = image.get("urls") or {}
    owner = image.get("owner")
    image_id = str(image["id"])
    metadata = image.get("user_metadata", image.get("userMetadata"))
    return ImageDetails(
        image_id=image_id,
        name=str(image.get("name") or ""),
        owner=owner,
        split=image.get("split"),
        tags=tuple(str(t) for t in image.get("tags") or ()),
        created=_finite_or_none(image.get("created")),
        width=_positive_int(annotation.get("width")),
        height=_positive_int(annotation.get("height")),
        boxes=boxes,
        original_url=repair_original_url(str(urls.get("original") or ""), owner, image_id),
        annotation_key=annotation.get("key"),
        annotated=isinstance(raw_annotation, dict),
        labels=parse_labels(image.get("labels")),
        user_metadata=metadata if isinstance(metadata, dict) and metadata else None,
    )


def parse_labels(raw: Any) -> tuple[str, ...]:
    """Image labels as a list of names, one name, or a list of ``{"label"|"name"|"class": ...}``.

    A string is one label, never split: class names may hold commas."""
    if raw is None or raw == "":
        return ()
    items = [raw] if isinstance(raw, (str, dict)) else raw if isinstance(raw, list) else []
    labels = []
    for item in items:
        if isinstance(item, dict):
            item = item.get("label", item.get("name", item.get("class")))
        if item is not None and str(item) != "":
            labels.append(str(item))
    return tuple(dict.fromkeys(labels))


def _parse_box(raw: dict[str, Any]) -> Box:
    points = raw.get("points")
    polygon = (tuple((_number(p.get("x")), _number(p.get("y"))) for p in points if isinstance(p, dict))
               if isinstance(points, list) else None)
    x, y, width, height = (_number(raw.get(k)) for k in ("x", "y", "width", "height"))
    if not _finite(x, y, width, height) and polygon:
        x, y, width, height = _box_around(polygon)
    return Box(label=str(raw.get("label", raw.get("class", ""))), x=x, y=y, width=width, height=height,
               points=polygon, keypoints=_parse_keypoints(raw.get("keypoints")))


def _box_around(points: tuple[tuple[float, float], ...]) -> tuple[float, float, float, float]:
    """Centre-pixel box enclosing a polygon (a segmentation shape sent without its box)."""
    usable = [(px, py) for px, py in points if _finite(px, py)]
    if not usable:
        return math.nan, math.nan, math.nan, math.nan
    xs, ys = [p[0] for p in usable], [p[1] for p in usable]
    return (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)


def _parse_keypoints(raw: Any) -> tuple[Keypoint, ...] | None:
    """``[{x, y, class|name, class_id, visible|confidence}]`` (inference's shape) or COCO's flat
    ``[x, y, v, ...]``; unnamed keypoints are named by position (the skeleton names them later)."""
    if not isinstance(raw, list) or not raw:
        return None
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
        return tuple(Keypoint(str(i // 3), _number(raw[i]), _number(raw[i + 1]), _visibility(raw[i + 2]))
                     for i in range(0, len(raw) - 2, 3))
    keypoints = []
    for position, item in enumerate(raw):
        if not isinstance(item, dict):
            continue
        name = item.get("class", item.get("name", item.get("class_name")))
        if name is None or str(name) == "":
            name = item.get("class_id", position)
        confidence = _finite_or_none(item.get("confidence"))
        keypoints.append(Keypoint(str(name), _number(item.get("x")), _number(item.get("y")),
                                  _visibility(item.get("visible", item.get("visibility"))), confidence))
    return tuple(keypoints)


def _visibility(value: Any) -> int | None:
    if isinstance(value, bool):
        return 2 if value else 1
    number = _number(value)
    return int(number) if math.isfinite(number) and number in (0, 1, 2) else None


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

def label_state(details: ImageDetails) -> str:
    """``null`` (labelled, nothing in it), ``unannotated`` (nobody labelled it) or ``labelled``."""
    if details.boxes or details.labels:
        return "labelled"
    return "null" if details.annotated else "unannotated"


def class_names(details: ImageDetails, ctx: ImportContext) -> list[str]:
    """The Roboflow classes an image's rows are made of: its boxes' labels, or for a classification
    import its top-level labels."""
    return list(details.labels) if ctx.tables.kind == "cls" else [b.label for b in details.boxes]


def check_classes(details: ImageDetails, ctx: ImportContext) -> None:
    """Every label must have a mapping entry (a class id or an explicit skip); a single-label
    classification image has at most one."""
    missing = sorted({name for name in class_names(details, ctx) if name not in ctx.class_ids})
    if missing:
        raise DetailsError("unmapped_class", f"labels with no class mapping entry: {missing}")
    if ctx.tables.kind == "cls" and not ctx.multilabel and len(details.labels) > 1:
        raise DetailsError("several_labels", f"{len(details.labels)} labels {list(details.labels)[:5]} on an image "
                                             "of a single-label project; import into a multi_label cls_datasets row")


def import_hash(details: ImageDetails, ctx: ImportContext) -> str:
    """Fingerprint of everything the rows are made of, so unchanged images are skipped on re-runs."""
    canonical = {
        "v": 2,  # 2: labels, null-vs-unannotated, keypoints and user_metadata are part of the rows
        "image": dataclasses.asdict(details) | {"original_url": None},
        "version": ctx.version,
        "classes": {name: ctx.class_ids.get(name) for name in class_names(details, ctx)},
        # The image_url kind is part of the rows: rows written with a public-object URL into a private bucket
        # (it answers "Bucket not found") are rewritten by the next run, without downloading anything again.
        "bucket": ctx.bucket if ctx.bucket_public else f"{ctx.bucket} (authenticated url)",
    }
    blob = json.dumps(canonical, sort_keys=True, default=str, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def annotation_source_key(box: Box, seen: dict[str, int]) -> str:
    """Content-derived key: an unchanged box keeps its row across re-imports; a moved box gets a new one."""
    parts = [box.label, box.x, box.y, box.width, box.height, box.points]
    if box.keypoints:  # only then, so boxes without keypoints keep the keys earlier runs wrote
        parts.append([dataclasses.astuple(k) for k in box.keypoints])
    blob = json.dumps(parts, default=str)
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
    keypoints: int = 0


def build_rows(stored: StoredImage, ctx: ImportContext, image_url: str) -> ImageRows:
    """The ``od_images``, ``od_dataset_images`` and ``od_annotations`` rows of one stored image
    (the ``cls_*`` rows for a classification import)."""
    if ctx.tables.kind == "cls":
        return build_cls_rows(stored, ctx, image_url)
    d = stored.details
    ref = source_ref(ctx.dataset_id, d.image_id)
    image_id = image_uuid(ref)
    width, height = d.width or stored.width, d.height or stored.height
    annotations: list[dict[str, Any]] = []
    dropped: dict[str, int] = {}
    seen: dict[str, int] = {}
    keypoint_count = 0
    for box in d.boxes:
        class_id = ctx.class_ids.get(box.label)
        if class_id is None:
            dropped["skipped_class"] = dropped.get("skipped_class", 0) + 1
            continue
        bbox = box_to_bbox(box, width, height)
        if bbox is None:
            dropped["invalid_geometry"] = dropped.get("invalid_geometry", 0) + 1
            continue
        attributes: dict[str, Any] = {"roboflow_label": pg_text(box.label)}
        if box.keypoints:
            skeleton = (ctx.skeletons or {}).get(box.label)
            keypoints, lost = keypoints_attribute(box, width, height, skeleton)
            attributes["keypoints"] = keypoints
            if skeleton and skeleton.get("edges"):
                attributes["skeleton"] = skeleton["edges"]
            keypoint_count += len(keypoints)
            if lost:
                dropped["keypoint_invalid_geometry"] = dropped.get("keypoint_invalid_geometry", 0) + lost
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
                "attributes": attributes,
            }
        )
    # A null image (labelled as holding nothing) is done; an image nobody labelled stays pending.
    status = "annotated" if annotations or label_state(d) == "null" else "pending"
    dataset_image_row = {
        "dataset_id": ctx.dataset_id,
        "image_id": image_id,
        "status": status,
        "annotation_count": len(annotations),
        "split": platform_split(d.split),
        "import_hash": stored.import_hash,
    }
    return ImageRows(_image_row(stored, ctx, image_url, status, SOURCE), dataset_image_row, annotations, dropped,
                     keypoint_count)


def build_cls_rows(stored: StoredImage, ctx: ImportContext, image_url: str) -> ImageRows:
    """The ``cls_images``, ``cls_dataset_images`` and ``cls_labels`` rows (one per class) of one stored
    image of a classification project. The labels are the details' top-level ``labels``."""
    d = stored.details
    image_id = image_uuid(source_ref(ctx.dataset_id, d.image_id))
    labels: list[dict[str, Any]] = []
    dropped: dict[str, int] = {}
    for name in d.labels:
        class_id = ctx.class_ids.get(name)
        if class_id is None:
            dropped["skipped_class"] = dropped.get("skipped_class", 0) + 1
            continue
        labels.append({"dataset_id": ctx.dataset_id, "image_id": image_id, "class_id": class_id,
                       "is_ai_generated": False})
    status = "labeled" if labels else "pending"
    dataset_image_row = {
        "dataset_id": ctx.dataset_id,
        "image_id": image_id,
        "status": status,
        "split": platform_split(d.split) or "unassigned",
        "import_hash": stored.import_hash,
    }
    return ImageRows(_image_row(stored, ctx, image_url, status, CLS_SOURCE), dataset_image_row, labels, dropped)


def _image_row(stored: StoredImage, ctx: ImportContext, image_url: str, status: str, source: str) -> dict[str, Any]:
    """The image row, the same shape in ``od_images`` and ``cls_images``."""
    d = stored.details
    ref = source_ref(ctx.dataset_id, d.image_id)
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
        "labels": list(d.labels),
        "annotated": d.annotated,
    }
    if d.user_metadata:
        roboflow["user_metadata"] = d.user_metadata
    provenance = [f"roboflow:{ctx.workspace}/{ctx.project}"]
    if ctx.version is not None:
        provenance.append(f"roboflow-version:{ctx.version}")
    return {
        "id": image_uuid(ref),
        "filename": stored.storage_path.rsplit("/", 1)[-1],
        "original_filename": pg_text(d.name[:1024]) or None,
        "image_url": image_url,
        "width": stored.width,
        "height": stored.height,
        "file_size_bytes": stored.size_bytes,
        "mime_type": stored.mime_type,
        "source": source,
        "folder": project_folder(ctx.workspace, ctx.project),
        "tags": pg_text(list(dict.fromkeys([*d.tags, *provenance]))),
        "status": status,
        "metadata": {"roboflow": pg_text(roboflow)},
        "storage_bucket": ctx.bucket,
        "storage_path": stored.storage_path,
        "file_hash": stored.file_hash,
        "source_ref": ref,
    }
