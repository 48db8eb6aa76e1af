"""The official roboflow SDK (1.7.3), unchanged, against the emulator.

The SDK binds API_URL at import time, so each scenario runs in a subprocess (fixture
``run_roboflow_sdk``) that writes what it saw to a JSON file for the assertions here.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pipeline.testing.roboflow_emulator import FaultConfig

FULL_FLOW = """
import json, os, sys
import roboflow

out_path, download_dir, slug = sys.argv[1], sys.argv[2], sys.argv[3]
rf = roboflow.Roboflow(api_key=os.environ["ROBOFLOW_API_KEY"])
workspace = rf.workspace()
project = workspace.project(slug)
pages = list(project.search_all(limit=100, fields=["id", "created", "annotations"]))
image = project.image(pages[0][0]["id"])
version = project.version(2)
dataset = version.download("coco", location=download_dir)
workspace_pages = list(workspace.search_all(f"project:{slug} *", page_size=40, fields=["filename", "tags"]))
json.dump({
    "current_workspace": rf.current_workspace,
    "workspace_name": workspace.name,
    "project_ids": workspace.projects(),
    "project": {"images": project.images, "splits": project.splits, "classes": project.classes,
                "type": project.type, "annotation": project.annotation, "colors": project.colors,
                "unannotated": project.unannotated},
    "page_sizes": [len(page) for page in pages],
    "search_results": [result for page in pages for result in page],
    "image": image,
    "version": {"images": version.images, "splits": version.splits, "exports": version.exports},
    "dataset_location": dataset.location,
    "workspace_ids": [r["id"] for page in workspace_pages for r in page],
    "workspace_filenames": [r["filename"] for page in workspace_pages for r in page],
}, open(out_path, "w"))
"""


def run_and_load(run_roboflow_sdk, emulator, script: str, out: Path, *args: str) -> dict:
    completed = run_roboflow_sdk(emulator, script, str(out), *args)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(out.read_text())


def test_sdk_lists_reads_and_downloads_a_project_consistently(roboflow_emulator, run_roboflow_sdk, tmp_path):
    emu = roboflow_emulator(image_count=230, versions=2, export_pending_polls=1, project_type="instance-segmentation")
    download_dir = tmp_path / "download"
    seen = run_and_load(run_roboflow_sdk, emu, FULL_FLOW, tmp_path / "out.json", str(download_dir), emu.config.project)
    stats = emu.dataset.stats()
    assert seen["current_workspace"] == emu.config.workspace
    assert seen["project_ids"] == [f"{emu.config.workspace}/{emu.config.project}"]
    assert seen["project"]["images"] == stats.images == 230
    assert seen["project"]["splits"] == stats.splits
    assert seen["project"]["classes"] == stats.classes
    assert seen["project"]["unannotated"] == stats.unannotated
    assert seen["project"]["type"] == "instance-segmentation"
    assert seen["project"]["annotation"] == emu.dataset.annotation_group
    assert seen["page_sizes"] == [100, 100, 30], "search_all stops at the first short page"
    assert [r["id"] for r in seen["search_results"]] == emu.dataset.image_ids
    for result in seen["search_results"]:
        assert result["annotations"]["count"] == len(emu.dataset.image(result["id"]).boxes)
    first = emu.dataset.image(seen["search_results"][0]["id"])
    assert seen["image"]["id"] == first.id
    assert seen["image"].get("annotation", {}).get("boxes", []) == list(first.boxes)
    snapshot = emu.dataset.version(2)
    assert seen["version"]["images"] == snapshot.image_count == 230
    assert seen["version"]["splits"] == snapshot.stats.splits
    assert seen["workspace_ids"] == emu.dataset.image_ids
    assert seen["workspace_filenames"] == [emu.dataset.image(i).name for i in emu.dataset.image_ids]

    assert not (download_dir / "roboflow.zip").exists(), "the SDK extracted and removed the ZIP"
    coco_images = coco_annotations = 0
    category_names = None
    for split in ("train", "valid", "test"):
        coco = json.loads((download_dir / split / "_annotations.coco.json").read_text())
        coco_images += len(coco["images"])
        coco_annotations += len(coco["annotations"])
        assert len(list((download_dir / split).glob("*.rf.*.jpg"))) == len(coco["images"])
        assert all(a["segmentation"] and a["category_id"] >= 1 for a in coco["annotations"])
        category_names = [c["name"] for c in coco["categories"]]
    assert coco_images == snapshot.image_count
    assert coco_annotations == sum(len(r.boxes) for r in snapshot.records())
    assert category_names == [emu.dataset.annotation_group, *emu.dataset.classes]
    counters = emu.counters()
    assert counters["export:202"] == 1 and counters["zip:200"] == 1


CLAMP_HAZARD = """
import json, os, sys
import roboflow
out_path, slug = sys.argv[1], sys.argv[2]
project = roboflow.Roboflow(api_key=os.environ["ROBOFLOW_API_KEY"]).workspace().project(slug)
pages = list(project.search_all(limit=300))
json.dump({"page_sizes": [len(p) for p in pages], "ids": [r["id"] for p in pages for r in p]}, open(out_path, "w"))
"""


def test_sdk_search_all_with_limit_over_250_stops_after_one_clamped_page(roboflow_emulator, run_roboflow_sdk, tmp_path):
    emu = roboflow_emulator(image_count=400)
    seen = run_and_load(run_roboflow_sdk, emu, CLAMP_HAZARD, tmp_path / "out.json", emu.config.project)
    assert seen["page_sizes"] == [250]
    assert seen["ids"] == emu.dataset.image_ids[:250]


FAILURES = """
import json, os, sys
import roboflow
from roboflow.adapters import rfapi
out_path, slug, image_id, wrong_key = sys.argv[1:5]
seen = {}
try:
    roboflow.Roboflow(api_key=wrong_key)
