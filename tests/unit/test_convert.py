import dataclasses
import io
import math
import random
import struct
import uuid

import pytest
from PIL import Image

from transforms.core.convert import (
    MIN_BOX_SIZE,
    DetailsError,
    ImageDataError,
    annotation_source_key,
    box_to_bbox,
    build_rows,
    check_classes,
    image_uuid,
    import_hash,
    parse_details,
    platform_split,
    points_to_polygon,
    repair_original_url,
    safe_image_id,
    sniff_image,
    source_ref,
    storage_path,
)
from transforms.core.records import Box, ImageDetails, ImportContext, StoredImage

DATASET = "0b6f2c1e-7d3a-4c55-9a8e-2f1d3c4b5a69"
CLASS_PERSON = "11111111-1111-4111-8111-111111111111"
CLASS_CAR = "22222222-2222-4222-8222-222222222222"

# The example body of GET /{ws}/{project}/images/{id} (roboflow-api.md §2.8).
DETAILS_EXAMPLE = {
    "image": {
        "id": "test-image-id",
        "name": "test_image.jpg",
        "annotation": {
            "key": "some-key",
            "width": 640,
            "height": 480,
            "boxes": [{"label": "person", "x": 100, "y": 150, "width": 50, "height": 80}],
        },
        "labels": ["person"],
        "split": "train",
        "tags": ["tag1", "tag2"],
        "created": 1616161616,
        "urls": {
            "original": "https://example.com/image.jpg",
            "thumb": "https://example.com/thumb.jpg",
            "annotation": "https://example.com/annotation.json",
        },
        "embedding": [0.1, 0.2, 0.3],
    }
}


def image_bytes(fmt: str, size: tuple[int, int] = (37, 21), **save_args) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buf, fmt, **save_args)
    return buf.getvalue()


def make_ctx(class_ids=None, version=3, bucket="od-images") -> ImportContext:
    if class_ids is None:
        class_ids = {"person": CLASS_PERSON, "car": CLASS_CAR, "ignored": None}
    return ImportContext(
        dataset_id=DATASET, workspace="acme", project="helmets", version=version, bucket=bucket, class_ids=class_ids
    )


def make_details(boxes=(), *, width=640, height=480, split="train", tags=("tag1",), image_id="AbCdEfGhIj0123456789"):
    return ImageDetails(
        image_id=image_id,
        name="photo.jpg",
        owner="owner1",
        split=split,
        tags=tuple(tags),
        created=1616161616.0,
        width=width,
        height=height,
        boxes=tuple(boxes),
        original_url=f"https://source.roboflow.com/owner1/{image_id}/original.jpg",
        annotation_key="some-key",
    )


def make_stored(details: ImageDetails, *, width=640, height=480) -> StoredImage:
    return StoredImage(
        details=details,
        storage_path=storage_path(DATASET, details.image_id, "png"),
        file_hash="ab" * 32,
        size_bytes=12345,
        mime_type="image/png",
        width=width,
        height=height,
        import_hash="cd" * 32,
        uploaded=True,
        previously_imported=False,
    )


def as_real(value: float) -> float:
    """The value as Postgres ``real`` (float4) stores it."""
    return struct.unpack("f", struct.pack("f", value))[0]


def assert_satisfies_annotation_checks(row: dict) -> None:
    """od_annotations CHECKs (supabase.md §10.1), evaluated on the float4 the column stores."""
    for key in ("bbox_x", "bbox_y"):
        assert 0.0 <= row[key] <= 1.0, (key, row)
        assert 0.0 <= as_real(row[key]) <= 1.0, (key, row)
    for key in ("bbox_width", "bbox_height"):
        assert 0.0 < row[key] <= 1.0, (key, row)
        assert 0.0 < as_real(row[key]) <= 1.0, (key, row)
    if row["polygon"] is not None:
        assert len(row["polygon"]) >= 3
        for point in row["polygon"]:
            assert set(point) == {"x", "y"}
            assert 0.0 <= point["x"] <= 1.0 and 0.0 <= point["y"] <= 1.0, row["polygon"]


