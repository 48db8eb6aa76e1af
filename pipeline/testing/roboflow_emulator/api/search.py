"""Image listings: `POST /{ws}/{project}/search` (offset pages) and `POST /{ws}/search/v1` (RoboQL, keyset tokens).

Both show the live project images minus the count-gap ones (their `total` still counts those), in a stable
order unless the unstable-order fault shuffles a neighbourhood per request (#418).
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import json
import random

from ..dataset import ImageRecord, index_from_created_ms
from ..faults import FaultState
from .context import ApiContext
from .queries import RoboQuery, SearchQuery
from .wire import InvalidRequest, Response, invalid_parameter, json_response

V1_UNDOCUMENTED_SUMMARY = ("annotations", "labels", "user_metadata")  # see EmulatorConfig.search_v1_summary
_MISSING = object()


class SearchHandlers:
    """Both search routes over one listing (cached per dataset mutation and fault set)."""

    def __init__(self, context: ApiContext):
        self.context = context
        self._listed_cache: tuple[tuple[int, int], list[int]] | None = None

    def _listed(self, faults: FaultState) -> list[int]:
        """Live project images that listings show: all but the count-gap ones, in stable order."""
        dataset = self.context.dataset
        live = dataset.live_indices()
        if not faults.hidden:
            return live
        key = (dataset.mutations, id(faults))
        cached = self._listed_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        listed = [i for i in live if i not in faults.hidden]
        self._listed_cache = (key, listed)
        return listed

    # --- /search -------------------------------------------------------------------------------

    def search(self, body: object, route: str, faults: FaultState) -> Response:
        dataset = self.context.dataset
        try:
            query = SearchQuery.parse(body)
        except InvalidRequest as error:
            return invalid_parameter(str(error), faults.error_style(route, "object"))
        if not query.wants_images:
            return json_response(200, {"offset": query.offset, "total": 0, "results": []})
        listed = self._listed(faults)
        if query.has_filters:
            matching = [i for i in listed if query.matches(dataset, i)]
            hidden = sum(1 for i in faults.hidden if dataset.is_live(i) and query.matches(dataset, i))
        else:
            matching, hidden = listed, sum(1 for i in faults.hidden if dataset.is_live(i))
        total = len(matching) + hidden
        if query.ranking_text is not None:
            matching = sorted(matching, key=lambda i: _similarity_rank(query.ranking_text, dataset.id_of(i)))
        start, stop = query.offset, query.offset + query.limit
        cap = faults.config.offset_cap
        if cap is not None:
            stop = min(stop, cap)
        if start >= stop:
            page: list[int] = []
        elif faults.fires("unstable_order", route):
            page = _perturbed_page(matching, start, stop, faults.config.unstable_order_window, faults)
        else:
            page = matching[start:stop]
        results = [self._search_result(dataset.record(i), query.fields) for i in page]
        return json_response(200, {"offset": query.offset, "total": total, "results": results})

    def _search_result(self, record: ImageRecord, fields: list[str]) -> dict:
        result: dict[str, object] = {}
        for name in fields:
            value = self._search_field(record, name)
            if value is not _MISSING:
                result[name] = value
        result["mediaType"] = "image"
        return result

    def _search_field(self, record: ImageRecord, name: str) -> object:
        if name == "id":
            return record.id
        if name in ("name", "filename"):
            return record.name
        if name == "created":
            return record.created_ms if self.context.config.search_created_unit == "ms" else record.created_ms // 1000
        if name == "annotations":
            return {"count": record.annotation_count, "classes": record.annotation_classes}
        if name == "labels":
            return list(record.labels)
        if name == "split":
            return record.split
        if name == "tags":
            return list(record.tags)
        if name == "owner":
            return record.owner
        if name == "width":
            return record.width
        if name == "height":
            return record.height
        if name == "aspectRatio":
            return round(record.width / record.height, 4)
        if name == "embedding":
            return self.context.embedding(record)
        if name == "user_metadata":
            return dict(record.user_metadata)
        if name == "url":
            return self.context.original_url(record, undefined=False)
        return _MISSING

    # --- /search/v1 ----------------------------------------------------------------------------

    def search_v1(self, body: object, route: str, faults: FaultState) -> Response:
        """Workspace search: RoboQL scoping, pageSize clamp and keyset continuation tokens."""
        config, dataset = self.context.config, self.context.dataset
        try:
            query = RoboQuery.parse(body, config.search_v1_max_page_size)
            query.resolve(config.project)
            after = self._decode_token(query.token, query.query_hash) if query.token else -1
        except InvalidRequest as error:
            return invalid_parameter(str(error), faults.error_style(route, "object"))
        if not query.wants_images:
            return json_response(200, {"results": [], "total": 0, "continuationToken": None})
        candidates = self._v1_candidates(query, faults)
        matching = [i for i in candidates if query.matches(dataset, i)] if query.has_filters else candidates
        hidden_in_scope = query.scope in ("project", "workspace")
        hidden = sum(1 for i in faults.hidden if dataset.is_live(i) and query.matches(dataset, i))
        total = len(matching) + (hidden if hidden_in_scope else 0)
        start = bisect.bisect_right(matching, after)
        page = matching[start : start + query.page_size]
        more = start + query.page_size < len(matching)
        token = self._encode_token(dataset.record(page[-1]), query.query_hash) if page and more else None
        results = [self._v1_result(dataset.record(i), query.fields) for i in page]
        return json_response(200, {"results": results, "total": total, "continuationToken": token})

    def _v1_candidates(self, query: RoboQuery, faults: FaultState) -> list[int]:
        dataset = self.context.dataset
        orphans = [i for i in dataset.orphan_indices() if dataset.is_live(i)]
        if query.scope == "orphans":
            return orphans
        if query.scope == "none":
            return []
        listed = self._listed(faults)
        return listed + orphans if query.scope == "workspace" else listed

    def _v1_result(self, record: ImageRecord, fields: list[str]) -> dict:
        project_id = self.context.dataset.project_internal_id
        project_data = {}
        if not record.orphan:
            project_data = {project_id: {"split": record.split, "inDataset": True}}
        result: dict[str, object] = {"id": record.id, "projectData": project_data, "mediaType": "image"}
        for name in fields:
            if name == "projects":
                result[name] = [] if record.orphan else [project_id]
            elif name == "split":
                result[name] = None if record.orphan else record.split
            elif name in V1_UNDOCUMENTED_SUMMARY and not self.context.config.search_v1_summary:
                continue
            else:
                value = self._search_field(record, name)
                if value is not _MISSING:
                    result[name] = value
        return result

    def _encode_token(self, record: ImageRecord, query_hash: str) -> str:
        raw = json.dumps({"v": 1, "after": [record.created_ms, record.id], "q": query_hash}).encode()
        signature = hmac.new(self.context.signing_key, raw, hashlib.sha256).digest()[:8]
        return base64.urlsafe_b64encode(signature + raw).decode().rstrip("=")

    def _decode_token(self, token: object, query_hash: str) -> int:
        """The listing position just after the token's (created, id) key, even if that image is gone."""
        signing_key = self.context.signing_key
        try:
            if not isinstance(token, str):
                raise ValueError
            blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            signature, raw = blob[:8], blob[8:]
            if not hmac.compare_digest(signature, hmac.new(signing_key, raw, hashlib.sha256).digest()[:8]):
                raise ValueError
            decoded = json.loads(raw)
            created_ms, image_id = decoded["after"]
            if decoded["q"] != query_hash:
                raise InvalidRequest("continuationToken does not belong to this query")
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidRequest("Invalid continuationToken") from error
        index = self.context.dataset.index_of(image_id)
        return index if index is not None else index_from_created_ms(created_ms)


def _similarity_rank(text: str, image_id: str) -> bytes:
    return hashlib.blake2b(f"{text}\x1f{image_id}".encode(), digest_size=8).digest()


def _perturbed_page(order: list[int], start: int, stop: int, window: int, faults: FaultState) -> list[int]:
    """A page cut from a per-request shuffled neighbourhood, so pages overlap and leave gaps (#418)."""
    rng: random.Random = faults.rng_for_request()
    low = max(0, start - window)
    high = min(len(order), stop + window)
    region = order[low:high]
    jittered = sorted(range(len(region)), key=lambda k: k + rng.uniform(-window, window))
    return [region[k] for k in jittered[start - low : stop - low]]
