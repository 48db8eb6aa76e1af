"""Hostile or odd Roboflow data ends in a dead letter or a safe import, never in a crashed run.

Each test runs the importer in-process (FnApiRunner) against the emulator and the session's local
Supabase, like tests/test_pipeline_e2e.py, on its own dataset id: odd image names, bytes over the
bucket's size limit, bytes that are no image, degenerate boxes, hostile class names, and a label the
project's class list does not know.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from collections import Counter
from pathlib import Path

import pytest
import requests

from pipeline import main as importer
from pipeline import preflight
from pipeline.testing.roboflow_emulator import Dataset, FaultConfig
from pipeline.testing.roboflow_emulator.dataset import HOSTILE_CLASSES, ODD_NAMES
from pipeline.testing.roboflow_emulator.images import ImageFactory
from pipeline.testing.supabase_stack.faults import StackFaults
from tests.importer import run_import as importer_run
from transforms.core.convert import source_ref

DATASET = "4057113e-0dd5-4a7a-9b1e-0000000000a4"
BUCKET = "od-images"
SMALL_BUCKET = "hostile-small"
STORAGE_PATH = re.compile(rf"^{DATASET}/roboflow/[A-Za-z0-9_-]+\.(jpg|png|webp|gif|bmp)$")
SMALL = {"image_kb_min": 2, "image_kb_max": 8}  # small originals keep the runs quick

# Beyond the emulator's ODD_NAMES: what Postgres, a shell, a browser or a path joiner chokes on.
LONG_NAME = "y" * 2000 + ".jpg"
NUL_NAME = "nul\x00byte.jpg"
EXTRA_NAMES = (
    "",
    "..",
    "/etc/passwd",
    "C:\\Windows\\System32\\evil.jpg",
    NUL_NAME,
    "line\nbreak\ttab.jpg",
    "\u202egpj.exe",  # right-to-left override
    "zero\u200bwidth.jpg",
    "👩\u200d👩\u200d👧 family.png",
    "<script>alert(1)</script>.jpg",
    "$(rm -rf ~) `id`.jpg",
    "%00%2F..%2F.jpg",
    "trailing dot.",
    LONG_NAME,
)
EXTRA_CLASSES = ("null", "NULL", "trailing ", "tab\tinside", "a.b", "eq.x", "in.(1,2)", "*", "%_", "&select=id",
                 "?x=1#y", "👩\u200d🔬", "z" * 300)


@pytest.fixture
def target(clean_supabase):
    clean_supabase.execute_sql(f"insert into od_datasets (id, name) values ('{DATASET}', 'hostile')")
    return clean_supabase


def run_import(emu, stack, out: Path, *extra: str, monkeypatch) -> tuple[int, dict, list]:
    return importer_run(emu, stack, out, DATASET, *extra, monkeypatch=monkeypatch)


def after_preflight(monkeypatch, action) -> None:
    """Run ``action`` once preflight has read Roboflow and Supabase, before the pipeline starts:
    what changes between the importer's checks and its per-image work."""
    original = preflight.check

    def check(*args, **kwargs):
        checked = original(*args, **kwargs)
        action()
        return checked

    monkeypatch.setattr(preflight, "check", check)


def image_rows(stack) -> dict[str, dict]:
    return {r["source_ref"]: r for r in stack.sql(
        "select source_ref, filename, original_filename, storage_bucket, storage_path, file_size_bytes, metadata "
        "from od_images")}


def annotation_rows(stack) -> list[dict]:
    return stack.sql(
        "select i.source_ref, a.bbox_x, a.bbox_y, a.bbox_width, a.bbox_height, a.polygon, a.attributes, "
        "c.id as class_id, c.name as class from od_annotations a join od_images i on i.id = a.image_id "
        "join od_classes c on c.id = a.class_id")


def original_bytes(emu, image_id: str) -> bytes:
    return requests.get(emu.original_url(image_id), timeout=10).content


def dollar(text: str) -> str:
    """A SQL literal that needs no escaping of quotes or backslashes."""
    assert "$q$" not in text
    return f"$q${text}$q$"


# ---- names ----------------------------------------------------------------------------------

