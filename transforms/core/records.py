"""The records that flow between the pipeline's steps, and the run-wide import context.

Everything here is small, picklable and free of secrets: Beam ships these between workers and
writes dead letters from them.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

from transforms.core.redact import redact
from transforms.core.tables import OD, PlatformTables


@dataclasses.dataclass(frozen=True)
class ImportContext:
    """Run-wide constants every step needs; built once before the pipeline runs."""

    dataset_id: str
    workspace: str
    project: str
    version: int | None
    bucket: str
    class_ids: dict[str, str | None]  # Roboflow class name -> od_classes.id, None = skip
    max_object_bytes: int | None = None  # the bucket's file_size_limit
    # Keypoint projects: class -> {"names": [...], "edges": [[from, to], ...]} from the version's ``skeletons``
    skeletons: dict[str, dict] | None = None
    allowed_mime_types: tuple[str, ...] | None = None  # the bucket's allowed_mime_types; None = any
    tables: PlatformTables = OD  # od_* (detection, segmentation, keypoints) or cls_* (classification)
    multilabel: bool = False  # classification: several labels per image allowed
    bucket_public: bool = False  # image_url: public-object URL, else the authenticated one (object_url)
    run_id: str | None = None  # od_import_runs.id, written with every image's rows
    resuming: bool = False  # the run continues an interrupted one: images it wrote need no details call
    change_detection: str = "exact"  # or "listing": unchanged listing summary -> no details call


@dataclasses.dataclass(frozen=True)
class Keypoint:
    """One keypoint of a box, in pixels; ``visible`` as COCO's v (0 unlabelled, 1 hidden, 2 visible) when given."""

    name: str
    x: float
    y: float
    visible: int | None = None
    confidence: float | None = None


@dataclasses.dataclass(frozen=True)
class Box:
    """One Roboflow annotation: centre-pixel box, optional pixel polygon and keypoints."""

    label: str
    x: float
    y: float
    width: float
    height: float
    points: tuple[tuple[float, float], ...] | None = None
    keypoints: tuple[Keypoint, ...] | None = None


@dataclasses.dataclass(frozen=True)
class ImageDetails:
    """What the details call tells about one image (the embedding and thumbnails are dropped)."""

    image_id: str
    name: str
    owner: str | None
    split: str | None
    tags: tuple[str, ...]
    created: float | None
    width: int | None
    height: int | None
    boxes: tuple[Box, ...]
    original_url: str
    annotation_key: str | None = None
    # ``annotation`` present: someone labelled the image (``boxes: []`` then means "nothing in it", a null
    # image); absent: nobody has labelled it yet.
    annotated: bool = False
    labels: tuple[str, ...] = ()  # the top-level ``labels`` (classification projects' classes live there)
    user_metadata: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class ExistingImage:
    """What Supabase already holds for one image of this dataset (from an earlier run)."""

    image_id: str  # od_images.id
    storage_path: str | None
    file_hash: str | None
    file_size_bytes: int | None
    mime_type: str | None
    width: int | None
    height: int | None
    import_hash: str | None
    listing_fingerprint: str | None = None


@dataclasses.dataclass(frozen=True)
class StoredImage:
    """An image whose original is in Storage and whose rows are ready to be written."""

    details: ImageDetails
    storage_path: str
    file_hash: str
    size_bytes: int
    mime_type: str
    width: int
    height: int
    import_hash: str
    uploaded: bool  # False when the object was already there (re-run) and nothing was sent
    previously_imported: bool  # rows existed before: stale annotations may need removing
    listing_fingerprint: str | None = None  # stored with the rows for --change_detection listing


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """One image that could not be imported, with a redacted reason. One JSON line each."""

    image_id: str
    step: str
    error_type: str
    message: str
    attempts: int = 1
    time: str = ""

    @classmethod
    def of(cls, image_id: str, step: str, error: BaseException | str, attempts: int = 1) -> DeadLetter:
        error_type = getattr(error, "kind", None) or (
            type(error).__name__ if isinstance(error, BaseException) else "Error"
        )
        attempts = getattr(error, "attempts", attempts) or attempts
        return cls(
            image_id=image_id,
            step=step,
            error_type=str(error_type),
            message=redact(error)[:2000],
            attempts=int(attempts),
            time=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> DeadLetter:
        data: dict[str, Any] = json.loads(line)
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclasses.dataclass(frozen=True)
class ListedImage:
    """One listed image and what the search listing said about it (``fingerprint`` None: unknown)."""

    image_id: str
    fingerprint: str | None = None
    split: str | None = None


@dataclasses.dataclass(frozen=True)
class FetchedImage:
    """An image's details, with the listing fingerprint to store next to its rows.

    Kept apart from :class:`ImageDetails` because the import hash covers every details field.
    """

    details: ImageDetails
    listing_fingerprint: str | None = None

