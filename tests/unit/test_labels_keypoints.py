"""Null vs unannotated images, image labels, keypoints, box-less polygons and user_metadata (issue 14)."""

import copy
import math

import pytest

from pipeline.errors import InputError
from pipeline.project_types import project_type, skeletons_of
from tests.unit.test_convert import CLASS_PERSON, DETAILS_EXAMPLE, make_ctx, make_stored
from transforms.core.convert import DetailsError, build_rows, check_classes, import_hash, label_state, parse_details
from transforms.core.tables import CLS


def details_with(**image_fields):
    payload = copy.deepcopy(DETAILS_EXAMPLE)
    payload["image"].update(image_fields)
    return payload


def test_null_image_is_annotated_with_zero_objects_and_unannotated_stays_pending():
    null = parse_details(details_with(annotation={"key": "k", "width": 640, "height": 480, "boxes": []}, labels=[]))
    never = details_with(labels=[])
    del never["image"]["annotation"]
    never = parse_details(never)
    assert (label_state(null), label_state(never)) == ("null", "unannotated")
    null_rows, never_rows = (build_rows(make_stored(d), make_ctx(), "u") for d in (null, never))
    assert null_rows.image["status"] == null_rows.dataset_image["status"] == "annotated"
    assert null_rows.dataset_image["annotation_count"] == 0 and null_rows.annotations == []
    assert never_rows.image["status"] == never_rows.dataset_image["status"] == "pending"
    assert import_hash(null, make_ctx()) != import_hash(never, make_ctx())


@pytest.mark.parametrize("raw, expected", [
    (["person", "car"], ("person", "car")),
    ("a,b;c|d", ("a,b;c|d",)),  # one label: class names may hold commas, never split
    ([{"label": "person"}, {"name": "car"}, {"class": "dog"}], ("person", "car", "dog")),
    (None, ()),
    ("", ()),
    (["person", "person"], ("person",)),
])
def test_labels_accept_a_list_a_string_or_objects(raw, expected):
    assert parse_details(details_with(labels=raw)).labels == expected


def test_labels_and_user_metadata_reach_the_metadata_and_the_hash():
    details = parse_details(details_with(user_metadata={"camera": "north", "frame": 3}))
    rows = build_rows(make_stored(details), make_ctx(), "u")
    roboflow = rows.image["metadata"]["roboflow"]
    assert roboflow["user_metadata"] == {"camera": "north", "frame": 3}
    assert roboflow["labels"] == ["person"] and roboflow["tags"] == ["tag1", "tag2"]
    relabelled = parse_details(details_with(labels=["person", "car"]))
    assert import_hash(details, make_ctx()) != import_hash(relabelled, make_ctx())
    other_metadata = parse_details(details_with(user_metadata={"camera": "south"}))
    assert import_hash(details, make_ctx()) != import_hash(other_metadata, make_ctx())


def test_polygon_without_a_box_gets_the_box_around_its_points():
    points = [{"x": 64, "y": 48}, {"x": 192, "y": 48}, {"x": 128, "y": 144}]
    details = parse_details(details_with(annotation={"width": 640, "height": 480,
                                                     "boxes": [{"label": "person", "points": points}]}))
    box = details.boxes[0]
    assert (box.x, box.y, box.width, box.height) == (128, 96, 128, 96)
    rows = build_rows(make_stored(details), make_ctx(), "u")
    (annotation,) = rows.annotations
    bbox = (annotation["bbox_x"], annotation["bbox_y"], annotation["bbox_width"], annotation["bbox_height"])
    assert bbox == pytest.approx((0.1, 0.1, 0.2, 0.2))
    assert len(annotation["polygon"]) == 3


def keypoint_box(keypoints):
    return {"label": "person", "x": 320, "y": 240, "width": 200, "height": 100, "keypoints": keypoints}


def test_keypoint_objects_are_normalised_and_named():
    keypoints = [{"x": 64, "y": 48, "class": "nose", "class_id": 0, "visible": 2},
                 {"x": 320, "y": 240, "class": "tail", "class_id": 1, "confidence": 0.75},
                 {"x": "bad", "y": 1, "class": "lost"}]
    details = parse_details(details_with(annotation={"width": 640, "height": 480,
                                                     "boxes": [keypoint_box(keypoints)]}))
    rows = build_rows(make_stored(details), make_ctx(), "u")
    (annotation,) = rows.annotations
    assert annotation["class_id"] == CLASS_PERSON
    assert annotation["attributes"]["keypoints"] == [
        {"name": "nose", "x": 0.1, "y": 0.1, "visible": 2},
        {"name": "tail", "x": 0.5, "y": 0.5, "confidence": 0.75},
    ]
    assert rows.keypoints == 2 and rows.dropped_annotations == {"keypoint_invalid_geometry": 1}