def test_odd_image_names_import_under_sanitised_paths_with_the_name_kept(
        roboflow_emulator, target, tmp_path, monkeypatch):
    """One image per name of the emulator's odd-name pool (what ``odd_name_fraction`` draws from:
    ``../``, ``a/b``, 300 characters, quotes, unicode, SQL) and of EXTRA_NAMES: every image is
    imported, its object path is built from the Roboflow id alone, and the name lands verbatim in
    ``original_filename`` and ``metadata``. Documented exceptions: Postgres text cannot hold NUL, so
    that character becomes U+FFFD; a name over 1024 characters is cut in ``original_filename`` only."""
    names = ODD_NAMES + EXTRA_NAMES
    monkeypatch.setattr(Dataset, "_make_name", lambda self, rng, index, fmt: names[index % len(names)])
    emu = roboflow_emulator(image_count=len(names), seed=21, png_fraction=0.3, **SMALL)
    served = {i: emu.dataset.image(i).name for i in emu.dataset.image_ids}
    assert sorted(served.values()) == sorted(names)

    code, summary, letters = run_import(emu, target, tmp_path, monkeypatch=monkeypatch)

    assert (code, letters) == (importer.EXIT_OK, [])
    assert summary["imported"] == len(names) and summary["failed"] == 0
    rows = image_rows(target)
    assert set(rows) == {source_ref(DATASET, i) for i in served}
    assert {o["name"] for o in target.list_objects(BUCKET)} == {r["storage_path"] for r in rows.values()}
    for image_id, name in served.items():
        row = rows[source_ref(DATASET, image_id)]
        assert STORAGE_PATH.fullmatch(row["storage_path"]), (name, row["storage_path"])
        assert image_id in row["storage_path"] and row["filename"] == row["storage_path"].rsplit("/", 1)[1]
        assert target.read_object(BUCKET, row["storage_path"]) == original_bytes(emu, image_id)
        if name not in (NUL_NAME, LONG_NAME):
            assert row["original_filename"] == (name or None), name
            assert row["metadata"]["roboflow"]["name"] == name
    by_name = {name: rows[source_ref(DATASET, i)] for i, name in served.items()}
    assert by_name["x" * 296 + ".jpg"]["original_filename"] == "x" * 296 + ".jpg"
    assert by_name[NUL_NAME]["original_filename"] == by_name[NUL_NAME]["metadata"]["roboflow"]["name"] == \
        "nul\ufffdbyte.jpg"
    assert by_name[LONG_NAME]["original_filename"] == LONG_NAME[:1024]
    assert by_name[LONG_NAME]["metadata"]["roboflow"]["name"] == LONG_NAME


# ---- bytes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["before_upload", "storage_413", "proxy_413"])
def test_images_over_the_size_limit_are_dead_lettered_too_large(
        where, roboflow_emulator, target, tmp_path, monkeypatch):
    """before_upload: the bucket's ``file_size_limit`` read in preflight stops big images before any
    upload; storage_413: the limit was lowered after preflight, so Storage answers 413 (its 400 body
    with statusCode "413"); proxy_413: a proxy in front answers an HTML 413. All three say too_large."""
    limit = 20 * 1024
    emu = roboflow_emulator(image_count=24, seed=8, image_kb_min=4, image_kb_max=40, png_fraction=0.2)
    sizes = {i: len(original_bytes(emu, i)) for i in emu.dataset.image_ids}
    over = {i for i, n in sizes.items() if n > limit}
    assert 0 < len(over) < len(sizes)
    bucket = SMALL_BUCKET
    if where == "before_upload":
        target.storage.create_bucket(bucket, file_size_limit=limit)
    elif where == "storage_413":
        target.storage.create_bucket(bucket, file_size_limit=4 * limit)
        assert max(sizes.values()) <= 4 * limit  # so preflight's view of the limit lets every image through
        after_preflight(monkeypatch, lambda: target.storage.update_bucket(bucket, {"file_size_limit": limit}))
    else:
        bucket = BUCKET  # 50 MB bucket limit; the proxy's body limit is what bites
        target.faults = StackFaults(proxy_max_body_bytes=limit + 1024)  # room for the multipart envelope
        assert not any(limit < n <= limit + 1024 for n in sizes.values())

    code, summary, letters = run_import(emu, target, tmp_path, "--storage_bucket", bucket, "--batch_size", "6",
                                        monkeypatch=monkeypatch)

    assert code == importer.EXIT_INCOMPLETE
    assert {(d.image_id, d.step, d.error_type) for d in letters} == {(i, "upload", "too_large") for i in over}
    assert summary["imported"] == len(sizes) - len(over) and summary["failed"] == len(over)
    assert summary["dead_letters"] == {"upload.too_large": len(over)}
    rows = image_rows(target)
    assert set(rows) == {source_ref(DATASET, i) for i in sizes if i not in over}
    assert all(r["file_size_bytes"] <= limit and r["storage_bucket"] == bucket for r in rows.values())
    assert {o["name"] for o in target.list_objects(bucket)} == {r["storage_path"] for r in rows.values()}
    uploads = Counter()
    for route, statuses in target.counters()["requests"].items():
        if route.startswith("POST /storage/v1/object/"):
            uploads.update(statuses)
    refused = {"before_upload": {}, "storage_413": {"400": len(over)}, "proxy_413": {"413": len(over)}}[where]
    assert dict(uploads) == {"200": len(sizes) - len(over), **refused}  # before_upload: nothing big was sent


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