except RuntimeError as error:
    seen["bad_key"] = str(error)
workspace = roboflow.Roboflow(api_key=os.environ["ROBOFLOW_API_KEY"]).workspace()
project = workspace.project(slug)
try:
    project.version(9)
except RuntimeError as error:
    seen["missing_version"] = str(error)
try:
    rfapi.get_version(os.environ["ROBOFLOW_API_KEY"], workspace.url, slug, "9")
except rfapi.RoboflowError as error:
    seen["version_500"] = str(error)
try:
    project.search(limit=10)
except rfapi.RoboflowError as error:
    seen["throttled"] = [str(error), error.status_code]
seen["after_throttle"] = len(project.search(limit=10))
try:
    project.image(image_id)
except RuntimeError as error:
    seen["deleted_image"] = str(error)
pages = list(project.search_all(limit=50))
seen["unstable_ids"] = [r["id"] for p in pages for r in p]
try:
    project.version(1).download("coco", location=os.path.join(os.getcwd(), "dl"))
except Exception as error:
    seen["download_error"] = type(error).__name__
json.dump(seen, open(out_path, "w"))
"""


def test_sdk_meets_real_failure_modes(roboflow_emulator, run_roboflow_sdk, tmp_path):
    faults = FaultConfig(
        throttle_count=1,
        throttle_routes=("search",),
        deleted_after_listing=1,
        unstable_order_rate=1.0,
        no_content_length_rate=1.0,
        no_content_length_routes=("zip",),
    )
    emu = roboflow_emulator(image_count=150, export_pending_polls=0, faults=faults)
    gone = emu.fault_targets()["deleted_after_listing"][0]
    wrong_key = "wrong_key_for_echo_123"
    seen = run_and_load(run_roboflow_sdk, emu, FAILURES, tmp_path / "out.json", emu.config.project, gone, wrong_key)
    assert json.loads(seen["bad_key"])["error"]["key"] == wrong_key
    assert seen["missing_version"] == "Version number 9 is not found."
    assert json.loads(seen["version_500"])["error"]["status"] == 500
    assert seen["throttled"] == ["Rate limit exceeded", 429]
    assert seen["after_throttle"] == 10
    assert seen["deleted_image"] == "Image not found."
    listed = seen["unstable_ids"]
    assert len(listed) == 150
    assert max(Counter(listed).values()) > 1, "the SDK keeps duplicates from unstable pages"
    assert set(emu.dataset.image_ids) - set(listed), "and silently misses images"
    assert seen["download_error"] == "TypeError", "the SDK crashes casting a missing Content-Length"
