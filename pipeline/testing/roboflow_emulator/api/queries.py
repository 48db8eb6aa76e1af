"""What a search request says: the body of `POST /{ws}/{project}/search` and the RoboQL of `/search/v1`.

Parsing only; a body the emulator cannot read raises InvalidRequest, which the handler answers with 400.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass

from ..dataset import Dataset
from .wire import InvalidRequest

SEARCH_LIMIT_MAX = 250
SEARCH_DEFAULT_FIELDS = ("id", "created")


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidRequest(f"{name} must be a number")
    try:
        return int(value)
    except ValueError as error:
        raise InvalidRequest(f"{name} must be a number") from error


def _wants_images(body: dict) -> bool:
    media_types = body.get("mediaTypes")
    if media_types is None:
        return True
    if not isinstance(media_types, list):
        raise InvalidRequest("mediaTypes must be a list")
    return "image" in media_types


@dataclass
class SearchQuery:
    offset: int
    limit: int
    fields: list[str]
    tag: str | None
    split: str | None
    class_name: str | None
    in_dataset: object
    batch_id: str | None
    ranking_text: str | None
    wants_images: bool

    @classmethod
    def parse(cls, body: object) -> SearchQuery:
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise InvalidRequest("Request body must be a JSON object")
        fields = body.get("fields") or list(SEARCH_DEFAULT_FIELDS)
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise InvalidRequest("fields must be a list of strings")
        offset = max(0, _as_int(body.get("offset", 0), "offset"))
        limit = min(SEARCH_LIMIT_MAX, max(0, _as_int(body.get("limit", 50), "limit")))
        ranking = body.get("prompt") or body.get("like_image")
        return cls(
            offset=offset,
            limit=limit,
            fields=fields,
            tag=_optional_str(body, "tag"),
            split=_optional_str(body, "split"),
            class_name=_optional_str(body, "class_name"),
            in_dataset=body.get("in_dataset"),
            batch_id=_optional_str(body, "batch_id"),
            ranking_text=str(ranking) if ranking else None,
            wants_images=_wants_images(body),
        )

    @property
    def has_filters(self) -> bool:
        return bool(self.tag or self.split or self.class_name or self.batch_id or _is_false(self.in_dataset))

    def matches(self, dataset: Dataset, index: int) -> bool:
        if _is_false(self.in_dataset):
            return False
        facets = dataset.facets(index)
        if self.tag and self.tag not in facets.tags:
            return False
        if self.split and self.split != facets.split:
            return False
        if self.class_name and self.class_name not in (facets.box_labels or facets.image_labels):
            return False
        return not (self.batch_id and dataset.record(index).batch_id != self.batch_id)


def _is_false(value: object) -> bool:
    return value is False or (isinstance(value, str) and value.lower() == "false")


def _optional_str(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    return str(value)


def _scope_of(projects: list[str]) -> str:
    """No project: term searches the whole workspace; ``project:false`` means images in no project."""
    unique = set(projects)
    if not unique:
        return "workspace"
    if unique == {"false"}:
        return "orphans"
    return "project" if len(unique) == 1 else "none"


@dataclass
class RoboQuery:
    """The RoboQL subset the emulator understands: *, project:/dataset:, tag:, split:, class:, filename:."""

    scope: str
    terms: list[tuple[bool, str, str]]
    page_size: int
    fields: list[str]
    token: object
    query_hash: str
    wants_images: bool
    project_slug: str | None = None

    @classmethod
    def parse(cls, body: object, max_page_size: int) -> RoboQuery:
        if not isinstance(body, dict):
            raise InvalidRequest("Request body must be a JSON object")
        text = body.get("query")
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequest("query is required")
        fields = body.get("fields") or []
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise InvalidRequest("fields must be a list of strings")
        page_size = min(max_page_size, max(1, _as_int(body.get("pageSize", 50), "pageSize")))
        try:
            tokens = shlex.split(text)
        except ValueError as error:
            raise InvalidRequest(f"Could not parse query: {error}") from error
        projects: list[str] = []
        terms: list[tuple[bool, str, str]] = []
        for token in tokens:
            if token == "*" or token == "AND":
                continue
            negated = token.startswith("-")
            key, colon, value = token.lstrip("-").partition(":")
            key = key.lower()
            if not colon or key not in ("project", "dataset", "tag", "split", "class", "filename") or not value:
                raise InvalidRequest(f"Unsupported query term: {token!r}")
            if key in ("project", "dataset"):
                if negated:
                    raise InvalidRequest(f"Unsupported query term: {token!r}")
                projects.append(value)
            else:
                terms.append((negated, key, value))
        return cls(
            scope=_scope_of(projects),
            terms=terms,
            page_size=page_size,
            fields=fields,
            token=body.get("continuationToken"),
            query_hash=hashlib.sha256(text.encode()).hexdigest()[:16],
            wants_images=_wants_images(body),
            project_slug=projects[0] if projects else None,
        )

    def resolve(self, project_slug: str) -> None:
        """Scope to nothing when the query names a project other than the emulated one."""
        if self.scope == "project" and self.project_slug != project_slug:
            self.scope = "none"

    @property
    def has_filters(self) -> bool:
        return bool(self.terms)

    def matches(self, dataset: Dataset, index: int) -> bool:
        facets = dataset.facets(index)
        for negated, key, value in self.terms:
            if key == "tag":
                hit = value in facets.tags
            elif key == "split":
                hit = dataset.is_project_image(index) and facets.split == value
            elif key == "class":
                hit = value in (facets.box_labels or facets.image_labels)
            else:
                hit = value.lower() in dataset.record(index).name.lower()
            if hit == negated:
                return False
        return True
