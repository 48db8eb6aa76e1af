"""The account's tree: `/` (who am I), `/{ws}`, `/{ws}/{project}`, `/{ws}/{project}/{n}` and its exports."""

from __future__ import annotations

from ..config import EXPORT_FORMATS
from ..faults import FaultState
from .context import ApiContext
from .export_jobs import ExportJobs
from .wire import DOCS_HINT, ROOT_HINT, Response, error_response, internal_error, json_response, not_found


class ProjectHandlers:
    """The workspace, project and version objects, as the SDK's `workspace()`, `project()`, `version()` read them."""

    def __init__(self, context: ApiContext, jobs: ExportJobs):
        self.context = context
        self.jobs = jobs

    # --- shapes --------------------------------------------------------------------------------

    def _workspace_summary(self) -> dict:
        config = self.context.config
        return {"name": config.workspace.replace("-", " ").title(), "url": config.workspace, "members": 3}

    def _project_object(self) -> dict:
        config, dataset = self.context.config, self.context.dataset
        stats = dataset.stats()
        return {
            "id": f"{config.workspace}/{config.project}",
            "type": config.project_type,
            "name": dataset.project_name,
            "created": dataset.created,
            "updated": dataset.updated,
            "images": stats.images,
            "unannotated": stats.unannotated,
            "annotation": dataset.annotation_group,
            "versions": len(dataset.versions),
            "public": False,
            "splits": stats.splits,
            "colors": dict(dataset.colors),
            "classes": stats.classes,
            "multilabel": config.multilabel,
        }

    def _version_object(self, number: int) -> dict:
        config, dataset = self.context.config, self.context.dataset
        version = dataset.versions[number - 1]
        stats = version.stats
        version_object = {
            "id": f"{config.workspace}/{config.project}/{number}",
            "name": version.name,
            "created": version.created,
            "images": stats.images,
            "splits": stats.splits,
            "classes": list(dataset.classes),
            "preprocessing": {"auto-orient": {"enabled": True}},
            "augmentation": {},
            "exports": self.jobs.formats(number),
            "generating": False,
            "progress": 1,
        }
        if config.project_type == "keypoint-detection":
            version_object["skeletons"] = dataset.skeletons()
        return version_object

    # --- routes --------------------------------------------------------------------------------

    def root(self) -> Response:
        return json_response(
            200,
            {
                "welcome": "Welcome to the Roboflow API.",
                "instructions": "You are successfully authenticated.",
                "docs": "https://docs.roboflow.com",
                "workspace": self.context.config.workspace,
            },
        )

    def workspace(self) -> Response:
        summary = self._workspace_summary()
        return json_response(200, {"workspace": {**summary, "projects": [self._project_object()]}})

    def project(self) -> Response:
        versions = [self._version_object(n) for n in range(len(self.context.dataset.versions), 0, -1)]
        payload = {"workspace": self._workspace_summary(), "project": self._project_object(), "versions": versions}
        return json_response(200, payload)

    def unknown_workspace(self, route: str, faults: FaultState) -> Response:
        return not_found("Workspace", faults.error_style(route, "object"), ROOT_HINT)

    def unknown_project(self, route: str, faults: FaultState) -> Response:
        return not_found("Project", faults.error_style(route, "object"), ROOT_HINT)

    def unknown_version(self, route: str, faults: FaultState) -> Response:
        """The live API answers an unknown version with 500, not 404."""
        style = faults.error_style(route, "object")
        if faults.config.unknown_version_status == 404:
            return not_found("Version", style, DOCS_HINT)
        return internal_error(style)

    def version(self, number: int, route: str, faults: FaultState) -> Response:
        if self.context.dataset.version(number) is None:
            return self.unknown_version(route, faults)
        payload = {
            "workspace": self._workspace_summary(),
            "project": self._project_object(),
            "version": self._version_object(number),
        }
        return json_response(200, payload)

    def export(self, number: int, export_format: str, route: str, faults: FaultState) -> Response:
        """202 with progress a few times, then 200 with a download link carrying a token, not the key."""
        version = self.context.dataset.version(number)
        if version is None:
            return self.unknown_version(route, faults)
        if export_format not in EXPORT_FORMATS:
            style = faults.error_style(route, "object")
            message = f"Unsupported export format: {export_format}"
            return error_response(400, message, "InvalidFormatException", style, DOCS_HINT)
        job = self.jobs.poll(number, version, export_format, faults)
        if isinstance(job, Response):
            return job
        payload = {
            "workspace": self._workspace_summary(),
            "project": self._project_object(),
            "version": self._version_object(number),
            "export": {"format": export_format, "link": self.jobs.link(job)},
        }
        return json_response(200, payload)