NOT_IMAGES = {
    "jpeg_garbage": None,  # the emulator's own undecodable bytes: a JPEG SOI, then noise
    "html": b"<!DOCTYPE html><html><body><h1>AccessDenied</h1></body></html>",
    "json": b'{"error": {"message": "Image not found."}}',
    "empty": b"",
    "png_magic_only": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
    "gif_header_only": b"GIF89a",
    "riff_not_webp_body": b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 8,
    "pixel_bomb": _png_claiming(100_000, 100_000),  # 10^10 pixels in 100 bytes
}


def test_bytes_that_are_no_image_are_dead_lettered_undecodable(roboflow_emulator, target, tmp_path, monkeypatch):
    """Whatever the CDN hands back instead of an image (noise, an HTML or JSON error body, nothing, a
    header alone, a header claiming 10^10 pixels) is one ``undecodable_image`` letter; nothing of it
    reaches Storage or the tables."""
    emu = roboflow_emulator(image_count=20, seed=12, **SMALL, faults=FaultConfig(undecodable=len(NOT_IMAGES)))
    bad = emu.fault_targets()["undecodable"]
    payload_of = dict(zip(bad, NOT_IMAGES.values(), strict=True))
    factory_undecodable = ImageFactory.undecodable
    monkeypatch.setattr(ImageFactory, "undecodable",
                        lambda self, record: payload_of[record.id] if payload_of.get(record.id) is not None
                        else factory_undecodable(self, record))

    code, summary, letters = run_import(emu, target, tmp_path, monkeypatch=monkeypatch)

    assert code == importer.EXIT_INCOMPLETE
    assert sorted((d.image_id, d.step, d.error_type) for d in letters) == sorted(
        (i, "upload", "undecodable_image") for i in bad), [(d.image_id, d.error_type, d.message) for d in letters]
    assert summary["failed"] == len(bad) and summary["imported"] == 20 - len(bad)
    assert set(image_rows(target)) == {source_ref(DATASET, i) for i in emu.dataset.image_ids if i not in bad}
    assert len(target.list_objects(BUCKET)) == 20 - len(bad)


# ---- boxes ----------------------------------------------------------------------------------

