"""What each route answers, as plain Response objects; the HTTP plumbing lives in server.py.

Shapes follow /work/shared/reference/roboflow-api.md and the keys the roboflow SDK indexes.
"""

from __future__ import annotations

import base64
import bisect
import functools
import hashlib
import hmac
import json
import math
import os
import random
import shlex
import tempfile
import threading
from dataclasses import dataclass, field
from urllib.parse import quote

from .config import EXPORT_FORMATS, EmulatorConfig
from .dataset import Dataset, ImageRecord, index_from_created_ms, make_id, seeded_rng
from .exports import build_export
from .faults import FaultState
from .images import ImageFactory, sniff_content_type

JSON_TYPE = "application/json; charset=utf-8"
SEARCH_LIMIT_MAX = 250
SEARCH_DEFAULT_FIELDS = ("id", "created")
V1_UNDOCUMENTED_SUMMARY = ("annotations", "labels", "user_metadata")  # see EmulatorConfig.search_v1_summary
ROOT_HINT = "You can see your active workspace by issuing a GET request to / with your api_key"
DOCS_HINT = "You can find the API docs at https://docs.roboflow.com"


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    file_path: str | None = None
    file_size: int = 0

    @property
    def length(self) -> int:
        return self.file_size if self.file_path else len(self.body)


def json_response(status: int, payload: object, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(status, body, JSON_TYPE, dict(headers or {}))


def error_response(
    status: int,
    message: str,
    error_type: str,
    style: str,
    hint: str | None = None,
    include_status: bool = True,
    headers: dict[str, str] | None = None,
) -> Response:
    """Roboflow's two envelopes: ``{"error": "msg"}`` or ``{"error": {"message", "status", "type", ...}}``."""
    if style == "string":
        return json_response(status, {"error": message}, headers)
    error: dict[str, object] = {"message": message}
    if include_status:
        error["status"] = status
    error["type"] = error_type
    if hint:
        error["hint"] = hint
    return json_response(status, {"error": error}, headers)


def unauthorized(submitted_key: str | None) -> Response:
    """The real OAuthException body; it echoes the submitted key, which clients must redact."""
    error: dict[str, object] = {
        "message": "This API key does not exist (or has been revoked).",
        "status": 401,
        "type": "OAuthException",
        "hint": "You may retrieve your API key via the Roboflow Dashboard.",
    }
    if submitted_key is not None:
        error["key"] = submitted_key
    return json_response(401, {"error": error})


# Inferred bodies: the statuses and the 423 message are Roboflow's (roboflow-api.md §3); the 402/403 messages
# and every `type` are not documented anywhere we could read.
ACCOUNT_REFUSALS = {
    402: ("You have run out of credits. Add credits or upgrade your plan to continue.", "PaymentRequiredException"),
    423: ("Roboflow API usage is paused", "UsagePausedException"),
    403: ("You do not have permission to access this resource.", "ForbiddenException"),
}


def account_refusal(status: int) -> Response:
    """The account cannot use the API any more (credits, pause, access), whatever the request."""
    message, error_type = ACCOUNT_REFUSALS[status]
    return error_response(status, message, error_type, "object")


def html_response(status: int, html: str) -> Response:
    return Response(status, html.encode(), "text/html; charset=utf-8")


def express_not_found(method: str, path: str) -> Response:
    """Express's default answer for a path no route matches."""
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Error</title>\n</head>\n'
        f"<body>\n<pre>Cannot {method} {path}</pre>\n</body>\n</html>\n"
    )
    return html_response(404, page)


def gateway_error(status: int) -> Response:
    """502/503 come from the load balancer as HTML, not from the API as JSON."""
    reason = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}.get(status, "Server Error")
    page = (
        f"<html><head><title>{status} {reason}</title></head><body>\n"
        f"<h1>Error: Server Error</h1>\n<h2>The server encountered a temporary error and could not complete your "
        f"request.<p>Please try again in 30 seconds.</h2>\n</body></html>\n"
    )
    return html_response(status, page)


def storage_error(status: int, code: str, message: str) -> Response:
    """Cloud-storage style XML errors, as the CDN host answers."""
    xml = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    return Response(status, xml.encode(), "application/xml; charset=UTF-8")


class InvalidRequest(Exception):
    """A client error that the route answers with 400."""