# ---- identities and paths ---------------------------------------------------------------------


def test_safe_image_id_keeps_roboflow_ids():
    assert safe_image_id("AbCdEfGhIj0123456789") == "AbCdEfGhIj0123456789"
    assert safe_image_id("with-dash_and_underscore") == "with-dash_and_underscore"


@pytest.mark.parametrize("image_id", ["../../etc/passwd", "a/b", "x" * 65, "", "spaces in id", "ünïcode"])
def test_safe_image_id_hashes_anything_unsafe(image_id):
    safe = safe_image_id(image_id)
    assert safe.startswith("h") and len(safe) == 41
    assert all(c in "0123456789abcdef" for c in safe[1:])
    assert safe == safe_image_id(image_id)  # deterministic


def test_safe_image_id_hashes_an_id_with_a_trailing_newline():
    assert "\n" not in storage_path(DATASET, "abc\n", "jpg")


def test_storage_path_uses_dataset_and_id_never_the_file_name():
    assert storage_path(DATASET, "AbCdEfGhIj0123456789", "png") == f"{DATASET}/roboflow/AbCdEfGhIj0123456789.png"
    hostile = storage_path(DATASET, "../../other-dataset/x", "jpg")
    assert hostile.startswith(f"{DATASET}/roboflow/h") and hostile.count("/") == 2 and ".." not in hostile


def test_source_ref_and_image_uuid_are_deterministic_per_dataset_and_image():
    ref = source_ref(DATASET, "img1")
    assert ref == f"roboflow:img1@{DATASET}"
    first = image_uuid(ref)
    assert first == image_uuid(source_ref(DATASET, "img1"))
    assert uuid.UUID(first).version == 5
    assert first != image_uuid(source_ref(DATASET, "img2"))
    assert first != image_uuid(source_ref("another-dataset", "img1"))


def test_repair_original_url_rebuilds_undefined_segment_from_owner_and_id():
    url = "https://source.roboflow.com/owner1/undefined/original.jpg"
    assert repair_original_url(url, "owner1", "IMG") == "https://source.roboflow.com/owner1/IMG/original.jpg"


def test_repair_original_url_replaces_a_wrong_owner_segment():
    url = "https://source.roboflow.com/someone-else/undefined/original.jpg"
    assert repair_original_url(url, "owner1", "IMG") == "https://source.roboflow.com/owner1/IMG/original.jpg"


def test_repair_original_url_leaves_good_urls_alone():
    url = "https://source.roboflow.com/owner1/IMG/original.jpg"
    assert repair_original_url(url, "owner1", "OTHER") == url


@pytest.mark.parametrize(
    ("split", "expected"),
    [("train", "train"), ("valid", "val"), ("VALID", "val"), ("val", "val"), ("test", "test"),
     (None, None), ("holdout", None), ("", None)],
)
def test_platform_split_maps_roboflow_names_to_the_check_values(split, expected):
    assert platform_split(split) == expected


# ---- sniff_image ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime", "ext"),
    [("JPEG", "image/jpeg", "jpg"), ("PNG", "image/png", "png"), ("WEBP", "image/webp", "webp"),
     ("GIF", "image/gif", "gif"), ("BMP", "image/bmp", "bmp")],
)
def test_sniff_image_reads_type_and_size_from_the_bytes(fmt, mime, ext):
    info = sniff_image(image_bytes(fmt, (37, 21)))
    assert (info.mime_type, info.extension, info.width, info.height) == (mime, ext, 37, 21)


def test_sniff_image_recognises_lossless_webp():
    info = sniff_image(image_bytes("WEBP", (64, 9), lossless=True))
    assert (info.mime_type, info.width, info.height) == ("image/webp", 64, 9)