def test_degenerate_boxes_are_dropped_and_counted_and_rows_pass_the_checks(
        roboflow_emulator, target, tmp_path, monkeypatch):
    """NaN (served as a NaN token, as JSON null and as the string "nan"), infinities, integers too big
    for a float, zero or negative sizes and boxes wholly outside are dropped and counted; boxes partly
    outside are clipped; NaN polygon points are left out. The images themselves are imported."""
    emu = roboflow_emulator(image_count=4, seed=9, project_type="instance-segmentation", **SMALL)
    mixed, only_bad = emu.dataset.image_ids[:2]
    record = emu.dataset.image(mixed)
    w, h, label = record.width, record.height, emu.dataset.classes[0]
    nan, inf = float("nan"), float("inf")

    def box(x, y, bw, bh, points=None):
        out = {"label": label, "x": x, "y": y, "width": bw, "height": bh}
        if points is not None:
            out["points"] = [{"x": px, "y": py} for px, py in points]
        return out

    dropped = [
        box(-500, -500, 40, 40),  # wholly outside, top left
        box(w + 300, h / 2, 100, 100),  # wholly outside, right
        box(w / 2, h / 2, 0, 50),  # zero width
        box(w / 2, h / 2, 50, 0),  # zero height
        box(nan, h / 2, 50, 50),  # NaN token
        box(w / 2, None, 50, 50),  # null, what JavaScript's JSON.stringify makes of NaN
        box(w / 2, h / 2, "nan", 50),  # NaN as a string
        box(w / 2, h / 2, 50, inf),  # Infinity token
        box(-inf, h / 2, 50, 50),
        box(w / 2, h / 2, -40, 30),  # negative width
        box(w / 2, h / 2, 30, -40),  # negative height
        box(10 ** 400, h / 2, 50, 50),  # an integer no float can hold
        box(w / 2, h / 2, 1e-9, 1e-9),  # below MIN_BOX_SIZE of the image side
    ]
    polygon_points = [(10, 10), (nan, 20), (60, 10), (inf, inf), (60, 60), (10, 60)]
    outside_points = [(-30, 10), (w + 30, 10), (w + 30, 60), (-30, 60)]
    kept = [
        box(w / 2, h / 2, 100, 80),  # ordinary
        box(0, 0, 100, 60),  # half outside: clipped to (0, 0, 50, 30)
        box(w / 2, h / 2, 1e308, 1e308),  # astronomically big: clipped to the whole image
        box(35, 35, 50, 50, points=polygon_points),  # two NaN/inf points left out of four good ones
        box(w - 10, h / 2, 80, 80, points=[(nan, 1), (2, nan), (w, h / 2)]),  # box kept, polygon unusable
        box(w / 2, 35, w + 60, 50, points=outside_points),  # polygon wider than the image: clamped to it
    ]
    emu.dataset.set_boxes(mixed, kept + dropped)
    emu.dataset.set_boxes(only_bad, dropped)

    code, summary, letters = run_import(emu, target, tmp_path, monkeypatch=monkeypatch)

    assert (code, letters) == (importer.EXIT_OK, [])
    assert summary["imported"] == 4
    assert summary["annotations_dropped"] == {"invalid_geometry": 2 * len(dropped)}
    rows = annotation_rows(target)
    for row in rows:  # the table CHECKs, and finiteness, which they do not say
        values = (row["bbox_x"], row["bbox_y"], row["bbox_width"], row["bbox_height"])
        assert all(math.isfinite(v) for v in values)
        assert 0 <= row["bbox_x"] <= 1 and 0 <= row["bbox_y"] <= 1
        assert 0 < row["bbox_width"] <= 1 and 0 < row["bbox_height"] <= 1
        for point in row["polygon"] or []:
            assert 0 <= point["x"] <= 1 and 0 <= point["y"] <= 1
    assert not [r for r in rows if r["source_ref"] == source_ref(DATASET, only_bad)]
    mine = [((r["bbox_x"], r["bbox_y"], r["bbox_width"], r["bbox_height"]), r["polygon"])
            for r in rows if r["source_ref"] == source_ref(DATASET, mixed)]

    def polygon_of(*bbox: float):
        [polygon] = [p for got, p in mine if all(abs(a - b) <= 1e-6 for a, b in zip(got, bbox, strict=True))]
        return polygon

    assert len(mine) == len(kept)
    assert polygon_of((w / 2 - 50) / w, (h / 2 - 40) / h, 100 / w, 80 / h) is None
    assert polygon_of(0, 0, 50 / w, 30 / h) is None
    assert polygon_of(0, 0, 1, 1) is None
    assert polygon_of(10 / w, 10 / h, 50 / w, 50 / h) == [
        {"x": pytest.approx(x / w, abs=1e-9), "y": pytest.approx(y / h, abs=1e-9)}
        for x, y in polygon_points if math.isfinite(x) and math.isfinite(y)]
    assert polygon_of((w - 50) / w, (h / 2 - 40) / h, 50 / w, 80 / h) is None
    assert polygon_of(0, 10 / h, 1, 50 / h) == [{"x": x, "y": pytest.approx(y / h, abs=1e-9)}
                                                for x, y in ((0, 10), (1, 10), (1, 60), (0, 60))]
    status = {r["source_ref"]: r["status"] for r in target.sql(
        "select i.source_ref, d.status from od_dataset_images d join od_images i on i.id = d.image_id")}
    assert status[source_ref(DATASET, only_bad)] == "pending" and status[source_ref(DATASET, mixed)] == "annotated"