class RoboflowApi:
    """Builds the answers of every emulated route from the dataset and the faults in force."""

    def __init__(self, config: EmulatorConfig, dataset: Dataset, images: ImageFactory):
        self.config = config
        self.dataset = dataset
        self.images = images
        self.cdn_url = ""
        self.export_dir: str | None = None
        self._exports: dict[tuple[int, str], ExportJob] = {}
        self._exports_by_id: dict[str, ExportJob] = {}
        self._exports_lock = threading.Lock()
        self._version_exports: dict[int, list[str]] = {}
        self._listed_cache: tuple[tuple[int, int], list[int]] | None = None
        self._signing_key = make_id(config.seed, "signing-key", length=32).encode()

    def _workspace_summary(self) -> dict:
        return {"name": self.config.workspace.replace("-", " ").title(), "url": self.config.workspace, "members": 3}

    def _project_object(self) -> dict:
        stats = self.dataset.stats()
        return {
            "id": f"{self.config.workspace}/{self.config.project}",
            "type": self.config.project_type,
            "name": self.dataset.project_name,
            "created": self.dataset.created,
            "updated": self.dataset.updated,
            "images": stats.images,
            "unannotated": stats.unannotated,
            "annotation": self.dataset.annotation_group,
            "versions": len(self.dataset.versions),
            "public": False,
            "splits": stats.splits,
            "colors": dict(self.dataset.colors),
            "classes": stats.classes,
            "multilabel": self.config.multilabel,
        }

    def _version_object(self, number: int) -> dict:
        version = self.dataset.versions[number - 1]
        stats = version.stats
        version_object = {
            "id": f"{self.config.workspace}/{self.config.project}/{number}",
            "name": version.name,
            "created": version.created,
            "images": stats.images,
            "splits": stats.splits,
            "classes": list(self.dataset.classes),
            "preprocessing": {"auto-orient": {"enabled": True}},
            "augmentation": {},
            "exports": list(self._version_exports.get(number, [])),
            "generating": False,
            "progress": 1,
        }
        if self.config.project_type == "keypoint-detection":
            version_object["skeletons"] = self.dataset.skeletons()
        return version_object

    def root(self) -> Response:
        return json_response(
            200,
            {
                "welcome": "Welcome to the Roboflow API.",
                "instructions": "You are successfully authenticated.",
                "docs": "https://docs.roboflow.com",
                "workspace": self.config.workspace,
            },
        )

    def workspace(self) -> Response:
        summary = self._workspace_summary()
        return json_response(200, {"workspace": {**summary, "projects": [self._project_object()]}})

    def project(self) -> Response:
        versions = [self._version_object(n) for n in range(len(self.dataset.versions), 0, -1)]
        payload = {"workspace": self._workspace_summary(), "project": self._project_object(), "versions": versions}
        return json_response(200, payload)

    def unknown_workspace(self, route: str, faults: FaultState) -> Response:
        style = faults.error_style(route, "object")
        return error_response(404, "Workspace not found.", "NotFoundException", style, ROOT_HINT)

    def unknown_project(self, route: str, faults: FaultState) -> Response:
        style = faults.error_style(route, "object")
        return error_response(404, "Project not found.", "NotFoundException", style, ROOT_HINT)

    def unknown_version(self, route: str, faults: FaultState) -> Response:
        """The live API answers an unknown version with 500, not 404."""
        style = faults.error_style(route, "object")
        if faults.config.unknown_version_status == 404:
            return error_response(404, "Version not found.", "NotFoundException", style, DOCS_HINT)
        return error_response(500, "Internal Server Error", "InternalServerError", style)

    def version(self, number: int, route: str, faults: FaultState) -> Response:
        if self.dataset.version(number) is None:
            return self.unknown_version(route, faults)
        payload = {
            "workspace": self._workspace_summary(),
            "project": self._project_object(),
            "version": self._version_object(number),
        }
        return json_response(200, payload)

    def export(self, number: int, export_format: str, route: str, faults: FaultState) -> Response:
        """202 with progress a few times, then 200 with a download link carrying a token, not the key."""
        version = self.dataset.version(number)
        if version is None:
            return self.unknown_version(route, faults)
        if export_format not in EXPORT_FORMATS:
            style = faults.error_style(route, "object")
            message = f"Unsupported export format: {export_format}"
            return error_response(400, message, "InvalidFormatException", style, DOCS_HINT)
        with self._exports_lock:
            job = self._exports.get((number, export_format))
            if job is None:
                export_id = make_id(self.config.seed, "export", number, export_format, length=10)
                token = make_id(self.config.seed, "download-token", number, export_format, length=10)
                job = ExportJob(export_id, token, number, export_format)
                self._exports[(number, export_format)] = job
                self._exports_by_id[export_id] = job
        if faults.config.stuck_export:
            return json_response(202, {"progress": 1.4815 if faults.config.export_progress_over_one else 0.9875})
        with job.lock:
            if job.polls < self.config.export_pending_polls:
                job.polls += 1
                progress = job.polls / (self.config.export_pending_polls + 1)
                if faults.config.export_progress_over_one:
                    progress = round(progress * 1.5, 4)
                return json_response(202, {"progress": round(progress, 4)})
            if job.path is None:
                if self.export_dir is None:
                    raise RuntimeError("exports need a started emulator")
                handle, path = tempfile.mkstemp(suffix=".zip", dir=self.export_dir)
                os.close(handle)
                job.size = build_export(
                    path,
                    export_format,
                    version,
                    self.dataset.classes,
                    self.dataset.annotation_group,
                    self.config.workspace,
                    self.config.project,
                    functools.partial(self.images.export_copy, size_ratio=self.config.export_size_ratio),
                )
                job.path = path
                formats = self._version_exports.setdefault(number, [])
                if export_format not in formats:
                    formats.append(export_format)
        payload = {
            "workspace": self._workspace_summary(),
            "project": self._project_object(),
            "version": self._version_object(number),
            "export": {"format": export_format, "link": f"{self.cdn_url}/ds/{job.export_id}?key={job.token}"},
        }
        return json_response(200, payload)

    def _listed(self, faults: FaultState) -> list[int]:
        """Live project images that listings show: all but the count-gap ones, in stable order."""
        live = self.dataset.live_indices()
        if not faults.hidden:
            return live
        key = (self.dataset.mutations, id(faults))
        cached = self._listed_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        listed = [i for i in live if i not in faults.hidden]
        self._listed_cache = (key, listed)
        return listed

    def search(self, body: object, route: str, faults: FaultState) -> Response:
        try:
            query = _SearchQuery.parse(body)
        except InvalidRequest as error:
            return error_response(400, str(error), "InvalidParameterException", faults.error_style(route, "object"))
        if not query.wants_images:
            return json_response(200, {"offset": query.offset, "total": 0, "results": []})
        listed = self._listed(faults)
        if query.has_filters:
            matching = [i for i in listed if query.matches(self.dataset, i)]
            hidden = sum(1 for i in faults.hidden if self.dataset.is_live(i) and query.matches(self.dataset, i))
        else:
            matching, hidden = listed, sum(1 for i in faults.hidden if self.dataset.is_live(i))
        total = len(matching) + hidden
        if query.ranking_text is not None:
            matching = sorted(matching, key=lambda i: _similarity_rank(query.ranking_text, self.dataset.id_of(i)))
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
        results = [self._search_result(self.dataset.record(i), query.fields) for i in page]
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
            return record.created_ms if self.config.search_created_unit == "ms" else record.created_ms // 1000
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
            return self.embedding(record)
        if name == "user_metadata":
            return dict(record.user_metadata)
        if name == "url":
            return self.original_url(record, undefined=False)
        return _MISSING

    def search_v1(self, body: object, route: str, faults: FaultState) -> Response:
        """Workspace search: RoboQL scoping, pageSize clamp and keyset continuation tokens."""
        try:
            query = _RoboQuery.parse(body, self.config.search_v1_max_page_size)
            query.resolve(self.config.project)
            after = self._decode_token(query.token, query.query_hash) if query.token else -1
        except InvalidRequest as error:
            return error_response(400, str(error), "InvalidParameterException", faults.error_style(route, "object"))
        if not query.wants_images:
            return json_response(200, {"results": [], "total": 0, "continuationToken": None})
        candidates = self._v1_candidates(query, faults)
        matching = [i for i in candidates if query.matches(self.dataset, i)] if query.has_filters else candidates
        hidden_in_scope = query.scope in ("project", "workspace")
        hidden = sum(1 for i in faults.hidden if self.dataset.is_live(i) and query.matches(self.dataset, i))
        total = len(matching) + (hidden if hidden_in_scope else 0)
        start = bisect.bisect_right(matching, after)
        page = matching[start : start + query.page_size]
        more = start + query.page_size < len(matching)
        token = self._encode_token(self.dataset.record(page[-1]), query.query_hash) if page and more else None
        results = [self._v1_result(self.dataset.record(i), query.fields) for i in page]
        return json_response(200, {"results": results, "total": total, "continuationToken": token})

    def _v1_candidates(self, query: _RoboQuery, faults: FaultState) -> list[int]:
        orphans = [i for i in self.dataset.orphan_indices() if self.dataset.is_live(i)]
        if query.scope == "orphans":
            return orphans
        if query.scope == "none":
            return []
        listed = self._listed(faults)
        return listed + orphans if query.scope == "workspace" else listed

    def _v1_result(self, record: ImageRecord, fields: list[str]) -> dict:
        project_data = {}
        if not record.orphan:
            project_data = {self.dataset.project_internal_id: {"split": record.split, "inDataset": True}}
        result: dict[str, object] = {"id": record.id, "projectData": project_data, "mediaType": "image"}
        for name in fields:
            if name == "projects":
                result[name] = [] if record.orphan else [self.dataset.project_internal_id]
            elif name == "split":
                result[name] = None if record.orphan else record.split
            elif name in V1_UNDOCUMENTED_SUMMARY and not self.config.search_v1_summary:
                continue
            else:
                value = self._search_field(record, name)
                if value is not _MISSING:
                    result[name] = value
        return result

    def _encode_token(self, record: ImageRecord, query_hash: str) -> str:
        raw = json.dumps({"v": 1, "after": [record.created_ms, record.id], "q": query_hash}).encode()
        signature = hmac.new(self._signing_key, raw, hashlib.sha256).digest()[:8]
        return base64.urlsafe_b64encode(signature + raw).decode().rstrip("=")

    def _decode_token(self, token: object, query_hash: str) -> int:
        """The listing position just after the token's (created, id) key, even if that image is gone."""
        try:
            if not isinstance(token, str):
                raise ValueError
            blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            signature, raw = blob[:8], blob[8:]
            if not hmac.compare_digest(signature, hmac.new(self._signing_key, raw, hashlib.sha256).digest()[:8]):
                raise ValueError
            decoded = json.loads(raw)
            created_ms, image_id = decoded["after"]
            if decoded["q"] != query_hash:
                raise InvalidRequest("continuationToken does not belong to this query")
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidRequest("Invalid continuationToken") from error
        index = self.dataset.index_of(image_id)
        return index if index is not None else index_from_created_ms(created_ms)

    def image_details(self, image_id: str, route: str, faults: FaultState) -> Response:
        index = self.dataset.index_of(image_id)
        missing = (
            index is None
            or not self.dataset.is_project_image(index)
            or not self.dataset.is_live(index)
            or index in faults.deleted_after_listing
        )
        if missing:
            return error_response(404, "Image not found.", "NotFoundException", faults.error_style(route, "string"))
        if faults.take_pending_404(index):
            return error_response(
                404,
                "Image not found in dataset.",
                "InvalidParameterException",
                faults.error_style(route, "object"),
                hint="The image ID is returned by the upload API.",
                include_status=False,
            )
        record = self.dataset.record(index)
        image: dict[str, object] = {"id": record.id, "name": record.name}
        if record.annotated:
            image["annotation"] = {
                "key": self.dataset.annotation_group,
                "width": record.width,
                "height": record.height,
                "boxes": [dict(box) for box in record.boxes],
            }
        labels: object = list(record.labels)
        if self.config.labels_shape == "string" and len(record.labels) == 1:
            labels = record.labels[0]  # an inferred variant of the documented list
        image.update(
            {
                "labels": labels,
                "split": record.split,
                "tags": list(record.tags),
                "created": record.created,
                "urls": {
                    "original": self.original_url(record, undefined=faults.has_undefined_url(record.id)),
                    "thumb": f"{self.cdn_url}/{record.owner}/{record.id}/thumb.jpg",
                    "annotation": self.annotation_url(record),
                },
                "embedding": self.embedding(record),
            }
        )
        if record.user_metadata:  # INFERRED: named like the search field `user_metadata`; details do not document it
            image["user_metadata"] = dict(record.user_metadata)
        if self.config.details_include_owner:
            image["owner"] = record.owner
        return json_response(200, {"image": image})

    def original_url(self, record: ImageRecord, undefined: bool) -> str:
        return f"{self.cdn_url}/{record.owner}/{'undefined' if undefined else record.id}/original.jpg"

    def annotation_url(self, record: ImageRecord) -> str:
        return f"{self.cdn_url}/{record.owner}/{record.id}/annotation-{quote(self.dataset.annotation_group)}.json"

    def embedding(self, record: ImageRecord) -> list[float]:
        rng = seeded_rng(self.config.seed, "embedding", record.id)
        vector = [rng.gauss(0.0, 1.0) for _ in range(self.config.embedding_dim)]
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [round(v / norm, 6) for v in vector]

    def cdn_record(self, owner: str, image_id: str, faults: FaultState) -> ImageRecord | None:
        """The record behind a CDN path, or None when storage has no such object."""
        index = self.dataset.index_of(image_id)
        if owner != self.dataset.owner or index is None or not self.dataset.is_live(index):
            return None
        if index in faults.deleted_after_listing:
            return None
        return self.dataset.record(index)

    def cdn_original(self, owner: str, image_id: str, faults: FaultState) -> Response:
        record = self.cdn_record(owner, image_id, faults)
        if record is None:
            return storage_error(404, "NoSuchKey", "The specified key does not exist.")
        if record.index in faults.undecodable:
            data = self.images.undecodable(record)
        else:
            data = self.images.original(record)
        return Response(200, data, sniff_content_type(data), {"Cache-Control": "public, max-age=31536000"})

    def cdn_thumb(self, owner: str, image_id: str, faults: FaultState) -> Response:
        record = self.cdn_record(owner, image_id, faults)
        if record is None:
            return storage_error(404, "NoSuchKey", "The specified key does not exist.")
        data = self.images.thumbnail(record)
        return Response(200, data, sniff_content_type(data), {"Cache-Control": "public, max-age=31536000"})

    def cdn_annotation(self, owner: str, image_id: str, faults: FaultState) -> Response:
        record = self.cdn_record(owner, image_id, faults)
        if record is None or not record.annotated:
            return storage_error(404, "NoSuchKey", "The specified key does not exist.")
        annotation = {"key": self.dataset.annotation_group, "width": record.width, "height": record.height}
        return json_response(200, {**annotation, "boxes": [dict(box) for box in record.boxes]})

    def zip_link(self, export_id: str, token: str | None) -> Response:
        """The export link redirects to a signed storage URL, like app.roboflow.com/ds/... does."""
        job = self._exports_by_id.get(export_id)
        if job is None or job.path is None or token is None or not hmac.compare_digest(token, job.token):
            return storage_error(403, "AccessDenied", "Access denied.")
        location = f"{self.cdn_url}/exports/{export_id}/roboflow.zip?X-Signature={self._zip_signature(export_id)}"
        return Response(302, b"", "text/plain; charset=utf-8", {"Location": location})

    def zip_file(self, export_id: str, signature: str | None) -> Response:
        job = self._exports_by_id.get(export_id)
        valid = signature is not None and hmac.compare_digest(signature, self._zip_signature(export_id))
        if job is None or job.path is None or not valid:
            return storage_error(403, "AccessDenied", "Access denied.")
        return Response(200, b"", "application/zip", {}, file_path=job.path, file_size=job.size)

    def _zip_signature(self, export_id: str) -> str:
        return hmac.new(self._signing_key, export_id.encode(), hashlib.sha256).hexdigest()[:32]


@dataclass
class ExportJob:
    export_id: str
    token: str
    version: int
    export_format: str
    polls: int = 0
    path: str | None = None
    size: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


_MISSING = object()


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
class _SearchQuery:
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
    def parse(cls, body: object) -> _SearchQuery:
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
class _RoboQuery:
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
    def parse(cls, body: object, max_page_size: int) -> _RoboQuery:
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