def test_png_served_as_original_jpg_is_stored_as_png():
    """Roboflow serves PNGs under ``original.jpg``: the type comes from the bytes, not the name."""
    info = sniff_image(image_bytes("PNG", (10, 20)))
    assert info.mime_type == "image/png"
    assert storage_path(DATASET, "IMG", info.extension).endswith("/IMG.png")


def test_png_with_trailing_nul_padding_is_not_truncated():
    info = sniff_image(image_bytes("PNG") + b"\x00" * 100)
    assert info.mime_type == "image/png"


@pytest.mark.parametrize(
    "trailer",
    [b"\x00" * 100, b"MotionPhoto_Data" + bytes(range(256)) * 40, b"\xff\xd9"],
    ids=["nul-padding", "motion-photo-trailer", "second-eoi"],
)
def test_complete_jpeg_with_bytes_after_the_end_marker_is_accepted(trailer):
    info = sniff_image(image_bytes("JPEG", (160, 120)) + trailer)
    assert (info.mime_type, info.width, info.height) == ("image/jpeg", 160, 120)


def test_jpeg_cut_inside_the_scan_is_truncated_even_if_a_header_holds_an_end_marker():
    """FF D9 inside a header segment (EXIF thumbnail, comment) must not pass for the image's end."""
    buf = io.BytesIO()
    Image.new("RGB", (160, 120), (10, 200, 30)).save(buf, "JPEG", comment=b"thumb \xff\xd8\xff\xd9 end")
    data = buf.getvalue()
    scan = data.find(b"\xff\xda")
    assert 0 < data.find(b"\xff\xd9") < scan
    assert sniff_image(data).width == 160
    for cut in (scan, scan + 40, len(data) - 2):
        with pytest.raises(ImageDataError) as info:
            sniff_image(data[:cut])
        assert (info.value.kind, info.value.retryable) == ("truncated_image", True)


def test_progressive_jpeg_cut_between_scans_is_truncated():
    data = image_bytes("JPEG", (160, 120), progressive=True, quality=90)
    scans = [i for i in range(len(data) - 1) if data[i:i + 2] == b"\xff\xda"]
    assert len(scans) > 2
    assert sniff_image(data).height == 120
    with pytest.raises(ImageDataError) as info:
        sniff_image(data[:scans[2]])
    assert info.value.kind == "truncated_image"


@pytest.mark.parametrize("cut", [3, 4, 11, 20])
def test_jpeg_cut_inside_its_headers_is_truncated(cut):
    with pytest.raises(ImageDataError) as info:
        sniff_image(image_bytes("JPEG")[:cut])
    assert (info.value.kind, info.value.retryable) == ("truncated_image", True)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("keep", [0.5, 0.9, "minus1", "minus2"])
def test_truncated_image_is_a_retryable_truncated_image_error(fmt, keep):
    data = image_bytes(fmt, (120, 80))
    cut = int(len(data) * keep) if isinstance(keep, float) else len(data) - int(keep[-1])
    with pytest.raises(ImageDataError) as info:
        sniff_image(data[:cut])
    assert info.value.kind == "truncated_image"
    assert info.value.retryable is True
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head><body>busy</body></html>",
        b'{"error": "Image not found."}',
        random.Random(1234).randbytes(4096),
        b"\xff\xd8\xff" + random.Random(5).randbytes(300) + b"\xff\xd9",  # JPEG magic, garbage body
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\x12\x34junk\xff\xd9",  # bad segment
        b"RIFF\x0c\x00\x00\x00WEBPjunkjunk",  # complete WEBP container, no image inside
    ],
    ids=["empty", "html", "json", "random", "jpeg-magic-garbage", "jpeg-bad-segment", "webp-magic-garbage"],
)
def test_bytes_that_are_no_image_are_undecodable_and_not_retryable(data):
    with pytest.raises(ImageDataError) as info:
        sniff_image(data)
    assert info.value.kind == "undecodable_image"
    assert info.value.retryable is False


# ---- geometry ---------------------------------------------------------------------------------


