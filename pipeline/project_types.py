"""What each Roboflow project ``type`` becomes on the platform, decided once in preflight.

The type comes from the project info (``project.type``, ``project.multilabel``): detection,
segmentation and keypoints go to the object-detection module (``od_*``), classification to the
classification module (``cls_*``). A type the platform cannot represent stops the run before any
write, with one line: importing it as detection would store every image with no label at all.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.errors import InputError
from transforms.core.tables import CLS, OD, PlatformTables

DETECTION_TYPES = {
    "object-detection": "boxes into od_annotations",
    "instance-segmentation": "polygons (and their boxes) into od_annotations",
    "semantic-segmentation": "polygons per class (and their boxes) into od_annotations",
    "keypoint-detection": "boxes into od_annotations, keypoints normalised in attributes.keypoints",
}
CLASSIFICATION = "classification"


@dataclasses.dataclass(frozen=True)
class ProjectType:
    name: str  # Roboflow's type string
    multilabel: bool
    target: str  # what the import writes, for the plan and the summary
    tables: PlatformTables = OD

    @property
    def task_type(self) -> str | None:
        """The ``cls_datasets.task_type`` a classification project needs."""
        if self.tables.kind != "cls":
            return None
        return "multi_label" if self.multilabel else "single_label"

    def describe(self) -> str:
        label = f"{self.name} (multi-label)" if self.multilabel else self.name
        return f"{label} -> {self.target}"


def project_type(info: dict[str, Any], workspace: str, project: str) -> ProjectType:
    """The project's type and target, or InputError for a type the platform has no tables for."""
    name = str(info.get("type") or "object-detection")  # the SDK requires `type`; absent = the oldest kind
    multilabel = bool(info.get("multilabel"))
    if name in DETECTION_TYPES:
        return ProjectType(name, multilabel, DETECTION_TYPES[name])
    if name == CLASSIFICATION:
        per_image = "several classes" if multilabel else "one class"
        return ProjectType(name, multilabel, f"{per_image} per image into cls_labels (classification module)", CLS)
    raise InputError(f"{workspace}/{project} is a {name!r} project, which the platform has no tables for; the importer "
                     f"takes {', '.join([*DETECTION_TYPES, CLASSIFICATION])} projects; nothing was written")


def skeletons_of(version: dict[str, Any] | None) -> dict[str, dict] | None:
    """A keypoint version's ``skeletons`` -> class -> {"names": [...], "edges": [[from, to], ...]}.

    The shape is from the version reference (``vertices: [{id, name}], edges: [{from, to}]``); other
    entries are kept as given rather than guessed at."""
    raw = (version or {}).get("skeletons")
    if not isinstance(raw, dict):
        return None
    skeletons = {}
    for label, skeleton in raw.items():
        if not isinstance(skeleton, dict):
            continue
        vertices = [v for v in skeleton.get("vertices") or [] if isinstance(v, dict)]
        names = [str(v.get("name", v.get("id", i))) for i, v in enumerate(vertices)]
        edges = [[e.get("from"), e.get("to")] for e in skeleton.get("edges") or [] if isinstance(e, dict)]
        skeletons[str(label)] = {"names": names, "edges": edges}
    return skeletons or None
