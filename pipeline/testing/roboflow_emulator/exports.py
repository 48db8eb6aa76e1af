"""Version export ZIPs in Roboflow's COCO and YOLO layouts, written to a temp file, never held in memory."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Callable

from .dataset import SPLITS, ImageRecord, VersionSnapshot, box_around_points

YOLO_FORMATS = ("yolov5pytorch", "yolov7pytorch", "yolov8", "yolov9", "yolov11")
_UNSAFE_STEM = re.compile(r"[^A-Za-z0-9_-]+")


def sanitize_class_name(name: str) -> str:
    """Exports replace characters outside letters, digits, space, '-' and '_' with '-'."""
    return "".join(c if c.isalnum() or c in " -_" else "-" for c in name)


def export_file_name(record: ImageRecord, version: int) -> str:
    """Roboflow's renamed export file: ``<stem>_<ext>.rf.<32 hex>.jpg`` (never a path)."""
    base = record.name.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, extension = base.rpartition(".")
    if not dot:
        stem, extension = base, ""
    stem = _UNSAFE_STEM.sub("-", stem).strip("-")[:100] or "image"
    label = f"{stem}_{_UNSAFE_STEM.sub('', extension)}" if extension else stem
    digest = hashlib.md5(f"{record.id}:{version}".encode()).hexdigest()
    return f"{label}.rf.{digest}.jpg"


def build_export(
    path: str,
    export_format: str,
    version: VersionSnapshot,
    classes: list[str],
    annotation_group: str,
    workspace: str,
    project: str,
    export_image: Callable[[ImageRecord], bytes],
) -> int:
    """Write the ZIP to ``path`` (ZIP_STORED, images streamed one by one) and return its size."""
    created = datetime.datetime.fromtimestamp(version.created, tz=datetime.UTC).isoformat(timespec="seconds")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        if export_format in YOLO_FORMATS:
            _write_yolo(archive, export_format, version, classes, workspace, project, export_image)
        else:
            _write_coco(archive, version, classes, annotation_group, workspace, project, created, export_image)
        archive.writestr("README.dataset.txt", _readme_dataset(project, version, export_format))
        archive.writestr("README.roboflow.txt", _README_ROBOFLOW)
    return os.path.getsize(path)


def _write_coco(archive, version, classes, annotation_group, workspace, project, created, export_image) -> None:
    categories = [{"id": 0, "name": annotation_group, "supercategory": "none"}] + [
        {"id": number, "name": sanitize_class_name(name), "supercategory": annotation_group}
        for number, name in enumerate(classes, start=1)
    ]
    category_of = {name: number for number, name in enumerate(classes, start=1)}
    by_split: dict[str, dict] = {split: {"images": [], "annotations": []} for split in SPLITS}
    for record in version.records():
        entry = by_split[record.split]
        file_name = export_file_name(record, version.number)
        archive.writestr(f"{record.split}/{file_name}", export_image(record))
        image_number = len(entry["images"])
        entry["images"].append(
            {
                "id": image_number,
                "license": 1,
                "file_name": file_name,
                "height": record.height,
                "width": record.width,
                "date_captured": created,
                "extra": {"name": record.name},
            }
        )
        for box in record.boxes:
            if "x" not in box:  # a semantic mask's polygon: the export's bbox encloses it
                box = box_around_points(box["label"], box["points"])
            left, top = box["x"] - box["width"] / 2, box["y"] - box["height"] / 2
            segmentation = []
            if "points" in box:
                segmentation = [[coordinate for p in box["points"] for coordinate in (p["x"], p["y"])]]
            entry["annotations"].append(
                {
                    "id": len(entry["annotations"]),
                    "image_id": image_number,
                    "category_id": category_of[box["label"]],
                    "bbox": [round(left, 3), round(top, 3), box["width"], box["height"]],
                    "area": round(box["width"] * box["height"], 3),
                    "segmentation": segmentation,
                    "iscrowd": 0,
                }
            )
    for split, entry in by_split.items():
        document = {
            "info": {
                "year": created[:4],
                "version": str(version.number),
                "description": "Exported from roboflow.ai",
                "contributor": "",
                "url": f"https://app.roboflow.ai/datasets/{project}/{version.number}",
                "date_created": created,
            },
            "licenses": [{"id": 1, "url": "", "name": "Unknown"}],
            "categories": categories,
            "images": entry["images"],
            "annotations": entry["annotations"],
        }
        archive.writestr(f"{split}/_annotations.coco.json", json.dumps(document, ensure_ascii=False, indent=4))


def _write_yolo(archive, export_format, version, classes, workspace, project, export_image) -> None:
    class_number = {name: number for number, name in enumerate(classes)}
    for record in version.records():
        file_name = export_file_name(record, version.number)
        archive.writestr(f"{record.split}/images/{file_name}", export_image(record))
        lines = [
            f"{class_number[b['label']]} {b['x'] / record.width:.6f} {b['y'] / record.height:.6f} "
            f"{b['width'] / record.width:.6f} {b['height'] / record.height:.6f}"
            for b in (box if "x" in box else box_around_points(box["label"], box["points"]) for box in record.boxes)
        ]
        label_name = file_name[: -len(".jpg")] + ".txt"
        archive.writestr(f"{record.split}/labels/{label_name}", "\n".join(lines) + ("\n" if lines else ""))
    relative = "../" if export_format in ("yolov5pytorch", "yolov7pytorch") else ""
    names = ", ".join(json.dumps(sanitize_class_name(name), ensure_ascii=False) for name in classes)
    data_yaml = (
        f"train: {relative}train/images\nval: {relative}valid/images\ntest: {relative}test/images\n\n"
        f"nc: {len(classes)}\nnames: [{names}]\n\nroboflow:\n  workspace: {workspace}\n  project: {project}\n"
        f"  version: {version.number}\n  license: Private\n"
        f"  url: https://universe.roboflow.com/{workspace}/{project}/dataset/{version.number}\n"
    )
    archive.writestr("data.yaml", data_yaml)


def _readme_dataset(project: str, version: VersionSnapshot, export_format: str) -> str:
    return (
        f"# {project} > {version.name}\n\nThis dataset was exported via the Roboflow API emulator.\n"
        f"It includes {version.image_count} images in {export_format} format.\n"
    )


_README_ROBOFLOW = (
    "\nThis dataset was exported via roboflow.com (emulated for local tests).\n\n"
    "Roboflow is an end-to-end computer vision platform.\n"
)
