import json

import pytest

from pipeline.class_mapping import (
    AUTO,
    DEFAULT_COLOR,
    MappingEntry,
    ResolvedMapping,
    load_class_mapping,
    parse_entries,
    resolve_mapping,
)
from pipeline.errors import InputError

HELMET_ID = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
VEST_ID = "9b2d8c1a-2e3f-4a5b-8c7d-6e5f4a3b2c1d"


def one_line_error(data, match: str) -> str:
    """parse_entries must raise InputError with a one-line message matching ``match``."""
    with pytest.raises(InputError) as info:
        parse_entries(data, "mapping.json")
    message = str(info.value)
    assert "\n" not in message, message
    assert match in message, message
    return message


def write(tmp_path, content: str | bytes, name="mapping.json") -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


# ---- parse_entries: accepted shapes ---------------------------------------------------------


def test_parse_entries_reads_the_platform_request_shape():
    data = [
        {"source_name": "helmet", "target_class_id": HELMET_ID, "create_new": False, "skip": False,
         "color": "#C7FC00"},
        {"source_name": "vest", "target_class_id": None, "create_new": True, "skip": False, "color": "#aabbcc"},
        {"source_name": "background", "target_class_id": None, "create_new": False, "skip": True},
    ]
    assert parse_entries(data, "f") == [
        MappingEntry("helmet", HELMET_ID, False, False, "#C7FC00"),
        MappingEntry("vest", None, True, False, "#aabbcc"),
        MappingEntry("background", None, False, True, None),
    ]


def test_parse_entries_normalises_target_uuids():
    upper = parse_entries([{"source_name": "a", "target_class_id": HELMET_ID.upper()}], "f")
    braces = parse_entries([{"source_name": "a", "target_class_id": "{" + HELMET_ID + "}"}], "f")
    bare = parse_entries([{"source_name": "a", "target_class_id": HELMET_ID.replace("-", "")}], "f")
    assert upper[0].target_class_id == braces[0].target_class_id == bare[0].target_class_id == HELMET_ID


def test_parse_entries_accepts_an_empty_list():
    assert parse_entries([], "f") == []


# ---- parse_entries: every malformed input ---------------------------------------------------


@pytest.mark.parametrize("data", [{"source_name": "a", "skip": True}, "auto", None, 3])
def test_mapping_that_is_not_a_list_is_rejected(data):
    one_line_error(data, "class mapping mapping.json must be a JSON list")


@pytest.mark.parametrize("item", ["helmet", ["helmet"], None, 1])
def test_entry_that_is_not_an_object_is_rejected(item):
    one_line_error([{"source_name": "ok", "skip": True}, item], "entry 1 is not an object")


def test_entry_with_unknown_keys_is_rejected_and_named():
    message = one_line_error([{"source_name": "a", "skip": True, "colour": "#ffffff", "target": "x"}],
                             "entry 0 has unknown keys ['colour', 'target']")
    assert "allowed: source_name" in message


@pytest.mark.parametrize("item", [{"skip": True}, {"source_name": "", "skip": True},
                                  {"source_name": None, "skip": True}, {"source_name": 7, "skip": True}])
def test_entry_without_a_source_name_is_rejected(item):
    one_line_error([item], "entry 0 needs a non-empty string source_name")


@pytest.mark.parametrize("target", ["not-a-uuid", "", "3f2504e0-4f89-41d3-9a0c", 12345, True, [HELMET_ID]])
def test_target_that_is_not_a_uuid_is_rejected(target):
    one_line_error([{"source_name": "helmet", "target_class_id": target}],
                   f"entry 0 ('helmet'): target_class_id {target!r} is not a UUID")


@pytest.mark.parametrize(
    "item",
    [
        {"source_name": "a"},
        {"source_name": "a", "target_class_id": None, "create_new": False, "skip": False},
        {"source_name": "a", "create_new": True, "skip": True},
        {"source_name": "a", "target_class_id": HELMET_ID, "create_new": True},
        {"source_name": "a", "target_class_id": HELMET_ID, "skip": True},
        {"source_name": "a", "target_class_id": HELMET_ID, "create_new": True, "skip": True},
    ],
)
def test_entry_must_do_exactly_one_thing(item):
    one_line_error([item], "entry 0 ('a') must set exactly one of target_class_id, create_new: true, skip: true")


@pytest.mark.parametrize("flags", [{"create_new": 1}, {"skip": "true"}, {"skip": None}, {"create_new": "yes"}])
def test_create_new_and_skip_must_be_booleans(flags):
    one_line_error([{"source_name": "a", **flags}], "entry 0 ('a'): create_new and skip must be true or false")


