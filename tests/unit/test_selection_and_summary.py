"""Filters become the right RoboQL / search body; the summary table shows what a person checks."""

from __future__ import annotations

import re
import shlex
import types

import pytest

from pipeline import validation
from pipeline.errors import InputError
from pipeline.options import ImportOptions
from pipeline.summary import build_summary, letters_by_error, prune_outcome, render
from transforms.clients.imported import ImportedImage, roboflow_id_of
from transforms.clients.listing import ListingSpec, Selection, selection_body, selection_query
from transforms.core.records import DeadLetter
from transforms.prune import prune_actions


def test_no_filter_is_the_whole_project():
    assert selection_query(Selection()) == "*"
    assert selection_body(Selection()) == ()
    assert not Selection().active()
    assert ListingSpec("ws", "p", 1, query=selection_query(Selection())).roboql() == "project:p *"


def test_each_filter_is_one_roboql_term_and_one_body_key():
    selection = Selection(split="valid", tag="cam_a", class_name="helmet", query="filename:x1 -tag:blurry")
    assert selection_query(selection) == "split:valid tag:cam_a class:helmet filename:x1 -tag:blurry"
    assert selection_body(selection) == (("split", "valid"), ("tag", "cam_a"), ("class_name", "helmet"))


@pytest.mark.parametrize("value", ["tag with space", 'say "hi"', "a:b", "back\\slash"])
def test_values_with_blanks_quotes_or_colons_are_quoted_so_they_stay_one_term(value):
    query = selection_query(Selection(tag=value))
    assert shlex.split(query) == [f"tag:{value}"]


def test_unicode_values_need_no_quotes():
    assert selection_query(Selection(class_name="ünïcode")) == "class:ünïcode"


def opts(*argv: str) -> ImportOptions:
    return ImportOptions(list(argv))


def test_split_val_is_taken_for_roboflows_valid():
    assert validation.selection_of(opts("--split", "val")).split == "valid"


@pytest.mark.parametrize("argv, message", [
    (("--split", "training"), "--split 'training' is not a Roboflow split; use one of train, valid, test"),
    (("--tag", " "), "--tag is empty"),
    (("--split", "train", "--roboflow_listing", "offset"), "--split works with the token listing only"),
    (("--query", "tag:x", "--roboflow_listing", "offset"), "--query works with the token listing only"),
    (("--prune_mode", "mark"), "--prune_mode mark needs --prune"),
    (("--prune", "--tag", "x"), "--prune removes images missing from the whole project"),
    (("--prune", "--retry_dead_letters", "d"), "--prune needs the whole project's listing"),
    (("--plan", "--retry_dead_letters", "d"), "--plan plans a listing"),
])
def test_bad_selections_are_one_line_input_errors(argv, message):
    options = opts(*argv)
    with pytest.raises(InputError, match=re.escape(message)):
        validation.check_selection(options, validation.selection_of(options))


def test_unknown_class_names_the_valid_ones():
    with pytest.raises(InputError, match=r"--class_name 'helmett' is not a class of ws/p; did you mean 'helmet'\? "
                                         r"its classes: head, helmet, person"):
        validation.check_class_filter(Selection(class_name="helmett"), {"person": 1, "helmet": 2, "head": 3}, "ws/p")
    validation.check_class_filter(Selection(class_name="head"), {"head": 3}, "ws/p")


def test_source_refs_of_other_datasets_are_not_ours():
    assert roboflow_id_of("roboflow:abc@d1", "d1") == "abc"
    assert roboflow_id_of("roboflow:abc@d2", "d1") is None
    assert roboflow_id_of("upload:abc@d1", "d1") is None
    assert roboflow_id_of(None, "d1") is None