# ---- class names ----------------------------------------------------------------------------

@pytest.fixture
def hostile_project(roboflow_emulator, monkeypatch):
    """A project whose classes are all hostile names: the emulator's seven plus a dozen more that
    PostgREST filter syntax, SQL or JSON could trip on. Image 0 carries one box of every class."""
    names = list(HOSTILE_CLASSES + EXTRA_CLASSES)
    monkeypatch.setattr(Dataset, "_make_classes", lambda self, rng: list(names))
    emu = roboflow_emulator(image_count=12, seed=6, hostile_class_names=True, class_count=len(names), **SMALL)
    assert set(emu.dataset.classes) == set(HOSTILE_CLASSES + EXTRA_CLASSES)
    first = emu.dataset.image_ids[0]
    emu.dataset.set_boxes(first, [{"label": name, "x": 20 + 5 * k, "y": 30, "width": 20, "height": 20}
                                  for k, name in enumerate(emu.dataset.classes)])
    return emu


def labels_by_image(emu) -> dict[str, Counter]:
    """Roboflow's labels per image (images with boxes only), keyed like :func:`classes_by_image`."""
    labels = {source_ref(DATASET, i): Counter(b["label"] for b in emu.dataset.image(i).boxes)
              for i in emu.dataset.image_ids}
    return {ref: counts for ref, counts in labels.items() if counts}


def classes_by_image(rows: list[dict]) -> dict[str, Counter]:
    """The stored annotations' class names per image."""
    got: dict[str, Counter] = {}
    for row in rows:
        got.setdefault(row["source_ref"], Counter())[row["class"]] += 1
    return got


def test_hostile_class_names_are_created_verbatim_with_auto_mapping(hostile_project, target, tmp_path, monkeypatch):
    """``--class_mapping auto`` creates every class under exactly Roboflow's name, and every
    annotation points at the class its Roboflow label names."""
    emu = hostile_project
    code, summary, letters = run_import(emu, target, tmp_path, monkeypatch=monkeypatch)

    assert (code, letters) == (importer.EXIT_OK, [])
    classes = target.sql(f"select name, display_name from od_classes where dataset_id = '{DATASET}'")
    assert sorted(r["name"] for r in classes) == sorted(emu.dataset.classes)
    assert all(r["display_name"] == r["name"] for r in classes)
    rows = annotation_rows(target)
    assert all(row["attributes"]["roboflow_label"] == row["class"] for row in rows)
    assert classes_by_image(rows) == labels_by_image(emu)
    assert summary["annotations"] == len(rows) > len(emu.dataset.classes)