@pytest.mark.parametrize("color", ["C7FC00", "#C7FC0", "#C7FC000", "#GGGGGG", "red", "#c7fc00ff", 0xC7FC00, ""])
def test_bad_colour_is_rejected(color):
    one_line_error([{"source_name": "a", "create_new": True, "color": color}],
                   f"entry 0 ('a'): color {color!r} is not #RRGGBB")


def test_colour_with_trailing_newline_is_rejected():
    one_line_error([{"source_name": "a", "create_new": True, "color": "#C7FC00\n"}], "is not #RRGGBB")


def test_duplicate_source_names_are_rejected():
    one_line_error(
        [{"source_name": "helmet", "skip": True}, {"source_name": "vest", "skip": True},
         {"source_name": "helmet", "create_new": True}],
        "entry 2: 'helmet' appears twice",
    )


def test_error_names_the_entry_in_a_long_list():
    data = [{"source_name": f"c{i}", "skip": True} for i in range(30)]
    data[17] = {"source_name": "c17", "target_class_id": "nope"}
    one_line_error(data, "class mapping mapping.json entry 17 ('c17')")


# ---- load_class_mapping -----------------------------------------------------------------------


def test_load_class_mapping_reads_a_file(tmp_path):
    path = write(tmp_path, json.dumps([{"source_name": "helmet", "target_class_id": HELMET_ID}]))
    assert load_class_mapping(path) == [MappingEntry("helmet", HELMET_ID)]


def test_load_class_mapping_auto():
    assert load_class_mapping("auto") == AUTO


def test_load_class_mapping_without_option_says_how_to_fix():
    with pytest.raises(InputError, match="no --class_mapping given") as info:
        load_class_mapping(None)
    assert "\n" not in str(info.value) and "--class_mapping auto" in str(info.value)


def test_missing_file_is_rejected(tmp_path):
    path = str(tmp_path / "nope.json")
    with pytest.raises(InputError) as info:
        load_class_mapping(path)
    assert str(info.value) == f"class mapping file {path} not found; check --class_mapping"


def test_directory_is_not_a_mapping_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_class_mapping(str(tmp_path))


@pytest.mark.parametrize(
    "content",
    ["", "[{'source_name': 'a'}]", '[{"source_name": "a", "skip": true},]', "helmet: skip\n",
],
    ids=["empty", "single-quotes", "trailing-comma", "yaml"],
)
def test_file_that_is_not_json_is_rejected(tmp_path, content):
    path = write(tmp_path, content)
    with pytest.raises(InputError) as info:
        load_class_mapping(path)
    message = str(info.value)
    assert message.startswith(f"class mapping file {path} is not valid JSON (")
    assert message.endswith("; fix the file")
    assert "\n" not in message


def test_file_that_is_not_utf8_is_rejected(tmp_path):
    path = write(tmp_path, b"\xff\xfe[\x00]\x00")
    with pytest.raises(InputError) as info:
        load_class_mapping(path)
    assert str(info.value).startswith(f"class mapping file {path} is not UTF-8 text (")
    assert str(info.value).endswith("; save it as UTF-8") and "\n" not in str(info.value)


def test_file_with_malformed_entries_names_the_file(tmp_path):
    path = write(tmp_path, json.dumps({"helmet": HELMET_ID}))
    with pytest.raises(InputError, match=f"class mapping {path} must be a JSON list"):
        load_class_mapping(path)


# ---- resolve_mapping --------------------------------------------------------------------------


def test_resolve_mapping_plans_targets_creates_and_skips():
    mapping = [
        MappingEntry("helmet", target_class_id=HELMET_ID),
        MappingEntry("vest", target_class_id=VEST_ID),
        MappingEntry("head", create_new=True, color="#123456"),
        MappingEntry("person", create_new=True),
        MappingEntry("background", skip=True),
    ]
    resolved = resolve_mapping(
        mapping,
        {"helmet": {}, "vest": {}, "head": {}, "person": {}, "background": {}},
        {"head": "#FFFFFF", "person": "#ABCDEF"},
    )
    assert resolved == ResolvedMapping(
        class_ids={"helmet": HELMET_ID, "vest": VEST_ID, "background": None},
        to_create={"head": "#123456", "person": "#ABCDEF"},
        to_check={HELMET_ID, VEST_ID},
    )


def test_resolve_mapping_two_classes_onto_one_target_checks_it_once():
    mapping = [MappingEntry("helmet", HELMET_ID), MappingEntry("hard-hat", HELMET_ID)]
    resolved = resolve_mapping(mapping, {"helmet": 3, "hard-hat": 1}, {})
    assert resolved.class_ids == {"helmet": HELMET_ID, "hard-hat": HELMET_ID}
    assert resolved.to_check == {HELMET_ID}