def test_prune_actions_prune_unlisted_and_unmark_relisted():
    marked = ImportedImage("a", "u1", "p/a.jpg", "h", 10, missing_since="2026-01-01T00:00:00+00:00")
    plain = ImportedImage("b", "u2", "p/b.jpg", "h", 10)
    assert list(prune_actions(("a", {"listed": [], "imported": [marked]}), "delete")) == [("prune", marked)]
    assert list(prune_actions(("a", {"listed": [True], "imported": [marked]}), "mark")) == [("unmark", marked)]
    assert list(prune_actions(("a", {"listed": [True], "imported": [marked]}), "delete")) == []
    assert list(prune_actions(("b", {"listed": [True], "imported": [plain]}), "mark")) == []
    assert list(prune_actions(("c", {"listed": [True], "imported": []}), "delete")) == []


def checked(**fields):
    base = dict(dataset_id="d1", workspace="ws", project="p", version=None, version_splits=None,
                listing=types.SimpleNamespace(total=10), selection=Selection(tag="cam_a"), prune=None)
    return types.SimpleNamespace(**{**base, **fields})


def write_letters(tmp_path, letters):
    path = tmp_path / "dead_letters-00000-of-00001.jsonl"
    path.write_text("".join(letter.to_json() + "\n" for letter in letters))
    return [str(path)]


def test_dead_letters_are_grouped_by_error_type_most_first(tmp_path):
    files = write_letters(tmp_path, [DeadLetter("a", "fetch_details", "not_found", "404 Image not found."),
                                     DeadLetter("b", "upload", "undecodable_image", "not an image"),
                                     DeadLetter("c", "fetch_details", "not_found", "404 again"),
                                     DeadLetter("d", "upload", "not_found", "cdn 404")])
    groups = letters_by_error(files)
    assert list(groups) == ["not_found", "undecodable_image"]
    assert groups["not_found"] == {"count": 3, "steps": ["fetch_details", "upload"], "example": "404 Image not found."}


def test_summary_table_has_every_count_and_the_dead_letters_by_type(tmp_path):
    files = write_letters(tmp_path, [DeadLetter("a", "fetch_details", "not_found", "404 Image not found.")] * 2)
    counters = {"images_listed": 10, "images_written": 5, "images_new": 4, "images_changed": 1,
                "images_unchanged": 3, "images_failed": 2, "bytes_uploaded": 2_500_000, "objects_uploaded": 4,
                "annotations_written": 17, "images_pruned": 6, "objects_removed": 6}
    summary = build_summary(counters, checked=checked(prune="delete"), seconds=4.0, dead_letter_files=files)
    assert (summary["imported"], summary["pruned"], summary["images_per_second"]) == (8, 6, 2.0)
    assert summary["filters"] == {"tag": "cam_a"} and summary["prune"]["objects_removed"] == 6
    assert summary["dead_letters_by_error"]["not_found"]["count"] == 2 and not summary["complete"]
    table = render(summary).splitlines()
    rows = {line[:24].strip(): line[24:36].strip() for line in table[2:] if len(line) > 24 and line[2] != " "}
    assert {k: rows[k] for k in ("listed", "imported", "pruned", "failed", "annotations",
                                                       "objects uploaded", "time")} == {
        "listed": "10", "imported": "8", "pruned": "6", "failed": "2", "annotations": "17",
        "objects uploaded": "4", "time": "4.0 s"}
    assert "--tag 'cam_a'" in table[1] and "INCOMPLETE" in table[0]
    assert any(line.split()[:2] == ["new", "4"] for line in table)
    assert any(line.split()[:2] == ["changed", "1"] for line in table)
    assert any(line.split()[:2] == ["unchanged", "3"] for line in table)
    assert "2.5 MB" in render(summary) and "2.0 images/s" in render(summary)
    by_type = table[table.index("  dead letters by error type:") + 1].split()
    assert by_type[:4] == ["not_found", "2", "at", "fetch_details;"]


