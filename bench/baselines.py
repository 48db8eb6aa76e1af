"""The two ways a user would import without this product, for ``bench/throughput.py`` to compare against.

* ``sdk``: the serial script a user writes with the official SDK: ``search_all`` for the ids, then per image
  ``project.image(id)``, download the original from the CDN, upload it to Storage, insert its rows.
* ``zip``: the export path: ``version.download("coco")`` (request the export, poll, download the ZIP,
  unpack), then upload every image file and insert its rows, one image at a time.

Both use the official ``roboflow`` and ``supabase`` clients and write the same three tables the importer
writes, into a dataset and bucket of their own. Each runs in a fresh process (the SDK reads ``API_URL`` when
imported) and prints one JSON line: images done, seconds per phase, and the wall time.

    API_URL=http://127.0.0.1:PORT ROBOFLOW_API_KEY=... SUPABASE_SERVICE_ROLE_KEY=... \\
        python bench/baselines.py sdk --workspace WS --project P --version 1 --supabase_url URL \\
        --dataset_id UUID --bucket baseline-sdk --images 300
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests
from PIL import Image


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("way", choices=("sdk", "zip"))
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--supabase_url", required=True)
    parser.add_argument("--dataset_id", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--images", type=int, required=True, help="stop after this many images")
    return parser.parse_args(argv)


class Target:
    """The writes a hand-written import makes: one object, one image row, one membership row, its boxes."""

    def __init__(self, url: str, dataset_id: str, bucket: str):
        from supabase import create_client

        self.client = create_client(url, os.environ["SUPABASE_SERVICE_ROLE_KEY"])
        self.dataset_id = dataset_id
        self.bucket = bucket
        self.classes: dict[str, str] = {}

    def class_id(self, name: str) -> str:
        if name not in self.classes:
            row = {"id": str(uuid.uuid4()), "name": name, "dataset_id": self.dataset_id}
            self.client.table("od_classes").upsert(row, on_conflict="dataset_id,name").execute()
            found = self.client.table("od_classes").select("id").eq("dataset_id", self.dataset_id) \
                .eq("name", name).execute()
            self.classes[name] = found.data[0]["id"]
        return self.classes[name]

    def write(self, image_id: str, data: bytes, width: int, height: int, split: str | None,
              boxes: list[tuple[str, float, float, float, float]]) -> None:
        path = f"{self.dataset_id}/{image_id}.jpg"
        self.client.storage.from_(self.bucket).upload(path, data, {"content-type": "image/jpeg", "upsert": "true"})
        row_id = str(uuid.uuid4())
        self.client.table("od_images").insert({
            "id": row_id, "filename": f"{image_id}.jpg", "image_url": path, "width": width, "height": height,
            "file_size_bytes": len(data), "source": "import", "storage_bucket": self.bucket, "storage_path": path,
            "source_ref": f"baseline:{image_id}@{self.dataset_id}",
        }).execute()
        self.client.table("od_dataset_images").insert({
            "dataset_id": self.dataset_id, "image_id": row_id, "split": split if split in ("train", "val", "test")
            else None, "annotation_count": len(boxes),
        }).execute()
        rows = [{"dataset_id": self.dataset_id, "image_id": row_id, "class_id": self.class_id(label),
                 "bbox_x": x, "bbox_y": y, "bbox_width": w, "bbox_height": h} for label, x, y, w, h in boxes]
        if rows:
            self.client.table("od_annotations").insert(rows).execute()


def _normalised(x0: float, y0: float, w: float, h: float, width: int, height: int):
    """Top-left pixel box -> normalised, clipped box; None when nothing is left of it."""
    left, top = max(0.0, x0 / width), max(0.0, y0 / height)
    right, bottom = min(1.0, (x0 + w) / width), min(1.0, (y0 + h) / height)
    if right - left <= 1e-6 or bottom - top <= 1e-6:
        return None
    return left, top, right - left, bottom - top


def sdk_way(args: argparse.Namespace, target: Target) -> dict:
    import roboflow

    started = time.monotonic()
    project = roboflow.Roboflow(api_key=os.environ["ROBOFLOW_API_KEY"]).workspace(args.workspace) \
        .project(args.project)
    ids: list[str] = []
    for page in project.search_all(limit=250, fields=["id"]):
        ids.extend(result["id"] for result in page)
        if len(ids) >= args.images:
            break
    listed = time.monotonic()
    done = 0
    for image_id in ids[: args.images]:
        image = project.image(image_id)
        data = requests.get(image["urls"]["original"], timeout=60).content
        annotation = image.get("annotation") or {}
        if "width" in annotation:
            width, height = int(annotation["width"]), int(annotation["height"])
        else:  # unannotated images carry no size: read it from the bytes
            width, height = Image.open(io.BytesIO(data)).size
        boxes = []
        for box in annotation.get("boxes", []):
            bbox = _normalised(box["x"] - box["width"] / 2, box["y"] - box["height"] / 2, box["width"],
                               box["height"], width, height)
            if bbox:
                boxes.append((box["label"], *bbox))
        target.write(image_id, data, width, height, image.get("split"), boxes)
        done += 1
    finished = time.monotonic()
    return {"images": done, "listed": len(ids), "listing_seconds": listed - started,
            "per_image_seconds": finished - listed, "seconds": finished - started}


def zip_way(args: argparse.Namespace, target: Target) -> dict:
    import roboflow

    started = time.monotonic()
    version = roboflow.Roboflow(api_key=os.environ["ROBOFLOW_API_KEY"]).workspace(args.workspace) \
        .project(args.project).version(args.version)
    with tempfile.TemporaryDirectory(prefix="baseline-zip-") as location:
        version.download("coco", location=location, overwrite=True)
        downloaded = time.monotonic()
        zip_bytes = sum(f.stat().st_size for f in Path(location).rglob("*") if f.is_file())
        done = exported = 0
        for coco_file in sorted(Path(location).glob("*/_annotations.coco.json")):
            coco = json.loads(coco_file.read_text())
            exported += len(coco["images"])
            names = {c["id"]: c["name"] for c in coco["categories"]}
            by_image: dict[int, list] = {}
            for annotation in coco["annotations"]:
                by_image.setdefault(annotation["image_id"], []).append(annotation)
            for image in coco["images"]:
                if done >= args.images:
                    break
                data = (coco_file.parent / image["file_name"]).read_bytes()
                boxes = []
                for annotation in by_image.get(image["id"], []):
                    bbox = _normalised(*annotation["bbox"], image["width"], image["height"])
                    if bbox:
                        boxes.append((names[annotation["category_id"]], *bbox))
                target.write(image["file_name"].rsplit(".rf.", 1)[-1].split(".")[0], data, image["width"],
                             image["height"], coco_file.parent.name.replace("valid", "val"), boxes)
                done += 1
    finished = time.monotonic()
    return {"images": done, "listed": exported, "listing_seconds": downloaded - started, "zip_bytes": zip_bytes,
            "per_image_seconds": finished - downloaded, "seconds": finished - started}


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    target = Target(args.supabase_url, args.dataset_id, args.bucket)
    result = (sdk_way if args.way == "sdk" else zip_way)(args, target)
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