def test_new_class_colour_falls_back_to_default_when_roboflow_colour_is_bad():
    resolved = resolve_mapping([MappingEntry("a", create_new=True), MappingEntry("b", create_new=True)],
                               {"a": 1, "b": 1}, {"a": "red"})
    assert resolved.to_create == {"a": DEFAULT_COLOR, "b": DEFAULT_COLOR}


def test_roboflow_class_without_an_entry_is_rejected():
    with pytest.raises(InputError) as info:
        resolve_mapping([MappingEntry("helmet", HELMET_ID)], {"helmet": 5, "vest": 2, "head": 1}, {})
    message = str(info.value)
    assert message.startswith("Roboflow classes with no class mapping entry: 'head', 'vest';")
    assert "--class_mapping auto" in message and "\n" not in message


def test_many_unmapped_classes_are_listed_briefly():
    classes = {f"class{i:02d}": 1 for i in range(25)}
    with pytest.raises(InputError) as info:
        resolve_mapping([], classes, {})
    message = str(info.value)
    assert "'class00'" in message and "'class09'" in message and "'class10'" not in message
    assert " ..." in message


def test_resolve_auto_creates_every_class_with_roboflow_colours():
    resolved = resolve_mapping(AUTO, {"helmet": 5, "vest": 2, "head": 1},
                               {"helmet": "#C7FC00", "vest": "not-a-colour"})
    assert resolved == ResolvedMapping(
        class_ids={}, to_create={"helmet": "#C7FC00", "vest": DEFAULT_COLOR, "head": DEFAULT_COLOR}, to_check=set()
    )


def test_resolve_auto_rejects_roboflow_colour_with_trailing_newline():
    resolved = resolve_mapping(AUTO, {"helmet": 1}, {"helmet": "#C7FC00\n"})
    assert resolved.to_create == {"helmet": DEFAULT_COLOR}


def test_resolve_auto_with_no_classes_is_empty():
    assert resolve_mapping(AUTO, {}, {}) == ResolvedMapping({}, {}, set())


# ---- YAML mapping files -----------------------------------------------------------------------

YAML_MAPPING = f"""\
# the platform's list, as YAML
- source_name: helmet
  target_class_id: {HELMET_ID}
- {{source_name: vest, create_new: true, color: "#C7FC00"}}
- source_name: background
  skip: true
"""


@pytest.mark.parametrize("name", ["mapping.yaml", "mapping.yml", "mapping.txt", "mapping"])
def test_yaml_file_reads_like_the_json_list(tmp_path, name):
    path = write(tmp_path, YAML_MAPPING, name)
    assert load_class_mapping(path) == [
        MappingEntry("helmet", HELMET_ID),
        MappingEntry("vest", None, True, False, "#C7FC00"),
        MappingEntry("background", None, False, True, None),
    ]


def test_json_content_without_json_extension_is_read_as_json(tmp_path):
    path = write(tmp_path, json.dumps([{"source_name": "helmet", "skip": True}]), "mapping.txt")
    assert load_class_mapping(path) == [MappingEntry("helmet", skip=True)]


def test_bad_yaml_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "- source_name: helmet\n  skip: true\n- {source_name: vest, skip: true\n",
                 "mapping.yaml")
    with pytest.raises(InputError) as info:
        load_class_mapping(path)
    message = str(info.value)
    assert message.startswith(f"class mapping file {path} is not valid YAML (line 4: ")
    assert message.endswith("; fix the file") and "\n" not in message


def test_yaml_that_is_not_a_list_says_yaml(tmp_path):
    path = write(tmp_path, "helmet: skip\n", "mapping.yml")
    with pytest.raises(InputError, match=f"class mapping {path} must be a YAML list of"):
        load_class_mapping(path)


def test_empty_yaml_file_is_not_a_list(tmp_path):
    path = write(tmp_path, "", "mapping.yaml")
    with pytest.raises(InputError, match="must be a YAML list"):
        load_class_mapping(path)


def test_unquoted_yaml_colour_is_a_comment_and_is_rejected(tmp_path):
    path = write(tmp_path, "- source_name: vest\n  create_new: true\n  color: #C7FC00\n", "mapping.yaml")
    with pytest.raises(InputError) as info:
        load_class_mapping(path)
    assert "entry 0 ('vest'): color is empty; in YAML quote it" in str(info.value)


def test_json_null_colour_stays_allowed():
    assert parse_entries([{"source_name": "a", "create_new": True, "color": None}], "f") == [
        MappingEntry("a", create_new=True)]


def test_yaml_entries_get_the_same_checks(tmp_path):
    path = write(tmp_path, "- {source_name: helmet, target_class_id: nope}\n", "mapping.yaml")
    with pytest.raises(InputError, match="entry 0 \\('helmet'\\): target_class_id 'nope' is not a UUID"):
        load_class_mapping(path)
