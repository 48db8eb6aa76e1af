"""The Beam-free pieces of issue 17: the listing fingerprint, why a details call is skipped, the plan's counts."""

from __future__ import annotations

from types import SimpleNamespace

from pipeline.plan import sync_plan
from pipeline.runs import RETRY_SCOPE, scope_of
from pipeline.summary import details_outcome
from transforms.clients.listing import Selection, agreed
from transforms.core.listing_summary import summary_fingerprint
from transforms.core.records import ImportContext, ListedImage
from transforms.fetch_details import skip_reason

CTX = ImportContext("d", "ws", "proj", 1, "bucket", {"dog": "c-dog", "cat": "c-cat", "cone": None})
RESULT = {"id": "a", "name": "a.jpg", "annotations": {"count": 3, "classes": {"dog": 2, "cat": 1}},
          "labels": ["cat", "dog"], "split": "train", "tags": ["x", "y"], "user_metadata": {"cam": 1}}


def test_fingerprint_follows_the_summary_and_the_mapping_but_not_key_order():
    base = summary_fingerprint(RESULT, CTX)
    assert base and summary_fingerprint({**RESULT, "tags": ["y", "x"]}, CTX) == base
    for changed in ({"annotations": {"count": 3, "classes": {"dog": 1, "cat": 2}}}, {"split": "valid"},
                    {"tags": ["x"]}, {"name": "b.jpg"}, {"user_metadata": {"cam": 2}}, {"labels": ["dog"]}):
        assert summary_fingerprint({**RESULT, **changed}, CTX) != base, changed
    remapped = ImportContext("d", "ws", "proj", 1, "bucket", {"dog": "c-dog2", "cat": "c-cat"})
    assert summary_fingerprint(RESULT, remapped) != base
    unrelated = ImportContext("d", "ws", "proj", 1, "bucket", {**CTX.class_ids, "truck": "c-truck"})
    assert summary_fingerprint(RESULT, unrelated) == base  # a class the image does not have changes nothing


def test_no_fingerprint_without_the_class_counts():
    assert summary_fingerprint({k: v for k, v in RESULT.items() if k != "annotations"}, CTX) is None
    assert summary_fingerprint(RESULT, None) is None


def test_workspace_search_filename_gives_the_same_fingerprint_as_project_search_name():
    v1 = {k: v for k, v in RESULT.items() if k != "name"} | {"filename": "a.jpg"}
    assert summary_fingerprint(v1, CTX) == summary_fingerprint(RESULT, CTX)


def test_skip_reasons():
    item = ListedImage("a", "fp1", "train")
    link = {"import_hash": "h", "import_run_id": "run-1", "listing_fingerprint": "fp1"}
    exact, listing = CTX, ImportContext(**{**CTX.__dict__, "change_detection": "listing"})
    resuming = ImportContext(**{**CTX.__dict__, "run_id": "run-1", "resuming": True})
    assert skip_reason(item, link, exact) is None  # exact, not resuming: the details decide
    assert skip_reason(item, link, resuming) == "resumed"
    assert skip_reason(item, {**link, "import_run_id": "run-0"}, resuming) is None
    assert skip_reason(item, link, listing) == "unchanged_summary"
    assert skip_reason(ListedImage("a", "fp2"), link, listing) is None
    assert skip_reason(ListedImage("a", None), {**link, "listing_fingerprint": None}, listing) is None
    assert skip_reason(item, {**link, "import_hash": None}, resuming) is None  # half-written: redo
    assert skip_reason(item, None, listing) is None


def test_an_image_listed_twice_keeps_its_fingerprint_only_when_the_listings_agree():
    assert agreed([ListedImage("a", "f", "train")] * 2) == ListedImage("a", "f", "train")
    assert agreed([ListedImage("a", "f", "train"), ListedImage("a", "g", "train")]) == ListedImage("a", None, "train")
    assert agreed([ListedImage("a", None, None), ListedImage("a", "f", "train")]) == ListedImage("a", "f", "train")


def test_scope_keys_filtered_and_retry_runs_apart_from_the_whole_project():
    assert scope_of(Selection()) == ""
    assert scope_of(Selection(split="train")) == "--split 'train'"
    assert scope_of(Selection(), retry=True) == RETRY_SCOPE


def test_sync_plan_counts_details_calls_of_both_modes_and_the_resume():
    listed = {i: ListedImage(i, f"fp-{i}") for i in "abcdef"}
    imported = {
        "a": SimpleNamespace(import_hash="h", run_id="run-1", listing_fingerprint="old"),  # the open run wrote it
        "b": SimpleNamespace(import_hash="h", run_id="run-0", listing_fingerprint="fp-b"),  # summary unchanged
        "c": SimpleNamespace(import_hash="h", run_id="run-0", listing_fingerprint="other"),  # summary changed
        "d": SimpleNamespace(import_hash=None, run_id="run-1", listing_fingerprint="fp-d"),  # interrupted mid-image
    }
    plan = sync_plan(listed, imported, {"id": "run-1", "run_name": "job", "attempts": 1}, pages=1)
    assert plan["exact"] == {"details_calls": 5, "roboflow_calls": 6}
    assert plan["listing"] == {"details_calls": 4, "roboflow_calls": 5, "unchanged_summary": 1}
    assert plan["resume"]["written"] == 1
    assert sync_plan(listed, imported, None, pages=1)["exact"]["details_calls"] == 6


def test_details_outcome_reports_calls_made_saved_and_why():
    counters = {"roboflow.calls.image_details": 12, "details_fetched": 10, "details_skipped.resumed": 7,
                "details_skipped.unchanged_summary": 3}
    outcome = details_outcome(counters, {"resumed": True, "change_detection": "listing"})
    assert (outcome["calls"], outcome["saved"]) == (12, 10)
    assert outcome["skipped"] == {"resumed": 7, "unchanged_summary": 3}
    assert len(outcome["notes"]) == 2 and "next full sync" in outcome["notes"][0]
    assert details_outcome({}, None)["notes"] == []