def test_box_to_bbox_converts_centre_pixels_to_normalised_top_left():
    bbox = box_to_bbox(Box("cat", x=100, y=150, width=50, height=80), 640, 480)
    assert bbox == pytest.approx((0.1171875, 0.22916666666666666, 0.078125, 0.16666666666666666), abs=1e-12)


def test_box_to_bbox_accepts_fractional_pixels():
    bbox = box_to_bbox(Box("a", x=302.5, y=244, width=485, height=367.5), 1000, 500)
    assert bbox == pytest.approx((0.06, 0.1205, 0.485, 0.735))


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        (Box("a", x=10, y=10, width=40, height=40), (0.0, 0.0, 0.3, 0.3)),  # over the top-left corner
        (Box("a", x=90, y=95, width=40, height=20), (0.7, 0.85, 0.3, 0.15)),  # over the bottom-right corner
        (Box("a", x=50, y=50, width=1000, height=1000), (0.0, 0.0, 1.0, 1.0)),  # larger than the image
        (Box("a", x=-10, y=50, width=40, height=10), (0.0, 0.45, 0.1, 0.1)),  # centre outside, edge inside
    ],
)
def test_box_partly_outside_the_image_is_clipped(box, expected):
    assert box_to_bbox(box, 100, 100) == pytest.approx(expected)


@pytest.mark.parametrize(
    "box",
    [
        Box("a", x=-100, y=50, width=40, height=40),  # left of the image
        Box("a", x=300, y=50, width=40, height=40),  # right
        Box("a", x=50, y=-100, width=40, height=40),  # above
        Box("a", x=50, y=250, width=40, height=40),  # below
        Box("a", x=-20, y=50, width=40, height=40),  # touches the left edge: zero area left
        Box("a", x=120, y=50, width=40, height=40),  # touches the right edge
        Box("a", x=50, y=50, width=0, height=40),
        Box("a", x=50, y=50, width=40, height=0),
        Box("a", x=50, y=50, width=-40, height=40),
        Box("a", x=math.nan, y=50, width=40, height=40),
        Box("a", x=50, y=math.nan, width=40, height=40),
        Box("a", x=50, y=50, width=math.nan, height=40),
        Box("a", x=50, y=50, width=40, height=math.nan),
        Box("a", x=math.inf, y=50, width=40, height=40),
        Box("a", x=50, y=50, width=math.inf, height=40),
    ],
)
def test_box_with_nothing_left_inside_the_image_is_none(box):
    assert box_to_bbox(box, 100, 100) is None


@pytest.mark.parametrize(("w", "h"), [(0, 100), (100, 0), (-5, 100)])
def test_box_on_image_without_pixels_is_none(w, h):
    assert box_to_bbox(Box("a", x=10, y=10, width=5, height=5), w, h) is None


def test_points_to_polygon_normalises_pixels():
    polygon = points_to_polygon([(0, 0), (640, 0), (320, 480), (160, 120)], 640, 480)
    assert polygon == [{"x": 0.0, "y": 0.0}, {"x": 1.0, "y": 0.0}, {"x": 0.5, "y": 1.0}, {"x": 0.25, "y": 0.25}]


def test_points_to_polygon_clamps_points_outside_the_image():
    polygon = points_to_polygon([(-10, 20), (700, -5), (320, 999)], 640, 480)
    assert polygon == [{"x": 0.0, "y": pytest.approx(20 / 480)}, {"x": 1.0, "y": 0.0}, {"x": 0.5, "y": 1.0}]


def test_points_to_polygon_drops_non_finite_points():
    polygon = points_to_polygon([(math.nan, 1), (64, 48), (128, 48), (math.inf, 0), (64, 96)], 640, 480)
    assert polygon == [{"x": 0.1, "y": 0.1}, {"x": 0.2, "y": 0.1}, {"x": 0.1, "y": 0.2}]


@pytest.mark.parametrize("points", [None, [], [(1, 1), (2, 2)], [(1, 1), (2, 2), (math.nan, 3)]])
def test_points_to_polygon_below_three_usable_points_is_none(points):
    assert points_to_polygon(points, 640, 480) is None