def test_flat_coco_keypoints_take_their_names_and_edges_from_the_skeleton():
    version = {"skeletons": {"person": {"vertices": [{"id": 1, "name": "head"}, {"id": 2, "name": "foot"}],
                                        "edges": [{"from": 1, "to": 2, "color": "#fff"}]}}}
    skeletons = skeletons_of(version)
    assert skeletons == {"person": {"names": ["head", "foot"], "edges": [[1, 2]]}}
    details = parse_details(details_with(annotation={"width": 640, "height": 480,
                                                     "boxes": [keypoint_box([64, 48, 2, 640, 480, 1])]}))
    ctx = make_ctx()
    ctx = type(ctx)(**{**ctx.__dict__, "skeletons": skeletons})
    (annotation,) = build_rows(make_stored(details), ctx, "u").annotations
    assert annotation["attributes"]["keypoints"] == [{"name": "head", "x": 0.1, "y": 0.1, "visible": 2},
                                                     {"name": "foot", "x": 1.0, "y": 1.0, "visible": 1}]
    assert annotation["attributes"]["skeleton"] == [[1, 2]]


def test_a_moved_keypoint_changes_the_annotation_key_and_the_hash():
    def rows_of(x):
        details = parse_details(details_with(annotation={"width": 640, "height": 480, "boxes": [
            keypoint_box([{"x": x, "y": 48, "class": "nose"}])]}))
        return details, build_rows(make_stored(details), make_ctx(), "u")

    (first, rows_a), (second, rows_b) = rows_of(64), rows_of(65)
    assert rows_a.annotations[0]["source_key"] != rows_b.annotations[0]["source_key"]
    assert import_hash(first, make_ctx()) != import_hash(second, make_ctx())
    plain = build_rows(make_stored(parse_details(DETAILS_EXAMPLE)), make_ctx(), "u").annotations[0]
    assert not math.isnan(plain["bbox_x"]) and "keypoints" not in plain["attributes"]


@pytest.mark.parametrize("info, target", [
    ({"type": "object-detection"}, "boxes into od_annotations"),
    ({"type": "semantic-segmentation"}, "polygons per class (and their boxes) into od_annotations"),
    ({"type": "keypoint-detection"}, "boxes into od_annotations, keypoints normalised in attributes.keypoints"),
    ({}, "boxes into od_annotations"),
])
def test_importable_project_types_name_their_target(info, target):
    assert project_type(info, "ws", "p").target == target


@pytest.mark.parametrize("info, task_type", [
    ({"type": "classification"}, "single_label"),
    ({"type": "classification", "multilabel": True}, "multi_label"),
])
def test_classification_projects_target_the_classification_module(info, task_type):
    kind = project_type(info, "ws", "p")
    assert (kind.tables.kind, kind.tables.labels, kind.task_type) == ("cls", "cls_labels", task_type)
    assert project_type({"type": "object-detection"}, "ws", "p").task_type is None


@pytest.mark.parametrize("info, words", [
    ({"type": "text-image-pairs"}, "'text-image-pairs' project"),
    ({"type": "action-recognition"}, "'action-recognition' project"),
])
def test_types_that_cannot_be_represented_stop_with_one_line(info, words):
    with pytest.raises(InputError) as caught:
        project_type(info, "ws", "p")
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert InputError.exit_code == 2


def cls_ctx(multilabel=False):
    ctx = make_ctx()
    return type(ctx)(**{**ctx.__dict__, "tables": CLS, "multilabel": multilabel})


def test_classification_rows_are_one_label_per_mapped_class():
    details = parse_details(details_with(labels=["person", "ignored"], annotation={"width": 640, "height": 480,
                                                                                   "boxes": []}, split="valid"))
    rows = build_rows(make_stored(details), cls_ctx(multilabel=True), "u")
    assert rows.annotations == [{"dataset_id": make_ctx().dataset_id, "image_id": rows.image["id"],
                                 "class_id": CLASS_PERSON, "is_ai_generated": False}]
    assert rows.dropped_annotations == {"skipped_class": 1}
    assert (rows.image["status"], rows.image["source"]) == ("labeled", "dataset_import")
    assert rows.dataset_image == {"dataset_id": make_ctx().dataset_id, "image_id": rows.image["id"],
                                  "status": "labeled", "split": "val", "import_hash": "cd" * 32}
    unlabelled = parse_details(details_with(labels=[], split=None))
    rows = build_rows(make_stored(unlabelled), cls_ctx(), "u")
    assert rows.annotations == [] and rows.dataset_image["split"] == "unassigned"
    assert rows.image["status"] == rows.dataset_image["status"] == "pending"


def test_classification_checks_labels_not_boxes_and_one_label_when_single():
    check_classes(parse_details(details_with(labels=["person"])), cls_ctx())
    with pytest.raises(DetailsError) as unmapped:
        check_classes(parse_details(details_with(labels=["zebra"])), cls_ctx())
    assert unmapped.value.kind == "unmapped_class"
    two = parse_details(details_with(labels=["person", "car"]))
    with pytest.raises(DetailsError) as several:
        check_classes(two, cls_ctx())
    assert several.value.kind == "several_labels"
    check_classes(two, cls_ctx(multilabel=True))
    relabelled = parse_details(details_with(labels=["car"]))
    assert import_hash(parse_details(details_with(labels=["person"])), cls_ctx()) != import_hash(relabelled, cls_ctx())
