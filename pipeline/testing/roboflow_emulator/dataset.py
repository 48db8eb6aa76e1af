"""The generated Roboflow project: image records derived from (seed, index), never stored whole.

Every attribute of image ``i`` comes from a hash of the seed and ``i``, so a record is rebuilt on
demand in microseconds and memory per image is one id string plus a dict slot. Tests mutate the
live project (delete an image, change its boxes); versions are snapshots taken at construction and
keep the generated data, as a real dataset version would.
"""

from __future__ import annotations

import hashlib
import math
import random
import string
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from .config import EmulatorConfig

ALPHANUMERIC = string.ascii_letters + string.digits
_ALPHANUMERIC_TABLE = bytes(ord(ALPHANUMERIC[b % len(ALPHANUMERIC)]) for b in range(256))

SPLITS = ("train", "valid", "test")
IMAGE_SIZES = (
    ((640, 480), 6),
    ((1280, 720), 4),
    ((416, 416), 3),
    ((800, 600), 3),
    ((1024, 768), 2),
    ((480, 640), 2),
    ((320, 240), 2),
    ((1920, 1080), 1),
)
PLAIN_CLASSES = (
    "person", "car", "bicycle", "dog", "helmet", "forklift", "pallet", "traffic light", "cone", "truck",
)  # fmt: skip
HOSTILE_CLASSES = (
    'box "large"',
    "O'Reilly",
    "café ☕",
    "人",
    "'; DROP TABLE images;--",
    "a,b;c|d",
    "back\\slash",
)
TAGS = ("cam_a", "cam_b", "night", "day", "review", "tag with space", "ünïcode")
ODD_NAMES = (
    "../evil.jpg",
    "a/b.jpg",
    "x" * 296 + ".jpg",
    'quote "double".jpg',
    "it's here.jpg",
    "café crème 日本.jpg",
    "🐟 fish.jpg",
    "with  two  spaces.jpg",
    "..\\windows\\evil.jpg",
    "%2e%2e%2fencoded.jpg",
    "semi;colon&amp.jpg",
    "no_extension",
    ".hidden.jpg",
    "UPPER CASE.JPEG",
    "Robert'); DROP TABLE images;--.jpg",
)
# Keypoint projects: every class shares this skeleton (vertex ids start at 1, as in the version's `skeletons`).
KEYPOINT_NAMES = ("head", "left", "right", "tail")
KEYPOINT_EDGES = ((1, 2), (1, 3), (1, 4))
_SIZE_CHOICES = [size for size, _ in IMAGE_SIZES]
_SIZE_WEIGHTS = [weight for _, weight in IMAGE_SIZES]
_EPOCH_MS = 1_690_000_000_000
_SLOT_MS = 60_000


def _digest(seed: int, *parts: object, size: int = 32) -> bytes:
    text = "\x1f".join(str(p) for p in (seed, *parts))
    return hashlib.blake2b(text.encode(), digest_size=size).digest()


def make_id(seed: int, *parts: object, length: int = 20) -> str:
    """A Roboflow-looking opaque alphanumeric id, stable for (seed, parts)."""
    return _digest(seed, *parts, size=length).translate(_ALPHANUMERIC_TABLE).decode()


def seeded_rng(seed: int, *parts: object) -> random.Random:
    return random.Random(int.from_bytes(_digest(seed, *parts, size=8), "big"))


def created_ms_of(index: int, jitter: int) -> int:
    """Creation times are strictly increasing with the index, so listing order is (created, id)."""
    return _EPOCH_MS + index * _SLOT_MS + jitter


def index_from_created_ms(created_ms: int) -> int:
    return (created_ms - _EPOCH_MS) // _SLOT_MS


@dataclass(frozen=True)
class ImageRecord:
    """One image as the API knows it; ``boxes`` use Roboflow's centre-x/y pixel convention."""

    id: str
    index: int
    name: str
    split: str
    tags: tuple[str, ...]
    created_ms: int
    width: int
    height: int
    image_format: str
    byte_size: int
    boxes: tuple[dict, ...]
    labels: tuple[str, ...]
    batch_id: str
    owner: str
    orphan: bool = False
    annotated: bool = True
    user_metadata: dict = field(default_factory=dict)

    @property
    def created(self) -> float:
        """Unix seconds, as the details and project routes report timestamps."""
        return self.created_ms / 1000

    @property
    def annotation_classes(self) -> dict[str, int]:
        return dict(Counter(box["label"] for box in self.boxes))

    @property
    def annotation_count(self) -> int:
        return len(self.boxes)