# ---- parse_details ----------------------------------------------------------------------------


def test_parse_details_reads_the_documented_example():
    d = parse_details(DETAILS_EXAMPLE)
    assert d.image_id == "test-image-id"
    assert d.name == "test_image.jpg"
    assert d.split == "train"
    assert d.tags == ("tag1", "tag2")
    assert d.created == 1616161616.0
    assert (d.width, d.height) == (640, 480)
    assert d.annotation_key == "some-key"
    assert d.original_url == "https://example.com/image.jpg"
    assert d.boxes == (Box("person", 100.0, 150.0, 50.0, 80.0, None),)


def test_parse_details_reads_polygon_points_and_class_alias():
    payload = {
        "image": {
            "id": "IMG",
            "owner": "owner1",
            "annotation": {
                "width": 100,
                "height": 50,
                "boxes": [
                    {"class": "car", "x": 50, "y": 25, "width": 20, "height": 10,
                     "points": [{"x": 40, "y": 20}, {"x": 60, "y": 20}, "junk", {"x": 50, "y": 30}]},
                    "not a box",
                ],
            },
            "urls": {"original": "https://source.roboflow.com/owner1/undefined/original.jpg"},
        }
    }
    d = parse_details(payload)
    assert d.boxes == (Box("car", 50.0, 25.0, 20.0, 10.0, ((40.0, 20.0), (60.0, 20.0), (50.0, 30.0))),)
    assert d.original_url == "https://source.roboflow.com/owner1/IMG/original.jpg"
    assert d.owner == "owner1"


def test_parse_details_turns_unreadable_numbers_into_nan_and_sizes_into_none():
    payload = {"image": {"id": 42, "annotation": {"width": "wide", "height": -3,
                                                  "boxes": [{"label": "a", "x": "left", "y": None, "width": 1}]}}}
    d = parse_details(payload)
    assert d.image_id == "42"
    assert d.width is None and d.height is None
    (box,) = d.boxes
    assert math.isnan(box.x) and math.isnan(box.y) and math.isnan(box.height) and box.width == 1.0


def test_parse_details_without_annotation_has_no_boxes():
    d = parse_details({"image": {"id": "IMG", "name": "x.png"}})
    assert d.boxes == () and d.width is None and d.split is None and d.created is None and d.original_url == ""


@pytest.mark.parametrize(
    "payload",
    [{}, {"error": "Image not found."}, {"image": None}, {"image": {}}, {"image": {"id": ""}}, {"image": ["id"]}],
)
def test_parse_details_without_an_image_is_bad_details(payload):
    with pytest.raises(DetailsError) as info:
        parse_details(payload)
    assert info.value.kind == "bad_details"


def test_check_classes_names_unmapped_labels():
    details = make_details([Box("person", 1, 1, 1, 1), Box("dog", 1, 1, 1, 1), Box("bird", 1, 1, 1, 1)])
    with pytest.raises(DetailsError) as info:
        check_classes(details, make_ctx())
    assert info.value.kind == "unmapped_class"
    assert "'bird'" in str(info.value) and "'dog'" in str(info.value) and "person" not in str(info.value)


def test_check_classes_accepts_mapped_and_skipped_labels():
    check_classes(make_details([Box("person", 1, 1, 1, 1), Box("ignored", 1, 1, 1, 1)]), make_ctx())


# ---- hashes -----------------------------------------------------------------------------------


def test_import_hash_is_deterministic():
    boxes = [Box("person", 10, 10, 5, 5), Box("car", 20, 20, 4, 4, ((1.0, 2.0), (3.0, 4.0), (5.0, 6.0)))]
    first = import_hash(make_details(boxes), make_ctx())
    assert first == import_hash(make_details(list(boxes)), make_ctx())
    assert len(first) == 64 and int(first, 16) >= 0


