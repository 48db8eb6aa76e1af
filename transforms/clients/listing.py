"""What to list of a Roboflow project and how to page through it, without Beam.

The listing step (transforms/list_images.py), ``--plan`` and preflight share these: a
:class:`Selection` (the filters), a :class:`ListingSpec` (mode, page size, filters as RoboQL or body
keys), :func:`fetch_page` for one page either way, :func:`iter_pages` for a plain loop over them, and
:func:`listed_images` for a page's images with the fingerprints of their listing summaries.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

from transforms.clients.roboflow import RoboflowClient, SearchPage
from transforms.core.listing_summary import summary_fingerprint, summary_split
from transforms.core.records import ImportContext, ListedImage

PAGE_SIZE = 250
SPLITS = ("train", "valid", "test")  # Roboflow's names; the platform writes valid as val


@dataclasses.dataclass(frozen=True)
class Selection:
    """The images a run is restricted to; empty means the whole project."""

    split: str | None = None
    tag: str | None = None
    class_name: str | None = None
    query: str | None = None  # raw RoboQL, token listing only

    def active(self) -> bool:
        return any((self.split, self.tag, self.class_name, self.query))

    def describe(self) -> str:
        parts = [f"--{name} {value!r}" for name, value in dataclasses.asdict(self).items() if value]
        return " ".join(parts) or "none (whole project)"


def _roboql_value(value: str) -> str:
    """A RoboQL term value, double-quoted when it holds blanks, quotes, colons or backslashes."""
    if value and not any(c.isspace() or c in "\"':\\" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def selection_query(selection: Selection) -> str:
    """The RoboQL after ``project:<slug>``: one term per filter (implicit AND), ``*`` when none."""
    terms = [f"{key}:{_roboql_value(value)}" for key, value in
             (("split", selection.split), ("tag", selection.tag), ("class", selection.class_name)) if value]
    if selection.query:
        terms.append(selection.query.strip())
    return " ".join(terms) or "*"


def selection_body(selection: Selection) -> tuple[tuple[str, Any], ...]:
    """Project-search body keys for the offset listing (RoboQL ``query`` is not accepted there)."""
    return tuple((key, value) for key, value in
                 (("split", selection.split), ("tag", selection.tag), ("class_name", selection.class_name)) if value)


@dataclasses.dataclass(frozen=True)
class ListingSpec:
    workspace: str
    project: str
    total: int  # what Roboflow reported for this listing, used to size the page range
    mode: str = "token"
    page_size: int = PAGE_SIZE
    filters: tuple[tuple[str, Any], ...] = ()  # project-search body filters (offset mode)
    query: str = ""  # RoboQL after ``project:<slug>`` (token mode)
    pages_per_split: int = 1

    def page_count(self) -> int:
        if self.mode == "token":
            return 1
        # One page more than ``total`` suggests, so a project that grew since the count is still read.
        return max(1, math.ceil(self.total / self.page_size) + 1)

    def roboql(self) -> str:
        return f"project:{self.project} {self.query or '*'}".strip()


def fetch_page(client: RoboflowClient, spec: ListingSpec, *, page: int = 0, token: str | None = None) -> SearchPage:
    """One listing page: offset page ``page``, or the token walk's page after ``token``."""
    if spec.mode == "token":
        return client.search_v1_page(spec.workspace, spec.roboql(), page_size=spec.page_size, token=token)
    return client.search_page(spec.workspace, spec.project, offset=page * spec.page_size, limit=spec.page_size,
                              filters=dict(spec.filters))


def iter_pages(client: RoboflowClient, spec: ListingSpec) -> Iterator[SearchPage]:
    """Every page of the listing, in order, in this thread (``--plan``; errors propagate)."""
    if spec.mode == "token":
        token = None
        while True:
            result = fetch_page(client, spec, token=token)
            yield result
            if not result.ids or not result.continuation_token:
                return
            token = result.continuation_token
    for page in range(spec.page_count()):
        result = fetch_page(client, spec, page=page)
        yield result
        if len(result.ids) < spec.page_size:
            return


def listed_images(page: SearchPage, context: ImportContext | None) -> Iterator[ListedImage]:
    """The page's images with their summary fingerprints (None without a context: ids only)."""
    if not page.results:
        yield from (ListedImage(image_id) for image_id in page.ids)
        return
    for result in page.results:
        yield ListedImage(str(result["id"]), summary_fingerprint(result, context), summary_split(result))


def agreed(listed: list[ListedImage]) -> ListedImage:
    """One image listed several times: its fingerprint only if every listing that had one agrees on it
    (the workspace search of the completing walk may have none: that is no news, not a change)."""
    known = {item.fingerprint for item in listed if item.fingerprint}
    split = next((item.split for item in listed if item.split), None)
    return ListedImage(listed[0].image_id, known.pop() if len(known) == 1 else None, split)
