"""Which of the platform's modules an import writes: object detection (``od_*``) or classification
(``cls_*``). Every step addresses its tables through one of these, so both targets share the same
idempotent write, skip, prune and counter code."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PlatformTables:
    kind: str  # "od" or "cls"
    images: str
    dataset_images: str
    labels: str  # one row per object (od_annotations) or per image and class (cls_labels)
    label_key: str  # the column that tells a label row apart within its image
    classes: str
    datasets: str
    refresh_counters: str  # rpc(p_dataset_id) recomputing the dataset's counters
    default_bucket: str

    @property
    def label_conflict(self) -> str:
        return f"dataset_id,image_id,{self.label_key}"


OD = PlatformTables("od", "od_images", "od_dataset_images", "od_annotations", "source_key", "od_classes",
                    "od_datasets", "od_refresh_dataset_counters", "od-images")
CLS = PlatformTables("cls", "cls_images", "cls_dataset_images", "cls_labels", "class_id", "cls_classes",
                     "cls_datasets", "cls_refresh_dataset_counters", "cls-images")