def test_import_hash_ignores_the_original_url():
    details = make_details([Box("person", 10, 10, 5, 5)])
    moved = dataclasses.replace(details, original_url="https://cdn.example/other?sig=1")
    assert import_hash(details, make_ctx()) == import_hash(moved, make_ctx())


@pytest.mark.parametrize(
    "change",
    [
        lambda d, c: (dataclasses.replace(d, boxes=(Box("person", 11, 10, 5, 5),)), c),
        lambda d, c: (dataclasses.replace(d, split="valid"), c),
        lambda d, c: (dataclasses.replace(d, tags=("tag1", "new")), c),
        lambda d, c: (dataclasses.replace(d, width=641), c),
        lambda d, c: (d, dataclasses.replace(c, version=4)),
        lambda d, c: (d, dataclasses.replace(c, bucket="other-bucket")),
        lambda d, c: (d, dataclasses.replace(c, class_ids={**c.class_ids, "person": CLASS_CAR})),
        lambda d, c: (d, dataclasses.replace(c, class_ids={**c.class_ids, "person": None})),
    ],
    ids=["box-moved", "split", "tags", "size", "version", "bucket", "class-remapped", "class-skipped"],
)
def test_import_hash_changes_with_what_the_rows_are_made_of(change):
    details, ctx = make_details([Box("person", 10, 10, 5, 5)]), make_ctx()
    assert import_hash(details, ctx) != import_hash(*change(details, ctx))


def test_import_hash_ignores_mapping_of_classes_the_image_does_not_use():
    details, ctx = make_details([Box("person", 10, 10, 5, 5)]), make_ctx()
    other = dataclasses.replace(ctx, class_ids={**ctx.class_ids, "car": None, "truck": CLASS_CAR})
    assert import_hash(details, ctx) == import_hash(details, other)


def test_annotation_source_key_is_content_derived_and_numbers_duplicates():
    box = Box("person", 10, 10, 5, 5)
    seen: dict[str, int] = {}
    first, second = annotation_source_key(box, seen), annotation_source_key(Box("person", 10, 10, 5, 5), seen)
    digest = first.split("#")[0]
    assert first == f"{digest}#0" and second == f"{digest}#1"
    assert annotation_source_key(box, {}) == first  # same box, fresh image -> same key as before
    moved = annotation_source_key(Box("person", 10, 11, 5, 5), {})
    relabelled = annotation_source_key(Box("car", 10, 10, 5, 5), {})
    assert len({digest, moved.split("#")[0], relabelled.split("#")[0]}) == 3


# ---- rows -------------------------------------------------------------------------------------


def test_build_rows_for_the_documented_example():
    details = dataclasses.replace(parse_details(DETAILS_EXAMPLE), split="valid")
    ctx = make_ctx()
    stored = make_stored(details)
    rows = build_rows(stored, ctx, "https://x.supabase.co/storage/v1/object/public/od-images/p.png")

    image_id = image_uuid(source_ref(DATASET, "test-image-id"))
    assert rows.image["id"] == image_id
    assert rows.image["source_ref"] == f"roboflow:test-image-id@{DATASET}"
    assert rows.image["source"] == "import"
    assert rows.image["filename"] == "test-image-id.png"
    assert rows.image["original_filename"] == "test_image.jpg"
    assert rows.image["storage_path"] == stored.storage_path
    assert rows.image["storage_bucket"] == "od-images"
    assert rows.image["image_url"] == "https://x.supabase.co/storage/v1/object/public/od-images/p.png"
    assert (rows.image["width"], rows.image["height"]) == (640, 480)
    assert rows.image["mime_type"] == "image/png"
    assert rows.image["file_size_bytes"] == 12345
    assert rows.image["file_hash"] == "ab" * 32
    assert rows.image["status"] == "annotated"
    assert rows.image["folder"] == "roboflow/acme/helmets"
    assert rows.image["tags"] == ["tag1", "tag2", "roboflow:acme/helmets", "roboflow-version:3"]
    meta = rows.image["metadata"]["roboflow"]
    assert meta["image_id"] == "test-image-id" and meta["split"] == "valid" and meta["version"] == 3
    assert meta["annotation_key"] == "some-key"

    assert rows.dataset_image == {
        "dataset_id": DATASET,
        "image_id": image_id,
        "status": "annotated",
        "annotation_count": 1,
        "split": "val",
        "import_hash": "cd" * 32,
    }
    (ann,) = rows.annotations
    assert (ann["bbox_x"], ann["bbox_y"], ann["bbox_width"], ann["bbox_height"]) == pytest.approx(
        (0.1171875, 0.22916666666666666, 0.078125, 0.16666666666666666)
    )
    assert ann["dataset_id"] == DATASET and ann["image_id"] == image_id and ann["class_id"] == CLASS_PERSON
    assert ann["polygon"] is None
    assert ann["is_ai_generated"] is False
    assert ann["attributes"] == {"roboflow_label": "person"}
    assert rows.dropped_annotations == {}


