"""Which handler answers which URL, on the API host and on the CDN host.

A path is matched to a route name first (the counters and the faults are keyed by it), then the route is
answered; the workspace and project slugs are checked in Roboflow's order (workspace before project).
"""

from __future__ import annotations

from urllib.parse import unquote

from ..config import EmulatorConfig
from ..dataset import Dataset, make_id
from ..faults import FaultState
from ..images import ImageFactory
from .cdn import CdnFiles
from .context import ApiContext
from .export_jobs import ExportJobs
from .image_details import ImageDetails
from .projects import ProjectHandlers
from .search import SearchHandlers
from .wire import Response, express_not_found, no_such_key


def match_api_route(method: str, path: str) -> tuple[str, dict[str, str]]:
    parts = [unquote(part) for part in path.strip("/").split("/")] if path.strip("/") else []
    count = len(parts)
    if count == 0 and method in ("GET", "POST", "HEAD"):
        return "root", {}
    if count == 1 and method in ("GET", "HEAD"):
        return "workspace", {"workspace": parts[0]}
    if count == 2 and method in ("GET", "HEAD"):
        return "project", {"workspace": parts[0], "project": parts[1]}
    if count == 3 and method == "POST" and parts[1:] == ["search", "v1"]:
        return "search_v1", {"workspace": parts[0]}
    if count == 3 and method == "POST" and parts[2] == "search":
        return "search", {"workspace": parts[0], "project": parts[1]}
    if count == 3 and method in ("GET", "HEAD"):
        return "version", {"workspace": parts[0], "project": parts[1], "version": parts[2]}
    if count == 4 and method in ("GET", "HEAD") and parts[2] == "images":
        return "image_details", {"workspace": parts[0], "project": parts[1], "image_id": parts[3]}
    if count == 4 and method in ("GET", "HEAD"):
        return "export", {"workspace": parts[0], "project": parts[1], "version": parts[2], "format": parts[3]}
    return "unknown_route", {}


def match_cdn_route(method: str, path: str) -> tuple[str, dict[str, str]]:
    parts = [unquote(part) for part in path.strip("/").split("/")]
    if method not in ("GET", "HEAD"):
        return "cdn_unknown", {}
    if len(parts) == 2 and parts[0] == "ds":
        return "zip_link", {"export_id": parts[1]}
    if len(parts) == 3 and parts[0] == "exports" and parts[2] == "roboflow.zip":
        return "zip", {"export_id": parts[1]}
    if len(parts) == 3 and parts[2] == "original.jpg":
        return "cdn_original", {"owner": parts[0], "image_id": parts[1]}
    if len(parts) == 3 and parts[2] == "thumb.jpg":
        return "cdn_thumb", {"owner": parts[0], "image_id": parts[1]}
    if len(parts) == 3 and parts[2].startswith("annotation-") and parts[2].endswith(".json"):
        return "cdn_annotation", {"owner": parts[0], "image_id": parts[1]}
    return "cdn_unknown", {}


class RoboflowApi:
    """Every emulated route's handler, over one shared ApiContext."""

    def __init__(self, config: EmulatorConfig, dataset: Dataset, images: ImageFactory):
        signing_key = make_id(config.seed, "signing-key", length=32).encode()
        self.context = ApiContext(config, dataset, images, signing_key)
        self.exports = ExportJobs(self.context)
        self.projects = ProjectHandlers(self.context, self.exports)
        self.search = SearchHandlers(self.context)
        self.images = ImageDetails(self.context)
        self.cdn = CdnFiles(self.context)

    def answer(self, route: str, params: dict[str, str], query: dict[str, list[str]], body: object, method: str,
               path: str, faults: FaultState) -> Response:
        """Answer a matched, authorised request."""
        if route == "unknown_route":
            return express_not_found(method, path)
        if route == "cdn_unknown":
            return no_such_key()
        if route == "cdn_original":
            return self.cdn.original(params["owner"], params["image_id"], faults)
        if route == "cdn_thumb":
            return self.cdn.thumb(params["owner"], params["image_id"], faults)
        if route == "cdn_annotation":
            return self.cdn.annotation(params["owner"], params["image_id"], faults)
        if route == "zip_link":
            return self.exports.zip_link(params["export_id"], (query.get("key") or [None])[0])
        if route == "zip":
            return self.exports.zip_file(params["export_id"], (query.get("X-Signature") or [None])[0])
        if route == "root":
            return self.projects.root()
        config = self.context.config
        if params.get("workspace") != config.workspace:
            return self.projects.unknown_workspace(route, faults)
        if route == "workspace":
            return self.projects.workspace()
        if route == "search_v1":
            return self.search.search_v1(body, route, faults)
        if params.get("project") != config.project:
            return self.projects.unknown_project(route, faults)
        if route == "project":
            return self.projects.project()
        if route == "search":
            return self.search.search(body, route, faults)
        if route == "image_details":
            return self.images.details(params["image_id"], route, faults)
        version = params["version"]
        number = int(version) if version.isdigit() else 0
        if route == "version":
            return self.projects.version(number, route, faults)
        return self.projects.export(number, params["format"], route, faults)