def test_throttled_time_is_said_as_requests_waiting_on_average_not_as_bare_seconds():
    """47.8 s throttled in a 9 s run is request-seconds: 5.3 requests waiting on average."""
    counters = {"images_listed": 3, "images_written": 3, "throttled_ms": 47_800}
    table = render(build_summary(counters, checked=checked(), seconds=9.0, dead_letter_files=[]))
    waits = next(line for line in table.splitlines() if "rate-limit waits" in line)
    assert "47.8 s" in waits and "on average 5.3 requests were waiting" in waits
    quiet = render(build_summary({"images_listed": 1, "images_written": 1}, checked=checked(), seconds=1.0,
                                 dead_letter_files=[]))
    assert "rate-limit waits" not in quiet and "throttled" not in quiet


def test_a_skipped_prune_says_why_and_a_failed_one_makes_the_run_incomplete():
    skipped = prune_outcome({"prune_skipped": 4}, "delete")
    assert skipped["skipped"] == 4 and "listing was incomplete" in skipped["note"]
    assert prune_outcome({}, None) is None
    counters = {"images_listed": 3, "images_written": 3, "prune_failed": 1}
    summary = build_summary(counters, checked=checked(prune="mark"), seconds=1.0, dead_letter_files=[])
    assert not summary["complete"] and "1 failed" in render(summary)


class RecordingClient:
    """Stands in for SupabaseClient in PruneFn: records the calls, links one image to another dataset."""

    def __init__(self, shared_with_other: set[str] = frozenset()):
        self.calls: list[tuple] = []
        self.shared = shared_with_other

    def select(self, table, columns, **filters):
        self.calls.append(("select", table))
        return [{"image_id": i, "dataset_id": "other"} for i in filters["image_id"] if i in self.shared]

    def remove_objects(self, paths):
        self.calls.append(("remove", tuple(paths)))

    def delete_rows(self, table, **filters):
        self.calls.append(("delete", table, tuple(filters.get("image_id") or filters.get("id"))))

    def update_rows(self, table, values, **filters):
        self.calls.append(("update", table, tuple(filters["image_id"]), values["source_missing_at"] is None))


def prune_fn(mode: str, total: int, client: RecordingClient):
    from transforms.prune import PruneFn

    fn = PruneFn(None, "d1", mode, total)
    fn._client = client
    return fn


def test_prune_deletes_objects_first_and_keeps_rows_another_dataset_links():
    client = RecordingClient(shared_with_other={"u2"})
    a, b = ImportedImage("a", "u1", "d1/roboflow/a.jpg", "h", 5), ImportedImage("b", "u2", "d1/roboflow/b.jpg", "h", 7)
    prune_fn("delete", 10, client).process([("prune", a), ("prune", b)], listed=10, lost_pages=0)
    assert client.calls == [("select", "od_dataset_images"), ("remove", ("d1/roboflow/a.jpg",)),
                            ("delete", "od_annotations", ("u1", "u2")), ("delete", "od_images", ("u1",)),
                            ("delete", "od_dataset_images", ("u1", "u2"))]


@pytest.mark.parametrize("listed, lost_pages", [(9, 0), (10, 1), (0, 0)])
def test_prune_touches_nothing_after_a_short_lost_or_empty_listing(listed, lost_pages):
    client = RecordingClient()
    fn = prune_fn("delete", 0 if listed == 0 else 10, client)
    fn.process([("prune", ImportedImage("a", "u1", "p", "h", 5))], listed=listed, lost_pages=lost_pages)
    assert client.calls == []


def test_mark_keeps_the_first_missing_time_and_unmark_clears():
    client = RecordingClient()
    fresh = ImportedImage("a", "u1", "p", "h", 5)
    marked = ImportedImage("b", "u2", "p", "h", 5, missing_since="2026-01-01T00:00:00+00:00")
    back = ImportedImage("c", "u3", "p", "h", 5, missing_since="2026-01-01T00:00:00+00:00")
    prune_fn("mark", 3, client).process([("prune", fresh), ("prune", marked), ("unmark", back)], listed=3,
                                        lost_pages=0)
    assert client.calls == [("update", "od_dataset_images", ("u3",), True),
                            ("update", "od_dataset_images", ("u1",), False)]