def test_build_rows_counts_skipped_classes_and_invalid_geometry():
    boxes = [
        Box("person", 100, 100, 20, 20),
        Box("ignored", 100, 100, 20, 20),
        Box("car", -500, 100, 20, 20),
        Box("car", 100, 100, 0, 20),
        Box("car", math.nan, 100, 20, 20),
    ]
    rows = build_rows(make_stored(make_details(boxes)), make_ctx(), "u")
    assert [a["class_id"] for a in rows.annotations] == [CLASS_PERSON]
    assert rows.dropped_annotations == {"skipped_class": 1, "invalid_geometry": 3}
    assert rows.dataset_image["annotation_count"] == 1


def test_build_rows_without_annotations_is_pending():
    rows = build_rows(make_stored(make_details([Box("ignored", 1, 1, 1, 1)])), make_ctx(), "u")
    assert rows.annotations == []
    assert rows.image["status"] == rows.dataset_image["status"] == "pending"
    assert rows.dataset_image["annotation_count"] == 0


def test_build_rows_normalises_against_stored_size_when_annotation_has_none():
    details = make_details([Box("person", 50, 50, 20, 10)], width=None, height=None)
    (ann,) = build_rows(make_stored(details, width=200, height=100), make_ctx(), "u").annotations
    assert (ann["bbox_x"], ann["bbox_y"], ann["bbox_width"], ann["bbox_height"]) == pytest.approx(
        (0.2, 0.45, 0.1, 0.1)
    )


def test_build_rows_normalises_against_annotation_size_when_given():
    """Box pixels are relative to ``annotation.width/height``, even if the stored image differs."""
    details = make_details([Box("person", 50, 50, 20, 10)], width=100, height=100)
    (ann,) = build_rows(make_stored(details, width=400, height=400), make_ctx(), "u").annotations
    assert (ann["bbox_x"], ann["bbox_width"]) == pytest.approx((0.4, 0.2))


def test_build_rows_keeps_polygons_normalised():
    box = Box("car", 320, 240, 640, 480, ((0.0, 0.0), (700.0, 0.0), (320.0, 480.0)))
    (ann,) = build_rows(make_stored(make_details([box])), make_ctx(), "u").annotations
    assert ann["polygon"] == [{"x": 0.0, "y": 0.0}, {"x": 1.0, "y": 0.0}, {"x": 0.5, "y": 1.0}]


def test_build_rows_without_version_has_no_version_tag_and_dedupes_tags():
    details = make_details([], tags=("x", "roboflow:acme/helmets", "x"))
    rows = build_rows(make_stored(details), make_ctx(version=None), "u")
    assert rows.image["tags"] == ["x", "roboflow:acme/helmets"]


def test_build_rows_with_unknown_split_leaves_split_null():
    rows = build_rows(make_stored(make_details([], split="holdout")), make_ctx(), "u")
    assert rows.dataset_image["split"] is None


