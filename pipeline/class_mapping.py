"""The ``--class_mapping`` file: how Roboflow class names become ``od_classes`` rows.

The platform's import request already sends this list, so the file keeps its shape, as JSON::

    [{"source_name": "helmet", "target_class_id": "<uuid or null>", "create_new": false,
      "skip": false, "color": "#C7FC00"}]

or as YAML (``.yaml``/``.yml``, or any file not starting with ``[`` or ``{``)::

    - {source_name: helmet, target_class_id: 3f2504e0-4f89-41d3-9a0c-0305e82c3301}
    - {source_name: vest, create_new: true, color: "#C7FC00"}   # quoted: YAML's # starts a comment
    - {source_name: background, skip: true}

Each entry does exactly one thing: map to an existing class, create a dataset-scoped class, or
skip. ``auto`` maps every Roboflow class to a dataset class of the same name, created with
Roboflow's colour when absent. From Python (pipeline/api.py) the option takes the list of
entries itself, no file. Every Roboflow class needs an entry: an unmapped class is an input
error before anything is written, not annotations silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import InputError

AUTO = "auto"
_COLOR = re.compile(r"^#[0-9A-Fa-f]{6}$")
DEFAULT_COLOR = "#3B82F6"


@dataclasses.dataclass(frozen=True)
class MappingEntry:
    source_name: str
    target_class_id: str | None = None
    create_new: bool = False
    skip: bool = False
    color: str | None = None


def parse_entries(data: Any, origin: str, fmt: str = "JSON") -> list[MappingEntry]:
    if not isinstance(data, list):
        raise InputError(f"class mapping {origin} must be a {fmt} list of "
                         "{source_name, target_class_id, create_new, skip, color} objects")
    entries: dict[str, MappingEntry] = {}
    for i, item in enumerate(data):
        where = f"class mapping {origin} entry {i}"
        if not isinstance(item, dict):
            raise InputError(f"{where} is not an object; expected {{source_name, target_class_id, ...}}")
        unknown = set(item) - {f.name for f in dataclasses.fields(MappingEntry)}
        if unknown:
            raise InputError(f"{where} has unknown keys {sorted(unknown)}; allowed: source_name, "
                             "target_class_id, create_new, skip, color")
        name = item.get("source_name")
        if not isinstance(name, str) or not name:
            raise InputError(f"{where} needs a non-empty string source_name")
        target = item.get("target_class_id")
        if target is not None:
            try:
                target = str(uuid.UUID(str(target)))
            except ValueError:
                raise InputError(f"{where} ({name!r}): target_class_id {target!r} is not a UUID") from None
        create_new, skip = item.get("create_new", False), item.get("skip", False)
        if not isinstance(create_new, bool) or not isinstance(skip, bool):
            raise InputError(f"{where} ({name!r}): create_new and skip must be true or false")
        if (target is not None) + create_new + skip != 1:
            raise InputError(f"{where} ({name!r}) must set exactly one of target_class_id, "
                             "create_new: true, skip: true")
        color = item.get("color")
        if fmt == "YAML" and "color" in item and color is None:
            raise InputError(f"{where} ({name!r}): color is empty; in YAML quote it, e.g. color: \"#C7FC00\" "
                             "(an unquoted # starts a comment)")
        if color is not None and (not isinstance(color, str) or not _COLOR.fullmatch(color)):
            raise InputError(f"{where} ({name!r}): color {color!r} is not #RRGGBB")
        if name in entries:
            raise InputError(f"{where}: {name!r} appears twice; keep one entry per Roboflow class")
        entries[name] = MappingEntry(name, target, create_new, skip, color)
    return list(entries.values())


def mapping_format(path: str, text: str) -> str:
    """YAML for ``.yaml``/``.yml``; JSON for ``.json``; otherwise JSON when the text opens a list or object."""
    suffix = Path(path).suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "YAML"
    if suffix == ".json" or text.lstrip()[:1] in ("[", "{"):
        return "JSON"
    return "YAML"


def _parse_yaml(text: str, path: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InputError(f"class mapping file {path} is not valid YAML ({where}{problem}); fix the file") from None


def load_class_mapping(path: str | list[Any] | None) -> list[MappingEntry] | str:
    """The mapping entries from a JSON or YAML file, ``"auto"``, or the entries themselves (from Python:
    the API's request), checked by the same :func:`parse_entries` as a file's."""
    if path is None:
        raise InputError("no --class_mapping given; pass a JSON or YAML mapping file or --class_mapping auto")
    if path == AUTO:
        return AUTO
    if not isinstance(path, str):
        return parse_entries(path, "in the request")
    file = Path(path)
    if not file.is_file():
        raise InputError(f"class mapping file {path} not found; check --class_mapping")
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"class mapping file {path} cannot be read ({exc.strerror or exc}); check its "
                         "permissions and --class_mapping") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"class mapping file {path} is not UTF-8 text ({exc}); save it as UTF-8") from None
    fmt = mapping_format(path, text)
    if fmt == "YAML":
        return parse_entries(_parse_yaml(text, path), path, fmt)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"class mapping file {path} is not valid JSON ({exc}); fix the file") from None
    return parse_entries(data, path, fmt)


@dataclasses.dataclass(frozen=True)
class ResolvedMapping:
    """Mapped ids, classes to create, and ids that must exist, for the project's classes."""

    class_ids: dict[str, str | None]  # known now: existing targets and skips
    to_create: dict[str, str]  # name -> colour, dataset-scoped classes to create (or reuse)
    to_check: set[str]  # target ids that must exist in od_classes


def resolve_mapping(mapping: list[MappingEntry] | str, roboflow_classes: dict[str, Any],
                    roboflow_colors: dict[str, str]) -> ResolvedMapping:
    """Check the mapping covers every Roboflow class; plan what to create."""
    def color_of(name: str, entry_color: str | None = None) -> str:
        color = entry_color or roboflow_colors.get(name) or DEFAULT_COLOR
        return color if _COLOR.fullmatch(color) else DEFAULT_COLOR

    if mapping == AUTO:
        return ResolvedMapping({}, {name: color_of(name) for name in roboflow_classes}, set())
    by_name = {e.source_name: e for e in mapping}
    missing = sorted(set(roboflow_classes) - set(by_name))
    if missing:
        shown = ", ".join(repr(m) for m in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise InputError(f"Roboflow classes with no class mapping entry: {shown}; add an entry for each "
                         "(target_class_id, create_new or skip) or use --class_mapping auto")
    class_ids: dict[str, str | None] = {}
    to_create: dict[str, str] = {}
    for entry in mapping:
        if entry.skip:
            class_ids[entry.source_name] = None
        elif entry.create_new:
            to_create[entry.source_name] = color_of(entry.source_name, entry.color)
        else:
            class_ids[entry.source_name] = entry.target_class_id
    return ResolvedMapping(class_ids, to_create, {i for i in class_ids.values() if i})