class Facets(NamedTuple):
    """What search filters and project counts need, without geometry.

    ``annotated`` is False for images nobody labelled yet (no ``annotation`` in details); an image
    annotated as having nothing in it ("null") is annotated with no boxes.
    """

    split: str
    tags: tuple[str, ...]
    box_labels: tuple[str, ...]
    image_labels: tuple[str, ...]
    image_format: str
    annotated: bool = True


@dataclass
class ProjectStats:
    images: int
    splits: dict[str, int]
    classes: dict[str, int]
    unannotated: int


class VersionSnapshot:
    """A dataset version: the first ``image_count`` generated images with their generated annotations."""

    def __init__(self, dataset: Dataset, number: int, image_count: int, created: float):
        self.number = number
        self.image_count = image_count
        self.created = created
        self.name = f"v{number} {'raw' if number == 1 else 'augmented-none'}"
        self._dataset = dataset
        self._stats: ProjectStats | None = None

    @property
    def indices(self) -> range:
        return range(self.image_count)

    @property
    def image_ids(self) -> list[str]:
        return [self._dataset.id_of(i) for i in self.indices]

    def records(self):
        return (self._dataset.generated_record(i) for i in self.indices)

    @property
    def stats(self) -> ProjectStats:
        if self._stats is None:
            self._stats = _stats_of(map(self._dataset.generated_facets, self.indices), self._dataset.classes)
        return self._stats


def _stats_of(all_facets, classes) -> ProjectStats:
    stats = ProjectStats(images=0, splits=dict.fromkeys(SPLITS, 0), classes=dict.fromkeys(classes, 0), unannotated=0)
    for facets in all_facets:
        _apply(stats, facets, +1)
    return stats


def _weighted_table(classes: list[str]) -> tuple[str, ...]:
    """256 slots shared out by weight 1/rank, so one hash byte picks a class with skewed frequency."""
    weights = [1.0 / (rank + 1) for rank in range(len(classes))]
    total = sum(weights)
    table: list[str] = []
    for name, weight in zip(classes, weights, strict=True):
        table += [name] * max(1, round(256 * weight / total))
    return tuple((table + [classes[0]] * 256)[:256])