def test_build_rows_gives_identical_boxes_distinct_source_keys():
    boxes = [Box("person", 100, 100, 20, 20)] * 3 + [Box("car", 100, 100, 20, 20)]
    rows = build_rows(make_stored(make_details(boxes)), make_ctx(), "u")
    keys = [a["source_key"] for a in rows.annotations]
    assert len(set(keys)) == 4
    assert build_rows(make_stored(make_details(boxes)), make_ctx(), "u").annotations == rows.annotations


def _random_coordinate(rng: random.Random, span: int) -> float:
    roll = rng.random()
    if roll < 0.03:
        return rng.choice([math.nan, math.inf, -math.inf])
    if roll < 0.08:
        return rng.choice([0.0, float(span), -1e-9, span + 1e-9])
    return rng.uniform(-0.5 * span, 1.5 * span)


def _random_size(rng: random.Random, span: int) -> float:
    roll = rng.random()
    if roll < 0.03:
        return rng.choice([math.nan, math.inf])
    if roll < 0.08:
        return rng.choice([0.0, -rng.uniform(0, span), 1e-6])
    return rng.uniform(0, 2 * span)


def _reference_bbox(box: Box, w: int, h: int):
    """Independent reference: clip the pixel corners to the image, then normalise."""
    values = (box.x, box.y, box.width, box.height)
    if not all(math.isfinite(v) for v in values) or box.width <= 0 or box.height <= 0:
        return None
    left, right = max(0.0, box.x - box.width / 2), min(float(w), box.x + box.width / 2)
    top, bottom = max(0.0, box.y - box.height / 2), min(float(h), box.y + box.height / 2)
    if (right - left) / w < MIN_BOX_SIZE or (bottom - top) / h < MIN_BOX_SIZE:
        return None  # degenerate: would round to 0 in a real column and fail bbox_width > 0
    return left / w, top / h, (right - left) / w, (bottom - top) / h


def test_every_built_annotation_row_satisfies_the_table_checks():
    rng = random.Random(20240611)
    labels = ["person", "car", "ignored"]
    total_rows = 0
    for _ in range(400):
        w, h = rng.choice([1, 2, 17, 640, 4032]), rng.choice([1, 3, 480, 3024])
        boxes = []
        for _ in range(rng.randint(0, 12)):
            points = None
            if rng.random() < 0.4:
                points = tuple((_random_coordinate(rng, w), _random_coordinate(rng, h))
                               for _ in range(rng.randint(0, 7)))
            boxes.append(Box(rng.choice(labels), _random_coordinate(rng, w), _random_coordinate(rng, h),
                             _random_size(rng, w), _random_size(rng, h), points))
        split = rng.choice(["train", "valid", "test", "TRAIN", None, "other"])
        rows = build_rows(make_stored(make_details(boxes, width=w, height=h, split=split)), make_ctx(), "u")

        assert rows.dataset_image["split"] in {"train", "val", "test", None}
        kept = [b for b in boxes if b.label != "ignored" and _reference_bbox(b, w, h) is not None]
        assert len(rows.annotations) == len(kept)
        assert sum(rows.dropped_annotations.values()) == len(boxes) - len(kept)
        assert rows.dataset_image["annotation_count"] == len(kept)
        assert rows.image["status"] == ("annotated" if kept else "pending")
        assert len({a["source_key"] for a in rows.annotations}) == len(rows.annotations)
        for box, row in zip(kept, rows.annotations, strict=True):
            assert_satisfies_annotation_checks(row)
            expected = _reference_bbox(box, w, h)
            got = (row["bbox_x"], row["bbox_y"], row["bbox_width"], row["bbox_height"])
            assert got == pytest.approx(expected, abs=1e-9), (box, w, h)
            assert row["bbox_x"] + row["bbox_width"] <= 1.0 + 1e-9
            assert row["bbox_y"] + row["bbox_height"] <= 1.0 + 1e-9
        total_rows += len(rows.annotations)
    assert total_rows > 500  # the loop really exercised the checks