def test_hostile_class_names_work_in_a_mapping_file(hostile_project, target, tmp_path, monkeypatch):
    """A mapping file naming hostile classes: create_new makes them verbatim, a target_class_id
    points at an existing class (itself hostile-named), skip drops that class's boxes, counted."""
    emu = hostile_project
    skipped, retargeted, *created = emu.dataset.classes
    existing_id = "0c1a55e5-0000-4000-8000-00000000e715"
    existing_name = 'existing "quoted" \\ ☕; DROP TABLE od_classes;--'
    target.execute_sql(f"insert into od_classes (id, dataset_id, name, color) values "
                       f"('{existing_id}', '{DATASET}', {dollar(existing_name)}, '#112233')")
    mapping = [{"source_name": skipped, "skip": True},
               {"source_name": retargeted, "target_class_id": existing_id},
               *({"source_name": name, "create_new": True, "color": "#A1B2C3"} for name in created)]
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps(mapping, ensure_ascii=False), encoding="utf-8")

    code, summary, letters = run_import(emu, target, tmp_path, "--class_mapping", str(path), monkeypatch=monkeypatch)

    assert (code, letters) == (importer.EXIT_OK, [])
    classes = {r["name"]: r for r in target.sql(
        f"select id, name, color from od_classes where dataset_id = '{DATASET}'")}
    assert set(classes) == {existing_name, *created}
    assert all(classes[name]["color"] == "#A1B2C3" for name in created)
    expected: dict[str, Counter] = {}
    for ref, labels in labels_by_image(emu).items():
        renamed = Counter({(existing_name if k == retargeted else k): n for k, n in labels.items() if k != skipped})
        if renamed:
            expected[ref] = renamed
    rows = annotation_rows(target)
    assert classes_by_image(rows) == expected
    retargeted_rows = [r for r in rows if r["class"] == existing_name]
    assert retargeted_rows and all(r["class_id"] == existing_id and r["attributes"]["roboflow_label"] == retargeted
                                   for r in retargeted_rows)
    skipped_boxes = sum(labels[skipped] for labels in labels_by_image(emu).values())
    assert skipped_boxes > 0 and summary["annotations_dropped"] == {"skipped_class": skipped_boxes}


def test_a_label_missing_from_the_project_class_list_dead_letters_only_its_image(
        roboflow_emulator, target, tmp_path, monkeypatch):
    """Roboflow's class list is read once, in preflight; an image relabelled afterwards with a class
    the mapping has never seen is one ``unmapped_class`` letter, and no class is invented for it."""
    emu = roboflow_emulator(image_count=10, seed=14, **SMALL)
    relabelled = emu.dataset.image_ids[4]
    known = emu.dataset.classes[0]
    after_preflight(monkeypatch, lambda: emu.dataset.set_boxes(relabelled, [
        {"label": known, "x": 30, "y": 30, "width": 20, "height": 20},
        {"label": "ghost 'class'", "x": 60, "y": 60, "width": 20, "height": 20}]))

    code, summary, letters = run_import(emu, target, tmp_path, monkeypatch=monkeypatch)

    assert code == importer.EXIT_INCOMPLETE
    assert [(d.image_id, d.step, d.error_type) for d in letters] == [(relabelled, "fetch_details", "unmapped_class")]
    assert "ghost 'class'" in letters[0].message
    assert summary["imported"] == 9 and summary["failed"] == 1
    assert set(image_rows(target)) == {source_ref(DATASET, i) for i in emu.dataset.image_ids if i != relabelled}
    names = {r["name"] for r in target.sql(f"select name from od_classes where dataset_id = '{DATASET}'")}
    assert names == set(emu.dataset.classes)


@pytest.mark.parametrize("mapping", ["auto", "file"])
def test_a_class_name_with_a_leading_blank_is_created_verbatim(
        mapping, roboflow_emulator, target, tmp_path, monkeypatch):
    """Roboflow keeps a label typed as ' car'; the importer must create and use it as it is."""
    names = [" leading", "plain"]
    monkeypatch.setattr(Dataset, "_make_classes", lambda self, rng: list(names))
    emu = roboflow_emulator(image_count=4, seed=2, **SMALL)
    emu.dataset.set_boxes(emu.dataset.image_ids[0], [{"label": " leading", "x": 30, "y": 30, "width": 20,
                                                      "height": 20}])
    extra: tuple[str, ...] = ()
    if mapping == "file":
        path = tmp_path / "mapping.json"
        path.write_text(json.dumps([{"source_name": n, "create_new": True} for n in names]))
        extra = ("--class_mapping", str(path))

    code, _, letters = run_import(emu, target, tmp_path, *extra, monkeypatch=monkeypatch)

    assert (code, letters) == (importer.EXIT_OK, [])
    assert {r["name"] for r in target.sql(f"select name from od_classes where dataset_id = '{DATASET}'")} == set(names)
    assert classes_by_image(annotation_rows(target)) == labels_by_image(emu)
