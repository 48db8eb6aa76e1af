"""Preflight's Roboflow reads go out together, and each one's failure is still told in order."""

import threading

import pytest

from pipeline.errors import InputError
from pipeline.remote_checks import PREFLIGHT_READS, check_roboflow
from pipeline.validation import parse_command_line
from transforms.clients.roboflow import RoboflowError, SearchPage

OPTS = parse_command_line(["--roboflow_workspace", "ws", "--roboflow_project", "proj"]).importer


class TogetherClient:
    """Each read waits until all of them are under way: read one after another, the first times out."""

    api_url = "http://roboflow.invalid"

    def __init__(self, failing: set[str] = frozenset()):
        self.together = threading.Barrier(PREFLIGHT_READS, timeout=5)
        self.failing = failing

    def _read(self, what: str):
        self.together.wait()
        if what in self.failing:
            raise RoboflowError(f"{what} not found", status=404)

    def workspace(self, ws):
        self._read("workspace")
        return {"workspace": {"projects": [{"id": "ws/proj"}]}}

    def project(self, ws, proj):
        self._read("project")
        return {"project": {"type": "object-detection", "classes": {}, "images": 7}, "versions": []}

    def search_page(self, ws, proj, *, offset, limit, filters):
        self._read("search")
        return SearchPage(ids=["a"], total=7)


def test_the_workspace_project_and_count_are_read_at_once():
    info, _, total, _ = check_roboflow(OPTS, TogetherClient())
    assert (info["type"], total) == ("object-detection", 7)


@pytest.mark.parametrize(("failing", "named"), [({"workspace", "project", "search"}, "workspace 'ws'"),
                                                ({"project", "search"}, "project ws/proj"),
                                                ({"search"}, "search of ws/proj")])
def test_the_first_failure_in_order_is_the_one_told(failing, named):
    with pytest.raises(InputError, match=named):
        check_roboflow(OPTS, TogetherClient(failing))