class Dataset:
    """The live project. Thread-safe; mutations are for tests (changed annotations, deletions)."""

    def __init__(self, config: EmulatorConfig):
        self.config = config
        self.seed = config.seed
        rng = seeded_rng(self.seed, "project")
        self.owner = make_id(self.seed, "owner")
        self.project_internal_id = make_id(self.seed, "project-id", config.project)
        self.annotation_group = rng.choice(("objects", "widgets", "things", "items"))
        self.project_name = config.project.replace("-", " ").title()
        self.classes = self._make_classes(rng)
        self.colors = {name: f"#{seeded_rng(self.seed, 'color', name).randrange(1 << 24):06X}" for name in self.classes}
        self._label_table = _weighted_table(self.classes)
        self.batch_ids = tuple(make_id(self.seed, "batch", k) for k in range(3))
        self.image_count = config.image_count
        total = config.image_count + config.orphan_images
        self._ids = self._make_ids(total)
        self._index_of = {image_id: index for index, image_id in enumerate(self._ids)}
        self.created = created_ms_of(0, 0) / 1000 - 86_400
        self._lock = threading.RLock()
        self._deleted: set[int] = set()
        self._box_overrides: dict[int, tuple[dict, ...]] = {}
        self._label_overrides: dict[int, tuple[str, ...]] = {}
        self._live: list[int] | None = None
        self._stats: ProjectStats | None = None
        self.mutations = 0
        self.versions = [
            VersionSnapshot(
                self,
                number,
                config.image_count * number // config.versions,
                self.created + 86_400 + number * 3_600.5,
            )
            for number in range(1, config.versions + 1)
        ]

    def _make_classes(self, rng: random.Random) -> list[str]:
        count = self.config.class_count or rng.randint(5, 8)
        if self.config.hostile_class_names:
            hostile = min(len(HOSTILE_CLASSES), max(2, count // 2))
            names = rng.sample(HOSTILE_CLASSES, hostile) + rng.sample(PLAIN_CLASSES, count - hostile)
        else:
            names = rng.sample(PLAIN_CLASSES, min(count, len(PLAIN_CLASSES)))
            names += [f"class-{k}" for k in range(count - len(names))]
        return names

    def _make_ids(self, total: int) -> list[str]:
        ids: list[str] = []
        seen: set[str] = set()
        for index in range(total):
            image_id = make_id(self.seed, "image", index)
            salt = 0
            while image_id in seen:
                salt += 1
                image_id = make_id(self.seed, "image", index, salt)
            seen.add(image_id)
            ids.append(image_id)
        return ids

    def __len__(self) -> int:
        return len(self.live_indices())

    @property
    def updated(self) -> float:
        last = self.generated_record(self.image_count - 1).created if self.image_count else self.created
        return last + self.mutations * 0.001

    @property
    def image_ids(self) -> list[str]:
        """Live project image ids in the stable listing order (created, then id)."""
        return [self._ids[i] for i in self.live_indices()]

    @property
    def orphan_ids(self) -> list[str]:
        return self._ids[self.image_count :]

    def id_of(self, index: int) -> str:
        return self._ids[index]

    def index_of(self, image_id: str) -> int | None:
        return self._index_of.get(image_id)

    def is_project_image(self, index: int) -> bool:
        return index < self.image_count

    def is_live(self, index: int) -> bool:
        return index not in self._deleted

    def live_indices(self) -> list[int]:
        live = self._live
        if live is None:
            with self._lock:
                deleted = self._deleted
                live = self._live = [i for i in range(self.image_count) if i not in deleted]
        return live

    def orphan_indices(self) -> range:
        return range(self.image_count, len(self._ids))

    def image(self, image_id: str) -> ImageRecord:
        """The current record of a live image (project or orphan); KeyError if unknown or deleted."""
        index = self._index_of.get(image_id)
        if index is None or index in self._deleted:
            raise KeyError(image_id)
        return self.record(index)

    def record(self, index: int) -> ImageRecord:
        record = self.generated_record(index)
        override = self._box_overrides.get(index)
        if override is not None:
            boxes = tuple(dict(box) for box in override)
            labels = tuple(sorted({box["label"] for box in boxes})) if boxes else ()
            if self.config.project_type == "classification":
                labels = record.labels
            record = replace(record, boxes=boxes, labels=labels, annotated=True)
        labels = self._label_overrides.get(index)
        if labels is not None:
            record = replace(record, labels=labels, annotated=True)
        return record

    def generated_facets(self, index: int) -> Facets:
        """The attributes searches filter on, from one hash: cheap enough to scan 100,000 images."""
        config = self.config
        digest = _digest(self.seed, "facets", index, size=64)
        roll = (digest[0] << 8 | digest[1]) / 65536
        split = "train" if roll < 0.7 else "valid" if roll < 0.9 else "test"
        tags = tuple(tag for offset, tag in enumerate(TAGS) if digest[4 + offset] < 40)
        format_roll = (digest[11] << 8 | digest[12]) / 65536
        image_format = "png" if format_roll < config.png_fraction else "jpeg"
        if config.png_fraction <= format_roll < config.png_fraction + config.other_format_fraction:
            image_format = config.other_formats[digest[60] % len(config.other_formats)]
        if config.project_type == "classification":
            labels = (self._label_table[digest[13]],)
            if config.multilabel:
                labels = tuple(sorted({self._label_table[b] for b in digest[13 : 14 + digest[3] % 3]}))
            if digest[2] / 256 < config.empty_fraction:  # never labelled yet
                return Facets(split, tags, (), (), image_format, annotated=False)
            return Facets(split, tags, (), labels, image_format)
        if digest[2] / 256 < config.empty_fraction:
            return Facets(split, tags, (), (), image_format, annotated=bool(digest[3] & 1))
        box_labels = tuple(self._label_table[b] for b in digest[13 : 14 + digest[3] % config.max_boxes])
        return Facets(split, tags, box_labels, tuple(sorted(set(box_labels))), image_format)

    def facets(self, index: int) -> Facets:
        """Live facets: generated ones with any test override of the boxes applied."""
        override = self._box_overrides.get(index)
        facets = self.generated_facets(index)
        labels = self._label_overrides.get(index)
        if labels is not None:
            facets = facets._replace(image_labels=labels, annotated=True)
        if override is None:
            return facets
        box_labels = tuple(box["label"] for box in override)
        image_labels = (
            facets.image_labels if self.config.project_type == "classification" else tuple(sorted(set(box_labels)))
        )
        return facets._replace(box_labels=box_labels, image_labels=image_labels, annotated=True)

    def generated_record(self, index: int) -> ImageRecord:
        """The record as generated from the seed, ignoring test mutations (what versions contain)."""
        config = self.config
        facets = self.generated_facets(index)
        rng = seeded_rng(self.seed, "record", index)
        (width, height) = rng.choices(_SIZE_CHOICES, weights=_SIZE_WEIGHTS)[0]
        created_ms = created_ms_of(index, rng.randrange(_SLOT_MS))
        byte_size = rng.randint(config.image_kb_min * 1024, config.image_kb_max * 1024)
        name = self._make_name(rng, index, facets.image_format)
        boxes = self._make_boxes(rng, facets.box_labels, width, height)
        return ImageRecord(
            id=self._ids[index],
            index=index,
            name=name,
            split=facets.split,
            tags=facets.tags,
            created_ms=created_ms,
            width=width,
            height=height,
            image_format=facets.image_format,
            byte_size=byte_size,
            boxes=boxes,
            labels=facets.image_labels,
            batch_id=self.batch_ids[rng.randrange(len(self.batch_ids))],
            owner=self.owner,
            orphan=index >= self.image_count,
            annotated=facets.annotated,
            user_metadata={"camera": rng.choice(("north", "south")), "frame": index},
        )

    def _make_name(self, rng: random.Random, index: int, image_format: str) -> str:
        if rng.random() < self.config.odd_name_fraction:
            return rng.choice(ODD_NAMES)
        extension = "." + image_format if image_format != "jpeg" else rng.choice((".jpg", ".jpg", ".jpeg", ".JPG"))
        pattern = rng.randrange(4)
        if pattern == 0:
            return f"IMG_{1000 + index}{extension}"
        if pattern == 1:
            return f"frame_{index:06d}{extension}"
        if pattern == 2:
            return f"photo {index}{extension}"
        return f"caméra_{index}{extension}"

    def _make_boxes(self, rng: random.Random, labels: tuple[str, ...], width: int, height: int) -> tuple[dict, ...]:
        """Boxes of the project's type. The keypoint and semantic-segmentation shapes of image details are
        undocumented (roboflow-api.md §7 and addendum): both are INFERRED. Keypoints follow inference's
        per-detection list; a semantic mask becomes one polygon per class, sent without a box (a mask has
        none), so the importer has to derive it from the points."""
        kind = self.config.project_type
        if kind == "semantic-segmentation":
            polygons = [self._make_box(rng, label, width, height, True) for label in dict.fromkeys(labels)]
            return tuple({"label": box["label"], "points": box["points"]} for box in polygons)
        boxes = [self._make_box(rng, label, width, height, kind == "instance-segmentation") for label in labels]
        if kind == "keypoint-detection":
            for box in boxes:
                box["keypoints"] = self._make_keypoints(rng, box)
        return tuple(boxes)

    def _make_keypoints(self, rng: random.Random, box: dict) -> list:
        left, top = box["x"] - box["width"] / 2, box["y"] - box["height"] / 2
        points = []
        for class_id, name in enumerate(KEYPOINT_NAMES):
            x = round(left + rng.random() * box["width"], 1)
            y = round(top + rng.random() * box["height"], 1)
            points.append({"x": x, "y": y, "class_id": class_id, "class": name, "visible": rng.choice((1, 2, 2, 2))})
        if self.config.keypoint_shape == "flat":
            return [value for p in points for value in (p["x"], p["y"], p["visible"])]
        return points

    def skeletons(self) -> dict[str, dict]:
        """The version's ``skeletons`` of a keypoint project (documented shape: vertices, edges, symmetries)."""
        vertices = [{"id": k + 1, "name": name, "color": "#FF0000", "x": 0.5, "y": 0.5}
                    for k, name in enumerate(KEYPOINT_NAMES)]
        edges = [{"from": a, "to": b, "color": "#00FF00"} for a, b in KEYPOINT_EDGES]
        return {name: {"vertices": vertices, "edges": edges, "symmetries": []} for name in self.classes}

    def _make_box(self, rng: random.Random, label: str, width: int, height: int, segmentation: bool) -> dict:
        box_w = rng.randint(max(2, width // 20), max(3, width // 2))
        box_h = rng.randint(max(2, height // 20), max(3, height // 2))
        left = rng.randint(0, width - box_w)
        top = rng.randint(0, height - box_h)
        if not segmentation:
            return {"label": label, "x": left + box_w / 2, "y": top + box_h / 2, "width": box_w, "height": box_h}
        centre_x, centre_y = left + box_w / 2, top + box_h / 2
        angles = sorted(rng.uniform(0, 2 * math.pi) for _ in range(rng.randint(3, 8)))
        points = []
        for angle in angles:
            radius = rng.uniform(0.5, 1.0)
            x = min(width, max(0.0, centre_x + radius * box_w / 2 * math.cos(angle)))
            y = min(height, max(0.0, centre_y + radius * box_h / 2 * math.sin(angle)))
            points.append({"x": round(x, 1), "y": round(y, 1)})
        return box_around_points(label, points)

    def stats(self) -> ProjectStats:
        """Counts the project route reports; computed once, then kept up to date by mutations."""
        with self._lock:
            if self._stats is None:
                self._stats = _stats_of(map(self.facets, self.live_indices()), self.classes)
            return ProjectStats(
                images=self._stats.images,
                splits=dict(self._stats.splits),
                classes=dict(self._stats.classes),
                unannotated=self._stats.unannotated,
            )

    def version(self, number: int) -> VersionSnapshot | None:
        if 1 <= number <= len(self.versions):
            return self.versions[number - 1]
        return None

    def delete_image(self, image_id: str) -> None:
        """Remove a live project image: gone from listings, details, CDN and project counts."""
        with self._lock:
            index = self._index_of.get(image_id)
            if index is None or index >= self.image_count or index in self._deleted:
                raise KeyError(image_id)
            if self._stats is not None:
                _apply(self._stats, self.facets(index), -1)
            self._deleted.add(index)
            self._live = None
            self.mutations += 1

    def set_labels(self, image_id: str, labels: list[str]) -> None:
        """Replace a classification image's labels, as if someone relabelled it between two imports."""
        self._override(image_id, self._label_overrides, tuple(dict.fromkeys(str(label) for label in labels)))

    def set_boxes(self, image_id: str, boxes: list[dict]) -> None:
        """Replace an image's annotation, as if someone relabelled it between two imports."""
        self._override(image_id, self._box_overrides, tuple(_validated_box(box) for box in boxes))

    def _override(self, image_id: str, overrides: dict, value: tuple) -> None:
        """Set a live project image's override, keeping the project counts up to date."""
        with self._lock:
            index = self._index_of.get(image_id)
            if index is None or index >= self.image_count or index in self._deleted:
                raise KeyError(image_id)
            if self._stats is not None:
                _apply(self._stats, self.facets(index), -1)
            overrides[index] = value
            if self._stats is not None:
                _apply(self._stats, self.facets(index), +1)
            self.mutations += 1


def box_around_points(label: str, points: list[dict]) -> dict:
    """A polygon box: x/y/width/height enclose the points, x/y being the centre."""
    xs = [p["x"] for p in points]
    ys = [p["y"] for p in points]
    return {
        "label": label,
        "x": round((min(xs) + max(xs)) / 2, 2),
        "y": round((min(ys) + max(ys)) / 2, 2),
        "width": round(max(xs) - min(xs), 2),
        "height": round(max(ys) - min(ys), 2),
        "points": points,
    }


def _validated_box(box: dict) -> dict:
    """A box needs a label and either its geometry or polygon points (a semantic mask has no box)."""
    if "label" not in box:
        raise ValueError("box is missing ['label']")
    geometry = ("x", "y", "width", "height")
    missing = set(geometry) - set(box)
    if missing and "points" not in box:
        raise ValueError(f"box is missing {sorted(missing)}")
    checked = {key: box[key] for key in ("label", *geometry) if key in box}
    if "points" in box:
        checked["points"] = [{"x": p["x"], "y": p["y"]} for p in box["points"]]
    if "keypoints" in box:
        checked["keypoints"] = [dict(k) if isinstance(k, dict) else k for k in box["keypoints"]]
    return checked


def _apply(stats: ProjectStats, facets: Facets, sign: int) -> None:
    stats.images += sign
    stats.splits[facets.split] += sign
    if not facets.annotated:
        stats.unannotated += sign
    for label in facets.box_labels or facets.image_labels:
        stats.classes[label] = stats.classes.get(label, 0) + sign
